"""Attention-family mixer blocks (Flax NNX): softmax attention, linear attention, LightNet.

Each block is the token mixer alone (no norm, no residual), following the mixer-block protocol:
``block(x [B, L, D], *, where=None) -> [B, L, D]`` is the causal parallel form, and
``block.init_cache(B, T)`` plus ``block.step(x_t [B, D], cache)`` decode token by token with the
same outputs. ``where`` [B, L] marks real tokens; padded positions never reach a real output
(padded inputs are zeroed on entry, then keys are masked, or keys and values zeroed with an
identity decay); outputs at padded positions are finite but unspecified.

The sequence op of each block is called in one small method (``_mix``), so a sequence-parallel
version (LASP-2) can be swapped in there.
"""

# B batch, L length, D channels (d_model), H heads, K key head dim, V value head dim,
# F inner width (H·K or H·V), R low-rank gate width, T cache length

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiv import checks
from jaxdiv.models.common import Linear, logical_param
from jaxdiv.models.sharding import sequence_mesh

from .lightnet import LightNetState, init_lightnet_state, lightnet_attention
from .linear import linear_attention
from .parallel import lasp2_lightnet_attention, lasp2_linear_attention, lasp2h_attention
from .softmax import (
    KVCache,
    attend_with_cache,
    check_implementation,
    init_kv_cache,
    softmax_attention,
)

_FEATURE_MAPS = {
    "identity": lambda x: x,
    "elu1": lambda x: jax.nn.elu(x) + 1.0,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}
_DECAYS = ("none", "head", "channel")
_GATE_LOGIT_NORMALIZER = 16.0  # GLA's τ: log α = log σ(·) / τ keeps the forget gate near 1
_PAD_KEY_OFFSET = 128.0  # e^{−128} is 0 in float32: padded LightNet keys get exactly no weight


def _default_heads(d_model: int) -> int:
    """The largest divisor of d_model that is at most max(1, d_model // 64) (64-wide heads)."""
    heads = max(1, d_model // 64)
    while d_model % heads:
        heads -= 1
    return heads


def _head_sizes(d_model, num_heads, head_dim) -> tuple[int, int, int]:
    """Validated ``(d_model, num_heads, head_dim)``; ValueError naming the bad value."""
    d_model = checks.positive_int(d_model, "d_model")
    num_heads = _default_heads(d_model) if num_heads is None else num_heads
    num_heads = checks.positive_int(num_heads, "num_heads")
    if head_dim is None:
        if d_model % num_heads:
            raise ValueError(
                f"`d_model` must be divisible by `num_heads` (or pass `head_dim`), got "
                f"d_model={d_model} and num_heads={num_heads}."
            )
        head_dim = d_model // num_heads
    return d_model, num_heads, checks.positive_int(head_dim, "head_dim")


def _check_input(x, d_model: int, where, *, step: bool = False):
    """Checks ``x`` [B, L, D] (or [B, D] for ``step``) and ``where`` [B, L]; zeros padded x."""
    x = checks.float_array(x, "x")
    layout = "[B, D]" if step else "[B, L, D]"
    if x.ndim != (2 if step else 3) or x.shape[-1] != d_model:
        raise ValueError(f"`x` must have shape {layout} with D = {d_model}, got {x.shape}.")
    if where is not None:
        where = jnp.asarray(where)
        checks.exact_shape(where, x.shape[:2], "where", "[B, L]")
        where = where.astype(bool)
        x = _zero_pads(x, where)  # even NaN/inf at pads stay out of values and gradients
    return x, where


def _split_heads(x: jax.Array, heads: int) -> jax.Array:
    return x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)  # [..., H, K]


def _merge_heads(x: jax.Array) -> jax.Array:
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])  # [..., F]


def _zero_pads(x: jax.Array, where: jax.Array | None) -> jax.Array:
    """Zeros the padded positions of x [B, L, ...] (a select, so garbage never leaks)."""
    if where is None:
        return x
    return jnp.where(where.reshape(*where.shape, *(1,) * (x.ndim - 2)), x, 0)


def rope(x, positions, *, base: float = 10000.0) -> jax.Array:
    r"""Rotary position embedding: rotates channel pairs (i, i + d/2) by position-dependent angles.

    .. math::

        \mathrm{RoPE}(x)_{t} = [\,x_1 \odot \cos(t\theta) - x_2 \odot \sin(t\theta),\;
            x_2 \odot \cos(t\theta) + x_1 \odot \sin(t\theta)\,], \qquad
        \theta_i = \mathrm{base}^{-2i/d}

    where :math:`x = [x_1, x_2]` splits the head dim d in halves (the GPT-NeoX / LLaMA pairing, a
    fixed permutation of the paper's adjacent pairs) and t is the position. Then
    :math:`\mathrm{RoPE}(q)_t \cdot \mathrm{RoPE}(k)_s` depends on t and s only through t − s.

    Args:
      x: queries or keys, [B, L, H, d] with d even.
      positions: t, int [L] (or anything broadcastable to [B, L]).
      base: the frequency base.

    Returns:
      [B, L, H, d] in x's dtype (angles and rotation in float32 at least).

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.ones((1, 3, 2, 4))
      >>> y = rope(x, jnp.arange(3))
      >>> y.shape, bool(jnp.allclose(y[:, 0], x[:, 0]))  # position 0 is not rotated
      ((1, 3, 2, 4), True)

    References:
      Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding",
      https://arxiv.org/abs/2104.09864, Section 3.4.2, Eq. 34.
    """
    x = checks.float_array(x, "x")
    d = x.shape[-1]
    if x.ndim != 4 or d % 2:
        raise ValueError(f"`x` must have shape [B, L, H, d] with d even, got {x.shape}.")
    dtype = checks.compute_dtype(x)
    theta = jnp.asarray(base, dtype) ** (-jnp.arange(0, d, 2, dtype=dtype) / d)  # [d/2]
    positions = jnp.asarray(positions).astype(dtype)[..., None]  # [.., L, 1]
    angles = positions * theta.reshape(*(1,) * (positions.ndim - 1), -1)  # [.., L, d/2]
    angles = jnp.broadcast_to(angles, (x.shape[0], x.shape[1], d // 2))[
        :, :, None
    ]  # [B, L, 1, d/2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = jnp.split(x.astype(dtype), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class GroupRMSNorm(nnx.Module):
    r"""RMS norm with statistics per group of channels (per head), a scale per channel, and an
    optional swish output gate.

    .. math::

        y = \frac{x_g}{\sqrt{\mathrm{mean}(x_g^2) + \epsilon}} \odot w \;[\odot\, \mathrm{swish}(z)]

    for each group :math:`x_g` of ``features // groups`` channels; ``groups=num_heads`` is the
    per-head output norm of fla's linear attention / RetNet's GroupNorm (RMS variant),
    ``groups=1`` with a gate is fla's LightNet ``FusedRMSNormGated``.

    Args:
      features: F, the width of the last axis.
      groups: the number of groups (must divide F).
      eps: ε.
      param_dtype: storage dtype of the scale w (logical axis "heads", no weight decay).

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> norm = GroupRMSNorm(4, groups=2)
      >>> jnp.round(norm(jnp.array([[1.0, 1.0, 3.0, 3.0]])), 4).tolist()
      [[1.0, 1.0, 1.0, 1.0]]
    """

    def __init__(
        self,
        features: int,
        *,
        groups: int = 1,
        eps: float = 1e-6,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        if features % groups:
            raise ValueError(f"`groups` must divide `features` {features}, got {groups}.")
        self.scale = logical_param(jnp.ones((features,), param_dtype), ("heads",), no_decay=True)
        self.groups = groups
        self.eps = eps

    def __call__(self, x: jax.Array, gate: jax.Array | None = None) -> jax.Array:
        """Normalises x [..., F] (optionally times swish(gate) [..., F]); returns float32."""
        dtype = checks.compute_dtype(x)
        xg = x.astype(dtype).reshape(*x.shape[:-1], self.groups, -1)  # [..., G, F/G]
        xg = xg * jax.lax.rsqrt(jnp.mean(jnp.square(xg), axis=-1, keepdims=True) + self.eps)
        scale = self.scale[...].astype(dtype).reshape(*(1,) * (x.ndim - 1), -1)
        y = xg.reshape(x.shape) * scale  # [..., F]
        if gate is not None:
            y = y * jax.nn.silu(gate.astype(dtype))
        return y


class AttentionBlock(nnx.Module):
    r"""Causal multi-head softmax attention with rotary positions and a KV cache for decoding.

    .. math::

        o_t = W_o \big[\textstyle\sum_{s \le t} \mathrm{softmax}_s\big(d^{-1/2}
            \mathrm{RoPE}(q)_t \cdot \mathrm{RoPE}(k)_s\big)\, v_s\big]_{h=1..H}

    with :math:`q, k, v = x W_q, x W_k, x W_v` split into H heads of width d, RoPE at positions
    0 … L − 1 (in :meth:`step`, the cache's position counter) and padded keys (``where`` False)
    masked out.

    Args:
      d_model: D, the model width.
      num_heads: H; default the largest divisor of D that is at most max(1, D // 64).
      head_dim: d; default D // H (then D must be divisible by H).
      num_kv_heads: grouped-query attention (Ainslie et al. 2023): keys and values get this
        many heads (it must divide H), query head h reading key/value head h // (H / num_kv_heads)
        (Hugging Face's ``repeat_kv``); default H (multi-head attention).
      qkv_bias: give the q, k, v projections biases (Qwen2); ``o_proj`` has none.
      rope: apply rotary position embeddings to q and k (needs an even d).
      rope_base: RoPE frequency base (Hugging Face ``rope_theta``).
      implementation: the ``softmax_attention`` implementation of :meth:`__call__` (and of
        LASP-2H's local attention): ``"auto"`` (dense on CPU; cuDNN or ``"blockwise"`` on GPU,
        ``"blockwise"`` on TPU), ``"reference"``, ``"blockwise"``, ``"cudnn"``, ``"xla"`` or
        ``"splash"``. Decoding (:meth:`step`) attends one query to the cache densely.
      dtype: compute dtype of the projections (default: promote input and parameters); the
        output has ``dtype`` or, when None, the input's dtype. Softmax math is float32.
      param_dtype: storage dtype of the parameters.
      rngs: ``nnx.Rngs`` for the initialisers.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> block = AttentionBlock(16, rngs=nnx.Rngs(0))
      >>> block(jnp.ones((2, 5, 16))).shape
      (2, 5, 16)

    References:
      Vaswani et al., "Attention Is All You Need", https://arxiv.org/abs/1706.03762, Eq. 1;
      Su et al., "RoFormer", https://arxiv.org/abs/2104.09864, Eq. 34.
    """

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int | None = None,
        head_dim: int | None = None,
        num_kv_heads: int | None = None,
        qkv_bias: bool = False,
        rope: bool = True,
        rope_base: float = 10000.0,
        implementation: str = "auto",
        sequence_axis: str | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        d_model, num_heads, head_dim = _head_sizes(d_model, num_heads, head_dim)
        self.implementation = check_implementation(implementation)
        if rope and head_dim % 2:
            raise ValueError(f"`rope=True` needs an even `head_dim`, got head_dim={head_dim}.")
        checks.positive(rope_base, "rope_base")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        num_kv_heads = checks.positive_int(num_kv_heads, "num_kv_heads")
        if num_heads % num_kv_heads:
            raise ValueError(
                f"`num_kv_heads` must divide num_heads={num_heads}, got {num_kv_heads}."
            )
        inner, kv_inner = num_heads * head_dim, num_kv_heads * head_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = Linear(d_model, inner, axes=("embed", "heads"), use_bias=qkv_bias, **kw)
        self.k_proj = Linear(d_model, kv_inner, axes=("embed", "heads"), use_bias=qkv_bias, **kw)
        self.v_proj = Linear(d_model, kv_inner, axes=("embed", "heads"), use_bias=qkv_bias, **kw)
        self.o_proj = Linear(inner, d_model, axes=("heads", "embed"), **kw)
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, head_dim
        self.num_kv_heads = num_kv_heads
        self.rope, self.rope_base = rope, float(rope_base)
        self.dtype = dtype
        self.sequence_axis = sequence_axis  # sequence parallelism (see parallel.sequence_mesh)

    def _qkv(self, x: jax.Array, positions) -> tuple[jax.Array, jax.Array, jax.Array]:
        dtype = self.dtype or x.dtype
        q = _split_heads(self.q_proj(x).astype(dtype), self.num_heads)  # [..., H, K]
        k, v = (
            _split_heads(proj(x).astype(dtype), self.num_kv_heads)  # [..., H_kv, K]
            for proj in (self.k_proj, self.v_proj)
        )
        if self.rope:
            q, k = rope(q, positions, base=self.rope_base), rope(k, positions, base=self.rope_base)
        if self.num_kv_heads != self.num_heads:  # grouped-query: kv head j serves a run of heads
            groups = self.num_heads // self.num_kv_heads
            k, v = jnp.repeat(k, groups, axis=-2), jnp.repeat(v, groups, axis=-2)  # [..., H, K]
        return q, k, v

    def _mix(self, q, k, v, where, segment_ids) -> jax.Array:
        """The sequence op: softmax attention, or LASP-2H with the sequence sharded."""
        mesh = sequence_mesh(self.sequence_axis)
        if mesh is not None:
            if where is not None or segment_ids is not None:
                raise ValueError(
                    "Padding masks (`where`) and `segment_ids` are not supported with the "
                    "sequence sharded; pass None for both."
                )
            return lasp2h_attention(
                q, k, v, mesh=mesh, axis_name=self.sequence_axis, implementation=self.implementation
            )
        return softmax_attention(
            q,
            k,
            v,
            causal=True,
            where=where,
            segment_ids=segment_ids,
            implementation=self.implementation,
        )  # [B, L, H, K]

    def __call__(self, x, *, where=None, segment_ids=None) -> jax.Array:
        """Causal attention over x [B, L, D] (``where`` [B, L] bool marks real tokens;
        ``segment_ids`` [B, L] int, packed documents: no token attends to another document)."""
        x, where = _check_input(x, self.d_model, where)
        q, k, v = self._qkv(x, jnp.arange(x.shape[1]))
        o = _merge_heads(self._mix(q, k, v, where, segment_ids))  # [B, L, F]
        return self.o_proj(o).astype(self.dtype or x.dtype)  # [B, L, D]

    def init_cache(self, batch_size: int, max_length: int, *, dtype=jnp.float32) -> dict:
        """Empty cache: keys/values [B, T, H, d] of ``dtype`` and the int32 position ``index``."""
        kv = init_kv_cache(batch_size, max_length, self.num_heads, self.head_dim, dtype)
        return {"k": kv.k, "v": kv.v, "index": jnp.zeros((), jnp.int32)}

    def step(self, x_t, cache: dict) -> tuple[jax.Array, dict]:
        """Decodes one token x_t [B, D] at position ``cache["index"]`` (< max_length)."""
        x_t, _ = _check_input(x_t, self.d_model, None, step=True)
        index = cache["index"]
        q, k, v = self._qkv(x_t[:, None], index[None])  # [B, 1, H, K]
        o, kv = attend_with_cache(q, k, v, KVCache(cache["k"], cache["v"]), index)
        y = self.o_proj(_merge_heads(o[:, 0])).astype(self.dtype or x_t.dtype)  # [B, D]
        return y, {"k": kv.k, "v": kv.v, "index": index + 1}


class LinearAttentionBlock(nnx.Module):
    r"""Multi-head (gated) linear attention with a per-head output norm.

    .. math::

        S_t = \mathrm{diag}(\alpha_t) S_{t-1} + \phi(k_t)^\top v_t, \qquad
        o_t = W_o\, \mathrm{GroupRMSNorm}\big(d^{-1/2} \phi(q_t) S_t\big)

    per head, with :math:`q, k, v = x W_q, x W_k, x W_v`, feature map :math:`\phi` and forget
    gate :math:`\alpha_t` from ``decay``:

    - ``"none"``: :math:`\alpha = 1` (Katharopoulos et al.; fla ``LinearAttention``);
    - ``"head"``: a learned constant per head, :math:`\alpha_h = \sigma(a_h)`, initialised at
      RetNet's :math:`\gamma_h = 1 - 2^{-5-h}` (RetNet / Lightning-style multi-scale decay,
      here trainable; :math:`a` float32, no weight decay);
    - ``"channel"``: GLA's data-dependent gate per key channel,
      :math:`\alpha_t = \sigma(x_t W_{\alpha 1} W_{\alpha 2} + b_\alpha)^{1/16}` with rank 16.

    The output norm (``normalize_output``) is an RMS norm per head (fla's ``output_norm``,
    RetNet's GroupNorm) that replaces the Katharopoulos denominator. Padded positions get zero
    keys and values and log decay 0, so they leave the state untouched.

    Args:
      d_model: D.
      num_heads: H; default the largest divisor of D that is at most max(1, D // 64).
      head_dim: d (keys and values); default D // H.
      feature_map: φ, one of ``"elu1"`` (elu + 1), ``"relu"``, ``"silu"``, ``"identity"``.
      decay: ``"none"``, ``"head"`` or ``"channel"``.
      normalize_output: apply the per-head RMS norm to the attention output.
      chunk_size: chunk length of the chunked op in :meth:`__call__` (smaller, 16–32, suits
        ``decay="channel"``).
      gate_rank: rank of GLA's low-rank gate projection (``decay="channel"`` only).
      dtype: compute dtype of the projections (output: ``dtype`` or the input's dtype); the
        recurrence runs in float32.
      param_dtype: storage dtype (the head decay logits stay float32).
      rngs: ``nnx.Rngs``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> block = LinearAttentionBlock(16, decay="channel", rngs=nnx.Rngs(0))
      >>> block(jnp.ones((2, 5, 16))).shape
      (2, 5, 16)

    References:
      Katharopoulos et al., "Transformers are RNNs", https://arxiv.org/abs/2006.16236, Eq. 7;
      Sun et al., "Retentive Network", https://arxiv.org/abs/2307.08621, Section 2.2;
      Yang et al., "Gated Linear Attention Transformers with Hardware-Efficient Training",
      https://arxiv.org/abs/2312.06635, Section 4.4.
    """

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int | None = None,
        head_dim: int | None = None,
        feature_map: str = "elu1",
        decay: str = "head",
        normalize_output: bool = True,
        chunk_size: int = 64,
        gate_rank: int = 16,
        sequence_axis: str | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        d_model, num_heads, head_dim = _head_sizes(d_model, num_heads, head_dim)
        checks.one_of(feature_map, "feature_map", tuple(_FEATURE_MAPS))
        checks.one_of(decay, "decay", _DECAYS)
        self.chunk_size = checks.positive_int(chunk_size, "chunk_size")
        inner = num_heads * head_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = Linear(d_model, inner, axes=("embed", "heads"), **kw)
        self.k_proj = Linear(d_model, inner, axes=("embed", "heads"), **kw)
        self.v_proj = Linear(d_model, inner, axes=("embed", "heads"), **kw)
        self.o_proj = Linear(inner, d_model, axes=("heads", "embed"), **kw)
        channel = decay == "channel"
        rank = checks.positive_int(gate_rank, "gate_rank")
        # "head": σ(a_h) starts at RetNet's γ_h = 1 − 2^{−5−h}, i.e. a_h = log(2^{5+h} − 1)
        init = np.log(np.expm1((5.0 + np.arange(num_heads)) * np.log(2.0)))
        self.decay_logit = (
            logical_param(jnp.asarray(init, jnp.float32), ("heads",), no_decay=True)
            if decay == "head"
            else None
        )
        self.gate_down = Linear(d_model, rank, axes=("embed", None), **kw) if channel else None
        self.gate_up = Linear(rank, inner, axes=(None, "heads"), **kw) if channel else None
        self.gate_bias = (
            logical_param(jnp.zeros((inner,), param_dtype), ("heads",), no_decay=True)
            if channel
            else None
        )
        self.norm = GroupRMSNorm(inner, groups=num_heads, param_dtype=param_dtype)
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, head_dim
        self.feature_map, self.decay, self.normalize_output = feature_map, decay, normalize_output
        self.dtype = dtype
        self.sequence_axis = sequence_axis  # sequence parallelism (see parallel.sequence_mesh)

    def _inputs(self, x: jax.Array, where):
        """q, k, v [B, L, H, K] and log decay (None, [B, L, H] or [B, L, H, K]), pads inert."""
        dtype = self.dtype or x.dtype
        phi = _FEATURE_MAPS[self.feature_map]
        q = phi(_split_heads(self.q_proj(x).astype(dtype), self.num_heads))
        k = phi(_split_heads(self.k_proj(x).astype(dtype), self.num_heads))
        v = _split_heads(self.v_proj(x).astype(dtype), self.num_heads)
        if self.decay == "head":
            log_decay = jax.nn.log_sigmoid(self.decay_logit[...].astype(jnp.float32))  # [H]
            log_decay = jnp.broadcast_to(log_decay, (*x.shape[:-1], self.num_heads))
        elif self.decay == "channel":
            bias = self.gate_bias[...].astype(jnp.float32).reshape(*(1,) * (x.ndim - 1), -1)
            logits = self.gate_up(self.gate_down(x)).astype(jnp.float32) + bias  # [..., F]
            log_decay = jax.nn.log_sigmoid(logits) / _GATE_LOGIT_NORMALIZER
            log_decay = _split_heads(log_decay, self.num_heads)  # [..., H, K]
        else:
            log_decay = None
        if where is not None:
            k, v = _zero_pads(k, where), _zero_pads(v, where)
            log_decay = None if log_decay is None else _zero_pads(log_decay, where)
        return q, k, v, log_decay

    def _mix(self, q, k, v, log_decay, state, *, method: str):
        """The sequence op (LASP-2 with the sequence sharded); returns (o [B, L, H, V], S_L)."""
        mesh = sequence_mesh(self.sequence_axis) if state is None else None
        if mesh is not None:
            o = lasp2_linear_attention(
                q,
                k,
                v,
                mesh=mesh,
                axis_name=self.sequence_axis,
                log_decay=log_decay,
                chunk_size=self.chunk_size,
            )
            return o, None
        return linear_attention(
            q,
            k,
            v,
            log_decay=log_decay,
            method=method,
            chunk_size=self.chunk_size,
            initial_state=state,
            return_final_state=True,
        )

    def _output(self, o: jax.Array, dtype) -> jax.Array:
        o = _merge_heads(o)  # [..., F]
        if self.normalize_output:
            o = self.norm(o)
        return self.o_proj(o.astype(dtype)).astype(dtype)  # [..., D]

    def __call__(self, x, *, where=None) -> jax.Array:
        """Causal linear attention over x [B, L, D] (``where`` [B, L] bool marks real tokens)."""
        x, where = _check_input(x, self.d_model, where)
        q, k, v, log_decay = self._inputs(x, where)
        o, _ = self._mix(q, k, v, log_decay, None, method="chunked")
        return self._output(o, self.dtype or x.dtype)  # [B, L, D]

    def init_cache(self, batch_size: int, max_length: int, *, dtype=jnp.float32) -> dict:
        """Empty cache: the state S [B, H, d, d] of ``dtype`` (no positions; ``max_length`` is
        accepted for the common interface and unused)."""
        shape = (batch_size, self.num_heads, self.head_dim, self.head_dim)
        return {"state": jnp.zeros(shape, dtype)}

    def step(self, x_t, cache: dict) -> tuple[jax.Array, dict]:
        """One token x_t [B, D]: S ← diag(α_t) S + φ(k_t)ᵀ v_t, y_t from φ(q_t) S."""
        x_t, _ = _check_input(x_t, self.d_model, None, step=True)
        q, k, v, log_decay = self._inputs(x_t[:, None], None)  # [B, 1, H, K]
        o, state = self._mix(q, k, v, log_decay, cache["state"], method="recurrent")
        y = self._output(o[:, 0], self.dtype or x_t.dtype)  # [B, D]
        return y, {"state": state.astype(cache["state"].dtype)}


class LightNetBlock(nnx.Module):
    r"""LightNet token mixer: additive linear attention with a gated RMS-normed output (fla form).

    .. math::

        q = \mathrm{silu}(x W_q),\; k = x W_k,\; v = x W_v, \qquad
        o_t = d^{-1/2} q_t \big(M_t \oslash \delta_t\big), \quad
        M_t = \textstyle\sum_{s \le t} e^{k_s\,\top} v_s,\; \delta_t = \sum_{s \le t} e^{k_s}

    per head (keys softmax-normalised over the past, per key channel), then
    :math:`y = W_o\big(\mathrm{RMSNorm}(o) \odot \mathrm{swish}(x W_{g1} W_{g2})\big)` with the
    RMS norm over the whole inner width (not per head) and a low-rank gate. This follows fla's
    ``LightNetAttention`` (the project's numerical reference, research notes §3.2–3.4; the
    official code was not available); the first author's xmixers variant differs (normaliser
    seeded with 1, no q scale, sigmoid pre-norm gate). Padded positions get zero values and a
    key far below every real key (e^{k} underflows to exactly 0 in float32), so they enter
    neither M nor δ.

    Args:
      d_model: D.
      num_heads: H; default the largest divisor of D that is at most max(1, D // 64).
      head_dim: d (keys and values); default D // H.
      gate_rank: R, the rank of the output gate (fla: 128); default min(128, D).
      chunk_size: chunk length of the chunked op in :meth:`__call__` (default 16: its
        per-key-channel decay costs a [C, C, dk] term per chunk, so the work per token grows
        with C; the benchmark suite's ``scaling`` section measures the block).
      dtype: compute dtype of the projections (output: ``dtype`` or the input's dtype); the
        recurrence runs in float32.
      param_dtype: storage dtype.
      rngs: ``nnx.Rngs``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> block = LightNetBlock(16, rngs=nnx.Rngs(0))
      >>> block(jnp.ones((2, 5, 16))).shape
      (2, 5, 16)

    References:
      Qin et al., "You Only Scan Once: Efficient Multi-dimension Sequential Modeling with
      LightNet", https://arxiv.org/abs/2405.21022, Section 3 (additive recurrence);
      fla ``fla/layers/lightnet.py::LightNetAttention`` (block structure, gate and norm).
    """

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int | None = None,
        head_dim: int | None = None,
        gate_rank: int | None = None,
        chunk_size: int = 16,
        sequence_axis: str | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        d_model, num_heads, head_dim = _head_sizes(d_model, num_heads, head_dim)
        gate_rank = checks.positive_int(
            min(128, d_model) if gate_rank is None else gate_rank, "gate_rank"
        )
        self.chunk_size = checks.positive_int(chunk_size, "chunk_size")
        inner = num_heads * head_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = Linear(d_model, inner, axes=("embed", "heads"), **kw)
        self.k_proj = Linear(d_model, inner, axes=("embed", "heads"), **kw)
        self.v_proj = Linear(d_model, inner, axes=("embed", "heads"), **kw)
        self.gate_down = Linear(d_model, gate_rank, axes=("embed", None), **kw)
        self.gate_up = Linear(gate_rank, inner, axes=(None, "heads"), **kw)
        self.norm = GroupRMSNorm(inner, groups=1, param_dtype=param_dtype)
        self.o_proj = Linear(inner, d_model, axes=("heads", "embed"), **kw)
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, head_dim
        self.dtype = dtype
        self.sequence_axis = sequence_axis  # sequence parallelism (see parallel.sequence_mesh)

    def _inputs(self, x: jax.Array, where):
        """q, k, v [B, L, H, K]; padded keys pushed below every real key, padded values zero."""
        dtype = self.dtype or x.dtype
        q = jax.nn.silu(_split_heads(self.q_proj(x).astype(dtype), self.num_heads))
        k = _split_heads(self.k_proj(x).astype(jnp.float32), self.num_heads)  # softmax logits
        v = _split_heads(self.v_proj(x).astype(dtype), self.num_heads)
        if where is not None:
            # A −inf key would make the empty prefix's normaliser −inf − (−inf) = NaN, so pads
            # get the smallest real key of their channel minus 128: e^{k_pad − z_t} = 0 for every
            # real normaliser z_t, independent of the padded content.
            real = where[:, :, None, None]  # [B, L, 1, 1]
            low = jnp.min(k, axis=1, where=real, initial=jnp.inf)  # [B, H, K]
            low = jax.lax.stop_gradient(jnp.where(jnp.isfinite(low), low, 0.0))
            k = jnp.where(real, k, low[:, None] - _PAD_KEY_OFFSET)
            v = _zero_pads(v, where)
        return q, k, v

    def _mix(self, q, k, v, state, *, method: str):
        """The sequence op (LASP-2 with the sequence sharded); returns (o [B, L, H, V], state)."""
        mesh = sequence_mesh(self.sequence_axis) if state is None else None
        if mesh is not None:
            o = lasp2_lightnet_attention(
                q, k, v, mesh=mesh, axis_name=self.sequence_axis, chunk_size=self.chunk_size
            )
            return o, None
        return lightnet_attention(
            q,
            k,
            v,
            method=method,
            chunk_size=self.chunk_size,
            initial_state=state,
            return_final_state=True,
        )

    def _output(self, o: jax.Array, x: jax.Array, dtype) -> jax.Array:
        gate = self.gate_up(self.gate_down(x))  # [..., F]
        o = self.norm(_merge_heads(o), gate)
        return self.o_proj(o.astype(dtype)).astype(dtype)  # [..., D]

    def __call__(self, x, *, where=None) -> jax.Array:
        """LightNet mixing of x [B, L, D] (``where`` [B, L] bool marks real tokens)."""
        x, where = _check_input(x, self.d_model, where)
        q, k, v = self._inputs(x, where)
        o, _ = self._mix(q, k, v, None, method="chunked")
        return self._output(o, x, self.dtype or x.dtype)  # [B, L, D]

    def init_cache(self, batch_size: int, max_length: int, *, dtype=jnp.float32) -> dict:
        """Empty cache: numerator [B, H, d, d] (zeros) and log-normaliser [B, H, d] (−inf)
        of ``dtype`` (``max_length`` is accepted for the common interface and unused)."""
        state = init_lightnet_state(batch_size, self.num_heads, self.head_dim, self.head_dim)
        return {
            "numerator": state.numerator.astype(dtype),
            "log_normalizer": state.log_normalizer.astype(dtype),
        }

    def step(self, x_t, cache: dict) -> tuple[jax.Array, dict]:
        """One token x_t [B, D]: z ← logaddexp(z, k_t), numerator rescaled and updated."""
        x_t, _ = _check_input(x_t, self.d_model, None, step=True)
        q, k, v = self._inputs(x_t[:, None], None)  # [B, 1, H, K]
        state = LightNetState(cache["numerator"], cache["log_normalizer"])
        o, state = self._mix(q, k, v, state, method="recurrent")
        y = self._output(o[:, 0], x_t, self.dtype or x_t.dtype)  # [B, D]
        return y, {
            "numerator": state.numerator.astype(cache["numerator"].dtype),
            "log_normalizer": state.log_normalizer.astype(cache["log_normalizer"].dtype),
        }
