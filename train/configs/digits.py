"""scikit-learn digits as sequence classification: the 64 pixels (0..16) are the tokens.

    python -m jaxdiv.train --config digits --workdir runs/digits

Expected runtime: about 1 minute on 2 CPU cores. Expected result: held-out accuracy above 0.9.
"""

from jaxdiv.train.configs.common import base_config


def get_config():
    c = base_config()
    c.steps = 300
    c.batch_size = 32
    c.task.name = "digits"
    c.task.kwargs = {}
    c.model.d_model = 64
    c.model.n_layers = 2
    c.model.mixer = "s4d"
    c.optimizer.lr = 3e-3
    return c
