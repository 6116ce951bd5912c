"""Tests for `sinkhorn_kd` against independent float64 NumPy / plain-JAX references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiv._sinkhorn import _l1_cost, _solve_unrolled, sinkhorn_kd

# Jitted entry point for forward-only checks (one compile instead of op-by-op dispatch).
kd = jax.jit(sinkhorn_kd, static_argnames=("num_iters", "mode", "axis", "max_iterations"))


def np_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def np_sinkd(s, t, temperature, epsilon, num_iters):
    """The official SinKD recursion, written with NumPy loops in float64."""
    p_s = np_softmax(np.asarray(s, np.float64) / temperature)
    p_t = np_softmax(np.asarray(t, np.float64) / temperature)
    n = p_s.shape[0]
    w = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            w[i, j] = np.abs(p_s[i] - p_t[j]).sum()
    p = np.exp(-w / epsilon)
    for _ in range(num_iters):
        p = p / p.sum(axis=1, keepdims=True)
        p = p / p.sum(axis=0, keepdims=True)
    return (p * w).sum()


def np_central_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


def plain_jax_sinkd_cost(w, epsilon, num_iters):
    """Plain-JAX unrolled recursion on a given cost matrix (no ott)."""
    p = jnp.exp(-w / epsilon)
    for _ in range(num_iters):
        p = p / jnp.sum(p, axis=1, keepdims=True)
        p = p / jnp.sum(p, axis=0, keepdims=True)
    return jnp.sum(p * w), p


def logits(key, shape, scale=2.0):
    ks, kt = jax.random.split(key)
    return scale * jax.random.normal(ks, shape), scale * jax.random.normal(kt, shape)


@pytest.mark.usefixtures("x64", "allow_rank_promotion")
def test_value_and_grad_match_numpy_float64(rng):
    s, t = (np.asarray(x, np.float64) for x in logits(rng, (4, 6)))
    temperature, epsilon, num_iters = 1.5, 0.2, 7
    loss = lambda s, t: sinkhorn_kd(
        s, t, temperature=temperature, epsilon=epsilon, num_iters=num_iters
    )
    value, (g_s, g_t) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(s, t)
    assert value.dtype == jnp.float64
    np.testing.assert_allclose(value, np_sinkd(s, t, temperature, epsilon, num_iters), rtol=1e-12)
    ref_s = np_central_grad(lambda x: np_sinkd(x, t, temperature, epsilon, num_iters), s)
    ref_t = np_central_grad(lambda x: np_sinkd(s, x, temperature, epsilon, num_iters), t)
    np.testing.assert_allclose(g_s, ref_s, atol=1e-7)
    np.testing.assert_allclose(g_t, ref_t, atol=1e-7)


def test_float32_value_matches_numpy(rng):
    s, t = logits(rng, (3, 5, 11))  # 15 rows, leading dims flattened
    value = kd(s, t)
    assert value.shape == () and value.dtype == jnp.float32
    ref = np_sinkd(np.reshape(s, (15, 11)), np.reshape(t, (15, 11)), 2.0, 0.1, 20)
    np.testing.assert_allclose(value, ref, rtol=2e-5)


@pytest.mark.usefixtures("allow_rank_promotion")
@pytest.mark.parametrize("num_iters", [1, 2, 7, 20])
def test_ott_runs_num_iters_and_its_gradient_matches_plain_recursion(rng, num_iters):
    # Regression test for the ott-jax 0.6 force_scan bug (unrolled gradients through
    # `min_iterations == max_iterations` are wrong): the ott path must give the plain
    # recursion's value, plan and gradient after exactly `num_iters` iterations.
    w = 2.0 * jax.random.uniform(rng, (9, 9))
    epsilon = 0.1
    out, value = _solve_unrolled(w, jnp.float32(epsilon), num_iters)
    ref_value, ref_plan = plain_jax_sinkd_cost(w, epsilon, num_iters)
    assert int(out.n_iters) == num_iters
    chex.assert_trees_all_close(value, ref_value, rtol=1e-5)
    chex.assert_trees_all_close(out.matrix.T, ref_plan, atol=1e-6)
    grad = jax.jit(jax.grad(lambda w: _solve_unrolled(w, jnp.float32(epsilon), num_iters)[1]))(w)
    ref_grad = jax.grad(lambda w: plain_jax_sinkd_cost(w, epsilon, num_iters)[0])(w)
    chex.assert_trees_all_close(grad, ref_grad, atol=1e-5)
    # One iteration fewer or more is visibly different, so the count above is meaningful.
    other = plain_jax_sinkd_cost(w, epsilon, num_iters + 1)[1]
    assert float(jnp.abs(other - ref_plan).max()) > 1e-4


@pytest.mark.usefixtures("allow_rank_promotion")
def test_blocked_cost_matches_naive_construction(rng):
    n, v = 37, 13  # two full row blocks and a remainder
    p_s, p_t = (jax.nn.softmax(x, axis=-1) for x in logits(rng, (n, v), scale=3.0))
    ref = np.abs(np.asarray(p_s)[:, None, :] - np.asarray(p_t)[None, :, :]).sum(-1)
    np.testing.assert_allclose(_l1_cost(p_s, p_t), ref, atol=1e-6)
    cotangent = jax.random.normal(jax.random.key(7), (n, n))
    naive = lambda a, b: jnp.sum(jnp.abs(a[:, None, :] - b[None, :, :]), axis=-1)
    got = jax.vjp(_l1_cost, p_s, p_t)[1](cotangent)
    want = jax.vjp(naive, p_s, p_t)[1](cotangent)
    chex.assert_trees_all_close(got, want, atol=1e-5)


@pytest.mark.usefixtures("allow_rank_promotion")
@pytest.mark.parametrize("mode", ["unrolled", "implicit"])
def test_where_equals_slicing(rng, mode):
    s, t = logits(rng, (2, 5, 9))
    mask = jnp.array([[True, False, True, True, False], [True, True, False, True, True]])
    loss = lambda s, t: sinkhorn_kd(s, t, mode=mode, where=mask)
    sliced = lambda s, t: sinkhorn_kd(s[mask], t[mask], mode=mode)
    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(s, t)
    ref_value, ref_grads = jax.jit(jax.value_and_grad(sliced, argnums=(0, 1)))(s, t)
    chex.assert_trees_all_close(value, ref_value, rtol=1e-6)
    chex.assert_trees_all_close(grads, ref_grads, atol=1e-6)
    for g in grads:
        assert not np.any(np.asarray(g)[~np.asarray(mask)])


@pytest.mark.usefixtures("allow_rank_promotion")
@pytest.mark.parametrize("mode", ["unrolled", "implicit"])
def test_masked_nan_and_inf_rows_stay_finite(rng, mode):
    s, t = logits(rng, (6, 8))
    mask = jnp.array([True, False, True, False, True, True])
    s_bad = s.at[1].set(jnp.nan).at[3, :4].set(-jnp.inf)
    t_bad = t.at[1, 2].set(jnp.inf).at[3].set(-jnp.inf)
    loss = lambda s, t: sinkhorn_kd(s, t, mode=mode, where=mask)
    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(s_bad, t_bad)
    chex.assert_tree_all_finite((value, grads))
    chex.assert_trees_all_close(value, kd(s[mask], t[mask], mode=mode), rtol=1e-6)


@pytest.mark.usefixtures("allow_rank_promotion")
@pytest.mark.parametrize("mode", ["unrolled", "implicit"])
def test_single_row_gives_w11_and_no_row_gives_zero(rng, mode):
    s, t = logits(rng, (1, 10))
    w11 = np.abs(np_softmax(np.asarray(s[0]) / 2.0) - np_softmax(np.asarray(t[0]) / 2.0)).sum()
    loss = jax.jit(jax.value_and_grad(lambda s, t: sinkhorn_kd(s, t, mode=mode), argnums=(0, 1)))
    value, grads = loss(s, t)
    np.testing.assert_allclose(value, w11, rtol=1e-5)
    chex.assert_tree_all_finite(grads)
    s3, t3 = logits(jax.random.key(3), (3, 10))
    one_kept = kd(
        s3.at[1].set(s[0]), t3.at[1].set(t[0]), mode=mode, where=jnp.array([False, True, False])
    )
    np.testing.assert_allclose(one_kept, w11, rtol=1e-5)
    none_kept = jax.jit(
        jax.value_and_grad(lambda s: sinkhorn_kd(s, t3, mode=mode, where=jnp.zeros((3,), bool)))
    )(s3)
    assert float(none_kept[0]) == 0.0
    assert not np.any(np.asarray(none_kept[1]))


@pytest.mark.usefixtures("allow_rank_promotion")
def test_modes_agree_at_convergence(rng):
    s, t = logits(rng, (7, 12))
    epsilon = 0.3
    unrolled = lambda s: sinkhorn_kd(s, t, epsilon=epsilon, num_iters=400)
    implicit = lambda s: sinkhorn_kd(s, t, epsilon=epsilon, mode="implicit", threshold=1e-6)
    value_u, grad_u = jax.jit(jax.value_and_grad(unrolled))(s)
    value_i, grad_i = jax.jit(jax.value_and_grad(implicit))(s)
    np.testing.assert_allclose(value_i, value_u, rtol=1e-5)
    np.testing.assert_allclose(value_u, np_sinkd(s, t, 2.0, epsilon, 400), rtol=1e-5)
    chex.assert_trees_all_close(grad_i, grad_u, atol=1e-4)
    # After 1 iteration the unrolled value is not converged yet: the modes differ.
    assert abs(float(kd(s, t, epsilon=epsilon, num_iters=1)) - float(value_i)) > 1e-4


def test_class_mask_equals_slicing_classes(rng):
    s, t = logits(rng, (5, 9))
    keep = np.array([True, True, False, True, False, True, True, True, False])
    where = jnp.broadcast_to(jnp.asarray(keep), s.shape)
    chex.assert_trees_all_close(kd(s, t, where=where), kd(s[:, keep], t[:, keep]), rtol=1e-6)


def test_axis_equals_moveaxis(rng):
    s, t = logits(rng, (3, 11, 4))
    chex.assert_trees_all_close(
        kd(s, t, axis=1),
        kd(jnp.moveaxis(s, 1, -1), jnp.moveaxis(t, 1, -1)),
        rtol=1e-6,
    )


def test_jit_with_traced_hyperparameters_does_not_retrace(rng):
    s, t = logits(rng, (6, 10))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def loss(s, t, temperature, epsilon):
        return sinkhorn_kd(s, t, temperature=temperature, epsilon=epsilon)

    for temperature, epsilon in [(2.0, 0.1), (1.0, 0.5)]:
        chex.assert_trees_all_close(
            loss(s, t, jnp.float32(temperature), jnp.float32(epsilon)),
            np_sinkd(s, t, temperature, epsilon, 20),
            rtol=2e-5,
        )


def test_bfloat16_inputs_compute_in_float32(rng):
    s, t = logits(rng, (4, 10))
    value = kd(s.astype(jnp.bfloat16), t.astype(jnp.bfloat16))
    assert value.dtype == jnp.float32
    ref = np_sinkd(
        np.asarray(s.astype(jnp.bfloat16), np.float64),
        np.asarray(t.astype(jnp.bfloat16), np.float64),
        2.0,
        0.1,
        20,
    )
    np.testing.assert_allclose(value, ref, rtol=2e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"epsilon": -0.1}, ValueError, "epsilon"),
        ({"epsilon": float("nan")}, ValueError, "epsilon"),
        ({"num_iters": 0}, ValueError, "num_iters"),
        ({"num_iters": 2.5}, ValueError, "num_iters"),
        ({"num_iters": True}, ValueError, "num_iters"),
        ({"mode": "danskin"}, ValueError, "mode"),
        ({"mode": "implicit", "threshold": 0.0}, ValueError, "threshold"),
        ({"mode": "implicit", "max_iterations": 0}, ValueError, "max_iterations"),
        ({"where": jnp.ones((3,), bool)}, ValueError, "where"),
        ({"where": jnp.ones((4,), jnp.int32)}, TypeError, "where"),
        ({"axis": 2}, ValueError, "axis"),
    ],
)
def test_errors(kwargs, error, match):
    s = jnp.zeros((4, 5))
    with pytest.raises(error, match=match):
        sinkhorn_kd(s, s, **kwargs)


def test_input_errors():
    with pytest.raises(ValueError, match="same shape"):
        sinkhorn_kd(jnp.zeros((4, 5)), jnp.zeros((4, 6)))
    with pytest.raises(TypeError, match="floating dtype"):
        sinkhorn_kd(jnp.zeros((4, 5), jnp.int32), jnp.zeros((4, 5)))


# ---------------------------------------------------------------- the ott-jax internals we use


def test_ott_internals_that_sinkhorn_kd_relies_on(allow_rank_promotion):
    """`jaxdiv/_sinkhorn.py` subclasses ott-jax internals (pyproject pins ott-jax >=0.6.0,<0.7).
    Fails with the ott symbol named if any of them moves or changes signature."""
    import inspect

    import ott
    from ott.geometry import geometry
    from ott.solvers import linear
    from ott.solvers.linear import implicit_differentiation, sinkhorn

    from jaxdiv import _sinkhorn

    def require(ok, symbol):
        if not ok:
            pytest.fail(
                f"ott-jax {ott.__version__}: `{symbol}` moved or changed; jaxdiv/_sinkhorn.py "
                "relies on it (tested with ott-jax 0.6.x, pinned <0.7 in pyproject.toml)."
            )

    params = list(inspect.signature(geometry.Geometry.apply_kernel).parameters)
    require(params[:4] == ["self", "vec", "eps", "axis"], "Geometry.apply_kernel(vec, eps, axis)")
    init = inspect.signature(geometry.Geometry.__init__).parameters
    require(
        {"cost_matrix", "kernel_matrix", "epsilon"} <= set(init),
        "Geometry.__init__(cost_matrix=, kernel_matrix=, epsilon=)",
    )
    require(
        isinstance(inspect.getattr_static(geometry.Geometry, "kernel_matrix"), property),
        "Geometry.kernel_matrix (property)",
    )
    require(
        callable(getattr(geometry.Geometry, "tree_flatten", None))
        and callable(getattr(geometry.Geometry, "tree_unflatten", None)),
        "Geometry.tree_flatten / Geometry.tree_unflatten (pytree registration of the subclass)",
    )
    options = {"lse_mode", "min_iterations", "max_iterations", "threshold", "inner_iterations"}
    require(
        options | {"implicit_diff"} <= set(inspect.signature(sinkhorn.Sinkhorn).parameters),
        "ott.solvers.linear.sinkhorn.Sinkhorn(" + ", ".join(sorted(options)) + ", implicit_diff)",
    )
    require(callable(linear.solve), "ott.solvers.linear.solve")
    require(
        "solver_kwargs" in inspect.signature(implicit_differentiation.ImplicitDiff).parameters,
        "ott.solvers.linear.implicit_differentiation.ImplicitDiff(solver_kwargs=)",
    )
    require(
        "primal_cost" in dir(sinkhorn.SinkhornOutput), "ott.solvers.linear.sinkhorn.SinkhornOutput"
    )

    # Behaviour: ott's kernel-mode Sinkhorn must route its kernel products through the
    # overridden `apply_kernel` (else the override is silently dead).
    calls = []

    @jax.tree_util.register_pytree_node_class
    class Spy(_sinkhorn._FixedEpsilonGeometry):
        def apply_kernel(self, vec, eps=None, axis=0):
            calls.append(axis)
            return super().apply_kernel(vec, eps, axis)

    cost = jnp.array([[0.0, 1.0], [1.0, 0.0]])
    geom = Spy(cost_matrix=cost, kernel_matrix=jnp.exp(-cost / 0.5), epsilon=0.5)
    out = linear.solve(geom, lse_mode=False, max_iterations=3, threshold=-1.0, implicit_diff=None)
    require(set(calls) == {0, 1}, "Geometry.apply_kernel (no longer called in kernel mode)")
    require(np.isfinite(out.primal_cost), "SinkhornOutput.primal_cost")
