"""The training loop end to end on tiny configs (8 simulated CPU devices)."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest
from flax import nnx

from jaxdiv.models import LanguageModel, SequenceClassifier
from jaxdiv.train import get_config, load_model, run
from jaxdiv.train.config import apply_overrides, preset_names, smoke_config
from jaxdiv.train.configs.common import distill_config
from jaxdiv.train.data import get_task
from jaxdiv.train.experiment import model_config
from jaxdiv.train.metrics import read_metrics
from jaxdiv.train.trainer import NonFiniteLossError

TIMING = ("tokens_per_second", "mfu")


def tiny(name="pretrain_lm", **overrides):
    """A preset in smoke size with a tiny model on 16 tokens, logging every step."""
    config = smoke_config(get_config(name))
    config.log_every, config.eval_every = 1, 0
    config.model.d_model, config.model.n_layers, config.model.num_heads = 16, 2, 2
    if config.task.name != "digits":
        config.task.kwargs = {
            "seq_len": 16,
            **({"num_tokens": 4} if config.task.name == "selective_copying" else {}),
        }
    for key, value in overrides.items():
        apply_overrides(config, [f"{key}={value!r}"])
    return config


def strip_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("teacher")
    run(tiny("pretrain_lm", **{"model.mixer": ("mamba", "attention")}), workdir)
    return workdir


@pytest.mark.parametrize(
    "preset", ["pretrain_lm", "selective_copying", "induction_heads", "digits"]
)
def test_every_preset_trains(preset, tmp_path):
    result = run(tiny(preset), tmp_path)
    assert result["step"] == 4 and not result["preempted"]
    assert np.isfinite(result["loss"]) and np.isfinite(result["eval_loss"])
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]
    assert {"loss", "grad_norm", "param_norm", "lr", "tokens_per_second", "mfu"} <= set(records[0])
    assert (tmp_path / "metrics.png").exists() and (tmp_path / "config.json").exists()
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))


def test_presets_are_listed():
    presets = ("pretrain_lm", "distill_lm", "distill_hf", "selective_copying", "induction_heads")
    assert {*presets, "digits"} <= set(preset_names())


def _log_softmax64(logits, temperature=1.0):
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _kl64(log_p, log_q):
    """KL(p ‖ q) per row, float64."""
    return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


def _divergence64(name, student, teacher, temperature, kwargs):
    """Independent float64 NumPy forms of the divergences the distill test uses."""
    s, t = _log_softmax64(student, temperature), _log_softmax64(teacher, temperature)
    if name == "forward_kl":
        return _kl64(t, s)
    if name == "generalized_jsd":
        beta = kwargs["beta"]
        m = np.log(beta * np.exp(t) + (1 - beta) * np.exp(s))
        return beta * _kl64(t, m) + (1 - beta) * _kl64(s, m)
    raise NotImplementedError(name)


@pytest.mark.parametrize(
    "distill",
    [
        {"divergence": "forward_kl", "weight": 0.7, "task_weight": 0.3},
        {"divergence": "generalized_jsd", "kwargs": {"beta": 0.3}, "temperature_end": 2.0},
        {"divergence": "forward_kl", "sinkhorn_weight": 0.1, "sinkhorn_rows": 16},
        {"divergence": "forward_kl", "temperature": 2.0, "online": True},
        {"divergence": "forward_kl", "feature_weight": 0.5, "feature_layers": ("layer_1",)},
    ],
    ids=["fkl", "gjsd_schedule", "sinkhorn", "online", "features"],
)
def test_distill_step(distill, teacher_dir, tmp_path, allow_rank_promotion):
    """The logged loss of step 1 equals task_weight·CE + weight·D (+ SinKD), recomputed in
    float64 NumPy from the initial student, the teacher and the first batch."""
    config = tiny("distill_lm", **{"distill.teacher": str(teacher_dir)})
    for key, value in distill.items():
        config.distill[key] = value
    result = run(config, tmp_path)
    assert np.isfinite(result["loss"]) and np.isfinite(result["eval_kl_to_teacher"])
    records = [r for r in read_metrics(tmp_path) if r["split"] == "train"]

    task = get_task(config.task.name, **config.task.kwargs)
    batch = task.train_batch(config.seed, 0, config.batch_size)
    student = LanguageModel(model_config(config, task.vocab_size), rngs=nnx.Rngs(config.seed))
    teacher, _ = load_model(teacher_dir)
    (s_logits, s_hidden), (t_logits, t_hidden) = (
        m(batch["tokens"], return_intermediates=True) for m in (student, teacher)
    )
    mask = batch["mask"]
    log_p = _log_softmax64(s_logits)
    ce = -np.take_along_axis(log_p, batch["targets"][..., None], -1)[..., 0][mask].mean()
    d = config.distill
    div = _divergence64(d.divergence, s_logits, t_logits, d.temperature, dict(d.kwargs))
    expected = d.task_weight * ce + d.weight * div[mask].mean()
    first = records[0]
    if d.sinkhorn_weight:
        expected += d.sinkhorn_weight * first["sinkhorn"]
    if d.feature_weight:
        h_s, h_t = (np.asarray(h["layer_1"], np.float64) for h in (s_hidden, t_hidden))
        features = np.mean((h_s - h_t) ** 2, -1)[mask].mean()
        np.testing.assert_allclose(first["features"], features, rtol=1e-4)
        expected += d.feature_weight * features
    np.testing.assert_allclose(first["ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(first["divergence"], div[mask].mean(), rtol=1e-4)
    np.testing.assert_allclose(first["loss"], expected, rtol=1e-4)
    assert first["temperature"] == d.temperature
    if d.online:
        assert np.isfinite(first["teacher_loss"])
    if d.get("temperature_end") is not None:
        assert records[-1]["temperature"] == d.temperature_end


def test_distill_a_digits_classifier(teacher_dir, tmp_path, allow_rank_promotion):
    """A digits student distilled from a digits teacher: the logged loss of step 1 is
    task_weight·CE + weight·KL(teacher ‖ student) + sinkhorn_weight·SinKD over the class
    logits of each image; the eval KL to the teacher is per image. An LM teacher is refused."""
    teacher_workdir = tmp_path / "teacher"
    run(tiny("digits", **{"model.n_layers": 1}), teacher_workdir)
    config = distill_config(tiny("digits", **{"model.n_layers": 1}))
    config.model.d_model = 8  # a smaller student
    config.distill.teacher, config.distill.task_weight = str(teacher_workdir), 0.3
    config.distill.sinkhorn_weight = 0.01
    result = run(config, tmp_path / "student")
    assert np.isfinite(result["eval_kl_to_teacher"]) and result["eval_kl_to_teacher"] > 0
    first = next(r for r in read_metrics(tmp_path / "student") if r["split"] == "train")

    task = get_task("digits")
    batch = task.train_batch(config.seed, 0, config.batch_size)
    student = SequenceClassifier(model_config(config, 17), 10, rngs=nnx.Rngs(config.seed))
    teacher, _ = load_model(teacher_workdir)
    log_s, log_t = (_log_softmax64(m(batch["tokens"])) for m in (student, teacher))
    ce = -log_s[np.arange(len(log_s)), batch["labels"]].mean()
    kl = _kl64(log_t, log_s).mean()
    np.testing.assert_allclose(first["ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(first["divergence"], kl, rtol=1e-4)
    expected = 0.3 * ce + kl + 0.01 * first["sinkhorn"]
    np.testing.assert_allclose(first["loss"], expected, rtol=1e-4)

    config.distill.teacher = str(teacher_dir)  # a byte-level LM
    with pytest.raises(ValueError, match="trained on a lm task and the student's task is"):
        run(config, tmp_path / "mismatch")


def test_same_loss_curve_on_every_mesh(tmp_path):
    """1 device and 8 devices in (8,1,1,1), (2,4,1,1), (2,1,1,4) meshes train alike."""
    curves = {}
    meshes = {
        "single": {"data": 1, "fsdp": 1, "sequence": 1, "tensor": 1},
        "data8": {"data": 8, "fsdp": 1, "sequence": 1, "tensor": 1},
        "data2_fsdp4": {"data": 2, "fsdp": 4, "sequence": 1, "tensor": 1},
        "data2_tensor4": {"data": 2, "fsdp": 1, "sequence": 1, "tensor": 4},
    }
    for name, mesh in meshes.items():
        config = tiny("pretrain_lm", **{"model.mixer": ("mamba", "attention")})
        config.mesh = mesh
        run(config, tmp_path / name)
        curves[name] = [r["loss"] for r in read_metrics(tmp_path / name) if r["split"] == "train"]
    for name, curve in curves.items():
        np.testing.assert_allclose(curve, curves["single"], rtol=2e-4, err_msg=name)


def test_checkpoint_round_trip_and_resume_config_check(tmp_path):
    config = tiny("pretrain_lm")
    run(config, tmp_path)
    model, saved = load_model(tmp_path)
    assert saved.model.d_model == 16
    tokens = np.arange(32, dtype=np.int32).reshape(2, 16)
    logits = model(tokens)
    chex.assert_shape(logits, (2, 16, 256))
    chex.assert_tree_all_finite(logits)
    # Same workdir, longer run: resumes from step 4 and appends.
    config.steps = 6
    assert run(config, tmp_path)["step"] == 6
    assert [r["step"] for r in read_metrics(tmp_path) if r["split"] == "train"] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    config.model.d_model = 32
    with pytest.raises(ValueError, match=r"different config \(model\.d_model: 16 -> 32\)"):
        run(config, tmp_path)


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    config = tiny("pretrain_lm")
    config.optimizer.lr = float("nan")
    config.checkpoint_every = 1
    with pytest.raises(NonFiniteLossError, match="Non-finite training at step 1"):
        run(config, tmp_path)
    assert not (tmp_path / "checkpoints" / "1").exists()  # the bad state is never saved


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("distill.divergence", "kl", r"config.distill.divergence='kl' is not a registered"),
        ("model.mixer", "lstm", r"Unknown mixer\(s\) \['lstm'\]"),
        ("mesh.data", 3, r"does not divide the 8 available"),
        ("batch_size", 12, r"config.batch_size=12 must be divisible by the data axes"),
        ("model.d_model", 15, r"d_model=15 must be divisible by num_heads=2"),
        ("distill.temperature", 0.0, r"config.distill.temperature must be > 0, got 0.0"),
        ("distill.temperature_end", -1.0, r"config.distill.temperature_end must be > 0"),
        ("distill.feature_weight", 1.0, r"feature_weight needs equal widths; got student"),
    ],
)
def test_config_errors_before_compiling(key, value, message, tmp_path, teacher_dir):
    config = tiny("distill_lm", **{"distill.teacher": str(teacher_dir)})
    config.model.d_model = 32  # the teacher's is 16
    if key == "model.mixer":
        config.model.mixer = value
    else:
        apply_overrides(config, [f"{key}={value!r}"])
    with pytest.raises(ValueError, match=message):
        run(config, tmp_path)


def _cli(workdir, *extra):
    return [
        sys.executable,
        "-m",
        "jaxdiv.train",
        "--config",
        "pretrain_lm",
        "--workdir",
        str(workdir),
        "--config.steps=12",
        "--config.batch_size=8",
        "--config.log_every=1",
        "--config.eval_every=6",
        "--config.eval_batches=1",
        "--config.checkpoint_every=5",
        "--config.model.d_model=16",
        "--config.model.num_heads=2",
        "--config.task.kwargs.seq_len=16",
        "--config.progress=False",
        *extra,
    ]


def _text_data(tmp_path) -> list[str]:
    """The ``text`` task on a JSONL file of the Python docs' topics (one document each)."""
    from pydoc_data.topics import topics

    path = tmp_path / "topics.jsonl"
    path.write_text("\n".join(json.dumps({"body": topics[k]}) for k in sorted(topics)[:20]))
    return [
        "--config.task.name=text",
        f"--config.task.files={str(path)!r}",
        "--config.task.format=jsonl",
        "--config.task.field=body",
    ]


@pytest.mark.parametrize("data", ["pydoc_bytes", "text"])
def test_sigterm_then_rerun_is_bitwise_equal_to_uninterrupted(data, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    extra = _text_data(tmp_path) if data == "text" else []
    subprocess.run(_cli(tmp_path / "full", *extra), check=True, env=env, capture_output=True)
    # Interrupt a second run once it has logged a step between checkpoints, then rerun it.
    stop_after = int(np.random.default_rng(0).integers(2, 10))
    proc = subprocess.Popen(
        _cli(tmp_path / "cut", *extra), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        # Counted in logged steps, not lines: an eval record shares its step's number.
        if (
            metrics.exists()
            and max((r["step"] for r in read_metrics(metrics.parent)), default=0) >= stop_after
        ):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, out
    assert "preempted: checkpoint saved at step" in out, out  # stopped before the end
    interrupted_at = max(int(p.name) for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert stop_after <= interrupted_at < 12
    subprocess.run(_cli(tmp_path / "cut", *extra), check=True, env=env, capture_output=True)
    full, cut = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    assert strip_timing(cut) == strip_timing(full)  # losses and eval metrics, bitwise
    (m_full, _), (m_cut, _) = load_model(tmp_path / "full"), load_model(tmp_path / "cut")
    for a, b in zip(
        jax.tree.leaves(nnx.state(m_full)), jax.tree.leaves(nnx.state(m_cut)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--config", "pretrain_lm", "--config.model.d_modle=8"],
            "override 'model.d_modle=8': the config has no key 'model.d_modle'; did you mean "
            "'model.d_model'?",
        ),
        (
            ["--config", "distil_lm"],
            "Unknown config 'distil_lm' (did you mean 'distill_lm'?): expected a .py file or "
            "one of ['digits', 'distill_hf', 'distill_lm', 'induction_heads', 'pretrain_lm', "
            "'selective_copying'].",
        ),
    ],
)
def test_cli_errors_are_one_line(args, message, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "jaxdiv.train", *args, "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1] == f"jaxdiv-train: error: {message}"


def test_cli_help_lists_presets():
    out = subprocess.run(
        [sys.executable, "-m", "jaxdiv.train", "--help"], check=True, capture_output=True, text=True
    ).stdout
    for name in ("pretrain_lm", "distill_lm", "selective_copying", "digits", "main job"):
        assert name in out


def test_main_job_smoke(tmp_path, allow_rank_promotion):
    """The README's first command, in smoke mode: teacher + five students + the table."""
    from jaxdiv.train.job import STUDENTS, main_job

    rows = main_job(tmp_path, smoke=True)
    assert [r["model"] for r in rows] == ["teacher", *STUDENTS]
    assert all(np.isfinite(r["bits/byte"]) for r in rows)
    assert (tmp_path / "summary.md").read_text().startswith("| model")
    assert json.loads((tmp_path / "summary.json").read_text())[0]["model"] == "teacher"


def test_sequence_parallel_hybrid_matches_unsharded(tmp_path):
    """Every mixer in one hybrid LM: sequence = 4 trains exactly like sequence = 1."""
    curves = {}
    for name, mesh in {"unsharded": {"data": 2}, "sequence4": {"data": 2, "sequence": 4}}.items():
        config = tiny("pretrain_lm", steps=3, checkpoint_every=3)
        config.model.mixer = ("mamba", "attention", "linear_attention", "lightnet", "s4", "s4d")
        config.model.n_layers = 6
        config.task.kwargs = {"seq_len": 32}
        config.mesh = mesh
        run(config, tmp_path / name)
        curves[name] = [r["loss"] for r in read_metrics(tmp_path / name) if r["split"] == "train"]
    np.testing.assert_allclose(curves["sequence4"], curves["unsharded"], rtol=1e-4)
