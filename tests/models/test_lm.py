"""LanguageModel / SequenceClassifier over every mixer and a hybrid."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiv.models import MIXERS, LanguageModel, LMConfig, SequenceClassifier
from jaxdiv.models.common import decay_mask

ALL = [*MIXERS, ("mamba", "attention"), ("s4d", "lightnet", "linear_attention")]
IDS = [m if isinstance(m, str) else "+".join(m) for m in ALL]


def tiny(mixer, **kw):
    n_layers = 2 if isinstance(mixer, str) else len(mixer)
    return LMConfig(vocab_size=17, d_model=16, n_layers=n_layers, mixer=mixer, **kw)


def tokens(seed=0, shape=(2, 12)):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 17, shape), jnp.int32)


@pytest.fixture(scope="module", params=ALL, ids=IDS)
def model(request):
    return LanguageModel(tiny(request.param), rngs=nnx.Rngs(0))


def test_shapes_and_intermediates(model):
    x = tokens()
    logits, inter = model(x, return_intermediates=True)
    chex.assert_shape(logits, (2, 12, 17))
    assert logits.dtype == jnp.float32
    assert list(inter) == [
        "embedding",
        "layer_0",
        *[f"layer_{i}" for i in range(1, len(model.backbone.layers))],
        "final_norm",
    ]
    for value in inter.values():
        chex.assert_shape(value, (2, 12, 16))


def test_causal(model):
    x = tokens()
    y = x.at[:, 7:].set((x[:, 7:] + 5) % 17)
    np.testing.assert_allclose(model(x)[:, :7], model(y)[:, :7], atol=1e-5)
    assert not np.allclose(model(x)[:, 7:], model(y)[:, 7:])


def test_step_by_step_decoding_equals_parallel(model):
    x = tokens(1, (2, 9))
    cache = model.init_cache(2, 9)
    step = nnx.jit(lambda m, t, c: m.step(t, c))
    outs = []
    for t in range(9):
        logits, cache = step(model, x[:, t], cache)
        outs.append(logits)
    np.testing.assert_allclose(jnp.stack(outs, 1), model(x), atol=2e-5, rtol=1e-4)


def test_padding_never_influences_real_positions(model):
    x = tokens(2)
    where = jnp.ones((2, 12), bool).at[1, 8:].set(False).at[0, :3].set(False)
    garbage = jnp.where(where, x, (x * 7 + 3) % 17)
    a, b = model(x, where=where), model(garbage, where=where)
    np.testing.assert_allclose(
        jnp.where(where[..., None], a, 0), jnp.where(where[..., None], b, 0), atol=1e-5
    )


def test_jit_traces_once_per_shape(model):
    graphdef, state = nnx.split(model)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    forward(state, tokens(3))
    forward(state, tokens(4))


@pytest.mark.parametrize("mixer", ALL, ids=IDS)
def test_bf16_compute_close_to_f32(mixer):
    f32 = LanguageModel(tiny(mixer), rngs=nnx.Rngs(0))
    bf16 = LanguageModel(tiny(mixer, dtype="bfloat16"), rngs=nnx.Rngs(0))
    a, b = f32(tokens()), bf16(tokens())
    chex.assert_tree_all_finite(b)
    assert b.dtype == jnp.float32
    np.testing.assert_allclose(jax.nn.softmax(b), jax.nn.softmax(a), atol=0.05)


def test_generate_greedy_matches_argmax_rollout():
    model = LanguageModel(tiny(("mamba", "attention")), rngs=nnx.Rngs(0))
    prompt = tokens(5, (2, 3))
    out = model.generate(prompt, 4, temperature=0, rng=jax.random.key(0))
    seq = prompt
    for _ in range(4):
        seq = jnp.concatenate(
            [seq, jnp.argmax(model(seq)[:, -1], -1)[:, None].astype(jnp.int32)], 1
        )
    np.testing.assert_array_equal(out, seq)
    sampled = model.generate(prompt, 4, top_k=2, rng=jax.random.key(1))
    chex.assert_shape(sampled, (2, 7))
    np.testing.assert_array_equal(sampled[:, :3], prompt)
    with pytest.raises(ValueError, match="`top_k` must be in"):
        model.generate(prompt, 2, top_k=99, rng=jax.random.key(0))


def test_sequence_classifier_pools_real_tokens_only():
    clf = SequenceClassifier(tiny("s4d"), 10, rngs=nnx.Rngs(0))
    x = tokens(6, (3, 64))
    where = jnp.ones((3, 64), bool).at[:, 50:].set(False)
    chex.assert_shape(clf(x), (3, 10))
    np.testing.assert_allclose(
        clf(x, where=where), clf(x.at[:, 50:].set(0), where=where), atol=1e-5
    )


def test_untied_head_and_decay_marks():
    model = LanguageModel(tiny("mamba", tie_embeddings=False), rngs=nnx.Rngs(0))
    chex.assert_shape(model(tokens()), (2, 12, 17))
    mask = decay_mask(nnx.state(model, nnx.Param))
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert not any(v for k, v in flat.items() if "A_log" in k or "scale" in k)
    assert any(v for k, v in flat.items() if "in_proj" in k)


def test_config_errors():
    with pytest.raises(ValueError, match=r"Unknown mixer\(s\) \['rnn'\]"):
        LMConfig(vocab_size=17, d_model=16, n_layers=2, mixer="rnn")
    with pytest.raises(ValueError, match="n_layers=3 names, got 2"):
        LMConfig(vocab_size=17, d_model=16, n_layers=3, mixer=("mamba", "s4"))
    with pytest.raises(ValueError, match="d_model=18 must be divisible by num_heads=4"):
        LMConfig(vocab_size=17, d_model=18, n_layers=1, num_heads=4)
    with pytest.raises(ValueError, match="vocab_size must be a positive int"):
        LMConfig(vocab_size=0, d_model=16, n_layers=1)
    with pytest.raises(ValueError, match="dtype must name a dtype"):
        LMConfig(vocab_size=17, d_model=16, n_layers=1, dtype="float17")
    with pytest.raises(ValueError, match="even"):
        LanguageModel(tiny("s4", s4_state=7), rngs=nnx.Rngs(0))
    model = LanguageModel(tiny("mamba"), rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="`tokens` must have an integer dtype"):
        model(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"`tokens` must have shape \[B, L\]"):
        model(jnp.zeros((3,), jnp.int32))


def test_scan_method_reaches_the_mamba_layers():
    config = LMConfig(vocab_size=17, d_model=16, n_layers=2, mixer=("mamba", "attention"))
    tokens = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) % 17
    logits = {}
    for method in ("sequential", "chunked"):
        model = LanguageModel(dataclasses.replace(config, scan_method=method), rngs=nnx.Rngs(0))
        assert model.backbone.layers[0].mixer.scan_method == method
        logits[method] = model(tokens)
    chex.assert_trees_all_close(logits["chunked"], logits["sequential"], atol=1e-5)
    with pytest.raises(ValueError, match="`scan_method` must be one of"):
        LanguageModel(dataclasses.replace(config, scan_method="fast"), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("remat", ["block", "mixer_only", "dots_saveable"])
def test_remat_policies_give_the_same_values_and_gradients(remat):
    config = LMConfig(vocab_size=17, d_model=16, n_layers=2, mixer=("mamba", "attention"))
    tokens = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) % 17

    def value_and_grad(config):
        graphdef, params = nnx.split(LanguageModel(config, rngs=nnx.Rngs(0)))
        loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(tokens) ** 2)  # noqa: E731
        return jax.jit(jax.value_and_grad(loss))(params)

    chex.assert_trees_all_close(
        value_and_grad(dataclasses.replace(config, remat=remat)), value_and_grad(config), atol=1e-6
    )


def test_unknown_remat_policy_is_named():
    with pytest.raises(ValueError, match="LMConfig.remat must be one of"):
        LMConfig(vocab_size=17, d_model=16, n_layers=1, remat="sometimes")
