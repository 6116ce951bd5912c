"""LightNet's additive linear recurrence and its multi-dimensional positional encodings.

LightNet (Qin et al., arXiv 2405.21022) replaces the multiplicative decay of linear attention
by an *additive* recurrence: the keys are normalised by a softmax over the past, per key
channel. Without causality the sums run over all positions and do not depend on the scan order,
which is why one scan covers data of any number of dimensions.

The numerics follow fla's ``LightNetAttention`` (normaliser δ_t = Σ_{s≤t} e^{k_s}, no "null
key"), which we take as the reference because the official code was not available; the first
author's xmixers variant seeds δ with 1 and uses scale 1 (pass ``scale=1.0`` for the latter).

Positional encodings (:func:`md_lrpe`, :func:`md_tpe`): the body of the paper could not be
retrieved for this project, so both follow the first author's code (xmixers / xopes) as
described in the project's research notes; see their docstrings.
"""

# B batch, L length, H heads, K key dim d_k, V value dim d_v, A spatial axes, E angles per axis

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxdiv import checks

from .linear import linear_attention

_METHODS = ("chunked", "recurrent")


class LightNetState(NamedTuple):
    """LightNet recurrent state, kept normalised so nothing overflows.

    Attributes:
      numerator: M_t ⊘ δ_t = Σ_{s≤t} e^{k_s − z_t} ᵀ v_s, [B, H, dk, dv] (the numerator scaled by
        e^{−z_t}; a softmax-weighted average of past values per key channel).
      log_normalizer: z_t = log δ_t = log Σ_{s≤t} e^{k_s}, [B, H, dk]; −inf for the empty state.
    """

    numerator: jax.Array
    log_normalizer: jax.Array


def init_lightnet_state(batch: int, heads: int, key_dim: int, value_dim: int) -> LightNetState:
    """The empty LightNet state (no tokens seen): zero numerator, log-normaliser −inf.

    Args:
      batch: B.
      heads: H.
      key_dim: dk.
      value_dim: dv.

    Returns:
      ``LightNetState`` with numerator [B, H, dk, dv] and log_normalizer [B, H, dk], float32.

    Examples:
      >>> init_lightnet_state(2, 3, 4, 5).numerator.shape
      (2, 3, 4, 5)
    """
    return LightNetState(
        jnp.zeros((batch, heads, key_dim, value_dim), jnp.float32),
        jnp.full((batch, heads, key_dim), -jnp.inf, jnp.float32),
    )


def _recurrent(q, k, v, state: LightNetState):
    def step(carry, inputs):
        numerator, z = carry
        q_t, k_t, v_t = inputs
        z_new = jnp.logaddexp(z, k_t)  # [B, H, K]
        numerator = jnp.exp(z - z_new)[..., None] * numerator + jnp.einsum(
            "bhk,bhv->bhkv", jnp.exp(k_t - z_new), v_t
        )
        return (numerator, z_new), jnp.einsum("bhk,bhkv->bhv", q_t, numerator)

    xs = tuple(jnp.moveaxis(x, 1, 0) for x in (q, k, v))
    (numerator, z), o = jax.lax.scan(step, tuple(state), xs)
    return jnp.moveaxis(o, 0, 1), LightNetState(numerator, z)  # [B, L, H, V]


def _chunked(q, k, v, state: LightNetState, chunk_size: int):
    # LightNet as GLA: k̃_t = e^{k_t − z_t} ≤ 1 and log decay g_t = z_{t−1} − z_t ≤ 0 give
    # S_t = M_t ⊘ δ_t exactly; g_t = 0 while nothing has been seen (z_{t−1} = −inf, S = 0).
    z = jnp.logaddexp(state.log_normalizer[:, None], jax.lax.cumlogsumexp(k, axis=1))
    z_prev = jnp.concatenate([state.log_normalizer[:, None], z[:, :-1]], axis=1)
    g = jnp.where(jnp.isfinite(z_prev), z_prev - z, 0.0)  # [B, L, H, K]
    o, numerator = linear_attention(
        q,
        jnp.exp(k - z),
        v,
        log_decay=g,
        scale=1.0,
        chunk_size=chunk_size,
        initial_state=state.numerator,
        return_final_state=True,
    )
    return o, LightNetState(numerator, z[:, -1])


def _bidirectional(q, k, v, state: LightNetState):
    # Order-free sums over every position (all middle axes of q, k, v are positions).
    B, H = q.shape[0], q.shape[-2]
    q, k, v = (x.reshape(B, -1, H, x.shape[-1]) for x in (q, k, v))  # [B, L, H, D]
    z = jnp.logaddexp(state.log_normalizer, jax.nn.logsumexp(k, axis=1))  # [B, H, K]
    numerator = jnp.exp(state.log_normalizer - z)[..., None] * state.numerator + jnp.einsum(
        "blhk,blhv->bhkv", jnp.exp(k - z[:, None]), v
    )  # [B, H, K, V]
    return jnp.einsum("blhk,bhkv->blhv", q, numerator), LightNetState(numerator, z)


def lightnet_attention(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    *,
    causal: bool = True,
    scale: float | jax.Array | None = None,
    initial_state: LightNetState | tuple | None = None,
    return_final_state: bool = False,
    method: str = "chunked",
    chunk_size: int = 64,
) -> jax.Array | tuple[jax.Array, LightNetState]:
    r"""LightNet additive linear attention: keys softmax-normalised over the past per channel.

    .. math::

        o_t = (s\, q_t) \big(M_t \oslash \delta_t\big), \quad
        M_t = \sum_{s \le t} e^{k_s\,\top} v_s, \quad
        \delta_t = \sum_{s \le t} e^{k_s}

    with :math:`\oslash` dividing row j of :math:`M_t` by :math:`\delta_{t,j}` (one normaliser
    per key channel), :math:`s` = ``scale``. Computed as :math:`\sum_s e^{k_s - z_t\,\top} v_s`
    with :math:`z_t = \log\delta_t` from a cumulative log-sum-exp, so :math:`e^{k}` is never
    formed and keys of any size are safe. ``causal=False`` sums over all positions
    (:math:`t = L`); then q, k, v may have any number of position axes ([B, N_1, …, N_m, H, d]),
    one pass covers them all in any order.

    ``method="chunked"`` (default) runs it as gated linear attention with key
    :math:`e^{k_t - z_t}` and log decay :math:`z_{t-1} - z_t` (chunked masked matmuls plus a state
    recurrence); ``method="recurrent"`` is a ``lax.scan`` over the additive form, the reference.

    Args:
      q: queries, [B, L, H, dk] (causal) or [B, ..., H, dk].
      k: keys (logits of the per-channel softmax over time), same shape as q; finite.
      v: values, [B, L, H, dv] (or [B, ..., H, dv]).
      causal: False for the order-free bidirectional / multi-dimensional form.
      scale: s, default dk^−½ (fla's convention; xmixers uses 1).
      initial_state: ``LightNetState(numerator [B, H, dk, dv], log_normalizer [B, H, dk])``
        (see :class:`LightNetState`; :func:`init_lightnet_state` is the empty state). Running
        two halves with the first half's final state equals one run over the whole.
      return_final_state: also return the final ``LightNetState``.
      method: ``"chunked"`` or ``"recurrent"`` (causal only; ignored when ``causal=False``).
      chunk_size: chunk length for ``"chunked"``.

    Returns:
      o with v's shape except dv last ([..., H, dv]) in v's dtype; with
      ``return_final_state``, ``(o, LightNetState)`` in float32 (float64 for float64 inputs).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> q, k, v = jax.random.normal(jax.random.key(0), (3, 1, 50, 2, 4))
      >>> o = lightnet_attention(q, 60.0 * k, v, chunk_size=16)
      >>> o_ref = lightnet_attention(q, 60.0 * k, v, method="recurrent")
      >>> o.shape, bool(jnp.allclose(o, o_ref, atol=1e-4))
      ((1, 50, 2, 4), True)

    References:
      Qin et al., "You Only Scan Once: Efficient Multi-dimension Sequential Modeling with
      LightNet", https://arxiv.org/abs/2405.21022, Section 3 (additive recurrence).
    """
    q = checks.float_array(q, "q")
    k = checks.float_array(k, "k")
    v = checks.float_array(v, "v")
    checks.one_of(method, "method", _METHODS)
    if causal and q.ndim != 4:
        raise ValueError(f"`q` must have shape [B, L, H, dk] when causal, got shape {q.shape}.")
    checks.min_rank(q, 3, "q", "[B, ..., H, dk]")
    checks.same_shape(q, k, ("q", "k"))
    checks.exact_shape(v, (*q.shape[:-1], v.shape[-1]), "v", "[B, ..., H, dv] matching q")
    B, H, K, V = q.shape[0], q.shape[-2], q.shape[-1], v.shape[-1]
    out_dtype = v.dtype
    if initial_state is None:
        dtype = checks.compute_dtype(q, k, v)
        state = init_lightnet_state(B, H, K, V)
    else:
        numerator, log_normalizer = initial_state
        numerator = checks.float_array(numerator, "initial_state.numerator")
        log_normalizer = checks.float_array(log_normalizer, "initial_state.log_normalizer")
        checks.exact_shape(numerator, (B, H, K, V), "initial_state.numerator", "[B, H, dk, dv]")
        checks.exact_shape(log_normalizer, (B, H, K), "initial_state.log_normalizer", "[B, H, dk]")
        dtype = checks.compute_dtype(q, k, v, numerator, log_normalizer)
        state = LightNetState(numerator, log_normalizer)
    state = LightNetState(*(x.astype(dtype) for x in state))
    if scale is None:
        scale = K**-0.5
    q = q.astype(dtype) * jnp.asarray(scale, dtype)
    k, v = k.astype(dtype), v.astype(dtype)

    if not causal:
        o, state = _bidirectional(q, k, v, state)
        o = o.reshape(*q.shape[:-1], V)
    elif method == "recurrent":
        o, state = _recurrent(q, k, v, state)
    else:
        o, state = _chunked(q, k, v, state, chunk_size)
    o = o.astype(out_dtype)
    return (o, state) if return_final_state else o


def md_lrpe(
    x: ArrayLike, theta: ArrayLike, shape: Sequence[int], *, num_prefix: int = 0
) -> jax.Array:
    r"""Multi-dimensional LRPE (cosine form): rotation angles from each token's grid index.

    .. math::

        \phi(x)_n = [\,x_n \odot \cos\Theta(n),\; x_n \odot \sin\Theta(n)\,], \qquad
        \Theta(n) = \mathrm{concat}(n_1\theta, n_2\theta, \dots, n_m\theta)_{[:d]}

    for a token at grid index :math:`n = (n_1, \dots, n_m)` (row-major order over ``shape``),
    so :math:`\phi(q_n) \cdot \phi(k_{n'}) = \sum_j q_{n,j} k_{n',j} \cos(\Theta(n) -
    \Theta(n'))_j` depends only on the offset :math:`n - n'`. The first ``num_prefix`` tokens
    (e.g. class tokens) get no encoding: :math:`[x, 0]`. Apply it to q and to the normalised
    keys; it doubles the head dim.

    This follows the first author's code (xopes ``lrpe_cosine_md``) as recorded in the project's
    research notes; the paper's own formula could not be retrieved.

    Args:
      x: [B, L, H, d] with L = num_prefix + prod(shape).
      theta: θ, [H, e] with m·e ≥ d (m = len(shape)); e.g. ``base ** (-arange(e) / e)``.
      shape: the grid (N_1, …, N_m), Python ints.
      num_prefix: leading tokens without encoding.

    Returns:
      [B, L, H, 2d] in x's dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> md_lrpe(jnp.ones((2, 1 + 3 * 4, 2, 6)), jnp.ones((2, 3)), (3, 4), num_prefix=1).shape
      (2, 13, 2, 12)

    References:
      Qin et al., "You Only Scan Once", https://arxiv.org/abs/2405.21022 (MD-LRPE);
      Qin et al., "Linearized Relative Positional Encoding", https://arxiv.org/abs/2307.09270.
    """
    x = checks.float_array(x, "x")
    theta = checks.float_array(theta, "theta")
    shape = tuple(int(n) for n in shape)
    m, d = len(shape), x.shape[-1]
    if x.ndim != 4 or x.shape[1] != num_prefix + math.prod(shape):
        raise ValueError(
            f"`x` must have shape [B, num_prefix + prod(shape), H, d] = [B, "
            f"{num_prefix + math.prod(shape)}, H, d], got {x.shape}."
        )
    if theta.ndim != 2 or theta.shape[0] != x.shape[2] or m * theta.shape[1] < d:
        raise ValueError(
            f"`theta` must have shape [H, e] with H = {x.shape[2]} and {m}·e ≥ d = {d}, "
            f"got {theta.shape}."
        )
    dtype = checks.compute_dtype(x, theta)
    index = np.indices(shape).reshape(m, -1).T  # [P, A] grid index of each token, row-major
    angles = jnp.asarray(index, dtype)[:, :, None, None] * theta.astype(dtype)[None, None]
    angles = jnp.moveaxis(angles, 1, 2).reshape(index.shape[0], x.shape[2], -1)[..., :d]
    prefix, body = x[:, :num_prefix].astype(dtype), x[:, num_prefix:].astype(dtype)
    angles = angles[None]  # [1, P, H, d]
    body = jnp.concatenate([body * jnp.cos(angles), body * jnp.sin(angles)], axis=-1)
    prefix = jnp.concatenate([prefix, jnp.zeros_like(prefix)], axis=-1)
    return jnp.concatenate([prefix, body], axis=1).astype(x.dtype)  # [B, L, H, 2d]


def md_tpe(
    x: ArrayLike, q: ArrayLike, k: ArrayLike, log_decay: ArrayLike, *, causal: bool = True
) -> jax.Array:
    r"""Multi-dimensional Toeplitz positional encoding: a decayed mixer along each axis, summed.

    .. math::

        o_n = \sum_{a=1}^{m} (q_a \cdot k_a) \sum_{n'} \lambda_a^{|n_a - n'_a|}\,
              x_{n_1 \dots n'_a \dots n_m}, \qquad \lambda_a = e^{\texttt{log\_decay}_a}

    per head, where the inner sum runs along axis a only (:math:`n'_a \le n_a` when causal).
    For one axis and causal this is TPE: ``linear_attention`` with constant scalar decay
    :math:`\lambda`, query :math:`q_a` and key :math:`k_a` for every token and values x.

    The paper's formula could not be retrieved for this project; this follows the first
    author's code (xmixers ``MdTpe``: one TPE per axis, outputs summed; the group norm and output
    projection belong to the module). ``causal=False`` (symmetric :math:`\lambda^{|n_a - n'_a|}`,
    for bidirectional image models) is our extension. The Toeplitz matrices are formed densely,
    O(N_a²) per axis, which suits the short axes of images.

    Args:
      x: [B, N_1, …, N_m, H, d].
      q: learned query per axis and head, [m, H, d].
      k: learned key per axis and head, [m, H, d].
      log_decay: log λ per axis and head, [m, H], values ≤ 0 (e.g. ``log_sigmoid(param)``).
      causal: mix only earlier-or-equal positions along each axis.

    Returns:
      [B, N_1, …, N_m, H, d] in x's dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.ones((2, 3, 4, 1, 2))
      >>> o = md_tpe(x, jnp.ones((2, 1, 2)), jnp.ones((2, 1, 2)), jnp.zeros((2, 1)), causal=False)
      >>> o.shape, float(o[0, 0, 0, 0, 0])  # (2·3 + 2·4) with λ = 1
      ((2, 3, 4, 1, 2), 14.0)

    References:
      Qin et al., "You Only Scan Once", https://arxiv.org/abs/2405.21022 (MD-TPE);
      Qin et al., "Toeplitz Neural Network for Sequence Modeling", https://arxiv.org/abs/2305.04749.
    """
    x = checks.float_array(x, "x")
    q = checks.float_array(q, "q")
    k = checks.float_array(k, "k")
    log_decay = checks.float_array(log_decay, "log_decay")
    checks.min_rank(x, 4, "x", "[B, N_1, ..., N_m, H, d]")
    m, H, d = x.ndim - 3, x.shape[-2], x.shape[-1]
    checks.exact_shape(q, (m, H, d), "q", "[m, H, d]")
    checks.exact_shape(k, (m, H, d), "k", "[m, H, d]")
    checks.exact_shape(log_decay, (m, H), "log_decay", "[m, H]")
    dtype = checks.compute_dtype(x, q, k, log_decay)
    gain = jnp.einsum("ahd,ahd->ah", q.astype(dtype), k.astype(dtype))  # [A, H]
    x_c = x.astype(dtype)
    o = jnp.zeros_like(x_c)
    for a in range(m):
        n = x.shape[1 + a]
        offset = np.arange(n)[:, None] - np.arange(n)[None, :]  # [N, N'] = n − n'
        allowed = offset >= 0 if causal else np.ones((n, n), bool)
        # λ^{|n − n'|} = exp(|n − n'|·log λ) ≤ 1
        toeplitz = jnp.exp(np.abs(offset)[None] * log_decay[a, :, None, None].astype(dtype))
        toeplitz = jnp.where(allowed[None], toeplitz, 0.0) * gain[a, :, None, None]  # [H, N, N']
        moved = jnp.moveaxis(x_c, 1 + a, -3)  # [..., N', H, d]
        mixed = jnp.einsum("hnm,...mhd->...nhd", toeplitz, moved)
        o = o + jnp.moveaxis(mixed, -3, 1 + a)
    return o.astype(x.dtype)
