"""LASP-2 sequence parallelism: per-device memory and collective bytes from the compiled programs.

    python -m benchmarks.lasp2_analysis [--quick]    # prints the rows as JSON

The suite's ``lasp2`` section runs this in a process of its own: it needs 8 simulated CPU
devices, fixed before JAX starts.

Causal linear attention with per-head decay, B=1, H=4, dk=dv=64, forward+backward (``grad`` of
``sum(o * w)``), L = 16k, 32k, 64k, 128k total (16k with --quick) over ``sequence = 8``
simulated CPU devices, against:

- one device running ``linear_attention`` on the whole sequence;
- an all-gather-KV baseline of the same layer (LASP-2H style: gather K, V and the log decay
  over the sequence axis, form the incoming state from the earlier shards' keys and values,
  then the same local chunked pass).

Nothing is executed: memory is the compiled program's per-device ``memory_analysis`` (temp +
arguments + outputs) and collective bytes are summed from the compiled HLO text over every
all-gather / all-reduce / reduce-scatter / collective-permute / all-to-all (the full buffer
each device holds: an all-gather's result, a reduce-scatter's input). Wall-clock scaling is
NOT reported: the 8 devices are simulated on one CPU and share its cores, so their time says
nothing about real devices.
"""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
).strip()

import argparse  # noqa: E402
import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from jaxdiv.models.attention.linear import linear_attention  # noqa: E402
from jaxdiv.models.parallel import lasp2_linear_attention  # noqa: E402
from jaxdiv.models.sharding import MESH_AXES  # noqa: E402
from jaxdiv.train.hlo import collectives  # noqa: E402

H, D, W = 4, 64, 8


def mesh():
    return jax.make_mesh(
        (1, 1, W, 1),
        MESH_AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * 4,
    )


def gather_kv(q, k, v, g, *, mesh):
    """Baseline: all-gather K, V (and the decay), incoming state from the earlier shards."""
    spec = P(None, "sequence", None, None)

    def body(q, k, v, g):
        k_all, v_all, g_all = (lax.all_gather(x, "sequence", axis=1, tiled=True) for x in (k, v, g))
        start = lax.axis_index("sequence") * q.shape[1]
        positions = jnp.arange(k_all.shape[1])  # [S]
        before = positions < start
        G = jnp.cumsum(jnp.where(before[None, :, None], g_all, 0.0), axis=1)  # [B, S, H]
        weight = jnp.where(before[None, :, None], jnp.exp(G[:, -1:] - G), 0.0)  # [B, S, H]
        state = jnp.einsum("bshk,bshv->bhkv", k_all * weight[..., None], v_all)  # [B, H, K, V]
        return linear_attention(q, k, v, log_decay=g, initial_state=state)

    g_spec = P(None, "sequence", None)
    return jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, spec, g_spec), out_specs=spec)(
        q, k, v, g
    )


def collective_bytes(text: str) -> int:
    """Bytes moved: a reduce-scatter's input is W times its result."""
    return sum(c.nbytes * (W if c.kind == "reduce-scatter" else 1) for c in collectives(text))


def analyse(fn, args, shardings=None):
    loss = jax.grad(lambda q, k, v, g, w: jnp.sum(fn(q, k, v, g) * w), argnums=(0, 1, 2, 3))
    jitted = jax.jit(loss, in_shardings=shardings) if shardings else jax.jit(loss)
    compiled = jitted.lower(*args).compile()
    mem = compiled.memory_analysis()
    peak = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    return peak / 2**20, collective_bytes(compiled.as_text())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    lengths = (16384,) if quick else (16384, 32768, 65536, 131072)
    m = mesh()
    seq = jax.sharding.NamedSharding(m, P(None, "sequence"))
    rows = []
    for length in lengths:
        args = [jax.ShapeDtypeStruct((1, length, H, D), jnp.float32) for _ in range(3)]
        args = (*args, jax.ShapeDtypeStruct((1, length, H), jnp.float32), args[0])
        single, _ = analyse(lambda q, k, v, g: linear_attention(q, k, v, log_decay=g), args)
        lasp, lasp_bytes = analyse(
            lambda q, k, v, g: lasp2_linear_attention(q, k, v, log_decay=g, mesh=m),
            args,
            (seq,) * 5,
        )
        base, base_bytes = analyse(
            lambda q, k, v, g: gather_kv(q, k, v, g, mesh=m), args, (seq,) * 5
        )
        rows.append(
            dict(
                length=length,
                single_mib=single,
                lasp2_mib=lasp,
                gather_mib=base,
                lasp2_bytes=lasp_bytes,
                gather_bytes=base_bytes,
            )
        )
    print(json.dumps({"devices": jax.device_count(), "rows": rows}))


if __name__ == "__main__":
    main()
