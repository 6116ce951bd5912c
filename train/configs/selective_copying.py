"""Selective copying (Gu & Dao 2023, §4.1): memorise tokens scattered among noise, recall them.

    python -m jaxdiv.train --config selective_copying --workdir runs/selective_copying

The task is scaled down from the paper's (L = 4096, 16 tokens, vocabulary 16) to L = 128, 4
tokens, vocabulary 16, so that both models train in minutes on 2 CPU cores; chance is 1/14.
Swap ``--config.model.mixer=s4d`` for the time-invariant S4D.

S4D runs with a state of N = 2 (``model.s4_state``; Mamba keeps d_state = 16), the paper's
regime L ≫ N. The sequence length decides how much a time-invariant model can do: on short
sequences the k-th token's position is predictable enough for a fixed kernel (S4D at L = 32:
0.596 ± 0.122 over 3 seeds, 0.860 with N = 64; at L = 64: 0.45 and 0.68 for two seeds); at
L = 128 much less so. More tokens also hurt S4D (8 tokens at L = 64: 0.38, 16: 0.30) but slow
Mamba down more (8 tokens at L = 64: 0.75 after 800 steps).

Expected result (``python -m benchmarks.reproductions --only selective_copying``, seeds 0–2,
2026-12-04): Mamba eval_accuracy 0.998 ± 0.002 (0.996, 1.000, 0.998), S4D 0.401 ± 0.043
(0.445, 0.398, 0.359) — the paper's separation (99.8% vs 18.3%). Expected runtime on 2 CPU
cores (shared with other runs): Mamba 7–11 minutes (429–673 s), S4D 3–4 minutes (164–251 s).
"""

from jaxdiv.train.configs.common import base_config


def get_config():
    c = base_config()
    c.steps = 800
    c.batch_size = 32
    c.task.name = "selective_copying"
    c.task.kwargs = {"seq_len": 128, "num_tokens": 4, "vocab_size": 16}
    c.model.d_model = 64
    c.model.n_layers = 2
    c.model.mixer = "mamba"
    c.model.s4_state = 2  # S4D's state N (Mamba's is d_state = 16): keeps L ≫ N, as the paper
    c.optimizer.lr = 1e-2
    return c
