"""Mamba-2's state-space duality (SSD): the scalar-decay multi-head SSM as a pure op.

One recurrence, three ways to compute it (they agree to float32 round-off):

- ``"recurrent"``: a ``lax.scan`` over tokens, the reference (one step is :func:`ssd_step`);
- ``"chunked"``: the SSD block decomposition of the semiseparable matrix (Dao & Gu 2024,
  Section 6 and Listing 1): masked matmuls inside chunks of ``chunk_size`` tokens (the
  quadratic "attention" form), each chunk's final state, a scan over chunks passing the
  states, and the incoming state's contribution to each chunk's outputs. Linear in L and
  dominated by matmuls.
- ``"pallas"``: the chunked form as Pallas kernels (``jaxdiv.models.kernels.ssd``; custom
  VJP) that read x and write y in x's dtype and layout, forming Δ x and adding D x on chip;
  interpret mode on CPU.

Decay is kept in log space: a_t = Δ_t A ≤ 0. Inside a chunk only the *segment sums*
Σ_{s<k≤t} a_k appear (built by masked cumulative sums, −∞ above the diagonal before the
``exp``), so no ``exp`` of a positive number is ever taken. Heads share B and C by groups
without materialising the repeat: the head axis h is viewed as (g, r) with r = h / g heads
per group, so head i reads group i // r.
"""

# b batch, L length, h heads, p head dim (headdim), g groups (B and C), r = h / g heads per group,
# n state (d_state), c chunks, T chunk length, l and s positions inside a chunk (target, source)

from typing import Literal, overload

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxdiv import checks
from jaxdiv.models.kernels import ssd as _kernels  # pyright: ignore[reportMissingImports]

METHODS = ("recurrent", "chunked", "pallas")


def _lead(v: jax.Array, ndim: int) -> jax.Array:
    """``v`` with size-1 leading axes up to rank ``ndim`` (explicit broadcasting)."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def _check_inputs(x, dt, A, B, C, D, state, *, step: bool):
    """Converts and checks the inputs of :func:`ssd` (``step=False``) or :func:`ssd_step`."""
    seq = () if step else ("L",)
    x = checks.float_array(x, "x_t" if step else "x")
    if x.ndim != 3 + len(seq):
        layout = "[b, h, p]" if step else "[b, L, h, p]"
        raise ValueError(f"`{'x_t' if step else 'x'}` must have shape {layout}, got {x.shape}.")
    lead, (h, p) = x.shape[:-2], x.shape[-2:]
    names = ("dt_t", "B_t", "C_t") if step else ("dt", "B", "C")
    dt = checks.float_array(dt, names[0])
    checks.exact_shape(dt, (*lead, h), names[0], f"[b, {'' if step else 'L, '}h]")
    A = checks.float_array(A, "A")
    checks.exact_shape(A, (h,), "A", "[h]")
    B = checks.float_array(B, names[1])
    layout = "[b, g, n]" if step else "[b, L, g, n]"
    if B.ndim != x.ndim or B.shape[:-2] != lead or B.shape[-2] < 1 or h % B.shape[-2]:
        dims = ", ".join(str(d) for d in lead)
        raise ValueError(
            f"`{names[1]}` must have shape ({dims}, g, n) {layout} with g dividing h = {h}, "
            f"got {B.shape}."
        )
    C = checks.float_array(C, names[2])
    checks.exact_shape(C, B.shape, names[2], layout)
    n = B.shape[-1]
    if D is not None:
        D = checks.float_array(D, "D")
        checks.exact_shape(D, (h,), "D", "[h]")
    name = "state" if step else "initial_state"
    if state is not None:
        state = checks.float_array(state, name)
        checks.exact_shape(state, (lead[0], h, p, n), name, "[b, h, p, n]")
    arrays = [v for v in (x, dt, A, B, C, D, state) if v is not None]
    return x, dt, A, B, C, D, state, checks.compute_dtype(*arrays)


def _step(S, x, dt, A, B, C):
    """One grouped step: S [b, g, r, p, n], x [b, g, r, p], dt [b, g, r], A [g, r], B, C [b, g, n].

    S ← exp(Δ A) S + Δ x Bᵀ, y = S C. Returns (S, y [b, g, r, p]).
    """
    decay = jnp.exp(dt * _lead(A, dt.ndim))  # [b, g, r]
    inp = jnp.einsum("bgrp,bgn->bgrpn", x * dt[..., None], B)
    S = decay[..., None, None] * S + inp  # [b, g, r, p, n]
    return S, jnp.einsum("bgrpn,bgn->bgrp", S, C)


def _recurrent(x, dt, A, B, C, S0):
    """``lax.scan`` over L of :func:`_step`; x [b, L, g, r, p] ... → (y [b, L, g, r, p], S_L)."""

    def body(S, xs):
        x_t, dt_t, B_t, C_t = xs
        return _step(S, x_t, dt_t, A, B_t, C_t)

    xs = tuple(jnp.moveaxis(v, 1, 0) for v in (x, dt, B, C))  # time first
    S, y = lax.scan(body, S0, xs)
    return jnp.moveaxis(y, 0, 1), S


def _segsum(a: jax.Array) -> jax.Array:
    """Segment sums ``[..., T] → [..., T, T]``: Σ_{s<k≤l} a_k at [l, s] for l ≥ s, −∞ above.

    Masked cumulative sums (never a difference of two cumulative sums, which loses precision),
    so ``exp`` of the result is the causal decay matrix with exact zeros above the diagonal.
    """
    T = a.shape[-1]
    k_after_s = _lead(jnp.tril(jnp.ones((T, T), bool), -1), a.ndim + 1)  # [k, s]: k > s
    l_from_s = _lead(jnp.tril(jnp.ones((T, T), bool)), a.ndim + 1)  # [l, s]: l ≥ s
    terms = jnp.where(k_after_s, a[..., :, None], 0)  # [..., k, s]
    return jnp.where(l_from_s, jnp.cumsum(terms, axis=-2), -jnp.inf)  # [..., l, s]


def _chunked(x, dt, A, B, C, S0, T: int):
    """The SSD block decomposition; shapes as :func:`_recurrent`, chunk length ``T``."""
    b, L, g, r, p = x.shape
    c = -(-L // T)
    pad = c * T - L  # dt = 0 (an identity step) and x = B = C = 0 on the padding

    def chunks(v):  # [b, L, ...] -> [b, c, T, ...]
        v = jnp.pad(v, ((0, 0), (0, pad)) + ((0, 0),) * (v.ndim - 2))
        return v.reshape(b, c, T, *v.shape[2:])

    xdt = chunks(x * dt[..., None])  # Δ x, [b, c, T, g, r, p]
    Bc, Cc = chunks(B), chunks(C)  # [b, c, T, g, n]
    a = jnp.moveaxis(chunks(dt * _lead(A, dt.ndim)), 2, -1)  # log decay Δ A, [b, c, g, r, T]
    a_cum = jnp.cumsum(a, axis=-1)  # [b, c, g, r, T]

    # 1. intra-chunk (diagonal blocks): Y = (L ∘ C Bᵀ) Δx, the quadratic masked form
    decay_ls = jnp.exp(_segsum(a))  # [b, c, g, r, l, s]
    scores = jnp.einsum("bclgn,bcsgn->bcgls", Cc, Bc)  # [b, c, g, l, s]
    y_diag = jnp.einsum("bcgrls,bcsgrp->bclgrp", scores[:, :, :, None] * decay_ls, xdt)

    # 2. each chunk's final state from a zero start: Σ_s exp(Σ_{s<k≤T} a_k) Δx_s B_sᵀ
    to_end = jnp.exp(a_cum[..., -1:] - a_cum)  # [b, c, g, r, T], exponents ≤ 0
    xdt_end = xdt * jnp.moveaxis(to_end, -1, 2)[..., None]  # [b, c, T, g, r, p]
    states = jnp.einsum("bclgn,bclgrp->bcgrpn", Bc, xdt_end)  # [b, c, g, r, p, n]

    # 3. inter-chunk recurrence: the state entering each chunk (a scan over the c chunks)
    def carry(S, xs):
        total, state = xs  # [b, g, r], [b, g, r, p, n]
        return jnp.exp(total)[..., None, None] * S + state, S

    xs = (jnp.moveaxis(a_cum[..., -1], 1, 0), jnp.moveaxis(states, 1, 0))
    S_last, S_in = lax.scan(carry, S0, xs)  # [b, g, r, p, n], [c, b, g, r, p, n]

    # 4. the entering state's contribution (off-diagonal blocks): exp(Σ_{k≤l} a_k) S_in C_l
    y_off = jnp.einsum("bclgn,cbgrpn->bclgrp", Cc, S_in)
    y_off = y_off * jnp.moveaxis(jnp.exp(a_cum), -1, 2)[..., None]  # [b, c, T, g, r, p]
    y = (y_diag + y_off).reshape(b, c * T, g, r, p)[:, :L]
    return y, S_last


@overload
def ssd(
    x: ArrayLike,
    dt: ArrayLike,
    A: ArrayLike,
    B: ArrayLike,
    C: ArrayLike,
    *,
    D: ArrayLike | None = None,
    chunk_size: int = 64,
    initial_state: ArrayLike | None = None,
    return_final_state: Literal[False] = False,
    method: str = "chunked",
) -> jax.Array: ...


@overload
def ssd(
    x: ArrayLike,
    dt: ArrayLike,
    A: ArrayLike,
    B: ArrayLike,
    C: ArrayLike,
    *,
    D: ArrayLike | None = None,
    chunk_size: int = 64,
    initial_state: ArrayLike | None = None,
    return_final_state: Literal[True],
    method: str = "chunked",
) -> tuple[jax.Array, jax.Array]: ...


def ssd(
    x: ArrayLike,
    dt: ArrayLike,
    A: ArrayLike,
    B: ArrayLike,
    C: ArrayLike,
    *,
    D: ArrayLike | None = None,
    chunk_size: int = 64,
    initial_state: ArrayLike | None = None,
    return_final_state: bool = False,
    method: str = "chunked",
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Mamba-2 SSD: the multi-head selective SSM with a scalar decay per head and step.

    Per batch element and head (state :math:`S \in \mathbb{R}^{p \times n}`):

    .. math::

        S_t = e^{\Delta_t A} S_{t-1} + \Delta_t\, x_t B_t^\top, \qquad
        y_t = S_t C_t + D\, x_t,

    equivalently :math:`y = (L \circ C B^\top)(\Delta \circ x) + D x` with the 1-semiseparable
    mask :math:`L_{ts} = \exp\big(\sum_{s<k\le t} \Delta_k A\big)` for :math:`t \ge s`, else 0.
    ``x`` is the input (the paper's X), ``dt`` the step Δ (already positive: softplus and bias
    are the caller's), ``A`` the per-head decay rate, ``B`` / ``C`` the input / output
    projections shared by groups of heads (head i uses group ``i // (h // g)``) and ``D`` the
    per-head skip. ``"recurrent"`` runs the recurrence with ``lax.scan``; ``"chunked"`` the SSD
    block decomposition (intra-chunk quadratic form, chunk states, a scan passing states between
    chunks, the incoming state's output term). ``"pallas"`` is the chunked form as Pallas
    kernels (``jaxdiv.models.kernels.ssd``): grid over (batch, blocks of heads), the state
    carried across chunks inside the kernel, x read and y written once in x's dtype and layout
    (Δ x and D x formed on chip), a backward kernel over the chunks in reverse from
    checkpointed chunk states (custom VJP, reverse mode only); interpret mode on CPU (slow: for
    checking). It lowers for TPU and GPU but has not been compiled or measured on one, so it is
    opt-in and the default stays ``"chunked"``. All math runs in float32 at least, whatever the
    input dtype. L need not be a multiple of ``chunk_size`` (the tail is padded with Δ = 0, an
    identity step).

    Args:
      x: input ``[b, L, h, p]``.
      dt: Δ ``[b, L, h]``, positive.
      A: ``[h]``, negative.
      B: ``[b, L, g, n]``, g dividing h.
      C: ``[b, L, g, n]``.
      D: skip ``[h]`` or None.
      chunk_size: the chunk length T of ``"chunked"`` and ``"pallas"`` (a positive int;
        clipped to L).
      initial_state: S_0 ``[b, h, p, n]`` or None (zeros).
      return_final_state: also return S_L.
      method: ``"chunked"``, ``"recurrent"`` or ``"pallas"``.

    Returns:
      y ``[b, L, h, p]`` in ``x``'s dtype; with ``return_final_state``, ``(y, S_L)`` where
      S_L ``[b, h, p, n]`` is in the compute dtype (float32, or float64 for float64 inputs).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> k = jax.random.split(jax.random.key(0), 4)
      >>> x = jax.random.normal(k[0], (2, 10, 4, 3))
      >>> dt = jax.nn.softplus(jax.random.normal(k[1], (2, 10, 4)))
      >>> B, C = jax.random.normal(k[2], (2, 2, 10, 2, 5))
      >>> A = -jnp.arange(1.0, 5.0)
      >>> y, S = ssd(x, dt, A, B, C, chunk_size=4, return_final_state=True)
      >>> y_ref = ssd(x, dt, A, B, C, method="recurrent")
      >>> y.shape, S.shape, bool(jnp.allclose(y, y_ref, atol=1e-5))
      ((2, 10, 4, 3), (2, 4, 3, 5), True)

    References:
      Dao and Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
      Structured State Space Duality", https://arxiv.org/abs/2405.21060, Eq. (2) (recurrence),
      Section 6 (SSD algorithm, block decomposition) and Listing 1 (``ssd_minimal_discrete``).
    """
    checks.one_of(method, "method", METHODS)
    T = checks.positive_int(chunk_size, "chunk_size")
    x, dt, A, B, C, D, S0, dtype = _check_inputs(x, dt, A, B, C, D, initial_state, step=False)
    b, L, h, p = x.shape
    g, n = B.shape[-2:]
    r = h // g
    S0 = jnp.zeros((b, h, p, n), dtype) if S0 is None else S0.astype(dtype)
    if method == "pallas":  # reads x and writes y in x's dtype and layout, D x included
        y, S = _kernels.ssd_op_layout(x, dt, A, B, C, D, S0, chunk_size=T)
        return (y, S) if return_final_state else y
    xf = x.astype(dtype).reshape(b, L, g, r, p)
    dtf = dt.astype(dtype).reshape(b, L, g, r)
    Af = A.astype(dtype).reshape(g, r)
    Bf, Cf = B.astype(dtype), C.astype(dtype)
    S0 = S0.reshape(b, g, r, p, n)
    if method == "recurrent":
        y, S = _recurrent(xf, dtf, Af, Bf, Cf, S0)
    else:
        y, S = _chunked(xf, dtf, Af, Bf, Cf, S0, max(1, min(T, L)))
    y = y.reshape(b, L, h, p)
    if D is not None:
        y = y + x.astype(dtype) * D.astype(dtype).reshape(1, 1, h, 1)
    y = y.astype(x.dtype)
    return (y, S.reshape(b, h, p, n)) if return_final_state else y


def ssd_step(
    state: ArrayLike,
    x_t: ArrayLike,
    dt_t: ArrayLike,
    A: ArrayLike,
    B_t: ArrayLike,
    C_t: ArrayLike,
    D: ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""One step of :func:`ssd`, for recurrent decoding.

    .. math::

        S \leftarrow e^{\Delta_t A} S + \Delta_t\, x_t B_t^\top, \qquad y_t = S C_t + D x_t

    per head (head i uses group ``i // (h // g)`` of ``B_t``, ``C_t``); the same code as
    ``ssd(method="recurrent")``, so iterating it from S_0 gives ``ssd``'s outputs and S_L.

    Args:
      state: S ``[b, h, p, n]``.
      x_t: input ``[b, h, p]``.
      dt_t: Δ_t ``[b, h]``, positive.
      A: ``[h]``, negative.
      B_t: ``[b, g, n]``.
      C_t: ``[b, g, n]``.
      D: skip ``[h]`` or None.

    Returns:
      ``(y_t, S)``: y_t ``[b, h, p]`` in ``x_t``'s dtype and the new state ``[b, h, p, n]`` in
      the compute dtype (float32 at least).

    Examples:
      >>> import jax.numpy as jnp
      >>> S = jnp.zeros((1, 2, 3, 4))
      >>> y, S = ssd_step(S, jnp.ones((1, 2, 3)), jnp.ones((1, 2)), -jnp.ones(2),
      ...                 jnp.ones((1, 1, 4)), jnp.ones((1, 1, 4)), D=jnp.ones(2))
      >>> y[0, 0].tolist(), S.shape
      ([5.0, 5.0, 5.0], (1, 2, 3, 4))

    References:
      Dao and Gu, "Transformers are SSMs", https://arxiv.org/abs/2405.21060, Eq. (2) and
      Section 7.1 (the recurrent mode for autoregressive inference).
    """
    x, dt, A, B, C, D, _, dtype = _check_inputs(x_t, dt_t, A, B_t, C_t, D, state, step=True)
    S = jnp.asarray(state)  # checked above
    b, h, p = x.shape
    g, n = B.shape[-2:]
    r = h // g
    xf = x.astype(dtype).reshape(b, g, r, p)
    S, y = _step(
        S.astype(dtype).reshape(b, g, r, p, n),
        xf,
        dt.astype(dtype).reshape(b, g, r),
        A.astype(dtype).reshape(g, r),
        B.astype(dtype),
        C.astype(dtype),
    )
    y = y.reshape(b, h, p)
    if D is not None:
        y = y + x.astype(dtype) * D.astype(dtype).reshape(1, h, 1)
    return y.astype(x.dtype), S.reshape(b, h, p, n)
