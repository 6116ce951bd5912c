"""Time and peak memory of each mixer block against sequence length L.

Forward+backward of one block of ``jaxdiv.models`` (the gradient in its parameters and input of
sum(y²)), jitted through ``nnx.split`` / ``nnx.merge`` as the LM training step does, at B=1,
d_model=64, every block at its own defaults (heads, state, chunk sizes): Mamba, S4 (DPLR), S4D,
linear attention, LightNet, and softmax attention up to 8k. L ∈ {1k, 2k, 4k, 8k} (quick) or up
to 32k (full). Peak memory is the compiled executable's; a run whose compiled peak exceeds
6 GB is skipped with a note. Target per linear-time mixer: time ∝ L^s with a least-squares
slope s ≤ 1.2 over all measured L (1 is linear; 2 is quadratic).
"""

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import harness
from jaxdiv.models.attention.blocks import AttentionBlock, LightNetBlock, LinearAttentionBlock
from jaxdiv.models.lm import MIXERS
from jaxdiv.models.ssm.mamba import MambaBlock
from jaxdiv.models.ssm.s4 import S4Block

# B batch, L length, D model width

WIDTH = 64
MAX_PEAK_BYTES = 6 * 2**30
SOFTMAX_MAX_LENGTH = 8192
SLOPE_GOAL = 1.2  # least-squares slope of log time vs log L for a linear-time mixer (1 = linear)

# The blocks as ``models.lm`` builds them (its mixer names), at their defaults otherwise.
BLOCKS = {
    "mamba": lambda rngs: MambaBlock(WIDTH, rngs=rngs),
    "s4": lambda rngs: S4Block(WIDTH, mode="dplr", rngs=rngs),
    "s4d": lambda rngs: S4Block(WIDTH, mode="diag", init="lin", rngs=rngs),
    "linear_attention": lambda rngs: LinearAttentionBlock(WIDTH, rngs=rngs),
    "lightnet": lambda rngs: LightNetBlock(WIDTH, rngs=rngs),
    "attention": lambda rngs: AttentionBlock(WIDTH, rngs=rngs),
}
QUADRATIC = ("attention",)

ABOUT = (
    "Forward+backward of one mixer block of `jaxdiv.models` (gradient of sum(y²) in the "
    f"block's parameters and its input), jitted through `nnx.split` / `nnx.merge`, at B=1, "
    f"d_model={WIDTH}, float32, each block at its defaults: `MambaBlock` (d_state 16, expand 2), "
    "`S4Block` DPLR (`s4`, d_state 64) and diagonal (`s4d`, S4D-Lin init), "
    "`LinearAttentionBlock` (1 head of 64, per-head decay, chunk 64), `LightNetBlock` "
    f"(chunk 16) and `AttentionBlock` (softmax, up to L={SOFTMAX_MAX_LENGTH // 1024}k: its "
    "[L, L] scores grow quadratically). Times are medians after a warm-up call, over as many "
    "repeats as fit 0.4 s (quick; 3 to 7) or 5 s (full; 3 to 9) per point (1 for a call over "
    "0.5 s); peak memory is "
    "the compiled executable's temporaries + arguments + outputs; compile time is that of "
    f"`jit(...).lower(...).compile()`. A run whose compiled peak exceeds "
    f"{MAX_PEAK_BYTES / 2**30:g} GB is skipped. Linear-time mixers should double their time "
    "when L doubles (ratio ≈ 2), softmax attention quadruple it (≈ 4)."
)


def block_grad(name: str, length: int):
    """(the gradient of sum(y²) in (params, x), its arguments) for one block."""
    graphdef, params, rest = nnx.split(BLOCKS[name](nnx.Rngs(0)), nnx.Param, ...)
    x = jax.random.normal(jax.random.key(1), (1, length, WIDTH))  # [B, L, D]

    def loss(params, x):
        return jnp.sum(nnx.merge(graphdef, params, rest)(x) ** 2)

    return jax.grad(loss, argnums=(0, 1)), (params, x)


def loglog_slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of log y against log x."""
    x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def l3_cache_bytes() -> int | None:
    """The L3 cache size of CPU 0 from Linux sysfs, or None where it is not readable."""
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "level").read_text().strip() == "3":
                size = (index / "size").read_text().strip()  # e.g. "32768K"
                return int(size[:-1]) * {"K": 2**10, "M": 2**20}[size[-1]]
        except (OSError, ValueError, KeyError):
            return None
    return None


def run(quick: bool) -> harness.Section:
    section = harness.Section("scaling", "Scaling with sequence length", ABOUT)
    lengths = (1024, 2048, 4096, 8192) if quick else (1024, 2048, 4096, 8192, 16384, 32768)
    point_budget_s, max_repeats = (0.4, 7) if quick else (5.0, 9)
    mixers = [name for name in MIXERS if name in BLOCKS]
    missing = sorted(set(MIXERS) - set(BLOCKS))
    if missing:
        section.note(f"not measured: mixers {missing} (no block constructor in this benchmark)")

    table = section.table(
        "Forward+backward of one block (ratio = time(L) / time(L/2))",
        ["mixer", "L", "time ms", "time(L)/time(L/2)", "peak MiB", "compile s"],
    )
    time_plot = section.plot("scaling_time", "Forward+backward time vs L", "L", "seconds")
    memory_plot = section.plot("scaling_memory", "Compiled peak memory vs L", "L", "MiB")
    times: dict[tuple[str, int], harness.Timing] = {}
    peaks: dict[tuple[str, int], int] = {}
    compile_s_by_mixer: dict[str, float] = {}
    for name in mixers:
        for length in lengths:
            if name in QUADRATIC and length > SOFTMAX_MAX_LENGTH:
                continue
            fn, args = block_grad(name, length)
            start = time.perf_counter()
            compiled = harness.compile_jax(fn, *args)
            compile_s = time.perf_counter() - start
            compile_s_by_mixer[name] = compile_s_by_mixer.get(name, 0.0) + compile_s
            peak = peaks[name, length] = harness.peak_bytes(compiled)
            memory_plot.point(name, length, harness.mib(peak))
            row = {"mixer": name, "L": length, "peak MiB": harness.mib(peak)}
            if peak > MAX_PEAK_BYTES:
                table.add(**row, **{"time ms": "skipped", "compile s": compile_s})
                section.note(
                    f"{name} at L={length}: not run, its compiled peak is "
                    f"{peak / 2**30:.1f} GB > {MAX_PEAK_BYTES / 2**30:g} GB"
                )
                continue
            call = lambda c=compiled, a=args: jax.block_until_ready(c(*a))  # noqa: E731
            first = harness.time_call(call, repeats=1, warmup=1)
            # As many repeats as fit the per-point budget, at most max_repeats and at least 3
            # (1 for calls over half a second: softmax attention at 4k and 8k).
            fewest = 1 if first.median > 0.5 else 3
            repeats = max(fewest, min(max_repeats, int(point_budget_s / first.median)))
            timing = harness.time_call(call, repeats=repeats, warmup=0)
            times[name, length] = timing
            previous = times.get((name, length // 2))
            table.add(
                **row,
                **{
                    "time ms": timing,
                    "time(L)/time(L/2)": None if previous is None else timing / previous,
                    "compile s": compile_s,
                },
            )
            time_plot.point(name, length, timing.median)

    growth = section.table(
        "Time ratio time(L) / time(L/2) (linear ≈ 2, quadratic ≈ 4)",
        ["mixer", *(f"{length // 1024}k" for length in lengths[1:])],
    )
    for name in mixers:
        cells = {
            f"{length // 1024}k": times[name, length] / times[name, length // 2]
            for length in lengths[1:]
            if (name, length) in times and (name, length // 2) in times
        }
        growth.add(mixer=name, **cells)
    section.note(
        f"compile time, all runs: {sum(compile_s_by_mixer.values()):.0f} s ("
        + ", ".join(f"{name} {s:.1f} s" for name, s in compile_s_by_mixer.items())
        + ")"
    )

    l3 = l3_cache_bytes()
    for name in mixers:
        measured = [length for length in lengths if (name, length) in times]
        if len(measured) < 2:
            continue
        slope = loglog_slope([(n, times[name, n].median) for n in measured])
        span = f"{measured[0] // 1024}k–{measured[-1] // 1024}k"
        if name in QUADRATIC:
            section.note(f"{name}: time ∝ L^{slope:.2f} over {span} (quadratic: 2)")
            continue
        met = slope <= SLOPE_GOAL
        reason = ""
        if not met:
            steps = ", ".join(
                f"{n // 1024}k {times[name, n].median / times[name, n // 2].median:.2f}×"
                for n in measured[1:]
            )
            small, large = peaks[name, measured[0]], peaks[name, measured[-1]]
            reason = f"time(L)/time(L/2): {steps}; compiled peak {harness.mib(small):.0f} → "
            reason += f"{harness.mib(large):.0f} MiB"
            if l3 is not None and small <= l3 < large:
                reason += f", crossing the {harness.mib(l3):.0f} MiB L3 cache"
        section.target(
            f"{name} linear in L",
            f"time ∝ L^s with s ≤ {SLOPE_GOAL:g} over {span}",
            f"s = {slope:.2f}",
            met,
            reason,
        )
    return section
