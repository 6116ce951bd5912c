"""Pallas kernels for Mamba-2's SSD (state-space duality), chunked form, reading the op's layout.

SSD is causal linear attention with a scalar decay per head and step (Dao & Gu 2024, Section
5): with q = C, k = B, v = Δ x and log decay a = Δ A,

    S_t = e^{Δ_t A} S_{t−1} + Δ_t x_t B_tᵀ  (S [p, n]),   y_t = S_t C_t + D x_t.

The kernels carry it on the transposed state Sᵀ ``[n, p]`` chunk by chunk (chunk length T,
G = the chunk-local inclusive cumulative sum of Δ A):

    y_l = Σ_{s≤l} (C_l · B_s) e^{G_l − G_s} Δ_s x_s + e^{G_l} C_l Sᵀ,
    Sᵀ ← e^{G_T} Sᵀ + Σ_s e^{G_T − G_s} B_s (Δ_s x_s)ᵀ,

and its adjoint (custom VJP; the per-chunk formulas are those of the per-head-decay
linear-attention kernels, :mod:`jaxdiv.models.kernels.linear_attention`, with ∂x = Δ ∂v and
∂Δ = Σ_p x ⊙ ∂v for the product v = Δ x formed on chip).

What moves through memory, per token (what the ``accelerators`` benchmark counts from the
BlockSpecs): x is read and y written once, **in x's dtype and layout** — the blocks are
``[L, hb·p]`` column slabs of x viewed as ``[b, L, h·p]``, hb heads per program, so neither x
nor y is transposed or cast in HBM; Δ x is formed on chip in float32. B and C (per group,
``[b, g, L, n]``: a reshape for one group) are read by each program of their group; Δ and G
(heads-major ``[b, h, L, 1]``, float32, h·4 bytes a token each) by their heads' programs.

Grid (batch, head blocks); the state ``[n, p]`` of each of the program's hb heads is a
``lax.fori_loop`` carry. hb = 128 / p when p divides 128 and the program's heads share one
group or cover whole groups (its B, C block then holds hb / r groups), else 1, so that on TPU a
block's last dimension is a multiple of the 128 lanes (or all of h·p); the (8, 128) rule also
wants L a multiple of 8 (T a multiple of 8 does it). On GPU (Triton) p, n and T should be
powers of two ≥ 16 for ``tl.dot`` (hb = 1 with p < 128 does not lower for TPU). For the
backward pass the forward kernel writes the state entering every chunk (``[b, h, L/T, n, p]``
float32); the backward kernel runs the chunks in reverse from them, writing ∂x in x's dtype,
∂Δ, ∂G and per-head ∂B, ∂C (summed over each group outside). G's cumulative sum, its gradient
to Δ and A, the D x skip and the group sums are ordinary JAX around the kernels. Lowering for
TPU (Mosaic) and GPU (Triton) is checked on a CPU host
(``tests/models/test_kernel_lowering.py``); no device has run them.
"""

# b batch, L length (Lp padded to a multiple of T), h heads, p head dim, g groups, r = h / g,
# n state, T chunk length, Nc = Lp / T chunks, hb heads per program

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.typing import ArrayLike

from jaxdiv.models.kernels._common import (
    causal_mask,
    check_block,
    head_decays,
    mm,
    pad_axis,
    pallas_call,
    resolve_interpret,
)

_SQ = pl.squeezed


def _heads_per_block(h: int, p: int, r: int) -> int:
    """hb: heads per program, 128 / p lanes' worth when p divides 128, hb divides h and a
    program's heads are within one group or cover whole groups (hb divides r or r divides hb);
    else 1."""
    hb = 128 // p if p < 128 and 128 % p == 0 else 1
    return hb if h % hb == 0 and (r % hb == 0 or hb % r == 0) else 1


def _forward_kernel(
    x_ref, dt_ref, g_ref, b_ref, c_ref, d_ref, s0_ref, y_ref, sl_ref, *states_ref,
    T: int, hb: int, p: int, r: int,
):  # fmt: skip
    mask = causal_mask(T)
    n_chunks = x_ref.shape[0] // T
    f32 = sl_ref.dtype

    for i in range(hb):  # the program's heads, one after another
        cols = pl.ds(i * p, p)

        def chunk(c, S, i=i, cols=cols):
            if states_ref:
                states_ref[0][i, c] = S  # the state entering chunk c
            rows = pl.ds(pl.multiple_of(c * T, T), T)
            q, k = c_ref[i // r, rows, :].astype(f32), b_ref[i // r, rows, :].astype(f32)
            x = x_ref[rows, cols].astype(f32)  # [T, p]
            v = x * dt_ref[i, rows, :]  # Δ x
            G = g_ref[i, rows, :]  # [T, 1]
            A = mm(q, k, tb=True) * head_decays(G, mask)
            y = mm(A, v) + mm(q * jnp.exp(G), S) + d_ref[i] * x
            last = g_ref[i, c * T + T - 1, :][None, :]  # [1, 1]
            S = jnp.exp(last) * S + mm(k * jnp.exp(last - G), v, ta=True)
            y_ref[rows, cols] = y.astype(y_ref.dtype)
            return S

        sl_ref[i] = lax.fori_loop(0, n_chunks, chunk, s0_ref[i].astype(f32))


def _backward_kernel(
    x_ref, dt_ref, g_ref, b_ref, c_ref, d_ref, states_ref, dy_ref, dsl_ref,
    dx_ref, ddt_ref, dg_ref, db_ref, dc_ref, dd_ref, ds0_ref, *, T: int, hb: int, p: int, r: int,
):  # fmt: skip
    mask = causal_mask(T)
    n_chunks = x_ref.shape[0] // T
    f32 = ds0_ref.dtype
    is_last = lax.broadcasted_iota(jnp.int32, (T, 1), 0) == T - 1
    rowsum = functools.partial(jnp.sum, axis=1, keepdims=True)

    for i in range(hb):
        cols = pl.ds(i * p, p)

        def chunk(j, carry, i=i, cols=cols):
            dS_next, dD = carry  # ∂ of the state leaving the chunk, ∂D so far [1, 1]
            c = n_chunks - 1 - j
            rows = pl.ds(pl.multiple_of(c * T, T), T)
            q, k = c_ref[i // r, rows, :].astype(f32), b_ref[i // r, rows, :].astype(f32)
            x, dt = x_ref[rows, cols].astype(f32), dt_ref[i, rows, :]  # [T, p], [T, 1]
            v, dy = x * dt, dy_ref[rows, cols].astype(f32)  # Δ x, ∂y [T, p]
            S = states_ref[i, c]  # [n, p], the state entering the chunk
            G = g_ref[i, rows, :]  # [T, 1]
            W = head_decays(G, mask)
            E, last = jnp.exp(G), g_ref[i, c * T + T - 1, :][None, :]
            to_end = jnp.exp(last - G)  # [T, 1]
            kt = k * to_end  # B̃ [T, n]
            A = mm(q, k, tb=True) * W
            dA = jnp.where(mask, mm(dy, v, tb=True), 0.0)  # [T, T]
            X = mm(dy, S, tb=True)  # ∂y against the state [T, n]
            Y = mm(v, dS_next, tb=True)  # v ∂S'ᵀ [T, n]
            P = dA * W
            dq = mm(P, k) + E * X
            dk = mm(P, q, ta=True) + to_end * Y
            dv = mm(A, dy, ta=True) + mm(kt, dS_next)
            Z = dA * A  # ∂/∂(G_l − G_s) of the intra-chunk scores
            dG = rowsum(Z) - rowsum(Z.T) + rowsum(q * E * X) - rowsum(kt * Y)
            total = lambda v: jnp.sum(rowsum(v), axis=0, keepdims=True)  # [1, 1]
            end = total(kt * Y) + jnp.exp(last) * total(dS_next * S)
            dG = dG + jnp.where(is_last, end, 0.0)
            dx_ref[rows, cols] = (dv * dt + d_ref[i] * dy).astype(dx_ref.dtype)
            ddt_ref[i, rows, :] = rowsum(dv * x)
            dg_ref[i, rows, :] = dG
            dc_ref[i, rows, :] = dq
            db_ref[i, rows, :] = dk
            dS = jnp.exp(last) * dS_next + mm(q * E, dy, ta=True)
            return dS, dD + total(dy * x)

        zero = jnp.zeros((1, 1), f32)
        ds0_ref[i], dd_ref[i] = lax.fori_loop(0, n_chunks, chunk, (dsl_ref[i].astype(f32), zero))


def _specs(Lp: int, p: int, n: int, hb: int, r: int):
    """BlockSpecs on the grid (batch, head block j): x-layout column slabs, heads-major rows,
    the group's B / C, per-head states."""
    cols = pl.BlockSpec((_SQ, Lp, hb * p), lambda b, j: (b, 0, j))  # x, y, ∂y, ∂x [b, L, h·p]
    rows = pl.BlockSpec((_SQ, hb, Lp, 1), lambda b, j: (b, j, 0, 0))  # Δ, G [b, h, L, 1]
    gb = max(1, hb // r)  # groups a program reads: its heads' (head i: group i // r in it)
    group = pl.BlockSpec((_SQ, gb, Lp, n), lambda b, j: (b, j * hb // (r * gb), 0, 0))
    per_head = pl.BlockSpec((_SQ, hb, Lp, n), lambda b, j: (b, j, 0, 0))  # ∂B, ∂C [b, h, L, n]
    state = pl.BlockSpec((_SQ, hb, n, p), lambda b, j: (b, j, 0, 0))  # [b, h, n, p]
    skip = pl.BlockSpec((hb, 1, 1), lambda b, j: (j, 0, 0))  # D [h, 1, 1]
    return cols, rows, group, per_head, state, skip


def _forward(x, dt, G, B, C, D, S0, *, T, hb, r, interpret, save):
    b, Lp = x.shape[:2]
    h, n, p = S0.shape[1:]
    cols, rows, group, _, state, skip = _specs(Lp, p, n, hb, r)
    out_shape = [jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(S0.shape, S0.dtype)]
    out_specs = [cols, state]
    if save:
        out_shape.append(jax.ShapeDtypeStruct((b, h, Lp // T, n, p), S0.dtype))
        out_specs.append(pl.BlockSpec((_SQ, hb, Lp // T, n, p), lambda b, j: (b, j, 0, 0, 0)))
    return pallas_call(
        functools.partial(_forward_kernel, T=T, hb=hb, p=p, r=r),
        out_shape=tuple(out_shape),
        grid=(b, h // hb),
        in_specs=[cols, rows, rows, group, group, skip, state],
        out_specs=tuple(out_specs),
        interpret=interpret,
        name="ssd_fwd",
    )(x, dt, G, B, C, D, S0)


def _backward(x, dt, G, B, C, D, states, dy, dSL, *, T, hb, r, interpret):
    b, Lp = x.shape[:2]
    h, n, p = dSL.shape[1:]
    cols, rows, group, per_head, state, skip = _specs(Lp, p, n, hb, r)
    per_batch_skip = pl.BlockSpec((_SQ, hb, 1, 1), lambda b, j: (b, j, 0, 0))  # ∂D [b, h, 1, 1]
    checkpoints = pl.BlockSpec((_SQ, hb, Lp // T, n, p), lambda b, j: (b, j, 0, 0, 0))
    f32 = dSL.dtype
    per_head_n = jax.ShapeDtypeStruct((b, h, Lp, n), f32)
    heads_rows = jax.ShapeDtypeStruct(dt.shape, f32)
    dx, ddt, dG, dB, dC, dD, dS0 = pallas_call(
        functools.partial(_backward_kernel, T=T, hb=hb, p=p, r=r),
        out_shape=(
            jax.ShapeDtypeStruct(x.shape, x.dtype),
            heads_rows,
            heads_rows,
            per_head_n,
            per_head_n,
            jax.ShapeDtypeStruct((b, h, 1, 1), f32),
            jax.ShapeDtypeStruct(dSL.shape, f32),
        ),
        grid=(b, h // hb),
        in_specs=[cols, rows, rows, group, group, skip, checkpoints, cols, state],
        out_specs=(cols, rows, rows, per_head, per_head, per_batch_skip, state),
        interpret=interpret,
        name="ssd_bwd",
    )(x, dt, G, B, C, D, states, dy, dSL)
    g = B.shape[1]
    dB = jnp.sum(dB.reshape(b, g, r, Lp, n), axis=2).astype(B.dtype)  # per head → per group
    dC = jnp.sum(dC.reshape(b, g, r, Lp, n), axis=2).astype(C.dtype)
    dD = jnp.sum(dD, axis=0).astype(D.dtype)  # per batch row → per head
    return dx, ddt.astype(dt.dtype), dG.astype(G.dtype), dB, dC, dD, dS0


def _padded_impl(x, dt, G, B, C, D, S0, T, hb, r, interpret):
    kw = dict(T=T, hb=hb, r=r, interpret=interpret, save=False)
    y, SL = _forward(x, dt, G, B, C, D, S0, **kw)
    return y, SL


def _padded_fwd(x, dt, G, B, C, D, S0, T, hb, r, interpret):
    kw = dict(T=T, hb=hb, r=r, interpret=interpret, save=True)
    y, SL, states = _forward(x, dt, G, B, C, D, S0, **kw)
    return (y, SL), (x, dt, G, B, C, D, states)


def _padded_bwd(T, hb, r, interpret, res, cts):
    x, dt, G, B, C, D, states = res
    dy, dSL = cts
    kw = dict(T=T, hb=hb, r=r, interpret=interpret)
    return _backward(x, dt, G, B, C, D, states, dy.astype(x.dtype), dSL, **kw)


_padded = jax.custom_vjp(_padded_impl, nondiff_argnums=(7, 8, 9, 10))
_padded.defvjp(_padded_fwd, _padded_bwd)


def ssd_op_layout(
    x: jax.Array,
    dt: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    D: jax.Array | None,
    S0: jax.Array,
    *,
    chunk_size: int,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The core on the op's layouts, checked by the caller: x ``[b, L, h, p]`` (any float
    dtype: read and written as is), dt ``[b, L, h]``, A ``[h]``, B, C ``[b, L, g, n]``, D
    ``[h]`` or None, S0 ``[b, h, p, n]`` in the compute dtype (float32 at least). Returns (y
    ``[b, L, h, p]`` in x's dtype, rounded once, S_L ``[b, h, p, n]`` in S0's dtype)."""
    interp = resolve_interpret(interpret)
    b, L, h, p = x.shape
    g, n = B.shape[-2:]
    r = h // g
    T = min(check_block(chunk_size, "chunk_size"), L)
    f32 = S0.dtype
    heads_rows = lambda v: pad_axis(jnp.moveaxis(v, 1, 2)[..., None], 2, T)  # [b, h, Lp, 1]
    dt_h = heads_rows(dt.astype(f32))
    Lp = dt_h.shape[2]
    a = dt_h * A.astype(f32).reshape(1, h, 1, 1)  # Δ A, 0 on the padding (an identity step)
    G = jnp.cumsum(a.reshape(b, h, Lp // T, T, 1), axis=3).reshape(a.shape)
    group_rows = lambda v: pad_axis(jnp.moveaxis(v, 1, 2), 2, T)  # [b, g, Lp, n]
    xp = pad_axis(x, 1, T).reshape(b, Lp, h * p)
    skip = jnp.zeros((h, 1, 1), f32) if D is None else D.astype(f32).reshape(h, 1, 1)
    y, SL = _padded(
        xp, dt_h, G, group_rows(B), group_rows(C), skip, jnp.swapaxes(S0, 2, 3),
        T, _heads_per_block(h, p, r), r, interp,
    )  # fmt: skip
    return y.reshape(b, Lp, h, p)[:, :L], jnp.swapaxes(SL, 2, 3)


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
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""Mamba-2 SSD as Pallas kernels (forward and custom-VJP backward).

    .. math::

        S_t = e^{\Delta_t A} S_{t-1} + \Delta_t\, x_t B_t^\top, \qquad y_t = S_t C_t + D x_t

    in the layouts of ``jaxdiv.models.ssd`` (x ``[b, L, h, p]``, dt ``[b, L, h]``, A ``[h]``,
    B, C ``[b, L, g, n]`` with head i reading group i // (h / g), D ``[h]``, S_0 ``[b, h, p,
    n]``). x is read and y written in x's dtype; the math and the state run in float32 at
    least. The op's ``method="pallas"`` validates its inputs and calls the same core.

    Args:
      x: input.
      dt: Δ, positive.
      A: per-head decay rate, negative.
      B: input projections.
      C: output projections.
      D: skip or None.
      chunk_size: T, tokens per chunk (L need not be a multiple).
      initial_state: S_0 or None (zeros).
      interpret: Pallas interpret mode; None: on CPU only.

    Returns:
      ``(y [b, L, h, p], S_L [b, h, p, n])``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> k = jax.random.split(jax.random.key(0), 3)
      >>> x = jax.random.normal(k[0], (1, 10, 4, 3))
      >>> dt = jax.nn.softplus(jax.random.normal(k[1], (1, 10, 4)))
      >>> B, C = jax.random.normal(k[2], (2, 1, 10, 2, 5))
      >>> y, S = ssd(x, dt, -jnp.arange(1.0, 5.0), B, C, chunk_size=4)
      >>> y.shape, S.shape
      ((1, 10, 4, 3), (1, 4, 3, 5))
    """
    x, dt, A, B, C = (jnp.asarray(v) for v in (x, dt, A, B, C))
    arrays = [x, dt, A, B, C] + [v for v in (D, initial_state) if v is not None]
    dtype = jnp.promote_types(jnp.result_type(*arrays), jnp.float32)
    b, L, h, p = x.shape
    n = B.shape[-1]
    if initial_state is None:
        S0 = jnp.zeros((b, h, p, n), dtype)
    else:
        S0 = jnp.asarray(initial_state, dtype)
    D = None if D is None else jnp.asarray(D, dtype)
    return ssd_op_layout(x, dt, A, B, C, D, S0, chunk_size=chunk_size, interpret=interpret)
