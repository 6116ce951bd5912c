"""Core divergences vs independent float64 NumPy references, identities, masks, edge cases."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import xlogy
from jax.test_util import check_grads

import jaxdiv

# ---------------------------------------------------------------- float64 NumPy references


def np_softmax(z, temperature=1.0):
    z = np.asarray(z, np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def np_kl(p, q):
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(-1)


def ref_forward_kl(s, t, T=1.0):
    return np_kl(np_softmax(t, T), np_softmax(s, T))


def ref_reverse_kl(s, t, T=1.0):
    return np_kl(np_softmax(s, T), np_softmax(t, T))


def ref_gjsd(s, t, T=1.0, beta=0.5):
    ps, pt = np_softmax(s, T), np_softmax(t, T)
    if beta == 0:
        return np_kl(pt, ps)
    if beta == 1:
        return np_kl(ps, pt)
    m = beta * pt + (1 - beta) * ps
    return beta * np_kl(pt, m) + (1 - beta) * np_kl(ps, m)


def ref_skew_kl(s, t, T=1.0, alpha=0.1):
    ps, pt = np_softmax(s, T), np_softmax(t, T)
    return np_kl(pt, alpha * pt + (1 - alpha) * ps)


def ref_skew_reverse_kl(s, t, T=1.0, alpha=0.1):
    ps, pt = np_softmax(s, T), np_softmax(t, T)
    return np_kl(ps, (1 - alpha) * pt + alpha * ps)


def ref_tv(s, t, T=1.0):
    return 0.5 * np.abs(np_softmax(t, T) - np_softmax(s, T)).sum(-1)


def ref_hellinger(s, t, T=1.0):
    return 0.5 * ((np.sqrt(np_softmax(t, T)) - np.sqrt(np_softmax(s, T))) ** 2).sum(-1)


def ref_chi2(s, t, T=1.0):
    ps, pt = np_softmax(s, T), np_softmax(t, T)
    return ((pt - ps) ** 2 / ps).sum(-1)


def ref_alpha(s, t, T=1.0, alpha=0.5):
    ps, pt = np_softmax(s, T), np_softmax(t, T)
    return (1 - (pt**alpha * ps ** (1 - alpha)).sum(-1)) / (alpha * (1 - alpha))


def ref_hinton(s, t, T=4.0):
    return T**2 * ref_forward_kl(s, t, T)


# (name, jaxdiv function with hyperparameters bound, reference with the same, symmetric?)
CASES = [
    ("forward_kl", jaxdiv.forward_kl, ref_forward_kl, False),
    ("reverse_kl", jaxdiv.reverse_kl, ref_reverse_kl, False),
    (
        "gjsd_0.3",
        functools.partial(jaxdiv.generalized_jsd, beta=0.3),
        functools.partial(ref_gjsd, beta=0.3),
        False,
    ),
    ("jensen_shannon", jaxdiv.jensen_shannon, ref_gjsd, True),
    ("skew_kl", jaxdiv.skew_kl, ref_skew_kl, False),
    (
        "skew_reverse_kl",
        functools.partial(jaxdiv.skew_reverse_kl, alpha=0.3),
        functools.partial(ref_skew_reverse_kl, alpha=0.3),
        False,
    ),
    ("total_variation", jaxdiv.total_variation, ref_tv, True),
    ("hellinger", jaxdiv.hellinger, ref_hellinger, True),
    ("chi_squared", jaxdiv.chi_squared, ref_chi2, False),
    (
        "alpha_0.3",
        functools.partial(jaxdiv.alpha_divergence, alpha=0.3),
        functools.partial(ref_alpha, alpha=0.3),
        False,
    ),
    (
        "alpha_0.7",
        functools.partial(jaxdiv.alpha_divergence, alpha=0.7),
        functools.partial(ref_alpha, alpha=0.7),
        False,
    ),
    (
        "alpha_-1.5",
        functools.partial(jaxdiv.alpha_divergence, alpha=-1.5),
        functools.partial(ref_alpha, alpha=-1.5),
        False,
    ),
    (
        "alpha_2.5",
        functools.partial(jaxdiv.alpha_divergence, alpha=2.5),
        functools.partial(ref_alpha, alpha=2.5),
        False,
    ),
    (
        "f_kl",
        functools.partial(jaxdiv.f_divergence, f=lambda u: xlogy(u, u)),
        ref_forward_kl,
        False,
    ),
    ("hinton_kd", jaxdiv.hinton_kd, ref_hinton, False),
]
IDS = [c[0] for c in CASES]


def logits(seed, shape, scale=2.0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale


def ref_kwargs(fn):
    """Temperature default of the jaxdiv function (4 for hinton_kd, 1 otherwise)."""
    return 4.0 if getattr(fn, "__name__", "") == "hinton_kd" else 1.0


@pytest.mark.parametrize(("name", "fn", "ref", "sym"), CASES, ids=IDS)
def test_matches_float64_reference(name, fn, ref, sym):
    s, t = logits(0, (3, 5, 11)), logits(1, (3, 5, 11))
    got = jax.jit(fn)(s, t)
    chex.assert_shape(got, (3, 5))
    assert got.dtype == jnp.float32
    T = 4.0 if name == "hinton_kd" else 1.0
    np.testing.assert_allclose(got, ref(s, t, T), rtol=2e-5, atol=2e-6)


# The generic f_divergence sees the ratio p_t/p_s itself, which overflows float32 at T = 1e-2
# (documented in its docstring); the dedicated functions are the safe path there.
EXTREME_CASES = [c for c in CASES if c[0] != "f_kl"]


@pytest.mark.parametrize(
    ("name", "fn", "ref", "sym"), EXTREME_CASES, ids=[c[0] for c in EXTREME_CASES]
)
@pytest.mark.parametrize("temperature", [1e-2, 0.7, 1e2])
def test_temperature_extremes(name, fn, ref, sym, temperature):
    s, t = logits(2, (4, 7), scale=1.0), logits(3, (4, 7), scale=1.0)
    got = np.asarray(fn(s, t, temperature=temperature))
    want = ref(s, t, temperature)
    # chi² and alpha outside [0, 1] can exceed the float32 range at T = 1e-2: those give inf.
    representable = want < np.finfo(np.float32).max
    np.testing.assert_array_equal(got[~representable], np.inf)
    # float32 resolves each log-probability to ~1e-7 absolute; at T = 100 the divergence is a
    # cancellation of terms that size (times T² for hinton_kd), so the tolerance is absolute.
    atol = 1e-6 * (temperature**2 if name == "hinton_kd" else 1.0)
    np.testing.assert_allclose(got[representable], want[representable], rtol=1e-4, atol=atol)


@pytest.mark.parametrize(("name", "fn", "ref", "sym"), CASES, ids=IDS)
def test_float64_under_x64(name, fn, ref, sym, x64):
    s = np.random.default_rng(4).normal(size=(3, 9))
    t = np.random.default_rng(5).normal(size=(3, 9))
    got = fn(jnp.asarray(s), jnp.asarray(t))
    assert got.dtype == jnp.float64
    T = 4.0 if name == "hinton_kd" else 1.0
    np.testing.assert_allclose(got, ref(s, t, T), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize(("name", "fn", "ref", "sym"), CASES, ids=IDS)
def test_identities(name, fn, ref, sym):
    s, t = logits(6, (6, 8)), logits(7, (6, 8))
    np.testing.assert_allclose(fn(s, s), 0.0, atol=2e-6)
    assert bool(jnp.all(fn(s, t) >= -1e-6)), "divergences are non-negative"
    if sym:
        np.testing.assert_allclose(fn(s, t), fn(t, s), rtol=1e-5, atol=1e-6)
    # Shift invariance of logits (softmax), a sanity property of the front end.
    np.testing.assert_allclose(fn(s + 3.0, t - 2.0), fn(s, t), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("name", "fn", "ref", "sym"), CASES, ids=IDS)
def test_gradients_both_arguments(name, fn, ref, sym, x64):
    s = jnp.asarray(np.random.default_rng(8).normal(size=(2, 5)))
    t = jnp.asarray(np.random.default_rng(9).normal(size=(2, 5)))
    check_grads(lambda a, b: fn(a, b).sum(), (s, t), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("name", "fn", "ref", "sym"), CASES, ids=IDS)
def test_where_rows_equals_slicing(name, fn, ref, sym):
    s, t = logits(10, (6, 7)), logits(11, (6, 7))
    mask = np.array([True, False, True, True, False, True])
    s_bad = s.copy()
    s_bad[~mask] = np.nan  # masked rows may hold garbage
    t_bad = t.copy()
    t_bad[~mask] = -np.inf
    got = fn(s_bad, t_bad, where=mask)
    np.testing.assert_allclose(got[mask], fn(s[mask], t[mask]), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got[~mask], 0.0)
    grads = jax.grad(lambda a, b: fn(a, b, where=mask).sum(), argnums=(0, 1))(s_bad, t_bad)
    chex.assert_tree_all_finite(grads)
    np.testing.assert_array_equal(grads[0][~mask], 0.0)
    sliced = jax.grad(lambda a, b: fn(a, b).sum(), argnums=(0, 1))(s[mask], t[mask])
    chex.assert_trees_all_close((grads[0][mask], grads[1][mask]), sliced, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "fn", "ref", "sym"), CASES, ids=IDS)
def test_where_classes_equals_slicing(name, fn, ref, sym):
    s, t = logits(12, (3, 6)), logits(13, (3, 6))
    keep = np.array([True, True, False, True, False, True])
    mask = np.broadcast_to(keep, s.shape).copy()
    mask[2] = False  # a row with every class masked gives 0
    s_bad = np.where(keep, s, np.nan).astype(np.float32)
    got = fn(s_bad, t, where=mask)
    np.testing.assert_allclose(got[:2], fn(s[:2, keep], t[:2, keep]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[2], 0.0)
    grads = jax.grad(lambda a, b: fn(a, b, where=mask).sum(), argnums=(0, 1))(s_bad, t)
    chex.assert_tree_all_finite(grads)


@pytest.mark.parametrize(("name", "fn", "ref", "sym"), CASES, ids=IDS)
def test_axis_equals_moveaxis(name, fn, ref, sym):
    s, t = logits(14, (4, 9, 3)), logits(15, (4, 9, 3))
    want = fn(jnp.moveaxis(s, 1, -1), jnp.moveaxis(t, 1, -1))
    np.testing.assert_allclose(fn(s, t, axis=1), want, rtol=1e-6)
    np.testing.assert_allclose(fn(s, t, axis=-2), want, rtol=1e-6)
    row_mask = np.array([[True, False, True]] * 4)
    np.testing.assert_allclose(
        fn(s, t, axis=1, where=row_mask),
        fn(jnp.moveaxis(s, 1, -1), jnp.moveaxis(t, 1, -1), where=row_mask),
        rtol=1e-6,
    )


@pytest.mark.parametrize(("name", "fn", "ref", "sym"), CASES, ids=IDS)
def test_bf16_inputs_give_float32(name, fn, ref, sym):
    s, t = logits(16, (2, 3, 10)), logits(17, (2, 3, 10))
    got = fn(jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16))
    assert got.dtype == jnp.float32
    s16 = np.asarray(jnp.asarray(s, jnp.bfloat16).astype(jnp.float32))
    t16 = np.asarray(jnp.asarray(t, jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(got, fn(s16, t16), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("name", "fn", "ref", "sym"), CASES, ids=IDS)
def test_batch_of_one_and_vector(name, fn, ref, sym):
    s, t = logits(18, (1, 5)), logits(19, (1, 5))
    chex.assert_shape(fn(s, t), (1,))
    chex.assert_shape(fn(s[0], t[0]), ())
    np.testing.assert_allclose(fn(s[0], t[0]), fn(s, t)[0], rtol=1e-6)


@pytest.mark.parametrize(("name", "fn", "ref", "sym"), CASES, ids=IDS)
def test_jit_agrees_and_traces_once(name, fn, ref, sym):
    s, t = logits(20, (3, 6)), logits(21, (3, 6))
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(a, b):
        return fn(a, b)

    first = f(s, t)
    f(s + 1.0, t)
    f(s, t - 1.0)
    np.testing.assert_allclose(first, fn(s, t), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------- zero probabilities


FINITE_WITH_ZERO_TEACHER = [
    ("forward_kl", jaxdiv.forward_kl),
    ("generalized_jsd", functools.partial(jaxdiv.generalized_jsd, beta=0.3)),
    ("jensen_shannon", jaxdiv.jensen_shannon),
    ("skew_kl", jaxdiv.skew_kl),
    ("skew_reverse_kl", jaxdiv.skew_reverse_kl),
    ("total_variation", jaxdiv.total_variation),
    ("hellinger", jaxdiv.hellinger),
    ("chi_squared", jaxdiv.chi_squared),
    ("alpha_0.5", functools.partial(jaxdiv.alpha_divergence, alpha=0.5)),
    ("hinton_kd", jaxdiv.hinton_kd),
]


@pytest.mark.parametrize(
    ("name", "fn"), FINITE_WITH_ZERO_TEACHER, ids=[c[0] for c in FINITE_WITH_ZERO_TEACHER]
)
def test_neg_inf_teacher_logits_finite_values_and_grads(name, fn):
    s = logits(22, (3, 6))
    t = logits(23, (3, 6))
    t[:, [1, 4]] = -np.inf  # zero teacher probabilities
    value = fn(s, t)
    chex.assert_tree_all_finite(value)
    T = 4.0 if name == "hinton_kd" else 1.0
    ref = {
        "forward_kl": ref_forward_kl,
        "jensen_shannon": ref_gjsd,
        "skew_kl": ref_skew_kl,
        "total_variation": ref_tv,
        "hellinger": ref_hellinger,
        "chi_squared": ref_chi2,
        "hinton_kd": ref_hinton,
    }.get(name)
    if ref is not None:
        np.testing.assert_allclose(value, ref(s, t, T), rtol=2e-5, atol=2e-6)
    grads = jax.grad(lambda a, b: fn(a, b).sum(), argnums=(0, 1))(s, t)
    chex.assert_tree_all_finite(grads)


def test_reverse_kl_infinite_where_teacher_zero_and_student_positive():
    s = np.zeros((2, 3), np.float32)
    t = np.array([[0.0, -np.inf, 0.0], [0.0, 1.0, 2.0]], np.float32)
    value = np.asarray(jaxdiv.reverse_kl(s, t))
    assert value[0] == np.inf and np.isfinite(value[1])
    assert np.asarray(jaxdiv.alpha_divergence(s, t, alpha=0.0))[0] == np.inf
    assert np.asarray(jaxdiv.alpha_divergence(s, t, alpha=-1.0))[0] == np.inf
    # An infinite row dropped by a later mask leaves finite gradients for the others.
    g = jax.grad(lambda a: jaxdiv.masked_mean(jaxdiv.reverse_kl(a, t), np.array([False, True])))(s)
    chex.assert_tree_all_finite(g)
    np.testing.assert_array_equal(g[0], 0.0)
    # Both zero in the same class: finite.
    both = np.array([[0.0, -np.inf, 0.0]], np.float32)
    np.testing.assert_allclose(jaxdiv.reverse_kl(both, both), 0.0, atol=1e-7)


def test_underflowing_probabilities_no_nan():
    # p_s underflows to 0 in float32 while log p_s stays finite (-200): no 0·inf anywhere.
    s = np.array([[0.0, -200.0, 0.0]], np.float32)
    t = np.array([[0.0, 0.0, -200.0]], np.float32)
    for fn in (
        jaxdiv.forward_kl,
        jaxdiv.reverse_kl,
        jaxdiv.chi_squared,
        jaxdiv.jensen_shannon,
        functools.partial(jaxdiv.alpha_divergence, alpha=0.3),
        functools.partial(jaxdiv.alpha_divergence, alpha=0.9),
    ):
        value = fn(s, t)
        assert not np.isnan(np.asarray(value)).any(), fn


# ----------------------------------------------------------------- family identities


def test_generalized_jsd_endpoints_are_exact_kl():
    s, t = logits(24, (5, 8)), logits(25, (5, 8))
    np.testing.assert_array_equal(jaxdiv.generalized_jsd(s, t, beta=0.0), jaxdiv.forward_kl(s, t))
    np.testing.assert_array_equal(jaxdiv.generalized_jsd(s, t, beta=1.0), jaxdiv.reverse_kl(s, t))
    # Traced beta takes the same branches, and interior values match the concrete path.
    traced = jax.jit(lambda b: jaxdiv.generalized_jsd(s, t, beta=b))
    np.testing.assert_allclose(traced(0.0), jaxdiv.forward_kl(s, t), rtol=1e-6)
    np.testing.assert_allclose(traced(1.0), jaxdiv.reverse_kl(s, t), rtol=1e-6)
    np.testing.assert_allclose(traced(0.3), jaxdiv.generalized_jsd(s, t, beta=0.3), rtol=1e-6)
    grads = jax.grad(
        lambda a: jax.jit(lambda a, b: jaxdiv.generalized_jsd(a, t, beta=b).sum())(a, 0.0)
    )(s)
    chex.assert_tree_all_finite(grads)


def test_generalized_jsd_trl_edge_vectors():
    # TRL's test vectors: student log([0.1, 0.9]), teacher log([0.9, 0.1]).
    s, t = np.log([0.1, 0.9]), np.log([0.9, 0.1])
    kl = 0.9 * np.log(9) + 0.1 * np.log(1 / 9)
    np.testing.assert_allclose(jaxdiv.generalized_jsd(s, t, beta=0.0), kl, rtol=1e-6)
    np.testing.assert_allclose(jaxdiv.generalized_jsd(s, t, beta=1.0), kl, rtol=1e-6)
    np.testing.assert_allclose(jaxdiv.generalized_jsd(jnp.zeros(4), jnp.zeros(4)), 0.0, atol=1e-7)


def test_alpha_limits_are_smooth():
    s, t = logits(26, (4, 6)), logits(27, (4, 6))
    fkl, rkl = jaxdiv.forward_kl(s, t), jaxdiv.reverse_kl(s, t)
    np.testing.assert_allclose(jaxdiv.alpha_divergence(s, t, alpha=1.0), fkl, rtol=1e-5)
    np.testing.assert_allclose(jaxdiv.alpha_divergence(s, t, alpha=0.0), rkl, rtol=1e-5)
    # D_alpha differs from its limit by O(eps): the relative gap shrinks with eps.
    for eps in (1e-3, 1e-5, 1e-7):
        rtol = 10 * eps + 2e-6
        np.testing.assert_allclose(jaxdiv.alpha_divergence(s, t, alpha=1.0 - eps), fkl, rtol=rtol)
        np.testing.assert_allclose(jaxdiv.alpha_divergence(s, t, alpha=eps), rkl, rtol=rtol)
    np.testing.assert_allclose(
        jaxdiv.alpha_divergence(s, t, alpha=0.5), 4 * jaxdiv.hellinger(s, t), rtol=1e-5
    )
    # Traced alpha, with gradients at the limit points.
    traced = jax.jit(lambda a: jaxdiv.alpha_divergence(s, t, alpha=a))
    np.testing.assert_allclose(traced(0.0), rkl, rtol=1e-5)
    np.testing.assert_allclose(traced(1.0), fkl, rtol=1e-5)
    for a in (0.0, 1.0):
        grads = jax.grad(lambda x, a=a: jaxdiv.alpha_divergence(x, t, alpha=a).sum())(s)
        chex.assert_tree_all_finite(grads)


def test_alpha_traced_at_the_limits_has_finite_gradients():
    """Regression (found by test_properties.py): a traced alpha of 0 or 1 ran the unused
    side of the where with exponent 1, dividing by 1 - 1 = 0: NaN gradients for all logits."""
    s, t = logits(30, (3, 5)), logits(31, (3, 5))
    grad = jax.jit(
        jax.grad(lambda x, y, a: jaxdiv.alpha_divergence(x, y, alpha=a).sum(), argnums=(0, 1))
    )
    for a in (0.0, 1.0, 0.5, -2.0, 3.0):
        want = jax.grad(
            lambda x, y, a=a: jaxdiv.alpha_divergence(x, y, alpha=a).sum(), argnums=(0, 1)
        )(s, t)
        for point in ((s, t), (s, s)):  # also at p_s = p_t
            got = grad(*point, jnp.float32(a))
            chex.assert_tree_all_finite(got)
        np.testing.assert_allclose(grad(s, t, jnp.float32(a))[0], want[0], rtol=1e-5, atol=1e-6)
    # A student with zeros against a full teacher: reverse KL (alpha = 0) is finite, and the
    # unused side (around the teacher, where the student is 0) must not leak NaN.
    point = jnp.array([[0.0, -jnp.inf, -jnp.inf]])
    for a in (0.0, 0.3):
        got = grad(point, jnp.zeros((1, 3)), jnp.float32(a))
        chex.assert_tree_all_finite(got)


@pytest.mark.parametrize("name", sorted(jaxdiv.names()))
def test_extreme_logits_keep_the_normaliser(name):
    """Regression (found by test_properties.py): log_softmax as x - logsumexp(x) rounded
    1e30 + log V to 1e30, so a uniform row of 1e30 logits got log p = 0 for every class and
    e.g. forward KL against a uniform teacher was -log V instead of 0."""
    kw = {"alpha_divergence": {"alpha": 0.3}, "top_k_kl": {"k": 2}}.get(name, {})
    if name == "f_divergence":
        kw = {"f": lambda u: jnp.square(u - 1.0)}
    fn = jaxdiv.get(name)
    huge = jnp.full((2, 5), 1e30)
    np.testing.assert_allclose(fn(huge, jnp.zeros((2, 5)), **kw), 0.0, atol=1e-6)
    point = jnp.array([[1e30, -1e30, -1e30], [-1e30, 1e30, 1e30]])
    np.testing.assert_allclose(fn(point, point, **kw), 0.0, atol=1e-6)


def test_skew_kls_at_alpha_one_have_finite_gradients_with_zeros():
    """Regression (found by test_properties.py): at alpha = 1 the mixture's other term has
    weight 0, so a zero probability there made logaddexp(-inf, -inf) and NaN gradients in
    rows whose value (KL(p‖p) = 0) is finite."""
    zeros = jnp.array([[-jnp.inf, 0.0, 1.0], [0.0, 2.0, -jnp.inf]])
    full = jnp.array([[0.5, 0.0, 1.0], [0.0, 1.0, 2.0]])
    for fn, (s, t) in ((jaxdiv.skew_reverse_kl, (zeros, full)), (jaxdiv.skew_kl, (full, zeros))):
        for alpha in (1.0, jnp.float32(1.0)):
            value = fn(s, t, alpha=alpha)
            np.testing.assert_allclose(value, 0.0, atol=1e-7)
            loss = lambda a, b, al=alpha, f=fn: f(a, b, alpha=al).sum()
            chex.assert_tree_all_finite(jax.grad(loss, argnums=(0, 1))(s, t))


def test_f_divergence_ratio_overflow_is_the_limit_not_nan():
    """Regression (found by test_properties.py): extreme logits made p_t / p_s overflow to inf
    next to an underflowed p_s, and p_s · f(inf) = 0 · inf gave NaN."""
    s = jnp.array([[0.0, 1e30, 1e30], [0.0, 1.0, 2.0]])
    t = jnp.zeros((2, 3))
    pearson = jaxdiv.f_divergence(s, t, f=lambda u: jnp.square(u - 1.0))
    assert pearson[0] == jnp.inf and jnp.isfinite(pearson[1])
    # p_s = e^-104 underflows to 0 while u = p_t / p_s ~ e^88 is finite but f(u) = (u - 1)^2
    # overflows: 0 · inf was NaN too.
    under, teacher = jnp.array([[0.0, -105.0, -105.0]]), jnp.array([[0.0, -18.0, -18.0]])
    assert jaxdiv.f_divergence(under, teacher, f=lambda u: jnp.square(u - 1.0)) == jnp.inf
    tv = jaxdiv.f_divergence(s, t, f=lambda u: 0.5 * jnp.abs(u - 1.0), f_slope_at_infinity=0.5)
    np.testing.assert_allclose(tv, jaxdiv.total_variation(s, t), rtol=1e-6)
    grads = jax.grad(
        lambda a: jaxdiv.f_divergence(
            a, t, f=lambda u: 0.5 * jnp.abs(u - 1.0), f_slope_at_infinity=0.5
        ).sum()
    )(s)
    chex.assert_tree_all_finite(grads)


def test_f_divergence_reproduces_the_family():
    s, t = logits(28, (4, 7)), logits(29, (4, 7))
    cases = [
        (lambda u: -jnp.log(u), jaxdiv.reverse_kl(s, t)),
        (lambda u: 0.5 * jnp.abs(u - 1.0), jaxdiv.total_variation(s, t)),
        (lambda u: jnp.square(u - 1.0), jaxdiv.chi_squared(s, t)),
        (lambda u: 0.5 * jnp.square(jnp.sqrt(u) - 1.0), jaxdiv.hellinger(s, t)),
    ]
    for f, want in cases:
        np.testing.assert_allclose(jaxdiv.f_divergence(s, t, f=f), want, rtol=1e-5, atol=1e-6)
    # Off-support classes use the slope at infinity: TV with a zero-probability student class.
    s0 = s.copy()
    s0[:, 2] = -np.inf
    np.testing.assert_allclose(
        jaxdiv.f_divergence(s0, t, f=lambda u: 0.5 * jnp.abs(u - 1.0), f_slope_at_infinity=0.5),
        jaxdiv.total_variation(s0, t),
        rtol=1e-5,
    )


def test_hinton_kd_is_t_squared_forward_kl():
    s, t = logits(30, (3, 5)), logits(31, (3, 5))
    np.testing.assert_allclose(
        jaxdiv.hinton_kd(s, t, temperature=2.5),
        6.25 * jaxdiv.forward_kl(s, t, temperature=2.5),
        rtol=1e-6,
    )


def test_traced_temperature_does_not_retrace():
    s, t = logits(32, (3, 5)), logits(33, (3, 5))
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(temperature):
        return jaxdiv.forward_kl(s, t, temperature=temperature)

    for T in (0.5, 1.0, 2.0):
        np.testing.assert_allclose(f(T), ref_forward_kl(s, t, T), rtol=1e-5)


# ----------------------------------------------------------------- masked_mean and registry


def test_masked_mean():
    x = jnp.array([[1.0, 2.0, jnp.nan], [4.0, jnp.inf, 6.0]])
    mask = jnp.array([[True, True, False], [True, False, True]])
    np.testing.assert_allclose(jaxdiv.masked_mean(x, mask), 13.0 / 4)
    np.testing.assert_allclose(jaxdiv.masked_mean(x, mask, axis=1), [1.5, 5.0])
    np.testing.assert_allclose(jaxdiv.masked_mean(x, jnp.zeros_like(mask)), 0.0)
    g = jax.grad(lambda v: jaxdiv.masked_mean(v, mask))(x)
    np.testing.assert_allclose(g, np.where(mask, 0.25, 0.0))
    np.testing.assert_allclose(jaxdiv.masked_mean(jnp.arange(4.0)), 1.5)
    with pytest.raises(TypeError, match="boolean"):
        jaxdiv.masked_mean(x, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="broadcast"):
        jaxdiv.masked_mean(x, jnp.ones((4,), bool))


def test_registry():
    expected = {
        "forward_kl",
        "reverse_kl",
        "generalized_jsd",
        "jensen_shannon",
        "skew_kl",
        "skew_reverse_kl",
        "total_variation",
        "hellinger",
        "chi_squared",
        "alpha_divergence",
        "f_divergence",
        "hinton_kd",
    }
    assert expected <= set(jaxdiv.names())
    for name in jaxdiv.names():
        assert jaxdiv.get(name).__name__ == name
        assert getattr(jaxdiv, name) is jaxdiv.get(name)
    with pytest.raises(ValueError, match="Unknown divergence 'kl'.*forward_kl"):
        jaxdiv.get("kl")


def test_public_api_is_exported():
    for name in jaxdiv.__all__:
        assert callable(getattr(jaxdiv, name)), name


# ----------------------------------------------------------------- errors


def test_errors_name_the_argument_with_expected_and_got():
    s = jnp.zeros((2, 3))
    with pytest.raises(TypeError, match="`student_logits` must have a floating dtype.*int32"):
        jaxdiv.forward_kl(jnp.zeros((2, 3), jnp.int32), s)
    with pytest.raises(TypeError, match="`teacher_logits`"):
        jaxdiv.reverse_kl(s, jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"same shape, got \(2, 3\) and \(2, 4\)"):
        jaxdiv.forward_kl(s, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"`axis` must be in \[-2, 2\).*got 2"):
        jaxdiv.forward_kl(s, s, axis=2)
    with pytest.raises(
        ValueError, match=r"`beta` must be a finite number in \[0.0, 1.0\], got 1.5"
    ):
        jaxdiv.generalized_jsd(s, s, beta=1.5)
    with pytest.raises(ValueError, match="`alpha`.*got -0.1"):
        jaxdiv.skew_kl(s, s, alpha=-0.1)
    with pytest.raises(ValueError, match="`alpha` must be a finite number.*got nan"):
        jaxdiv.alpha_divergence(s, s, alpha=float("nan"))
    with pytest.raises(ValueError, match="`alpha`.*got inf"):
        jaxdiv.alpha_divergence(s, s, alpha=jnp.inf)
    with pytest.raises(
        ValueError, match=r"`temperature` must be a finite number in \(0.0, inf\], got 0.0"
    ):
        jaxdiv.forward_kl(s, s, temperature=0.0)
    with pytest.raises(ValueError, match="`temperature`.*got -1.0"):
        jaxdiv.hinton_kd(s, s, temperature=-1.0)
    with pytest.raises(ValueError, match=r"`where` must have shape \(2,\) \(per row\) or \(2, 3\)"):
        jaxdiv.forward_kl(s, s, where=jnp.ones((3,), bool))
    with pytest.raises(TypeError, match="`where` must be a boolean mask"):
        jaxdiv.forward_kl(s, s, where=jnp.ones((2,)))
    with pytest.raises(ValueError, match="rank >= 1"):
        jaxdiv.forward_kl(jnp.float32(0.0), jnp.float32(0.0))
    with pytest.raises(TypeError, match="`f` must be a callable"):
        jaxdiv.f_divergence(s, s, f=2.0)
    # Checks fire at trace time, so they also fire under jit.
    with pytest.raises(ValueError, match="same shape"):
        jax.jit(jaxdiv.forward_kl)(s, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="`beta`"):
        jax.jit(lambda a, b: jaxdiv.generalized_jsd(a, b, beta=2.0))(s, s)
