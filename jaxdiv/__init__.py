"""jaxdiv: divergences and distillation objectives in JAX.

Every loss takes logits, student first and teacher second, keyword-only hyperparameters, and
returns one value per row (no reduction); see API.md §1 for the conventions. ``get`` / ``names``
select verified divergences by name; reconstructions of papers whose method equations are not
public (BD-KD, SequenceMatch) live in :mod:`jaxdiv.experimental`.
"""

from jaxdiv._alignment import fdpg_loss as fdpg_loss
from jaxdiv._alignment import fdpo_loss as fdpo_loss
from jaxdiv._cauchy_schwarz import cauchy_schwarz_divergence as cauchy_schwarz_divergence
from jaxdiv._cauchy_schwarz import conditional_cs_divergence as conditional_cs_divergence
from jaxdiv._cauchy_schwarz import cs_mutual_information as cs_mutual_information
from jaxdiv._detection import dcpdd_score as dcpdd_score
from jaxdiv._detection import perplexity_entropy_gap as perplexity_entropy_gap
from jaxdiv._distillation import mdcs_consistency as mdcs_consistency
from jaxdiv._distillation import top_k_kl as top_k_kl
from jaxdiv._divergences import alpha_divergence as alpha_divergence
from jaxdiv._divergences import chi_squared as chi_squared
from jaxdiv._divergences import f_divergence as f_divergence
from jaxdiv._divergences import forward_kl as forward_kl
from jaxdiv._divergences import generalized_jsd as generalized_jsd
from jaxdiv._divergences import hellinger as hellinger
from jaxdiv._divergences import hinton_kd as hinton_kd
from jaxdiv._divergences import jensen_shannon as jensen_shannon
from jaxdiv._divergences import reverse_kl as reverse_kl
from jaxdiv._divergences import skew_kl as skew_kl
from jaxdiv._divergences import skew_reverse_kl as skew_reverse_kl
from jaxdiv._divergences import total_variation as total_variation
from jaxdiv._fused import fused_linear_divergence as fused_linear_divergence
from jaxdiv._reduce import masked_mean as masked_mean
from jaxdiv._registry import get as get
from jaxdiv._registry import names as names
from jaxdiv._self_distillation import mi_alpha_bound as mi_alpha_bound
from jaxdiv._self_distillation import pskd_targets as pskd_targets
from jaxdiv._sinkhorn import sinkhorn_kd as sinkhorn_kd

# Reconstructions (no published method equations): importable here as API.md §2 lists them,
# defined in `jaxdiv.experimental` and kept out of the registry (`get` / `names`).
from jaxdiv.experimental import bd_kd as bd_kd
from jaxdiv.experimental import bd_kd_teacher as bd_kd_teacher
from jaxdiv.experimental import sequence_match_loss as sequence_match_loss

__version__ = "0.1.0.dev0"

__all__ = (
    "alpha_divergence",
    "bd_kd",
    "bd_kd_teacher",
    "cauchy_schwarz_divergence",
    "chi_squared",
    "conditional_cs_divergence",
    "cs_mutual_information",
    "dcpdd_score",
    "f_divergence",
    "fdpg_loss",
    "fdpo_loss",
    "forward_kl",
    "fused_linear_divergence",
    "generalized_jsd",
    "get",
    "hellinger",
    "hinton_kd",
    "jensen_shannon",
    "masked_mean",
    "mdcs_consistency",
    "mi_alpha_bound",
    "names",
    "perplexity_entropy_gap",
    "pskd_targets",
    "reverse_kl",
    "sequence_match_loss",
    "sinkhorn_kd",
    "skew_kl",
    "skew_reverse_kl",
    "top_k_kl",
    "total_variation",
)
