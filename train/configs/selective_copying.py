"""Selective copying (Gu & Dao 2023, §4.1): memorise tokens scattered among noise, recall them.

    python -m jaxdiv.train --config selective_copying --workdir runs/selective_copying

The task is scaled down from the paper's (L = 4096, 16 tokens, vocabulary 16) to L = 32, 4
tokens, vocabulary 16, so that both models train in minutes on 2 CPU cores; chance is 1/14.
Swap ``--config.model.mixer=s4d`` for the time-invariant S4D.

Expected runtime (measured on 2 shared, loaded CPU cores, 2026-12-04): Mamba 107–155 s,
S4D 48–81 s. Expected result (``python -m benchmarks.reproductions``, seeds 0–2): Mamba
eval_accuracy 0.995 ± 0.005 (1.000, 0.990, 0.996); S4D 0.860 ± 0.071 (0.779, 0.887, 0.914).
Mamba solves it as in the paper (99.8%), but at this length S4D does not fail as the paper's
S4 does (18.3% at L = 4096): it reaches 0.59 at 400 steps and keeps improving with steps.
"""

from jaxdiv.train.configs.common import base_config


def get_config():
    c = base_config()
    c.steps = 800
    c.batch_size = 32
    c.task.name = "selective_copying"
    c.task.kwargs = {"seq_len": 32, "num_tokens": 4, "vocab_size": 16}
    c.model.d_model = 64
    c.model.n_layers = 2
    c.model.mixer = "mamba"
    c.optimizer.lr = 1e-2
    return c
