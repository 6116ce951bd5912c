"""Analytic FLOPs per token and the peak FLOP/s of this device kind, for MFU.

MFU = (FLOPs per token × tokens per second) / peak FLOP/s. FLOPs per token count the matmuls
of a training step: 6 per weight (forward 2, backward 4) for every weight that multiplies the
token's activations (including the LM head; the embedding lookup is free), plus the
sequence-mixing matmuls of attention (causal QKᵀ and AV: 6·L·D per layer on average, forward
and backward). A frozen teacher adds its forward pass (2 per weight); an online teacher trains
too (6 per weight).
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Dense bf16 peak FLOP/s per chip (vendor data sheets), by substring of `device_kind`.
DEVICE_PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
}


def parameter_count(lm_config) -> int:
    """Number of parameters of ``LanguageModel(lm_config)`` (from shapes; nothing allocated)."""
    from jaxdiv.models import LanguageModel

    model = nnx.eval_shape(lambda: LanguageModel(lm_config, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def matmul_weights(lm_config) -> int:
    """Number of weights multiplying activations per token (all but the embedding table)."""
    total = parameter_count(lm_config)
    # A tied head reuses the embedding table as its matmul weight; untied, the table is a lookup.
    return total if lm_config.tie_embeddings else total - lm_config.vocab_size * lm_config.d_model


def flops_per_token(lm_config, seq_len: int, *, teacher=None, online: bool = False) -> float:
    """Training FLOPs per token of the student (and the teacher's share)."""

    def model_flops(config, per_weight):
        attention_layers = sum(m == "attention" for m in config.mixers)
        return per_weight * matmul_weights(config) + per_weight * attention_layers * seq_len * (
            config.d_model
        )

    total = model_flops(lm_config, 6)
    if teacher is not None:
        total += model_flops(teacher, 6 if online else 2)
    return float(total)


@functools.cache
def peak_flops() -> float:
    """Peak FLOP/s of all the devices of this run: data sheet × chips, or on CPU a measured
    float32 matmul probe (the host's cores are shared by however many CPU devices are forced)."""
    device = jax.devices()[0]
    for name, value in DEVICE_PEAK_FLOPS.items():
        if name in device.device_kind:
            return value * jax.device_count()
    n = 1024
    a = jnp.ones((n, n), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best * jax.process_count()
