"""ssd (Mamba-2 SSD): every method against a float64 NumPy loop of the recurrence, gradients,
bf16 inputs, decoding steps, errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxdiv.models.ssm.ssd import ssd, ssd_step

TOL = dict(atol=2e-5, rtol=2e-5)

# One compiled function per static configuration (method, chunk size, final state).
ssd_jit = jax.jit(ssd, static_argnames=("chunk_size", "return_final_state", "method"))


def ref_ssd(x, dt, A, B, C, D=None, S0=None):
    """S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_tᵀ, y_t = S_t C_t + D x_t, float64, per head."""
    x, dt, A, B, C = (np.asarray(v, np.float64) for v in (x, dt, A, B, C))
    b, L, h, p = x.shape
    g, n = B.shape[-2:]
    S = np.zeros((b, h, p, n)) if S0 is None else np.array(S0, np.float64)
    y = np.zeros(x.shape)
    for t in range(L):
        for i in range(h):
            grp = i // (h // g)
            S[:, i] = np.exp(dt[:, t, i] * A[i])[:, None, None] * S[:, i] + dt[
                :, t, i, None, None
            ] * (x[:, t, i, :, None] * B[:, t, grp, None, :])
            y[:, t, i] = np.einsum("bpn,bn->bp", S[:, i], C[:, t, grp])
    if D is not None:
        y = y + np.asarray(D, np.float64)[None, None, :, None] * x
    return y, S


def make_inputs(seed, *, b=2, L=100, h=4, p=3, g=1, n=5, dtype=jnp.float32):
    """Random inputs of realistic scale: Δ ~ softplus(N(−1, 1)), A ∈ [−2, −0.05] (NumPy, so no
    eager JAX op compiles)."""
    r = np.random.default_rng(seed)
    x = r.normal(size=(b, L, h, p))
    dt = np.log1p(np.exp(r.normal(size=(b, L, h)) - 1.0))
    A = -r.uniform(0.05, 2.0, size=(h,))
    B, C = r.normal(size=(2, b, L, g, n))
    D = r.normal(size=(h,))
    S0 = r.normal(size=(b, h, p, n))
    return tuple(jnp.asarray(v, dtype) for v in (x, dt, A, B, C, D, S0))


# (method, chunk size, groups): chunk 1 / 16 / 64 with L = 100 (16 and 64 leave a padded tail),
# one head per group pattern (g = 1, r = 4) and two groups of two heads (g = 2, r = 2).
CONFIGS = [
    ("recurrent", 64, 1),
    ("recurrent", 64, 2),
    ("chunked", 1, 2),
    ("chunked", 16, 1),
    ("chunked", 16, 2),
    ("chunked", 64, 2),
]


@pytest.mark.parametrize(
    ("method", "chunk", "g"), CONFIGS, ids=[f"{m}-{c}-g{g}" for m, c, g in CONFIGS]
)
def test_matches_numpy_loop(method, chunk, g):
    """Values and final state, with D and an initial state, L = 100 not a multiple of 16 or 64."""
    x, dt, A, B, C, D, S0 = make_inputs(0, g=g)
    y, S = ssd_jit(
        x,
        dt,
        A,
        B,
        C,
        D=D,
        initial_state=S0,
        chunk_size=chunk,
        method=method,
        return_final_state=True,
    )
    y_ref, S_ref = ref_ssd(x, dt, A, B, C, D, S0)
    chex.assert_shape(y, x.shape)
    chex.assert_shape(S, S0.shape)
    assert y.dtype == S.dtype == jnp.float32
    np.testing.assert_allclose(y, y_ref, **TOL)
    np.testing.assert_allclose(S, S_ref, **TOL)


@pytest.mark.parametrize(("method", "chunk"), [("recurrent", 64), ("chunked", 64)])
def test_defaults_no_skip_zero_state(method, chunk):
    """D=None and initial_state=None mean no skip and S_0 = 0; a short L (< chunk) works."""
    x, dt, A, B, C, *_ = make_inputs(1, L=7, g=2, h=6)
    y = ssd_jit(x, dt, A, B, C, chunk_size=chunk, method=method)
    np.testing.assert_allclose(y, ref_ssd(x, dt, A, B, C)[0], **TOL)


def test_chunked_is_matmuls_plus_a_scan_over_chunks():
    """The chunked jaxpr scans over the c = ⌈L / T⌉ chunks only, never over the L tokens."""
    x, dt, A, B, C, *_ = make_inputs(2, L=100)
    jaxpr = jax.make_jaxpr(functools.partial(ssd, chunk_size=16))(x, dt, A, B, C).jaxpr
    scans = [e.params["length"] for e in jaxpr.eqns if e.primitive.name == "scan"]
    dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert scans == [7], scans
    assert len(dots) >= 4


def test_chunked_gradients_equal_recurrent_and_stay_finite():
    """d/d(x, Δ, A, B, C, D, S_0) of a weighted sum of (y, S_L) agree between the methods, also
    with Δ A down to −2e4 per step (head 0 has A = −1e3; Δ = 20 on 10 steps): no inf/NaN (no
    exp of a positive number) in values or gradients."""
    x, dt, A, B, C, D, S0 = make_inputs(4, L=45, g=2)
    A = A.at[0].set(-1e3)
    dt = dt.at[:, 10:20].set(20.0)
    wy = jnp.asarray(np.random.default_rng(5).normal(size=x.shape), jnp.float32)
    wS = jnp.asarray(np.random.default_rng(6).normal(size=S0.shape), jnp.float32)

    def value_and_grads(method):
        def f(x, dt, A, B, C, D, S0):
            y, S = ssd(
                x,
                dt,
                A,
                B,
                C,
                D=D,
                initial_state=S0,
                chunk_size=16,
                method=method,
                return_final_state=True,
            )
            return jnp.sum(y * wy) + jnp.sum(S * wS)

        return jax.jit(jax.value_and_grad(f, argnums=tuple(range(7))))(x, dt, A, B, C, D, S0)

    v, g = value_and_grads("chunked")
    v_ref, g_ref = value_and_grads("recurrent")
    chex.assert_tree_all_finite((v, g))
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    chex.assert_trees_all_close(g, g_ref, atol=1e-4, rtol=1e-4)
    assert float(jnp.max(jnp.abs(g[1]))) > 0  # Δ gets a gradient


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("method", ["chunked", "recurrent"])
def test_check_grads(method):
    """Finite differences in float64 on small shapes (L = 6 with chunks of 4: a padded tail)."""
    x, dt, A, B, C, D, S0 = make_inputs(7, b=1, L=6, h=2, p=2, g=1, n=3, dtype=jnp.float64)

    def f(x, dt, A, B, C, D, S0):
        y, S = ssd(
            x,
            dt,
            A,
            B,
            C,
            D=D,
            initial_state=S0,
            chunk_size=4,
            method=method,
            return_final_state=True,
        )
        return y, S

    check_grads(jax.jit(f), (x, dt, A, B, C, D, S0), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_bf16_inputs_use_float32_math():
    """bf16 in: y in bf16, S_L in float32, both equal to the float32 computation on the same
    (bf16-rounded) numbers, so no bf16 arithmetic happens inside."""
    args = make_inputs(8, g=2, dtype=jnp.bfloat16)  # the float32 shapes of chunked-16-g2
    x, dt, A, B, C, D, S0 = args
    kw = dict(chunk_size=16, method="chunked", return_final_state=True)
    y, S = ssd_jit(x, dt, A, B, C, D=D, initial_state=S0, **kw)
    assert y.dtype == jnp.bfloat16 and S.dtype == jnp.float32
    f32 = [np.asarray(v).astype(np.float32) for v in args]  # the same numbers
    y32, S32 = ssd_jit(*f32[:5], D=f32[5], initial_state=f32[6], **kw)
    np.testing.assert_allclose(S, S32, atol=1e-6, rtol=1e-6)
    y, y32 = np.asarray(y).astype(np.float32), np.asarray(y32)
    np.testing.assert_array_equal(y, y32.astype(jnp.bfloat16).astype(np.float32))
    np.testing.assert_allclose(y, ref_ssd(*f32[:6], S0=f32[6])[0], atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("g", [1, 2], ids=["g1", "g2"])
def test_ssd_step_sequence_equals_op(g):
    x, dt, A, B, C, D, S0 = (np.asarray(v) for v in make_inputs(9, L=12, g=g))
    step = jax.jit(ssd_step)
    S, ys = S0, []
    for t in range(x.shape[1]):
        y_t, S = step(S, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        ys.append(y_t)
    y, S_op = ssd_jit(x, dt, A, B, C, D=D, initial_state=S0, chunk_size=4, return_final_state=True)
    np.testing.assert_allclose(np.stack(ys, 1), y, **TOL)
    np.testing.assert_allclose(S, S_op, **TOL)
    chex.assert_shape(S, S0.shape)


def test_traces_once_per_shape():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def fn(x, dt, A, B, C, D):
        return ssd(x, dt, A, B, C, D=D, chunk_size=8)

    for seed in (10, 11):
        x, dt, A, B, C, D, _ = make_inputs(seed, L=20)
        fn(x, dt, A, B, C, D)


def test_errors():
    x, dt, A, B, C, D, S0 = (np.asarray(v) for v in make_inputs(12, L=6, h=4, g=2))
    with pytest.raises(
        ValueError, match=r"`method` must be one of \['chunked', 'pallas', 'recurrent'\]"
    ):
        ssd(x, dt, A, B, C, method="pallas-ish")
    with pytest.raises(ValueError, match="`chunk_size` must be a positive int, got 0"):
        ssd(x, dt, A, B, C, chunk_size=0)
    with pytest.raises(TypeError, match="`x` must have a floating dtype"):
        ssd(x.astype(np.int32), dt, A, B, C)
    with pytest.raises(ValueError, match=r"`x` must have shape \[b, L, h, p\], got \(2, 6, 4\)"):
        ssd(x[..., 0], dt, A, B, C)
    with pytest.raises(
        ValueError, match=r"`dt` must have shape \(2, 6, 4\) \(\[b, L, h\]\), got \(2, 6, 3\)"
    ):
        ssd(x, dt[..., :3], A, B, C)
    with pytest.raises(ValueError, match=r"`A` must have shape \(4,\) \(\[h\]\), got \(4, 1\)"):
        ssd(x, dt, A[:, None], B, C)
    with pytest.raises(ValueError, match="`B` must have shape .* with g dividing h = 4, got"):
        ssd(x, dt, A, np.zeros((2, 6, 3, 5)), C)
    with pytest.raises(ValueError, match=r"`C` must have shape \(2, 6, 2, 5\)"):
        ssd(x, dt, A, B, C[..., :4])
    with pytest.raises(ValueError, match=r"`D` must have shape \(4,\) \(\[h\]\), got \(2,\)"):
        ssd(x, dt, A, B, C, D=D[:2])
    with pytest.raises(ValueError, match=r"`initial_state` must have shape \(2, 4, 3, 5\)"):
        ssd(x, dt, A, B, C, initial_state=S0[..., :2])
    with pytest.raises(ValueError, match=r"`state` must have shape \(2, 4, 3, 5\)"):
        ssd_step(S0[:, :2], x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
    with pytest.raises(ValueError, match=r"`B_t` must have shape"):
        ssd_step(S0, x[:, 0], dt[:, 0], A, B, C[:, 0])
