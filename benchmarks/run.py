"""The benchmark suite: jaxdiv side by side with the libraries users would pick instead.

    python -m benchmarks --quick                 # under 5 minutes on 2 CPU cores
    python -m benchmarks                         # full sizes (14 minutes on 2 CPU cores)
    python -m benchmarks --only sinkhorn mamba   # some sections
    python -m benchmarks.report benchmarks/results/<file>.json   # rebuild a report from its JSON

Run from the repository root with the ``bench`` extra installed (``pip install -e ".[bench]"``);
peers that are not installed are skipped with a note. Every section prints its tables as it
finishes; the run writes ``benchmarks/results/<date>-<device>[-quick].json`` (every number, with
the machine and package versions) and the markdown report with PNG plots beside it.
"""

import argparse
import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax

from benchmarks import harness, report

# Section modules of this package, in the order they run; each has ``run(quick) -> Section``.
SECTIONS = (
    "losses",
    "sinkhorn",
    "fused",
    "mamba",
    "attention",
    "scaling",
    "s4_kernel",
    "lasp2",
    "collectives",
    "kernels",
    "training",
    "pretrained",
    "accelerators",
)
RESULTS = Path(__file__).parent / "results"


def device_slug() -> str:
    """``cpu-2core`` or the accelerator's kind, e.g. ``nvidia-h100-80gb-hbm3``."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"cpu-{os.cpu_count()}core"
    return device.device_kind.lower().replace(" ", "-")


def machine() -> dict:
    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "ott", "numpy", "torch", "transformers", "ot"):
        if harness.have(name):
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
    # "<hash>-dirty" when the working tree differs from the commit (the numbers then come from
    # code that no commit holds yet).
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "date": datetime.date.today().isoformat(),
        "device": device_slug(),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit or None,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, under 5 minutes")
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, metavar="SECTION", help=", ".join(SECTIONS)
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    opts = parser.parse_args(argv)

    meta = machine()
    meta["mode"] = "quick" if opts.quick else "full"
    print(
        f"jaxdiv benchmarks ({meta['mode']}) on {meta['device']} "
        f"({meta['device_kind']}, {meta['device_count']} device(s)), commit {meta['commit']}\n"
    )
    sections = []
    start = time.perf_counter()
    for key in opts.only or SECTIONS:
        module = importlib.import_module(f"benchmarks.{key}")
        began = time.perf_counter()
        section = module.run(quick=opts.quick)
        section.seconds = time.perf_counter() - began
        sections.append(section)
        print(report.section_markdown(harness.to_json(section), plots_dir=None), flush=True)
    meta["seconds"] = time.perf_counter() - start

    stem = f"{meta['date']}-{meta['device']}" + ("-quick" if opts.quick else "")
    opts.out.mkdir(parents=True, exist_ok=True)
    results = {"meta": meta, "sections": harness.to_json(sections)}
    json_path = opts.out / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    md_path = report.write(results, opts.out, stem, plots=not opts.no_plots)
    print(f"\n{meta['seconds']:.0f} s in all; wrote {json_path} and {md_path}")


if __name__ == "__main__":
    sys.exit(main())
