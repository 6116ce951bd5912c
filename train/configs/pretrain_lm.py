"""Pre-train a byte-level teacher LM on the Python documentation text (pydoc_data.topics).

    python -m jaxdiv.train --config pretrain_lm --workdir runs/pretrain_lm

Expected runtime: about 1 minute on 2 CPU cores (~19k tokens/s). Expected result: held-out
bits per byte about 1.9 (a unigram byte model gets about 4.5).
"""

from jaxdiv.train.configs.common import base_config


def get_config():
    c = base_config()
    c.steps = 300
    c.model.d_model = 128
    c.model.n_layers = 2
    c.model.mixer = ("mamba", "attention")
    c.model.num_heads = 2
    return c
