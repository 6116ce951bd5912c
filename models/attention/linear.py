"""Linear attention with optional data-dependent decay: recurrent, chunked and parallel forms.

One recurrence, three ways to compute it (they agree to float32 round-off):

- ``"recurrent"``: a ``lax.scan`` over tokens, the reference;
- ``"chunked"``: masked matmuls inside chunks of ``chunk_size`` tokens plus a state recurrence
  across chunks (Yang et al. GLA / Mamba-2 SSD chunking), linear in L;
- ``"parallel"``: the quadratic masked form, for checking short sequences;
- ``"pallas"``: the chunked form as Pallas kernels (``jaxdiv.models.kernels.linear_attention``,
  hand-written backward kernel, custom VJP); interpret mode on CPU.

The chunk-level pieces are public so that sequence-parallel schemes (LASP-2) can reuse them:
:func:`linear_attention_chunk_state` (a block's zero-initial final state and its total log
decay), :func:`combine_linear_attention_states` (the associative operator on those pairs) and
:func:`linear_attention_inter` (the output contribution of an incoming state). For any split of
the sequence into blocks,

    ``linear_attention(q, k, v, log_decay=g, initial_state=S0)
    == linear_attention(q, k, v, log_decay=g) + linear_attention_inter(q, S0, log_decay=g)``.

Decay is kept in log space everywhere: within a block only ``exp`` of *differences* of the
cumulative log decay appear (all ≤ 0), never ``1 / b`` factors that overflow.
"""

# B batch, L length, H heads, K key dim d_k, V value dim d_v, S key position (same range as L),
# N number of chunks, C chunk length

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import checks
from jaxdiv.models.kernels import linear_attention as _kernels  # pyright: ignore[reportMissingImports]

METHODS = ("recurrent", "chunked", "parallel", "pallas")


def _check_qkv(q, k, v) -> tuple[jax.Array, jax.Array, jax.Array]:
    q = checks.float_array(q, "q")
    k = checks.float_array(k, "k")
    v = checks.float_array(v, "v")
    if q.ndim != 4:
        raise ValueError(f"`q` must have shape [B, L, H, dk], got shape {q.shape}.")
    checks.same_shape(q, k, ("q", "k"))
    if v.ndim != 4:
        raise ValueError(f"`v` must have shape [B, L, H, dv], got shape {v.shape}.")
    checks.exact_shape(v, (*q.shape[:3], v.shape[3]), "v", "[B, L, H, dv] matching q")
    return q, k, v


def _check_log_decay(log_decay, q: jax.Array) -> jax.Array | None:
    if log_decay is None:
        return None
    log_decay = checks.float_array(log_decay, "log_decay")
    if log_decay.shape not in (q.shape[:3], q.shape):
        raise ValueError(
            f"`log_decay` must have shape {q.shape[:3]} ([B, L, H], one decay per head) or "
            f"{q.shape} ([B, L, H, dk], one per key channel), got {log_decay.shape}."
        )
    return log_decay


def _as_channels(g: jax.Array | None, q: jax.Array) -> jax.Array | None:
    """Log decay as [B, L, H, 1] (per head) or [B, L, H, K] (per key channel)."""
    if g is None or g.ndim == q.ndim:
        return g
    return g[..., None]  # [B, L, H, 1]


def _scale(q: jax.Array, scale) -> jax.Array:
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return q * jnp.asarray(scale, q.dtype)


def _intra(q, k, v, G) -> jax.Array:
    """Causal output of one block from inside the block (zero incoming state).

    ``G`` [B, L, H, 1 or K] is the inclusive cumulative log decay; token l sees token s ≤ l with
    weight exp(G_l − G_s) ≤ 1, masked *before* the exp so no inf appears.
    """
    length = q.shape[1]
    mask = jnp.tril(jnp.ones((length, length), bool))  # [L, S]
    if G is None:
        A = jnp.einsum("blhk,bshk->bhls", q, k)  # [B, H, L, S]
        A = jnp.where(mask, A, 0.0)
    elif G.shape[-1] == 1:
        G = jnp.moveaxis(G[..., 0], 1, 2)  # [B, H, L]
        diff = G[:, :, :, None] - G[:, :, None, :]  # [B, H, L, S]
        A = jnp.einsum("blhk,bshk->bhls", q, k) * jnp.exp(jnp.where(mask, diff, -jnp.inf))
    else:
        diff = G[:, :, None] - G[:, None, :]  # [B, L, S, H, K]
        decay = jnp.exp(jnp.where(mask[:, :, None, None], diff, -jnp.inf))
        A = jnp.moveaxis(jnp.sum(q[:, :, None] * k[:, None] * decay, axis=-1), 3, 1)  # [B, H, L, S]
    return jnp.einsum("bhls,bshv->blhv", A, v)  # [B, L, H, V]


def _inter(q, G, state) -> jax.Array:
    """Output contribution of the state entering a block: (q_l ⊙ exp(G_l)) S."""
    if G is not None:
        q = q * jnp.exp(G)
    return jnp.einsum("blhk,bhkv->blhv", q, state)  # [B, L, H, V]


def _local_state(k, v, G) -> tuple[jax.Array, jax.Array]:
    """A block's final state from a zero start, Σ_s (k_s ⊙ exp(G_L − G_s))ᵀ v_s, and G_L."""
    if G is None:
        log_gamma = jnp.zeros((k.shape[0], k.shape[2], 1), k.dtype)  # [B, H, 1]
    else:
        log_gamma = G[:, -1]  # [B, H, 1 or K]
        k = k * jnp.exp(log_gamma[:, None] - G)
    return jnp.einsum("blhk,blhv->bhkv", k, v), log_gamma  # [B, H, K, V], [B, H, 1 or K]


def combine_linear_attention_states(
    first: tuple[jax.Array, jax.Array], second: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    r"""Composes two consecutive blocks' ``(log_gamma, state)`` pairs (an associative operator).

    .. math::

        (\gamma_a, S_a) \circ (\gamma_b, S_b) = (\gamma_a + \gamma_b,\;
            \mathrm{diag}(e^{\gamma_b}) S_a + S_b)

    where :math:`\gamma` is a block's total log decay and :math:`S` its final state from a zero
    start. Use it with ``jax.lax.associative_scan`` over sequence shards (LASP-2 with decay).

    Args:
      first: ``(log_gamma [..., H, 1 or dk], state [..., H, dk, dv])`` of the earlier block.
      second: the same for the later block.

    Returns:
      ``(log_gamma, state)`` of the concatenated block, same shapes and dtypes.

    Examples:
      >>> import jax.numpy as jnp
      >>> a = (jnp.zeros((1, 2, 1)), jnp.ones((1, 2, 3, 4)))
      >>> b = (jnp.full((1, 2, 1), jnp.log(0.5)), jnp.ones((1, 2, 3, 4)))
      >>> float(combine_linear_attention_states(a, b)[1][0, 0, 0, 0])
      1.5

    References:
      Sun et al., "LASP-2: Rethinking Sequence Parallelism for Linear Attention and Its Hybrid",
      https://arxiv.org/abs/2502.07563, Section 3.
    """
    log_gamma_a, state_a = first
    log_gamma_b, state_b = second
    state = jnp.exp(log_gamma_b)[..., None] * state_a + state_b  # [..., H, K, V]
    return log_gamma_a + log_gamma_b, state


def linear_attention_chunk_state(
    k: ArrayLike, v: ArrayLike, *, log_decay: ArrayLike | None = None
) -> tuple[jax.Array, jax.Array]:
    r"""Final state of a block started from zero, and the block's total log decay.

    .. math::

        S = \sum_s \mathrm{diag}\big(e^{G_L - G_s}\big) k_s^\top v_s, \qquad
        \gamma = G_L, \qquad G_l = \sum_{r \le l} g_r

    with :math:`g` = ``log_decay``. Together with :func:`combine_linear_attention_states` and
    :func:`linear_attention_inter` this is everything a sequence shard must exchange.

    Args:
      k: keys, [B, L, H, dk].
      v: values, [B, L, H, dv].
      log_decay: None, [B, L, H] or [B, L, H, dk], values ≤ 0.

    Returns:
      ``(state, log_gamma)``: state [B, H, dk, dv] and log_gamma [B, H, 1] (no or per-head
      decay; zeros without decay) or [B, H, dk] (per-channel decay), float32 at least.

    Examples:
      >>> import jax.numpy as jnp
      >>> k, v = jnp.ones((1, 5, 2, 3)), jnp.ones((1, 5, 2, 4))
      >>> state, log_gamma = linear_attention_chunk_state(k, v)
      >>> state.shape, log_gamma.shape, float(state[0, 0, 0, 0])
      ((1, 2, 3, 4), (1, 2, 1), 5.0)

    References:
      Yang et al., "Gated Linear Attention Transformers with Hardware-Efficient Training",
      https://arxiv.org/abs/2312.06635, Section 4.
    """
    _, k, v = _check_qkv(k, k, v)
    g = _check_log_decay(log_decay, k)
    dtype = checks.compute_dtype(k, v, *([] if g is None else [g]))
    g = _as_channels(None if g is None else g.astype(dtype), k)
    G = None if g is None else jnp.cumsum(g, axis=1)
    return _local_state(k.astype(dtype), v.astype(dtype), G)


def linear_attention_inter(
    q: ArrayLike,
    initial_state: ArrayLike,
    *,
    log_decay: ArrayLike | None = None,
    scale: float | jax.Array | None = None,
) -> jax.Array:
    r"""Output contribution of a state entering a block: :math:`(s\,q_l \odot e^{G_l})\, S_0`.

    .. math::

        o_l = \big(s\, q_l \odot e^{G_l}\big) S_0, \qquad G_l = \sum_{r \le l} g_r

    Adding it to ``linear_attention(q, k, v, log_decay=g)`` gives the output with
    ``initial_state=S_0`` (the output is linear in the initial state).

    Args:
      q: queries, [B, L, H, dk].
      initial_state: S_0, [B, H, dk, dv].
      log_decay: None, [B, L, H] or [B, L, H, dk], values ≤ 0.
      scale: s, default dk^−½.

    Returns:
      [B, L, H, dv], float32 at least.

    Examples:
      >>> import jax.numpy as jnp
      >>> o = linear_attention_inter(jnp.ones((1, 3, 2, 4)), jnp.ones((1, 2, 4, 5)))
      >>> o.shape, float(o[0, 0, 0, 0])
      ((1, 3, 2, 5), 2.0)

    References:
      Sun et al., "LASP-2: Rethinking Sequence Parallelism for Linear Attention and Its Hybrid",
      https://arxiv.org/abs/2502.07563, Section 3.
    """
    q = checks.float_array(q, "q")
    checks.min_rank(q, 4, "q", "[B, L, H, dk]")
    initial_state = checks.float_array(initial_state, "initial_state")
    B, _, H, K = q.shape
    checks.exact_shape(
        initial_state, (B, H, K, initial_state.shape[-1]), "initial_state", "[B, H, dk, dv]"
    )
    g = _check_log_decay(log_decay, q)
    dtype = checks.compute_dtype(q, initial_state, *([] if g is None else [g]))
    g = _as_channels(None if g is None else g.astype(dtype), q)
    G = None if g is None else jnp.cumsum(g, axis=1)
    return _inter(_scale(q.astype(dtype), scale), G, initial_state.astype(dtype))


def _recurrent(q, k, v, g, state):
    def step(state, inputs):
        q_t, k_t, v_t, g_t = inputs
        if g_t is not None:
            state = jnp.exp(g_t)[..., None] * state  # [B, H, K, V]
        state = state + jnp.einsum("bhk,bhv->bhkv", k_t, v_t)
        return state, jnp.einsum("bhk,bhkv->bhv", q_t, state)

    xs = tuple(None if x is None else jnp.moveaxis(x, 1, 0) for x in (q, k, v, g))
    state, o = jax.lax.scan(step, state, xs)
    return jnp.moveaxis(o, 0, 1), state  # [B, L, H, V], [B, H, K, V]


def _parallel(q, k, v, g, state):
    G = None if g is None else jnp.cumsum(g, axis=1)  # [B, L, H, 1 or K]
    o = _intra(q, k, v, G) + _inter(q, G, state)
    local, log_gamma = _local_state(k, v, G)
    return o, jnp.exp(log_gamma)[..., None] * state + local


def _chunked(q, k, v, g, state, chunk_size: int):
    # A scan over chunks, each step vectorised over the chunk: the working set of one step stays
    # in cache, which measured faster and closer to linear in L on CPU than materialising every
    # chunk's state at once.
    B, L, H, _ = q.shape
    pad = -L % chunk_size
    n = (L + pad) // chunk_size

    def chunks(x):  # [B, L, H, D] -> [N, B, C, H, D]; padding is zero (and zero log decay)
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
        return jnp.moveaxis(x.reshape(B, n, chunk_size, *x.shape[2:]), 1, 0)

    def step(state, inputs):
        q_c, k_c, v_c, g_c = inputs
        G = None if g_c is None else jnp.cumsum(g_c, axis=1)  # [B, C, H, 1 or K]
        o = _intra(q_c, k_c, v_c, G) + _inter(q_c, G, state)  # [B, C, H, V]
        local, log_gamma = _local_state(k_c, v_c, G)
        if G is not None:
            state = jnp.exp(log_gamma)[..., None] * state  # [B, H, K, V]
        return state + local, o

    g = None if g is None else chunks(g)
    state, o = jax.lax.scan(step, state, (chunks(q), chunks(k), chunks(v), g))
    return jnp.moveaxis(o, 0, 1).reshape(B, n * chunk_size, H, -1)[:, :L], state  # [B, L, H, V]


def linear_attention(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    *,
    log_decay: ArrayLike | None = None,
    scale: float | jax.Array | None = None,
    causal: bool = True,
    method: str = "chunked",
    chunk_size: int = 64,
    initial_state: ArrayLike | None = None,
    return_final_state: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Linear attention with optional per-head or per-key-channel decay (GLA / RetNet / Mamba-2).

    .. math::

        S_t = \mathrm{diag}(e^{g_t})\, S_{t-1} + k_t^\top v_t, \qquad o_t = (s\, q_t)\, S_t

    with row vectors :math:`q_t, k_t \in \mathbb{R}^{d_k}`, :math:`v_t \in \mathbb{R}^{d_v}`,
    log decay :math:`g_t` = ``log_decay`` (a scalar per head broadcast over :math:`d_k`, or one
    value per key channel; 0 when None), :math:`s` = ``scale`` and :math:`S_0` =
    ``initial_state``. Bidirectional (``causal=False``, no decay): :math:`o_t = (s\,q_t) S_L`.

    ``method="chunked"`` costs O(L·C·(d_k + d_v)) for no or per-head decay and O(L·C·d_k) extra
    memory for per-channel decay (pairwise ``exp(G_l − G_s)`` inside each chunk), so use a
    smaller ``chunk_size`` (16–32) with per-channel decay. ``"parallel"`` materialises [L, L]
    (times d_k with per-channel decay); ``"recurrent"`` stores one state per token for the
    backward pass. ``"pallas"`` is the chunked form as Pallas kernels
    (``jaxdiv.models.kernels.linear_attention``): grid over (batch, heads), the [d_k, d_v]
    state carried across chunks inside the kernel, a backward kernel running over the chunks in
    reverse from checkpointed chunk states (custom VJP, reverse mode only); interpret mode on
    CPU (slow: for checking), not yet compiled or measured on TPU/GPU, so it is opt-in; with
    ``causal=False`` it computes the same two matmuls as ``"chunked"`` (no kernel needed).
    All four agree. The default stays ``"chunked"`` on every backend.

    Args:
      q: queries, [B, L, H, dk].
      k: keys, [B, L, H, dk].
      v: values, [B, L, H, dv].
      log_decay: g, None, [B, L, H] or [B, L, H, dk]; values ≤ 0 (not checked: positive
        values make the recurrence grow and the chunked form overflow).
      scale: s, default dk^−½ (a Python number or JAX scalar).
      causal: False for the bidirectional form (requires ``log_decay=None``).
      method: ``"chunked"``, ``"recurrent"``, ``"parallel"`` or ``"pallas"``.
      chunk_size: C for ``"chunked"`` and ``"pallas"``; L need not be a multiple (padded
        internally).
      initial_state: S_0, [B, H, dk, dv] (default zeros).
      return_final_state: also return S_L.

    Returns:
      o [B, L, H, dv] in v's dtype; with ``return_final_state``, ``(o, S_L)`` with S_L
      [B, H, dk, dv] in float32 (float64 for float64 inputs).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 100, 4, 8))
      >>> g = -jax.nn.softplus(jax.random.normal(jax.random.key(1), (2, 100, 4)))
      >>> o = linear_attention(q, k, v, log_decay=g, chunk_size=32)
      >>> o_ref = linear_attention(q, k, v, log_decay=g, method="recurrent")
      >>> o.shape, bool(jnp.allclose(o, o_ref, atol=1e-4))
      ((2, 100, 4, 8), True)

    References:
      Katharopoulos et al., "Transformers are RNNs", https://arxiv.org/abs/2006.16236, Eq. 4;
      Yang et al., "Gated Linear Attention Transformers with Hardware-Efficient Training",
      https://arxiv.org/abs/2312.06635, Eqs. 3 and Section 4 (chunkwise form).
    """
    q, k, v = _check_qkv(q, k, v)
    g = _check_log_decay(log_decay, q)
    checks.one_of(method, "method", METHODS)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int, got {chunk_size!r}.")
    if not causal and g is not None:
        raise ValueError(
            "`causal=False` (bidirectional) requires `log_decay=None`: a decay has no "
            f"order-free meaning, got log_decay of shape {g.shape}."
        )
    B, _, H, K = q.shape
    V, out_dtype = v.shape[-1], v.dtype
    arrays = [q, k, v] + [x for x in (g, initial_state) if x is not None]
    dtype = checks.compute_dtype(*arrays)
    if initial_state is None:
        state = jnp.zeros((B, H, K, V), dtype)
    else:
        state = checks.float_array(initial_state, "initial_state")
        checks.exact_shape(state, (B, H, K, V), "initial_state", "[B, H, dk, dv]")
        state = state.astype(dtype)
    q = _scale(q.astype(dtype), scale)
    k, v = k.astype(dtype), v.astype(dtype)
    g = _as_channels(None if g is None else g.astype(dtype), q)

    if not causal:
        if method == "recurrent":
            _, state = _recurrent(q, k, v, None, state)
            o = jnp.einsum("blhk,bhkv->blhv", q, state)
        elif method == "parallel":
            A = jnp.einsum("blhk,bshk->bhls", q, k)  # [B, H, L, S]
            o = jnp.einsum("bhls,bshv->blhv", A, v) + _inter(q, None, state)
            state = state + jnp.einsum("blhk,blhv->bhkv", k, v)
        else:
            state = state + jnp.einsum("blhk,blhv->bhkv", k, v)  # [B, H, K, V]
            o = jnp.einsum("blhk,bhkv->blhv", q, state)
    elif method == "recurrent":
        o, state = _recurrent(q, k, v, g, state)
    elif method == "parallel":
        o, state = _parallel(q, k, v, g, state)
    elif method == "pallas":
        heads = lambda x: None if x is None else jnp.moveaxis(x, 2, 1)  # [B, H, L, ·]
        o, state = _kernels.chunked_heads_major(
            heads(q), heads(k), heads(v), heads(g), state, chunk_size=chunk_size
        )
        o = jnp.moveaxis(o, 1, 2)
    else:
        o, state = _chunked(q, k, v, g, state, chunk_size)
    o = o.astype(out_dtype)  # [B, L, H, V]
    return (o, state) if return_final_state else o
