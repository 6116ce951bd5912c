"""PS-KD targets and the Distiller MI-α bound vs float64 NumPy transcriptions written here."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.special import logsumexp

from jaxdiv._self_distillation import mi_alpha_bound, pskd_targets

# ----------------------------------------------------------------------------- PS-KD


def pskd_inputs(seed, batch=4, classes=5):
    rs = np.random.default_rng(seed)
    onehot = np.eye(classes)[rs.integers(0, classes, size=batch)].astype(np.float32)
    prev = rs.dirichlet(np.ones(classes), size=batch).astype(np.float32)
    return onehot, prev


@pytest.mark.parametrize("epoch", [0, 37, 299])
@pytest.mark.parametrize("alpha_T", [0.8, 0.3])
def test_pskd_matches_reference_formula(epoch, alpha_T):
    onehot, prev = pskd_inputs(0)
    got = pskd_targets(
        jnp.asarray(onehot), jnp.asarray(prev), epoch=epoch, num_epochs=300, alpha_T=alpha_T
    )
    chex.assert_shape(got, onehot.shape)
    assert got.dtype == jnp.float32
    alpha_t = max(0.0, alpha_T * ((epoch + 1) / 300))  # PS-KD main.py
    want = (1 - alpha_t) * onehot.astype(np.float64) + alpha_t * prev.astype(np.float64)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(got).sum(-1), 1.0, rtol=1e-6)


def test_pskd_last_epoch_uses_alpha_T_and_float64(x64):
    onehot, prev = (a.astype(np.float64) for a in pskd_inputs(1, batch=2, classes=3))
    got = pskd_targets(jnp.asarray(onehot), jnp.asarray(prev), epoch=9, num_epochs=10)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), 0.2 * onehot + 0.8 * prev, rtol=1e-15)


def test_pskd_traced_epoch_does_not_retrace():
    onehot, prev = (jnp.asarray(a) for a in pskd_inputs(2))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def targets(epoch):
        return pskd_targets(onehot, prev, epoch=epoch, num_epochs=20)

    for epoch in (0, 5, 19):
        alpha_t = 0.8 * (epoch + 1) / 20
        want = (1 - alpha_t) * np.asarray(onehot) + alpha_t * np.asarray(prev)
        np.testing.assert_allclose(
            np.asarray(targets(jnp.asarray(epoch))), want, rtol=1e-6, atol=1e-7
        )


def test_pskd_errors():
    onehot, prev = (jnp.asarray(a) for a in pskd_inputs(3))
    with pytest.raises(ValueError, match=r"`epoch` must be a finite number in \[0.0, 9.0\]"):
        pskd_targets(onehot, prev, epoch=10, num_epochs=10)
    with pytest.raises(ValueError, match="`epoch` must be a finite number"):
        pskd_targets(onehot, prev, epoch=-1, num_epochs=10)
    with pytest.raises(ValueError, match="`num_epochs` must be a finite number"):
        pskd_targets(onehot, prev, epoch=0, num_epochs=0)
    with pytest.raises(ValueError, match=r"`alpha_T` must be a finite number in \[0.0, 1.0\]"):
        pskd_targets(onehot, prev, epoch=0, num_epochs=10, alpha_T=1.2)
    with pytest.raises(ValueError, match="must have the same shape"):
        pskd_targets(onehot, prev[:, :3], epoch=0, num_epochs=10)
    with pytest.raises(TypeError, match="`labels_onehot` must have a floating dtype"):
        pskd_targets(jnp.asarray(onehot, jnp.int32), prev, epoch=0, num_epochs=10)


# ----------------------------------------------------------------------------- MI-alpha


def np_loo_log_mean(scores):
    """m_ij = log (1/(B-1)) sum_{k != j} exp(S_ik), by deleting column j explicitly."""
    b = scores.shape[0]
    out = np.empty_like(scores)
    for i in range(b):
        for j in range(b):
            out[i, j] = logsumexp(np.delete(scores[i], j)) - np.log(b - 1)
    return out


def np_mi_alpha(scores, log_baseline, alpha):
    """Transcription of Distiller `interpolated_lower_bound` with sigmoid(alpha_logit) = alpha."""
    b = scores.shape[0]
    loo = np_loo_log_mean(scores)
    with np.errstate(divide="ignore"):
        log_a, log_1ma = np.log(alpha), np.log1p(-alpha)
    interp = np.logaddexp(log_a + loo, log_1ma + log_baseline[:, None])
    off = ~np.eye(b, dtype=bool)
    critic_joint = np.diag(scores)[:, None] - interp
    joint = critic_joint[off].sum() / (b * (b - 1))
    critic_marg = scores - np.diag(interp)[:, None]
    marg = np.exp(logsumexp(critic_marg[off]) - np.log(b * (b - 1)))
    return 1.0 + joint - marg


def mi_inputs(seed, batch=5, scale=1.0):
    rs = np.random.default_rng(seed)
    scores = scale * (2.0 * np.eye(batch) + rs.normal(size=(batch, batch)))
    log_baseline = rs.normal(size=batch)
    return scores, log_baseline


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_mi_alpha_matches_transcription(alpha):
    scores, log_baseline = (a.astype(np.float32) for a in mi_inputs(0))
    got = mi_alpha_bound(jnp.asarray(scores), jnp.asarray(log_baseline), alpha=alpha)
    chex.assert_shape(got, ())
    assert got.dtype == jnp.float32
    want = np_mi_alpha(scores.astype(np.float64), log_baseline.astype(np.float64), alpha)
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_mi_alpha_float64(x64, alpha):
    scores, log_baseline = mi_inputs(1, batch=6)
    got = mi_alpha_bound(jnp.asarray(scores), jnp.asarray(log_baseline), alpha=alpha)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(float(got), np_mi_alpha(scores, log_baseline, alpha), rtol=1e-12)


def test_mi_alpha_one_is_infonce_leave_one_out(x64):
    """alpha = 1: the marginal term is exactly 1, leaving mean_{i != j}(S_ii - m_ij)."""
    scores, log_baseline = mi_inputs(2, batch=6)
    b = scores.shape[0]
    total = 0.0
    for i in range(b):
        for j in range(b):
            if i != j:
                others = [np.exp(scores[i, k]) for k in range(b) if k != j]
                total += scores[i, i] - np.log(sum(others) / (b - 1))
    infonce_loo = total / (b * (b - 1))
    got = mi_alpha_bound(jnp.asarray(scores), jnp.asarray(log_baseline), alpha=1.0)
    np.testing.assert_allclose(float(got), infonce_loo, rtol=1e-12)


def test_mi_alpha_zero_is_tuba(x64):
    scores, log_baseline = mi_inputs(3, batch=5)
    b = scores.shape[0]
    shifted = scores - log_baseline[:, None]
    off = ~np.eye(b, dtype=bool)
    tuba = 1.0 + np.mean(np.diag(shifted)) - np.mean(np.exp(shifted[off]))
    got = mi_alpha_bound(jnp.asarray(scores), jnp.asarray(log_baseline), alpha=0.0)
    np.testing.assert_allclose(float(got), tuba, rtol=1e-12)


@pytest.mark.parametrize("scale", [30.0, 300.0])
def test_mi_alpha_large_scores_are_stable(scale):
    """Rows dominated by one entry: exp overflows float32, the leave-one-out sum must not cancel."""
    scores, log_baseline = mi_inputs(4, batch=5, scale=scale)
    scores32 = scores.astype(np.float32)
    got = mi_alpha_bound(jnp.asarray(scores32), jnp.asarray(log_baseline, jnp.float32), alpha=1.0)
    want = np_mi_alpha(scores32.astype(np.float64), log_baseline.astype(np.float32), 1.0)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    grads = jax.grad(mi_alpha_bound, argnums=(0, 1))(
        jnp.asarray(scores32), jnp.asarray(log_baseline, jnp.float32), alpha=0.5
    )
    chex.assert_tree_all_finite(grads)


def test_mi_alpha_huge_equal_scores_are_not_nan():
    """Regression (found by test_properties.py): with every score 1e30, logsumexp - S_ij
    rounded to 0, the leave-one-out log-sum became log1p(-1) = -inf and the bound NaN. All
    scores equal: every log-ratio is 0 and the InfoNCE end (α = 1) is exactly 1 + 0 - 1 = 0."""
    scores = jnp.full((4, 4), 1e30)
    got = mi_alpha_bound(scores, jnp.zeros(4), alpha=1.0)
    np.testing.assert_allclose(float(got), 0.0, atol=1e-6)
    # The shift by the row max does not change moderate values (vs the float64 transcription).
    scores, log_baseline = mi_inputs(6, batch=4)
    for alpha in (0.0, 0.5, 1.0):
        got = mi_alpha_bound(jnp.asarray(scores, jnp.float32), jnp.asarray(log_baseline,
                             jnp.float32), alpha=alpha)  # fmt: skip
        np.testing.assert_allclose(float(got), np_mi_alpha(scores, log_baseline, alpha), 1e-5)


def test_mi_alpha_gradients(x64):
    scores, log_baseline = mi_inputs(5, batch=4)
    for alpha in (0.0, 0.5, 1.0):
        check_grads(
            jax.jit(lambda s, b, a=alpha: mi_alpha_bound(s, b, alpha=a)),
            (jnp.asarray(scores), jnp.asarray(log_baseline)),
            order=1,
            modes=("rev",),
        )


def test_mi_alpha_ties_in_a_row(x64):
    scores = np.array([[2.0, 2.0, 0.5], [1.0, 3.0, 3.0], [0.0, 0.0, 0.0]])
    log_baseline = np.array([0.1, -0.2, 0.3])
    got = mi_alpha_bound(jnp.asarray(scores), jnp.asarray(log_baseline), alpha=0.4)
    np.testing.assert_allclose(float(got), np_mi_alpha(scores, log_baseline, 0.4), rtol=1e-12)


def test_mi_alpha_jit_traced_alpha():
    scores, log_baseline = (jnp.asarray(a, jnp.float32) for a in mi_inputs(6))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def bound(alpha):
        return mi_alpha_bound(scores, log_baseline, alpha=alpha)

    for alpha in (0.2, 0.9):
        want = np_mi_alpha(
            np.asarray(scores, np.float64), np.asarray(log_baseline, np.float64), alpha
        )
        np.testing.assert_allclose(float(bound(alpha)), want, rtol=1e-5, atol=1e-5)


def test_mi_alpha_errors():
    with pytest.raises(ValueError, match=r"`scores` must have shape \[B, B\] with B >= 2"):
        mi_alpha_bound(jnp.zeros((3, 4)), jnp.zeros(3))
    with pytest.raises(ValueError, match=r"`scores` must have shape \[B, B\] with B >= 2"):
        mi_alpha_bound(jnp.zeros((1, 1)), jnp.zeros(1))
    with pytest.raises(ValueError, match=r"`log_baseline` must have shape \(3,\)"):
        mi_alpha_bound(jnp.zeros((3, 3)), jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match=r"`alpha` must be a finite number in \[0.0, 1.0\]"):
        mi_alpha_bound(jnp.zeros((3, 3)), jnp.zeros(3), alpha=1.5)
    with pytest.raises(TypeError, match="`scores` must have a floating dtype"):
        mi_alpha_bound(jnp.zeros((3, 3), jnp.int32), jnp.zeros(3))
