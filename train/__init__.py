"""jaxdiv.train: sharded training and distillation (API.md §4).

``get_config(name)`` returns a preset or a config file's config, ``run(config, workdir)`` trains
or resumes a run and returns its final metrics, ``load_model(workdir)`` restores a trained model.
"""

from jaxdiv.train.config import get_config as get_config
from jaxdiv.train.trainer import load_model as load_model
from jaxdiv.train.trainer import run as run

__all__ = ("get_config", "load_model", "run")
