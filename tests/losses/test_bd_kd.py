"""BD-KD vs an independent float64 NumPy transcription of its (documented, unverified) rule."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxdiv
import jaxdiv.experimental
from jaxdiv.experimental import bd_kd, bd_kd_teacher

INF = float("inf")

# ---------------------------------------------------------------- float64 NumPy references


def np_softmax(z, T=1.0):
    z = np.asarray(z, np.float64) / T
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def np_kl(p, q):
    out = np.zeros(p.shape[:-1])
    for idx in np.ndindex(*p.shape[:-1]):
        total = 0.0
        for pv, qv in zip(p[idx], q[idx], strict=True):
            if pv > 0:
                total += np.inf if qv == 0 else pv * (np.log(pv) - np.log(qv))
        out[idx] = total
    return out


def np_entropy(p):
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(-1)


def ref_bd_kd(s, t, kappa=INF, T=1.0):
    ps, pt = np_softmax(s, T), np_softmax(t, T)
    gap = np_entropy(ps) - np_entropy(pt)
    w = np.empty(gap.shape)
    for idx in np.ndindex(*gap.shape):
        g = gap[idx]
        if g == 0:
            w[idx] = 0.5
        elif kappa == INF:
            w[idx] = 1.0 if g > 0 else 0.0
        else:
            w[idx] = 1.0 / (1.0 + np.exp(-kappa * g))
    fwd, rev = np_kl(pt, ps), np_kl(ps, pt)
    with np.errstate(invalid="ignore"):
        return np.where(w < 1, (1 - w) * fwd, 0.0) + np.where(w > 0, w * rev, 0.0)


def logits(key, shape, scale=2.0):
    return scale * jax.random.normal(key, shape, jnp.float32)


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("kappa, T", [(INF, 1.0), (0.0, 2.5), (0.7, 1.0), (5.0, 2.5)])
def test_matches_reference(rng, kappa, T):
    ks, kt = jax.random.split(rng)
    s, t = logits(ks, (3, 5, 7)), logits(kt, (3, 5, 7), scale=3.0)
    out = bd_kd(s, t, sharpness=kappa, temperature=T)
    chex.assert_shape(out, (3, 5))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref_bd_kd(s, t, kappa, T), rtol=2e-5, atol=1e-6)


def test_matches_reference_x64(rng, x64):
    ks, kt = jax.random.split(rng)
    s = jax.random.normal(ks, (6, 9), jnp.float64)
    t = 2.0 * jax.random.normal(kt, (6, 9), jnp.float64)
    out = bd_kd(s, t, sharpness=1.3)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, ref_bd_kd(s, t, 1.3), rtol=1e-12)


def test_both_directions_occur(rng):
    # The reference test above is only meaningful if both branches are exercised.
    ks, kt = jax.random.split(rng)
    s, t = logits(ks, (3, 5, 7)), logits(kt, (3, 5, 7), scale=3.0)
    gap = np_entropy(np_softmax(s)) - np_entropy(np_softmax(t))
    assert (gap > 0).any() and (gap < 0).any()


# ---------------------------------------------------------------- identities


def test_identical_inputs_give_zero(rng):
    z = logits(rng, (4, 11))
    for kappa in (INF, 0.0, 3.0):
        np.testing.assert_array_equal(bd_kd(z, z, sharpness=kappa), np.zeros(4))


def test_saturated_weights_give_pure_kl():
    peaked = jnp.array([[6.0, 0.0, -1.0, 0.5]])
    flat = jnp.array([[0.1, 0.0, -0.1, 0.05]])
    ps, pt = np_softmax(flat), np_softmax(peaked)
    # Under-confident student (higher entropy): reverse KL(p_s || p_t).
    for kappa in (INF, 1e4):
        np.testing.assert_allclose(bd_kd(flat, peaked, sharpness=kappa), np_kl(ps, pt), rtol=1e-5)
        # Over-confident student: forward KL(p_t || p_s) with p_t = flat, p_s = peaked.
        np.testing.assert_allclose(bd_kd(peaked, flat, sharpness=kappa), np_kl(ps, pt), rtol=1e-5)


def test_zero_sharpness_is_half_jeffreys(rng):
    ks, kt = jax.random.split(rng)
    s, t = logits(ks, (5, 6)), logits(kt, (5, 6))
    ps, pt = np_softmax(s), np_softmax(t)
    np.testing.assert_allclose(
        bd_kd(s, t, sharpness=0.0), 0.5 * (np_kl(pt, ps) + np_kl(ps, pt)), rtol=1e-5
    )


def test_teacher_term_is_reverse_kl(rng):
    ks, kt = jax.random.split(rng)
    s, t = logits(ks, (2, 3, 8)), logits(kt, (2, 3, 8))
    np.testing.assert_allclose(
        bd_kd_teacher(s, t, temperature=2.0),
        np_kl(np_softmax(s, 2.0), np_softmax(t, 2.0)),
        rtol=2e-5,
    )


# ---------------------------------------------------------------- masks, axis, edge cases


@pytest.mark.parametrize("fn", [bd_kd, bd_kd_teacher])
def test_row_where_equals_slicing_with_finite_grads(rng, fn):
    ks, kt = jax.random.split(rng)
    s, t = logits(ks, (6, 5)), logits(kt, (6, 5))
    keep = jnp.array([True, False, True, True, False, True])
    s_bad = s.at[1].set(jnp.nan).at[4].set(-jnp.inf)
    t_bad = t.at[1].set(-jnp.inf).at[4].set(jnp.nan)
    out = fn(s_bad, t_bad, where=keep)
    np.testing.assert_allclose(out[keep], fn(s[keep], t[keep]), rtol=1e-6)
    np.testing.assert_array_equal(out[~keep], 0.0)
    grads = jax.grad(lambda a, b: fn(a, b, where=keep).sum(), argnums=(0, 1))(s_bad, t_bad)
    chex.assert_tree_all_finite(grads)


def test_class_where_equals_slicing(rng):
    ks, kt = jax.random.split(rng)
    s, t = logits(ks, (4, 7)), logits(kt, (4, 7))
    cls = np.array([True, True, False, True, False, True, True])
    mask = jnp.broadcast_to(jnp.asarray(cls), (4, 7))
    out = bd_kd(s.at[:, 2].set(jnp.nan), t, where=mask, sharpness=2.0)
    np.testing.assert_allclose(out, bd_kd(s[:, cls], t[:, cls], sharpness=2.0), rtol=1e-6)
    # Every class masked in a row: that row gives exactly 0.
    out = bd_kd(s, t, where=mask.at[2].set(False))
    assert out[2] == 0.0


def test_axis_equals_moveaxis(rng):
    ks, kt = jax.random.split(rng)
    s, t = logits(ks, (3, 8, 5)), logits(kt, (3, 8, 5))
    np.testing.assert_allclose(
        bd_kd(s, t, axis=1, sharpness=1.5),
        bd_kd(jnp.moveaxis(s, 1, -1), jnp.moveaxis(t, 1, -1), sharpness=1.5),
        rtol=1e-6,
    )


def test_neg_inf_teacher_logits_finite_where_divergence_finite():
    # Teacher has a zero class; the student is over-confident, so the hard switch picks forward
    # KL, which is finite with teacher zeros; gradients must be finite for both arguments.
    s = jnp.array([[5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    t = jnp.array([[0.0, 0.0, 0.0, -jnp.inf], [3.0, 0.0, 0.0, -jnp.inf]])
    out = bd_kd(s, t)
    np.testing.assert_allclose(out[0], np_kl(np_softmax(t[:1]), np_softmax(s[:1]))[0], rtol=1e-5)
    # Row 1: under-confident student -> reverse KL with p_t = 0 < p_s: +inf, not NaN.
    assert out[1] == jnp.inf
    grads = jax.grad(lambda a, b: bd_kd(a, b).sum(), argnums=(0, 1))(s[:1], t[:1])
    chex.assert_tree_all_finite(grads)
    # Any positive weight on the infinite direction makes the row infinite (documented).
    assert bd_kd(s, t, sharpness=1.0)[0] == jnp.inf


def test_bf16_inputs_compute_in_float32(rng):
    ks, kt = jax.random.split(rng)
    s, t = logits(ks, (4, 6)).astype(jnp.bfloat16), logits(kt, (4, 6)).astype(jnp.bfloat16)
    out = bd_kd(s, t, sharpness=2.0)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(
        out,
        ref_bd_kd(np.asarray(s, np.float64), np.asarray(t, np.float64), 2.0),
        rtol=1e-5,
    )


# ---------------------------------------------------------------- gradients


def test_check_grads_hard_switch(rng, x64):
    # With the hard switch the weights are piecewise constant, so finite differences (away from
    # ties) see exactly the stop-gradient derivative.
    ks, kt = jax.random.split(rng)
    s = jax.random.normal(ks, (3, 5), jnp.float64)
    t = 2.0 * jax.random.normal(kt, (3, 5), jnp.float64)
    check_grads(lambda a, b: bd_kd(a, b, temperature=1.5), (s, t), order=1, modes=("rev",))


def test_weights_are_stop_gradient(rng):
    ks, kt = jax.random.split(rng)
    s, t = logits(ks, (4, 6)), logits(kt, (4, 6))
    kappa = 0.8
    ps, pt = np_softmax(s), np_softmax(t)
    w = jnp.asarray(1 / (1 + np.exp(-kappa * (np_entropy(ps) - np_entropy(pt)))), jnp.float32)

    def fixed_weights(a, b):  # reference path: the same weights as constants
        la, lb = jax.nn.log_softmax(a), jax.nn.log_softmax(b)
        fwd = jnp.sum(jnp.exp(lb) * (lb - la), -1)
        rev = jnp.sum(jnp.exp(la) * (la - lb), -1)
        return jnp.sum((1 - w) * fwd + w * rev)

    got = jax.grad(lambda a, b: bd_kd(a, b, sharpness=kappa).sum(), argnums=(0, 1))(s, t)
    want = jax.grad(fixed_weights, argnums=(0, 1))(s, t)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- jit and errors


def test_jit_traced_hyperparameters_no_retrace(rng):
    ks, kt = jax.random.split(rng)
    s, t = logits(ks, (4, 6)), logits(kt, (4, 6))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(a, b, kappa, temp):
        return bd_kd(a, b, sharpness=kappa, temperature=temp)

    for kappa, temp in [(0.5, 1.0), (3.0, 2.0), (jnp.inf, 1.0)]:
        np.testing.assert_allclose(
            f(s, t, jnp.float32(kappa), jnp.float32(temp)),
            ref_bd_kd(s, t, float(kappa), temp),
            rtol=2e-5,
        )


def test_errors():
    z = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"`sharpness` must be a number in \[0, inf\], got -1.0"):
        bd_kd(z, z, sharpness=-1.0)
    with pytest.raises(ValueError, match="`sharpness`"):
        bd_kd(z, z, sharpness=float("nan"))
    with pytest.raises(TypeError, match="`student_logits` must have a floating dtype"):
        bd_kd(jnp.zeros((2, 3), jnp.int32), z)
    with pytest.raises(ValueError, match="must have the same shape"):
        bd_kd(z, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="`temperature` must be a finite number"):
        bd_kd(z, z, temperature=0.0)
    with pytest.raises(ValueError, match="`where` must have shape"):
        bd_kd_teacher(z, z, where=jnp.ones((3,), bool))
    with pytest.raises(TypeError, match="positional"):
        bd_kd(z, z, 1.0)


# ---------------------------------------------------------------- experimental status, v2 teacher


def test_reconstructions_live_in_experimental_and_bd_kd_keeps_its_api_md_registry_key():
    assert jaxdiv.get("bd_kd") is bd_kd  # API.md §2 lists bd_kd among the registry keys
    assert "bd_kd_teacher" not in jaxdiv.names()
    assert jaxdiv.experimental.names() == ("bd_kd", "bd_kd_teacher")
    assert jaxdiv.experimental.get("bd_kd") is bd_kd is jaxdiv.bd_kd
    assert jaxdiv.experimental.get("bd_kd_teacher") is bd_kd_teacher is jaxdiv.bd_kd_teacher
    with pytest.raises(ValueError, match="Unknown experimental divergence 'kl'.*bd_kd"):
        jaxdiv.experimental.get("kl")


def ref_bd_kd_teacher(s, t, balanced, kappa=INF, T=1.0):
    """v1: KL(p_s || p_t); v2 (balanced): (1 - w) KL(p_t || p_s) + w KL(p_s || p_t), w of bd_kd."""
    if not balanced:
        return np_kl(np_softmax(s, T), np_softmax(t, T))
    return ref_bd_kd(s, t, kappa, T)


@pytest.mark.parametrize("kappa, T", [(INF, 1.0), (0.0, 2.0), (1.7, 1.5)])
def test_balanced_teacher_matches_float64_reference(rng, x64, kappa, T):
    ks, kt = jax.random.split(rng)
    s = 1.5 * jax.random.normal(ks, (7, 6), jnp.float64)
    t = 2.5 * jax.random.normal(kt, (7, 6), jnp.float64)
    for balanced in (False, True):
        out = bd_kd_teacher(s, t, balanced=balanced, sharpness=kappa, temperature=T)
        assert out.dtype == jnp.float64
        want = ref_bd_kd_teacher(np.asarray(s), np.asarray(t), balanced, kappa, T)
        np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-14)


def test_balanced_teacher_weights_rows_by_the_entropy_gap():
    flat = jnp.log(jnp.array([[0.5, 0.5]]))
    peaked = jnp.log(jnp.array([[0.9, 0.1]]))
    ps, pt = np_softmax(flat), np_softmax(peaked)
    # Under-confident student (H(p_s) > H(p_t)): the plain v1 term KL(p_s || p_t).
    np.testing.assert_allclose(bd_kd_teacher(flat, peaked, balanced=True), np_kl(ps, pt), 1e-6)
    # Over-confident student: the forward direction KL(p_t || p_s) instead.
    np.testing.assert_allclose(bd_kd_teacher(peaked, flat, balanced=True), np_kl(ps, pt), 1e-6)
    v1 = bd_kd_teacher(peaked, flat)  # KL(p_peaked || p_flat)
    np.testing.assert_allclose(v1, np_kl(pt, ps), 1e-6)


def test_balanced_teacher_gradient_reaches_the_teacher_and_masks_hold(rng):
    ks, kt = jax.random.split(rng)
    s, t = logits(ks, (4, 5)), logits(kt, (4, 5))
    mask = jnp.array([True, False, True, True])
    t_bad = t.at[1].set(jnp.nan)
    f = lambda b: bd_kd_teacher(jax.lax.stop_gradient(s), b, balanced=True, where=mask).sum()
    g = jax.grad(f)(t_bad)
    assert np.isfinite(g).all() and (g[1] == 0).all() and np.abs(g[0]).sum() > 0


def test_teacher_option_errors():
    z = jnp.zeros((2, 3))
    with pytest.raises(TypeError, match="`balanced` must be a bool"):
        bd_kd_teacher(z, z, balanced="yes")
    with pytest.raises(ValueError, match="`sharpness`"):
        bd_kd_teacher(z, z, balanced=True, sharpness=-1.0)
