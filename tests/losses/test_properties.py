"""Property-based tests (hypothesis) for every public divergence and objective of jaxdiv.

What API.md §1 promises, checked on drawn inputs: no NaN in values or gradients; masked rows
(per row or per class) give exactly 0 with zero gradients even when they hold NaN or -inf; a
per-class mask equals removing the classes; bf16 inputs compute in float32; extreme logits
(±1e30) and V=1 stay finite; +inf (never NaN) exactly where a KL is infinite; and the
identities of the definitions (JSD and α-divergence endpoints, Pinsker, Hellinger ≤ TV,
D(p, p) = 0, SinKD ≥ 0 and ≈ 0 at equality for small ε).

Shapes come from a small fixed set and hyperparameters are traced scalars, so each jitted
function compiles once per shape (the examples reuse it): profiles in tests/conftest.py.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxdiv
import jaxdiv.experimental

INF = math.inf
SHAPES = [(4, 5), (3, 1)]  # rows x classes; V = 1 is the degenerate one-class case
MODERATE = st.floats(-20.0, 20.0, width=32)
EXTREME = st.sampled_from([1e30, -1e30, 3e29, -3e29])

# ---------------------------------------------------------------- per-row divergences

# name -> (fn, traced hyperparameter name or None, its strategy, static kwargs, finite on
# finite logits even at float32 extremes); chi² and f_divergence(Pearson) are mathematically
# finite for finite logits but may exceed the float range (e^{Δ logits}): +inf, never NaN.
PEARSON = lambda u: jnp.square(u - 1.0)
ROW_FNS = {
    "forward_kl": (jaxdiv.forward_kl, None, None, {}, True),
    "reverse_kl": (jaxdiv.reverse_kl, None, None, {}, True),
    "generalized_jsd": (jaxdiv.generalized_jsd, "beta", st.floats(0.0, 1.0), {}, True),
    "jensen_shannon": (jaxdiv.jensen_shannon, None, None, {}, True),
    "skew_kl": (jaxdiv.skew_kl, "alpha", st.floats(0.0, 1.0), {}, True),
    "skew_reverse_kl": (jaxdiv.skew_reverse_kl, "alpha", st.floats(0.0, 1.0), {}, True),
    "total_variation": (jaxdiv.total_variation, None, None, {}, True),
    "hellinger": (jaxdiv.hellinger, None, None, {}, True),
    "chi_squared": (jaxdiv.chi_squared, None, None, {}, False),
    "alpha_divergence": (jaxdiv.alpha_divergence, "alpha", st.floats(0.0, 1.0), {}, True),
    "f_divergence": (jaxdiv.f_divergence, None, None, {"f": PEARSON}, False),
    "hinton_kd": (jaxdiv.hinton_kd, None, None, {}, True),
    "top_k_kl": (jaxdiv.top_k_kl, None, None, {"renormalize": True}, True),
    "bd_kd": (jaxdiv.experimental.bd_kd, "sharpness", st.floats(0.0, 5.0), {}, True),
    "bd_kd_teacher": (jaxdiv.experimental.bd_kd_teacher, None, None, {"balanced": True}, True),
}


def test_every_registered_divergence_is_covered():
    assert set(jaxdiv.names()) | set(jaxdiv.experimental.names()) <= set(ROW_FNS)


HYPER_NAMES = tuple(n for n in sorted(ROW_FNS) if ROW_FNS[n][1] is not None)


@functools.cache
def all_rows(v: int, class_mask: bool, grads: bool = True):
    """One jitted program: {name: (values, d sum / d s, d sum / d t)} for every divergence.

    One compile per (V, mask kind) serves all the divergences and every example; the
    hyperparameters are traced (a dict of scalars)."""

    def one(name, s, t, temperature, h, where):
        fn, hyper, _, static, _ = ROW_FNS[name]
        kw = dict(static, k=min(2, v)) if name == "top_k_kl" else dict(static)
        if hyper is not None:
            kw[hyper] = h[name]
        return fn(s, t, temperature=temperature, where=where, **kw)

    def run(s, t, temperature, h, where):
        out = {}
        for name in sorted(ROW_FNS):
            f = functools.partial(one, name, temperature=temperature, h=h, where=where)
            if grads:
                values, vjp = jax.vjp(f, s, t)
                out[name] = (values, *vjp(jnp.ones_like(values)))
            else:
                out[name] = (f(s, t),)
        return out

    return jax.jit(run)


def draw_hyper(data) -> dict:
    return {n: jnp.float32(data.draw(ROW_FNS[n][2], label=n)) for n in HYPER_NAMES}


def fix_rows(x: np.ndarray) -> np.ndarray:
    """Rows that drew only -inf get a finite first class (softmax of all -inf is undefined)."""
    empty = np.isneginf(x).all(axis=-1)
    x = x.copy()
    x[empty, 0] = 0.0
    return x


@st.composite
def logit_pair(draw, shape, regime):
    """(student, teacher) float32 logits: moderate, with ±1e30 entries, or with -inf (zeros)."""
    elements = {
        "moderate": MODERATE,
        "extreme": st.one_of(MODERATE, EXTREME),
        "zeros": st.one_of(MODERATE, st.just(-INF)),
    }[regime]
    s = draw(hnp.arrays(np.float32, shape, elements=elements))
    t = draw(hnp.arrays(np.float32, shape, elements=elements))
    return fix_rows(s), fix_rows(t)


@st.composite
def row_case(draw):
    # (shape, per-class mask): V = 1 only with row masks (a class mask there is the same).
    shape, per_class = draw(st.sampled_from([((4, 5), False), ((4, 5), True), ((3, 1), False)]))
    regime = draw(st.sampled_from(["moderate", "extreme", "zeros"]))
    s, t = draw(logit_pair(shape, regime))
    temperature = draw(st.floats(0.25, 4.0))
    mask = draw(hnp.arrays(np.bool_, shape if per_class else shape[:1]))
    return shape, regime, s, t, temperature, per_class, mask


def keep_a_finite_class(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Rows whose kept classes are all -inf get a finite first kept class."""
    empty = (np.isneginf(x) | ~mask).all(axis=-1) & mask.any(axis=-1)
    first = np.argmax(mask, axis=-1)
    x = x.copy()
    x[np.nonzero(empty)[0], first[empty]] = 0.0
    return x


def poison(x: np.ndarray, row_masked: np.ndarray, value: float) -> np.ndarray:
    """NaN or -inf in every masked row: nothing of it may reach values or gradients."""
    return np.where(row_masked[:, None], np.float32(value), x)


@given(data=st.data())
def test_row_divergence_values_and_gradients(data):
    shape, regime, s, t, temperature, per_class, mask = data.draw(row_case())
    rows, v = shape
    row_kept = mask.any(axis=-1) if per_class else mask
    if per_class:  # masked classes hold garbage too: they are removed before the softmax
        s, t = keep_a_finite_class(s, mask), keep_a_finite_class(t, mask)
        s = np.where(mask, s, np.float32(np.nan))
        t = np.where(mask, t, np.float32(-INF))
    s = poison(s, ~row_kept, data.draw(st.sampled_from([np.nan, -INF])))
    t = poison(t, ~row_kept, np.nan)
    out = all_rows(v, per_class)(s, t, jnp.float32(temperature), draw_hyper(data), mask)
    one = mask.sum(-1) == 1 if per_class else np.full(rows, v == 1)  # a single class kept
    for name, (values, g_s, g_t) in out.items():
        values, g_s, g_t = map(np.asarray, (values, g_s, g_t))
        assert values.shape == (rows,) and values.dtype == np.float32, name
        assert not np.isnan(values).any(), (name, values)
        assert (values[~row_kept] == 0).all(), (name, values)
        assert (g_s[~row_kept] == 0).all() and (g_t[~row_kept] == 0).all(), name
        assert (values >= -1e-6).all(), (name, values)  # all of them are divergences (≥ 0)
        if regime != "zeros":  # one class: both are the point mass, D = 0
            np.testing.assert_allclose(values[one & row_kept], 0.0, atol=1e-6, err_msg=name)
        if regime != "zeros" and ROW_FNS[name][4]:
            assert np.isfinite(values).all(), (name, values)
        # Gradients: finite for every row whose value is finite (rows are independent). χ² and
        # f(u) = (u - 1)² near the float limit (values up to ~e^88) have gradients beyond it:
        # +-inf there, never NaN.
        finite = np.isfinite(values)
        grads = np.concatenate([g_s[finite], g_t[finite]])
        if ROW_FNS[name][4]:
            assert np.isfinite(grads).all(), name
        assert not np.isnan(grads).any(), name


@given(data=st.data())
def test_kl_is_inf_exactly_off_support_never_nan(data):
    """Forward KL is +inf iff p_s = 0 < p_t somewhere (reverse: p_t = 0 < p_s); never NaN."""
    shape = data.draw(st.sampled_from(SHAPES))
    s, t = data.draw(logit_pair(shape, "zeros"))
    fwd, rev = np.asarray(FKL(s, t)), np.asarray(RKL(s, t))
    s_zero, t_zero = np.isneginf(s), np.isneginf(t)
    np.testing.assert_array_equal(np.isinf(fwd), (s_zero & ~t_zero).any(-1))
    np.testing.assert_array_equal(np.isinf(rev), (t_zero & ~s_zero).any(-1))
    assert not np.isnan(fwd).any() and not np.isnan(rev).any()
    assert (fwd[np.isinf(fwd)] > 0).all() and (rev[np.isinf(rev)] > 0).all()


@given(data=st.data())
def test_bf16_inputs_compute_in_float32(data):
    s, t = data.draw(logit_pair((4, 5), "moderate"))
    s16, t16 = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
    mask, h = np.ones(4, bool), draw_hyper(data)
    got = all_rows(5, False, grads=False)(s16, t16, jnp.float32(1.5), h, mask)
    s32, t32 = s16.astype(jnp.float32), t16.astype(jnp.float32)
    want = all_rows(5, False)(s32, t32, jnp.float32(1.5), h, mask)
    for name in ROW_FNS:
        assert got[name][0].dtype == jnp.float32, name
        np.testing.assert_allclose(got[name][0], want[name][0], rtol=1e-6, atol=1e-7, err_msg=name)


@given(data=st.data())
def test_per_class_mask_equals_removing_the_classes(data):
    """`where` [..., V] is the same as giving both distributions zero mass there."""
    s, t = data.draw(logit_pair((4, 5), "moderate"))
    mask = data.draw(hnp.arrays(np.bool_, (4, 5)))
    kept = mask.any(-1)
    h, f = draw_hyper(data), all_rows(5, True)
    masked = f(np.where(mask, s, np.nan), t, jnp.float32(1.0), h, mask)
    s_rm, t_rm = np.where(mask, s, -INF), np.where(mask, t, -INF)
    s_rm[~kept], t_rm[~kept] = 0.0, 0.0
    removed = f(s_rm, t_rm, jnp.float32(1.0), h, np.ones((4, 5), bool))
    for name in ROW_FNS:
        got, want = np.asarray(masked[name][0]), np.asarray(removed[name][0])
        np.testing.assert_allclose(got[kept], want[kept], rtol=1e-5, atol=1e-6, err_msg=name)
        assert (got[~kept] == 0).all(), name


# ---------------------------------------------------------------- identities


def _pair(data, shape=(4, 5)):
    return data.draw(logit_pair(shape, "moderate"))


@functools.cache
def _jit(fn, **static):
    return jax.jit(functools.partial(fn, **static))


# Module-level jitted entry points: created once, so the examples reuse their compilations.
FKL = jax.jit(jaxdiv.forward_kl)
RKL = jax.jit(jaxdiv.reverse_kl)
TV = jax.jit(jaxdiv.total_variation)
HELLINGER = jax.jit(jaxdiv.hellinger)
JSD = jax.jit(lambda a, b, beta: jaxdiv.generalized_jsd(a, b, beta=beta))
ALPHA = jax.jit(lambda a, b, alpha: jaxdiv.alpha_divergence(a, b, alpha=alpha))


def _value_and_grads(fn, argnums=(0, 1), **jit_kw):
    return jax.jit(jax.value_and_grad(fn, argnums=argnums), **jit_kw)


MDCS = _value_and_grads(jaxdiv.mdcs_consistency)
MI = _value_and_grads(jaxdiv.mi_alpha_bound)
FDPO = _value_and_grads(
    lambda a, b, c, d, beta, divergence: jaxdiv.fdpo_loss(
        a, b, c, d, beta=beta, divergence=divergence
    ).sum(),
    static_argnames="divergence",
)
FDPG = _value_and_grads(
    lambda a, b, c, divergence: jaxdiv.fdpg_loss(a, b, c, divergence=divergence, log_z=0.0).sum(),
    argnums=0,
    static_argnames="divergence",
)
CS = {
    fn: _value_and_grads(fn)
    for fn in (
        jaxdiv.cauchy_schwarz_divergence,
        jaxdiv.cs_mutual_information,
        jaxdiv.conditional_cs_divergence,
    )
}
GAP = _value_and_grads(
    lambda z, tokens, where: jaxdiv.perplexity_entropy_gap(z, tokens, where=where).sum(),
    argnums=0,
)
DCPDD = jax.jit(lambda lp, ids, ref, where: jaxdiv.dcpdd_score(lp, ids, ref, a=0.5, where=where))


@given(data=st.data())
def test_identity_divergence_of_a_distribution_with_itself_is_zero(data):
    s, _ = _pair(data)
    temperature = data.draw(st.floats(0.25, 4.0))
    out = all_rows(5, False)(s, s, jnp.float32(temperature), draw_hyper(data), np.ones(4, bool))
    for name, (values, g_s, g_t) in out.items():
        np.testing.assert_allclose(values, 0.0, atol=2e-5, err_msg=name)
        assert np.isfinite(g_s).all() and np.isfinite(g_t).all(), name


@given(data=st.data())
def test_jsd_endpoints_are_the_two_kls(data):
    s, t = _pair(data)
    traced = JSD
    fwd, rev = FKL(s, t), RKL(s, t)
    np.testing.assert_array_equal(jaxdiv.generalized_jsd(s, t, beta=0.0), fwd)
    np.testing.assert_array_equal(jaxdiv.generalized_jsd(s, t, beta=1.0), rev)
    np.testing.assert_allclose(traced(s, t, 0.0), fwd, rtol=1e-6)
    np.testing.assert_allclose(traced(s, t, 1.0), rev, rtol=1e-6)
    js = jaxdiv.jensen_shannon(s, t)
    np.testing.assert_allclose(js, jaxdiv.jensen_shannon(t, s), rtol=1e-5, atol=1e-6)
    assert (np.asarray(js) <= math.log(2) + 1e-6).all()


@given(data=st.data())
def test_alpha_divergence_limits_are_the_two_kls(data):
    s, t = data.draw(logit_pair((4, 5), "moderate"))
    s, t = s / 4, t / 4  # moderate ratios: the O(α) slope of the limit stays small
    traced = ALPHA
    fwd, rev = np.asarray(FKL(s, t)), np.asarray(RKL(s, t))
    np.testing.assert_allclose(traced(s, t, 1.0), fwd, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(traced(s, t, 0.0), rev, rtol=1e-5, atol=1e-6)
    eps = 1e-4
    tol = dict(rtol=1e-2, atol=1e-4)
    np.testing.assert_allclose(traced(s, t, 1.0 - eps), fwd, **tol)
    np.testing.assert_allclose(traced(s, t, 1.0 + eps), fwd, **tol)
    np.testing.assert_allclose(traced(s, t, eps), rev, **tol)
    np.testing.assert_allclose(traced(s, t, -eps), rev, **tol)
    # α = 1/2 is four times the squared Hellinger distance.
    np.testing.assert_allclose(traced(s, t, 0.5), 4 * HELLINGER(s, t), rtol=1e-4, atol=1e-6)


@given(data=st.data(), alpha=st.floats(-3.0, 4.0))
def test_alpha_divergence_any_real_alpha_is_nonnegative_never_nan(data, alpha):
    s, t = data.draw(logit_pair((4, 5), data.draw(st.sampled_from(["moderate", "zeros"]))))
    values = np.asarray(ALPHA(s, t, alpha))
    assert not np.isnan(values).any() and (values >= 0).all(), values


@given(data=st.data())
def test_pinsker_and_hellinger_bounds(data):
    """TV ≤ sqrt(KL/2) in both directions (Pinsker) and H² ≤ TV (squared Hellinger)."""
    s, t = _pair(data)
    temperature = data.draw(st.floats(0.25, 4.0))
    s, t = s / temperature, t / temperature
    tv = np.asarray(TV(s, t), np.float64)
    for kl in (FKL(s, t), RKL(s, t)):
        # A float32 KL is exact to ~1e-7 absolute (Σ p·(log p − log q) cancels near equality:
        # logits 0 vs 0.001 give 1.7e-8 for the true 8e-8), so near 0 it can round below the
        # bound or to -1e-8: Pinsker is checked as TV² ≤ KL/2 up to that float32 error.
        kl = np.maximum(np.asarray(kl, np.float64), 0.0)
        assert (tv**2 <= kl / 2 + 1e-6).all(), (tv, kl)
    assert (np.asarray(HELLINGER(s, t)) <= tv + 1e-6).all()
    assert (tv <= 1 + 1e-6).all()


# ---------------------------------------------------------------- batch-wise objectives


@functools.cache
def _sinkhorn_value_and_grad():
    def f(s, t, epsilon, where):
        return jaxdiv.sinkhorn_kd(s, t, epsilon=epsilon, num_iters=30, where=where)

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))


@given(data=st.data())
def test_sinkhorn_nonnegative_finite_and_masked_rows_inert(data, allow_rank_promotion):
    s, t = data.draw(logit_pair((6, 5), data.draw(st.sampled_from(["moderate", "extreme"]))))
    mask = data.draw(hnp.arrays(np.bool_, (6,)))
    s, t = poison(s, ~mask, np.nan), poison(t, ~mask, -INF)
    epsilon = data.draw(st.floats(0.05, 1.0))
    value, (g_s, g_t) = _sinkhorn_value_and_grad()(s, t, jnp.float32(epsilon), mask)
    assert np.isfinite(value) and value >= 0
    assert np.isfinite(g_s).all() and np.isfinite(g_t).all()
    assert (np.asarray(g_s)[~mask] == 0).all() and (np.asarray(g_t)[~mask] == 0).all()
    if not mask.any():
        assert value == 0


@given(data=st.data())
def test_sinkhorn_at_equality_is_small_for_small_epsilon(data, allow_rank_promotion):
    """s = t: W has a zero diagonal, and the entropic plan's cost is at most ε·N·log N (the
    plan's entropy range); it tends to 0 as ε → 0 (documented in `sinkhorn_kd`)."""
    s, _ = data.draw(logit_pair((6, 5), "moderate"))
    epsilon = data.draw(st.sampled_from([0.05, 0.1]))
    value, _ = _sinkhorn_value_and_grad()(s, s, jnp.float32(epsilon), np.ones(6, bool))
    assert 0 <= value <= epsilon * 6 * math.log(6) + 1e-5


@given(data=st.data())
def test_mdcs_consistency_nonnegative_and_masks(data):
    strong, weak = data.draw(logit_pair((5, 4), data.draw(st.sampled_from(["moderate", "zeros"]))))
    labels = data.draw(hnp.arrays(np.int32, (5,), elements=st.integers(0, 3)))
    mask = data.draw(hnp.arrays(np.bool_, (5,)))
    strong = poison(strong, ~mask, np.nan)
    value, (g_s, g_w) = MDCS(strong, weak, labels, where=mask)
    selected = mask & (np.argmax(weak, -1) == labels)
    assert not np.isnan(value) and value >= 0
    if not selected.any():
        assert value == 0
    if np.isfinite(value):
        assert np.isfinite(g_s).all() and np.isfinite(g_w).all()
    assert (np.asarray(g_s)[~mask] == 0).all()


@given(
    scores=hnp.arrays(np.float32, (4, 4), elements=st.one_of(MODERATE, EXTREME)),
    alpha=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_mi_alpha_bound_finite_on_critic_scale_never_nan(scores, alpha):
    baseline = np.zeros(4, np.float32)
    # Critic scores within ±20: the bound and its gradients are finite.
    value, grads = MI(np.clip(scores, -20, 20), baseline, alpha=alpha)
    assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads)
    # ±1e30: the TUBA end's e^{S - b} is beyond any float (-inf), but never NaN.
    assert not np.isnan(MI(scores, baseline, alpha=alpha)[0])


@given(
    logps=hnp.arrays(np.float32, (4, 3), elements=st.one_of(st.floats(-1e4, 0.0, width=32))),
    divergence=st.sampled_from(["reverse_kl", "forward_kl", "js", "alpha"]),
    beta=st.floats(0.01, 10.0),
)
def test_fdpo_loss_finite_nonnegative_for_any_log_ratio(logps, divergence, beta):
    value, grads = FDPO(logps[0], logps[1], logps[2], logps[3], beta, divergence)
    assert np.isfinite(value) and value >= 0
    assert all(np.isfinite(g).all() for g in grads)


@given(
    logps=hnp.arrays(np.float32, (3, 6), elements=st.floats(-50.0, 0.0, width=32)),
    divergence=st.sampled_from(
        ["forward_kl", "reverse_kl", "js", "tv", "chi_squared", "reverse_chi_squared"]
    ),
)
def test_fdpg_loss_finite(logps, divergence):
    value, grad = FDPG(logps[0], logps[1], logps[2], divergence)
    assert not np.isnan(value) and np.isfinite(grad).all()


SAMPLES = hnp.arrays(np.float32, (5, 3), elements=st.floats(-10.0, 10.0, width=32))


@given(x=SAMPLES, y=SAMPLES, sigma=st.floats(0.1, 10.0))
def test_cauchy_schwarz_nonnegative_zero_at_equality_finite(x, y, sigma):
    f = CS[jaxdiv.cauchy_schwarz_divergence]
    value, grads = f(x, y, sigma=sigma)
    assert np.isfinite(value) and value >= -1e-5 and all(np.isfinite(g).all() for g in grads)
    np.testing.assert_allclose(f(x, x, sigma=sigma)[0], 0.0, atol=1e-5)
    for fn, args in (
        (jaxdiv.cs_mutual_information, (x, y)),
        (jaxdiv.conditional_cs_divergence, (x, y, x[:, :3])),
    ):
        value, grads = CS[fn](*args, sigma=sigma)
        assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads), fn.__name__


@given(data=st.data())
def test_detection_scores_masked_positions_and_empty_rows(data):
    logits = data.draw(hnp.arrays(np.float32, (3, 6, 5), elements=MODERATE))
    tokens = data.draw(hnp.arrays(np.int32, (3, 6), elements=st.integers(0, 4)))
    mask = data.draw(hnp.arrays(np.bool_, (3, 6)))
    logits = np.where(mask[..., None], logits, np.float32(np.nan))
    value, grad = GAP(logits, tokens, mask)
    assert np.isfinite(value) and np.isfinite(grad).all()
    assert (np.asarray(grad)[~mask] == 0).all()
    per_seq = jaxdiv.perplexity_entropy_gap(logits, tokens, where=mask)
    assert (np.asarray(per_seq)[~mask.any(-1)] == 0).all()
    logp = jax.nn.log_softmax(np.nan_to_num(logits))
    token_logprobs = np.take_along_axis(np.asarray(logp), tokens[..., None], -1)[..., 0]
    token_logprobs = np.where(mask, token_logprobs, np.float32(np.nan))
    ref = np.full(5, 0.2, np.float32)
    score = np.asarray(DCPDD(token_logprobs, tokens, ref, mask))
    assert np.isfinite(score).all() and (score >= 0).all() and (score <= 0.5 + 1e-6).all()
    assert (np.asarray(score)[~mask.any(-1)] == 0).all()


@given(data=st.data())
def test_fused_linear_divergence_equals_unfused(data):
    h = data.draw(hnp.arrays(np.float32, (2, 7, 3), elements=st.floats(-3, 3, width=32)))
    w = data.draw(hnp.arrays(np.float32, (2, 3, 6), elements=st.floats(-3, 3, width=32)))
    mask = data.draw(hnp.arrays(np.bool_, (7,)))
    name = data.draw(st.sampled_from(["forward_kl", "jensen_shannon", "total_variation"]))
    f = _jit(jaxdiv.fused_linear_divergence, divergence=name, chunk_size=3)
    fused = f(h[0], w[0], h[1], w[1], where=mask)
    plain = jaxdiv.get(name)(h[0] @ w[0], h[1] @ w[1], where=mask)
    np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-6)


@given(
    values=hnp.arrays(np.float32, (6,), elements=st.one_of(MODERATE, st.just(np.nan))),
    mask=hnp.arrays(np.bool_, (6,)),
)
def test_masked_mean_ignores_unselected_nan(values, mask):
    keep = mask & ~np.isnan(values)
    value, grad = jax.value_and_grad(jaxdiv.masked_mean)(values, keep)
    assert np.isfinite(value) and np.isfinite(grad).all()
    want = values[keep].mean() if keep.any() else 0.0
    np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-5)


@given(
    prev=hnp.arrays(np.float32, (3, 4), elements=st.floats(0.0, 1.0, width=32)),
    labels=hnp.arrays(np.int32, (3,), elements=st.integers(0, 3)),
    epoch=st.integers(0, 9),
)
def test_pskd_targets_are_distributions(prev, labels, epoch):
    prev = prev + 1e-3
    prev = prev / prev.sum(-1, keepdims=True)
    onehot = np.eye(4, dtype=np.float32)[labels]
    targets = np.asarray(jaxdiv.pskd_targets(onehot, prev, epoch=epoch, num_epochs=10))
    assert (targets >= 0).all() and (targets <= 1 + 1e-6).all()
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-5)


@functools.cache
def _sequence_match_value_and_grad():
    def f(z, a, is_data, where, gamma):
        return jaxdiv.experimental.sequence_match_loss(z, a, is_data=is_data, where=where,
                                                       gamma=gamma)  # fmt: skip

    return jax.jit(jax.value_and_grad(f))


@given(data=st.data())
def test_sequence_match_finite_with_garbage_in_masked_positions(data):
    logits = data.draw(hnp.arrays(np.float32, (4, 5, 3), elements=st.one_of(MODERATE, EXTREME)))
    actions = data.draw(hnp.arrays(np.int32, (4, 5), elements=st.integers(-100, 2)))
    lengths = data.draw(hnp.arrays(np.int32, (4,), elements=st.integers(0, 5)))
    is_data = data.draw(hnp.arrays(np.bool_, (4,)))
    where = np.arange(5)[None, :] < lengths[:, None]
    actions = np.where(where, np.abs(actions) % 3, actions)
    logits = np.where(where[..., None], np.clip(logits, -1e4, 1e4), np.float32(np.nan))
    gamma = data.draw(st.floats(0.5, 1.0))
    value, grad = _sequence_match_value_and_grad()(logits, actions, is_data, where, gamma)
    assert np.isfinite(value) and np.isfinite(grad).all()
    assert (np.asarray(grad)[~where] == 0).all()
    if not where.any():  # an all-masked batch
        assert value == 0
