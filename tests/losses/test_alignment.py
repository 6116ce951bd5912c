"""f-DPO and f-DPG vs float64 NumPy oracles written here, plus exact policy-gradient identities."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiv._alignment import FDPG_DIVERGENCES, fdpg_loss, fdpo_loss

FDPO_CASES = [("reverse_kl", 0.5), ("forward_kl", 0.5), ("js", 0.5), ("alpha", 0.3), ("alpha", 0.7)]


# ----------------------------------------------------------------------------- f-DPO oracle


def np_psi(u, divergence, alpha):
    """psi(u) = f'(u) of the paper's table, constants kept."""
    if divergence == "reverse_kl":
        return np.log(u)
    if divergence == "forward_kl":
        return -1.0 / u
    if divergence == "js":
        return np.log(2.0 * u / (1.0 + u))
    return (1.0 - u ** (-alpha)) / alpha


def np_fdpo(pw, pl, rw, rl, beta, divergence, alpha):
    u_w = np.exp(pw - rw)
    u_l = np.exp(pl - rl)
    z = beta * (np_psi(u_w, divergence, alpha) - np_psi(u_l, divergence, alpha))
    return np.logaddexp(0.0, -z)  # -log sigmoid(z)


def random_logps(seed, shape=(3, 5)):
    rs = np.random.default_rng(seed)
    policy = rs.uniform(-40.0, -10.0, size=(2, *shape))
    ref = policy + rs.uniform(-2.0, 2.0, size=(2, *shape))
    return policy[0], policy[1], ref[0], ref[1]


@pytest.mark.parametrize("divergence,alpha", FDPO_CASES)
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_fdpo_matches_numpy(divergence, alpha, beta):
    args = random_logps(0)
    got = fdpo_loss(
        *(jnp.asarray(a, jnp.float32) for a in args), beta=beta, divergence=divergence, alpha=alpha
    )
    chex.assert_shape(got, (3, 5))
    assert got.dtype == jnp.float32
    want = np_fdpo(*(np.float32(a).astype(np.float64) for a in args), beta, divergence, alpha)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("divergence,alpha", FDPO_CASES)
def test_fdpo_float64(x64, divergence, alpha):
    args = random_logps(1)
    got = fdpo_loss(*(jnp.asarray(a) for a in args), beta=0.3, divergence=divergence, alpha=alpha)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), np_fdpo(*args, 0.3, divergence, alpha), rtol=1e-12)


@pytest.mark.parametrize("divergence,alpha", FDPO_CASES)
def test_fdpo_gradients_match_numpy(x64, divergence, alpha):
    args = [jnp.asarray(a) for a in random_logps(2, shape=(4,))]
    grads = jax.grad(
        lambda *a: jnp.sum(fdpo_loss(*a, beta=0.5, divergence=divergence, alpha=alpha)),
        argnums=(0, 1, 2, 3),
    )(*args)
    eps = 1e-6
    for k in range(4):
        for i in range(4):
            hi = [np.array(a) for a in args]
            lo = [np.array(a) for a in args]
            hi[k][i] += eps
            lo[k][i] -= eps
            fd = (
                np_fdpo(*hi, 0.5, divergence, alpha).sum()
                - np_fdpo(*lo, 0.5, divergence, alpha).sum()
            ) / (2 * eps)
            np.testing.assert_allclose(float(grads[k][i]), fd, rtol=1e-5, atol=1e-9)


def test_fdpo_reverse_kl_is_dpo():
    pw, pl, rw, rl = (jnp.asarray(a, jnp.float32) for a in random_logps(3))
    dpo = -jax.nn.log_sigmoid(0.1 * ((pw - rw) - (pl - rl)))
    chex.assert_trees_all_close(fdpo_loss(pw, pl, rw, rl), dpo, rtol=1e-6)


def test_fdpo_alpha_limits(x64):
    args = [jnp.asarray(a) for a in random_logps(4)]
    near_rkl = fdpo_loss(*args, divergence="alpha", alpha=1e-7)
    near_fkl = fdpo_loss(*args, divergence="alpha", alpha=1.0 - 1e-7)
    chex.assert_trees_all_close(near_rkl, fdpo_loss(*args, divergence="reverse_kl"), rtol=1e-5)
    chex.assert_trees_all_close(near_fkl, fdpo_loss(*args, divergence="forward_kl"), rtol=1e-5)


@pytest.mark.parametrize("alpha_paper", [0.3, 0.5, 0.8])
def test_fdpo_alpha_matches_new_trl_parametrisation(alpha_paper):
    """TRL >= 0.29: psi = exp((a - 1) lr) / (a - 1) with a = 1 - alpha_paper (transcribed)."""
    pw, pl, rw, rl = random_logps(5)
    a = 1.0 - alpha_paper

    def trl_psi(lr):
        return np.exp((a - 1.0) * lr) / (a - 1.0)

    want = np.logaddexp(0.0, -0.1 * (trl_psi(pw - rw) - trl_psi(pl - rl)))
    got = fdpo_loss(
        *(jnp.asarray(x, jnp.float32) for x in (pw, pl, rw, rl)),
        divergence="alpha",
        alpha=alpha_paper,
    )
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5)


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "js", "alpha"])
def test_fdpo_finite_at_extreme_log_ratios(divergence):
    lr = jnp.array([200.0, -200.0, 200.0, -200.0, 0.0])
    other = jnp.array([-200.0, 200.0, 200.0, -200.0, -200.0])
    zeros = jnp.zeros(5)

    def total(pw, pl):
        return jnp.sum(fdpo_loss(pw, pl, zeros, zeros, beta=1.0, divergence=divergence))

    values = fdpo_loss(lr, other, zeros, zeros, beta=1.0, divergence=divergence)
    chex.assert_tree_all_finite(values)
    chex.assert_tree_all_finite(jax.grad(total, argnums=(0, 1))(lr, other))
    assert bool(jnp.all(values >= 0.0))


def test_fdpo_bf16_inputs_compute_in_float32():
    args = [jnp.asarray(a, jnp.bfloat16) for a in random_logps(6)]
    got = fdpo_loss(*args, divergence="js")
    assert got.dtype == jnp.float32
    want = np_fdpo(*(np.asarray(a, np.float64) for a in args), 0.1, "js", 0.5)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_fdpo_jit_traced_hyperparameters_do_not_retrace():
    args = [jnp.asarray(a, jnp.float32) for a in random_logps(7)]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(beta, alpha):
        return fdpo_loss(*args, beta=beta, divergence="alpha", alpha=alpha)

    for beta, alpha in [(0.1, 0.3), (0.5, 0.7)]:
        want = np_fdpo(*(np.asarray(a, np.float64) for a in args), beta, "alpha", alpha)
        np.testing.assert_allclose(np.asarray(f(beta, alpha)), want, rtol=2e-5, atol=1e-6)


def test_fdpo_errors():
    x = jnp.zeros(3)
    with pytest.raises(ValueError, match="`divergence` must be one of"):
        fdpo_loss(x, x, x, x, divergence="kl")
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"`alpha` must be a finite number in \(0.0, 1.0\)"):
            fdpo_loss(x, x, x, x, divergence="alpha", alpha=bad)
    with pytest.raises(ValueError, match="`beta` must be a finite number"):
        fdpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError, match="must have the same shape"):
        fdpo_loss(x, x, x, jnp.zeros(4))
    with pytest.raises(TypeError, match="`ref_chosen_logps` must have a floating dtype"):
        fdpo_loss(x, x, jnp.zeros(3, jnp.int32), x)


# ----------------------------------------------------------------------------- f-DPG


def np_f_prime(t, divergence):
    """f'(t), t = pi / p, for D_f(pi || p) = E_p f(pi / p) (transcribed from the API table)."""
    return {
        "forward_kl": lambda: -1.0 / t,
        "reverse_kl": lambda: np.log(t) + 1.0,
        "js": lambda: np.log(2.0 * t / (1.0 + t)),
        "tv": lambda: np.sign(np.log(t)) / 2.0,
        "chi_squared": lambda: 1.0 - t**-2.0,
        "reverse_chi_squared": lambda: 2.0 * (t - 1.0),
    }[divergence]()


def direct_divergence(pi, p, divergence):
    """D_f(pi || p) from its definition (not through f'), in jnp so it can be differentiated."""
    m = 0.5 * (pi + p)
    return {
        "forward_kl": lambda: jnp.sum(p * (jnp.log(p) - jnp.log(pi))),
        "reverse_kl": lambda: jnp.sum(pi * (jnp.log(pi) - jnp.log(p))),
        "js": lambda: jnp.sum(pi * jnp.log(pi / m)) + jnp.sum(p * jnp.log(p / m)),
        "tv": lambda: 0.5 * jnp.sum(jnp.abs(pi - p)),
        "chi_squared": lambda: jnp.sum((pi - p) ** 2 / pi),
        "reverse_chi_squared": lambda: jnp.sum((pi - p) ** 2 / p),
    }[divergence]()


K = 6  # size of the enumerated sample space


def toy_problem(seed):
    rs = np.random.default_rng(seed)
    theta = rs.normal(size=K)
    log_scores = rs.normal(size=K) + 2.0  # unnormalised target log P(x)
    log_z = float(np.log(np.sum(np.exp(log_scores))))
    return theta, log_scores, log_z


def np_log_softmax(theta):
    return theta - np.log(np.sum(np.exp(theta)))


@pytest.mark.parametrize("divergence", FDPG_DIVERGENCES)
def test_fdpg_gradient_is_the_policy_gradient_estimator(x64, divergence):
    theta, log_scores, log_z = toy_problem(0)
    rs = np.random.default_rng(1)
    q = rs.dirichlet(np.ones(K))
    samples = rs.choice(K, size=20, p=q)
    baseline = 0.37  # pseudo-reward scale: the paper's baseline on the f' scale is -0.37

    def loss(th):
        log_pi = jax.nn.log_softmax(th)[samples]
        return fdpg_loss(
            log_pi,
            jnp.log(q)[samples],
            jnp.asarray(log_scores)[samples],
            divergence=divergence,
            log_z=log_z,
            baseline=baseline,
        )

    got = jax.grad(loss)(jnp.asarray(theta))
    pi = np.exp(np_log_softmax(theta))
    p = np.exp(log_scores - log_z)
    b_bar = -baseline
    want = np.zeros(K)
    for x in samples:
        grad_log_pi = np.eye(K)[x] - pi
        want += pi[x] / q[x] * (np_f_prime(pi[x] / p[x], divergence) - b_bar) * grad_log_pi
    want /= len(samples)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)

    log_pi = np_log_softmax(theta)[samples]
    t = np.exp(log_pi - (log_scores[samples] - log_z))
    w = np.exp(log_pi - np.log(q)[samples])
    value = np.mean(-w * (-np_f_prime(t, divergence) - baseline) * log_pi)
    np.testing.assert_allclose(float(loss(jnp.asarray(theta))), value, rtol=1e-10)


@pytest.mark.parametrize("divergence", FDPG_DIVERGENCES)
@pytest.mark.parametrize("baseline", [0.0, 1.3])
def test_fdpg_expected_gradient_is_divergence_gradient(x64, divergence, baseline):
    theta, log_scores, log_z = toy_problem(2)
    theta = jnp.asarray(theta)
    p = jnp.exp(jnp.asarray(log_scores) - log_z)
    want = jax.grad(lambda th: direct_divergence(jax.nn.softmax(th), p, divergence))(theta)

    def per_sample_loss(th, x):  # one sample x with q = pi
        log_pi = jax.nn.log_softmax(th)[x][None]
        return fdpg_loss(
            log_pi,
            log_pi,
            jnp.asarray(log_scores)[x][None],
            divergence=divergence,
            log_z=log_z,
            baseline=baseline,
        )

    per_sample = jax.vmap(jax.grad(per_sample_loss), in_axes=(None, 0))(theta, jnp.arange(K))
    expected = jnp.einsum("x,xk->k", jax.nn.softmax(theta), per_sample)  # exact E_{x ~ pi}
    chex.assert_trees_all_close(expected, want, rtol=1e-10, atol=1e-12)

    def enumerated_loss(th):  # all K points once, uniform proposal: the mean is E_pi exactly
        return fdpg_loss(
            jax.nn.log_softmax(th),
            jnp.full(K, -np.log(K)),
            jnp.asarray(log_scores),
            divergence=divergence,
            log_z=log_z,
            baseline=baseline,
        )

    chex.assert_trees_all_close(jax.grad(enumerated_loss)(theta), want, rtol=1e-10, atol=1e-12)


def test_fdpg_only_the_policy_gets_gradients():
    log_pi, log_q, log_scores = jnp.array([-1.0, -2.0]), jnp.array([-1.5, -1.0]), jnp.zeros(2)
    grads = jax.grad(
        lambda a, b, c, z, base: fdpg_loss(a, b, c, log_z=z, baseline=base), argnums=(1, 2, 3, 4)
    )(log_pi, log_q, log_scores, jnp.array(0.5), jnp.array(0.2))
    for g in grads:
        assert not np.any(np.asarray(g))


def test_fdpg_per_sample_log_z_and_baseline():
    log_pi = jnp.array([-1.0, -2.0, -3.0])
    log_z = jnp.array([0.1, 0.2, 0.3])
    baseline = jnp.array([0.0, 0.5, -0.5])
    got = fdpg_loss(
        log_pi, log_pi, jnp.zeros(3), divergence="reverse_kl", log_z=log_z, baseline=baseline
    )
    t = np.exp(np.asarray(log_pi, np.float64) + np.asarray(log_z, np.float64))
    want = np.mean(-(-(np.log(t) + 1.0) - np.asarray(baseline)) * np.asarray(log_pi))
    np.testing.assert_allclose(float(got), want, rtol=1e-6)


@pytest.mark.parametrize("divergence", FDPG_DIVERGENCES)
def test_fdpg_finite_at_extreme_log_ratios(divergence):
    log_pi = jnp.array([-1.0, -250.0, -1.0])
    log_scores = jnp.array([-250.0, -1.0, -1.0])
    loss = lambda a: fdpg_loss(a, a, log_scores, divergence=divergence, log_z=0.0)  # noqa: E731
    chex.assert_tree_all_finite(loss(log_pi))
    chex.assert_tree_all_finite(jax.grad(loss)(log_pi))


def test_fdpg_jit():
    log_pi, log_q = jnp.array([-1.0, -2.0, -4.0]), jnp.array([-1.5, -1.0, -3.0])
    f = jax.jit(lambda a, b, z: fdpg_loss(a, b, jnp.zeros(3), log_z=z))
    eager = fdpg_loss(log_pi, log_q, jnp.zeros(3), log_z=0.3)
    chex.assert_trees_all_close(f(log_pi, log_q, 0.3), eager, rtol=1e-6)
    chex.assert_trees_all_close(  # Python ints are numbers too
        fdpg_loss(log_pi, log_q, jnp.zeros(3), log_z=0, baseline=1),
        fdpg_loss(log_pi, log_q, jnp.zeros(3), log_z=0.0, baseline=1.0),
    )


def test_fdpg_errors():
    x = jnp.zeros(3)
    with pytest.raises(ValueError, match="`divergence` must be one of"):
        fdpg_loss(x, x, x, divergence="hellinger", log_z=0.0)
    with pytest.raises(ValueError, match=r"`log_z` must be a scalar or have shape \(3,\)"):
        fdpg_loss(x, x, x, log_z=jnp.zeros(2))
    with pytest.raises(ValueError, match=r"`baseline` must be a scalar or have shape \(3,\)"):
        fdpg_loss(x, x, x, log_z=0.0, baseline=jnp.zeros((3, 1)))
    with pytest.raises(ValueError, match="`policy_logps` and `target_log_scores` must have"):
        fdpg_loss(x, x, jnp.zeros(4), log_z=0.0)
    with pytest.raises(TypeError, match="`proposal_logps` must have a floating dtype"):
        fdpg_loss(x, jnp.zeros(3, jnp.int32), x, log_z=0.0)
    with pytest.raises(TypeError, match="log_z"):
        fdpg_loss(x, x, x)
