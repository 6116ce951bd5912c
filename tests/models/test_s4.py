"""S4Block: against a float64 NumPy recurrence with dense discretised matrices, causality,
decoding, padding, bf16, tracing, gradients, parameter marks, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads
from scipy.special import erf

from jaxdiv.models.common import decay_mask
from jaxdiv.models.ssm.s4 import S4Block

H = 16


def make_block(seed: int = 0, **kw) -> S4Block:
    kw.setdefault("d_state", 8)
    return S4Block(H, rngs=nnx.Rngs(seed), **kw)


@nnx.jit
def apply(block, x, where=None):
    """The block's convolution form, jitted (eager dispatch is slow on CPU)."""
    return block(x, where=where)


@nnx.jit
def decode(block, x):
    """Feeds x [B, L, H] through ``step`` one token at a time (a scan over time)."""
    graphdef, state = nnx.split(block)

    def body(cache, x_t):
        y_t, cache = nnx.merge(graphdef, state).step(x_t, cache)
        return cache, y_t

    _, ys = jax.lax.scan(body, block.init_cache(x.shape[0], x.shape[1]), jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(ys, 0, 1)


def numpy_params(block: S4Block) -> dict:
    """The block's parameters as float64 / complex128 NumPy (the complex numbers they encode)."""
    f = lambda p: np.asarray(p[...], np.float64)
    pair = lambda p: f(p)[..., 0] + 1j * f(p)[..., 1]
    return {
        "Lambda": -np.exp(f(block.Lambda_real_log)) + 1j * f(block.Lambda_imag),
        "B": pair(block.B),
        "C": pair(block.C),
        "C_rev": pair(block.C_rev) if block.C_rev is not None else None,
        "P": pair(block.P) if block.P is not None else None,
        "dt": np.exp(f(block.log_dt)),
        "D": f(block.D),
        "W": f(block.out_proj.kernel),
        "b": f(block.out_proj.bias),
    }


def discretize(p: dict, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense Ā [N2, N2] and B̄ [N2] of channel h: bilinear of diag(Λ) − P Pᴴ, or ZOH of diag(Λ)."""
    lam, B, dt = p["Lambda"][h], p["B"][h], p["dt"][h]
    if p["P"] is None:
        return np.diag(np.exp(dt * lam)), (np.exp(dt * lam) - 1) / lam * B
    A = np.diag(lam) - np.outer(p["P"][h], p["P"][h].conj())
    eye = np.eye(len(lam))
    inv = np.linalg.inv(eye - dt / 2 * A)
    return inv @ (eye + dt / 2 * A), inv @ (dt * B)


def reference_s4(block: S4Block, x: np.ndarray) -> np.ndarray:
    """y = Linear(GELU(SSM(u) + D u)): recurrence x_t = Ā x_{t−1} + B̄ u_t, y_t = 2 Re(C x_t);
    the anti-causal term (bidirectional) from dense powers of Ā."""
    p = numpy_params(block)
    Bsz, L, _ = x.shape
    y = x * p["D"]
    for h in range(H):
        Abar, Bbar = discretize(p, h)
        state = np.zeros((Bsz, len(Bbar)), complex)
        for t in range(L):
            state = state @ Abar.T + x[:, t, h, None] * Bbar
            y[:, t, h] += 2 * (state @ p["C"][h]).real
        if p["C_rev"] is not None:
            powers = [np.linalg.matrix_power(Abar, k) @ Bbar for k in range(L)]
            K_rev = np.array([2 * (p["C_rev"][h] @ v).real for v in powers])
            for t in range(L):
                for s in range(t + 1, L):
                    y[:, t, h] += K_rev[s - t - 1] * x[:, s, h]
    g = 0.5 * y * (1 + erf(y / np.sqrt(2)))
    return g @ p["W"] + p["b"]


@pytest.fixture
def x():
    return jax.random.normal(jax.random.key(1), (2, 32, H))


@pytest.mark.parametrize(
    "mode, init, d_state",
    [("dplr", "legs", 8), ("dplr", "legs", 64), ("dplr", "lin", 8), ("diag", "legs", 8),
     ("diag", "lin", 8), ("diag", "inv", 16)],
)  # fmt: skip
def test_matches_numpy_reference(x, mode, init, d_state):
    block = make_block(mode=mode, init=init, d_state=d_state, dt_min=0.01, dt_max=0.5)
    ref = reference_s4(block, np.asarray(x, np.float64))
    chex.assert_trees_all_close(apply(block, x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["dplr", "diag"])
def test_bidirectional_matches_numpy_reference(mode):
    block = make_block(mode=mode, bidirectional=True, dt_min=0.01, dt_max=0.5)
    x = jax.random.normal(jax.random.key(2), (2, 12, H))
    ref = reference_s4(block, np.asarray(x, np.float64))
    chex.assert_trees_all_close(apply(block, x), ref, rtol=1e-4, atol=1e-4)


def test_shapes_and_defaults(x):
    block = S4Block(H, rngs=nnx.Rngs(0))
    assert (block.d_state, block.mode) == (64, "dplr")
    chex.assert_shape(block.Lambda_real_log[...], (H, 32))
    chex.assert_shape([block.B[...], block.P[...], block.C[...]], (H, 32, 2))
    chex.assert_shape([block.log_dt[...], block.D[...]], (H,))
    y = apply(block, x)
    chex.assert_shape(y, x.shape)
    assert y.dtype == jnp.float32
    chex.assert_shape(block.kernel(10), (H, 10))
    assert make_block(mode="diag").P is None


def test_initialisation_and_parameter_marks():
    block = make_block(param_dtype=jnp.bfloat16, dt_min=0.002, dt_max=0.05)
    p = numpy_params(block)
    np.testing.assert_allclose(p["Lambda"].real, -0.5, rtol=1e-6)  # HiPPO-LegS: Re λ = −½
    assert np.all(p["Lambda"].imag > 0)
    assert p["dt"].min() >= 0.002 * (1 - 1e-5) and p["dt"].max() <= 0.05 * (1 + 1e-5)
    lin = numpy_params(make_block(mode="diag", init="lin"))
    np.testing.assert_allclose(lin["Lambda"].imag[0], np.pi * np.arange(4), rtol=1e-6)
    params = nnx.state(block, nnx.Param)
    mask = decay_mask(params)
    for name in ("Lambda_real_log", "Lambda_imag", "B", "P", "log_dt", "D", "C"):
        assert params[name][...].dtype == jnp.float32
        assert mask[name] is (name == "C")
    assert block.out_proj.kernel[...].dtype == jnp.bfloat16
    assert mask["out_proj"]["kernel"] is True and mask["out_proj"]["bias"] is False


@pytest.mark.parametrize("mode", ["dplr", "diag"])
def test_causal(x, mode):
    block = make_block(mode=mode)
    x2 = x.at[:, 20:].set(jax.random.normal(jax.random.key(9), (2, 12, H)) * 5)
    chex.assert_trees_all_close(apply(block, x2)[:, :20], apply(block, x)[:, :20], atol=1e-5)


@pytest.mark.parametrize("mode, d_state", [("dplr", 8), ("dplr", 64), ("diag", 16)])
def test_step_matches_convolution(x, mode, d_state):
    block = make_block(mode=mode, d_state=d_state)
    assert block.init_cache(2, 32)["ssm"].dtype == jnp.complex64
    chex.assert_trees_all_close(decode(block, x), apply(block, x), atol=5e-5, rtol=5e-5)


def test_padding_invariance(x):
    block = make_block()
    where = jnp.arange(32)[None] < jnp.array([21, 32])[:, None]  # right padding
    garbage = jax.random.normal(jax.random.key(3), x.shape) * 100
    y1 = apply(block, x, where)
    y2 = apply(block, jnp.where(where[..., None], x, garbage), where)
    real = where[..., None]
    chex.assert_trees_all_close(jnp.where(real, y1, 0), jnp.where(real, y2, 0), atol=1e-5)
    # Left padding: zero inputs before the sequence, so real outputs equal the suffix alone.
    left = jnp.arange(32)[None] >= jnp.array([7, 0])[:, None]
    y3 = apply(block, jnp.where(left[..., None], x, garbage), left)
    chex.assert_trees_all_close(y3[0, 7:], apply(block, x[:1, 7:])[0], atol=1e-4, rtol=1e-4)


def test_bf16_close_to_f32(x):
    y32 = apply(make_block(), x)
    y16 = apply(make_block(dtype=jnp.bfloat16), x.astype(jnp.bfloat16))
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
    forward(state, x * 2.0)
    forward(state, x[:, :5])
    forward(state, x[:, :5] + 1.0)


@pytest.mark.parametrize("mode", ["dplr", "diag"])
def test_gradients(x, mode):
    block = make_block(mode=mode)

    def loss(model, x):
        return jnp.mean(model(x) ** 2)

    grads = nnx.jit(nnx.grad(loss))(block, x)
    chex.assert_tree_all_finite(grads)
    for name in ("Lambda_real_log", "Lambda_imag", "B", "C", "log_dt"):
        assert float(jnp.max(jnp.abs(grads[name][...]))) > 0
    graphdef, state = nnx.split(block)
    forward = jax.jit(lambda v: nnx.merge(graphdef, state)(v))
    check_grads(forward, (x[:1, :8],), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_errors():
    with pytest.raises(ValueError, match="`d_state` must be even"):
        S4Block(H, d_state=7, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="mode"):
        S4Block(H, mode="nplr", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="init"):
        S4Block(H, init="random", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dt_min"):
        S4Block(H, dt_min=0.5, dt_max=0.1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="d_model"):
        S4Block(0, rngs=nnx.Rngs(0))
    block = make_block()
    with pytest.raises(ValueError, match=r"`x` must have shape \[B, L, H\]"):
        block(jnp.ones((2, 5, 8)))
    with pytest.raises(TypeError, match="floating"):
        block(jnp.ones((2, 5, H), jnp.int32))
    with pytest.raises(ValueError, match="where"):
        block(jnp.ones((2, 5, H)), where=jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match=r"`x_t` must have shape \[B, H\]"):
        block.step(jnp.ones((2, 3)), block.init_cache(2, 4))
    bidirectional = make_block(bidirectional=True)
    with pytest.raises(ValueError, match="causal"):
        bidirectional.init_cache(2, 4)
