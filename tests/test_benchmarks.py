"""The benchmark suite's machinery: timing records, JSON, and the report built from it.

The benchmarks themselves are not tests (they measure, they don't assert); these check that the
suite can run and report what it measured faithfully.
"""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

harness = importlib.import_module("benchmarks.harness")
report = importlib.import_module("benchmarks.report")
run = importlib.import_module("benchmarks.run")


def test_time_call_counts_warmup_and_repeats():
    calls = []
    ticks = iter(range(100))
    timing = harness.time_call(
        lambda: calls.append(1), repeats=5, warmup=2, clock=lambda: next(ticks) ** 2
    )
    assert len(calls) == 7
    # Clock readings 0,1 | 4,9 | 16,25 | 36,49 | 64,81: durations 1, 5, 9, 13, 17.
    assert (timing.median, timing.min, timing.max, timing.repeats) == (9, 1, 17, 5)
    assert timing / harness.Timing(3, 3, 3, 1) == 3


def test_time_call_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        harness.time_call(lambda: None, repeats=0)


def test_table_rejects_unknown_columns():
    table = harness.Table("t", ["a", "b"])
    table.add(a=1)
    with pytest.raises(KeyError, match=r"no columns \['c'\]"):
        table.add(c=2)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        (True, "yes"),
        (0.5, "0.5"),
        (171.4, "171"),
        (132096.0, "132,096"),
        (1.23e-5, "1.23e-05"),
        ("x", "x"),
        (harness.Timing(0.0123, 0.012, 0.0131, 3), "12.3 [12–13.1]"),
    ],
)
def test_format_cell(value, text):
    assert harness.format_cell(value) == text
    # A timing reads the same after a trip through JSON.
    assert harness.format_cell(json.loads(json.dumps(harness.to_json(value)))) == text


def fake_results() -> dict:
    section = harness.Section("demo", "Demo section", "What is measured.")
    table = section.table("Times", ["what", "time", "ratio"])
    table.add(what="ours", time=harness.Timing(0.002, 0.001, 0.003, 5), ratio=float("nan"))
    section.target("fast", "≥ 2×", "3×", True)
    section.target("small", "≤ 1 GB", "2 GB", False, "the [N, N] plan is 2 GB")
    section.plot("demo_time", "time vs N", "N", "s").point("ours", 32, 0.1)
    section.note("a note")
    meta = dict(
        date="2026-01-01",
        device="cpu-2core",
        backend="cpu",
        device_kind="cpu",
        device_count=1,
        cpu_count=2,
        processor="x86_64",
        python="3.11",
        versions={"jax": "0"},
        commit="abc",
        mode="quick",
        seconds=1.0,
    )
    return json.loads(json.dumps({"meta": meta, "sections": harness.to_json([section])}))


def test_report_from_json(tmp_path):
    path = report.write(fake_results(), tmp_path, "stem", plots=False)
    text = path.read_text()
    assert "| ours | 2 [1–3] |  |" in text  # NaN ratio: a blank cell, not a made-up number
    assert "**1 of 2 targets met.**" in text
    assert "| small | ≤ 1 GB | 2 GB | **NOT MET** | the [N, N] plan is 2 GB |" in text
    assert "no GPU/TPU numbers" in text  # a CPU run says so, and fakes nothing
    assert "demo_time.png" not in text  # plots off: none linked
    assert "- a note" in text


def test_every_section_module_has_run():
    for key in run.SECTIONS:
        module = importlib.import_module(f"benchmarks.{key}")
        assert callable(module.run), key


def test_cli_help_runs_from_repo_root():
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--quick" in out and "--only" in out


def test_jaxpr_eqns_counts_scan_bodies():
    import jax
    import jax.numpy as jnp

    def fn(x):  # 2 exps of [3] per step, 5 steps; 1 exp of [3] outside
        def body(carry, _):
            return jnp.exp(jnp.exp(carry)), None

        return jnp.exp(jax.lax.scan(body, x, None, length=5)[0])

    jaxpr = jax.make_jaxpr(fn)(jnp.zeros(3)).jaxpr
    counts = [
        times * eqn.outvars[0].aval.size
        for eqn, times in harness.jaxpr_eqns(jaxpr)
        if eqn.primitive.name == "exp"
    ]
    assert sorted(counts) == [3, 15, 15]


def test_time_jax_returns_the_warmup_output_and_memory():
    import jax.numpy as jnp

    x = jnp.arange(4.0)
    run_ = harness.time_jax(lambda x: x * 2.0, x, repeats=2)
    assert run_.out.tolist() == [0.0, 2.0, 4.0, 6.0]
    assert run_.timing.repeats == 2
    assert run_.peak_bytes >= 2 * x.nbytes  # the argument and the output at least
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        harness.time_compiled(run_.compiled, x, repeats=1, warmup=0)


def test_pretrained_section_measures_a_fresh_process():
    """The load-memory section on a tiny checkpoint: its child process runs and reports."""
    section = importlib.import_module("benchmarks.pretrained").run(
        quick=True, size="tiny", dtypes=("bfloat16",)
    )
    (row,) = section.tables[0].rows
    assert row["dtype"] == "bfloat16" and row["peak MiB"] >= 0 and row["load s"] > 0
    (target,) = section.targets
    assert target.name.startswith("load peak ≤ 1.5× N·bytes (bfloat16")


def test_reproductions_quick_mode_writes_one_row_per_claim(
    tmp_path, monkeypatch, allow_rank_promotion
):
    """``python -m benchmarks.reproductions --quick`` for real on a claim with a teacher stage
    (SinKD on the byte LM, cut to its SinKD arm: a teacher, then one distilled run) and on the
    toy claim: one row per claim, the report rebuildable from its JSON, and ``--merge``
    keeping the earlier claim."""
    import dataclasses

    repro = importlib.import_module("benchmarks.reproductions")
    claims = {c.key: c for c in repro.CLAIMS}
    sinkd_lm = dataclasses.replace(
        claims["sinkd_lm"],
        arms=claims["sinkd_lm"].arms[1:],
        verdict=lambda outcomes: ("not reproduced", "smoke test"),
    )
    monkeypatch.setattr(repro, "CLAIMS", (sinkd_lm, claims["sinkd_modes"]))
    json_path, md_path = repro.main(["--quick", "--only", "sinkd_lm", "--out", str(tmp_path)])
    assert json_path.name.endswith("-reproductions-quick.json")
    results = json.loads(json_path.read_text())
    assert results["meta"]["mode"] == "quick" and results["meta"]["seeds"] == 1
    (section,) = results["sections"]
    summary, runs = section["tables"]
    assert len(summary["rows"]) == 1
    assert [r["arm"] for r in runs["rows"]] == ["teacher", "forward KL + SinKD"]
    for row in runs["rows"]:
        assert row["metric"] == "eval_bits_per_byte" and 0 < row["value"] < 9
    assert "eval_kl_to_teacher=" in runs["rows"][-1]["also"]
    text = md_path.read_text()
    assert "Quick mode" in text and "**Claims**" in text
    md_path.unlink()
    repro.main(["--report", str(json_path)])  # the markdown is a pure function of the JSON
    assert md_path.read_text() == text

    out = tmp_path / "merged"
    args = ["--quick", "--only", "sinkd_modes", "--out", str(out), "--merge", str(json_path)]
    json_path, md_path = repro.main(args)
    (section,) = json.loads(json_path.read_text())["sections"]
    assert [t["name"] for t in section["targets"]] == ["sinkd_lm", "sinkd_modes"]
    assert {r["claim"] for r in section["tables"][1]["rows"]} == {"sinkd_lm", "sinkd_modes"}
    text = md_path.read_text()
    assert "Rows of `sinkd_lm` are kept from an earlier run" in text
    assert (out / json_path.stem / "sinkd_modes.png").exists()
    assert f"![sinkd_modes]({json_path.stem}/sinkd_modes.png)" in text


def _fake_train(calls):
    """A stand-in for ``reproductions.train`` that records its calls and returns metrics."""

    def train(preset, overrides, workdir, *, teacher):
        calls.append((preset, tuple(overrides), teacher, Path(workdir).name))
        seed = next(int(o.split("=")[1]) for o in overrides if o.startswith("seed="))
        metrics = {"eval_accuracy": 0.5 + 0.01 * seed, "eval_bits_per_byte": 2.0 + 0.01 * seed}
        return {**metrics, "eval_kl_to_teacher": 0.1, "loss": 1.0}, 0.5

    return train


def test_reproductions_train_each_teacher_and_run_once(tmp_path, monkeypatch):
    """Every claim in quick mode with training (and the toy) faked: each teacher is trained
    once per seed, a run shared by two claims once (marked reused), and each distilled arm
    gets its claim's teacher; one summary row and one target per claim, every verdict a known
    word, the toy's figure linked."""
    import dataclasses

    repro = importlib.import_module("benchmarks.reproductions")
    calls = []
    monkeypatch.setattr(repro, "train", _fake_train(calls))
    toy = {"value": 0.3, "loss": 1.0, "mu": 0.0, "sigma": 1.0, "off_modes": 0.4}

    def measure(seed, quick):
        return {name: dict(toy) for name in importlib.import_module("benchmarks.bimodal").LOSSES}

    def figure(path, seeds, quick):
        path.write_bytes(b"PNG")

    evaluated = []

    def evaluate(workdir, quick):
        evaluated.append(workdir)
        return {"accuracy_1x": 1.0, "accuracy_4x": 0.9, "accuracy_16x": 0.8, "params_k": 5.0}

    claims = []
    for claim in repro.CLAIMS:
        if isinstance(claim, repro.FunctionClaim):
            claim = dataclasses.replace(claim, measure=measure, figure=figure)
        elif claim.evaluate is not None:
            claim = dataclasses.replace(claim, evaluate=evaluate)
        claims.append(claim)
    monkeypatch.setattr(repro, "CLAIMS", tuple(claims))
    json_path, md_path = repro.main(["--quick", "--seeds", "2", "--out", str(tmp_path)])
    teachers = [c for c in calls if c[3].startswith("teacher-")]
    assert [c[0] for c in teachers] == ["pretrain_lm", "pretrain_lm", "digits", "digits"]
    lm_runs = [c for c in calls if c[0] == "distill_lm"]
    assert len(lm_runs) == 2 * 6 and len({c[:3] for c in lm_runs}) == len(lm_runs)
    assert {str(c[2]).rsplit("-", 1)[-1] for c in lm_runs} == {"0", "1"}  # teachers 0 and 1
    results = json.loads(json_path.read_text())
    (section,) = results["sections"]
    summary, runs = section["tables"]
    assert [t["name"] for t in section["targets"]] == [c.key for c in repro.CLAIMS]
    assert len(summary["rows"]) == len(repro.CLAIMS)
    # Each run of a claim with metrics of trained runs is evaluated once, in its own workdir;
    # the claim's metric is the evaluated one.
    with_evaluate = [c for c in claims if getattr(c, "evaluate", None) is not None]
    assert len(evaluated) == 2 * sum(len(c.arms) for c in with_evaluate)
    assert len(set(evaluated)) == len(evaluated)
    induction = [r for r in runs["rows"] if r["claim"] == "induction_heads"]
    assert {r["value"] for r in induction} == {0.9}
    assert all("accuracy_16x=0.8" in r["also"] for r in induction)
    reused = [r for r in runs["rows"] if r["claim"] == "sinkd_lm"]
    assert len(reused) == 2 * 3 and all("reused" in r["also"] for r in reused)
    verdicts = [row["verdict"].split("**")[1] for row in summary["rows"]]
    assert set(verdicts) <= {"reproduced", "partially", "not reproduced"}
    assert (tmp_path / json_path.stem / "sinkd_modes.png").exists()
    with pytest.raises(SystemExit):
        repro.main(["--quick", "--only", "nonsense", "--out", str(tmp_path)])


def test_reproduction_claims_are_valid_configs():
    """Every claim's preset + overrides (+ each arm's, full and quick) and every teacher stage
    builds a config without an unknown key; arm names are unique within a claim."""
    from jaxdiv.train import get_config
    from jaxdiv.train.config import apply_overrides
    from jaxdiv.train.configs.common import distill_config

    claims = importlib.import_module("benchmarks.claims")
    for claim in claims.CLAIMS:
        assert len({a.name for a in claim.arms}) == len(claim.arms), claim.key
        if isinstance(claim, claims.FunctionClaim):
            continue
        for arm in claim.arms:
            for quick in ((), claim.quick):
                config = get_config(claim.preset)
                if claim.teacher is not None and "distill" not in config:
                    distill_config(config)
                apply_overrides(config, [*claim.overrides, *arm.overrides, *quick])
        if claim.teacher is not None:
            t = claim.teacher
            apply_overrides(get_config(t.preset), [*t.overrides, *t.quick])


def test_extrapolation_at_the_training_length_is_the_runs_eval_accuracy(tmp_path):
    """``evaluation.extrapolation`` at 1× scores the same held-out rows as the run's own eval
    (eval_batches × batch_size rows) through its own forward pass: the same accuracy; at 2×
    the task is rebuilt longer; ``parameter_count`` (from the saved config) equals the size of
    the checkpointed parameters."""
    import jax

    from benchmarks import evaluation
    from jaxdiv.train import get_config, run
    from jaxdiv.train.config import apply_overrides
    from jaxdiv.train.experiment import restore_trained

    config = get_config("induction_heads")
    overrides = ["steps=3", "batch_size=8", "eval_batches=2", "task.kwargs.seq_len=16"]
    apply_overrides(config, [*overrides, "model.d_model=16", "model.n_layers=1"])
    config.progress, config.eval_every = False, 0
    metrics = run(config, tmp_path)
    out = evaluation.extrapolation(tmp_path, {1: 16, 2: 8})
    assert set(out) == {"accuracy_1x", "accuracy_2x"} and 0 <= out["accuracy_2x"] <= 1
    assert out["accuracy_1x"] == pytest.approx(metrics["eval_accuracy"], abs=1e-6)
    restored = restore_trained(tmp_path).params
    assert evaluation.parameter_count(tmp_path) == sum(x.size for x in jax.tree.leaves(restored))
