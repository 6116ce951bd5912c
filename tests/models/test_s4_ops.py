"""S4 / S4D pure ops against independent float64 NumPy and SciPy references (dense, loops)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.test_util import check_grads

from jaxdiv.models.ssm import s4_ops as s4_kernels
from jaxdiv.models.ssm.s4_ops import (
    causal_conv_fft,
    discretize_bilinear,
    discretize_dplr,
    discretize_zoh,
    hippo_legs,
    nplr_legs,
    s4d_inv_init,
    s4d_lin_init,
    s4d_real_init,
    ssm_kernel_diag,
    ssm_kernel_dplr,
    ssm_step,
)

# Jitted entry points (one compile per shape instead of op-by-op dispatch).
_diag = jax.jit(ssm_kernel_diag, static_argnums=4, static_argnames="discretization")
_dplr = jax.jit(ssm_kernel_dplr, static_argnums=5)
_conv = jax.jit(causal_conv_fft)
_disc_dplr = jax.jit(discretize_dplr)

# ---------------------------------------------------------------- references (float64 NumPy)


def _crandn(rng, *shape):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def _random_ssm(rng, H, N2, R=1):
    """Stable random DPLR / diagonal parameters: Re λ < 0, Δ ∈ [0.01, 0.5]."""
    Lambda = -rng.uniform(0.1, 1.0, (H, N2)) + 1j * rng.uniform(-5, 5, (H, N2))
    P = 0.4 * _crandn(rng, R, H, N2)
    return Lambda, P, _crandn(rng, H, N2), _crandn(rng, H, N2), np.log(rng.uniform(0.01, 0.5, H))


def _dense_kernel(A, B, C, dt, length, discretization):
    """K_l = 2 Re(C Ā^l B̄) for one channel, dense A [N2, N2], by repeated mat-vec products."""
    eye = np.eye(A.shape[0])
    if discretization == "zoh":
        Abar = scipy.linalg.expm(dt * A)
        Bbar = np.linalg.solve(A, (Abar - eye) @ B)
    else:
        Abar = np.linalg.solve(eye - dt / 2 * A, eye + dt / 2 * A)
        Bbar = np.linalg.solve(eye - dt / 2 * A, dt * B)
    K, x = [], Bbar
    for _ in range(length):
        K.append(2 * (C @ x).real)
        x = Abar @ x
    return np.array(K)


def _dplr_matrix(Lambda, P):
    """diag(Λ) − Σ_r P_r P_rᴴ for one channel: Lambda [N2], P [R, N2]."""
    return np.diag(Lambda) - sum(np.outer(p, p.conj()) for p in P)


def _ref_diag(A, B, C, log_dt, length, discretization):
    return np.stack(
        [
            _dense_kernel(np.diag(A[h]), B[h], C[h], np.exp(log_dt[h]), length, discretization)
            for h in range(A.shape[0])
        ]
    )


def _ref_dplr(Lambda, P, B, C, log_dt, length):
    return np.stack(
        [
            _dense_kernel(
                _dplr_matrix(Lambda[h], P[:, h]), B[h], C[h], np.exp(log_dt[h]), length, "bilinear"
            )
            for h in range(Lambda.shape[0])
        ]
    )


def _ref_conv(u, K, D):
    """Direct causal convolution loop: y[b, t, h] = Σ_{s ≤ t} K[h, s] u[b, t − s, h] + D u."""
    Bsz, L, H = u.shape
    y = np.zeros((Bsz, L, H))
    for t in range(L):
        for s in range(min(t + 1, K.shape[1])):
            y[:, t] += K[:, s] * u[:, t - s]
    return y + u * D


# ---------------------------------------------------------------- S4D kernel


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("length", [1, 37, 64])
def test_diag_kernel_matches_dense_powers(x64, discretization, length):
    rng = np.random.default_rng(length)
    Lambda, _, B, C, log_dt = _random_ssm(rng, 3, 5)
    K = _diag(Lambda, B, C, log_dt, length, discretization=discretization)
    chex.assert_shape(K, (3, length))
    assert K.dtype == jnp.float64
    ref = _ref_diag(Lambda, B, C, log_dt, length, discretization)
    chex.assert_trees_all_close(np.asarray(K), ref, atol=1e-11, rtol=1e-10)


@pytest.mark.parametrize("init", [s4d_lin_init, s4d_inv_init])
def test_diag_kernel_float32_long(init):
    """float32 at L = 1000 with the S4D inits and Δ ∈ [1e-3, 1e-1] vs the float64 reference."""
    rng = np.random.default_rng(1)
    H, N2, L = 4, 16, 1000
    A = init(H, N2)
    B, C = np.ones((H, N2)), _crandn(rng, H, N2) * np.sqrt(0.5)
    log_dt = np.linspace(np.log(1e-3), np.log(1e-1), H)
    K = _diag(
        jnp.asarray(A, jnp.complex64),
        B.astype(np.float32),
        jnp.asarray(C, jnp.complex64),
        log_dt.astype(np.float32),
        L,
    )
    assert K.dtype == jnp.float32
    ref = _ref_diag(A, B, C, log_dt, L, "zoh")
    err = np.max(np.abs(np.asarray(K) - ref), axis=1) / np.max(np.abs(ref), axis=1)
    assert np.all(err < 1e-4), err


# ---------------------------------------------------------------- S4 (DPLR) kernel


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("length", [1, 16, 33])
def test_dplr_kernel_matches_dense_powers(x64, rank, length):
    rng = np.random.default_rng(10 * rank + length)
    Lambda, P, B, C, log_dt = _random_ssm(rng, 3, 6, R=rank)
    P_arg = P[0] if rank == 1 else P  # rank 1 as [H, N2]
    K = _dplr(Lambda, P_arg, B, C, log_dt, length)
    chex.assert_shape(K, (3, length))
    chex.assert_trees_all_close(
        np.asarray(K), _ref_dplr(Lambda, P, B, C, log_dt, length), atol=1e-10, rtol=1e-9
    )


def test_dplr_kernel_chunked_nodes_match_reference_and_grads(x64, monkeypatch):
    """The lax.map path over chunks of roots of unity (with padding) agrees, values and grads."""
    rng = np.random.default_rng(13)
    args = _random_ssm(rng, 2, 6, R=1)
    weights = rng.standard_normal((2, 33))
    loss = lambda *a: jnp.sum(ssm_kernel_dplr(*a, 33) * weights)  # noqa: E731
    grads_whole = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(*args)
    monkeypatch.setattr(s4_kernels, "_CAUCHY_CHUNK_ELEMENTS", 60)  # 5 nodes per chunk, 7 chunks
    K = jax.jit(lambda *a: ssm_kernel_dplr(*a, 33))(*args)
    chex.assert_trees_all_close(np.asarray(K), _ref_dplr(*args, 33), atol=1e-10, rtol=1e-9)
    grads_chunked = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(*args)
    chex.assert_trees_all_close(grads_chunked, grads_whole, atol=1e-10, rtol=1e-9)


def test_dplr_kernel_float32_hippo_long():
    """HiPPO-LegS NPLR, float32, L = 1024 (even: includes the Nyquist node ω = −1)."""
    H, N, L = 3, 32, 1024
    Lambda, P, B, _ = nplr_legs(N)
    rng = np.random.default_rng(2)
    tile = lambda x: np.broadcast_to(x, (H, N // 2))  # noqa: E731
    Lambda, P, B = tile(Lambda), tile(P)[None], tile(B)
    C = _crandn(rng, H, N // 2) * np.sqrt(0.5)
    log_dt = np.log(np.array([1e-3, 1e-2, 1e-1]))
    c64 = lambda x: jnp.asarray(x, jnp.complex64)  # noqa: E731
    K = _dplr(c64(Lambda), c64(P[0]), c64(B), c64(C), log_dt.astype(np.float32), L)
    chex.assert_tree_all_finite(K)
    ref = _ref_dplr(Lambda, P, B, C, log_dt, L)
    err = np.max(np.abs(np.asarray(K) - ref), axis=1) / np.max(np.abs(ref), axis=1)
    assert np.all(err < 1e-3), err


def test_dplr_full_conjugate_system_reproduces_real_hippo_kernel(x64):
    """Passing all N eigenvalues (both halves) and C/2 gives the real HiPPO-LegS SSM's kernel."""
    N, L, dt = 8, 40, 0.1
    A, B_legs = hippo_legs(N)
    p = np.sqrt(np.arange(N) + 0.5)
    omega, V = np.linalg.eigh(-1j * (A + np.outer(p, p) + 0.5 * np.eye(N)))  # test's own eigh
    Lambda = -0.5 + 1j * omega
    C_real = np.random.default_rng(3).standard_normal(N)
    K = _dplr(
        Lambda[None],
        (V.conj().T @ p)[None],
        (V.conj().T @ B_legs)[None],
        (C_real @ V / 2)[None],
        np.log([dt]),
        L,
    )
    eye = np.eye(N)
    Abar = np.linalg.solve(eye - dt / 2 * A, eye + dt / 2 * A)
    Bbar = np.linalg.solve(eye - dt / 2 * A, dt * B_legs)
    ref = np.array([C_real @ np.linalg.matrix_power(Abar, l) @ Bbar for l in range(L)])
    chex.assert_trees_all_close(np.asarray(K)[0], ref, atol=1e-10, rtol=1e-9)


# ---------------------------------------------------------------- discretisation


def test_discretize_diag_matches_dense(x64):
    rng = np.random.default_rng(4)
    Lambda, _, B, _, log_dt = _random_ssm(rng, 2, 4)
    dt = np.exp(log_dt)
    for fn, name in ((discretize_zoh, "zoh"), (discretize_bilinear, "bilinear")):
        Abar, Bbar = fn(Lambda, B, log_dt)
        for h in range(2):
            A = np.diag(Lambda[h])
            eye = np.eye(4)
            if name == "zoh":
                ref_A = scipy.linalg.expm(dt[h] * A)
                ref_B = np.linalg.solve(A, (ref_A - eye) @ B[h])
            else:
                ref_A = np.linalg.solve(eye - dt[h] / 2 * A, eye + dt[h] / 2 * A)
                ref_B = np.linalg.solve(eye - dt[h] / 2 * A, dt[h] * B[h])
            chex.assert_trees_all_close(np.asarray(Abar[h]), np.diag(ref_A), atol=1e-12)
            chex.assert_trees_all_close(np.asarray(Bbar[h]), ref_B, atol=1e-12)


@pytest.mark.parametrize("rank", [1, 3])
def test_discretize_dplr_matches_dense(x64, rank):
    rng = np.random.default_rng(5)
    Lambda, P, B, _, log_dt = _random_ssm(rng, 2, 5, R=rank)
    Abar, Bbar = _disc_dplr(Lambda, P[0] if rank == 1 else P, B, log_dt)
    chex.assert_shape((Abar, Bbar), ((2, 5, 5), (2, 5)))
    for h in range(2):
        A, dt, eye = _dplr_matrix(Lambda[h], P[:, h]), np.exp(log_dt[h]), np.eye(5)
        ref_A = np.linalg.inv(eye - dt / 2 * A) @ (eye + dt / 2 * A)
        ref_B = np.linalg.inv(eye - dt / 2 * A) @ (dt * B[h])
        chex.assert_trees_all_close(np.asarray(Abar[h]), ref_A, atol=1e-12)
        chex.assert_trees_all_close(np.asarray(Bbar[h]), ref_B, atol=1e-12)


# ---------------------------------------------------------------- FFT convolution


@pytest.mark.parametrize("kernel_length", [9, 20, 31])
def test_causal_conv_fft_matches_direct_loop(x64, kernel_length):
    rng = np.random.default_rng(kernel_length)
    u, K, D = (
        rng.standard_normal((2, 20, 3)),
        rng.standard_normal((3, kernel_length)),
        rng.normal(size=3),
    )
    y = _conv(u, K, D)
    chex.assert_shape(y, (2, 20, 3))
    chex.assert_trees_all_close(np.asarray(y), _ref_conv(u, K, D), atol=1e-12)
    y_unbatched = _conv(u[0], K)  # [L, H], no D
    chex.assert_trees_all_close(np.asarray(y_unbatched), _ref_conv(u[:1], K, 0.0)[0], atol=1e-12)


def test_causal_conv_fft_dtypes():
    u = jnp.ones((1, 8, 2), jnp.bfloat16)
    y = _conv(u, jnp.ones((2, 8), jnp.bfloat16), jnp.ones(2, jnp.bfloat16))
    assert y.dtype == jnp.float32
    chex.assert_trees_all_close(y[0, :, 0], jnp.arange(1.0, 9.0) + 1)


# ---------------------------------------------------------------- recurrent mode (CNN = RNN)


@jax.jit
def _run_recurrence(u, Abar, Bbar, C):
    """Iterates ssm_step over the length axis of u [B, L, H] from x_0 = 0."""
    x0 = jnp.zeros((u.shape[0],) + Bbar.shape, Bbar.dtype)
    step = lambda x, u_t: ssm_step(x, u_t, Abar, Bbar, C)  # noqa: E731
    _, y = jax.lax.scan(step, x0, jnp.moveaxis(u, 1, 0))
    return jnp.moveaxis(y, 0, 1)  # [B, L, H]


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_diag_step_equals_convolution(x64, discretization):
    rng = np.random.default_rng(6)
    Lambda, _, B, C, log_dt = _random_ssm(rng, 3, 4)
    u = rng.standard_normal((2, 30, 3))
    disc = discretize_zoh if discretization == "zoh" else discretize_bilinear
    Abar, Bbar = disc(Lambda, B, log_dt)
    y_rnn = _run_recurrence(jnp.asarray(u), Abar, Bbar, jnp.asarray(C))
    K = _diag(Lambda, B, C, log_dt, 30, discretization=discretization)
    y_cnn = _conv(u, K)
    chex.assert_trees_all_close(y_rnn, y_cnn, atol=1e-11)
    chex.assert_trees_all_close(np.asarray(y_cnn), _ref_conv(u, np.asarray(K), 0.0), atol=1e-11)


@pytest.mark.parametrize("rank", [1, 2])
def test_dplr_step_equals_convolution(x64, rank):
    rng = np.random.default_rng(7)
    Lambda, P, B, C, log_dt = _random_ssm(rng, 3, 4, R=rank)
    u = rng.standard_normal((2, 32, 3))
    Abar, Bbar = _disc_dplr(Lambda, P, B, log_dt)
    y_rnn = _run_recurrence(jnp.asarray(u), Abar, Bbar, jnp.asarray(C))
    y_cnn = _conv(u, _dplr(Lambda, P, B, C, log_dt, 32))
    chex.assert_trees_all_close(y_rnn, y_cnn, atol=1e-10)


def test_dplr_step_equals_convolution_float32_hippo():
    H, N, L = 2, 16, 256
    Lambda, P, B, _ = nplr_legs(N)
    c64 = lambda x: jnp.asarray(np.broadcast_to(x, (H, N // 2)), jnp.complex64)  # noqa: E731
    Lambda, P, B = c64(Lambda), c64(P), c64(B)
    C = c64(_crandn(np.random.default_rng(8), H, N // 2))
    log_dt = jnp.log(jnp.array([0.01, 0.1]))
    u = jax.random.normal(jax.random.key(0), (1, L, H))
    Abar, Bbar = _disc_dplr(Lambda, P, B, log_dt)
    y_rnn = _run_recurrence(u, Abar, Bbar, C)
    y_cnn = _conv(u, _dplr(Lambda, P, B, C, log_dt, L))
    scale = float(jnp.max(jnp.abs(y_rnn)))
    chex.assert_trees_all_close(y_rnn / scale, y_cnn / scale, atol=2e-4)


# ---------------------------------------------------------------- initialisations


def test_hippo_legs_matches_definition():
    A, B = hippo_legs(6)
    for n in range(6):
        assert B[n] == pytest.approx(np.sqrt(2 * n + 1))
        for k in range(6):
            expected = -np.sqrt((2 * n + 1) * (2 * k + 1)) if n > k else -(n + 1.0) * (n == k)
            assert A[n, k] == pytest.approx(expected)


@pytest.mark.parametrize("N", [2, 4, 16, 64])
def test_nplr_legs_reconstructs_hippo(N):
    A, B_legs = hippo_legs(N)
    Lambda, P, B, V = nplr_legs(N)
    chex.assert_shape((Lambda, P, B, V), ((N // 2,), (N // 2,), (N // 2,), (N, N // 2)))
    assert Lambda.dtype == np.complex128
    np.testing.assert_allclose(Lambda.real, -0.5)
    assert np.all(Lambda.imag > 0)
    np.testing.assert_allclose(V.conj().T @ V, np.eye(N // 2), atol=1e-12)
    p = np.sqrt(np.arange(N) + 0.5)  # the S4 rank-1 correction for LegS
    normal = 2 * ((V * Lambda) @ V.conj().T).real  # V Λ Vᴴ + its conjugate half
    np.testing.assert_allclose(normal, A + np.outer(p, p), atol=1e-9)
    np.testing.assert_allclose(2 * (V @ P).real, p, atol=1e-9)  # P = Vᴴ p
    np.testing.assert_allclose(2 * (V @ B).real, B_legs, atol=1e-9)  # B = Vᴴ B_legs
    np.testing.assert_allclose(normal - np.outer(2 * (V @ P).real, 2 * (V @ P).real), A, atol=1e-9)


def test_s4d_inits_match_formulas():
    H, N2 = 3, 5
    lin, inv, real = s4d_lin_init(H, N2), s4d_inv_init(H, N2), s4d_real_init(H, N2)
    chex.assert_shape((lin, inv, real), ((H, N2),) * 3)
    for n in range(N2):
        assert lin[1, n] == pytest.approx(-0.5 + 1j * np.pi * n)
        assert inv[2, n] == pytest.approx(-0.5 + 1j * (2 * N2 / np.pi) * (2 * N2 / (2 * n + 1) - 1))
        assert real[0, n] == pytest.approx(-(n + 1.0))


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_diag_kernel_grads(x64, discretization):
    rng = np.random.default_rng(9)
    Lambda, _, B, C, log_dt = _random_ssm(rng, 2, 3)
    fn = lambda A, B, C, log_dt: _diag(  # noqa: E731
        A, B, C, log_dt, 12, discretization=discretization
    )
    check_grads(fn, (Lambda, B, C, log_dt), order=1, modes=["fwd", "rev"], eps=1e-6)


@pytest.mark.parametrize("rank", [1, 2])
def test_dplr_kernel_grads(x64, rank):
    rng = np.random.default_rng(11)
    Lambda, P, B, C, log_dt = _random_ssm(rng, 2, 3, R=rank)
    fn = jax.jit(lambda *a: _dplr(*a, 10))
    check_grads(fn, (Lambda, P, B, C, log_dt), order=1, modes=["rev"], eps=1e-6)


def test_causal_conv_fft_grads(x64):
    rng = np.random.default_rng(12)
    args = rng.standard_normal((2, 7, 3)), rng.standard_normal((3, 7)), rng.standard_normal(3)
    check_grads(_conv, args, order=1, modes=["rev"])


# ---------------------------------------------------------------- jit, dtypes, errors


def test_kernels_jit_once_and_float32():
    Lambda = jnp.asarray(s4d_lin_init(2, 4), jnp.complex64)
    ones = jnp.ones((2, 4), jnp.complex64)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def both(log_dt):
        return ssm_kernel_diag(Lambda, ones, ones, log_dt, 8), ssm_kernel_dplr(
            Lambda, ones, ones, ones, log_dt, 8
        )

    for scale in (1.0, 2.0):
        Kd, Kp = both(jnp.full((2,), -scale))
        assert Kd.dtype == Kp.dtype == jnp.float32
        chex.assert_tree_all_finite((Kd, Kp))


def test_error_messages():
    A, ones, log_dt = jnp.full((2, 4), -0.5 + 1j), jnp.ones((2, 4)), jnp.zeros(2)
    with pytest.raises(ValueError, match="`N` must be even"):
        nplr_legs(5)
    with pytest.raises(ValueError, match="`N` must be a positive int"):
        hippo_legs(0)
    with pytest.raises(ValueError, match="`N2` must be a positive int"):
        s4d_lin_init(2, 0)
    with pytest.raises(ValueError, match="`discretization` must be one of"):
        ssm_kernel_diag(A, ones, ones, log_dt, 8, discretization="euler")
    with pytest.raises(ValueError, match="`length` must be a positive int"):
        ssm_kernel_diag(A, ones, ones, log_dt, 0)
    with pytest.raises(ValueError, match=r"`B` must have shape \(2, 4\)"):
        ssm_kernel_diag(A, jnp.ones((2, 3)), ones, log_dt, 8)
    with pytest.raises(ValueError, match=r"`log_dt` must have shape \(2,\)"):
        ssm_kernel_diag(A, ones, ones, jnp.zeros(3), 8)
    with pytest.raises(ValueError, match=r"`A` must have rank 2"):
        ssm_kernel_diag(A[0], ones, ones, log_dt, 8)
    with pytest.raises(TypeError, match="`C` must have a floating or complex dtype"):
        ssm_kernel_diag(A, ones, jnp.ones((2, 4), jnp.int32), log_dt, 8)
    with pytest.raises(TypeError, match="`log_dt` must have a floating dtype"):
        ssm_kernel_diag(A, ones, ones, jnp.zeros(2, jnp.int32), 8)
    with pytest.raises(ValueError, match=r"`P` must have shape \(2, 4\) or \(R"):
        ssm_kernel_dplr(A, jnp.ones((2, 2, 3)), ones, ones, log_dt, 8)
    with pytest.raises(ValueError, match=r"`Abar` must have shape \[H, N2\]"):
        ssm_step(jnp.zeros((2, 4)), jnp.zeros(2), jnp.ones((2, 4, 3)), ones, ones)
    with pytest.raises(ValueError, match=r"`u_t` must have shape \(1, 2\)"):
        ssm_step(jnp.zeros((1, 2, 4)), jnp.zeros(2), A, ones, ones)
    with pytest.raises(ValueError, match=r"`K` must have shape \(3, L_K\)"):
        causal_conv_fft(jnp.ones((1, 8, 3)), jnp.ones((2, 8)))
    with pytest.raises(ValueError, match=r"`D` must have shape \(3,\)"):
        causal_conv_fft(jnp.ones((1, 8, 3)), jnp.ones((3, 8)), jnp.ones(2))
