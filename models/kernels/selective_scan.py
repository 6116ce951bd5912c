"""Pallas kernels for Mamba's selective scan (S6): forward recurrence and reverse-time adjoint.

The op ``jaxdiv.models.ssm.selective_scan(..., method="pallas")`` computes Δ (bias, softplus)
and the ``D u`` / ``silu(z)`` terms with ordinary JAX around these kernels, so their gradients
come from JAX autodiff; the kernels carry the recurrence

    h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t,   y_t = ⟨h_t, C_t⟩

and its adjoint (custom VJP; gradients w.r.t. u, Δ, A, B, C and h_0).

Forward kernel, grid (batch, channel blocks): the state ``[N, block_d]`` (channels on the lane
axis, the state on sublanes) is a ``lax.fori_loop`` carry inside the kernel, so it never leaves
on-chip memory; the loop runs over chunks of ``block_t`` steps and unrolls each chunk's steps,
each step reading its ``[block_d]`` row of u and Δ and its ``[N]`` row of B and C. Every input
element is read once. For the backward pass the forward kernel also
writes the state entering every chunk (checkpoints ``[B, L/block_t, N, D]``: the residual
memory is B·D·N·L/block_t floats besides the inputs, 2·B·L·D for N = 16 and block_t = 8).

Backward kernel, same grid: chunks in reverse order; per chunk it recomputes the chunk's
``block_t`` states from its checkpoint (one more ``exp`` per element, as the forward), then
runs the adjoint recurrence backwards through them,

    g_t = C_t gy_t + exp(Δ_{t+1} A) ⊙ g_{t+1},   q_t = g_t ⊙ exp(Δ_t A) ⊙ h_{t−1},
    ∂u_t = Δ_t Σ_n g_t B_t,   ∂Δ_t = u_t Σ_n g_t B_t + Σ_n q_t A,   ∂A = Σ_{b,t} q_t Δ_t,
    ∂B_t = Σ_d g_t Δ_t u_t,   ∂C_t = Σ_d h_t gy_t,   ∂h_0 = exp(Δ_1 A) ⊙ g_1,

writing ∂u, ∂Δ per channel block and per-block partial sums of ∂B, ∂C (``[B, D/block_d, L,
N]``) and ∂A (``[B, N, D]``) that JAX sums outside the kernel.

Lowering: ``interpret=None`` runs the Pallas interpreter on CPU (what the tests check). For
TPU the blocks are ``[L, block_d]`` with ``block_d`` = 128 (or all of D when D ≤ 128), ``[L,
N]`` and ``[N, block_d]`` (full or (8, 128)-tiled last two dims) and every grid dimension is
``"parallel"``; each step reads its rows of u, Δ, B, C from the refs (no value slicing, which
Triton does not lower) and writes its output row. Whole-L blocks bound L by VMEM (about 8k
steps at block_d = 128 in float32). On GPU (Triton) ``block_d`` defaults to 32 to keep the
``3·block_t`` states of the backward chunk in registers. Both lowerings pass on a CPU host
(``tests/models/test_kernel_lowering.py``); neither has been compiled or measured on a device
(no accelerator was available): the method is opt-in there.
"""

# B batch, L length (padded to Lp, a multiple of T), D channels, N state, T = block_t,
# bd = block_d, Lc = Lp / T chunks, nb = D / bd channel blocks

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.typing import ArrayLike

from jaxdiv.models.kernels._common import check_block, pad_axis, pallas_call, resolve_interpret

_SQ = pl.squeezed  # a squeezed (size-1, dropped) block dimension


def _default_block_d(D: int, interpret: bool) -> int:
    if not interpret and jax.default_backend() == "gpu":
        return min(32, pl.next_power_of_2(D))
    return D if D <= 128 else 128


def _row(ref, t) -> jax.Array:
    """Row ``t`` of a ``[Lp, ·]`` block as ``[1, ·]`` (a ref load: no value slicing in-kernel)."""
    return ref[t, :][None, :]


def _col(ref, t) -> jax.Array:
    """Row ``t`` of a ``[Lp, N]`` block as an ``[N, 1]`` column over the state's rows."""
    return ref[t, :][:, None]


def _forward_kernel(u_ref, d_ref, a_ref, b_ref, c_ref, h0_ref, y_ref, hl_ref, *hs_refs, T: int):
    A = a_ref[...]  # [N, bd]
    n_chunks = u_ref.shape[0] // T

    def chunk(c, h):
        if hs_refs:
            hs_refs[0][c] = h  # checkpoint: the state entering chunk c
        for i in range(T):
            t = c * T + i
            dt = _row(d_ref, t)  # [1, bd]
            h = jnp.exp(dt * A) * h + _col(b_ref, t) * (dt * _row(u_ref, t))  # [N, bd]
            y = jnp.sum(h * _col(c_ref, t), axis=0)  # [bd]
            y_ref[t, :] = y.astype(y_ref.dtype)
        return h

    hl_ref[...] = lax.fori_loop(0, n_chunks, chunk, h0_ref[...]).astype(hl_ref.dtype)


def _backward_kernel(
    hs_ref, u_ref, d_ref, a_ref, b_ref, c_ref, gy_ref, ghl_ref,
    gu_ref, gd_ref, gb_ref, gc_ref, ga_ref, gh0_ref, *, T: int,
):  # fmt: skip
    A = a_ref[...]  # [N, bd]
    n_chunks = u_ref.shape[0] // T

    def chunk(i, carry):
        r, gA = carry  # r = exp(Δ_{t+1} A) ⊙ g_{t+1} (∂ of the state leaving the chunk); ∂A
        c = n_chunks - 1 - i
        h = hs_ref[c]  # [N, bd]
        h_prev, h_cur, decay = [], [], []
        for k in range(T):  # recompute the chunk's states from its checkpoint
            t = c * T + k
            dt = _row(d_ref, t)
            h_prev.append(h)
            decay.append(jnp.exp(dt * A))
            h = decay[k] * h + _col(b_ref, t) * (dt * _row(u_ref, t))
            h_cur.append(h)
        for k in reversed(range(T)):
            t = c * T + k
            d1, u1 = d_ref[t, :], u_ref[t, :]  # Δ_t, u_t [bd]
            dt, ut, gyt = d1[None, :], u1[None, :], _row(gy_ref, t)  # [1, bd]
            Bt = _col(b_ref, t)  # [N, 1]
            gc_ref[t, :] = jnp.sum(h_cur[k] * gyt, axis=1).astype(gc_ref.dtype)  # [N]
            g = r + _col(c_ref, t) * gyt  # g_t [N, bd]
            r = decay[k] * g
            q = r * h_prev[k]
            gA = gA + q * dt
            gx = jnp.sum(g * Bt, axis=0)  # [bd]
            gu_ref[t, :] = (gx * d1).astype(gu_ref.dtype)
            gd_ref[t, :] = (gx * u1 + jnp.sum(q * A, axis=0)).astype(gd_ref.dtype)
            gb_ref[t, :] = jnp.sum(g * (dt * ut), axis=1).astype(gb_ref.dtype)  # [N]
        return r, gA

    r, gA = lax.fori_loop(0, n_chunks, chunk, (ghl_ref[...], jnp.zeros_like(A)))
    gh0_ref[...] = r.astype(gh0_ref.dtype)
    ga_ref[...] = gA.astype(ga_ref.dtype)


def _specs(Lp: int, N: int, bd: int):
    """BlockSpecs on the grid (b, j): ``[Lp, bd]`` channel slabs, ``[Lp, N]`` rows, ``[N, bd]``."""
    seq_d = pl.BlockSpec((_SQ, Lp, bd), lambda b, j: (b, 0, j))  # u, Δ, y, ∂u, ∂Δ, ∂y
    seq_n = pl.BlockSpec((_SQ, Lp, N), lambda b, j: (b, 0, 0))  # B, C
    a = pl.BlockSpec((N, bd), lambda b, j: (0, j))  # Aᵀ
    state = pl.BlockSpec((_SQ, N, bd), lambda b, j: (b, 0, j))  # h_0, h_L, their cotangents
    return seq_d, seq_n, a, state


def _forward(h0, delta, A_T, u, B, C, *, bd, T, interpret, save):
    Bsz, Lp, D = u.shape
    N = A_T.shape[0]
    seq_d, seq_n, a, state = _specs(Lp, N, bd)
    out_shape = [jax.ShapeDtypeStruct(u.shape, u.dtype), jax.ShapeDtypeStruct(h0.shape, h0.dtype)]
    out_specs = [seq_d, state]
    if save:
        out_shape.append(jax.ShapeDtypeStruct((Bsz, Lp // T, N, D), h0.dtype))
        out_specs.append(pl.BlockSpec((_SQ, Lp // T, N, bd), lambda b, j: (b, 0, 0, j)))
    return pallas_call(
        functools.partial(_forward_kernel, T=T),
        out_shape=tuple(out_shape),
        grid=(Bsz, D // bd),
        in_specs=[seq_d, seq_d, a, seq_n, seq_n, state],
        out_specs=tuple(out_specs),
        interpret=interpret,
        name="selective_scan_fwd",
    )(u, delta, A_T, B, C, h0)


def _backward(hs, delta, A_T, u, B, C, gy, ghL, *, bd, T, interpret):
    Bsz, Lp, D = u.shape
    N = A_T.shape[0]
    nb = D // bd
    seq_d, seq_n, a, state = _specs(Lp, N, bd)
    partial_n = pl.BlockSpec((_SQ, _SQ, Lp, N), lambda b, j: (b, j, 0, 0))  # per channel block
    checkpoints = pl.BlockSpec((_SQ, Lp // T, N, bd), lambda b, j: (b, 0, 0, j))
    f32 = jnp.promote_types(u.dtype, jnp.float32)
    gu, gd, gB, gC, gA, gh0 = pallas_call(
        functools.partial(_backward_kernel, T=T),
        out_shape=(
            jax.ShapeDtypeStruct(u.shape, u.dtype),
            jax.ShapeDtypeStruct(delta.shape, delta.dtype),
            jax.ShapeDtypeStruct((Bsz, nb, Lp, N), f32),
            jax.ShapeDtypeStruct((Bsz, nb, Lp, N), f32),
            jax.ShapeDtypeStruct((Bsz, N, D), f32),
            jax.ShapeDtypeStruct(ghL.shape, ghL.dtype),
        ),
        grid=(Bsz, nb),
        in_specs=[checkpoints, seq_d, seq_d, a, seq_n, seq_n, seq_d, state],
        out_specs=(seq_d, seq_d, partial_n, partial_n, state, state),
        interpret=interpret,
        name="selective_scan_bwd",
    )(hs, u, delta, A_T, B, C, gy, ghL)
    return (
        gh0,
        gd,
        jnp.sum(gA, axis=0).astype(A_T.dtype),
        gu,
        jnp.sum(gB, axis=1).astype(B.dtype),
        jnp.sum(gC, axis=1).astype(C.dtype),
    )


def _scan_padded_impl(h0, delta, A_T, u, B, C, bd, T, interpret):
    y, hL = _forward(h0, delta, A_T, u, B, C, bd=bd, T=T, interpret=interpret, save=False)
    return y, hL


def _scan_padded_fwd(h0, delta, A_T, u, B, C, bd, T, interpret):
    y, hL, hs = _forward(h0, delta, A_T, u, B, C, bd=bd, T=T, interpret=interpret, save=True)
    return (y, hL), (hs, delta, A_T, u, B, C)


def _scan_padded_bwd(bd, T, interpret, res, cts):
    hs, delta, A_T, u, B, C = res
    gy, ghL = cts
    return _backward(hs, delta, A_T, u, B, C, gy, ghL, bd=bd, T=T, interpret=interpret)


_scan_padded = jax.custom_vjp(_scan_padded_impl, nondiff_argnums=(6, 7, 8))
_scan_padded.defvjp(_scan_padded_fwd, _scan_padded_bwd)


def scan_state_major(
    h0: jax.Array,
    delta: jax.Array,
    A_T: jax.Array,
    u: jax.Array,
    B: jax.Array,
    C: jax.Array,
    *,
    block_d: int | None = None,
    block_t: int = 8,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The recurrence on the op's internal layout: state-major h0 ``[B, N, D]``, A_T ``[N, D]``.

    delta (final Δ), u ``[B, L, D]``; B, C ``[B, L, N]``, all in one float dtype. Returns
    (y ``[B, L, D]``, h_L ``[B, N, D]``). L is zero-padded to a multiple of ``block_t`` (Δ = 0
    is an exact identity step) and D to a multiple of ``block_d`` (A = 0, u = 0 keep the
    padded channels' state at 0); the padding is sliced off.
    """
    interp = resolve_interpret(interpret)
    L, D = u.shape[1], u.shape[2]
    T = check_block(block_t, "block_t")
    bd = _default_block_d(D, interp) if block_d is None else check_block(block_d, "block_d")
    B, C = pad_axis(B, 1, T), pad_axis(C, 1, T)
    delta, u = pad_axis(pad_axis(delta, 1, T), 2, bd), pad_axis(pad_axis(u, 1, T), 2, bd)
    A_T, h0 = pad_axis(A_T, 1, bd), pad_axis(h0, 2, bd)
    y, hL = _scan_padded(h0, delta, A_T, u, B, C, bd, T, interp)
    return y[:, :L, :D], hL[:, :, :D]


def selective_scan(
    u: ArrayLike,
    delta: ArrayLike,
    A: ArrayLike,
    B: ArrayLike,
    C: ArrayLike,
    *,
    initial_state: ArrayLike | None = None,
    block_d: int | None = None,
    block_t: int = 8,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""The selective-scan recurrence as Pallas kernels (forward and custom-VJP backward).

    .. math::

        h_t = \exp(\Delta_t A) \odot h_{t-1} + \Delta_t B_t u_t, \qquad
        y_t = \langle h_t, C_t \rangle

    in the layouts of ``jaxdiv.models.selective_scan``, with ``delta`` the final Δ (bias and
    softplus already applied) and no ``D`` / ``z`` terms: the op adds those around this
    function for ``method="pallas"``. Inputs are used in their common float dtype as given
    (the op casts to float32 at least first).

    Args:
      u: ``[B, L, D]``.
      delta: Δ ``[B, L, D]``.
      A: ``[D, N]``, real and negative.
      B: ``[B, L, N]``.
      C: ``[B, L, N]``.
      initial_state: h_0 ``[B, D, N]`` or None (zeros).
      block_d: channels per grid step (default all of D up to 128, else 128; 32 on GPU). On
        TPU it must be a multiple of 128 or cover D.
      block_t: steps per unrolled chunk and the checkpoint interval of the backward pass.
      interpret: Pallas interpret mode; None: on CPU only.

    Returns:
      ``(y [B, L, D], h_L [B, D, N])``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> k = jax.random.split(jax.random.key(0), 4)
      >>> u, delta = jax.random.normal(k[0], (2, 2, 11, 3))
      >>> A = -jnp.exp(jax.random.normal(k[1], (3, 4)))
      >>> B, C = jax.random.normal(k[2], (2, 2, 11, 4))
      >>> y, h = selective_scan(u, jax.nn.softplus(delta), A, B, C)
      >>> y.shape, h.shape
      ((2, 11, 3), (2, 3, 4))
    """
    u, delta, A, B, C = (jnp.asarray(x) for x in (u, delta, A, B, C))
    dtype = jnp.result_type(u, delta, A, B, C)
    if initial_state is None:
        h0 = jnp.zeros((u.shape[0], A.shape[1], A.shape[0]), dtype)
    else:
        h0 = jnp.swapaxes(jnp.asarray(initial_state, dtype), 1, 2)
    u, delta, A, B, C = (x.astype(dtype) for x in (u, delta, A, B, C))
    y, hL = scan_state_major(
        h0, delta, A.T, u, B, C, block_d=block_d, block_t=block_t, interpret=interpret
    )
    return y, jnp.swapaxes(hL, 1, 2)
