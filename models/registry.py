"""The mixer registry: one entry per token mixer that ``LMConfig.mixer`` can name.

Each entry says how an ``LMConfig`` builds the block, what its decoding cache holds and which
sequence-parallel form it switches to under a sequence-sharded mesh. Adding a mixer to the
language models is one :func:`register_mixer` call (here, or in user code before building
the ``LMConfig``).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

from flax import nnx

from .attention.blocks import AttentionBlock, LightNetBlock, LinearAttentionBlock
from .attention.parallel import lasp2_lightnet_attention, lasp2_linear_attention, lasp2h_attention
from .ssm.mamba import MambaBlock
from .ssm.mamba2 import Mamba2Block
from .ssm.parallel import (
    sequence_parallel_s4,
    sequence_parallel_selective_scan,
    sequence_parallel_ssd,
)
from .ssm.s4 import S4Block


@dataclasses.dataclass(frozen=True)
class Mixer:
    """A registered token mixer.

    Attributes:
      block: the NNX block class (``block(x [B, L, D], *, where) -> [B, L, D]``, with
        ``init_cache(batch_size, max_length, *, dtype)`` and ``step(x_t, cache)``).
      build: ``build(config, kwargs) -> block`` from an ``LMConfig``; ``kwargs`` carries
        ``dtype``, ``param_dtype``, ``rngs`` and ``sequence_axis``.
      cache: what the decoding cache holds (documentation; the block's ``init_cache`` makes it).
      sequence_parallel: the op the block runs when the mesh shards its sequence axis.
      mlp: whether the LM layer adds a gated MLP after this mixer (Mamba's block has none).
      segments: whether the block takes ``segment_ids`` (packed documents kept apart); the
        others see the packed row as one sequence (their state crosses document boundaries).
    """

    block: type[nnx.Module]
    build: Callable[[Any, dict], nnx.Module]
    cache: str
    sequence_parallel: Callable
    mlp: bool = True
    segments: bool = False


_MIXERS: dict[str, Mixer] = {}


def register_mixer(name: str, mixer: Mixer) -> None:
    """Makes ``name`` a valid ``LMConfig.mixer``; ValueError if the name is taken."""
    if name in _MIXERS:
        raise ValueError(f"mixer {name!r} is already registered; expected a new name.")
    _MIXERS[name] = mixer


def get_mixer(name: str) -> Mixer:
    """The registered mixer ``name``; ValueError listing :func:`mixer_names` if unknown."""
    try:
        return _MIXERS[name]
    except KeyError:
        raise ValueError(
            f"unknown mixer {name!r}; expected one of {list(mixer_names())}."
        ) from None


def mixer_names() -> tuple[str, ...]:
    """The registered mixer names, sorted."""
    return tuple(sorted(_MIXERS))


_S4_CACHE = "complex state [B, H, N2] (as real pairs)"
_LINEAR_CACHE = "state S [B, H, d_k, d_v]"

register_mixer(
    "s4",
    Mixer(
        S4Block,
        lambda c, kw: S4Block(c.d_model, d_state=c.s4_state, mode="dplr", **kw),
        _S4_CACHE,
        sequence_parallel_s4,
    ),
)
register_mixer(
    "s4d",
    Mixer(
        S4Block,
        lambda c, kw: S4Block(c.d_model, d_state=c.s4_state, mode="diag", init="lin", **kw),
        _S4_CACHE,
        sequence_parallel_s4,
    ),
)
register_mixer(
    "mamba",
    Mixer(
        MambaBlock,
        lambda c, kw: MambaBlock(
            c.d_model,
            d_state=c.d_state,
            d_conv=c.d_conv,
            expand=c.expand,
            scan_method=c.scan_method,
            **kw,
        ),
        "conv window [B, d_conv - 1, D_inner] and SSM state h [B, D_inner, N]",
        sequence_parallel_selective_scan,
        mlp=False,
    ),
)
register_mixer(
    "mamba2",
    Mixer(
        Mamba2Block,
        lambda c, kw: Mamba2Block(
            c.d_model,
            d_state=c.mamba2_state,
            d_conv=c.d_conv,
            expand=c.expand,
            headdim=c.mamba2_head_dim(),
            ngroups=c.mamba2_ngroups,
            chunk_size=c.chunk_size,
            norm_eps=c.norm_eps,
            **kw,
        ),
        "conv window [B, d_conv - 1, D_inner + 2 G N] and SSM state S [B, H, P, N]",
        sequence_parallel_ssd,
        mlp=False,
    ),
)
register_mixer(
    "lightnet",
    Mixer(
        LightNetBlock,
        lambda c, kw: LightNetBlock(c.d_model, num_heads=c.heads(), **kw),
        "numerator [B, H, d, d] and log-normaliser [B, H, d]",
        lasp2_lightnet_attention,
    ),
)
register_mixer(
    "linear_attention",
    Mixer(
        LinearAttentionBlock,
        lambda c, kw: LinearAttentionBlock(
            c.d_model, num_heads=c.heads(), chunk_size=c.chunk_size, **kw
        ),
        _LINEAR_CACHE,
        lasp2_linear_attention,
    ),
)
register_mixer(
    "attention",
    Mixer(
        AttentionBlock,
        lambda c, kw: AttentionBlock(
            c.d_model,
            num_heads=c.heads(),
            head_dim=c.head_dim,
            num_kv_heads=c.num_kv_heads,
            qkv_bias=c.attention_bias,
            rope_base=c.rope_theta,
            implementation=c.attention_implementation,
            **kw,
        ),
        "keys and values [B, T, H, d] and the position index",
        lasp2h_attention,
        segments=True,
    ),
)
