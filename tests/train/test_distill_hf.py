"""Distilling a Hugging Face teacher directory on the user's text: the distill_hf preset end to
end through the CLI (smoke size), bitwise resume, init_from_teacher and vocabulary checks."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiv.models import LanguageModel, LMConfig, save_pretrained
from jaxdiv.train import get_config, load_model
from jaxdiv.train.config import apply_overrides
from jaxdiv.train.experiment import build
from jaxdiv.train.main import main
from jaxdiv.train.metrics import read_metrics
from jaxdiv.train.sharding import make_mesh
from jaxdiv.train.teacher import Trained, init_from_teacher, is_hf_directory

TIMING = ("tokens_per_second", "mfu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("text") / "topics.txt"
    path.write_text("\n\n".join(topics[k] for k in sorted(topics)[:30]))
    return path


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, corpus):
    """A tiny random llama-type teacher with a BPE tokenizer trained on the corpus; its
    vocabulary is padded 3 ids past the tokenizer's (as real checkpoints often are)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    tokenizer.train([str(corpus)], trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"]))
    config = LMConfig(
        vocab_size=tokenizer.get_vocab_size() + 3,
        d_model=16,
        n_layers=2,
        mixer="attention",
        num_heads=2,
        num_kv_heads=1,
        tie_embeddings=False,
    )
    path = tmp_path_factory.mktemp("teacher")
    save_pretrained(LanguageModel(config, rngs=nnx.Rngs(7)), path, tokenizer=tokenizer)
    return path


def _args(workdir, teacher_dir, corpus, steps):
    return [
        "--config", "distill_hf", "--workdir", str(workdir),
        f"--config.distill.teacher={str(teacher_dir)!r}",
        f"--config.task.files={str(corpus)!r}",
        "--config.task.seq_len=16", f"--config.steps={steps}", "--config.batch_size=8",
        "--config.model.d_model=16", "--config.model.n_layers=2", "--config.model.dtype='float32'",
        "--config.log_every=1", "--config.eval_every=2", "--config.eval_batches=1",
        "--config.checkpoint_every=2", "--config.progress=False",
    ]  # fmt: skip


def test_distill_hf_preset_runs_and_resumes_bitwise(tmp_path, teacher_dir, corpus, capsys):
    assert is_hf_directory(teacher_dir)
    assert main(_args(tmp_path / "full", teacher_dir, corpus, 4)) == 0
    assert "initialised" in capsys.readouterr().out
    # An interruption after the step-2 checkpoint: the same workdir without what came later.
    shutil.copytree(tmp_path / "full", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "4")
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["step"] <= 2]
    (tmp_path / "cut" / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    assert main(_args(tmp_path / "cut", teacher_dir, corpus, 4)) == 0  # resumes at step 2
    assert "initialised" not in capsys.readouterr().out  # a resumed student is not re-initialised
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING} for r in rs]  # noqa: E731
    full, cut = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    assert [r["step"] for r in full if r["split"] == "train"] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in full)
    assert strip(cut) == strip(full)
    (m_full, config), (m_cut, _) = load_model(tmp_path / "full"), load_model(tmp_path / "cut")
    for a, b in zip(
        jax.tree.leaves(nnx.state(m_full)), jax.tree.leaves(nnx.state(m_cut)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The student took the teacher's (padded) vocabulary and the teacher's tokenizer.
    assert config.model.vocab_size == m_full.config.vocab_size == 303


def test_teacher_is_frozen_bf16_and_the_student_starts_from_it(teacher_dir, corpus):
    config = get_config("distill_hf")
    apply_overrides(
        config,
        [
            f"distill.teacher={str(teacher_dir)!r}",
            f"task.files={str(corpus)!r}",
            "task.seq_len=16",
            "batch_size=8",
            "model.d_model=16",
            "model.n_layers=1",
            "model.mixer='linear_attention'",
            "model.num_heads=2",
            "model.dtype='float32'",
        ],
    )
    mesh = make_mesh({"data": 8})
    with jax.set_mesh(mesh):
        exp = build(config, mesh=mesh)
        state = exp.init_state()
    teacher = exp.teacher
    assert teacher is not None and exp.teacher_params is not None
    assert {x.dtype for x in jax.tree.leaves(teacher.params)} == {jnp.dtype(jnp.bfloat16)}
    assert "teacher_params" not in state  # frozen: not in the trained (and saved) state
    student, source = state["params"]["backbone"], teacher.params["backbone"]
    np.testing.assert_array_equal(
        student["embedding"][...], source["embedding"][...].astype(jnp.float32)
    )
    # One student layer reads teacher layer ⌊0·2/1⌋ = 0: its q/k/v/o where shapes match.
    np.testing.assert_array_equal(
        student["layers"][0]["mixer"]["q_proj"]["kernel"][...],
        source["layers"][0]["mixer"]["q_proj"]["kernel"][...].astype(jnp.float32),
    )


def test_init_from_teacher_spreads_layers_and_skips_other_shapes():
    teacher_config = LMConfig(vocab_size=17, d_model=16, n_layers=4, mixer="attention")
    teacher = LanguageModel(teacher_config, rngs=nnx.Rngs(1))
    graphdef, t_params = nnx.split(teacher)
    student_config = LMConfig(vocab_size=17, d_model=16, n_layers=2, mixer=("mamba", "attention"))
    s_params = nnx.state(LanguageModel(student_config, rngs=nnx.Rngs(2)))
    new, copied = init_from_teacher(
        s_params, student_config, Trained(graphdef, t_params, None, teacher_config)
    )
    # Student layer 1 reads teacher layer ⌊1·4/2⌋ = 2.
    np.testing.assert_array_equal(
        new["backbone"]["layers"][1]["mixer"]["o_proj"]["kernel"][...],
        t_params["backbone"]["layers"][2]["mixer"]["o_proj"]["kernel"][...],
    )
    assert "backbone.layers.1.mlp.gate.kernel" in copied
    assert "backbone.layers.0.norm.scale" in copied
    assert not any(p.startswith("backbone.layers.0.mixer") for p in copied)  # Mamba: no map
    np.testing.assert_array_equal(
        new["backbone"]["layers"][0]["mixer"]["A_log"][...],
        s_params["backbone"]["layers"][0]["mixer"]["A_log"][...],
    )


def test_a_smaller_teacher_vocabulary_is_a_clear_error(tmp_path, corpus):
    config = LMConfig(vocab_size=100, d_model=16, n_layers=1, mixer="attention", num_heads=2)
    save_pretrained(LanguageModel(config, rngs=nnx.Rngs(0)), tmp_path)
    exp_config = get_config("distill_hf")
    apply_overrides(
        exp_config,
        [f"distill.teacher={str(tmp_path)!r}", f"task.files={str(corpus)!r}", "task.seq_len=16"],
    )
    exp_config.task.tokenizer = "bytes"  # 256 ids
    with pytest.raises(ValueError, match=r"teacher's vocabulary \(100 tokens\) is smaller"):
        build(exp_config)


def test_missing_teacher_and_files_are_named(tmp_path, corpus):
    config = get_config("distill_hf")
    with pytest.raises(ValueError, match="config.task.tokenizer='teacher' needs a Hugging Face"):
        build(config)
    apply_overrides(config, [f"distill.teacher={str(tmp_path / 'nope')!r}"])
    config.task.tokenizer = "bytes"
    config.task.files = str(corpus)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build(config)


def test_mamba2_student_takes_the_attention_projections():
    """Mamba-in-the-Llama: x ← v, B ← k, C ← q slices of in_proj and out_proj ← o, where the
    shapes match (here: expand 1, groups = heads = 4, state = head width = 4)."""
    teacher_config = LMConfig(vocab_size=17, d_model=16, n_layers=1, mixer="attention",
                              num_heads=4)  # fmt: skip
    graphdef, t_params = nnx.split(LanguageModel(teacher_config, rngs=nnx.Rngs(1)))
    student_config = LMConfig(vocab_size=17, d_model=16, n_layers=1, mixer="mamba2", expand=1,
                              mamba2_ngroups=4, mamba2_state=4, mamba2_headdim=4)  # fmt: skip
    s_params = nnx.state(LanguageModel(student_config, rngs=nnx.Rngs(2)))
    new, copied = init_from_teacher(
        s_params, student_config, Trained(graphdef, t_params, None, teacher_config)
    )
    kernel = np.asarray(new["backbone"]["layers"][0]["mixer"]["in_proj"]["kernel"][...])
    source = t_params["backbone"]["layers"][0]["mixer"]
    E, GN = 16, 16
    for name, start in (("v_proj", E), ("k_proj", 2 * E), ("q_proj", 2 * E + GN)):
        np.testing.assert_array_equal(kernel[:, start : start + 16], source[name]["kernel"][...])
    before = np.asarray(s_params["backbone"]["layers"][0]["mixer"]["in_proj"]["kernel"][...])
    np.testing.assert_array_equal(kernel[:, :E], before[:, :E])  # z keeps its initialisation
    np.testing.assert_array_equal(kernel[:, 2 * E + 2 * GN :], before[:, 2 * E + 2 * GN :])  # Δ
    np.testing.assert_array_equal(
        new["backbone"]["layers"][0]["mixer"]["out_proj"]["kernel"][...],
        source["o_proj"]["kernel"][...],
    )
    assert "backbone.layers.0.mixer.in_proj.kernel.q_proj" in copied
