"""Metrics of a trained run measured from its workdir after training (``Claim.evaluate``).

``extrapolation``: held-out accuracy at sequence lengths the run was not trained on. The run's
task (``config.task``) is rebuilt at each length with its other options unchanged, and the
restored model is scored on the task's held-out rows: accuracy over the masked (answer)
positions, the same quantity as the run's ``eval_accuracy`` at its own length (the
induction-heads claim: trained at L = 256, scored at 1×, 4× and 16×).
``parameter_count``: the run's model size, from its saved config (the equal-parameter claims).
"""

from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiv.train import flops
from jaxdiv.train.data import get_task
from jaxdiv.train.experiment import model_config, read_config, task_of
from jaxdiv.train.trainer import load_model


def extrapolation(workdir: Path, examples: dict[int, int]) -> dict[str, float]:
    """``{"accuracy_<k>x": held-out accuracy}`` of the run in ``workdir`` on its task at ``k``
    times its training length, on ``examples[k]`` held-out rows for each ``k`` (in batches of
    at most 16k tokens)."""
    model, config = load_model(workdir)
    train_len = int(config.task.kwargs["seq_len"])
    graphdef, params = nnx.split(model)

    @jax.jit
    def correct(params, tokens, targets, mask):  # [B, L] each -> (hits, answers)
        logits = nnx.merge(graphdef, params)(tokens)
        hits = (jnp.argmax(logits, -1) == targets) & mask
        return jnp.sum(hits), jnp.sum(mask)

    out = {}
    for k, rows in examples.items():
        length = k * train_len
        batch_size = max(1, 16384 // length)
        kwargs = {**dict(config.task.kwargs), "seq_len": length}
        task = get_task(config.task.name, **kwargs, num_eval_examples=rows)
        if task.kind != "lm":
            raise ValueError(f"extrapolation needs an LM task, got {task.kind!r}.")
        hits = answers = 0
        for index in range(task.num_eval_batches(batch_size)):
            batch = task.eval_batch(index, batch_size)
            h, a = correct(params, batch["tokens"], batch["targets"], batch["mask"])
            hits, answers = hits + int(h), answers + int(a)
        out[f"accuracy_{k}x"] = hits / answers
    return out


def parameter_count(workdir: Path) -> int:
    """Number of parameters of the run in ``workdir`` (from its saved config)."""
    config = read_config(workdir)
    return flops.parameter_count(model_config(config, task_of(config).vocab_size))
