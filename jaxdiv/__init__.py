"""jaxdiv: divergences and distillation objectives in JAX.

Every loss takes logits, student first and teacher second, keyword-only hyperparameters, and
returns one value per row (no reduction); see API.md §1 for the conventions.
"""

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
from jaxdiv._reduce import masked_mean as masked_mean
from jaxdiv._registry import get as get
from jaxdiv._registry import names as names

__version__ = "0.1.0.dev0"

__all__ = (
    "alpha_divergence",
    "chi_squared",
    "f_divergence",
    "forward_kl",
    "generalized_jsd",
    "get",
    "hellinger",
    "hinton_kd",
    "jensen_shannon",
    "masked_mean",
    "names",
    "reverse_kl",
    "skew_kl",
    "skew_reverse_kl",
    "total_variation",
)
