"""The objective, the pure train step and the FLOP count, against independent computations."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

import jaxdiv
from jaxdiv.models import LanguageModel, LMConfig
from jaxdiv.train.config import get_config
from jaxdiv.train.data import get_task
from jaxdiv.train.flops import flops_per_token
from jaxdiv.train.objective import Objective
from jaxdiv.train.steps import make_train_step, micro_batches


def _log_softmax64(x, temperature=1.0):
    z = np.asarray(x, np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _distill_config(**distill):
    config = get_config("distill_lm")
    config.steps = 11
    for key, value in distill.items():
        config.distill[key] = value
    return config


def _batch(rng, B=2, L=5, V=7):
    mask = rng.random((B, L)) < 0.7
    mask[0, 0] = True
    return {
        "tokens": rng.integers(0, V, (B, L)).astype(np.int32),
        "targets": rng.integers(0, V, (B, L)).astype(np.int32),
        "mask": mask,
    }


def test_loss_is_task_plus_weighted_divergence_and_features():
    rng = np.random.default_rng(0)
    batch = _batch(rng)
    s, t = rng.normal(size=(2, 2, 5, 7)).astype(np.float32) * 3
    h_s, h_t = rng.normal(size=(2, 2, 5, 4)).astype(np.float32)
    objective = Objective.from_config(
        _distill_config(
            divergence="reverse_kl",
            weight=0.7,
            task_weight=0.2,
            temperature=2.0,
            temperature_end=4.0,
            feature_weight=0.5,
            feature_layers=("layer_0",),
        ),
        "lm",
    )
    loss, metrics = objective.loss(
        jnp.asarray(s),
        batch,
        step=5,  # half-way through 11 steps: T = 3
        rng=jax.random.key(0),
        teacher_logits=jnp.asarray(t),
        features={"layer_0": jnp.asarray(h_s)},
        teacher_features={"layer_0": jnp.asarray(h_t)},
    )
    m = batch["mask"]
    log_p = _log_softmax64(s)
    ce = -np.take_along_axis(log_p, batch["targets"][..., None], -1)[..., 0][m].mean()
    ls, lt = _log_softmax64(s, 3.0), _log_softmax64(t, 3.0)
    rkl = np.sum(np.exp(ls) * (ls - lt), -1)[m].mean()
    feat = np.mean((h_s.astype(np.float64) - h_t) ** 2, -1)[m].mean()
    np.testing.assert_allclose(metrics["temperature"], 3.0, rtol=1e-6)
    np.testing.assert_allclose(metrics["divergence"], rkl, rtol=1e-5)
    np.testing.assert_allclose(metrics["features"], feat, rtol=1e-5)
    np.testing.assert_allclose(loss, 0.2 * ce + 0.7 * rkl + 0.5 * feat, rtol=1e-5)


def test_no_distill_section_is_the_task_loss():
    objective = Objective.from_config(get_config("pretrain_lm"), "lm")
    assert not objective.needs_teacher
    batch = _batch(np.random.default_rng(1))
    logits = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 7)), jnp.float32)
    loss, metrics = objective.loss(logits, batch, step=0, rng=jax.random.key(0))
    np.testing.assert_allclose(loss, metrics["ce"])
    assert "divergence" not in metrics


@pytest.mark.parametrize(
    ("distill", "message"),
    [
        ({"temperature": 0.0}, r"config.distill.temperature must be > 0, got 0.0"),
        ({"temperature": -1.0}, r"config.distill.temperature must be > 0, got -1.0"),
        ({"temperature_end": 0.0}, r"config.distill.temperature_end must be > 0, got 0.0"),
        ({"divergence": "kld"}, r"config.distill.divergence='kld' is not a registered"),
    ],
)
def test_bad_distill_settings_fail_at_config_time(distill, message):
    with pytest.raises(ValueError, match=message):
        Objective.from_config(_distill_config(**distill), "lm")


def test_classifier_is_distilled_per_sequence(allow_rank_promotion):
    """Classification: CE and the divergence are means over the real sequences (an all-False
    mask row is eval padding), and SinKD takes one row per sequence."""
    rng = np.random.default_rng(3)
    mask = np.ones((4, 6), bool)
    mask[3] = False  # a padding row
    batch = {"tokens": np.zeros((4, 6), np.int32), "labels": np.array([1, 0, 2, 1]), "mask": mask}
    s, t = (rng.normal(size=(4, 3)).astype(np.float32) * 2 for _ in range(2))
    s[3], t[3] = np.nan, -np.inf  # padding never reaches the loss
    objective = Objective.from_config(
        _distill_config(divergence="forward_kl", weight=0.6, task_weight=0.4, sinkhorn_weight=0.1),
        "classification",
    )
    loss, metrics = objective.loss(
        jnp.asarray(s), batch, step=0, rng=jax.random.key(0), teacher_logits=jnp.asarray(t)
    )
    log_p, log_t = _log_softmax64(s[:3]), _log_softmax64(t[:3])
    ce = -log_p[np.arange(3), batch["labels"][:3]].mean()
    fkl = np.sum(np.exp(log_t) * (log_t - log_p), -1).mean()
    sinkd = jaxdiv.sinkhorn_kd(jnp.asarray(s[:3]), jnp.asarray(t[:3]))
    np.testing.assert_allclose(metrics["ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(metrics["divergence"], fkl, rtol=1e-5)
    np.testing.assert_allclose(metrics["sinkhorn"], sinkd, rtol=1e-5)
    np.testing.assert_allclose(loss, 0.4 * ce + 0.6 * fkl + 0.1 * sinkd, rtol=1e-5)


def test_feature_layers_must_exist_with_equal_widths():
    objective = Objective.from_config(
        _distill_config(feature_weight=1.0, feature_layers=("layer_3",)), "lm"
    )
    small = LMConfig(vocab_size=17, d_model=16, n_layers=2)
    with pytest.raises(ValueError, match=r"\['layer_3'\], not intermediates of the student"):
        objective.check_features(small, small)
    with pytest.raises(ValueError, match="student d_model=16, teacher d_model=32"):
        objective.check_features(small, dataclasses.replace(small, d_model=32))


def test_micro_batches_take_strided_rows():
    batch = {"x": np.arange(8)}
    np.testing.assert_array_equal(
        micro_batches(batch, 2)["x"], np.array([[0, 2, 4, 6], [1, 3, 5, 7]])
    )


def test_gradient_accumulation_equals_one_big_batch():
    """k micro-batches of B/k rows == one batch of B rows (SGD: the update is the gradient)."""
    config = LMConfig(vocab_size=256, d_model=16, n_layers=2, mixer="attention", num_heads=2)
    model = LanguageModel(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tx = optax.sgd(0.1)
    batch = get_task("pydoc_bytes", seq_len=16).train_batch(0, 0, 8)  # every token counts
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0)}
    results = {}
    for accum in (1, 4):
        step = jax.jit(make_train_step(graphdef, tx, Objective(), grad_accum_steps=accum))
        results[accum] = step(state, batch)
    (state1, metrics1), (state4, metrics4) = results[1], results[4]
    chex.assert_trees_all_close(state4["params"], state1["params"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics4["loss"], metrics1["loss"], rtol=1e-6)
    np.testing.assert_allclose(metrics4["grad_norm"], metrics1["grad_norm"], rtol=1e-5)
    assert not np.allclose(
        state1["params"]["backbone"]["embedding"][...], params["backbone"]["embedding"][...]
    )


def _weights(d, vocab, mlp_hidden, layers):
    """Hand count of an attention LM's parameters: embedding/head, per layer q, k, v, o
    (d×d each), gated MLP (3·d·hidden), two RMSNorm scales, and the final norm."""
    return vocab * d + layers * (4 * d * d + 3 * d * mlp_hidden + 2 * d) + d


@pytest.mark.parametrize("tied", [True, False])
def test_flops_per_token_match_a_hand_count(tied):
    d, V, L = 16, 17, 8
    config = LMConfig(
        vocab_size=V, d_model=d, n_layers=1, mixer="attention", num_heads=2, tie_embeddings=tied
    )
    weights = _weights(d, V, 4 * d, 1)  # untied: the head (d×V) replaces the lookup table
    attention = 6 * L * d  # causal QKᵀ and AV, forward and backward, per token
    assert flops_per_token(config, L) == 6 * weights + attention
    frozen = flops_per_token(config, L, teacher=config)
    assert frozen == 6 * weights + attention + 2 * weights + 2 * L * d
    online = flops_per_token(config, L, teacher=config, online=True)
    assert online == 2 * (6 * weights + attention)


def test_flops_of_mamba_have_no_attention_term():
    config = LMConfig(vocab_size=17, d_model=16, n_layers=1, mixer="mamba")
    model = LanguageModel(config, rngs=nnx.Rngs(0))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    # Every parameter multiplies activations (A_log, D and dt biases elementwise).
    assert flops_per_token(config, 64) == 6 * n == flops_per_token(config, 4096)


def test_config_dicts_are_accepted_as_plain_mappings():
    config = _distill_config(
        kwargs=ml_collections.ConfigDict({"beta": 0.3}), divergence="generalized_jsd"
    )
    assert Objective.from_config(config, "lm").divergence_kwargs == (("beta", 0.3),)
