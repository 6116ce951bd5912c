"""Collective bytes of the compiled train step per mesh shape, against the derived minimum.

Compile-only, in its own process with 8 simulated CPU devices (``collectives_analysis.py``):
nothing runs, so it needs no accelerator, and a sharding regression shows as bytes.
"""

from benchmarks import harness

ABOUT = (
    "The train step (forward, backward, AdamW update) of an attention LM (2 layers, float32, "
    "byte vocabulary; d_model 1024, L = 2048, B = 8 in the full run, 256 / 512 / 8 quick) is "
    "compiled for 8 simulated CPU devices in each mesh shape, and the collectives of its HLO "
    "are summed in bytes of their results (an all-gather's result is the gathered array, a "
    "reduce-scatter's one shard). The derived minimum is what any implementation of that "
    "parallelism must produce (`collectives_analysis.derived_minimum`: gradients all-reduced "
    "for data parallelism, parameters gathered and gradients reduced for FSDP, keys/values "
    "gathered per attention layer for sequence parallelism, Megatron's four activation "
    "all-reduces per layer for tensor parallelism). Target: every shape within 2× of it."
)


def run(quick: bool) -> harness.Section:
    section = harness.Section("collectives", "Collective bytes per mesh shape", ABOUT)
    result = harness.run_on_simulated_devices("benchmarks.collectives_analysis", quick)
    table = section.table(
        "Collective result bytes of one train step (8 devices)",
        ["mesh", "MiB moved", "derived minimum MiB", "ratio", "by kind (MiB)", "compile s"],
    )
    worst = 0.0
    for row in result["rows"]:
        ratio = row["bytes"] / row["minimum"]
        worst = max(worst, ratio)
        kinds = ", ".join(f"{k} {v / 2**20:.1f}" for k, v in sorted(row["by_kind"].items()))
        table.add(
            **{
                "mesh": row["mesh"],
                "MiB moved": row["bytes"] / 2**20,
                "derived minimum MiB": row["minimum"] / 2**20,
                "ratio": ratio,
                "by kind (MiB)": kinds,
                "compile s": row["compile_s"],
            }
        )
    section.target(
        "collective bytes per mesh shape",
        "every shape within 2× of the derived minimum",
        f"worst {worst:.2f}×",
        worst <= 2.0,
    )
    model = result["model"]
    section.note(
        f"{result['devices']} simulated CPU devices; d_model {model['d_model']}, "
        f"L {model['seq_len']}, {model['layers']} layers, B {model['batch']}"
    )
    return section
