"""What every benchmark shares: timing, compiled peak memory, and the records a report is made of.

Timings are the median of ``repeats`` calls after ``warmup`` untimed ones, kept with their min and
max; peak memory of a JAX program is what XLA's ``memory_analysis`` of the compiled executable
says it holds at once (temporaries + arguments + outputs). A ``Section`` collects one area's
tables, targets, plots and notes as plain data, so that the JSON results file is the whole
record and the markdown report can be rebuilt from it alone.
"""

import dataclasses
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.extend import core as jex_core


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call: median, min and max over ``repeats`` timed calls."""

    median: float
    min: float
    max: float
    repeats: int

    def __truediv__(self, other: "Timing") -> float:
        """The ratio of medians, ``self`` over ``other``."""
        return self.median / other.median


def time_call(
    call: Callable[[], Any], *, repeats: int, warmup: int = 1, clock=time.perf_counter
) -> Timing:
    """Times ``call()``, which must not return before its work is done."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = clock()
        call()
        times.append(clock() - start)
    return Timing(statistics.median(times), min(times), max(times), repeats)


def compile_jax(fn: Callable, *args):
    """``jax.jit(fn)`` compiled for ``args``."""
    return jax.jit(fn).lower(*args).compile()


def peak_bytes(compiled) -> int:
    """Temporaries + arguments + outputs of a compiled executable."""
    stats = compiled.memory_analysis()
    return stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes


@dataclasses.dataclass(frozen=True)
class JaxRun:
    """A compiled JAX program's timing and the output of its first (warm-up) call."""

    timing: Timing
    out: Any
    compiled: Any

    @property
    def peak_bytes(self) -> int:
        return peak_bytes(self.compiled)

    @property
    def temp_bytes(self) -> int:
        return self.compiled.memory_analysis().temp_size_in_bytes


def time_compiled(compiled, *args, repeats: int, warmup: int = 1):
    """(Timing, output of the first warm-up call) of ``compiled(*args)``, blocked on every call."""
    if warmup < 1:
        raise ValueError(f"warmup must be >= 1 (its output is returned), got {warmup}")
    out = jax.block_until_ready(compiled(*args))
    timing = time_call(
        lambda: jax.block_until_ready(compiled(*args)), repeats=repeats, warmup=warmup - 1
    )
    return timing, out


def time_jax(fn: Callable, *args, repeats: int, warmup: int = 1):
    """``jax.jit(fn)`` compiled once for ``args`` and timed: a ``JaxRun``."""
    compiled = compile_jax(fn, *args)
    timing, out = time_compiled(compiled, *args, repeats=repeats, warmup=warmup)
    return JaxRun(timing, out, compiled)


def jaxpr_eqns(jaxpr, times: int = 1):
    """(equation, how many times it runs) over a jaxpr and every sub-jaxpr, scans unrolled."""
    for eqn in jaxpr.eqns:
        yield eqn, times
        inner = times * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
        if eqn.primitive.name == "pallas_call":  # the kernel body runs once per grid program
            inner = times * math.prod(eqn.params["grid_mapping"].grid)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jex_core.ClosedJaxpr):
                    sub = sub.jaxpr
                if isinstance(sub, jex_core.Jaxpr):
                    yield from jaxpr_eqns(sub, inner)


def have(module: str) -> bool:
    """Whether an optional peer package is importable."""
    return importlib.util.find_spec(module) is not None


# --------------------------------------------------------------------------------------------
# Records


@dataclasses.dataclass
class Table:
    """Rows of cells keyed by column name. A cell is a number, a string, ``None`` (blank) or a
    ``Timing`` (shown as median [min–max] in ms)."""

    title: str
    columns: Sequence[str]
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def add(self, **cells) -> None:
        unknown = set(cells) - set(self.columns)
        if unknown:
            raise KeyError(f"{self.title!r}: no columns {sorted(unknown)}; has {self.columns}")
        self.rows.append(cells)


@dataclasses.dataclass
class Target:
    """A stated goal, its measured value and whether it is met; ``reason`` says why not."""

    name: str
    goal: str
    measured: str
    met: bool
    reason: str = ""


@dataclasses.dataclass
class Plot:
    """Lines of (x, y) points; ``skipped`` points are absent (shown as a note)."""

    name: str  # file stem of the PNG
    title: str
    xlabel: str
    ylabel: str
    series: dict[str, list[tuple[float, float]]] = dataclasses.field(default_factory=dict)
    logx: bool = True
    logy: bool = True

    def point(self, label: str, x: float, y: float) -> None:
        self.series.setdefault(label, []).append((x, y))


@dataclasses.dataclass
class Section:
    """One area of the suite."""

    key: str
    title: str
    about: str  # what is measured and how: a paragraph of markdown
    tables: list[Table] = dataclasses.field(default_factory=list)
    targets: list[Target] = dataclasses.field(default_factory=list)
    plots: list[Plot] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0  # how long the section took to run

    def table(self, title: str, columns: Sequence[str]) -> Table:
        self.tables.append(Table(title, list(columns)))
        return self.tables[-1]

    def plot(self, name: str, title: str, xlabel: str, ylabel: str, **kwargs) -> Plot:
        self.plots.append(Plot(name, title, xlabel, ylabel, **kwargs))
        return self.plots[-1]

    def target(self, name: str, goal: str, measured: str, met: bool, reason: str = "") -> None:
        self.targets.append(Target(name, goal, measured, bool(met), reason))

    def note(self, text: str) -> None:
        self.notes.append(text)


def to_json(value):
    """Sections (dataclasses, Timings) as JSON-ready dicts and lists."""
    if isinstance(value, Timing):
        return {"timing": dataclasses.asdict(value)}  # tagged: format_cell reads it back
    if dataclasses.is_dataclass(value):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def format_cell(value) -> str:
    """A table cell as text: timings in ms with their spread, floats to 3 significant digits."""
    if value is None:
        return ""
    if isinstance(value, dict) and "timing" in value:
        value = Timing(**value["timing"])
    if isinstance(value, Timing):
        return f"{_ms(value.median)} [{_ms(value.min)}–{_ms(value.max)}]"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if value == 0 or abs(value) >= 1e-3 else f"{value:.2e}"
    return str(value)


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def markdown_table(table: Table) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.rows:
        lines.append("| " + " | ".join(format_cell(row.get(c)) for c in table.columns) + " |")
    return "\n".join(lines)


def mib(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / 2**20


def run_on_simulated_devices(module: str, quick: bool, devices: int = 8) -> dict:
    """The JSON printed last by ``python -m <module> [--quick]``, run in its own process with
    ``devices`` simulated CPU devices (forced before JAX starts there)."""
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    out = subprocess.run(
        [sys.executable, "-m", module] + (["--quick"] if quick else []),
        env=dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.splitlines()[-1])
