"""jaxdiv.models: sequence-model ops (pure functions) and Flax NNX modules (API.md §3).

Ops: ``selective_scan`` (Mamba S6), ``ssm_kernel_diag`` / ``ssm_kernel_dplr`` (S4D / S4),
``linear_attention``, ``lightnet_attention``, ``softmax_attention``. Mixer blocks (token mixer
alone): ``S4Block``, ``MambaBlock``, ``LightNetBlock``, ``LinearAttentionBlock``,
``AttentionBlock``. Models: ``LMConfig``, ``LanguageModel``, ``SequenceClassifier``.
Mamba-2: the op ``ssd`` (state-space duality) and the mixer ``Mamba2Block``.
Hugging Face checkpoints (``pretrained.py``): ``load_pretrained``, ``save_pretrained``,
``load_tokenizer``.

Layout rule (where a mixer lives):

- one sub-package per model family: ``ssm/`` (S4/S4D, Mamba) and ``attention/`` (softmax,
  linear, LightNet);
- inside a family, one module per pure op in paper notation (``ssm/selective_scan.py``,
  ``ssm/s4_ops.py``, ``attention/linear.py``, ...), the NNX blocks beside them
  (``ssm/mamba.py``, ``ssm/s4.py``, ``attention/blocks.py``) and the sequence-parallel
  forms of the family's ops in the family's ``parallel.py``;
- Pallas kernels in one place, ``kernels/``, each behind the ``method="pallas"`` of its op;
- shared by all families: ``common.py`` (Linear, RMSNorm, MLP, logical-axis parameters),
  ``sharding.py`` (mesh axis names, sequence-sharding helpers), ``registry.py`` (mixer name
  → block, decoding cache, sequence-parallel form), ``lm.py`` (``LMConfig``,
  ``LanguageModel``, ``SequenceClassifier``); ``parallel.py`` is the public home of every
  sequence-parallel form.

A new mixer is its op and block in its family and one ``registry.register_mixer`` call.
"""

from jaxdiv.models.attention.blocks import AttentionBlock as AttentionBlock
from jaxdiv.models.attention.blocks import LightNetBlock as LightNetBlock
from jaxdiv.models.attention.blocks import LinearAttentionBlock as LinearAttentionBlock
from jaxdiv.models.attention.lightnet import lightnet_attention as lightnet_attention
from jaxdiv.models.attention.linear import linear_attention as linear_attention
from jaxdiv.models.attention.softmax import softmax_attention as softmax_attention
from jaxdiv.models.lm import MIXERS as MIXERS
from jaxdiv.models.lm import LanguageModel as LanguageModel
from jaxdiv.models.lm import LMConfig as LMConfig
from jaxdiv.models.lm import SequenceClassifier as SequenceClassifier
from jaxdiv.models.pretrained import load_pretrained as load_pretrained
from jaxdiv.models.pretrained import load_tokenizer as load_tokenizer
from jaxdiv.models.pretrained import save_pretrained as save_pretrained
from jaxdiv.models.ssm.mamba import MambaBlock as MambaBlock
from jaxdiv.models.ssm.mamba import load_torch_mamba as load_torch_mamba
from jaxdiv.models.ssm.mamba2 import Mamba2Block as Mamba2Block
from jaxdiv.models.ssm.s4 import S4Block as S4Block
from jaxdiv.models.ssm.s4_ops import ssm_kernel_diag as ssm_kernel_diag
from jaxdiv.models.ssm.s4_ops import ssm_kernel_dplr as ssm_kernel_dplr
from jaxdiv.models.ssm.selective_scan import selective_scan as selective_scan
from jaxdiv.models.ssm.ssd import ssd as ssd

__all__ = (
    "MIXERS",
    "AttentionBlock",
    "LMConfig",
    "LanguageModel",
    "LightNetBlock",
    "LinearAttentionBlock",
    "Mamba2Block",
    "MambaBlock",
    "S4Block",
    "SequenceClassifier",
    "lightnet_attention",
    "linear_attention",
    "load_pretrained",
    "load_tokenizer",
    "load_torch_mamba",
    "save_pretrained",
    "selective_scan",
    "softmax_attention",
    "ssd",
    "ssm_kernel_diag",
    "ssm_kernel_dplr",
)
