"""Selective copying (Gu & Dao 2023, §4.1): memorise tokens scattered among noise, recall them.

    python -m jaxdiv.train --config selective_copying --workdir runs/selective_copying

Expected runtime: about 2 minutes on 2 CPU cores. Expected result: Mamba reaches well above
chance answer accuracy (eval_accuracy); swap ``--config.model.mixer=s4d`` to see the
time-invariant S4D fall behind, as in the Mamba paper.
"""

from jaxdiv.train.configs.common import base_config


def get_config():
    c = base_config()
    c.steps = 400
    c.batch_size = 32
    c.task.name = "selective_copying"
    c.task.kwargs = {}
    c.model.d_model = 64
    c.model.n_layers = 2
    c.model.mixer = "mamba"
    c.optimizer.lr = 3e-3
    return c
