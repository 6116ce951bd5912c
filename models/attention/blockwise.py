"""Blockwise (memory-efficient, "flash") softmax attention: no [Lq, Lk] array, forward or backward.

The same function as :func:`~jaxdiv.models.attention.softmax.softmax_attention` (offset causal
mask, key padding, segment ids, float32 softmax, 0 for a query with no visible key), computed
one (query block, key block) pair at a time with the online softmax of Rabe & Staats (2021) in
the form of FlashAttention-2 (Dao 2023). The gradient is a ``jax.custom_vjp`` whose residuals
are the inputs, the output O and the log-sum-exp per query row; the backward pass recomputes
each block's probabilities from the saved log-sum-exp. Every step holds [B, H, Q, K] (one query
block by one key block); the only full-length arrays are the inputs, the outputs, their
gradients and the per-row statistics, all O(L).

The block pairs are a static list, visited by one ``lax.scan``: with ``causal=True`` the pairs
entirely above the (offset) diagonal are left out, which halves the work for Lq = Lk while the
trip count stays known (loop-aware cost counters and XLA's buffer assignment both see it).
"""

# B batch, L query length, S key length, H heads, D head dim (q, k), V value head dim,
# Q query block length, K key block length

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jaxdiv import checks


class _Blocks(NamedTuple):
    """Static layout: real lengths, block lengths and the causal flag (hashable)."""

    causal: bool
    scale: float  # s
    q_length: int  # Lq
    k_length: int  # Lk
    q_block: int  # Q
    k_block: int  # K


def _pairs(blocks: _Blocks) -> tuple[np.ndarray, np.ndarray]:
    """(query block i, key block j) of every pair with at least one visible (l, s), row-major.

    Causal: the smallest key of block j is j·K and the largest real query of block i is
    min((i + 1)·Q, Lq) − 1 at absolute position (that) + Lk − Lq, so the pair is needed iff
    j·K ≤ min((i + 1)·Q, Lq) − 1 + Lk − Lq.
    """
    nq = -(-blocks.q_length // blocks.q_block)
    nk = -(-blocks.k_length // blocks.k_block)
    i, j = np.meshgrid(np.arange(nq), np.arange(nk), indexing="ij")
    keep = np.ones_like(i, bool)
    if blocks.causal:
        last_query = np.minimum((i + 1) * blocks.q_block, blocks.q_length) - 1
        keep = j * blocks.k_block <= last_query + blocks.k_length - blocks.q_length
    return i[keep].astype(np.int32), j[keep].astype(np.int32)


def _block(x: jax.Array, index: jax.Array, size: int, axis: int) -> jax.Array:
    return lax.dynamic_slice_in_dim(x, index * size, size, axis=axis)


def _put(x: jax.Array, update: jax.Array, index: jax.Array, size: int, axis: int) -> jax.Array:
    return lax.dynamic_update_slice_in_dim(x, update.astype(x.dtype), index * size, axis=axis)


def _mask(blocks: _Blocks, i, j, key_ok, seg_q, seg_k) -> jax.Array:
    """Visible pairs of block (i, j): bool [B, 1, Q, K] ([B, 1, 1, K] if only key padding)."""
    mask = _block(key_ok, j, blocks.k_block, 1)[:, None, None, :]  # [B, 1, 1, K]
    if blocks.causal:
        rows = i * blocks.q_block + jnp.arange(blocks.q_block)  # query positions [Q]
        cols = j * blocks.k_block + jnp.arange(blocks.k_block)  # key positions [K]
        offset = blocks.k_length - blocks.q_length
        mask = mask & (cols[None, :] <= rows[:, None] + offset)[None, None]  # [B, 1, Q, K]
    if seg_q is not None:
        ids_q = _block(seg_q, i, blocks.q_block, 1)  # [B, Q]
        ids_k = _block(seg_k, j, blocks.k_block, 1)  # [B, K]
        mask = mask & (ids_q[:, None, :, None] == ids_k[:, None, None, :])  # [B, 1, Q, K]
    return mask


def _scores(q_i, k_j, scale: float, mask, dtype) -> jax.Array:
    """S_ij = s·Q_i K_jᵀ in ``dtype`` with −inf at invisible pairs, [B, H, Q, K]."""
    s = jnp.einsum("bqhd,bkhd->bhqk", q_i, k_j, preferred_element_type=dtype)
    return jnp.where(mask, scale * s, -jnp.inf)


def _forward(blocks: _Blocks, q, k, v, key_ok, seg_q, seg_k):
    """FlashAttention-2 Algorithm 1 over the block pairs; returns (O [B, L, H, V], lse [B, H, L]).

    Per pair (i, j), with running max m_i, normaliser ℓ_i and unnormalised output Õ_i:
    m_i' = max(m_i, rowmax S_ij), P̃_ij = exp(S_ij − m_i'), ℓ_i' = e^{m_i − m_i'} ℓ_i +
    rowsum P̃_ij, Õ_i' = e^{m_i − m_i'} Õ_i + P̃_ij V_j. At the end O_i = Õ_i / ℓ_i and
    lse_i = m_i + log ℓ_i; a row that never saw a key keeps m = −inf, ℓ = 0 and gets O = 0,
    lse = −inf.
    """
    dtype = checks.compute_dtype(q, k, v)
    B, L, H, _ = q.shape
    Q, K = blocks.q_block, blocks.k_block
    # Carries start as zeros derived from the inputs, so that under shard_map they vary over
    # the same mesh axes as the inputs (a scan's carry type must not change).
    acc = jnp.zeros_like(q, dtype, shape=(B, L, H, v.shape[-1]))  # Õ [B, L, H, V]
    stat = jnp.zeros_like(q, dtype, shape=(B, H, L))
    m, ell = stat - jnp.inf, stat  # [B, H, L]

    def step(carry, ij):
        acc, m, ell = carry
        i, j = ij
        q_i = _block(q, i, Q, 1)  # [B, Q, H, D]
        k_j, v_j = _block(k, j, K, 1), _block(v, j, K, 1)  # [B, K, H, D], [B, K, H, V]
        s = _scores(q_i, k_j, blocks.scale, _mask(blocks, i, j, key_ok, seg_q, seg_k), dtype)
        m_i, ell_i, acc_i = _block(m, i, Q, 2), _block(ell, i, Q, 2), _block(acc, i, Q, 1)
        m_new = jnp.maximum(m_i, jnp.max(s, axis=-1))  # [B, H, Q]
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # a row with no key yet: 0
        p = jnp.exp(s - m_safe[..., None])  # P̃_ij [B, H, Q, K], 0 at invisible pairs
        alpha = jnp.exp(m_i - m_safe)  # e^{m_i − m_i'}, 0 while m_i = −inf
        ell_i = alpha * ell_i + jnp.sum(p, axis=-1)
        pv = jnp.einsum("bhqk,bkhv->bqhv", p.astype(v.dtype), v_j, preferred_element_type=dtype)
        acc_i = jnp.swapaxes(alpha, 1, 2)[..., None] * acc_i + pv  # [B, Q, H, V]
        carry = (_put(acc, acc_i, i, Q, 1), _put(m, m_new, i, Q, 2), _put(ell, ell_i, i, Q, 2))
        return carry, None

    (acc, m, ell), _ = lax.scan(step, (acc, m, ell), _pairs(blocks))
    seen = ell > 0
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, ell, 1.0)), -jnp.inf)  # [B, H, L]
    o = acc / jnp.swapaxes(jnp.where(seen, ell, 1.0), 1, 2)[..., None]  # [B, L, H, V]
    return o.astype(v.dtype), lse


def _backward(blocks: _Blocks, q, k, v, key_ok, seg_q, seg_k, o, lse, do):
    """FlashAttention-2 Algorithm 2 over the same pairs: (dQ, dK, dV).

    D_i = rowsum(dO_i ∘ O_i); per pair P_ij = exp(S_ij − lse_i), dV_j += P_ijᵀ dO_i,
    dP_ij = dO_i V_jᵀ, dS_ij = P_ij ∘ (dP_ij − D_i), dQ_i += s·dS_ij K_j, dK_j += s·dS_ijᵀ Q_i.
    """
    dtype = checks.compute_dtype(q, k, v)
    Q, K = blocks.q_block, blocks.k_block
    delta = jnp.swapaxes(jnp.sum(do.astype(dtype) * o.astype(dtype), axis=-1), 1, 2)  # [B, H, L]
    lse = jnp.where(jnp.isfinite(lse), lse, 0.0)  # rows without keys: every P_ij is 0 anyway
    grads = (
        jnp.zeros_like(q, dtype),  # Σ dS K (dQ / s) [B, L, H, D]
        jnp.zeros_like(k, dtype),  # Σ dSᵀ Q (dK / s) [B, S, H, D]
        jnp.zeros_like(v, dtype),  # dV [B, S, H, V]
    )

    def step(carry, ij):
        dq, dk, dv = carry
        i, j = ij
        q_i, do_i = _block(q, i, Q, 1), _block(do, i, Q, 1)  # [B, Q, H, D], [B, Q, H, V]
        k_j, v_j = _block(k, j, K, 1), _block(v, j, K, 1)
        s = _scores(q_i, k_j, blocks.scale, _mask(blocks, i, j, key_ok, seg_q, seg_k), dtype)
        p = jnp.exp(s - _block(lse, i, Q, 2)[..., None])  # P_ij [B, H, Q, K]
        dv_j = jnp.einsum("bhqk,bqhv->bkhv", p.astype(do.dtype), do_i, preferred_element_type=dtype)
        dp = jnp.einsum("bqhv,bkhv->bhqk", do_i, v_j, preferred_element_type=dtype)
        ds = p * (dp - _block(delta, i, Q, 2)[..., None])  # dS_ij [B, H, Q, K]
        dq_i = jnp.einsum("bhqk,bkhd->bqhd", ds.astype(k.dtype), k_j, preferred_element_type=dtype)
        dk_j = jnp.einsum("bhqk,bqhd->bkhd", ds.astype(q.dtype), q_i, preferred_element_type=dtype)
        carry = (
            _put(dq, _block(dq, i, Q, 1) + dq_i, i, Q, 1),
            _put(dk, _block(dk, j, K, 1) + dk_j, j, K, 1),
            _put(dv, _block(dv, j, K, 1) + dv_j, j, K, 1),
        )
        return carry, None

    (dq, dk, dv), _ = lax.scan(step, grads, _pairs(blocks))
    scale = blocks.scale
    return (scale * dq).astype(q.dtype), (scale * dk).astype(k.dtype), dv.astype(v.dtype)


def _attention_value(blocks: _Blocks, q, k, v, key_ok, seg_q, seg_k) -> jax.Array:
    return _forward(blocks, q, k, v, key_ok, seg_q, seg_k)[0]


def _attention_fwd(blocks, q, k, v, key_ok, seg_q, seg_k):
    o, lse = _forward(blocks, q, k, v, key_ok, seg_q, seg_k)
    return o, (q, k, v, key_ok, seg_q, seg_k, o, lse)


def _attention_bwd(blocks, residuals, do):
    q, k, v, key_ok, seg_q, seg_k, o, lse = residuals
    dq, dk, dv = _backward(blocks, q, k, v, key_ok, seg_q, seg_k, o, lse, do)
    return dq, dk, dv, None, None, None  # the masks get no cotangent


_attention = jax.custom_vjp(_attention_value, nondiff_argnums=(0,))
_attention.defvjp(_attention_fwd, _attention_bwd)


def _pad(x: jax.Array, length: int, value=0) -> jax.Array:
    """x [B, L, ...] padded at the end of axis 1 to ``length``."""
    if x.shape[1] == length:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, length - x.shape[1])
    return jnp.pad(x, widths, constant_values=value)


def check_qkv(q, k, v) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q [B, Lq, H, d], k [B, Lk, H, d], v [B, Lk, H, dv] as float arrays, or ValueError."""
    q = checks.float_array(q, "q")
    k = checks.float_array(k, "k")
    v = checks.float_array(v, "v")
    if q.ndim != 4 or k.ndim != 4:
        raise ValueError(
            f"`q` and `k` must have shape [B, L, H, d], got shapes {q.shape} and {k.shape}."
        )
    B, _, H, D = q.shape
    checks.exact_shape(k, (B, k.shape[1], H, D), "k", "[B, Lk, H, d] matching q")
    checks.exact_shape(v, (*k.shape[:3], v.shape[-1]), "v", "[B, Lk, H, dv] matching k")
    return q, k, v


def blockwise_attention(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    *,
    causal: bool = True,
    scale: float | jax.Array | None = None,
    where: ArrayLike | None = None,
    segment_ids: ArrayLike | None = None,
    block_size: int = 512,
    query_block_size: int | None = None,
) -> jax.Array:
    r"""Softmax attention in blocks with the online softmax; never holds an [Lq, Lk] array.

    .. math::

        o_l = \sum_s \mathrm{softmax}_s\big(s\,q_l \cdot k_s + m_{ls}\big)\, v_s

    (the function of :func:`~jaxdiv.models.attention.softmax.softmax_attention`), computed over
    block pairs (query block i of Q rows, key block j of K keys) as FlashAttention-2's
    Algorithm 1: a running max :math:`m_i`, normaliser :math:`\ell_i` and accumulator
    :math:`\tilde O_i` per query row, in float32,

    .. math::

        m_i' = \max(m_i, \mathrm{rowmax}\,S_{ij}),\quad
        \tilde P_{ij} = e^{S_{ij} - m_i'},\quad
        \ell_i' = e^{m_i - m_i'}\ell_i + \mathrm{rowsum}\,\tilde P_{ij},\quad
        \tilde O_i' = e^{m_i - m_i'}\tilde O_i + \tilde P_{ij} V_j,

    then :math:`O_i = \tilde O_i / \ell_i` and :math:`\mathrm{lse}_i = m_i + \log \ell_i`. The
    gradient (a custom VJP, Algorithm 2) saves only q, k, v, the masks, O and lse and
    recomputes :math:`P_{ij} = e^{S_{ij} - \mathrm{lse}_i}` per block: with
    :math:`D_i = \mathrm{rowsum}(dO_i \circ O_i)`, :math:`dV_j \mathrel{+}= P_{ij}^\top dO_i`,
    :math:`dS_{ij} = P_{ij} \circ (dO_i V_j^\top - D_i)`,
    :math:`dQ_i \mathrel{+}= s\,dS_{ij} K_j`, :math:`dK_j \mathrel{+}= s\,dS_{ij}^\top Q_i`.
    Memory per step is [B, H, Q, K]; Lq and Lk are padded to multiples of the blocks (padded
    keys are masked out, padded queries dropped). Pairs with no visible entry under the causal
    mask are skipped. Matmul operands keep the input dtype (bf16 in, float32 accumulation).

    Masks as in ``softmax_attention``: causal query l sits at absolute position
    :math:`l + L_k - L_q`; ``where`` marks real keys; a query sees only keys of its own
    segment. A query with no visible key returns 0, with zero (finite) gradients.

    Args:
      q: queries, [B, Lq, H, d].
      k: keys, [B, Lk, H, d].
      v: values, [B, Lk, H, dv].
      causal: apply the (offset) causal mask.
      scale: s, default d^−½. A Python number is a constant of the kernel; a traced array
        is folded into q (in float32) before it, so that it gets its gradient too.
      where: key padding mask, bool [B, Lk] (True = real key).
      segment_ids: int [B, Lk], the document of each key position; query l has the id of
        position l + Lk − Lq (needs Lq ≤ Lk).
      block_size: K, keys per block (capped at Lk).
      query_block_size: Q, queries per block (capped at Lq); default ``block_size``.

    Returns:
      [B, Lq, H, dv] in v's dtype.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxdiv.models.attention.softmax import softmax_attention
      >>> q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 50, 4, 8))
      >>> o = blockwise_attention(q, k, v, block_size=16)
      >>> bool(jnp.allclose(o, softmax_attention(q, k, v, implementation="reference"), atol=1e-5))
      True

    References:
      Rabe & Staats, "Self-attention Does Not Need O(n²) Memory",
      https://arxiv.org/abs/2112.05682, Section 2 (the running max and sum);
      Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning",
      https://arxiv.org/abs/2307.08691, Algorithm 1 (forward) and Algorithm 2 (backward).
    """
    q, k, v = check_qkv(q, k, v)
    B, Lq, H, D = q.shape
    Lk = k.shape[1]
    block_size = checks.positive_int(block_size, "block_size")
    query_block_size = checks.positive_int(
        block_size if query_block_size is None else query_block_size, "query_block_size"
    )
    dtype = checks.compute_dtype(q, k, v)
    static = D**-0.5 if scale is None else checks.concrete(scale)
    if static is None:  # traced: s·q·k = (s·q)·k, differentiated outside the custom VJP
        q, static = q.astype(dtype) * jnp.asarray(scale, dtype), 1.0
    q_block, k_block = max(1, min(query_block_size, Lq)), max(1, min(block_size, Lk))
    blocks = _Blocks(bool(causal), static, Lq, Lk, q_block, k_block)
    Lp = -(-Lq // blocks.q_block) * blocks.q_block  # padded lengths
    Sp = -(-Lk // blocks.k_block) * blocks.k_block
    key_ok = jnp.broadcast_to(jnp.arange(Sp) < Lk, (B, Sp))  # [B, S] real (unpadded) keys
    if where is not None:
        where = jnp.asarray(where)
        checks.exact_shape(where, (B, Lk), "where", "[B, Lk]")
        key_ok = key_ok & _pad(where.astype(bool), Sp, False)
    seg_q = seg_k = None
    if segment_ids is not None:
        segment_ids = jnp.asarray(segment_ids)
        checks.exact_shape(segment_ids, (B, Lk), "segment_ids", "[B, Lk]")
        if Lq > Lk:
            raise ValueError(
                f"`segment_ids` needs Lq <= Lk (queries are the last Lq positions), got "
                f"Lq={Lq} and Lk={Lk}."
            )
        seg_k = _pad(segment_ids, Sp)
        seg_q = _pad(segment_ids[:, Lk - Lq :], Lp)
    o = _attention(blocks, _pad(q, Lp), _pad(k, Sp), _pad(v, Sp), key_ok, seg_q, seg_k)
    return o[:, :Lq]  # [B, Lq, H, V]
