"""Bytes of collectives in the compiled train step, per mesh shape (run in its own process).

Forces 8 CPU devices before JAX starts, compiles (never runs) the train step of an attention
LM for each mesh shape, and prints one JSON line: per shape, the bytes of every collective's
result in the HLO (``jaxdiv.train.hlo``), by kind, next to the derived minimum of
:func:`derived_minimum`. ``tests/train/test_collectives.py`` checks the same quantities on a
smaller model.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

from jaxdiv.train import get_config  # noqa: E402
from jaxdiv.train.experiment import build  # noqa: E402
from jaxdiv.train.hlo import collectives  # noqa: E402
from jaxdiv.train.sharding import make_mesh  # noqa: E402

MESHES = {
    "data 8": {"data": 8},
    "fsdp 8": {"fsdp": 8},
    "data 2 × fsdp 4": {"data": 2, "fsdp": 4},
    "sequence 8": {"sequence": 8},
    "tensor 8": {"tensor": 8},
}


def derived_minimum(mesh: dict, params: int, activation: int, layers: int) -> float:
    """The least result bytes of the collectives of one train step of an attention LM.

    ``params``: P, parameter bytes; ``activation``: A = B·L·D·bytes of one [B, L, D]
    activation; ``layers``: n attention layers. Counted as bytes of collective *results* (an
    all-gather's result is the gathered array, a reduce-scatter's one shard):

    - data: the gradients all-reduced, P;
    - fsdp (any data × fsdp): parameters all-gathered for the forward pass (P) and gradients
      reduced (P), 2P;
    - sequence (8 shards): gradients all-reduced (P); per layer the keys and values
      all-gathered forward (2A, LASP-2H) and their gradients reduce-scattered backward
      (2A/8): P + n(2A + A/4);
    - tensor (Megatron): per layer the attention and MLP outputs summed forward (2A) and the
      block inputs' gradients backward (2A), plus the embedding lookup from the vocabulary-
      sharded table (A) and the tied head's input gradient (A): (4n + 2)A.
    """
    if mesh.get("tensor", 1) > 1:
        return (4 * layers + 2) * activation
    if mesh.get("sequence", 1) > 1:
        return params + layers * (2 * activation + activation / 4)
    if mesh.get("fsdp", 1) > 1:
        return 2 * params
    return params


def compile_step(mesh: dict, *, d_model: int, seq_len: int, layers: int, batch: int = 8):
    """``(collectives, parameter bytes)`` of the compiled train step of an attention LM."""
    config = get_config("pretrain_lm")
    config.model.d_model, config.model.n_layers = d_model, layers
    config.model.num_heads, config.model.mixer = max(8, d_model // 64), "attention"
    config.task.kwargs = {"seq_len": seq_len}
    config.batch_size, config.mesh = batch, mesh
    with jax.set_mesh(device_mesh := make_mesh(mesh)):
        exp = build(config, mesh=device_mesh)
    params = exp.abstract_state()["params"]
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    return collectives(exp.train_step.as_text()), nbytes


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    d_model, seq_len, layers, batch = (256, 512, 2, 8) if quick else (1024, 2048, 2, 8)
    rows = []
    for name, mesh in MESHES.items():
        start = time.perf_counter()
        found, params = compile_step(
            mesh, d_model=d_model, seq_len=seq_len, layers=layers, batch=batch
        )
        by_kind = collections.Counter()
        for c in found:
            by_kind[c.kind] += c.nbytes
        activation = batch * seq_len * d_model * 4
        rows.append(
            {
                "mesh": name,
                "bytes": sum(by_kind.values()),
                "by_kind": dict(by_kind),
                "minimum": derived_minimum(mesh, params, activation, layers),
                "params_bytes": params,
                "compile_s": time.perf_counter() - start,
            }
        )
    model = {"d_model": d_model, "seq_len": seq_len, "layers": layers, "batch": batch}
    print(json.dumps({"devices": jax.device_count(), "model": model, "rows": rows}))


if __name__ == "__main__":
    main()
