"""CS divergence, conditional CS divergence and CS-QMI vs float64 NumPy transcriptions."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.special import logsumexp

from jaxdiv._cauchy_schwarz import (
    cauchy_schwarz_divergence,
    conditional_cs_divergence,
    cs_mutual_information,
)


def np_gram(a, b, sigma):
    """Dense Gaussian Gram matrix from explicit pairwise differences (no expansion)."""
    diff = a[:, None, :] - b[None, :, :]
    return np.exp(-np.sum(diff**2, axis=-1) / (2.0 * sigma**2))


def np_cs_divergence(x, y, sigma):
    return (
        np.log(np_gram(x, x, sigma).sum())
        + np.log(np_gram(y, y, sigma).sum())
        - 2.0 * np.log(np_gram(x, y, sigma).sum())
    )


def np_conditional_cs(x, y, y_pred, sigma):
    """Transcription of the CS-IB reference `CS_Div` (loss_cs.py) in NumPy."""
    k = np_gram(x, x, sigma)
    l1 = np_gram(y, y, sigma)
    l2 = np_gram(y_pred, y_pred, sigma)
    l21 = np_gram(y_pred, y, sigma)
    d = (k**2).sum(-1)
    self1 = ((k * l1).sum(-1) / d).sum(0)
    self2 = ((k * l2).sum(-1) / d).sum(0)
    cross = ((k * l21).sum(-1) / d).sum(0)
    return -2.0 * np.log2(cross) + np.log2(self1) + np.log2(self2)


def np_cs_qmi(x, z, sigma):
    """Transcription of the CS-IB reference `CS_QMI` with a given sigma."""
    n = x.shape[0]
    kx = np_gram(x, x, sigma)
    kz = np_gram(z, z, sigma)
    self1 = np.trace(kx @ kz.T) / n**2
    self2 = kx.sum() * kz.sum() / n**4
    ones = np.ones(n)
    cross = ones @ kx.T @ kz @ ones / n**3
    return -2.0 * np.log2(cross) + np.log2(self1) + np.log2(self2)


def np_cs_qmi_normalized(x, z, sigma):
    return np_cs_qmi(x, z, sigma) / (
        np.sqrt(np_cs_qmi(x, x, sigma)) * np.sqrt(np_cs_qmi(z, z, sigma))
    )


def samples(seed, *shapes, scale=1.0):
    rs = np.random.default_rng(seed)
    return [scale * rs.normal(size=s) for s in shapes]


def f32(*arrays):
    """float32 copies, plus the float64 values of those float32 numbers (for the oracle)."""
    cast = [np.asarray(a, np.float32) for a in arrays]
    return [jnp.asarray(a) for a in cast], [a.astype(np.float64) for a in cast]


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
def test_cs_divergence_matches_numpy(sigma):
    (x, y), (x64_, y64_) = f32(*samples(0, (12, 3), (9, 3)))
    y = y + 0.7
    y64_ = y64_ + np.float32(0.7)
    got = cauchy_schwarz_divergence(x, y, sigma=sigma)
    chex.assert_shape(got, ())
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(
        float(got), np_cs_divergence(x64_, y64_, sigma), rtol=1e-4, atol=1e-5
    )


def test_cs_divergence_float64(x64):
    x, y = samples(1, (10, 2), (7, 2))
    got = cauchy_schwarz_divergence(jnp.asarray(x), jnp.asarray(y + 0.5), sigma=0.8)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(float(got), np_cs_divergence(x, y + 0.5, 0.8), rtol=1e-10)


def test_cs_divergence_identities():
    x, y = (jnp.asarray(a, jnp.float32) for a in samples(2, (16, 4), (11, 4)))
    assert abs(float(cauchy_schwarz_divergence(x, x))) < 1e-5
    assert abs(float(cauchy_schwarz_divergence(x, x[::-1]))) < 1e-5  # permutation
    chex.assert_trees_all_close(
        cauchy_schwarz_divergence(x, y), cauchy_schwarz_divergence(y, x), rtol=1e-5
    )
    for shift in (0.0, 0.5, 2.0):
        assert float(cauchy_schwarz_divergence(x, y + shift)) >= -1e-6


def test_cs_divergence_small_sigma_stays_finite():
    """With sigma = 0.05 every cross-kernel value underflows; the log-space path stays exact."""
    x, y = samples(3, (6, 2), (5, 2))
    y = y + 3.0
    sigma = 0.05
    f = jax.jit(lambda a, b: cauchy_schwarz_divergence(a, b, sigma=sigma))
    xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    got = f(xj, yj)

    def log_sum_gram(a, b):
        d = np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
        return logsumexp(-d / (2 * sigma**2))

    xf, yf = x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
    want = log_sum_gram(xf, xf) + log_sum_gram(yf, yf) - 2 * log_sum_gram(xf, yf)
    assert np.isfinite(want) and want > 100
    np.testing.assert_allclose(float(got), want, rtol=1e-4)
    chex.assert_tree_all_finite(jax.jit(jax.grad(f, argnums=(0, 1)))(xj, yj))


def test_cs_divergence_gradients(x64):
    x, y = samples(4, (5, 2), (4, 2))
    f = jax.jit(lambda a, b: cauchy_schwarz_divergence(a, b, sigma=1.3))
    check_grads(f, (jnp.asarray(x), jnp.asarray(y + 0.3)), order=1, modes=("rev",))
    check_grads(
        jax.jit(lambda s: cauchy_schwarz_divergence(x, y, sigma=s)), (1.1,), order=1, modes=("rev",)
    )
    # identical samples: value 0 and finite gradients through the clamped diagonal distances
    chex.assert_tree_all_finite(jax.grad(f, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(x)))


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.0])
def test_conditional_cs_matches_reference_transcription(sigma):
    (x, y, y_pred), (x64_, y64_, p64_) = f32(*samples(5, (10, 3), (10, 1), (10, 1)))
    got = conditional_cs_divergence(x, y, y_pred, sigma=sigma)
    chex.assert_shape(got, ())
    np.testing.assert_allclose(
        float(got), np_conditional_cs(x64_, y64_, p64_, sigma), rtol=1e-4, atol=1e-5
    )


def test_conditional_cs_float64_and_zero_at_perfect_prediction(x64):
    x, y, y_pred = samples(6, (8, 2), (8, 2), (8, 2))
    got = conditional_cs_divergence(jnp.asarray(x), jnp.asarray(y), jnp.asarray(y_pred), sigma=0.9)
    np.testing.assert_allclose(float(got), np_conditional_cs(x, y, y_pred, 0.9), rtol=1e-10)
    zero = conditional_cs_divergence(jnp.asarray(x), jnp.asarray(y), jnp.asarray(y))
    assert abs(float(zero)) < 1e-12


def test_conditional_cs_gradients(x64):
    x, y, y_pred = samples(7, (5, 2), (5, 1), (5, 1))
    check_grads(
        jax.jit(lambda a, b, c: conditional_cs_divergence(a, b, c, sigma=1.2)),
        (jnp.asarray(x), jnp.asarray(y), jnp.asarray(y_pred)),
        order=1,
        modes=("rev",),
    )


def test_conditional_cs_small_sigma_stays_finite():
    x, y, y_pred = (jnp.asarray(a, jnp.float32) for a in samples(8, (6, 2), (6, 1), (6, 1)))
    f = jax.jit(lambda p: conditional_cs_divergence(x, y, p, sigma=0.02))
    chex.assert_tree_all_finite(f(y_pred))
    chex.assert_tree_all_finite(jax.jit(jax.grad(f))(y_pred))


@pytest.mark.parametrize("sigma", [0.8, 1.0, 2.5])
def test_cs_qmi_matches_reference_transcription(sigma):
    x, noise = samples(9, (12, 3), (12, 2))
    z = np.concatenate([x[:, :1], x[:, 1:2] ** 2], axis=1) + 0.3 * noise
    (xj, zj), (xf, zf) = f32(x, z)
    got = cs_mutual_information(xj, zj, sigma=sigma)
    np.testing.assert_allclose(float(got), np_cs_qmi(xf, zf, sigma), rtol=1e-4, atol=1e-5)
    got_n = cs_mutual_information(xj, zj, sigma=sigma, normalized=True)
    np.testing.assert_allclose(float(got_n), np_cs_qmi_normalized(xf, zf, sigma), rtol=1e-4)


def test_cs_qmi_float64_and_identities(x64):
    x, z = samples(10, (9, 2), (9, 3))
    xj, zj = jnp.asarray(x), jnp.asarray(z)
    np.testing.assert_allclose(
        float(cs_mutual_information(xj, zj)), np_cs_qmi(x, z, 1.0), rtol=1e-10
    )
    np.testing.assert_allclose(
        float(cs_mutual_information(xj, zj, normalized=True)),
        np_cs_qmi_normalized(x, z, 1.0),
        rtol=1e-10,
    )
    chex.assert_trees_all_close(cs_mutual_information(xj, zj), cs_mutual_information(zj, xj))
    assert float(cs_mutual_information(xj, zj)) >= 0.0
    np.testing.assert_allclose(
        float(cs_mutual_information(xj, xj, normalized=True)), 1.0, rtol=1e-12
    )


def test_cs_qmi_gradients(x64):
    x, z = samples(11, (5, 2), (5, 1))
    for normalized in (False, True):
        check_grads(
            jax.jit(
                lambda a, b, n=normalized: cs_mutual_information(a, b, sigma=1.1, normalized=n)
            ),
            (jnp.asarray(x), jnp.asarray(z)),
            order=1,
            modes=("rev",),
        )


def test_cs_qmi_normalized_degenerate_is_zero_with_finite_gradients():
    x = jnp.ones((6, 2))  # all samples identical: I(x; x) = I(x; z) = 0
    z = jnp.asarray(samples(12, (6, 1))[0], jnp.float32)
    f = lambda a, b: cs_mutual_information(a, b, normalized=True)  # noqa: E731
    assert float(f(x, z)) == 0.0
    chex.assert_tree_all_finite(jax.grad(f, argnums=(0, 1))(x, z))


def test_jit_with_traced_sigma():
    x, y, p = (jnp.asarray(a, jnp.float32) for a in samples(13, (7, 2), (7, 1), (7, 1)))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def all_three(sigma):
        return (
            cauchy_schwarz_divergence(x, x + 1.0, sigma=sigma),
            conditional_cs_divergence(x, y, p, sigma=sigma),
            cs_mutual_information(x, y, sigma=sigma, normalized=True),
        )

    for sigma in (0.5, 2.0):
        chex.assert_trees_all_close(
            all_three(sigma),
            (
                cauchy_schwarz_divergence(x, x + 1.0, sigma=sigma),
                conditional_cs_divergence(x, y, p, sigma=sigma),
                cs_mutual_information(x, y, sigma=sigma, normalized=True),
            ),
            rtol=1e-5,
            atol=1e-6,
        )


def test_errors():
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match=r"`x` must have rank 2 \(\[N, D\] samples\)"):
        cauchy_schwarz_divergence(jnp.zeros(4), x)
    with pytest.raises(ValueError, match="must have the same feature size D"):
        cauchy_schwarz_divergence(x, jnp.zeros((3, 3)))
    with pytest.raises(ValueError, match="`sigma` must be a finite number"):
        cauchy_schwarz_divergence(x, x, sigma=0.0)
    with pytest.raises(TypeError, match="`y` must have a floating dtype"):
        cauchy_schwarz_divergence(x, jnp.zeros((4, 2), jnp.int32))
    with pytest.raises(ValueError, match="same number of samples"):
        conditional_cs_divergence(x, jnp.zeros((3, 1)), jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match="`y` and `y_pred` must have the same shape"):
        conditional_cs_divergence(x, jnp.zeros((4, 1)), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="same number of samples"):
        cs_mutual_information(x, jnp.zeros((5, 2)))
    with pytest.raises(ValueError, match="`sigma` must be a finite number"):
        cs_mutual_information(x, x, sigma=-1.0)
