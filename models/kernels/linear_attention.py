"""Pallas kernels for chunked linear attention with no, per-head or per-key-channel decay.

The op ``jaxdiv.models.attention.linear.linear_attention(..., method="pallas")`` scales q and
takes the log decay g ≤ 0 to its *chunk-local* inclusive cumulative sums G (ordinary JAX, so
their gradients come from JAX autodiff); these kernels carry the chunked recurrence

    o_l = Σ_{s≤l} (q_l ⊙ k_s ⊙ e^{G_l − G_s})·1 v_s + (q_l ⊙ e^{G_l}) S,
    S ← diag(e^{G_C}) S + Σ_s (k_s ⊙ e^{G_C − G_s})ᵀ v_s          (per chunk of C tokens)

and its adjoint (custom VJP; gradients w.r.t. q, k, v, G and the initial state).

Forward kernel, grid (batch, heads): the state ``[dk, dv]`` is a ``lax.fori_loop`` carry inside
the kernel; per chunk one ``[C, ·]`` slab of q, k, v, G is read, the intra-chunk part is a
masked ``[C, C]`` score matmul (per-key-channel decay: a ``[C, C, dk]`` decay tensor, so keep
C at 16–32 there) and the incoming state enters through two matmuls. Every input element is
read once. For the backward pass the forward kernel also writes the state entering every chunk
(``[B, H, L/C, dk, dv]``: residual memory B·H·dk·dv·L/C floats besides the inputs).

Backward kernel, same grid: chunks in reverse order carrying ∂S (the cotangent of the state
leaving the chunk), each chunk reloading its entering state from the checkpoints; per chunk
(A the masked decayed scores, W the decay factors, dA = (∂o vᵀ) ⊙ mask):

    ∂v = Aᵀ ∂o + k̃ ∂S',   ∂q = (dA ⊙ W) k + e^{G} ⊙ (∂o Sᵀ),
    ∂k = (dA ⊙ W)ᵀ q + e^{G_C − G} ⊙ (v ∂S'ᵀ),   ∂S = diag(e^{G_C}) ∂S' + (q ⊙ e^{G})ᵀ ∂o,
    with k̃ = k ⊙ e^{G_C − G},

and ∂G collecting, per position, the row sums minus the column sums of dA ⊙ A (the
intra-chunk decay differences), q ⊙ e^{G} ⊙ (∂o Sᵀ), −k̃ ⊙ (v ∂S'ᵀ) and, on the chunk's last
row, Σ_s k̃ ⊙ (v ∂S'ᵀ) + e^{G_C} Σ_v ∂S' ⊙ S.

Grouped heads (used by :mod:`jaxdiv.models.kernels.ssd`): q and k may have H / r heads, head
i reading q/k head i // r through the BlockSpec index map (no repeat in memory); ∂q, ∂k come
back per head and are summed over each group outside the kernel.

Lowering: interpret mode on CPU (what the tests check). For TPU the blocks are whole-sequence
``[L, d]`` slabs per (batch, head) with full last dims, the chunk loads are C-aligned sublane
slices (C a multiple of 8 keeps them tile-aligned) and every grid dimension is ``"parallel"``;
whole-L blocks bound L by VMEM. On GPU (Triton) dk, dv and C should be powers of two ≥ 16 for
``tl.dot``; the chunk's last decay row is read from the ref (Triton lowers no value slicing).
Both lowerings pass on a CPU host (``tests/models/test_kernel_lowering.py``); neither has been
compiled or measured on a device (no accelerator was available): the method is opt-in there.
"""

# B batch, L length (Lp padded to a multiple of C), H heads, Hq q/k heads (H / r), K = dk,
# V = dv, C chunk length, Nc = Lp / C chunks, Kg = 1 (per-head decay) or K (per channel)

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


def _slab(ref, c, C: int) -> jax.Array:
    return ref[pl.ds(pl.multiple_of(c * C, C), C), :]


def _last_row(ref, c, C: int) -> jax.Array:
    """The chunk's last row ``[1, ·]``, read from the ref (Triton lowers no value slicing)."""
    return ref[c * C + C - 1, :][None, :]


def _decays(G, mask, mode: str):
    """W: ``[C, C]`` (head) or ``[C, C, K]`` (channel) e^{G_l − G_s} on l ≥ s, 0 above."""
    if mode == "head":
        return head_decays(G, mask)
    diff = G[:, None, :] - G[None, :, :]  # [C, C, K]
    return jnp.exp(jnp.where(mask[:, :, None], diff, -jnp.inf))


def _scores(q, k, W, mask, mode: str):
    """A[l, s] = Σ_k q_lk k_sk W_lsk, masked causal."""
    if mode == "none":
        return jnp.where(mask, mm(q, k, tb=True), 0.0)
    if mode == "head":
        return mm(q, k, tb=True) * W
    return jnp.sum(q[:, None, :] * k[None, :, :] * W, axis=-1)


def _col(x_row: jax.Array) -> jax.Array:
    """[1, K] → [K, 1] (the per-key decay as a column over the state's rows)."""
    return x_row.T


def _forward_kernel(*refs, C: int, mode: str, save: bool):
    if mode == "none":
        q_ref, k_ref, v_ref, s0_ref, o_ref, sl_ref, *rest = refs
        g_ref = None
    else:
        q_ref, k_ref, v_ref, g_ref, s0_ref, o_ref, sl_ref, *rest = refs
    mask = causal_mask(C)

    def chunk(c, S):
        if save:
            rest[0][c] = S.astype(rest[0].dtype)  # the state entering chunk c
        q, k, v = _slab(q_ref, c, C), _slab(k_ref, c, C), _slab(v_ref, c, C)
        if g_ref is None:
            A = _scores(q, k, None, mask, mode)
            o = mm(A, v) + mm(q, S)
            S = S + mm(k, v, ta=True)
        else:
            G = _slab(g_ref, c, C)  # [C, Kg]
            A = _scores(q, k, _decays(G, mask, mode), mask, mode)
            o = mm(A, v) + mm(q * jnp.exp(G), S)
            last = _last_row(g_ref, c, C)  # [1, Kg]
            S = jnp.exp(_col(last)) * S + mm(k * jnp.exp(last - G), v, ta=True)
        o_ref[pl.ds(pl.multiple_of(c * C, C), C), :] = o.astype(o_ref.dtype)
        return S

    n_chunks = q_ref.shape[0] // C
    S = lax.fori_loop(0, n_chunks, chunk, s0_ref[...].astype(sl_ref.dtype))
    sl_ref[...] = S.astype(sl_ref.dtype)


def _backward_kernel(*refs, C: int, mode: str):
    if mode == "none":
        q_ref, k_ref, v_ref, ss_ref, do_ref, dsl_ref, dq_ref, dk_ref, dv_ref, ds0_ref = refs
        g_ref = dg_ref = None
    else:
        (q_ref, k_ref, v_ref, g_ref, ss_ref, do_ref, dsl_ref,
         dq_ref, dk_ref, dv_ref, dg_ref, ds0_ref) = refs  # fmt: skip
    mask = causal_mask(C)
    n_chunks = q_ref.shape[0] // C

    def chunk(i, dS_next):
        c = n_chunks - 1 - i
        rows = pl.ds(pl.multiple_of(c * C, C), C)
        q, k, v, do = _slab(q_ref, c, C), _slab(k_ref, c, C), _slab(v_ref, c, C), do_ref[rows, :]
        S = ss_ref[c]  # [K, V], the state entering the chunk
        dA = jnp.where(mask, mm(do, v, tb=True), 0.0)  # [C, C]
        X = mm(do, S, tb=True)  # ∂o Sᵀ [C, K]
        Y = mm(v, dS_next, tb=True)  # v ∂S'ᵀ [C, K]
        if g_ref is None:
            A = _scores(q, k, None, mask, mode)
            dq = mm(dA, k) + X
            dk = mm(dA, q, ta=True) + Y
            dv = mm(A, do, ta=True) + mm(k, dS_next)
            dS = dS_next + mm(q, do, ta=True)
        else:
            G = _slab(g_ref, c, C)  # [C, Kg]
            W = _decays(G, mask, mode)
            E, last = jnp.exp(G), _last_row(g_ref, c, C)
            to_end = jnp.exp(last - G)  # [C, Kg]
            kt = k * to_end  # k̃ [C, K]
            A = _scores(q, k, W, mask, mode)
            if mode == "head":
                P = dA * W
                dq = mm(P, k)
                dk = mm(P, q, ta=True)
                Z = dA * A  # ∂/∂(G_l − G_s) of the intra scores
                dG = jnp.sum(Z, axis=1, keepdims=True) - jnp.sum(Z.T, axis=1, keepdims=True)
            else:
                P = dA[:, :, None] * W  # [C, C, K]
                dq = jnp.sum(P * k[None, :, :], axis=1)
                dk = jnp.sum(P * q[:, None, :], axis=0)
                Z = P * q[:, None, :] * k[None, :, :]
                dG = jnp.sum(Z, axis=1) - jnp.sum(Z, axis=0)
            dq = dq + E * X
            dk = dk + to_end * Y
            dv = mm(A, do, ta=True) + mm(kt, dS_next)
            red = (lambda x: jnp.sum(x, axis=1, keepdims=True)) if mode == "head" else (lambda x: x)
            dG = dG + red(q * E * X) - red(kt * Y)
            end_row = jnp.sum(kt * Y, axis=0, keepdims=True)  # [1, K]
            end_row = red(end_row) + jnp.exp(last) * red(
                jnp.sum(dS_next * S, axis=1, keepdims=True).T
            )  # [1, Kg]
            is_last = lax.broadcasted_iota(jnp.int32, (C, 1), 0) == C - 1
            dG = dG + jnp.where(is_last, end_row, 0.0)
            dS = jnp.exp(_col(last)) * dS_next + mm(q * E, do, ta=True)
            assert dg_ref is not None
            dg_ref[rows, :] = dG.astype(dg_ref.dtype)
        dq_ref[rows, :] = dq.astype(dq_ref.dtype)
        dk_ref[rows, :] = dk.astype(dk_ref.dtype)
        dv_ref[rows, :] = dv.astype(dv_ref.dtype)
        return dS

    dS0 = lax.fori_loop(0, n_chunks, chunk, dsl_ref[...].astype(ds0_ref.dtype))
    ds0_ref[...] = dS0.astype(ds0_ref.dtype)


def _specs(Lp: int, K: int, V: int, Kg: int, r: int):
    qk = pl.BlockSpec((_SQ, _SQ, Lp, K), lambda b, h: (b, h // r, 0, 0))  # grouped q, k
    per_head = functools.partial(pl.BlockSpec, index_map=lambda b, h: (b, h, 0, 0))
    return (
        qk,
        per_head((_SQ, _SQ, Lp, K)),  # ∂q, ∂k per head
        per_head((_SQ, _SQ, Lp, V)),  # v, o
        per_head((_SQ, _SQ, Lp, Kg)),  # G
        per_head((_SQ, _SQ, K, V)),  # states
    )


def _forward(q, k, v, G, S0, *, C, mode, r, interpret, save):
    Bsz, H, Lp, V = v.shape
    K = q.shape[-1]
    Kg = 1 if G is None else G.shape[-1]
    qk, _, seq_v, seq_g, state = _specs(Lp, K, V, Kg, r)
    dtype = S0.dtype
    out_shape = [jax.ShapeDtypeStruct(v.shape, dtype), jax.ShapeDtypeStruct(S0.shape, dtype)]
    out_specs = [seq_v, state]
    if save:
        out_shape.append(jax.ShapeDtypeStruct((Bsz, H, Lp // C, K, V), dtype))
        out_specs.append(pl.BlockSpec((_SQ, _SQ, Lp // C, K, V), lambda b, h: (b, h, 0, 0, 0)))
    inputs = [q, k, v] + ([] if G is None else [G]) + [S0]
    in_specs = [qk, qk, seq_v] + ([] if G is None else [seq_g]) + [state]
    return pallas_call(
        functools.partial(_forward_kernel, C=C, mode=mode, save=save),
        out_shape=tuple(out_shape),
        grid=(Bsz, H),
        in_specs=in_specs,
        out_specs=tuple(out_specs),
        interpret=interpret,
        name=f"linear_attention_fwd_{mode}",
    )(*inputs)


def _backward(q, k, v, G, states, do, dSL, *, C, mode, r, interpret):
    Bsz, H, Lp, V = v.shape
    K = q.shape[-1]
    Kg = 1 if G is None else G.shape[-1]
    qk, dqk, seq_v, seq_g, state = _specs(Lp, K, V, Kg, r)
    checkpoints = pl.BlockSpec((_SQ, _SQ, Lp // C, K, V), lambda b, h: (b, h, 0, 0, 0))
    dtype = states.dtype
    per_head_qk = jax.ShapeDtypeStruct((Bsz, H, Lp, K), dtype)
    out_shape = [per_head_qk, per_head_qk, jax.ShapeDtypeStruct(v.shape, dtype)]
    out_specs = [dqk, dqk, seq_v]
    if G is not None:
        out_shape.append(jax.ShapeDtypeStruct(G.shape, dtype))
        out_specs.append(seq_g)
    out_shape.append(jax.ShapeDtypeStruct(dSL.shape, dtype))
    out_specs.append(state)
    inputs = [q, k, v] + ([] if G is None else [G]) + [states, do, dSL]
    in_specs = [qk, qk, seq_v] + ([] if G is None else [seq_g]) + [checkpoints, seq_v, state]
    outs = pallas_call(
        functools.partial(_backward_kernel, C=C, mode=mode),
        out_shape=tuple(out_shape),
        grid=(Bsz, H),
        in_specs=in_specs,
        out_specs=tuple(out_specs),
        interpret=interpret,
        name=f"linear_attention_bwd_{mode}",
    )(*inputs)
    dq, dk, dv = outs[:3]
    if r > 1:  # q/k heads shared by r heads: sum the per-head cotangents over each group
        dq = jnp.sum(dq.reshape(Bsz, H // r, r, Lp, K), axis=2)
        dk = jnp.sum(dk.reshape(Bsz, H // r, r, Lp, K), axis=2)
    dG = None if G is None else outs[3].astype(G.dtype)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dG, outs[-1]


def _chunked_padded_impl(q, k, v, G, S0, C, mode, r, interpret):
    kw = dict(C=C, mode=mode, r=r, interpret=interpret, save=False)
    o, SL = _forward(q, k, v, G, S0, **kw)
    return o, SL


def _chunked_padded_fwd(q, k, v, G, S0, C, mode, r, interpret):
    kw = dict(C=C, mode=mode, r=r, interpret=interpret, save=True)
    o, SL, states = _forward(q, k, v, G, S0, **kw)
    return (o, SL), (q, k, v, G, states)


def _chunked_padded_bwd(C, mode, r, interpret, res, cts):
    q, k, v, G, states = res
    do, dSL = cts
    kw = dict(C=C, mode=mode, r=r, interpret=interpret)
    return _backward(q, k, v, G, states, do.astype(states.dtype), dSL, **kw)


_chunked_padded = jax.custom_vjp(_chunked_padded_impl, nondiff_argnums=(5, 6, 7, 8))
_chunked_padded.defvjp(_chunked_padded_fwd, _chunked_padded_bwd)


def chunked_heads_major(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array | None,
    S0: jax.Array,
    *,
    chunk_size: int,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The causal recurrence on heads-major layouts (the core shared with the ssd kernel).

    q, k ``[B, Hq, L, K]`` (Hq = H / r: head i reads q/k head i // r), v ``[B, H, L, V]``,
    g None or the log decay ``[B, H, L, 1 or K]``, S0 ``[B, H, K, V]``; q already scaled.
    Returns (o ``[B, H, L, V]``, S_L ``[B, H, K, V]``), both in S0's dtype. L is zero-padded
    to a multiple of ``chunk_size`` (zero k, v and log decay leave the state unchanged).
    """
    interp = resolve_interpret(interpret)
    L = v.shape[2]
    C = min(check_block(chunk_size, "chunk_size"), L)
    r = v.shape[1] // q.shape[1]
    q, k, v = pad_axis(q, 2, C), pad_axis(k, 2, C), pad_axis(v, 2, C)
    G, mode = None, "none"
    if g is not None:
        mode = "head" if g.shape[-1] == 1 else "channel"
        gp = pad_axis(g, 2, C)
        Bsz, H, Lp, Kg = gp.shape
        G = jnp.cumsum(gp.reshape(Bsz, H, Lp // C, C, Kg), axis=3).reshape(gp.shape)
    o, SL = _chunked_padded(q, k, v, G, S0, C, mode, r, interp)
    return o[:, :, :L], SL


def linear_attention(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    *,
    log_decay: ArrayLike | None = None,
    scale: float | jax.Array | None = None,
    chunk_size: int = 64,
    initial_state: ArrayLike | None = None,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""Causal linear attention as Pallas kernels (forward and custom-VJP backward).

    .. math::

        S_t = \mathrm{diag}(e^{g_t})\, S_{t-1} + k_t^\top v_t, \qquad o_t = (s\, q_t)\, S_t

    in the layouts of ``jaxdiv.models.linear_attention`` (q, k ``[B, L, H, dk]``, v ``[B, L,
    H, dv]``, log_decay None, ``[B, L, H]`` or ``[B, L, H, dk]``, S_0 ``[B, H, dk, dv]``),
    computed in the inputs' common dtype (float32 at least). The op's ``method="pallas"``
    validates its inputs and calls the same core.

    Args:
      q: queries.
      k: keys.
      v: values.
      log_decay: g ≤ 0 or None.
      scale: s, default dk^−½.
      chunk_size: C, tokens per chunk (L need not be a multiple); 16–32 with per-channel decay.
      initial_state: S_0 or None (zeros).
      interpret: Pallas interpret mode; None: on CPU only.

    Returns:
      ``(o [B, L, H, dv], S_L [B, H, dk, dv])``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> q, k, v = jax.random.normal(jax.random.key(0), (3, 1, 20, 2, 4))
      >>> o, S = linear_attention(q, k, v, chunk_size=8)
      >>> o.shape, S.shape
      ((1, 20, 2, 4), (1, 2, 4, 4))
    """
    q, k, v = (jnp.asarray(x) for x in (q, k, v))
    g = None if log_decay is None else jnp.asarray(log_decay)
    arrays = [q, k, v] + [x for x in (g, initial_state) if x is not None]
    dtype = jnp.promote_types(jnp.result_type(*arrays), jnp.float32)
    Bsz, _, H, K = q.shape
    V = v.shape[-1]
    if initial_state is None:
        S0 = jnp.zeros((Bsz, H, K, V), dtype)
    else:
        S0 = jnp.asarray(initial_state, dtype)
    s = K**-0.5 if scale is None else scale
    q = q.astype(dtype) * jnp.asarray(s, dtype)
    heads = functools.partial(jnp.moveaxis, source=2, destination=1)  # [B, L, H, ·] → [B, H, L, ·]
    if g is not None:
        g = g.astype(dtype)
        g = heads(g[..., None] if g.ndim == 3 else g)
    o, SL = chunked_heads_major(
        heads(q), heads(k.astype(dtype)), heads(v.astype(dtype)), g, S0,
        chunk_size=chunk_size, interpret=interpret,
    )  # fmt: skip
    return jnp.moveaxis(o, 1, 2), SL
