"""Language model and sequence classifier over any mix of mixer blocks (hybrids included).

# B batch, L length, D model width, V vocab, C classes

A layer is pre-norm residual: ``x = x + mixer(norm(x))``, then, for every mixer but Mamba
(whose block has no MLP in the paper), ``x = x + mlp(norm(x))``. The stack is embedding →
layers → final RMSNorm → LM head (tied to the embedding by default).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiv.models.attention.softmax import check_implementation
from jaxdiv.models.common import MLP, Linear, RMSNorm, dense, logical_param
from jaxdiv.models.registry import get_mixer, mixer_names
from jaxdiv.models.sharding import constrain

_ACTIVATION = ("batch", "length", "embed")  # the residual stream's logical axes

REMAT_POLICIES = ("none", "block", "mixer_only")
"""``LMConfig.remat``: ``"none"`` stores every activation for the backward pass; ``"block"``
recomputes each layer in the backward pass from its input (saves the layer's internals, costs
one more forward); ``"mixer_only"`` recomputes only the token mixers (their internal states are
the largest activations of SSM and linear-attention layers); any other name is a
``jax.checkpoint_policies`` policy (e.g. ``"dots_saveable"``: keep the matmul outputs,
recompute the rest) applied per layer."""

MIXERS = mixer_names()
"""The mixer names registered when the package is imported (``registry.mixer_names()``)."""


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """The model's own configuration (not the training configuration).

    ``mixer`` is one name of :data:`MIXERS` or a tuple of ``n_layers`` names (hybrids, e.g.
    ``("mamba", "mamba", "attention")``). ``num_heads=None`` picks the largest divisor of
    ``d_model`` up to ``d_model // 64`` as the number of heads of the attention-family
    mixers. ``sequence_axis`` (e.g. ``"sequence"``) turns on sequence parallelism: when the
    mesh in context (``jax.set_mesh``) shards that axis over several devices, every mixer runs
    its sequence-parallel form (``jaxdiv.models.parallel``: LASP-2 for linear attention and
    LightNet, LASP-2H for softmax attention, state passing for Mamba and S4); elsewhere (no
    mesh, decoding) the same model runs the single-device ops. ``dtype`` is the compute dtype,
    ``param_dtype`` the storage dtype (SSM-sensitive parameters always stay float32).
    ``scan_method`` is the ``selective_scan`` method of the Mamba layers (``"auto"``: see
    ``selective_scan``).

    The ``"mamba2"`` mixer (``Mamba2Block``) shares ``d_conv``, ``expand``, ``chunk_size`` and
    ``norm_eps`` (its gated norm) and adds ``mamba2_state`` (N per head), ``mamba2_headdim`` (P;
    None = the largest divisor of ``expand * d_model`` up to 64) and ``mamba2_ngroups`` (groups
    of heads sharing B and C).

    Options for Hugging Face architectures (``jaxdiv.models.load_pretrained``; unset, they
    leave the model exactly as before): ``num_kv_heads`` (grouped-query attention, None =
    ``num_heads``), ``head_dim`` (None = ``d_model // num_heads``), ``attention_bias`` (q, k, v
    biases, as Qwen2) and ``rope_theta`` (the RoPE base) configure the ``"attention"`` mixer;
    ``mlp_hidden`` sets the MLP width explicitly (None = ``int(mlp_ratio * d_model)``).

    ``attention_implementation`` is the ``softmax_attention`` implementation of the
    ``"attention"`` layers (``jaxdiv.models.attention.softmax.IMPLEMENTATIONS``): ``"auto"``
    runs the dense reference on CPU, cuDNN flash attention on an NVIDIA GPU where the inputs
    qualify (bf16/fp16, no padding mask or segment ids) and the blockwise (flash) form
    elsewhere; ``"blockwise"`` never holds an [L, L] array on any backend.

    Examples:
        >>> from jaxdiv.models import LMConfig
        >>> LMConfig(vocab_size=17, d_model=16, n_layers=2, mixer=("mamba", "attention")).mixers
        ('mamba', 'attention')
    """

    vocab_size: int
    d_model: int
    n_layers: int
    mixer: str | tuple[str, ...] = "mamba"
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    s4_state: int = 64
    chunk_size: int = 64
    scan_method: str = "auto"  # the Mamba layers' selective_scan method
    remat: str = "none"  # rematerialisation per layer: see REMAT_POLICIES
    tie_embeddings: bool = True
    sequence_axis: str | None = None
    norm_eps: float = 1e-6
    dtype: str = "float32"
    param_dtype: str = "float32"
    mamba2_state: int = 64
    mamba2_headdim: int | None = None
    mamba2_ngroups: int = 1
    num_kv_heads: int | None = None
    head_dim: int | None = None
    attention_bias: bool = False
    mlp_hidden: int | None = None
    rope_theta: float = 10000.0
    attention_implementation: str = "auto"  # softmax_attention(..., implementation=...)

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LMConfig.{name} must be a positive int, got {value!r}.")
        if isinstance(self.mixer, list):
            object.__setattr__(self, "mixer", tuple(self.mixer))
        if not isinstance(self.mixer, str) and len(self.mixer) != self.n_layers:
            raise ValueError(
                f"LMConfig.mixer must be one name or n_layers={self.n_layers} names, "
                f"got {len(self.mixer)}: {self.mixer}."
            )
        unknown = sorted(set(self.mixers) - set(mixer_names()))
        if unknown:
            raise ValueError(
                f"Unknown mixer(s) {unknown}; expected names from {list(mixer_names())}."
            )
        if self.head_dim is None and self.d_model % self.heads():
            raise ValueError(
                f"LMConfig.d_model={self.d_model} must be divisible by num_heads={self.heads()}."
            )
        if self.num_kv_heads is not None and (
            not isinstance(self.num_kv_heads, int)
            or self.num_kv_heads < 1
            or self.heads() % self.num_kv_heads
        ):
            raise ValueError(
                f"LMConfig.num_kv_heads must be a positive int dividing num_heads={self.heads()}, "
                f"got {self.num_kv_heads!r}."
            )
        for name, low in (("head_dim", 1), ("mlp_hidden", 0)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"LMConfig.{name} must be None or an int >= {low}, got {value!r}.")
        if not self.rope_theta > 0:
            raise ValueError(f"LMConfig.rope_theta must be positive, got {self.rope_theta!r}.")
        check_implementation(self.attention_implementation, "LMConfig.attention_implementation")
        for name in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, name))
            except TypeError:
                raise ValueError(
                    f"LMConfig.{name} must name a dtype, got {getattr(self, name)!r}."
                ) from None
        if self.remat not in REMAT_POLICIES and not hasattr(jax.checkpoint_policies, self.remat):
            raise ValueError(
                f"LMConfig.remat must be one of {list(REMAT_POLICIES)} or a "
                f"jax.checkpoint_policies name, got {self.remat!r}."
            )

    @property
    def mixers(self) -> tuple[str, ...]:
        """The mixer name of each layer."""
        return (self.mixer,) * self.n_layers if isinstance(self.mixer, str) else self.mixer

    def heads(self) -> int:
        """``num_heads``, or the largest divisor of d_model that is at most d_model // 64."""
        if self.num_heads:
            return self.num_heads
        target = max(1, self.d_model // 64)
        return max(h for h in range(1, target + 1) if self.d_model % h == 0)

    def mamba2_head_dim(self) -> int:
        """``mamba2_headdim``, or the largest divisor of expand * d_model that is at most 64."""
        if self.mamba2_headdim:
            return self.mamba2_headdim
        inner = self.expand * self.d_model
        return max(p for p in range(1, min(64, inner) + 1) if inner % p == 0)


class Layer(nnx.Module):
    """Pre-norm residual layer: mixer, then (where the registry says ``mlp``) a gated MLP."""

    def __init__(self, config: LMConfig, mixer: str, *, rngs: nnx.Rngs):
        kw = dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))
        self.mixer_name = mixer
        self.norm = RMSNorm(config.d_model, eps=config.norm_eps, **kw)
        spec = get_mixer(mixer)
        self.mixer = spec.build(config, dict(kw, rngs=rngs, sequence_axis=config.sequence_axis))
        hidden = config.mlp_hidden
        if hidden is None:
            hidden = int(config.mlp_ratio * config.d_model)
        self.takes_segments = spec.segments
        self.remat_mixer = config.remat == "mixer_only"
        if spec.mlp and hidden > 0:
            self.mlp_norm = RMSNorm(config.d_model, eps=config.norm_eps, **kw)
            self.mlp = MLP(config.d_model, hidden, **kw, rngs=rngs)
        else:
            self.mlp_norm = self.mlp = None

    def __call__(self, x, *, where=None, segment_ids=None):  # [B, L, D] -> [B, L, D]
        segments = {"segment_ids": segment_ids} if self.takes_segments else {}
        if self.remat_mixer:
            mix = nnx.remat(lambda mixer, h: mixer(h, where=where, **segments))
            x = x + mix(self.mixer, self.norm(x))
        else:
            x = x + self.mixer(self.norm(x), where=where, **segments)
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x

    def step(self, x, cache):  # [B, D] -> [B, D]
        y, cache = self.mixer.step(self.norm(x), cache)
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x, cache


def _call_layer(layer, x, where, segment_ids):
    return layer(x, where=where, segment_ids=segment_ids)


def _remat_layer(remat: str):
    """``(layer, x, where, segment_ids) -> y`` with the layer rematerialised as ``remat`` says."""
    if remat in ("none", "mixer_only"):
        return _call_layer
    policy = None if remat == "block" else getattr(jax.checkpoint_policies, remat)
    return nnx.remat(_call_layer, policy=policy)


class Backbone(nnx.Module):
    """Embedding, layers and final norm: tokens [B, L] -> hidden states [B, L, D]."""

    def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
        self.config = config
        embed = nnx.initializers.normal(stddev=config.d_model**-0.5)
        self.embedding = logical_param(
            embed(
                rngs.params(), (config.vocab_size, config.d_model), jnp.dtype(config.param_dtype)
            ),
            ("vocab", "embed"),
        )
        self.layers = nnx.List([Layer(config, m, rngs=rngs) for m in config.mixers])
        self.final_norm = RMSNorm(
            config.d_model,
            eps=config.norm_eps,
            dtype=jnp.dtype(config.dtype),
            param_dtype=jnp.dtype(config.param_dtype),
        )

    def embed(self, tokens):
        tokens = jnp.asarray(tokens)
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise TypeError(f"`tokens` must have an integer dtype, got dtype {tokens.dtype}.")
        return jnp.take(self.embedding[...], tokens, axis=0).astype(jnp.dtype(self.config.dtype))

    def __call__(self, tokens, *, where=None, segment_ids=None):
        if tokens.ndim != 2:
            raise ValueError(f"`tokens` must have shape [B, L], got {tokens.shape}.")
        for name, mask in (("where", where), ("segment_ids", segment_ids)):
            if mask is not None and jnp.shape(mask) != tokens.shape:
                raise ValueError(
                    f"`{name}` must have shape {tokens.shape} (= tokens), got {jnp.shape(mask)}."
                )
        x = constrain(self.embed(tokens), _ACTIVATION)  # [B, L, D]
        intermediates = {"embedding": x}
        run = _remat_layer(self.config.remat)
        for i, layer in enumerate(self.layers):
            x = constrain(run(layer, x, where, segment_ids), _ACTIVATION)
            intermediates[f"layer_{i}"] = x
        x = self.final_norm(x)
        intermediates["final_norm"] = x
        return x, intermediates


class LanguageModel(nnx.Module):
    """Causal language model: ``model(tokens [B, L]) -> logits [B, L, V]`` (float32).

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from jaxdiv.models import LanguageModel, LMConfig
        >>> model = LanguageModel(LMConfig(vocab_size=17, d_model=16, n_layers=2), rngs=nnx.Rngs(0))
        >>> model(jnp.zeros((2, 5), jnp.int32)).shape
        (2, 5, 17)
    """

    def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.backbone = Backbone(config, rngs=rngs)
        self.lm_head = (
            None
            if config.tie_embeddings
            else Linear(
                config.d_model,
                config.vocab_size,
                axes=("embed", "vocab"),
                dtype=jnp.dtype(config.dtype),
                param_dtype=jnp.dtype(config.param_dtype),
                rngs=rngs,
            )
        )

    def logits(self, hidden):  # [..., D] -> [..., V]
        if self.lm_head is None:
            w = self.backbone.embedding[...].astype(hidden.dtype)
            return dense(hidden, w.T).astype(jnp.float32)
        return self.lm_head(hidden).astype(jnp.float32)

    def __call__(self, tokens, *, where=None, segment_ids=None, return_intermediates=False):
        """Logits [B, L, V] of tokens [B, L]; ``where`` [B, L] marks real tokens (padding never
        influences them); ``segment_ids`` [B, L] numbers the documents of packed rows: attention
        layers never attend across them (recurrent mixers carry their state through)."""
        hidden, intermediates = self.backbone(
            jnp.asarray(tokens), where=where, segment_ids=segment_ids
        )
        logits = constrain(self.logits(hidden), ("batch", "length", "vocab"))
        return (logits, intermediates) if return_intermediates else logits

    def init_cache(self, batch_size: int, max_length: int):
        """Per-layer decoding caches for :meth:`step`."""
        dtype = jnp.dtype(self.config.dtype)
        return tuple(
            layer.mixer.init_cache(batch_size, max_length, dtype=dtype)
            for layer in self.backbone.layers
        )

    def step(self, tokens, cache):
        """One decoding step: tokens [B] -> (logits [B, V], cache); equals the parallel call."""
        x = self.backbone.embed(tokens)  # [B, D]
        new_cache = []
        for layer, layer_cache in zip(self.backbone.layers, cache, strict=True):
            x, layer_cache = layer.step(x, layer_cache)
            new_cache.append(layer_cache)
        return self.logits(self.backbone.final_norm(x)), tuple(new_cache)

    def generate(self, prompt, max_new_tokens: int, *, temperature=1.0, top_k=None, rng):
        """Samples ``max_new_tokens`` after ``prompt`` [B, P] -> tokens [B, P + max_new_tokens].

        ``temperature=0`` decodes greedily; ``top_k`` keeps the k most likely tokens. The
        prompt is fed through :meth:`step` (one compiled scan), then sampling continues
        token by token from the cache.
        """
        prompt = jnp.asarray(prompt)
        if prompt.ndim != 2 or prompt.shape[1] < 1:
            raise ValueError(f"`prompt` must have shape [B, P] with P >= 1, got {prompt.shape}.")
        if top_k is not None and not 1 <= top_k <= self.config.vocab_size:
            raise ValueError(f"`top_k` must be in [1, {self.config.vocab_size}], got {top_k}.")
        graphdef, state = nnx.split(self)
        greedy = temperature == 0
        return _generate(
            graphdef,
            state,
            prompt,
            rng,
            jnp.float32(1.0 if greedy else temperature),
            max_new_tokens=int(max_new_tokens),
            top_k=top_k,
            greedy=bool(greedy),
        )


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "top_k", "greedy"))
def _generate(graphdef, state, prompt, rng, temperature, *, max_new_tokens, top_k, greedy):
    model = nnx.merge(graphdef, state)
    batch, prompt_len = prompt.shape
    cache = model.init_cache(batch, prompt_len + max_new_tokens)

    def feed(cache, token):
        logits, cache = model.step(token, cache)
        return cache, logits

    cache, prompt_logits = jax.lax.scan(feed, cache, prompt.T)

    def sample(logits, key):
        if greedy:
            return jnp.argmax(logits, axis=-1).astype(prompt.dtype)
        logits = logits / temperature
        if top_k is not None:
            kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
            logits = jnp.where(logits < kth, -jnp.inf, logits)
        return jax.random.categorical(key, logits, axis=-1).astype(prompt.dtype)

    def decode(carry, i):
        cache, logits = carry
        token = sample(logits, jax.random.fold_in(rng, i))
        logits, cache = model.step(token, cache)
        return (cache, logits), token

    _, new = jax.lax.scan(decode, (cache, prompt_logits[-1]), jnp.arange(max_new_tokens))
    return jnp.concatenate([prompt, new.T], axis=1)


class SequenceClassifier(nnx.Module):
    """Sequence classifier: the backbone, masked mean pooling, a linear head -> logits [B, C].

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> from jaxdiv.models import LMConfig, SequenceClassifier
        >>> config = LMConfig(vocab_size=17, d_model=16, n_layers=1, mixer="s4d")
        >>> SequenceClassifier(config, 10, rngs=nnx.Rngs(0))(jnp.zeros((3, 64), jnp.int32)).shape
        (3, 10)
    """

    def __init__(self, config: LMConfig, num_classes: int, *, rngs: nnx.Rngs):
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"`num_classes` must be an int >= 2, got {num_classes!r}.")
        self.backbone = Backbone(config, rngs=rngs)
        self.head = Linear(
            config.d_model, num_classes, axes=("embed", None), use_bias=True, rngs=rngs
        )

    def __call__(self, tokens, *, where=None, return_intermediates=False):
        tokens = jnp.asarray(tokens)
        hidden, intermediates = self.backbone(tokens, where=where)
        weights = (
            jnp.ones(tokens.shape, hidden.dtype) if where is None else where.astype(hidden.dtype)
        )
        pooled = jnp.einsum("bl,bld->bd", weights, hidden) / jnp.maximum(
            weights.sum(-1, keepdims=True), 1.0
        )  # [B, D]
        logits = self.head(pooled).astype(jnp.float32)
        return (logits, intermediates) if return_intermediates else logits
