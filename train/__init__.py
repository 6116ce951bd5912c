"""jaxdiv.train: sharded training and distillation (API.md §4).

``get_config(name)`` returns a preset or a config file's config, ``run(config, workdir)`` trains
or resumes a run and returns its final metrics, ``load_model(workdir)`` restores a trained model.
"""

from jaxdiv.models.parallel import lasp2_linear_attention as lasp2_linear_attention
from jaxdiv.models.parallel import lasp2h_attention as lasp2h_attention
from jaxdiv.train.config import get_config as get_config
from jaxdiv.train.trainer import load_model as load_model
from jaxdiv.train.trainer import run as run

__all__ = ("get_config", "lasp2_linear_attention", "lasp2h_attention", "load_model", "run")
