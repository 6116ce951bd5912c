"""Hugging Face checkpoints in and out: :func:`load_pretrained`, :func:`save_pretrained`.

# V vocab, D model width, F MLP width, H heads, E Mamba inner width, N state, K conv width

A Hugging Face model directory is ``config.json`` plus the weights in ``model.safetensors`` or
in shards listed by ``model.safetensors.index.json`` (and, optionally, ``tokenizer.json``).
Each supported ``model_type`` is one :class:`Architecture` in :data:`ARCHITECTURES`: how its
``config.json`` becomes an :class:`~jaxdiv.models.LMConfig` and back, and a table of rules
from our parameter paths (``backbone.layers.0.mixer.q_proj.kernel``) to the Hugging Face
tensor names (``model.layers.0.self_attn.q_proj.weight``) with the layout change between them.
Registered: ``llama``, ``qwen2``, ``mamba``, ``mamba2``; a new architecture is one
:func:`register_architecture` call.

Loading builds the model abstractly (``nnx.eval_shape``, no initialisation), checks every
tensor name, shape and dtype from the safetensors headers before reading any data, then reads
one file at a time, one tensor at a time, and places each on the devices (sharded by the
parameters' logical axes when a mesh is given or in context), so the model is never held
twice. A tensor is read with plain file reads (no memory map), in row chunks converted to the
parameter's layout and dtype straight into a 64-byte-aligned buffer, which the CPU backend
adopts without a copy: host memory peaks near the model's own size (``benchmarks/pretrained.py``
measures it). Library code uses NumPy and ``safetensors`` only (no torch).
"""

import dataclasses
import json
import math
import os
import re
import shutil
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from .lm import LanguageModel, LMConfig
from .sharding import param_sharding

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"

# safetensors dtype names -> NumPy dtypes (bfloat16 and float8 through ml_dtypes, as JAX uses).
_ST_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(jnp.bfloat16),
    "F8_E4M3": np.dtype(jnp.float8_e4m3fn),
    "F8_E5M2": np.dtype(jnp.float8_e5m2),
}
_ALIGN = 64  # bytes; the CPU backend adopts an aligned NumPy buffer without copying it
_CHUNK_BYTES = 16 * 2**20  # rows of a checkpoint tensor read at once
_HF_DTYPES = ("float32", "bfloat16", "float16")

# ---------------------------------------------------------------------------------------------
# Layouts: Hugging Face (PyTorch) tensor <-> our parameter.


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a PyTorch tensor maps onto our parameter (``to_ours``) and back (``to_hf``).

    ``axis`` is the axis of our parameter that the PyTorch tensor's first axis becomes, so
    ``to_ours`` of rows ``r0:r1`` of the PyTorch tensor fills ``r0:r1`` along ``axis`` of ours
    (loading reads large tensors in row chunks).
    """

    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    hf_shape: Callable[[tuple[int, ...]], tuple[int, ...]]
    axis: int = 0


SAME = Layout(lambda w: w, lambda w: w, lambda s: s)
# nn.Linear weight [out, in] <-> our kernel [in, out]
LINEAR = Layout(lambda w: w.T, lambda w: w.T, lambda s: s[::-1], axis=1)
# depthwise nn.Conv1d weight [E, 1, K] <-> our kernel [K, E]
CONV = Layout(lambda w: w[:, 0, :].T, lambda w: w.T[:, None, :], lambda s: (s[1], 1, s[0]), axis=1)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One Hugging Face ``model_type`` and how it maps onto :class:`LanguageModel`.

    Attributes:
      model_type: the ``config.json`` ``model_type`` (``"llama"``).
      hf_class: the ``architectures`` entry written by :func:`save_pretrained`.
      mixer: the ``LMConfig.mixer`` every layer has.
      to_config: ``config.json`` dict -> ``LMConfig`` keyword arguments (``dtype`` and
        ``param_dtype`` excluded); ``ValueError`` naming an unsupported field.
      from_config: ``LMConfig`` -> the architecture's ``config.json`` fields; ``ValueError``
        naming the ``LMConfig`` field this architecture cannot express.
      rules: ``(regex on our dotted parameter path, Hugging Face key template, layout)``; the
        template is ``str.format``-ed with the regex groups. Every parameter matches one rule.
      aliases: older Hugging Face key -> current key (accepted when loading).
      optional: regexes of checkpoint keys that are ignored when present (buffers, tied heads).
    """

    model_type: str
    hf_class: str
    mixer: str
    to_config: Callable[[Mapping[str, Any]], dict]
    from_config: Callable[[LMConfig], dict]
    rules: tuple[tuple[str, str, Layout], ...]
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
    optional: tuple[str, ...] = ()

    def hf_key(self, path: str) -> tuple[str, Layout] | None:
        """The Hugging Face key and layout of our parameter ``path`` (None: no rule)."""
        for pattern, template, layout in self.rules:
            match = re.fullmatch(pattern, path)
            if match:
                return template.format(*match.groups()), layout
        return None


ARCHITECTURES: dict[str, Architecture] = {}
"""Registered Hugging Face architectures by ``model_type``."""


def register_architecture(arch: Architecture) -> None:
    """Makes ``arch.model_type`` loadable and savable; ValueError if the name is taken."""
    if arch.model_type in ARCHITECTURES:
        raise ValueError(f"model_type {arch.model_type!r} is already registered.")
    ARCHITECTURES[arch.model_type] = arch


def _get(hf: Mapping[str, Any], key: str, model_type: str):
    if key not in hf:
        raise ValueError(f"{CONFIG_FILE} of a {model_type!r} model lacks the field {key!r}.")
    return hf[key]


def _require(hf: Mapping[str, Any], key: str, supported, model_type: str) -> None:
    """ValueError unless ``hf[key]`` (when present) equals ``supported``."""
    if key in hf and hf[key] is not None and hf[key] != supported:
        raise ValueError(
            f"{CONFIG_FILE}: {model_type!r} with {key}={hf[key]!r} is not supported; "
            f"expected {key}={supported!r}."
        )


def _rope_theta(hf: Mapping[str, Any], model_type: str) -> float:
    """``rope_theta`` from transformers 5 ``rope_parameters`` or the 4.x top-level fields."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if scaling:
        rope_type = scaling.get("rope_type", scaling.get("type", rope_type))
    if rope_type != "default":
        raise ValueError(
            f"{CONFIG_FILE}: {model_type!r} with rope_type={rope_type!r} (RoPE scaling) is not "
            "supported; expected rope_type='default'."
        )
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


# ---------------------------------------------------------------------------------------------
# Llama and Qwen2: pre-norm attention + SwiGLU MLP layers.


def _attention_to_config(hf: Mapping[str, Any], model_type: str, qkv_bias: bool) -> dict:
    _require(hf, "hidden_act", "silu", model_type)
    _require(hf, "mlp_bias", False, model_type)
    if model_type == "llama":  # Llama's attention_bias also puts a bias on o_proj
        _require(hf, "attention_bias", False, model_type)
    if model_type == "qwen2":
        _require(hf, "use_sliding_window", False, model_type)
        layer_types = set(hf.get("layer_types") or ["full_attention"])
        if layer_types != {"full_attention"}:
            raise ValueError(
                f"{CONFIG_FILE}: {model_type!r} with layer_types {sorted(layer_types)} is not "
                "supported; expected only 'full_attention'."
            )
    d_model = int(_get(hf, "hidden_size", model_type))
    heads = int(_get(hf, "num_attention_heads", model_type))
    head_dim = hf.get("head_dim") or d_model // heads
    return dict(
        vocab_size=int(_get(hf, "vocab_size", model_type)),
        d_model=d_model,
        n_layers=int(_get(hf, "num_hidden_layers", model_type)),
        mixer="attention",
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=None if head_dim * heads == d_model else int(head_dim),
        attention_bias=qkv_bias,
        mlp_hidden=int(_get(hf, "intermediate_size", model_type)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=_rope_theta(hf, model_type),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def _attention_from_config(config: LMConfig, model_type: str, qkv_bias: bool) -> dict:
    if config.attention_bias != qkv_bias:
        raise ValueError(
            f"LMConfig.attention_bias={config.attention_bias} has no {model_type!r} equivalent "
            f"(its q/k/v projections {'have' if qkv_bias else 'have no'} biases)."
        )
    hidden = config.mlp_hidden
    hidden = int(config.mlp_ratio * config.d_model) if hidden is None else hidden
    if hidden < 1:
        raise ValueError(
            f"LMConfig.mlp_hidden/mlp_ratio give no MLP (width {hidden}); {model_type!r} "
            "layers need one."
        )
    heads = config.heads()
    if config.d_model % heads:
        raise ValueError(
            f"LMConfig.num_heads={heads} must divide d_model={config.d_model} for "
            f"{model_type!r} (transformers checks it)."
        )
    rope_theta = float(config.rope_theta)
    fields = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=hidden,
        num_hidden_layers=config.n_layers,
        num_attention_heads=heads,
        num_key_value_heads=config.num_kv_heads or heads,
        head_dim=config.head_dim or config.d_model // heads,
        hidden_act="silu",
        rms_norm_eps=config.norm_eps,
        rope_theta=rope_theta,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        tie_word_embeddings=config.tie_embeddings,
    )
    if model_type == "llama":
        fields.update(attention_bias=False, mlp_bias=False, max_position_embeddings=2048)
    else:
        fields.update(use_sliding_window=False, max_position_embeddings=32768)
    return fields


_LAYER = r"backbone\.layers\.(\d+)\."
_ATTENTION_RULES = (
    (r"backbone\.embedding", "model.embed_tokens.weight", SAME),
    (r"backbone\.final_norm\.scale", "model.norm.weight", SAME),
    (r"lm_head\.kernel", "lm_head.weight", LINEAR),
    (_LAYER + r"norm\.scale", "model.layers.{0}.input_layernorm.weight", SAME),
    (_LAYER + r"mlp_norm\.scale", "model.layers.{0}.post_attention_layernorm.weight", SAME),
    (
        _LAYER + r"mixer\.([qkvo])_proj\.kernel",
        "model.layers.{0}.self_attn.{1}_proj.weight",
        LINEAR,
    ),
    (_LAYER + r"mixer\.([qkv])_proj\.bias", "model.layers.{0}.self_attn.{1}_proj.bias", SAME),
    (_LAYER + r"mlp\.(gate|up|down)\.kernel", "model.layers.{0}.mlp.{1}_proj.weight", LINEAR),
)
_ATTENTION_OPTIONAL = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", r"lm_head\.weight")

for _type, _class, _bias in (
    ("llama", "LlamaForCausalLM", False),
    ("qwen2", "Qwen2ForCausalLM", True),
):
    register_architecture(
        Architecture(
            model_type=_type,
            hf_class=_class,
            mixer="attention",
            to_config=lambda hf, t=_type, b=_bias: _attention_to_config(hf, t, b),
            from_config=lambda c, t=_type, b=_bias: _attention_from_config(c, t, b),
            rules=_ATTENTION_RULES,
            optional=_ATTENTION_OPTIONAL,
        )
    )


# ---------------------------------------------------------------------------------------------
# Mamba: pre-norm Mamba mixer layers (no MLP), norm_f, tied LM head.


def _mamba_to_config(hf: Mapping[str, Any]) -> dict:
    t = "mamba"
    d_model = int(_get(hf, "hidden_size", t))
    expand = int(hf.get("expand", 2))
    _require(hf, "hidden_act", "silu", t)
    _require(hf, "use_bias", False, t)
    _require(hf, "use_conv_bias", True, t)
    _require(hf, "intermediate_size", expand * d_model, t)
    rank = hf.get("time_step_rank", "auto")
    if rank != "auto":
        _require(hf, "time_step_rank", math.ceil(d_model / 16), t)
    return dict(
        vocab_size=int(_get(hf, "vocab_size", t)),
        d_model=d_model,
        n_layers=int(_get(hf, "num_hidden_layers", t)),
        mixer="mamba",
        d_state=int(hf.get("state_size", 16)),
        d_conv=int(hf.get("conv_kernel", 4)),
        expand=expand,
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


def _mamba_from_config(config: LMConfig) -> dict:
    return dict(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layers,
        state_size=config.d_state,
        conv_kernel=config.d_conv,
        expand=config.expand,
        intermediate_size=config.expand * config.d_model,
        time_step_rank=math.ceil(config.d_model / 16),
        layer_norm_epsilon=config.norm_eps,
        hidden_act="silu",
        use_bias=False,
        use_conv_bias=True,
        residual_in_fp32=True,
        tie_word_embeddings=config.tie_embeddings,
    )


_MIXER = _LAYER + r"mixer\."
register_architecture(
    Architecture(
        model_type="mamba",
        hf_class="MambaForCausalLM",
        mixer="mamba",
        to_config=_mamba_to_config,
        from_config=_mamba_from_config,
        rules=(
            (r"backbone\.embedding", "backbone.embeddings.weight", SAME),
            (r"backbone\.final_norm\.scale", "backbone.norm_f.weight", SAME),
            (r"lm_head\.kernel", "lm_head.weight", LINEAR),
            (_LAYER + r"norm\.scale", "backbone.layers.{0}.norm.weight", SAME),
            (_MIXER + r"conv1d\.kernel", "backbone.layers.{0}.mixer.conv1d.weight", CONV),
            (_MIXER + r"(\w+)\.kernel", "backbone.layers.{0}.mixer.{1}.weight", LINEAR),
            (_MIXER + r"(\w+)\.bias", "backbone.layers.{0}.mixer.{1}.bias", SAME),
            (_MIXER + r"(A_log|D)", "backbone.layers.{0}.mixer.{1}", SAME),
        ),
        aliases={"backbone.embedding.weight": "backbone.embeddings.weight"},
        optional=(r"lm_head\.weight",),
    )
)


# ---------------------------------------------------------------------------------------------
# Mamba-2: pre-norm Mamba2 mixer layers (no MLP), norm_f, LM head (untied by default).


def _float(value) -> float:
    """A JSON number, ``Infinity`` included, or transformers 5's ``{"__float__": "Infinity"}``."""
    if isinstance(value, Mapping):
        return float(str(value.get("__float__")))
    return float(value)


def _mamba2_to_config(hf: Mapping[str, Any]) -> dict:
    """``Mamba2Config`` fields -> LMConfig; absent fields take ``Mamba2Config``'s defaults.

    Accepted and ignored: the init-only options (``time_step_min``/``max``/``floor``,
    ``time_step_rank``, ``initializer_range``, ``rescale_prenorm_residual``) and
    ``residual_in_fp32`` (exact in float32; in bfloat16 our residual stream is bfloat16).
    """
    t = "mamba2"
    d_model = int(_get(hf, "hidden_size", t))
    expand = int(hf.get("expand", 2))
    headdim = int(hf.get("head_dim", 64))
    inner = expand * d_model
    _require(hf, "hidden_act", "silu", t)
    _require(hf, "use_bias", False, t)
    _require(hf, "use_conv_bias", True, t)
    if inner % headdim:
        raise ValueError(
            f"{CONFIG_FILE}: {t!r} with head_dim={headdim} is not supported; expected a divisor "
            f"of expand * hidden_size = {inner}."
        )
    _require(hf, "num_heads", inner // headdim, t)
    limit = hf.get("time_step_limit")
    try:
        parsed = None if limit is None else tuple(_float(v) for v in limit)
    except (TypeError, ValueError):
        parsed = ()
    if parsed is not None and parsed != (0.0, math.inf):
        raise ValueError(
            f"{CONFIG_FILE}: {t!r} with time_step_limit={limit!r} is not supported; "
            "expected time_step_limit=[0.0, Infinity] (no clamp of the time step)."
        )
    auto = LMConfig(vocab_size=1, d_model=d_model, n_layers=1, expand=expand).mamba2_head_dim()
    return dict(
        vocab_size=int(_get(hf, "vocab_size", t)),
        d_model=d_model,
        n_layers=int(_get(hf, "num_hidden_layers", t)),
        mixer="mamba2",
        mamba2_state=int(hf.get("state_size", 128)),
        mamba2_headdim=None if headdim == auto else headdim,
        mamba2_ngroups=int(hf.get("n_groups", 8)),
        d_conv=int(hf.get("conv_kernel", 4)),
        expand=expand,
        chunk_size=int(hf.get("chunk_size", 256)),
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),  # every norm, the gated one too
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def _mamba2_from_config(config: LMConfig) -> dict:
    headdim = config.mamba2_head_dim()
    return dict(  # time_step_limit left out: every transformers version defaults to (0, inf)
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layers,
        state_size=config.mamba2_state,
        conv_kernel=config.d_conv,
        expand=config.expand,
        head_dim=headdim,
        num_heads=config.expand * config.d_model // headdim,
        n_groups=config.mamba2_ngroups,
        chunk_size=config.chunk_size,
        layer_norm_epsilon=config.norm_eps,
        hidden_act="silu",
        use_bias=False,
        use_conv_bias=True,
        residual_in_fp32=True,
        rescale_prenorm_residual=False,
        tie_word_embeddings=config.tie_embeddings,
    )


register_architecture(
    Architecture(
        model_type="mamba2",
        hf_class="Mamba2ForCausalLM",
        mixer="mamba2",
        to_config=_mamba2_to_config,
        from_config=_mamba2_from_config,
        rules=(
            (r"backbone\.embedding", "backbone.embeddings.weight", SAME),
            (r"backbone\.final_norm\.scale", "backbone.norm_f.weight", SAME),
            (r"lm_head\.kernel", "lm_head.weight", LINEAR),
            (_LAYER + r"norm\.scale", "backbone.layers.{0}.norm.weight", SAME),
            (
                _MIXER + r"(in_proj|out_proj)\.kernel",
                "backbone.layers.{0}.mixer.{1}.weight",
                LINEAR,
            ),
            (_MIXER + r"conv1d\.kernel", "backbone.layers.{0}.mixer.conv1d.weight", CONV),
            (_MIXER + r"conv1d\.bias", "backbone.layers.{0}.mixer.conv1d.bias", SAME),
            (_MIXER + r"norm\.scale", "backbone.layers.{0}.mixer.norm.weight", SAME),  # gated
            (_MIXER + r"(dt_bias|A_log|D)", "backbone.layers.{0}.mixer.{1}", SAME),
        ),
        aliases={"backbone.embedding.weight": "backbone.embeddings.weight"},
        optional=(r"lm_head\.weight",),
    )
)


# ---------------------------------------------------------------------------------------------
# Files.


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path} not found; expected a Hugging Face model directory.") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}.") from None


def _architecture(hf: Mapping[str, Any], source) -> Architecture:
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"{source}: model_type {model_type!r} is not supported; expected one of "
            f"{sorted(ARCHITECTURES)}."
        )
    return ARCHITECTURES[model_type]


def _read_header(file: Path) -> dict:
    """The safetensors JSON header of ``file``: key -> {dtype, shape, data_offsets}."""
    try:
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except FileNotFoundError:
        raise ValueError(f"{file} not found (named by the checkpoint).") from None
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{file} is not a safetensors file (unreadable header).") from None
    header.pop("__metadata__", None)
    return header


def _weight_files(path: Path) -> dict[str, Path]:
    """Checkpoint key -> safetensors file, from the index or the single weights file."""
    if (path / INDEX_FILE).exists():
        weight_map = _read_json(path / INDEX_FILE).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{path / INDEX_FILE} has no 'weight_map' object.")
        return {key: path / name for key, name in weight_map.items()}
    if not (path / WEIGHTS_FILE).exists():
        raise ValueError(f"{path} has neither {WEIGHTS_FILE} nor {INDEX_FILE}.")
    return {key: path / WEIGHTS_FILE for key in _read_header(path / WEIGHTS_FILE)}


def _aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a ``_ALIGN``-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    start = -raw.ctypes.data % _ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def _read_exact(f, buffer: memoryview) -> None:
    """Fills ``buffer`` from the unbuffered file ``f`` (a read may return fewer bytes)."""
    done = 0
    while done < len(buffer):
        n = f.readinto(buffer[done:])
        if not n:
            raise ValueError(f"{f.name} ends before the tensor data its header promises.")
        done += n


def _read_tensor(
    f, offset: int, info: Mapping[str, Any], layout: Layout, shape: tuple[int, ...], dtype
) -> np.ndarray:
    """One checkpoint tensor as our parameter: ``shape`` in ``dtype``, in an aligned buffer.

    Plain reads, not a memory map (whose touched pages would count in the resident set until
    the file is closed): the stored rows go, ``_CHUNK_BYTES`` at a time, through
    ``layout.to_ours`` and the cast into the result, so neither a stored-dtype copy nor a
    transposed copy of the whole tensor is ever made. A tensor already in our dtype and
    layout is read straight into the result.
    """
    stored = _ST_DTYPES[info["dtype"]]
    hf_shape = tuple(info["shape"])
    out = _aligned_empty(shape, dtype)
    f.seek(offset + info["data_offsets"][0])
    if out.size == 0:
        return out
    if layout is SAME and stored == out.dtype:
        _read_exact(f, out.reshape(-1).view(np.uint8).data)
        return out
    rows, row_shape = (hf_shape[0], hf_shape[1:]) if hf_shape else (1, ())
    row_bytes = max(1, math.prod(row_shape) * stored.itemsize)
    step = max(1, min(rows, _CHUNK_BYTES // row_bytes))
    buffer = np.empty(step * row_bytes, np.uint8)
    for r0 in range(0, rows, step):
        n = min(step, rows - r0)
        _read_exact(f, buffer.data[: n * row_bytes])
        chunk = buffer[: n * row_bytes].view(stored).reshape((n, *row_shape) if hf_shape else ())
        if not hf_shape:
            out[...] = layout.to_ours(chunk)
            break
        index = [slice(None)] * out.ndim
        index[layout.axis] = slice(r0, r0 + n)
        out[tuple(index)] = layout.to_ours(chunk)
    return out


# ---------------------------------------------------------------------------------------------
# Sharding from the parameters' logical axes.


def _context_mesh() -> Mesh | None:
    mesh = jax.sharding.get_mesh()
    return None if mesh.empty else mesh


# ---------------------------------------------------------------------------------------------
# Loading.


def _resolve_dtype(dtype, hf: Mapping[str, Any]) -> str:
    if dtype is None:  # the checkpoint's declared dtype, as transformers' dtype="auto"
        dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
        return dtype if dtype in _HF_DTYPES else "float32"
    try:
        resolved = jnp.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or not jnp.issubdtype(resolved, jnp.floating):
        raise ValueError(f"`dtype` must name a float dtype, got {dtype!r}.")
    return resolved.name


def _flat_params(model_state) -> dict[str, nnx.Variable]:
    return {
        ".".join(str(p) for p in path): variable
        for path, variable in nnx.to_flat_state(model_state)
    }


def config_from_hf(hf: Mapping[str, Any], *, dtype: str = "float32") -> LMConfig:
    """The :class:`LMConfig` of a Hugging Face ``config.json`` dict (ValueError if unsupported)."""
    arch = _architecture(hf, CONFIG_FILE)
    return LMConfig(**arch.to_config(hf), dtype=dtype, param_dtype=dtype)


def load_pretrained(
    path: str | os.PathLike,
    *,
    dtype: str | None = None,
    mesh: Mesh | None = None,
    rules: Mapping[str, Any] | None = None,
) -> LanguageModel:
    """Loads a local Hugging Face causal-LM directory as a :class:`LanguageModel`.

    Supported ``model_type`` values are the keys of :data:`ARCHITECTURES` (``llama``,
    ``qwen2``, ``mamba``, ``mamba2``). The model is created abstractly (``nnx.eval_shape``), every
    checkpoint tensor is checked against it from the safetensors headers, then the tensors are
    read one file and one tensor at a time, each converted to its parameter's dtype as it is
    read (SSM parameters stay float32) and placed on the devices.

    Args:
      path: directory with ``config.json`` and ``model.safetensors`` or
        ``model.safetensors.index.json`` plus its shards.
      dtype: parameter and compute dtype (``"float32"``, ``"bfloat16"``, ...); None takes the
        checkpoint's declared ``dtype`` / ``torch_dtype`` (float32 if absent).
      mesh: place each parameter with the ``NamedSharding`` given by its logical axes on this
        mesh; default the mesh in context (``jax.set_mesh``), else the default device.
      rules: logical axis -> mesh axis rules (default ``jaxdiv.models.sharding.DEFAULT_RULES``,
        the training code's).

    Returns:
      the model; ``model(tokens)`` gives the logits of the transformers forward.

    Raises:
      ValueError: missing ``config.json`` or weights, unsupported ``model_type`` or option
        (named), missing or unexpected tensors (listed), or a tensor whose shape or dtype does
        not fit (naming the key, its file, expected vs got).

    Examples:
      >>> import tempfile
      >>> from flax import nnx
      >>> from jaxdiv.models import LanguageModel, LMConfig, load_pretrained, save_pretrained
      >>> config = LMConfig(vocab_size=17, d_model=16, n_layers=1, mixer="attention",
      ...                   tie_embeddings=False)
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     _ = save_pretrained(LanguageModel(config, rngs=nnx.Rngs(0)), tmp)
      ...     load_pretrained(tmp).config.mixer
      'attention'
    """
    path = Path(path)
    hf = _read_json(path / CONFIG_FILE)
    arch = _architecture(hf, path / CONFIG_FILE)
    config = config_from_hf(hf, dtype=_resolve_dtype(dtype, hf))
    abstract = nnx.eval_shape(lambda: LanguageModel(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    params = _flat_params(state)

    targets: dict[str, tuple[str, Layout]] = {}  # HF key -> (our path, layout)
    for name in params:
        found = arch.hf_key(name)
        if found is None:  # a bug in the rules, not in the checkpoint
            raise ValueError(f"no {arch.model_type!r} rule maps the parameter {name!r}.")
        targets[found[0]] = (name, found[1])

    files = _weight_files(path)
    headers = {file: _read_header(file) for file in sorted(set(files.values()))}
    plan: dict[Path, list[tuple[str, str]]] = {file: [] for file in headers}
    unexpected = []
    for stored, file in files.items():
        key = arch.aliases.get(stored, stored)
        if key not in targets:
            if not any(re.fullmatch(p, key) for p in arch.optional):
                unexpected.append(stored)
            continue
        info = headers[file].get(stored)
        if info is None:
            raise ValueError(f"{INDEX_FILE} maps {stored!r} to {file.name}, which lacks it.")
        name, layout = targets[key]
        want = layout.hf_shape(tuple(params[name].get_value().shape))
        if tuple(info["shape"]) != want:
            raise ValueError(
                f"{file.name}: tensor {stored!r} has shape {tuple(info['shape'])}; expected "
                f"{want} for this {arch.model_type!r} config."
            )
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(
                f"{file.name}: tensor {stored!r} has dtype {info['dtype']}; expected one of "
                f"{sorted(_ST_DTYPES)}."
            )
        start, end = info["data_offsets"]
        if end - start != math.prod(want) * _ST_DTYPES[info["dtype"]].itemsize:
            raise ValueError(
                f"{file.name}: tensor {stored!r} has {end - start} bytes of data; expected "
                f"{math.prod(want)} {info['dtype']} values."
            )
        plan[file].append((stored, key))
    found = {arch.aliases.get(k, k) for k in files}
    missing = sorted(set(targets) - found)
    if missing or unexpected:
        raise ValueError(
            f"{path}: checkpoint tensors do not match the {arch.model_type!r} config: "
            f"missing {missing}, unexpected {sorted(unexpected)}."
        )

    mesh = mesh if mesh is not None else _context_mesh()
    for file, keys in plan.items():  # one file open at a time, one tensor in memory at a time
        if not keys:
            continue
        with open(file, "rb", buffering=0) as f:
            (size,) = struct.unpack("<Q", f.read(8))
            for stored, key in keys:
                name, layout = targets[key]
                variable = params[name]
                want = variable.get_value()
                value = _read_tensor(
                    f, 8 + size, headers[file][stored], layout, tuple(want.shape), want.dtype
                )
                # On a CPU backend the aligned buffer becomes the parameter without a copy.
                sharding = param_sharding(variable, mesh, rules) if mesh is not None else None
                variable.set_value(jax.device_put(value, sharding))
                del value
    return nnx.merge(graphdef, state)


# ---------------------------------------------------------------------------------------------
# Saving.


def config_to_hf(config: LMConfig, *, model_type: str | None = None) -> tuple[Architecture, dict]:
    """The architecture and ``config.json`` dict for ``config``; ValueError naming the field
    that has no Hugging Face equivalent."""
    mixers = set(config.mixers)
    if model_type is not None:
        candidates = [_architecture({"model_type": model_type}, "`model_type`")]
    else:
        candidates = [a for a in ARCHITECTURES.values() if {a.mixer} == mixers]
    if not candidates:
        supported = sorted({a.mixer for a in ARCHITECTURES.values()})
        raise ValueError(
            f"LMConfig.mixer={config.mixer!r} has no Hugging Face equivalent; expected every "
            f"layer to be one of {supported}."
        )
    errors = []
    for arch in candidates:
        if {arch.mixer} != mixers:
            errors.append(
                f"LMConfig.mixer={config.mixer!r} does not fit {arch.model_type!r} "
                f"(expected {arch.mixer!r} layers)"
            )
            continue
        try:
            fields = arch.from_config(config)
        except ValueError as e:
            errors.append(str(e))
            continue
        dtype = jnp.dtype(config.param_dtype).name
        hf = {"architectures": [arch.hf_class], "model_type": arch.model_type, **fields}
        return arch, dict(hf, dtype=dtype, torch_dtype=dtype)
    raise ValueError("; ".join(errors))


def _copy_tokenizer(tokenizer, path: Path) -> None:
    if hasattr(tokenizer, "to_str"):  # a tokenizers.Tokenizer
        tokenizer.save(str(path / TOKENIZER_FILE))
        return
    source = Path(tokenizer)
    if source.is_dir():
        if not (source / TOKENIZER_FILE).exists():
            raise ValueError(f"`tokenizer` directory {source} has no {TOKENIZER_FILE}.")
        for name in (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json"):
            if (source / name).exists():
                shutil.copyfile(source / name, path / name)
    elif source.is_file():
        shutil.copyfile(source, path / TOKENIZER_FILE)
    else:
        raise ValueError(
            f"`tokenizer` must be a tokenizers.Tokenizer, a {TOKENIZER_FILE} file or a "
            f"directory holding one, got {tokenizer!r}."
        )


def save_pretrained(
    model: LanguageModel,
    path: str | os.PathLike,
    *,
    tokenizer=None,
    model_type: str | None = None,
    max_shard_size: int | None = None,
) -> Path:
    """Writes ``model`` as a Hugging Face directory that ``transformers`` loads with equal logits.

    ``config.json`` gets the architecture's fields (``model_type``, ``architectures``, sizes,
    ``rope_theta``, ``rms_norm_eps`` / ``layer_norm_epsilon``, ``tie_word_embeddings``,
    ``dtype``, ...); the weights go to ``model.safetensors`` in PyTorch layouts, each in its
    parameter's dtype, or to shards of at most ``max_shard_size`` bytes plus
    ``model.safetensors.index.json``. A tied LM head is not written (transformers ties it).

    Args:
      model: a :class:`LanguageModel` whose config has a Hugging Face equivalent: every
        layer ``"attention"`` (``llama``; ``qwen2`` with ``attention_bias``), ``"mamba"`` or
        ``"mamba2"``.
      path: the output directory (created if needed).
      tokenizer: optional ``tokenizers.Tokenizer``, ``tokenizer.json`` file, or directory whose
        ``tokenizer.json`` (and ``tokenizer_config.json``, ``special_tokens_map.json``) to copy.
      model_type: force an architecture (default: chosen from the config).
      max_shard_size: bytes per safetensors shard (default: one file).

    Returns:
      ``path`` as a ``Path``.

    Raises:
      ValueError: the config has no Hugging Face equivalent (naming the ``LMConfig`` field) or
        a parameter no rule maps.
    """
    from safetensors.numpy import save_file

    arch, hf = config_to_hf(model.config, model_type=model_type)
    params = _flat_params(nnx.state(model, nnx.Param))
    entries = []  # (HF key, our path, layout, bytes)
    for name, variable in params.items():
        found = arch.hf_key(name)
        if found is None:
            raise ValueError(
                f"parameter {name!r} has no {arch.model_type!r} equivalent; check the LMConfig "
                "fields this architecture does not have."
            )
        value = variable.get_value()
        entries.append((found[0], name, found[1], value.size * value.dtype.itemsize))

    shards: list[list[tuple[str, str, Layout, int]]] = [[]]
    for entry in entries:
        if (
            max_shard_size
            and shards[-1]
            and sum(e[3] for e in shards[-1]) + entry[3] > max_shard_size
        ):
            shards.append([])
        shards[-1].append(entry)

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    names = (
        [WEIGHTS_FILE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map = {}
    for file, shard in zip(names, shards, strict=True):
        tensors = {}
        for key, name, layout, _ in shard:  # one shard on the host at a time
            host = np.asarray(jax.device_get(params[name].get_value()))
            tensors[key] = np.ascontiguousarray(layout.to_hf(host))
            weight_map[key] = file
        save_file(tensors, str(path / file), metadata={"format": "pt"})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(e[3] for e in entries)}, "weight_map": weight_map}
        (path / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    elif (path / INDEX_FILE).exists():
        (path / INDEX_FILE).unlink()  # a stale index would shadow the new single file
    (path / CONFIG_FILE).write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        _copy_tokenizer(tokenizer, path)
    return path


def load_tokenizer(path: str | os.PathLike):
    """The ``tokenizers.Tokenizer`` of ``path/tokenizer.json`` (or of a ``tokenizer.json``
    file), None when the directory has none."""
    path = Path(path)
    file = path if path.is_file() else path / TOKENIZER_FILE
    if not file.exists():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(file))
