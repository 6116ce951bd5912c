"""Bytes of collectives in the compiled train step, per mesh shape, against derived bounds.

The train step of a small attention LM is compiled (not run) for the 8 simulated CPU devices
in each mesh shape; the collectives in its HLO (``jaxdiv.train.hlo``, one entry per result
array) are summed in bytes of their results (an all-gather's result is the whole gathered
array, a reduce-scatter's one shard) and compared with the least any implementation of that
parallelism must produce, derived from the sizes below: moved bytes must lie between that
minimum (else the parser lost collectives) and twice it (else a layout regression: an
activation gathered whole, parameters moved twice), without an accelerator.

Sizes: P parameter bytes (float32), A = B·L·D·4 bytes of one residual-stream activation
[B, L, D], n attention layers.

- data (8): one all-reduce of the gradients: P.
- fsdp (8): parameters all-gathered for the forward pass (P) and gradients reduced (P): 2P.
- sequence (8): gradients all-reduced (P); each attention layer all-gathers its keys and
  values forward (2A: [B, L, H, d] each, LASP-2H) and reduce-scatters their gradients
  backward (results 2A/8): P + n(2A + A/4).
- tensor (8, Megatron): per layer, the attention output and the MLP output are summed over
  the tensor shards forward (2A) and the block inputs' gradients backward (2A); the embedding
  lookup from the vocabulary-sharded table (A) and the gradient of the tied head's input (A):
  (4n + 2)A. Replicated parameters (norm scales) add a negligible all-reduce.
"""

import jax
import pytest

from jaxdiv.train import get_config
from jaxdiv.train.experiment import build
from jaxdiv.train.hlo import collectives
from jaxdiv.train.sharding import make_mesh

B, L, D, LAYERS = 8, 128, 128, 2
A = B * L * D * 4


def _compiled(mesh_config):
    config = get_config("pretrain_lm")
    config.model.d_model, config.model.n_layers, config.model.num_heads = D, LAYERS, 8
    config.model.mixer = "attention"
    config.task.kwargs = {"seq_len": L}
    config.batch_size, config.mesh = B, mesh_config
    mesh = make_mesh(mesh_config)
    with jax.set_mesh(mesh):
        exp = build(config, mesh=mesh)
    params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(exp.abstract_state()["params"]))
    return sum(c.nbytes for c in collectives(exp.train_step.as_text())), params


@pytest.mark.parametrize(
    ("mesh", "minimum"),
    [
        ({"data": 8}, lambda P: P),
        ({"fsdp": 8}, lambda P: 2 * P),
        ({"sequence": 8}, lambda P: P + LAYERS * (2 * A + A / 4)),
        ({"tensor": 8}, lambda P: (4 * LAYERS + 2) * A),
        ({"data": 2, "fsdp": 4}, lambda P: 2 * P),
    ],
    ids=["data8", "fsdp8", "sequence8", "tensor8", "data2_fsdp4"],
)
def test_collective_bytes_within_twice_the_derived_minimum(mesh, minimum):
    moved, params = _compiled(mesh)
    least = minimum(params)
    report = f"{moved / 2**20:.2f} MiB moved, derived minimum {least / 2**20:.2f} MiB"
    assert least <= moved <= 2 * least, report
