"""Softmax attention (float32 softmax, key padding, offset causal mask) and a KV cache for decoding.

Decoding with the cache: ``cache = init_kv_cache(B, T, H, d)``, then for each new block of
tokens at positions ``index … index + Lq − 1``:
``o, cache = attend_with_cache(q, k, v, cache, index)``. The keys and values are written into the
cache at ``index`` and the queries attend causally to every cached position up to their own, so
feeding a sequence token by token gives the same outputs as ``softmax_attention`` on the whole.
"""

# B batch, L query length, S key length, H heads, D head dim, T cache length

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from jaxdiv import checks


class KVCache(NamedTuple):
    """Keys and values of the positions seen so far.

    Attributes:
      k: cached keys, [B, T, H, d] (zeros past the written positions).
      v: cached values, [B, T, H, d].
    """

    k: jax.Array
    v: jax.Array


def _attend(q, k, v, mask, scale) -> jax.Array:
    """Masked softmax attention in float32; rows with no allowed key give 0 (finite gradients)."""
    dtype = checks.compute_dtype(q, k, v)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    q = q.astype(dtype) * jnp.asarray(scale, dtype)
    logits = jnp.einsum("blhd,bshd->bhls", q, k.astype(dtype))  # [B, H, L, S]
    logits = jnp.where(mask, logits, -jnp.inf)
    peak = jnp.max(logits, axis=-1, keepdims=True)
    peak = jax.lax.stop_gradient(jnp.where(jnp.isfinite(peak), peak, 0.0))
    weights = jnp.where(mask, jnp.exp(logits - peak), 0.0)  # [B, H, L, S]
    total = jnp.sum(weights, axis=-1, keepdims=True)
    weights = weights / jnp.where(total > 0, total, 1.0)
    return jnp.einsum("bhls,bshd->blhd", weights, v.astype(dtype)).astype(v.dtype)


def _check_qkv(q, k, v):
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


def softmax_attention(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    *,
    causal: bool = True,
    scale: float | jax.Array | None = None,
    where: ArrayLike | None = None,
    segment_ids: ArrayLike | None = None,
) -> jax.Array:
    r"""Multi-head softmax attention with a float32 softmax, key padding and an offset causal mask.

    .. math::

        o_l = \sum_s \mathrm{softmax}_s\big(s\,q_l \cdot k_s + m_{ls}\big)\, v_s

    with :math:`s` = ``scale`` and :math:`m_{ls} = -\infty` for masked pairs. Causal: query l
    sits at absolute position :math:`l + L_k - L_q` (the queries are the *last* Lq positions),
    so it sees keys :math:`s \le l + L_k - L_q`. A query with no visible key returns 0.

    Args:
      q: queries, [B, Lq, H, d].
      k: keys, [B, Lk, H, d].
      v: values, [B, Lk, H, dv].
      causal: apply the (offset) causal mask.
      scale: s, default d^−½.
      where: key padding mask, bool [B, Lk] (True = real key).
      segment_ids: int [B, Lk], the document of each key position (packed sequences): a query
        attends only to keys of its own document (query l has the id of position
        l + Lk − Lq).

    Returns:
      [B, Lq, H, dv] in v's dtype (math in float32 at least).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 5, 4, 8))
      >>> o = softmax_attention(q, k, v)
      >>> o.shape, bool(jnp.allclose(o[:, 0], v[:, 0]))  # the first query sees only key 0
      ((2, 5, 4, 8), True)

    References:
      Vaswani et al., "Attention Is All You Need", https://arxiv.org/abs/1706.03762, Eq. 1.
    """
    q, k, v = _check_qkv(q, k, v)
    Lq, Lk = q.shape[1], k.shape[1]
    mask = jnp.ones((1, 1, Lq, Lk), bool)  # [B, H, L, S]
    if causal:
        mask = jnp.arange(Lk)[None, :] <= jnp.arange(Lq)[:, None] + (Lk - Lq)  # [L, S]
        mask = mask[None, None]
    if where is not None:
        where = jnp.asarray(where)
        checks.exact_shape(where, (q.shape[0], Lk), "where", "[B, Lk]")
        mask = mask & where.astype(bool)[:, None, None, :]
    if segment_ids is not None:
        segment_ids = jnp.asarray(segment_ids)
        checks.exact_shape(segment_ids, (q.shape[0], Lk), "segment_ids", "[B, Lk]")
        query_ids = segment_ids[:, Lk - Lq :]  # [B, Lq]
        mask = mask & (query_ids[:, None, :, None] == segment_ids[:, None, None, :])
    return _attend(q, k, v, mask, scale)


def init_kv_cache(
    batch: int, max_length: int, heads: int, head_dim: int, dtype: DTypeLike = jnp.float32
) -> KVCache:
    """An empty KV cache of ``max_length`` positions.

    Args:
      batch: B.
      max_length: T, the most positions the cache holds.
      heads: H.
      head_dim: d (keys and values).
      dtype: storage dtype of the cache.

    Returns:
      ``KVCache(k, v)``, both zeros [B, T, H, d] of ``dtype``.

    Examples:
      >>> init_kv_cache(2, 16, 4, 8).k.shape
      (2, 16, 4, 8)
    """
    zeros = jnp.zeros((batch, max_length, heads, head_dim), dtype)
    return KVCache(zeros, zeros)


def attend_with_cache(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    cache: KVCache,
    index: int | jax.Array,
    *,
    scale: float | jax.Array | None = None,
) -> tuple[jax.Array, KVCache]:
    r"""Writes a block of keys/values into the cache at ``index`` and attends causally over it.

    .. math::

        o_l = \sum_{s \le \mathrm{index} + l} \mathrm{softmax}_s(s\,q_l \cdot K_s)\, V_s

    where :math:`K, V` are the cache after writing the block at positions
    ``index … index + Lq − 1``. ``index`` may be traced (one compiled step for every position).

    Args:
      q: queries of the new tokens, [B, Lq, H, d] (Lq = 1 for token-by-token decoding).
      k: their keys, [B, Lq, H, d].
      v: their values, [B, Lq, H, d].
      cache: ``KVCache`` with k, v [B, T, H, d]; index + Lq ≤ T.
      index: position of the first new token, int scalar.
      scale: s, default d^−½.

    Returns:
      ``(o [B, Lq, H, d] in v's dtype, updated KVCache)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> q, k, v = jax.random.normal(jax.random.key(0), (3, 1, 6, 2, 4))
      >>> cache = init_kv_cache(1, 8, 2, 4)
      >>> o0, cache = attend_with_cache(q[:, :4], k[:, :4], v[:, :4], cache, 0)
      >>> o1, cache = attend_with_cache(q[:, 4:], k[:, 4:], v[:, 4:], cache, 4)
      >>> full = softmax_attention(q, k, v)
      >>> bool(jnp.allclose(jnp.concatenate([o0, o1], axis=1), full, atol=1e-6))
      True

    References:
      Pope et al., "Efficiently Scaling Transformer Inference", https://arxiv.org/abs/2211.05102.
    """
    q, k, v = _check_qkv(q, k, v)
    checks.exact_shape(
        cache.k, (k.shape[0], cache.k.shape[1], *k.shape[2:]), "cache.k", "[B, T, H, d]"
    )
    checks.exact_shape(cache.v, cache.k.shape, "cache.v", "[B, T, H, d]")
    if k.shape[1] > cache.k.shape[1]:
        raise ValueError(
            f"expected a block of at most {cache.k.shape[1]} tokens (the cache length), "
            f"got {k.shape[1]}."
        )
    index = jnp.asarray(index, jnp.int32)
    start = (0, index, 0, 0)
    cache = KVCache(
        jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), start),
        jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), start),
    )
    positions = jnp.arange(cache.k.shape[1])  # [T]
    mask = positions[None, :] <= index + jnp.arange(q.shape[1])[:, None]  # [L, T]
    return _attend(q, cache.k, cache.v, mask[None, None], scale).astype(v.dtype), cache
