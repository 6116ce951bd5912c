"""Paper claims re-measured: each claim's models trained with jaxdiv, over several seeds.

    python -m benchmarks.reproductions            # every claim, 3 seeds (see claims.py for times)
    python -m benchmarks.reproductions --quick    # 1 seed at a few steps: the code path only
    python -m benchmarks.reproductions --only lm_divergence,sinkd_modes \\
        --merge benchmarks/results/2026-12-04-cpu-2core-reproductions.json
    python -m benchmarks.reproductions --seeds 5 --out /tmp/repro

A claim (``benchmarks/claims.py``) names a paper, the number it reports for each model (an
``Arm``), the training preset and overrides that are our setup (``jaxdiv.train.run``), the
metric read from its final metrics, and how a verdict is reached from the measured per-seed
values; a claim with a ``Teacher`` trains it once per seed first, and a ``FunctionClaim`` is
measured by a function of the seed instead of training runs. Each run writes
``benchmarks/results/<date>-<device>-reproductions[-quick].{json,md}``: one table row per
claim (paper, the paper's numbers, our setup, our mean ± std over seeds, the verdict with its
measured reason), every single run, and figures in ``<stem>/``. ``--only`` runs some claims;
``--merge`` keeps the rows of the other claims from an earlier results JSON, so a long claim
is not rerun to add another. Quick mode shrinks every run to the claim's ``quick`` sizes: its
numbers say nothing about the claim, only that the path works.
"""

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from benchmarks import harness, report
from benchmarks import run as suite
from benchmarks.claims import CLAIMS, Arm, Claim, FunctionClaim, Outcomes, mean_std

RESULTS = Path(__file__).parent / "results"
SUMMARY = ["paper", "claim", "our setup", "ours (mean ± std over seeds)", "verdict"]
RUNS = ["claim", "arm", "seed", "metric", "value", "loss", "seconds", "also"]


def train(preset: str, overrides: Sequence[str], workdir: Path, *, teacher: Path | None):
    """One training run of ``preset`` with ``overrides`` into ``workdir`` (distilled from
    ``teacher`` when given): ``(final metrics, wall seconds)``."""
    from jaxdiv.train import get_config, run
    from jaxdiv.train.config import apply_overrides
    from jaxdiv.train.configs.common import distill_config

    config = get_config(preset)
    if teacher is not None and "distill" not in config:
        distill_config(config)  # e.g. digits: a preset without the distillation keys
    apply_overrides(config, list(overrides))
    if teacher is not None:
        config.distill.teacher = str(teacher)
    config.progress, config.eval_every = False, 0
    config.checkpoint_every = config.steps  # only the final state is written
    start = time.perf_counter()
    metrics = run(config, workdir)
    return metrics, time.perf_counter() - start


class Runner:
    """Runs claims' training runs in ``root``: each teacher once per seed, and each distinct
    run (preset, overrides, teacher, seed) once, however many claims share it."""

    def __init__(self, root: Path, *, quick: bool):
        self.root, self.quick = root, quick
        self.teachers: dict[tuple, tuple[Path, dict]] = {}
        self.runs: dict[tuple, dict] = {}

    def teacher(self, claim: Claim, seed: int) -> tuple[Path, dict]:
        """The workdir of ``claim.teacher`` at ``seed`` and its outcome (trained if new)."""
        spec = claim.teacher
        assert spec is not None, "only claims with a teacher stage call this"
        key = (spec, seed)
        if key not in self.teachers:
            overrides = [*spec.overrides, f"seed={seed}", *(spec.quick if self.quick else ())]
            workdir = self.root / f"teacher-{len(self.teachers)}"
            metrics, seconds = train(spec.preset, overrides, workdir, teacher=None)
            self.teachers[key] = (workdir, self.outcome(claim, metrics, seconds))
            return self.teachers[key]
        workdir, outcome = self.teachers[key]
        return workdir, dict(outcome, reused=True)

    def run(self, claim: Claim, arm: Arm, seed: int, teacher: Path | None) -> dict:
        """The outcome of ``arm`` at ``seed`` (trained unless an identical run exists)."""
        overrides = [*claim.overrides, *arm.overrides, f"seed={seed}"]
        overrides += [*claim.quick] if self.quick else []
        key = (claim.preset, tuple(overrides), claim.teacher, claim.evaluate, seed)
        if key in self.runs:
            return dict(self.runs[key], reused=True)
        with tempfile.TemporaryDirectory(dir=self.root) as workdir:
            metrics, seconds = train(claim.preset, overrides, Path(workdir), teacher=teacher)
            if claim.evaluate is not None:
                metrics = {**metrics, **claim.evaluate(Path(workdir), self.quick)}
        self.runs[key] = self.outcome(claim, metrics, seconds)
        return self.runs[key]

    @staticmethod
    def outcome(claim: Claim, metrics: dict, seconds: float) -> dict:
        keys = (claim.metric, *claim.also)
        out = {k: float(metrics[k]) for k in keys if k in metrics}
        return {"value": out.pop(claim.metric), "loss": float(metrics["loss"]), **out} | {
            "seconds": seconds
        }

    def measure(self, claim: Claim | FunctionClaim, seed: int) -> Iterator[tuple[str, dict]]:
        """``(arm name, outcome)`` of every arm at ``seed``, as each finishes (the teacher's
        first, as arm "teacher", when the claim has one)."""
        if isinstance(claim, FunctionClaim):
            start = time.perf_counter()
            out = claim.measure(seed, self.quick)
            seconds = (time.perf_counter() - start) / max(len(out), 1)
            yield from ((arm, dict(o, seconds=seconds)) for arm, o in out.items())
            return
        teacher = None
        if claim.teacher is not None:
            teacher, outcome = self.teacher(claim, seed)
            yield "teacher", outcome
        for arm in claim.arms:
            yield arm.name, self.run(claim, arm, seed, teacher)


def describe_setup(claim: Claim | FunctionClaim, *, seeds: int, quick: bool) -> str:
    """The "our setup" cell: the words, then the exact presets and overrides."""
    if isinstance(claim, FunctionClaim):
        return f"{claim.setup} (`python -m benchmarks.bimodal`; {seeds} init(s))"
    parts = [" ".join([f"`--config {claim.preset}`", *(f"`{o}`" for o in claim.overrides)])]
    if claim.teacher is not None:
        t = claim.teacher
        parts.append(" ".join([f"teacher `--config {t.preset}`", *(f"`{o}`" for o in t.overrides)]))
    parts += [f"{a.name}: " + " ".join(f"`{o}`" for o in a.overrides) for a in claim.arms]
    return f"{claim.setup} ({'; '.join(parts)}{'; quick sizes' if quick else ''}; {seeds} seed(s))"


def describe_ours(claim: Claim | FunctionClaim, outcomes: Outcomes) -> str:
    """The "ours" cell: per arm, mean ± std of the metric (and of ``also``), the paper's
    number, seconds per run."""

    def stats(arm: str, key: str) -> str:
        return "{:.3f} ± {:.3f}".format(*mean_std(o[key] for o in outcomes[arm] if key in o))

    cells = []
    for name in outcomes:
        paper = next((a.paper for a in claim.arms if a.name == name), None)
        extra = [f"{k} {stats(name, k)}" for k in claim.also if k in outcomes[name][0]]
        extra += [] if paper is None else [f"paper {paper:.3f}"]
        extra.append(f"{statistics.fmean(o['seconds'] for o in outcomes[name]):.0f} s/run")
        cells.append(f"{name} {stats(name, 'value')} ({'; '.join(extra)})")
    return "; ".join(cells)


def measure(
    claims: Sequence[Claim | FunctionClaim],
    *,
    seeds: int,
    quick: bool,
    figures: Path | None = None,
) -> harness.Section:
    """Every claim's arms over ``seeds`` seeds, as a section: the claims table, a target per
    claim (met when reproduced), every run, and figures drawn into ``figures`` (linked as
    ``<figures folder name>/<claim key>.png``)."""
    section = harness.Section(
        "reproductions",
        "Paper claims reproduced",
        "Each claim's models trained by `jaxdiv.train.run` from the named preset with the "
        "listed overrides, one run per seed (after its teacher, when it has one); the metric "
        "is the final held-out value. A toy claim is measured by its function per seed. "
        + (
            "**Quick mode: a few steps per run, a smoke test of the code path; these numbers "
            "say nothing about the claims.**"
            if quick
            else ""
        ),
    )
    summary, runs = section.table("Claims", SUMMARY), section.table("Runs", RUNS)
    with tempfile.TemporaryDirectory() as root:
        runner = Runner(Path(root), quick=quick)
        for claim in claims:
            outcomes: Outcomes = {}
            start = time.perf_counter()
            for seed in range(seeds):
                for arm, out in runner.measure(claim, seed):
                    line = {"claim": claim.key, "arm": arm, "seed": seed, **out}
                    print(json.dumps(line), flush=True)
                    outcomes.setdefault(arm, []).append(out)
                    also = [
                        "reused" if k == "reused" else f"{k}={v:.4g}"
                        for k, v in out.items()
                        if k not in ("value", "loss", "seconds")
                    ]
                    runs.add(
                        claim=claim.key,
                        arm=arm,
                        seed=seed,
                        metric=claim.metric,
                        value=out["value"],
                        loss=out["loss"],
                        seconds=out["seconds"],
                        also=", ".join(also),
                    )
            verdict, reason = claim.verdict(outcomes)
            trained = sum(not o.get("reused") for runs_ in outcomes.values() for o in runs_)
            section.note(
                f"{claim.key}: {time.perf_counter() - start:.0f} s wall, {trained} new runs "
                "(runs shared with an earlier claim are reused, not retrained)"
            )
            ours = describe_ours(claim, outcomes)
            summary.add(
                **dict(
                    zip(
                        SUMMARY,
                        [
                            claim.paper,
                            claim.statement,
                            describe_setup(claim, seeds=seeds, quick=quick),
                            ours,
                            f"**{verdict}**: {reason}",
                        ],
                        strict=True,
                    )
                )
            )
            section.target(claim.key, claim.statement, ours, verdict == "reproduced", reason)
            if isinstance(claim, FunctionClaim) and claim.figure and figures is not None:
                figures.mkdir(parents=True, exist_ok=True)
                claim.figure(figures / f"{claim.key}.png", seeds, quick)
                section.note(f"{claim.key}: ![{claim.key}]({figures.name}/{claim.key}.png)")
    return section


def merge(results: dict, earlier: dict, source: str, order: Sequence[str] = ()) -> dict:
    """``results`` with the claims of ``earlier`` (a results JSON) that it does not hold: their
    summary rows, runs, targets and notes, everything sorted by claim in ``order`` (claims not
    in it last), and ``meta["merged"]`` saying where the kept claims come from."""
    (new,), (old,) = results["sections"], earlier["sections"]
    fresh = {t["name"] for t in new["targets"]}
    kept = [t["name"] for t in old["targets"] if t["name"] not in fresh]
    rank = {key: i for i, key in enumerate(order)}

    def combine(old_items, new_items, key_of):
        items = [x for x in old_items if key_of(x) in kept] + list(new_items)
        return sorted(items, key=lambda x: rank.get(key_of(x), len(rank)))

    # Summary rows carry no key: each is paired with its claim's target (one per claim).
    pairs = combine(
        zip(old["tables"][0]["rows"], old["targets"], strict=True),
        zip(new["tables"][0]["rows"], new["targets"], strict=True),
        lambda pair: pair[1]["name"],
    )
    new["tables"][0]["rows"], new["targets"] = [r for r, _ in pairs], [t for _, t in pairs]
    runs = (old["tables"][1]["rows"], new["tables"][1]["rows"])
    new["tables"][1]["rows"] = combine(*runs, lambda row: row["claim"])
    new["notes"] = combine(old["notes"], new["notes"], lambda note: note.split(":", 1)[0])
    # Claims the earlier file itself kept from a still earlier run keep that provenance.
    inherited = [
        dict(m, claims=[k for k in m["claims"] if k in kept])
        for m in earlier["meta"].get("merged", [])
    ]
    inherited = [m for m in inherited if m["claims"]]
    own = [k for k in kept if not any(k in m["claims"] for m in inherited)]
    meta = earlier["meta"]
    fields = {k: meta[k] for k in ("date", "commit", "seeds", "seconds", "mode")}
    results["meta"]["merged"] = inherited + (
        [{"from": source, "claims": own, **fields}] if own else []
    )
    return results


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
    for m in meta.get("merged", []):
        head += [
            f"Rows of {', '.join(f'`{k}`' for k in m['claims'])} are kept from an earlier run "
            f"({m['date']}, commit {m['commit']}, {m['mode']} mode, {m['seeds']} seed(s), "
            f"{m['seconds']:.0f} s in all), not rerun.",
            "",
        ]
    body = [report.section_markdown(s, plots_dir=None) for s in results["sections"]]
    return "\n".join(head) + "\n" + "\n".join(body)


def main(argv=None, claims: Sequence[Claim | FunctionClaim] | None = None) -> tuple[Path, Path]:
    """Runs the claims (default ``CLAIMS``), writes the JSON and markdown; returns their paths."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reproductions", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="1 seed at a few steps (smoke)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 3)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--only", help="comma-separated claim keys to run (default: all)")
    parser.add_argument("--merge", type=Path, help="keep the other claims' rows from this JSON")
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
    claims = CLAIMS if claims is None else claims
    order = [c.key for c in claims]  # the report's order of claims, also of merged ones
    if opts.only:
        keys = opts.only.split(",")
        unknown = sorted(set(keys) - {c.key for c in claims})
        if unknown:
            parser.error(
                f"--only: unknown claims {unknown}; expected keys of {[c.key for c in claims]}"
            )
        claims = [c for c in claims if c.key in keys]
    earlier = None if opts.merge is None else json.loads(opts.merge.read_text())

    meta = suite.machine()
    meta["mode"], meta["seeds"] = ("quick" if opts.quick else "full"), seeds
    stem = f"{meta['date']}-{meta['device']}-reproductions" + ("-quick" if opts.quick else "")
    start = time.perf_counter()
    section = measure(claims, seeds=seeds, quick=opts.quick, figures=opts.out / stem)
    meta["seconds"] = section.seconds = time.perf_counter() - start

    opts.out.mkdir(parents=True, exist_ok=True)
    results = {"meta": meta, "sections": harness.to_json([section])}
    if earlier is not None:
        results = merge(results, earlier, opts.merge.name, order)
    json_path = opts.out / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    md_path = opts.out / f"{stem}.md"
    md_path.write_text(markdown(results))
    print(report.section_markdown(results["sections"][0], plots_dir=None))
    print(f"{meta['seconds']:.0f} s in all; wrote {json_path} and {md_path}")
    return json_path, md_path


if __name__ == "__main__":
    main()
