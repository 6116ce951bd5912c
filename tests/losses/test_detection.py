"""DC-PDD and the perplexity–entropy gap vs float64 NumPy loops written here."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiv._detection import dcpdd_score, perplexity_entropy_gap

# ----------------------------------------------------------------------------- DC-PDD


def np_dcpdd(logprobs, ids, ref_freq, a, mask):
    """Loop oracle: first occurrence of each id among the unmasked positions, clipped CE, mean."""
    out = np.zeros(logprobs.shape[0])
    for b in range(logprobs.shape[0]):
        seen, values = set(), []
        for i in range(logprobs.shape[1]):
            if not mask[b, i] or ids[b, i] in seen:
                continue
            seen.add(ids[b, i])
            values.append(min(np.exp(logprobs[b, i]) * -np.log(ref_freq[ids[b, i]]), a))
        out[b] = np.mean(values) if values else 0.0
    return out


def dcpdd_inputs(seed, batch, length, vocab):
    rs = np.random.default_rng(seed)
    ids = rs.integers(0, vocab, size=(batch, length))  # small vocab: many repeats
    logprobs = np.log(rs.uniform(1e-4, 0.05, size=(batch, length))).astype(np.float32)
    counts = rs.integers(0, 50, size=vocab)
    ref_freq = ((counts + 1) / (counts.sum() + vocab)).astype(np.float32)  # Laplace-smoothed
    mask = rs.uniform(size=(batch, length)) < 0.7
    return logprobs, ids, ref_freq, mask


@pytest.mark.parametrize("a", [0.01, 0.5])
def test_dcpdd_matches_loop_oracle(a):
    logprobs, ids, ref_freq, mask = dcpdd_inputs(0, batch=4, length=23, vocab=7)
    mask[2] = False  # a fully masked sequence gives 0
    mask[3] = True
    got = dcpdd_score(
        jnp.asarray(logprobs), jnp.asarray(ids), jnp.asarray(ref_freq), a=a, where=jnp.asarray(mask)
    )
    chex.assert_shape(got, (4,))
    assert got.dtype == jnp.float32
    want = np_dcpdd(logprobs.astype(np.float64), ids, ref_freq.astype(np.float64), a, mask)
    assert want[2] == 0.0
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-8)
    no_mask = dcpdd_score(jnp.asarray(logprobs), jnp.asarray(ids), jnp.asarray(ref_freq), a=a)
    want = np_dcpdd(
        logprobs.astype(np.float64), ids, ref_freq.astype(np.float64), a, np.ones_like(mask)
    )
    np.testing.assert_allclose(np.asarray(no_mask), want, rtol=1e-5, atol=1e-8)


def test_dcpdd_first_occurrence_is_counted_among_unmasked_positions():
    ref_freq = jnp.array([0.25, 0.25, 0.5])
    ids = jnp.array([[1, 1, 2, 1]])
    logprobs = jnp.log(jnp.array([[0.001, 0.003, 0.002, 0.004]]))
    where = jnp.array([[False, True, True, True]])  # position 0 masked: position 1 is the first 1
    got = dcpdd_score(logprobs, ids, ref_freq, a=1.0, where=where)
    want = (0.003 * np.log(4.0) + 0.002 * np.log(2.0)) / 2
    np.testing.assert_allclose(np.asarray(got), [want], rtol=1e-6)


def test_dcpdd_float64(x64):
    logprobs, ids, ref_freq, mask = dcpdd_inputs(1, batch=3, length=17, vocab=5)
    got = dcpdd_score(
        jnp.asarray(logprobs, jnp.float64),
        jnp.asarray(ids),
        jnp.asarray(ref_freq, jnp.float64),
        a=0.02,
        where=jnp.asarray(mask),
    )
    assert got.dtype == jnp.float64
    want = np_dcpdd(logprobs.astype(np.float64), ids, ref_freq.astype(np.float64), 0.02, mask)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)


def test_dcpdd_long_sequences():
    """L = 4096 with a 300-token vocabulary (sort-based first occurrences, no [L, L] buffer)."""
    logprobs, ids, ref_freq, mask = dcpdd_inputs(2, batch=2, length=4096, vocab=300)
    got = jax.jit(dcpdd_score)(
        jnp.asarray(logprobs), jnp.asarray(ids), jnp.asarray(ref_freq), where=jnp.asarray(mask)
    )
    want = np_dcpdd(logprobs.astype(np.float64), ids, ref_freq.astype(np.float64), 0.01, mask)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_dcpdd_masked_garbage_gives_finite_values_and_gradients():
    logprobs, ids, ref_freq, mask = dcpdd_inputs(3, batch=3, length=9, vocab=4)
    mask[1] = False
    logprobs = np.where(mask, logprobs, np.nan).astype(np.float32)
    logprobs[0, ~mask[0]] = -np.inf
    ids = np.where(mask, ids, -100)  # padding ids at masked positions

    def total(lp):
        return jnp.sum(
            dcpdd_score(
                lp, jnp.asarray(ids), jnp.asarray(ref_freq), a=0.03, where=jnp.asarray(mask)
            )
        )

    got = dcpdd_score(
        jnp.asarray(logprobs),
        jnp.asarray(ids),
        jnp.asarray(ref_freq),
        a=0.03,
        where=jnp.asarray(mask),
    )
    chex.assert_tree_all_finite(got)
    assert float(got[1]) == 0.0
    want = np_dcpdd(np.nan_to_num(logprobs.astype(np.float64)), ids, ref_freq, 0.03, mask)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    grad = jax.grad(total)(jnp.asarray(logprobs))
    chex.assert_tree_all_finite(grad)
    assert not np.any(np.asarray(grad)[~mask])


def test_dcpdd_gradient_matches_oracle(x64):
    logprobs, ids, ref_freq, mask = dcpdd_inputs(4, batch=2, length=11, vocab=4)
    logprobs = logprobs.astype(np.float64)
    a = 0.01
    grad = jax.grad(
        lambda lp: jnp.sum(
            dcpdd_score(lp, jnp.asarray(ids), jnp.asarray(ref_freq), a=a, where=jnp.asarray(mask))
        )
    )(jnp.asarray(logprobs))
    eps = 1e-7
    for b, i in [(0, 0), (0, 3), (1, 5), (1, 10)]:
        hi, lo = logprobs.copy(), logprobs.copy()
        hi[b, i] += eps
        lo[b, i] -= eps
        fd = (
            np_dcpdd(hi, ids, ref_freq, a, mask).sum() - np_dcpdd(lo, ids, ref_freq, a, mask).sum()
        ) / (2 * eps)
        np.testing.assert_allclose(float(grad[b, i]), fd, rtol=1e-5, atol=1e-9)


def test_dcpdd_errors():
    lp, ids, freq = jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32), jnp.full(4, 0.25)
    with pytest.raises(TypeError, match="`token_ids` must have an integer dtype"):
        dcpdd_score(lp, lp, freq)
    with pytest.raises(TypeError, match="`token_logprobs` must have a floating dtype"):
        dcpdd_score(ids, ids, freq)
    with pytest.raises(ValueError, match=r"`token_logprobs` must have rank 2 \(\[B, L\]\)"):
        dcpdd_score(jnp.zeros(3), jnp.zeros(3, jnp.int32), freq)
    with pytest.raises(ValueError, match=r"`token_ids` must have shape \(2, 3\)"):
        dcpdd_score(lp, jnp.zeros((2, 4), jnp.int32), freq)
    with pytest.raises(ValueError, match=r"`ref_freq` must have rank 1"):
        dcpdd_score(lp, ids, jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="`a` must be a finite number"):
        dcpdd_score(lp, ids, freq, a=0.0)
    with pytest.raises(TypeError, match="`where` must be a boolean mask"):
        dcpdd_score(lp, ids, freq, where=jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"`where` must have shape \(2, 3\)"):
        dcpdd_score(lp, ids, freq, where=jnp.ones((2,), bool))


# ----------------------------------------------------------------------------- perplexity gap


def np_gap(logits, tokens, mask):
    out = np.zeros(logits.shape[0])
    for b in range(logits.shape[0]):
        values = []
        for i in range(logits.shape[1]):
            if not mask[b, i]:
                continue
            row = logits[b, i]
            log_p = row - np.max(row) - np.log(np.sum(np.exp(row - np.max(row))))
            p = np.exp(log_p)
            entropy = -sum(p[v] * log_p[v] for v in range(len(row)) if p[v] > 0)
            values.append(-log_p[tokens[b, i]] - entropy)
        out[b] = np.mean(values) if values else 0.0
    return out


def gap_inputs(seed, batch=3, length=6, vocab=5):
    rs = np.random.default_rng(seed)
    logits = (2.0 * rs.normal(size=(batch, length, vocab))).astype(np.float32)
    tokens = rs.integers(0, vocab, size=(batch, length))
    mask = rs.uniform(size=(batch, length)) < 0.7
    return logits, tokens, mask


def test_gap_matches_loop_oracle():
    logits, tokens, mask = gap_inputs(0)
    mask[1] = False
    got = perplexity_entropy_gap(jnp.asarray(logits), jnp.asarray(tokens), where=jnp.asarray(mask))
    chex.assert_shape(got, (3,))
    assert got.dtype == jnp.float32
    want = np_gap(logits.astype(np.float64), tokens, mask)
    assert want[1] == 0.0
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    full = perplexity_entropy_gap(jnp.asarray(logits), jnp.asarray(tokens))
    np.testing.assert_allclose(
        np.asarray(full),
        np_gap(logits.astype(np.float64), tokens, np.ones_like(mask)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_gap_float64_and_gradients(x64):
    logits, tokens, mask = gap_inputs(1, batch=2, length=4, vocab=3)
    logits = logits.astype(np.float64)
    got = perplexity_entropy_gap(jnp.asarray(logits), jnp.asarray(tokens), where=jnp.asarray(mask))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), np_gap(logits, tokens, mask), rtol=1e-12)
    grad = jax.grad(
        lambda z: jnp.sum(perplexity_entropy_gap(z, jnp.asarray(tokens), where=jnp.asarray(mask)))
    )(jnp.asarray(logits))
    eps = 1e-6
    for idx in [(0, 0, 0), (0, 1, 2), (1, 2, 1), (1, 3, 0)]:
        hi, lo = logits.copy(), logits.copy()
        hi[idx] += eps
        lo[idx] -= eps
        fd = (np_gap(hi, tokens, mask).sum() - np_gap(lo, tokens, mask).sum()) / (2 * eps)
        np.testing.assert_allclose(float(grad[idx]), fd, rtol=1e-6, atol=1e-9)


def test_gap_edge_cases_are_finite():
    logits, tokens, mask = gap_inputs(2)
    logits[0, 0, 1:] = -np.inf  # a one-hot prediction: entropy 0 (0 log 0 = 0)
    tokens[0, 0] = 0
    mask[0, 0] = True
    mask[2] = False
    logits[2] = np.nan  # masked garbage
    logits[1, ~mask[1]] = -np.inf

    def total(z):
        return jnp.sum(perplexity_entropy_gap(z, jnp.asarray(tokens), where=jnp.asarray(mask)))

    got = perplexity_entropy_gap(jnp.asarray(logits), jnp.asarray(tokens), where=jnp.asarray(mask))
    chex.assert_tree_all_finite(got)
    np.testing.assert_allclose(
        np.asarray(got), np_gap(logits.astype(np.float64), tokens, mask), rtol=1e-5, atol=1e-6
    )
    chex.assert_tree_all_finite(jax.grad(total)(jnp.asarray(logits)))


def test_gap_bf16_inputs_compute_in_float32():
    logits, tokens, _ = gap_inputs(3)
    low = jnp.asarray(logits, jnp.bfloat16)
    got = perplexity_entropy_gap(low, jnp.asarray(tokens))
    assert got.dtype == jnp.float32
    want = np_gap(np.asarray(low, np.float64), tokens, np.ones(tokens.shape, bool))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_gap_jit():
    logits, tokens, mask = gap_inputs(4)
    args = (jnp.asarray(logits), jnp.asarray(tokens))
    chex.assert_trees_all_close(
        jax.jit(perplexity_entropy_gap)(*args, where=jnp.asarray(mask)),
        perplexity_entropy_gap(*args, where=jnp.asarray(mask)),
        rtol=1e-6,
    )


def test_gap_errors():
    logits, tokens = jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), jnp.int32)
    with pytest.raises(ValueError, match=r"`logits` must have rank 3 \(\[B, L, V\]\)"):
        perplexity_entropy_gap(jnp.zeros((3, 4)), tokens)
    with pytest.raises(ValueError, match=r"`tokens` must have shape \(2, 3\)"):
        perplexity_entropy_gap(logits, jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(TypeError, match="`tokens` must have an integer dtype"):
        perplexity_entropy_gap(logits, jnp.zeros((2, 3)))
    with pytest.raises(TypeError, match="`logits` must have a floating dtype"):
        perplexity_entropy_gap(jnp.zeros((2, 3, 4), jnp.int32), tokens)
    with pytest.raises(ValueError, match=r"`where` must have shape \(2, 3\)"):
        perplexity_entropy_gap(logits, tokens, where=jnp.ones((2, 3, 4), bool))
