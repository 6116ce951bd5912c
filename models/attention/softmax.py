"""Softmax attention (float32 softmax, key padding, offset causal mask) and a KV cache for decoding.

``softmax_attention(..., implementation=...)`` picks how the same function is computed:
``"reference"`` (dense [B, H, Lq, Lk] scores, the independent reference), ``"blockwise"``
(:mod:`~jaxdiv.models.attention.blockwise`, no [Lq, Lk] array), ``"cudnn"`` / ``"xla"``
(``jax.nn.dot_product_attention``), ``"splash"`` (the Pallas TPU splash-attention kernel) or
``"auto"`` (by backend and inputs: :func:`choose_attention_implementation`).

Decoding with the cache: ``cache = init_kv_cache(B, T, H, d)``, then for each new block of
tokens at positions ``index … index + Lq − 1``:
``o, cache = attend_with_cache(q, k, v, cache, index)``. The keys and values are written into the
cache at ``index`` and the queries attend causally to every cached position up to their own, so
feeding a sequence token by token gives the same outputs as ``softmax_attention`` on the whole.
"""

# B batch, L query length, S key length, H heads, D head dim, T cache length

import difflib
from typing import NamedTuple, cast

import jax
import jax.extend
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from jaxdiv import checks

from .blockwise import blockwise_attention, check_qkv

IMPLEMENTATIONS = ("auto", "reference", "blockwise", "cudnn", "xla", "splash")
"""The values of ``softmax_attention(..., implementation=...)`` and of
``LMConfig.attention_implementation``."""

_HALF = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_AUTO_CUDNN_MAX_HEAD_DIM = 128  # cuDNN flash attention before Hopper (256 from Hopper on)


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


def check_implementation(implementation: str, name: str = "implementation") -> str:
    """``implementation`` if it names one of :data:`IMPLEMENTATIONS`; else ValueError listing
    them, with a did-you-mean hint."""
    if implementation not in IMPLEMENTATIONS:
        close = difflib.get_close_matches(str(implementation), IMPLEMENTATIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"`{name}` must be one of {list(IMPLEMENTATIONS)}, got {implementation!r}{hint}."
        )
    return implementation


def _dot_product_unsupported(
    *, causal: bool, q_length: int, k_length: int, head_dim: int, value_head_dim: int,
    has_segment_ids: bool,
) -> str | None:  # fmt: skip
    """Why ``jax.nn.dot_product_attention`` cannot express these masks and shapes (None: it can)."""
    if has_segment_ids:
        return "`segment_ids` (packed documents) have no counterpart there"
    if causal and q_length != k_length:
        return (
            "its causal mask is aligned at the first query, not offset to the last Lk − Lq "
            f"positions, so causal=True needs Lq == Lk, got Lq={q_length} and Lk={k_length}"
        )
    if value_head_dim != head_dim:
        return f"values must have the keys' head dim, got d={head_dim} and dv={value_head_dim}"
    return None


def _cudnn_unsupported(
    dtype: DTypeLike, *, static_scale: bool, max_head_dim: int = 256, **shapes
) -> str | None:
    """Why cuDNN's flash attention cannot run these inputs (None: it can, as far as known here)."""
    reason = _dot_product_unsupported(**shapes)
    if reason is not None:
        return reason
    if jnp.dtype(dtype) not in _HALF:
        return f"cuDNN flash attention takes bfloat16 or float16 inputs, got {jnp.dtype(dtype)}"
    head_dim = shapes["head_dim"]
    if head_dim % 8 or head_dim > max_head_dim:
        return (
            f"cuDNN flash attention needs a head dim that is a multiple of 8 and at most "
            f"{max_head_dim}, got {head_dim}"
        )
    if not static_scale:
        return "cuDNN takes the scale as a static number, got a traced `scale`"
    return None


def _splash_unsupported(
    *, q_length: int, k_length: int, head_dim: int, value_head_dim: int, has_where: bool
) -> str | None:
    """Why the splash-attention kernel cannot run these inputs (None: it can)."""
    if has_where:
        return "key padding `where` is not supported (mark documents with `segment_ids`)"
    if q_length != k_length or q_length % 128:
        return f"it needs Lq == Lk and a multiple of 128, got Lq={q_length} and Lk={k_length}"
    if value_head_dim != head_dim:
        return f"values must have the keys' head dim, got d={head_dim} and dv={value_head_dim}"
    return None


def choose_attention_implementation(
    backend: str,
    dtype: DTypeLike,
    *,
    causal: bool = True,
    q_length: int,
    k_length: int,
    head_dim: int,
    value_head_dim: int | None = None,
    has_where: bool = False,
    has_segment_ids: bool = False,
    static_scale: bool = True,
) -> str:
    """What ``implementation="auto"`` runs, from the backend and the inputs (a pure function).

    - ``"cpu"``: ``"reference"``, the dense scores, which every other implementation is tested
      against (so CPU runs, tests and notebooks keep it). From about Lk = 1024 up
      ``"blockwise"`` was also faster on a 2-core CPU (the ``attention`` benchmark section
      times both); pass it explicitly for long sequences;
    - ``"gpu"`` / ``"cuda"``: ``"cudnn"`` (cuDNN flash attention through
      ``jax.nn.dot_product_attention``) when the inputs qualify: bfloat16/float16, no key
      padding ``where`` and no ``segment_ids``, causal only with Lq == Lk, dv == d, d a
      multiple of 8 and at most 128 (every cuDNN flash-attention GPU; Hopper takes 256) and a
      static scale; otherwise ``"blockwise"``;
    - ``"tpu"``: ``"blockwise"``. The Pallas splash-attention kernel
      (``jax.experimental.pallas.ops.tpu.splash_attention``) is available as
      ``implementation="splash"`` and is tested here in interpret mode on the CPU against the
      reference, but it was never compiled or run on a TPU here, so ``"auto"`` does not pick it;
    - any other backend (e.g. ``"rocm"``, where cuDNN does not exist): ``"blockwise"``.

    Args:
      backend: ``jax.default_backend()`` (``"rocm"`` for an AMD GPU).
      dtype: the common dtype of q, k and v.
      causal: the causal flag of the call.
      q_length: Lq.
      k_length: Lk.
      head_dim: d.
      value_head_dim: dv (default d).
      has_where: a key padding mask is given.
      has_segment_ids: segment ids are given.
      static_scale: the scale is a Python number (or None), not a traced array.

    Returns:
      ``"reference"``, ``"cudnn"`` or ``"blockwise"``.

    Examples:
      >>> choose_attention_implementation("gpu", "bfloat16", q_length=8, k_length=8, head_dim=64)
      'cudnn'
      >>> choose_attention_implementation("gpu", "float32", q_length=8, k_length=8, head_dim=64)
      'blockwise'
    """
    if backend == "cpu":
        return "reference"
    if backend in ("gpu", "cuda") and not has_where:
        reason = _cudnn_unsupported(
            dtype,
            static_scale=static_scale,
            max_head_dim=_AUTO_CUDNN_MAX_HEAD_DIM,
            causal=causal,
            q_length=q_length,
            k_length=k_length,
            head_dim=head_dim,
            value_head_dim=head_dim if value_head_dim is None else value_head_dim,
            has_segment_ids=has_segment_ids,
        )
        if reason is None:
            return "cudnn"
    return "blockwise"


def _backend() -> str:
    """``jax.default_backend()``, with ``"rocm"`` for an AMD GPU (no cuDNN there)."""
    backend = jax.default_backend()
    if backend == "gpu":
        try:
            version = jax.extend.backend.get_backend().platform_version
        except Exception:  # an unknown client: keep "gpu"
            return backend
        if "rocm" in version.lower():
            return "rocm"
    return backend


def _unsupported(implementation: str, reason: str) -> ValueError:
    return ValueError(
        f'implementation="{implementation}" cannot compute this attention: {reason}. '
        'Use implementation="blockwise" (any masks and lengths, no [Lq, Lk] array).'
    )


def _dot_product(q, k, v, *, causal, scale, where, implementation) -> jax.Array:
    """``jax.nn.dot_product_attention`` with our masks: ``where`` as a boolean [B, 1, 1, Lk]
    mask, rows with no visible key set to 0 (there they would average the masked values)."""
    Lq, Lk = q.shape[1], k.shape[1]
    shapes = dict(
        causal=causal,
        q_length=Lq,
        k_length=Lk,
        head_dim=q.shape[-1],
        value_head_dim=v.shape[-1],
        has_segment_ids=False,
    )
    static = None if scale is None else checks.concrete(scale)
    dtype = jnp.result_type(q, k, v)
    if implementation == "cudnn":
        reason = _cudnn_unsupported(
            dtype, static_scale=scale is None or static is not None, **shapes
        )
    else:
        reason = _dot_product_unsupported(**shapes)
    if reason is not None:
        raise _unsupported(implementation, reason)
    if scale is not None and static is None:  # traced scale: fold it into q (xla only)
        q = (q.astype(checks.compute_dtype(q)) * scale).astype(q.dtype)
        static = 1.0
    mask = None if where is None else where[:, None, None, :]  # [B, 1, 1, S]
    q, k, v = (x.astype(dtype) for x in (q, k, v))
    o = jax.nn.dot_product_attention(
        q, k, v, mask=mask, scale=static, is_causal=causal, implementation=implementation
    )  # [B, L, H, V]
    if where is not None:  # a query sees a key iff a real key lies at or before it (or anywhere)
        seen = jnp.cumsum(where, axis=1) > 0 if causal else jnp.any(where, axis=1, keepdims=True)
        seen = jnp.broadcast_to(seen, (q.shape[0], Lq))  # [B, L]
        o = jnp.where(seen[:, :, None, None], o, 0)
    return o


def _splash(q, k, v, *, causal, scale, where, segment_ids) -> jax.Array:
    """The Pallas TPU splash-attention kernel (interpret mode off a TPU), vmapped over B."""
    reason = _splash_unsupported(
        q_length=q.shape[1],
        k_length=k.shape[1],
        head_dim=q.shape[-1],
        value_head_dim=v.shape[-1],
        has_where=where is not None,
    )
    if reason is not None:
        raise _unsupported("splash", reason)
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as kernels,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as masks,
    )

    B, L, H, D = q.shape
    block = next(b for b in (512, 256, 128) if L % b == 0)
    mask = masks.CausalMask((L, L)) if causal else masks.FullMask((L, L))
    kernel = kernels.make_splash_mha(
        masks.MultiHeadMask([mask] * H),
        block_sizes=kernels.BlockSizes(
            block_q=block,
            block_kv=block,
            block_kv_compute=block,
            block_q_dkv=block,
            block_kv_dkv=block,
            block_kv_dkv_compute=block,
            block_q_dq=block,
            block_kv_dq=block,
        ),
        head_shards=1,
        q_seq_shards=1,
        interpret=jax.default_backend() != "tpu",
    )
    dtype = jnp.result_type(q, k, v)
    scale = D**-0.5 if scale is None else scale
    q = (q.astype(checks.compute_dtype(q)) * scale).astype(dtype)  # splash does not scale
    q, k, v = (jnp.swapaxes(x.astype(dtype), 1, 2) for x in (q, k, v))  # [B, H, L, D]
    if segment_ids is None:
        o = jax.vmap(kernel)(q, k, v)
    else:
        ids = segment_ids.astype(jnp.int32)

        def one(q, k, v, ids):
            return kernel(q, k, v, segment_ids=kernels.SegmentIds(ids, ids))

        o = jax.vmap(one)(q, k, v, ids)
    return jnp.swapaxes(cast(jax.Array, o), 1, 2)  # [B, L, H, D]


def softmax_attention(
    q: ArrayLike,
    k: ArrayLike,
    v: ArrayLike,
    *,
    causal: bool = True,
    scale: float | jax.Array | None = None,
    where: ArrayLike | None = None,
    segment_ids: ArrayLike | None = None,
    implementation: str = "auto",
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
      implementation: how it is computed (decided at trace time; every one computes the
        function above, up to rounding):

        - ``"reference"``: dense [B, H, Lq, Lk] scores, float32 softmax; the reference the
          others are tested against;
        - ``"blockwise"``: :func:`~jaxdiv.models.attention.blockwise.blockwise_attention`,
          the online softmax over key (and query) blocks with a FlashAttention-2 custom VJP;
          holds [B, H, 512, 512] per step and no [Lq, Lk] array, forward or backward; every
          mask and length;
        - ``"cudnn"``: ``jax.nn.dot_product_attention(..., implementation="cudnn")`` (GPU).
          bfloat16/float16 inputs, no ``segment_ids``, causal only with Lq == Lk (its causal
          mask is not offset), dv == d, a static ``scale``; ``where`` is passed as a boolean
          mask (cuDNN applies it as a bias). Anything else raises ``ValueError`` naming what
          is unsupported;
        - ``"xla"``: the same translation with ``implementation="xla"`` (dense; runs on any
          backend, which is how the translation is tested on a CPU);
        - ``"splash"``: the Pallas TPU splash-attention kernel, vmapped over B (interpret mode
          off a TPU). Lq == Lk, a multiple of 128, no ``where`` (``segment_ids`` are fine),
          dv == d. Tested in interpret mode only, never on a TPU here;
        - ``"auto"``: :func:`choose_attention_implementation` for ``jax.default_backend()``:
          ``"reference"`` on CPU; ``"cudnn"`` on an NVIDIA GPU when the inputs qualify (see
          there), else ``"blockwise"``; ``"blockwise"`` on TPU (``"splash"`` is not picked
          automatically because it was never run on a TPU here).

    Returns:
      [B, Lq, H, dv] in v's dtype (math in float32 at least).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 5, 4, 8))
      >>> o = softmax_attention(q, k, v)
      >>> o.shape, bool(jnp.allclose(o[:, 0], v[:, 0]))  # the first query sees only key 0
      ((2, 5, 4, 8), True)

    References:
      Vaswani et al., "Attention Is All You Need", https://arxiv.org/abs/1706.03762, Eq. 1;
      Dao, "FlashAttention-2", https://arxiv.org/abs/2307.08691 (``"blockwise"``).
    """
    q, k, v = check_qkv(q, k, v)
    check_implementation(implementation)
    Lq, Lk = q.shape[1], k.shape[1]
    if where is not None:
        where = jnp.asarray(where)
        checks.exact_shape(where, (q.shape[0], Lk), "where", "[B, Lk]")
        where = where.astype(bool)
    if segment_ids is not None:
        segment_ids = jnp.asarray(segment_ids)
        checks.exact_shape(segment_ids, (q.shape[0], Lk), "segment_ids", "[B, Lk]")
    if implementation == "auto":
        implementation = choose_attention_implementation(
            _backend(),
            jnp.result_type(q, k, v),
            causal=causal,
            q_length=Lq,
            k_length=Lk,
            head_dim=q.shape[-1],
            value_head_dim=v.shape[-1],
            has_where=where is not None,
            has_segment_ids=segment_ids is not None,
            static_scale=scale is None or checks.concrete(scale) is not None,
        )
    if implementation == "blockwise":
        return blockwise_attention(
            q, k, v, causal=causal, scale=scale, where=where, segment_ids=segment_ids
        )
    if implementation in ("cudnn", "xla"):
        if segment_ids is not None:
            raise _unsupported(implementation, "`segment_ids` (packed documents) are not supported")
        o = _dot_product(
            q, k, v, causal=causal, scale=scale, where=where, implementation=implementation
        )
        return o.astype(v.dtype)
    if implementation == "splash":
        o = _splash(q, k, v, causal=causal, scale=scale, where=where, segment_ids=segment_ids)
        return o.astype(v.dtype)
    mask = jnp.ones((1, 1, Lq, Lk), bool)  # [B, H, L, S]
    if causal:
        mask = jnp.arange(Lk)[None, :] <= jnp.arange(Lq)[:, None] + (Lk - Lq)  # [L, S]
        mask = mask[None, None]
    if where is not None:
        mask = mask & where[:, None, None, :]
    if segment_ids is not None:
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
    q, k, v = check_qkv(q, k, v)
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
