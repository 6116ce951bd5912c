"""MambaBlock: against a float64 NumPy loop of the reference block (PyTorch layout, loaded with
load_torch_mamba), causality, decoding, padding, bf16, tracing, gradients, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from jaxdiv.models.common import decay_mask
from jaxdiv.models.ssm.mamba import MambaBlock, load_torch_mamba

D_MODEL, D_STATE, D_CONV, EXPAND = 16, 4, 4, 2
E = D_MODEL * EXPAND
R = 1  # ceil(16 / 16)


def torch_state_dict(seed: int, *, bias: bool = False, conv_bias: bool = True) -> dict:
    """Random weights in the reference (PyTorch) layout, of realistic scale."""
    g = np.random.default_rng(seed)
    sd = {
        "in_proj.weight": g.normal(0, D_MODEL**-0.5, (2 * E, D_MODEL)),
        "conv1d.weight": g.normal(0, 0.5, (E, 1, D_CONV)),
        "x_proj.weight": g.normal(0, E**-0.5, (R + 2 * D_STATE, E)),
        "dt_proj.weight": g.normal(0, 1.0, (E, R)),
        "dt_proj.bias": g.uniform(-5.0, -1.0, (E,)),
        "A_log": np.log(np.arange(1, D_STATE + 1))[None].repeat(E, 0)
        + g.normal(0, 0.1, (E, D_STATE)),
        "D": g.normal(1.0, 0.2, (E,)),
        "out_proj.weight": g.normal(0, E**-0.5, (D_MODEL, E)),
    }
    if conv_bias:
        sd["conv1d.bias"] = g.normal(0, 0.3, (E,))
    if bias:
        sd["in_proj.bias"] = g.normal(0, 0.3, (2 * E,))
        sd["out_proj.bias"] = g.normal(0, 0.3, (D_MODEL,))
    return sd


def reference_mamba(sd: dict, x: np.ndarray) -> np.ndarray:
    """The reference Mamba mixer (slow path), float64, looping over time; x [B, L, D]."""
    silu = lambda v: v / (1 + np.exp(-v))
    softplus = lambda v: np.log1p(np.exp(v))
    Bsz, L, _ = x.shape
    xz = x @ sd["in_proj.weight"].T + sd.get("in_proj.bias", 0.0)  # [B, L, 2E]
    u, z = xz[..., :E], xz[..., E:]
    w = sd["conv1d.weight"][:, 0, :]  # [E, K]
    padded = np.concatenate([np.zeros((Bsz, D_CONV - 1, E)), u], axis=1)
    conv = np.zeros_like(u)
    for t in range(L):
        for k in range(D_CONV):  # cross-correlation over the window ending at t
            conv[:, t] += w[:, k] * padded[:, t + k]
    u = silu(conv + sd.get("conv1d.bias", 0.0))
    x_dbl = u @ sd["x_proj.weight"].T  # [B, L, R + 2N]
    dt, Bm, Cm = x_dbl[..., :R], x_dbl[..., R : R + D_STATE], x_dbl[..., R + D_STATE :]
    delta = softplus(dt @ sd["dt_proj.weight"].T + sd["dt_proj.bias"])  # [B, L, E]
    A = -np.exp(sd["A_log"])  # [E, N]
    h = np.zeros((Bsz, E, D_STATE))
    y = np.zeros_like(u)
    for t in range(L):
        dA = np.exp(delta[:, t, :, None] * A[None])
        h = dA * h + delta[:, t, :, None] * Bm[:, t, None, :] * u[:, t, :, None]
        y[:, t] = np.einsum("ben,bn->be", h, Cm[:, t]) + sd["D"] * u[:, t]
    y = y * silu(z)
    return y @ sd["out_proj.weight"].T + sd.get("out_proj.bias", 0.0)


def make_block(seed: int = 0, **kw) -> MambaBlock:
    kw.setdefault("d_state", D_STATE)
    return MambaBlock(D_MODEL, rngs=nnx.Rngs(seed), **kw)


@nnx.jit
def apply(block, x, where=None):
    """The block's parallel form, jitted (eager dispatch is slow on CPU)."""
    return block(x, where=where)


@pytest.fixture
def x():
    return jax.random.normal(jax.random.key(1), (2, 24, D_MODEL))


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("method", ["sequential", "chunked"])
def test_matches_numpy_reference(bias, method):
    sd = torch_state_dict(3, bias=bias)
    block = load_torch_mamba(make_block(bias=bias, scan_method=method), sd)
    x = np.random.default_rng(4).normal(size=(2, 20, D_MODEL))
    y = apply(block, jnp.asarray(x, jnp.float32))
    chex.assert_trees_all_close(y, reference_mamba(sd, x), rtol=1e-5, atol=1e-5)


def test_no_conv_bias_matches_reference():
    sd = torch_state_dict(5, conv_bias=False)
    block = load_torch_mamba(make_block(conv_bias=False), sd)
    x = np.random.default_rng(6).normal(size=(1, 9, D_MODEL))
    chex.assert_trees_all_close(
        apply(block, jnp.asarray(x, jnp.float32)), reference_mamba(sd, x), rtol=1e-5, atol=1e-5
    )


def test_shapes_and_defaults(x):
    block = MambaBlock(D_MODEL, rngs=nnx.Rngs(0))
    assert block.d_inner == 32 and block.dt_rank == 1 and block.d_state == 16
    y = apply(block, x)
    chex.assert_shape(y, x.shape)
    assert y.dtype == jnp.float32
    chex.assert_shape(block.in_proj.kernel[...], (16, 64))
    chex.assert_shape(block.conv1d.kernel[...], (4, 32))
    chex.assert_shape(block.x_proj.kernel[...], (32, 1 + 32))
    chex.assert_shape(block.dt_proj.kernel[...], (1, 32))
    chex.assert_shape(block.out_proj.kernel[...], (32, 16))
    assert block.in_proj.bias is None and block.out_proj.bias is None


def test_initialisation_and_parameter_marks():
    block = make_block(param_dtype=jnp.bfloat16, dt_min=0.002, dt_max=0.05)
    np.testing.assert_allclose(
        -np.exp(np.asarray(block.A_log[...])), -np.arange(1, D_STATE + 1)[None].repeat(E, 0)
    )
    np.testing.assert_array_equal(np.asarray(block.D[...]), np.ones(E))
    dt = np.log1p(np.exp(np.asarray(block.dt_proj.bias[...], np.float64)))
    assert dt.min() >= 0.002 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    params = nnx.state(block, nnx.Param)
    mask = decay_mask(params)
    for path in (("A_log",), ("D",), ("dt_proj", "bias"), ("conv1d", "bias")):
        leaf = params
        flag = mask
        for p in path:
            leaf, flag = leaf[p], flag[p]
        assert flag is False
        if path[-1] != "bias" or path[0] == "dt_proj":
            assert leaf[...].dtype == jnp.float32
    assert mask["in_proj"]["kernel"] is True
    assert block.in_proj.kernel[...].dtype == jnp.bfloat16


def test_causal(x):
    block = make_block()
    y = apply(block, x)
    x2 = x.at[:, 10:].set(jax.random.normal(jax.random.key(9), (2, 14, D_MODEL)) * 5)
    chex.assert_trees_all_close(apply(block, x2)[:, :10], y[:, :10], atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["sequential", "associative", "chunked"])
def test_step_matches_parallel(x, method):
    block = load_torch_mamba(
        make_block(scan_method=method, bias=True), torch_state_dict(7, bias=True)
    )
    y = apply(block, x)
    cache = block.init_cache(2, x.shape[1])
    assert cache["ssm"].dtype == jnp.float32
    step = nnx.jit(lambda m, xt, c: m.step(xt, c))
    outs = []
    for t in range(x.shape[1]):
        yt, cache = step(block, x[:, t], cache)
        outs.append(yt)
    chex.assert_trees_all_close(jnp.stack(outs, 1), y, atol=2e-5, rtol=2e-5)


def test_padding_invariance(x):
    block = make_block()
    lengths = jnp.array([17, 24])
    where = jnp.arange(24)[None] < lengths[:, None]  # right padding
    garbage = jax.random.normal(jax.random.key(3), x.shape) * 100
    y1 = apply(block, x, where=where)
    y2 = apply(block, jnp.where(where[..., None], x, garbage), where=where)
    chex.assert_trees_all_close(
        jnp.where(where[..., None], y1, 0), jnp.where(where[..., None], y2, 0)
    )
    # Left padding is exactly inert: equals running on the real suffix alone.
    left = jnp.arange(24)[None] >= jnp.array([5, 0])[:, None]
    y3 = apply(block, jnp.where(left[..., None], x, garbage), where=left)
    chex.assert_trees_all_close(y3[0, 5:], apply(block, x[:1, 5:])[0], atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(y3[1], apply(block, x[1:])[0], atol=1e-5, rtol=1e-5)


def test_bf16_close_to_f32(x):
    y32 = apply(make_block(), x)
    y16 = apply(make_block(dtype=jnp.bfloat16), x)
    assert y16.dtype == jnp.bfloat16
    chex.assert_tree_all_finite(y16)
    scale = float(jnp.max(jnp.abs(y32)))
    chex.assert_trees_all_close(y16.astype(jnp.float32), y32, atol=0.05 * scale, rtol=0.05)


def test_traces_once_per_shape(x):
    graphdef, state = nnx.split(make_block())

    @jax.jit
    @chex.assert_max_traces(n=2)
    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    forward(state, x)
    forward(state, x + 1.0)
    forward(state, x[:, :5])
    forward(state, x[:, :5] * 2)


def test_gradients(x):
    block = make_block()

    def loss(model, x):
        return jnp.mean(model(x) ** 2)

    grads = nnx.jit(nnx.grad(loss))(block, x)
    chex.assert_tree_all_finite(grads)
    for g in (grads["A_log"], grads["D"], grads["dt_proj"]["bias"], grads["conv1d"]["kernel"]):
        assert float(jnp.max(jnp.abs(g[...]))) > 0
    small = x[:1, :6]
    graphdef, state = nnx.split(block)
    forward = jax.jit(lambda v: nnx.merge(graphdef, state)(v))
    check_grads(forward, (small,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_config_errors():
    with pytest.raises(ValueError, match="d_state"):
        MambaBlock(16, d_state=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dt_rank"):
        MambaBlock(16, dt_rank="big", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dt_min"):
        MambaBlock(16, dt_min=0.5, dt_max=0.1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="scan_method"):
        MambaBlock(16, scan_method="fast", rngs=nnx.Rngs(0))
    block = make_block()
    with pytest.raises(ValueError, match=r"`x` must have shape \[B, L, D\]"):
        block(jnp.ones((2, 5, 8)))
    with pytest.raises(TypeError, match="floating"):
        block(jnp.ones((2, 5, 16), jnp.int32))
    with pytest.raises(ValueError, match="where"):
        block(jnp.ones((2, 5, 16)), where=jnp.ones((2, 4), bool))


def test_load_errors():
    block = make_block()
    before = np.asarray(block.in_proj.kernel[...])
    sd = torch_state_dict(0)
    with pytest.raises(ValueError, match=r"missing keys \['D'\]"):
        load_torch_mamba(block, {k: v for k, v in sd.items() if k != "D"})
    with pytest.raises(ValueError, match=r"unknown keys \['in_proj.bias'\]"):
        load_torch_mamba(block, {**sd, "in_proj.bias": np.zeros(2 * E)})
    bad = {**sd, "conv1d.weight": np.zeros((E, D_CONV))}
    with pytest.raises(ValueError, match=r"conv1d.weight.*\(32, 1, 4\).*\(32, 4\)"):
        load_torch_mamba(block, bad)
    with pytest.raises(ValueError, match="x_proj.weight"):
        load_torch_mamba(block, {**sd, "x_proj.weight": sd["x_proj.weight"].T})
    np.testing.assert_array_equal(np.asarray(block.in_proj.kernel[...]), before)  # untouched
