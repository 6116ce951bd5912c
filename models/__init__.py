"""jaxdiv.models: sequence-model ops (pure functions) and Flax NNX modules (API.md §3).

Ops: ``selective_scan`` (Mamba S6), ``ssm_kernel_diag`` / ``ssm_kernel_dplr`` (S4D / S4),
``linear_attention``, ``lightnet_attention``, ``softmax_attention``. Mixer blocks (token mixer
alone): ``S4Block``, ``MambaBlock``, ``LightNetBlock``, ``LinearAttentionBlock``,
``AttentionBlock``. Models: ``LMConfig``, ``LanguageModel``, ``SequenceClassifier``.
"""

from jaxdiv.models.attention import softmax_attention as softmax_attention
from jaxdiv.models.attention_blocks import AttentionBlock as AttentionBlock
from jaxdiv.models.attention_blocks import LightNetBlock as LightNetBlock
from jaxdiv.models.attention_blocks import LinearAttentionBlock as LinearAttentionBlock
from jaxdiv.models.lightnet import lightnet_attention as lightnet_attention
from jaxdiv.models.linear_attention import linear_attention as linear_attention
from jaxdiv.models.lm import MIXERS as MIXERS
from jaxdiv.models.lm import LanguageModel as LanguageModel
from jaxdiv.models.lm import LMConfig as LMConfig
from jaxdiv.models.lm import SequenceClassifier as SequenceClassifier
from jaxdiv.models.mamba import MambaBlock as MambaBlock
from jaxdiv.models.mamba import load_torch_mamba as load_torch_mamba
from jaxdiv.models.s4 import S4Block as S4Block
from jaxdiv.models.s4_kernels import ssm_kernel_diag as ssm_kernel_diag
from jaxdiv.models.s4_kernels import ssm_kernel_dplr as ssm_kernel_dplr
from jaxdiv.models.selective_scan import selective_scan as selective_scan

__all__ = (
    "MIXERS",
    "AttentionBlock",
    "LMConfig",
    "LanguageModel",
    "LightNetBlock",
    "LinearAttentionBlock",
    "MambaBlock",
    "S4Block",
    "SequenceClassifier",
    "lightnet_attention",
    "linear_attention",
    "load_torch_mamba",
    "selective_scan",
    "softmax_attention",
    "ssm_kernel_diag",
    "ssm_kernel_dplr",
)
