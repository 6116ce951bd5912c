"""Attention-family mixer blocks vs float64 NumPy references; the mixer-block protocol."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiv.models.attention.blocks import (
    AttentionBlock,
    GroupRMSNorm,
    LightNetBlock,
    LinearAttentionBlock,
    rope,
)

B, L, D, H = 2, 12, 16, 2
FACTORIES = {
    "attention": lambda **kw: AttentionBlock(D, num_heads=H, **kw),
    "attention_norope": lambda **kw: AttentionBlock(D, num_heads=H, rope=False, **kw),
    "linear_none": lambda **kw: LinearAttentionBlock(
        D, num_heads=H, decay="none", feature_map="relu", chunk_size=4, **kw
    ),
    "linear_head": lambda **kw: LinearAttentionBlock(D, num_heads=H, chunk_size=4, **kw),
    "linear_channel": lambda **kw: LinearAttentionBlock(
        D, num_heads=H, decay="channel", feature_map="identity", chunk_size=4, **kw
    ),
    "linear_plain": lambda **kw: LinearAttentionBlock(
        D, num_heads=H, feature_map="silu", normalize_output=False, chunk_size=5, **kw
    ),
    "lightnet": lambda **kw: LightNetBlock(D, num_heads=H, chunk_size=4, **kw),
}
MAIN = ["attention", "linear_head", "linear_channel", "lightnet"]


def make(name, seed=0, **kw):
    return FACTORIES[name](rngs=nnx.Rngs(seed), **kw)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x, where):
    return nnx.merge(graphdef, state)(x, where=where)


def apply(block, x, where=None):
    return _apply(*nnx.split(block), x, where)


def decode(block, x):
    """Feeds x [B, L, D] token by token through a jitted ``step``; checks it traces once."""
    graphdef, state = nnx.split(block)
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(state, x_t, cache):
        return nnx.merge(graphdef, state).step(x_t, cache)

    cache = block.init_cache(x.shape[0], x.shape[1])
    ys = []
    for t in range(x.shape[1]):
        y, cache = step(state, x[:, t], cache)
        ys.append(y)
    return jnp.stack(ys, axis=1)


def inputs(seed=0, length=L):
    return jax.random.normal(jax.random.key(seed), (B, length, D))


def padding_mask():
    where = np.ones((B, L), bool)
    where[0, :3] = False  # leading pads
    where[1, 5] = False  # a pad in the middle
    where[1, -3:] = False  # trailing pads
    return jnp.asarray(where)


# ---------------------------------------------------------------- float64 NumPy references


def weights(linear):
    return np.asarray(linear.kernel[...], np.float64)


def np_rope(x, base=10000.0):
    """Rotates pairs (i, i + d/2) by t·base^{-2i/d} at position t (x [B, L, H, d])."""
    d = x.shape[-1]
    theta = base ** (-np.arange(d // 2) * 2.0 / d)
    angle = np.arange(x.shape[1])[:, None] * theta[None, :]  # [L, d/2]
    cos, sin = np.cos(angle)[None, :, None], np.sin(angle)[None, :, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def np_rms(x, groups, scale, eps=1e-6):
    xg = x.reshape(*x.shape[:-1], groups, -1)
    xg = xg / np.sqrt(np.mean(xg**2, axis=-1, keepdims=True) + eps)
    return xg.reshape(x.shape) * scale


def heads(x, w, h):
    y = x @ w
    return y.reshape(*y.shape[:-1], h, -1)


def ref_attention(block, x, where):
    q, k, v = (
        heads(x, weights(p), block.num_heads) for p in (block.q_proj, block.k_proj, block.v_proj)
    )
    if block.rope:
        q, k = np_rope(q), np_rope(k)
    o = np.zeros(v.shape)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            keys = [s for s in range(t + 1) if where[b, s]]
            if not keys:
                continue
            logits = np.einsum("hd,shd->hs", q[b, t], k[b, keys]) / np.sqrt(q.shape[-1])
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            o[b, t] = np.einsum("hs,shd->hd", p, v[b, keys])
    return o.reshape(*x.shape[:2], -1) @ weights(block.o_proj)


NP_FEATURES = {
    "identity": lambda x: x,
    "elu1": lambda x: np.where(x > 0, x + 1.0, np.exp(x)),
    "relu": lambda x: np.maximum(x, 0.0),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
}


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def ref_linear(block, x, where):
    h, phi = block.num_heads, NP_FEATURES[block.feature_map]
    q, k = phi(heads(x, weights(block.q_proj), h)), phi(heads(x, weights(block.k_proj), h))
    v = heads(x, weights(block.v_proj), h)
    d = q.shape[-1]
    if block.decay == "head":
        alpha = np.exp(np_log_sigmoid(np.asarray(block.decay_logit[...], np.float64)))
        alpha = np.broadcast_to(alpha[:, None], (h, d))
    o = np.zeros(v.shape)
    for b in range(x.shape[0]):
        S = np.zeros((h, d, d))
        for t in range(x.shape[1]):
            if where[b, t]:
                if block.decay == "head":
                    S = alpha[..., None] * S
                elif block.decay == "channel":
                    logits = x[b, t] @ weights(block.gate_down) @ weights(block.gate_up)
                    logits = logits + np.asarray(block.gate_bias[...], np.float64)
                    S = np.exp(np_log_sigmoid(logits) / 16.0).reshape(h, d)[..., None] * S
                S = S + np.einsum("hk,hv->hkv", k[b, t], v[b, t])
            o[b, t] = np.einsum("hk,hkv->hv", q[b, t] / np.sqrt(d), S)
    o = o.reshape(*x.shape[:2], -1)
    if block.normalize_output:
        o = np_rms(o, h, np.asarray(block.norm.scale[...], np.float64))
    return o @ weights(block.o_proj)


def ref_lightnet(block, x, where):
    h = block.num_heads
    q = heads(x, weights(block.q_proj), h)
    q = q / (1.0 + np.exp(-q))
    k, v = heads(x, weights(block.k_proj), h), heads(x, weights(block.v_proj), h)
    d = q.shape[-1]
    o = np.zeros(v.shape)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            keys = [s for s in range(t + 1) if where[b, s]]
            if not keys:
                continue
            ek = np.exp(k[b, keys])  # [S, H, K]
            M = np.einsum("shk,shv->hkv", ek, v[b, keys])
            o[b, t] = np.einsum("hk,hkv->hv", q[b, t] / np.sqrt(d), M / ek.sum(0)[..., None])
    gate = x @ weights(block.gate_down) @ weights(block.gate_up)
    o = np_rms(o.reshape(*x.shape[:2], -1), 1, np.asarray(block.norm.scale[...], np.float64))
    return (o * gate / (1.0 + np.exp(-gate))) @ weights(block.o_proj)


def reference(block, x, where=None):
    x = np.asarray(x, np.float64)
    where = np.ones(x.shape[:2], bool) if where is None else np.asarray(where)
    if isinstance(block, AttentionBlock):
        return ref_attention(block, x, where)
    if isinstance(block, LinearAttentionBlock):
        return ref_linear(block, x, where)
    return ref_lightnet(block, x, where)


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("name", list(FACTORIES))
def test_matches_float64_reference(name):
    block, x = make(name), inputs()
    y = apply(block, x)
    chex.assert_shape(y, (B, L, D))
    assert y.dtype == jnp.float32
    chex.assert_trees_all_close(y, reference(block, x).astype(np.float32), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_step_matches_parallel(name):
    block, x = make(name, seed=1), inputs(1)
    y_steps = decode(block, x)
    chex.assert_trees_all_close(y_steps, apply(block, x), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", MAIN)
def test_padding_matches_reference_and_is_invariant(name):
    block, where = make(name, seed=2), padding_mask()
    x = inputs(2)
    garbage = jax.random.normal(jax.random.key(9), x.shape) * 100.0
    y = apply(block, x, where)
    y_garbage = apply(block, jnp.where(where[..., None], x, garbage), where)
    real = np.asarray(where)
    # padded content never reaches real positions (bitwise up to reduction order)
    chex.assert_trees_all_close(y[real], y_garbage[real], atol=1e-6, rtol=1e-6)
    chex.assert_tree_all_finite(y_garbage)
    ref = reference(block, x, where)
    chex.assert_trees_all_close(y[real], ref[real].astype(np.float32), atol=1e-4, rtol=1e-4)
    # a left-padded row equals the unpadded row (RoPE is relative; pads leave the state alone)
    chex.assert_trees_all_close(y[0, 3:], apply(block, x[:, 3:])[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", MAIN)
def test_causal(name):
    block, x = make(name, seed=3), inputs(3)
    x_changed = x.at[:, 7:].set(jax.random.normal(jax.random.key(4), (B, L - 7, D)))
    y, y_changed = apply(block, x), apply(block, x_changed)
    chex.assert_trees_all_close(y[:, :7], y_changed[:, :7], atol=1e-6, rtol=1e-6)
    assert not np.allclose(y[:, 7:], y_changed[:, 7:])


@pytest.mark.parametrize("name", MAIN)
def test_bf16_close_to_float32(name):
    x = inputs(5)
    y32 = apply(make(name, seed=5), x)
    y16 = apply(make(name, seed=5, dtype=jnp.bfloat16), x)
    assert y16.dtype == jnp.bfloat16
    chex.assert_tree_all_finite(y16)
    scale = float(jnp.max(jnp.abs(y32)))
    chex.assert_trees_all_close(y16.astype(jnp.float32), y32, atol=0.05 * scale, rtol=0.05)
    y_in16 = apply(make(name, seed=5), x.astype(jnp.bfloat16))  # bf16 input keeps its dtype
    assert y_in16.dtype == jnp.bfloat16


@pytest.mark.parametrize("name", MAIN)
def test_jit_traces_once(name):
    graphdef, state = nnx.split(make(name))
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(state, x, where):
        return nnx.merge(graphdef, state)(x, where=where)

    for seed in (0, 1):
        forward(state, inputs(seed), padding_mask())


@pytest.mark.parametrize("name", MAIN)
def test_gradients_finite(name):
    block, where = make(name, seed=6), padding_mask()
    x = jnp.where(where[..., None], inputs(6), jnp.nan)  # NaN at pads must not leak into grads

    @jax.jit
    def loss(state, x):
        y = nnx.merge(graphdef, state)(x, where=where)
        return jnp.sum(jnp.where(where[..., None], y, 0.0) ** 2)

    graphdef, state = nnx.split(block)
    grads = jax.grad(loss, argnums=(0, 1))(state, x)
    chex.assert_tree_all_finite(grads[0])
    chex.assert_tree_all_finite(jnp.where(where[..., None], grads[1], 0.0))
    assert float(jnp.abs(jnp.where(where[..., None], grads[1], 0.0)).sum()) > 0.0


@pytest.mark.parametrize("block_cls", [AttentionBlock, LinearAttentionBlock, LightNetBlock])
def test_defaults_and_parameter_marks(block_cls):
    block = block_cls(16, rngs=nnx.Rngs(0))
    assert block.num_heads == 1
    chex.assert_shape(apply(block, jnp.ones((1, 3, 16))), (1, 3, 16))
    params = nnx.state(block, nnx.Param)
    for path, leaf in jax.tree.leaves_with_path(params, is_leaf=lambda v: isinstance(v, nnx.Param)):
        meta = leaf.get_metadata()
        assert len(meta["logical_axes"]) == leaf[...].ndim, path
        if leaf[...].ndim == 1:  # norm scales, biases and decay logits take no weight decay
            assert meta["no_decay"], path
    assert nnx.eval_shape(lambda: block_cls(192, rngs=nnx.Rngs(0))).num_heads == 3
    # 200 // 64 = 3 does not divide 200: the largest divisor below it
    assert nnx.eval_shape(lambda: block_cls(200, rngs=nnx.Rngs(0))).num_heads == 2


def test_head_decay_starts_at_retnet_gammas():
    block = LinearAttentionBlock(16, num_heads=4, rngs=nnx.Rngs(0))
    gamma = jax.nn.sigmoid(block.decay_logit[...])
    chex.assert_trees_all_close(gamma, 1.0 - 2.0 ** -(5.0 + np.arange(4)), rtol=1e-6)


def test_rope_matches_reference_and_is_relative():
    x = jax.random.normal(jax.random.key(0), (2, 9, 3, 6))
    rotate = jax.jit(lambda x: rope(x, jnp.arange(9)))
    chex.assert_trees_all_close(rotate(x), np_rope(np.asarray(x, np.float64)), atol=1e-5)
    # the same q and k at every position: rope(q)_t · rope(k)_s depends only on t − s
    q, k = (jnp.broadcast_to(x[i, :1], (1, 9, 3, 6)) for i in (0, 1))
    dots = np.asarray(jnp.einsum("bthd,bshd->ts", rotate(q), rotate(k)))
    for offset in range(-8, 9):
        diagonal = np.diagonal(dots, offset)
        np.testing.assert_allclose(diagonal, diagonal[0], rtol=1e-4, atol=1e-5)


def test_group_rms_norm_gate():
    norm = GroupRMSNorm(4, groups=2, eps=0.0)
    x, gate = jnp.array([[3.0, 4.0, 1.0, -1.0]]), jnp.full((1, 4), 2.0)
    expected = np.array([3.0, 4.0, 1.0, -1.0]) / np.array([12.5, 12.5, 1.0, 1.0]) ** 0.5
    expected = expected * 2.0 / (1.0 + np.exp(-2.0))
    chex.assert_trees_all_close(norm(x, gate)[0], expected.astype(np.float32), rtol=1e-6)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda r: AttentionBlock(16, num_heads=3, rngs=r), "divisible by `num_heads`"),
        (lambda r: LinearAttentionBlock(10, num_heads=4, rngs=r), "divisible by `num_heads`"),
        (lambda r: LightNetBlock(16, num_heads=5, rngs=r), "divisible by `num_heads`"),
        (lambda r: AttentionBlock(16, num_heads=0, rngs=r), "`num_heads` must be a positive"),
        (lambda r: AttentionBlock(16, num_heads=2, head_dim=5, rngs=r), "even `head_dim`"),
        (lambda r: AttentionBlock(16, rope_base=-1.0, rngs=r), "rope_base"),
        (lambda r: LinearAttentionBlock(16, feature_map="exp", rngs=r), "`feature_map` must be"),
        (lambda r: LinearAttentionBlock(16, decay="global", rngs=r), "`decay` must be one of"),
        (lambda r: LinearAttentionBlock(16, chunk_size=0, rngs=r), "`chunk_size` must be"),
        (lambda r: LightNetBlock(16, gate_rank=0, rngs=r), "`gate_rank` must be"),
        (lambda r: LightNetBlock(0, rngs=r), "`d_model` must be a positive"),
    ],
)
def test_config_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build(nnx.Rngs(0))


@pytest.mark.parametrize("name", MAIN)
def test_input_errors(name):
    block = make(name)
    with pytest.raises(ValueError, match=r"`x` must have shape \[B, L, D\] with D = 16"):
        block(jnp.ones((2, 3, 8)))
    with pytest.raises(ValueError, match=r"`where` must have shape \(2, 3\)"):
        block(jnp.ones((2, 3, 16)), where=jnp.ones((2, 4), bool))
    with pytest.raises(TypeError, match="floating dtype"):
        block(jnp.ones((2, 3, 16), jnp.int32))
    with pytest.raises(ValueError, match=r"`x` must have shape \[B, D\]"):
        block.step(jnp.ones((2, 3, 16)), block.init_cache(2, 3))
