"""KL-Top, MDCS consistency and the fused linear divergence vs independent references."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiv
from jaxdiv._distillation import mdcs_consistency, top_k_kl
from jaxdiv._fused import fused_linear_divergence


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def ref_top_k_kl(s, t, k, renormalize):
    out = []
    for srow, trow in zip(np.asarray(s, np.float64), np.asarray(t, np.float64), strict=True):
        idx = np.argsort(-trow, kind="stable")[:k]
        if renormalize:
            lt, ls = np_log_softmax(trow[idx]), np_log_softmax(srow[idx])
        else:
            lt, ls = np_log_softmax(trow)[idx], np_log_softmax(srow)[idx]
        out.append(np.sum(np.exp(lt) * (lt - ls)))
    return np.array(out)


@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_kl_matches_reference(k, renormalize):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(6, 10)).astype(np.float32), rng.normal(size=(6, 10)).astype(np.float32)
    got = jax.jit(functools.partial(top_k_kl, k=k, renormalize=renormalize))(s, t)
    np.testing.assert_allclose(got, ref_top_k_kl(s, t, k, renormalize), rtol=1e-5, atol=1e-6)
    if k == 10:
        np.testing.assert_allclose(got, jaxdiv.forward_kl(s, t), rtol=1e-5, atol=1e-6)


def test_top_k_kl_gradients_masks_and_errors():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(4, 8)).astype(np.float32), rng.normal(size=(4, 8)).astype(np.float32)
    mask = np.array([True, False, True, True])
    s_bad = s.copy()
    s_bad[1] = np.nan
    got = top_k_kl(s_bad, t, k=3, where=mask)
    np.testing.assert_allclose(got[mask], top_k_kl(s[mask], t[mask], k=3), rtol=1e-6)
    assert got[1] == 0.0
    grads = jax.grad(lambda a, b: top_k_kl(a, b, k=3, where=mask).sum(), argnums=(0, 1))(s_bad, t)
    chex.assert_tree_all_finite(grads)
    jax.test_util.check_grads(
        lambda a: top_k_kl(a, t, k=3, renormalize=True).sum(),
        (s,),
        order=1,
        modes=["rev"],
        atol=2e-2,
        rtol=2e-2,
    )
    with pytest.raises(ValueError, match=r"`k` must be an int in \[1, 8\].*got 9"):
        top_k_kl(s, t, k=9)
    with pytest.raises(ValueError, match="`k`.*got 0"):
        top_k_kl(s, t, k=0)


def test_mdcs_consistency():
    rng = np.random.default_rng(2)
    strong, weak = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    labels = np.argmax(weak, -1)
    labels[[1, 4]] = (labels[[1, 4]] + 1) % 5  # two rows not confident
    sel = np.argmax(weak, -1) == labels
    lw, ls = np_log_softmax(weak), np_log_softmax(strong)
    want = np.sum(np.exp(lw) * (lw - ls), -1)[sel].mean()
    got = jax.jit(mdcs_consistency)(strong.astype(np.float32), weak.astype(np.float32), labels)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # No confident row: exactly 0 with finite gradients.
    wrong = (np.argmax(weak, -1) + 1) % 5
    zero = mdcs_consistency(strong.astype(np.float32), weak.astype(np.float32), wrong)
    assert float(zero) == 0.0
    g = jax.grad(lambda a: mdcs_consistency(a, weak.astype(np.float32), wrong))(
        strong.astype(np.float32)
    )
    np.testing.assert_array_equal(g, 0.0)
    # The row mask removes rows too.
    where = np.ones(7, bool)
    where[0] = False
    masked = mdcs_consistency(
        strong.astype(np.float32), weak.astype(np.float32), labels, where=where
    )
    np.testing.assert_allclose(
        masked, np.sum(np.exp(lw) * (lw - ls), -1)[sel & where].mean(), rtol=1e-5
    )
    with pytest.raises(TypeError, match="`labels` must have an integer dtype"):
        mdcs_consistency(strong, weak, labels.astype(np.float32))
    with pytest.raises(ValueError, match=r"`labels` must have shape \(7,\)"):
        mdcs_consistency(strong, weak, labels[:3])


def _fused_inputs(n=37, ds=6, dt=5, v=23, seed=3):
    ks = jax.random.split(jax.random.key(seed), 4)
    return (
        jax.random.normal(ks[0], (n, ds)),
        jax.random.normal(ks[1], (ds, v)) / 2,
        jax.random.normal(ks[2], (n, dt)),
        jax.random.normal(ks[3], (dt, v)) / 2,
    )


@pytest.mark.parametrize(
    "name", sorted(set(jaxdiv.names()) - {"alpha_divergence", "f_divergence", "top_k_kl"})
)
def test_fused_equals_unfused_for_every_registry_divergence(name):
    hs, ws, ht, wt = _fused_inputs()
    mask = jnp.arange(37) % 5 != 0
    fused = jax.jit(
        lambda *a: fused_linear_divergence(*a, divergence=name, chunk_size=8, where=mask)
    )(hs, ws, ht, wt)
    np.testing.assert_allclose(
        fused,
        jaxdiv.get(name)(hs @ ws, ht @ wt, temperature=1.0, where=mask),
        rtol=2e-5,
        atol=2e-6,
    )


def test_fused_kwargs_gradients_and_shapes():
    hs, ws, ht, wt = _fused_inputs()
    for kwargs in (
        {"divergence": "alpha_divergence", "alpha": 0.3},
        {"divergence": "generalized_jsd", "beta": 0.2, "temperature": 2.0},
    ):
        fused = fused_linear_divergence(hs, ws, ht, wt, chunk_size=10, **kwargs)
        name = kwargs.pop("divergence")
        np.testing.assert_allclose(fused, jaxdiv.get(name)(hs @ ws, ht @ wt, **kwargs), rtol=2e-5)

    def loss(fused, hs, ws, ht, wt):
        if fused:
            per_row = fused_linear_divergence(hs, ws, ht, wt, chunk_size=8)
        else:
            per_row = jaxdiv.forward_kl(hs @ ws, ht @ wt)
        return jnp.mean(per_row * jnp.arange(per_row.shape[0]))  # non-uniform row cotangents

    g_fused = jax.grad(functools.partial(loss, True), argnums=(0, 1, 2, 3))(hs, ws, ht, wt)
    g_plain = jax.grad(functools.partial(loss, False), argnums=(0, 1, 2, 3))(hs, ws, ht, wt)
    chex.assert_trees_all_close(g_fused, g_plain, rtol=1e-4, atol=1e-6)
    # Leading dims are kept.
    out = fused_linear_divergence(hs[:36].reshape(4, 9, 6), ws, ht[:36].reshape(4, 9, 5), wt)
    chex.assert_shape(out, (4, 9))


def test_fused_errors():
    hs, ws, ht, wt = _fused_inputs()
    with pytest.raises(ValueError, match=r"`student_weight` must have shape \[d_s=6, V\]"):
        fused_linear_divergence(hs, wt, ht, wt)
    with pytest.raises(ValueError, match="`teacher_weight` must have shape"):
        fused_linear_divergence(hs, ws, ht, ws)
    with pytest.raises(ValueError, match="same leading"):
        fused_linear_divergence(hs[:3], ws, ht, wt)
    with pytest.raises(ValueError, match="Unknown divergence"):
        fused_linear_divergence(hs, ws, ht, wt, divergence="nope")
    with pytest.raises(ValueError, match="`chunk_size` must be a positive int"):
        fused_linear_divergence(hs, ws, ht, wt, chunk_size=0)


def test_fused_memory_is_chunked(xla_optimized):
    """The compiled value+grad holds [chunk, V] logits, not [N, V] (compile-level check)."""
    inputs = _fused_inputs(n=4096, ds=32, dt=32, v=2048)
    full_logits = 4096 * 2048 * 4

    def temps(fused):
        def loss(hs, ws, ht, wt):
            if fused:
                return fused_linear_divergence(hs, ws, ht, wt, chunk_size=256).mean()
            return jaxdiv.forward_kl(hs @ ws, ht @ wt).mean()

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*inputs).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    unfused, fused = temps(False), temps(True)
    assert unfused >= full_logits  # the plain computation materialises [N, V] logits
    assert fused < unfused / 6  # measured: 0.25 vs 2.0 full-size logits


def test_top_k_kl_renormalized_student_without_mass_on_top_k_is_inf():
    """Regression (found by test_properties.py): the renormalised student softmax over k
    classes that all have p_s = 0 was 0/0, NaN; the KL is +inf (p_t > 0 = p_s there)."""
    s = jnp.array([[0.0, -jnp.inf, -jnp.inf, -jnp.inf], [0.0, 1.0, 0.5, 2.0]])
    t = jnp.array([[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    out = jaxdiv.top_k_kl(s, t, k=2, renormalize=True)
    assert out[0] == jnp.inf
    np.testing.assert_allclose(out[1], jaxdiv.forward_kl(s[1, 1:3], t[1, 1:3]), rtol=1e-5)
    grads = jax.grad(
        lambda a: jaxdiv.top_k_kl(a, t, k=2, renormalize=True, where=jnp.array([False, True])).sum()
    )(s)
    assert np.isfinite(grads).all() and (grads[0] == 0).all() and np.abs(grads[1]).sum() > 0
