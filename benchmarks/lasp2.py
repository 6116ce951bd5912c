"""LASP-2 sequence parallelism over 8 simulated devices: memory per device and collective bytes.

Compile-only (nothing is timed: simulated devices share one CPU's cores, so their wall clock says
nothing about real devices). The analysis runs in its own process (``lasp2_analysis.py``), which
forces 8 CPU devices before JAX starts.
"""

from benchmarks import harness

ABOUT = (
    "Causal linear attention with per-head decay, B=1, H=4, dk=dv=64, forward+backward "
    "(`grad` of sum(o·w)), the sequence split over `sequence = 8` simulated CPU devices: "
    "`lasp2_linear_attention` against one device running `linear_attention` on the whole "
    "sequence, and against an all-gather-KV baseline of the same layer (LASP-2H style: gather "
    "K, V and the decay, form the incoming state from the earlier shards). Nothing is executed: "
    "memory is each compiled program's per-device memory analysis, collective bytes are summed "
    "over the compiled HLO's all-gather / all-reduce / reduce-scatter / collective-permute / "
    "all-to-all buffers. Wall-clock scaling is not reported: simulated devices share one CPU."
)


def run(quick: bool) -> harness.Section:
    section = harness.Section("lasp2", "LASP-2 sequence parallelism (8 simulated devices)", ABOUT)
    result = harness.run_on_simulated_devices("benchmarks.lasp2_analysis", quick)
    table = section.table(
        "Per-device peak memory and collective traffic (forward+backward)",
        [
            "L",
            "single device MiB",
            "LASP-2 MiB/device",
            "gather-KV MiB/device",
            "LASP-2 / single",
            "LASP-2 collectives KiB",
            "gather-KV collectives KiB",
            "collectives LASP-2 / gather-KV",
        ],
    )
    memory = section.plot(
        "lasp2_memory", "Per-device peak memory vs L (8 devices)", "L", "MiB per device"
    )
    for row in result["rows"]:
        table.add(
            **{
                "L": row["length"],
                "single device MiB": row["single_mib"],
                "LASP-2 MiB/device": row["lasp2_mib"],
                "gather-KV MiB/device": row["gather_mib"],
                "LASP-2 / single": row["lasp2_mib"] / row["single_mib"],
                "LASP-2 collectives KiB": row["lasp2_bytes"] / 2**10,
                "gather-KV collectives KiB": row["gather_bytes"] / 2**10,
                "collectives LASP-2 / gather-KV": row["lasp2_bytes"] / row["gather_bytes"],
            }
        )
        for label, key in (
            ("one device", "single_mib"),
            ("LASP-2", "lasp2_mib"),
            ("all-gather KV", "gather_mib"),
        ):
            memory.point(label, row["length"], row[key])
    section.note(f"{result['devices']} simulated CPU devices in the analysis process")
    return section
