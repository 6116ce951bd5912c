"""Paper claims re-measured: each claim's models trained with jaxdiv, over several seeds.

    python -m benchmarks.reproductions            # every claim, 3 seeds (see CLAIMS for times)
    python -m benchmarks.reproductions --quick    # 1 seed at a few steps: the code path only
    python -m benchmarks.reproductions --seeds 5 --out /tmp/repro

A claim names a paper, the number it reports for each model (an ``Arm``), the training preset
and overrides that are our setup (``jaxdiv.train.run``), the metric read from its final
metrics, and how a verdict is reached from the measured per-seed values. Each run writes
``benchmarks/results/<date>-<device>-reproductions[-quick].{json,md}``: one table row per
claim (paper, the paper's numbers, our setup, our mean ± std over seeds, the verdict with
its measured reason) and every single run. To add a claim, append a ``Claim`` to ``CLAIMS``.
Quick mode shrinks every run to ``Claim.quick`` (a few steps): its numbers say nothing about
the claim, only that the path works.
"""

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import harness, report
from benchmarks import run as suite

RESULTS = Path(__file__).parent / "results"


@dataclasses.dataclass(frozen=True)
class Arm:
    """One model of a claim: its name, the paper's number for it, and our overrides."""

    name: str
    paper: float
    overrides: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Claim:
    """A paper's claim as training runs: ``preset`` + ``overrides`` + each arm's overrides.

    ``verdict`` maps ``{arm name: [metric per seed]}`` to ``(verdict, reason)``, the verdict
    one of ``"reproduced"``, ``"partially"``, ``"not reproduced"``; ``quick`` overrides
    shrink every run to a smoke test of the code path.
    """

    key: str
    paper: str  # authors, year, where: "Gu & Dao 2023, Table 1"
    statement: str  # the claim, with the paper's numbers
    setup: str  # ours, in words (what was scaled down and why)
    preset: str
    metric: str  # a key of jaxdiv.train.run's final metrics
    arms: tuple[Arm, ...]
    verdict: Callable[[dict[str, list[float]]], tuple[str, str]]
    overrides: tuple[str, ...] = ()
    quick: tuple[str, ...] = ("steps=4", "batch_size=8", "eval_batches=1")


def train(claim: Claim, arm: Arm, seed: int, *, quick: bool) -> dict:
    """One training run of ``arm`` at ``seed``: its metric, final loss and wall seconds."""
    from jaxdiv.train import get_config, run
    from jaxdiv.train.config import apply_overrides

    config = get_config(claim.preset)
    overrides = [*claim.overrides, *arm.overrides, f"seed={seed}"]
    overrides += [*claim.quick] if quick else []
    apply_overrides(config, overrides)
    config.progress, config.eval_every = False, 0
    config.checkpoint_every = config.steps  # only the final state is written (to a temp dir)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        metrics = run(config, workdir)
        seconds = time.perf_counter() - start
    return {
        "claim": claim.key,
        "arm": arm.name,
        "seed": seed,
        claim.metric: float(metrics[claim.metric]),
        "loss": float(metrics["loss"]),
        "seconds": seconds,
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def measure(claims: Sequence[Claim], *, seeds: int, quick: bool) -> harness.Section:
    """Every claim's arms over ``seeds`` seeds, as a section: the claims table, a target per
    claim (met when reproduced) and every run."""
    section = harness.Section(
        "reproductions",
        "Paper claims reproduced",
        "Each claim's models trained by `jaxdiv.train.run` from the named preset with the "
        "listed overrides, one run per seed; the metric is the final held-out value. "
        + (
            "**Quick mode: a few steps per run, a smoke test of the code path; these numbers "
            "say nothing about the claims.**"
            if quick
            else ""
        ),
    )
    summary = section.table(
        "Claims", ["paper", "claim", "our setup", "ours (mean ± std over seeds)", "verdict"]
    )
    runs = section.table("Runs", ["claim", "arm", "seed", "metric", "value", "loss", "seconds"])
    for claim in claims:
        values = {arm.name: [] for arm in claim.arms}
        seconds = {arm.name: [] for arm in claim.arms}
        for arm in claim.arms:
            for seed in range(seeds):
                out = train(claim, arm, seed, quick=quick)
                print(json.dumps(out), flush=True)
                values[arm.name].append(out[claim.metric])
                seconds[arm.name].append(out["seconds"])
                runs.add(
                    claim=claim.key,
                    arm=arm.name,
                    seed=seed,
                    metric=claim.metric,
                    value=out[claim.metric],
                    loss=out["loss"],
                    seconds=out["seconds"],
                )
        verdict, reason = claim.verdict(values)
        ours = "; ".join(
            "{} {:.3f} ± {:.3f} (paper {:.3f}; {:.0f} s/run)".format(
                arm.name,
                *mean_std(values[arm.name]),
                arm.paper,
                statistics.fmean(seconds[arm.name]),
            )
            for arm in claim.arms
        )
        arms = [f"{a.name}: " + " ".join(f"`{o}`" for o in a.overrides) for a in claim.arms]
        setup = (
            f"{claim.setup} ("
            + " ".join([f"`--config {claim.preset}`", *(f"`{o}`" for o in claim.overrides)])
            + "; "
            + "; ".join(arms)
            + ("; quick sizes" if quick else "")
            + f"; {seeds} seed(s))"
        )
        summary.add(
            **{
                "paper": claim.paper,
                "claim": claim.statement,
                "our setup": setup,
                "ours (mean ± std over seeds)": ours,
                "verdict": f"**{verdict}**: {reason}",
            }
        )
        section.target(claim.key, claim.statement, ours, verdict == "reproduced", reason)
    return section


def separation(
    solves: str, fails: str, *, solved: float, failed: float, gap: float = 0.2
) -> Callable[[dict[str, list[float]]], tuple[str, str]]:
    """The verdict of "``solves`` solves the task, ``fails`` does not", on seed means:
    reproduced when ``solves`` ≥ ``solved`` and ``fails`` ≤ ``failed``; partially when
    only the ordering holds (``solves`` ahead by ≥ ``gap``); else not reproduced."""

    def verdict(values: dict[str, list[float]]) -> tuple[str, str]:
        good, bad = statistics.fmean(values[solves]), statistics.fmean(values[fails])
        measured = f"{solves} {good:.3f} (goal ≥ {solved}), {fails} {bad:.3f} (goal ≤ {failed})"
        if good >= solved and bad <= failed:
            return "reproduced", measured
        missed = [
            *([f"{solves} below {solved}"] if good < solved else []),
            *([f"{fails} above {failed}"] if bad > failed else []),
        ]
        if good - bad >= gap:
            return "partially", f"{measured}: {' and '.join(missed)}, ordering holds"
        return "not reproduced", f"{measured}: gap {good - bad:.3f} < {gap}"

    return verdict


CLAIMS: tuple[Claim, ...] = (
    Claim(
        key="selective_copying",
        paper="Gu & Dao 2023, Mamba ([arXiv:2312.00752](https://arxiv.org/abs/2312.00752)), "
        "Table 1",
        statement="Selective copying is solved by Mamba (99.8% accuracy) and not by the "
        "time-invariant S4 (18.3%); 2 layers, L = 4096, 16 tokens, vocabulary 16",
        setup="2 layers, d_model 64; L = 32, 4 tokens, vocabulary 16 (scaled down to fit 2 CPU "
        "cores); 800 steps of 32 rows, AdamW lr 1e-2",
        preset="selective_copying",
        metric="eval_accuracy",
        arms=(Arm("Mamba", 0.998, ("model.mixer=mamba",)), Arm("S4D", 0.183, ("model.mixer=s4d",))),
        verdict=separation("Mamba", "S4D", solved=0.95, failed=0.5),
    ),
)


def markdown(results: dict) -> str:
    """The report of a results JSON: the machine, then the section (claims, runs)."""
    meta = results["meta"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    head = [
        f"# jaxdiv reproductions: {meta['date']}, {meta['device']} ({meta['mode']} mode)",
        "",
        f"Machine: {meta['device_kind']} × {meta['device_count']} ({meta['backend']}), "
        f"{meta['cpu_count']} CPU cores ({meta['processor']}), Python {meta['python']}; "
        f"{versions}. Commit {meta['commit']}; {meta['seeds']} seed(s) per arm; the run took "
        f"{meta['seconds']:.0f} s. Rebuild the JSON's report with "
        "`python -m benchmarks.reproductions --report <file>.json`.",
        "",
    ]
    body = [report.section_markdown(s, plots_dir=None) for s in results["sections"]]
    return "\n".join(head) + "\n" + "\n".join(body)


def main(argv=None, claims: Sequence[Claim] | None = None) -> tuple[Path, Path]:
    """Runs the claims (default ``CLAIMS``), writes the JSON and markdown; returns their paths."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reproductions", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="1 seed at a few steps (smoke)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 3)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--report", type=Path, help="only rebuild the markdown of this JSON")
    opts = parser.parse_args(argv)
    if opts.report is not None:
        path = opts.report.with_suffix(".md")
        path.write_text(markdown(json.loads(opts.report.read_text())))
        print(path)
        return opts.report, path
    seeds = opts.seeds or (1 if opts.quick else 3)
    if seeds < 1:
        parser.error(f"--seeds must be >= 1, got {seeds}")

    meta = suite.machine()
    meta["mode"], meta["seeds"] = ("quick" if opts.quick else "full"), seeds
    start = time.perf_counter()
    section = measure(CLAIMS if claims is None else claims, seeds=seeds, quick=opts.quick)
    meta["seconds"] = section.seconds = time.perf_counter() - start

    stem = f"{meta['date']}-{meta['device']}-reproductions" + ("-quick" if opts.quick else "")
    opts.out.mkdir(parents=True, exist_ok=True)
    results = {"meta": meta, "sections": harness.to_json([section])}
    json_path = opts.out / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    md_path = opts.out / f"{stem}.md"
    md_path.write_text(markdown(results))
    print(report.section_markdown(results["sections"][0], plots_dir=None))
    print(f"{meta['seconds']:.0f} s in all; wrote {json_path} and {md_path}")
    return json_path, md_path


if __name__ == "__main__":
    main()
