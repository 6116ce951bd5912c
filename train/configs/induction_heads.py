"""Induction heads (Olsson et al. 2022; Mamba paper §4.1.2): after ``special, key … special``
predict ``key``; trained at one length, tested at longer ones.

    python -m jaxdiv.train --config induction_heads --workdir runs/induction_heads

Scaled from the Mamba paper's setup (2 layers, d_model 64, vocabulary 16, trained at L = 256)
to L = 64 so that both models train in minutes on 2 CPU cores; chance is 1/15. Swap
``--config.model.mixer=attention --config.optimizer.lr=1e-3`` for softmax attention with RoPE:
it stays at chance for 1500 steps at lr 1e-2 (and learns slowly at 3e-3), while Mamba at lr
1e-2 solves the task by step 300. Length extrapolation (accuracy at 4× and 16× the training
length) is measured by ``python -m benchmarks.reproductions --only induction_heads``.

Expected runtime and result (2 shared CPU cores, 2026-12-04, one seed): Mamba held-out
accuracy 1.0 from step 300; attention (lr 1e-3) 0.98 after 1000 steps, about 4.5 minutes.
"""

from jaxdiv.train.configs.common import base_config


def get_config():
    c = base_config()
    c.steps = 1000
    c.batch_size = 32
    c.task.name = "induction_heads"
    c.task.kwargs = {"seq_len": 64, "vocab_size": 16}
    c.model.d_model = 64
    c.model.n_layers = 2
    c.model.mixer = "mamba"
    c.model.num_heads = 2  # the attention layers' heads (head width 32, RoPE)
    c.optimizer.lr = 1e-2
    return c
