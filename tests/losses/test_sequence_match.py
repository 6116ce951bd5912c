"""SequenceMatch-χ² loss vs an independent float64 NumPy loop transcription, identities, masks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxdiv.experimental import sequence_match_loss

# ---------------------------------------------------------------- float64 NumPy reference


def np_logsumexp(x):
    m = np.max(x)
    return m + np.log(np.sum(np.exp(x - m)))


def ref_loss(
    logits, actions, is_data, lengths, gamma, alpha, weighting="uniform", terminal="zero", pad=None
):
    """Loop transcription of the documented objective, one transition at a time.

    terminal="absorbing": a sequence of length n > 0 continues in the padding state up to L,
    taking the action `pad` at t >= n (Q-values: the logits there); only t = L is terminal.
    """
    logits = np.asarray(logits, np.float64)
    data_terms, value_terms, sq_terms, kinds = [], [], [], []
    for b in range(logits.shape[0]):
        n = lengths[b]
        if n == 0:
            continue
        steps = logits.shape[1] if terminal == "absorbing" else n
        A = Vt = S = 0.0
        for t in range(steps):
            w = gamma**t if weighting == "discounted" else 1.0
            v = np_logsumexp(logits[b, t])
            v_next = np_logsumexp(logits[b, t + 1]) if t + 1 < steps else 0.0  # terminal: V = 0
            action = actions[b, t] if t < n else pad
            r = logits[b, t, action] - gamma * v_next
            A += w * r
            Vt += w * (v - gamma * v_next)
            S += w * r * r
        data_terms.append(A)
        value_terms.append(Vt)
        sq_terms.append(S)
        kinds.append(bool(is_data[b]))
    kinds = np.array(kinds)
    data_terms, value_terms, sq_terms = map(np.array, (data_terms, value_terms, sq_terms))
    has_data, has_model = kinds.any(), (~kinds).any()

    def e_data(x):
        return x[kinds].mean() if has_data else 0.0

    def e_mix(x):
        if has_data and has_model:
            return 0.5 * x[kinds].mean() + 0.5 * x[~kinds].mean()
        return x.mean()

    loss = -e_data(data_terms) + e_mix(value_terms)
    if alpha is not None:
        loss += e_mix(sq_terms) / (4 * alpha)
    return loss


def make_batch(key, B=5, L=7, V=9):
    k1, k2 = jax.random.split(key)
    logits = 2.0 * jax.random.normal(k1, (B, L, V), jnp.float32)
    actions = jax.random.randint(k2, (B, L), 0, V)
    lengths = np.array([7, 3, 5, 1, 6])[:B]
    where = jnp.arange(L)[None, :] < jnp.asarray(lengths)[:, None]
    is_data = jnp.array([True, False, True, False, False])[:B]
    return logits, actions, is_data, where, lengths


# ---------------------------------------------------------------- values


@pytest.mark.parametrize(
    "gamma, alpha, weighting",
    [
        (1.0, 0.5, "uniform"),
        (0.9, 0.1, "uniform"),
        (0.8, 0.5, "discounted"),
        (0.95, None, "discounted"),
    ],
)
def test_matches_reference(rng, gamma, alpha, weighting):
    logits, actions, is_data, where, lengths = make_batch(rng)
    out = sequence_match_loss(
        logits, actions, is_data=is_data, where=where, gamma=gamma, alpha=alpha, weighting=weighting
    )
    chex.assert_shape(out, ())
    assert out.dtype == jnp.float32
    want = ref_loss(logits, np.asarray(actions), is_data, lengths, gamma, alpha, weighting)
    np.testing.assert_allclose(out, want, rtol=2e-5)


def test_matches_reference_x64(rng, x64):
    logits, actions, is_data, where, lengths = make_batch(rng)
    logits = logits.astype(jnp.float64)
    out = sequence_match_loss(logits, actions, is_data=is_data, where=where, gamma=0.9, alpha=0.3)
    assert out.dtype == jnp.float64
    want = ref_loss(logits, np.asarray(actions), is_data, lengths, 0.9, 0.3)
    np.testing.assert_allclose(out, want, rtol=1e-12)


# ---------------------------------------------------------------- identities


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - np.array([[np_logsumexp(row) for row in seq] for seq in x])[..., None]


@pytest.mark.parametrize("gamma, weighting", [(0.7, "uniform"), (1.0, "discounted")])
def test_reduces_to_mle_on_data_only(rng, gamma, weighting):
    # Only data samples and no chi^2 term: -sum_t log softmax(logits)[a_t], averaged over sequences.
    logits, actions, _, where, lengths = make_batch(rng)
    out = sequence_match_loss(
        logits,
        actions,
        is_data=jnp.ones(5, bool),
        where=where,
        gamma=gamma,
        alpha=None,
        weighting=weighting,
    )
    lsm = np_log_softmax(logits)
    nll = [-sum(lsm[b, t, int(actions[b, t])] for t in range(n)) for b, n in enumerate(lengths)]
    np.testing.assert_allclose(out, np.mean(nll), rtol=1e-5)


def test_discounted_mle_limit_weights_by_gamma_power(rng):
    logits, actions, _, where, lengths = make_batch(rng)
    gamma = 0.6
    out = sequence_match_loss(
        logits,
        actions,
        is_data=jnp.ones(5, bool),
        where=where,
        gamma=gamma,
        alpha=None,
        weighting="discounted",
    )
    lsm = np_log_softmax(logits)
    nll = [
        -sum(gamma**t * lsm[b, t, int(actions[b, t])] for t in range(n))
        for b, n in enumerate(lengths)
    ]
    np.testing.assert_allclose(out, np.mean(nll), rtol=1e-5)


def test_mixture_is_half_half_and_falls_back(rng):
    logits, actions, is_data, where, lengths = make_batch(rng)
    acts = np.asarray(actions)
    model_only = jnp.zeros(5, bool)
    out = sequence_match_loss(logits, actions, is_data=model_only, where=where, gamma=0.9)
    np.testing.assert_allclose(
        out, ref_loss(logits, acts, model_only, lengths, 0.9, 0.5), rtol=2e-5
    )
    # Duplicating the model sequences leaves the 1/2-1/2 mixture unchanged.
    idx = jnp.array([0, 1, 2, 3, 4, 1, 3, 4])
    dup = sequence_match_loss(
        logits[idx], actions[idx], is_data=is_data[idx], where=where[idx], gamma=0.9
    )
    base = sequence_match_loss(logits, actions, is_data=is_data, where=where, gamma=0.9)
    np.testing.assert_allclose(dup, base, rtol=1e-5)


# ---------------------------------------------------------------- gradients


def test_gradient_signs(rng):
    logits, actions, _, _, _ = make_batch(rng, B=2, L=4)
    grad = jax.jit(
        jax.grad(
            lambda z, d, alpha: sequence_match_loss(z, actions, is_data=d, alpha=alpha, gamma=0.9)
        ),
        static_argnums=2,
    )
    # Data only, no chi^2: MLE gradients: chosen logits go up, the others down.
    g = grad(logits, jnp.ones(2, bool), None)
    chosen = jax.nn.one_hot(actions, logits.shape[-1], dtype=bool)
    assert (g[chosen] < 0).all() and (g[~chosen] > 0).all()
    # A model sample: the chi^2 term pushes its reward r = Q - gamma V' towards 0, so the
    # gradient on the taken action's logit at the last step (r = Q there) has the sign of r.
    is_data = jnp.array([True, False])
    last = (1, -1, actions[1, -1])
    assert grad(logits.at[last].set(8.0), is_data, 0.5)[last] > 0
    assert grad(logits.at[last].set(-8.0), is_data, 0.5)[last] < 0


def test_check_grads(rng, x64):
    logits, actions, is_data, where, _ = make_batch(rng, B=3, L=4, V=5)
    logits = logits.astype(jnp.float64)
    check_grads(
        jax.jit(
            lambda z: sequence_match_loss(
                z, actions, is_data=is_data, where=where, gamma=0.9, weighting="discounted"
            )
        ),
        (logits,),
        order=1,
        modes=("rev",),
    )


# ---------------------------------------------------------------- masks and edge cases


def test_where_equals_slicing_with_finite_grads(rng):
    logits, actions, is_data, _, _ = make_batch(rng)
    n = 4
    bad = logits.at[:, n:].set(jnp.nan).at[0, n:, 0].set(-jnp.inf)
    bad_actions = actions.at[:, n:].set(-100)
    where = jnp.broadcast_to(jnp.arange(7) < n, (5, 7))
    f = lambda z: sequence_match_loss(z, bad_actions, is_data=is_data, where=where, gamma=0.9)
    sliced = sequence_match_loss(logits[:, :n], actions[:, :n], is_data=is_data, gamma=0.9)
    np.testing.assert_allclose(f(bad), sliced, rtol=1e-6)
    g = jax.grad(f)(bad)
    chex.assert_tree_all_finite(g)
    np.testing.assert_array_equal(g[:, n:], 0.0)


def test_positions_after_first_false_are_ignored(rng):
    logits, actions, is_data, where, _ = make_batch(rng)
    holes = where.at[0, 2].set(False)  # row 0 becomes a length-2 sequence
    prefix = where.at[0, 2:].set(False)
    kw = dict(is_data=is_data, gamma=0.9)
    np.testing.assert_allclose(
        sequence_match_loss(logits, actions, where=holes, **kw),
        sequence_match_loss(logits, actions, where=prefix, **kw),
        rtol=1e-6,
    )


def test_empty_rows_equal_slicing_them_out(rng):
    logits, actions, is_data, where, _ = make_batch(rng)
    where = where.at[2].set(False)
    keep = np.array([True, True, False, True, True])
    out = sequence_match_loss(logits.at[2].set(jnp.nan), actions, is_data=is_data, where=where)
    want = sequence_match_loss(
        logits[keep], actions[keep], is_data=is_data[keep], where=where[keep]
    )
    np.testing.assert_allclose(out, want, rtol=1e-6)


def test_bf16_logits_compute_in_float32(rng):
    logits, actions, is_data, where, lengths = make_batch(rng)
    low = logits.astype(jnp.bfloat16)
    out = sequence_match_loss(low, actions, is_data=is_data, where=where, gamma=0.9)
    assert out.dtype == jnp.float32
    want = ref_loss(np.asarray(low, np.float64), np.asarray(actions), is_data, lengths, 0.9, 0.5)
    np.testing.assert_allclose(out, want, rtol=1e-5)


# ---------------------------------------------------------------- jit and errors


def test_jit_traced_hyperparameters_no_retrace(rng):
    logits, actions, is_data, where, lengths = make_batch(rng)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(z, gamma, alpha):
        return sequence_match_loss(
            z, actions, is_data=is_data, where=where, gamma=gamma, alpha=alpha
        )

    for gamma, alpha in [(0.9, 0.5), (1.0, 0.05)]:
        np.testing.assert_allclose(
            f(logits, jnp.float32(gamma), jnp.float32(alpha)),
            ref_loss(logits, np.asarray(actions), is_data, lengths, gamma, alpha),
            rtol=2e-5,
        )


def test_errors():
    z = jnp.zeros((2, 3, 4))
    a = jnp.zeros((2, 3), jnp.int32)
    d = jnp.array([True, False])
    with pytest.raises(TypeError, match="`logits` must have a floating dtype"):
        sequence_match_loss(z.astype(jnp.int32), a, is_data=d)
    with pytest.raises(ValueError, match=r"`logits` must have rank 3 \(\[B, L, V\]\)"):
        sequence_match_loss(z[0], a, is_data=d)
    with pytest.raises(TypeError, match="`actions` must have an integer dtype"):
        sequence_match_loss(z, a.astype(jnp.float32), is_data=d)
    with pytest.raises(ValueError, match=r"`actions` must have shape \(2, 3\)"):
        sequence_match_loss(z, a[:, :2], is_data=d)
    with pytest.raises(TypeError, match="`is_data` must be a boolean mask"):
        sequence_match_loss(z, a, is_data=jnp.array([1, 0]))
    with pytest.raises(ValueError, match=r"`is_data` must have shape \(2,\)"):
        sequence_match_loss(z, a, is_data=jnp.ones((2, 3), bool))
    with pytest.raises(ValueError, match=r"`where` must have shape \(2, 3\)"):
        sequence_match_loss(z, a, is_data=d, where=jnp.ones((2,), bool))
    with pytest.raises(ValueError, match=r"`gamma` must be a finite number in \(0.0, 1.0\]"):
        sequence_match_loss(z, a, is_data=d, gamma=0.0)
    with pytest.raises(ValueError, match="`alpha` must be a finite number"):
        sequence_match_loss(z, a, is_data=d, alpha=-1.0)
    with pytest.raises(ValueError, match="`weighting` must be one of"):
        sequence_match_loss(z, a, is_data=d, weighting="geometric")
    with pytest.raises(TypeError):
        sequence_match_loss(z, a, d)  # is_data is keyword-only


# ---------------------------------------------------------------- absorbing padding (paper lead)


@pytest.mark.parametrize(
    "gamma, alpha, weighting", [(0.9, 0.3, "uniform"), (0.998, None, "discounted")]
)
def test_absorbing_padding_matches_float64_reference(rng, x64, gamma, alpha, weighting):
    logits, actions, is_data, where, lengths = make_batch(rng)
    logits = logits.astype(jnp.float64)
    lengths = np.array([7, 3, 5, 0, 6])  # row 3 has no valid position: removed
    where = jnp.arange(7)[None, :] < jnp.asarray(lengths)[:, None]
    logits = logits.at[3].set(jnp.nan)  # a removed row may hold NaN
    kw = dict(gamma=gamma, alpha=alpha, weighting=weighting)
    out = sequence_match_loss(
        logits, actions, is_data=is_data, where=where, terminal="absorbing", pad_id=2, **kw
    )
    assert out.dtype == jnp.float64
    want = ref_loss(
        np.asarray(logits), np.asarray(actions), np.asarray(is_data), lengths,
        terminal="absorbing", pad=2, **kw,
    )  # fmt: skip
    np.testing.assert_allclose(out, want, rtol=1e-12)
    zero = sequence_match_loss(logits, actions, is_data=is_data, where=where, **kw)
    assert abs(float(zero) - float(out)) > 1e-6  # the two terminal rules differ


def test_absorbing_equals_zero_terminal_on_padded_full_length_sequences(rng):
    logits, actions, is_data, where, _ = make_batch(rng)
    padded_actions = jnp.where(where, actions, 4)
    absorbing = sequence_match_loss(
        logits, actions, is_data=is_data, where=where, gamma=0.9, terminal="absorbing", pad_id=4
    )
    full = sequence_match_loss(logits, padded_actions, is_data=is_data, gamma=0.9)
    np.testing.assert_allclose(absorbing, full, rtol=1e-6)
    grad = jax.grad(
        lambda z: sequence_match_loss(
            z, actions, is_data=is_data, where=where, terminal="absorbing", pad_id=4
        )
    )(logits)
    assert np.isfinite(grad).all() and np.abs(grad[1, 5]).sum() > 0  # padding steps train


def test_terminal_option_errors():
    z, a, d = jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), jnp.int32), jnp.array([True, False])
    with pytest.raises(ValueError, match="`terminal` must be one of"):
        sequence_match_loss(z, a, is_data=d, terminal="eos")
    for bad in (None, 4, -1, True, 1.0):
        with pytest.raises(ValueError, match=r"`pad_id` must be an int in \[0, 4\)"):
            sequence_match_loss(z, a, is_data=d, terminal="absorbing", pad_id=bad)
