"""lightnet_attention vs direct float64 sums (large keys), state chaining; MD-LRPE and MD-TPE."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiv.models.attention.lightnet import (
    LightNetState,
    init_lightnet_state,
    lightnet_attention,
    md_lrpe,
    md_tpe,
)

B, L, H, K, V = 2, 29, 2, 4, 3
STATIC = ("causal", "method", "chunk_size", "return_final_state")
attention = jax.jit(lightnet_attention, static_argnames=STATIC)


def reference(q, k, v, causal=True, scale=None):
    """o_t = scale q_t (M_t ⊘ δ_t), M_t = Σ_{s≤t} e^{k_s}ᵀ v_s, δ_t = Σ_{s≤t} e^{k_s} (float64)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v = (x.reshape(x.shape[0], -1, *x.shape[-2:]) for x in (q, k, v))
    ek = np.exp(k)  # keys up to ~110: fine in float64, overflows float32
    out = np.zeros((*q.shape[:-1], v.shape[-1]))
    for t in range(q.shape[1]):
        stop = t + 1 if causal else q.shape[1]
        M = np.einsum("bshk,bshv->bhkv", ek[:, :stop], v[:, :stop])
        delta = ek[:, :stop].sum(1)  # [b, h, k]
        out[:, t] = scale * np.einsum("bhk,bhkv->bhv", q[:, t], M / delta[..., None])
    return out


def inputs(seed=0, shape=(B, L), center=50.0, spread=20.0):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (*shape, H, K))
    k = center + spread * jax.random.normal(keys[1], (*shape, H, K))
    v = jax.random.normal(keys[2], (*shape, H, V))
    return q, k, v


@pytest.mark.parametrize("method", ["chunked", "recurrent"])
@pytest.mark.parametrize("center", [0.0, 50.0])
def test_causal_matches_direct_sums(method, center):
    q, k, v = inputs(center=center)
    assert center == 0.0 or float(k.max()) > 89.0  # e^k overflows float32
    o = attention(q, k, v, method=method, chunk_size=8)
    chex.assert_tree_all_finite(o)
    chex.assert_trees_all_close(o, reference(q, k, v).astype(np.float32), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(B, L), (B, 5, 7), (B, 3, 4, 2)])
def test_bidirectional_matches_direct_sums_any_dims(shape):
    q, k, v = inputs(shape=shape)
    o = lightnet_attention(q, k, v, causal=False, scale=0.7)
    chex.assert_shape(o, (*shape, H, V))
    ref = reference(q, k, v, causal=False, scale=0.7).reshape(*shape, H, V)
    chex.assert_trees_all_close(o, ref.astype(np.float32), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("method", ["chunked", "recurrent"])
def test_state_chains(causal, method):
    q, k, v = inputs()
    cut = 11
    first, state = attention(
        q[:, :cut], k[:, :cut], v[:, :cut], causal=causal, method=method, chunk_size=8,
        return_final_state=True,
    )  # fmt: skip
    second, final = attention(
        q[:, cut:], k[:, cut:], v[:, cut:], causal=causal, method=method, chunk_size=8,
        initial_state=state, return_final_state=True,
    )  # fmt: skip
    whole, final_whole = attention(
        q, k, v, causal=causal, method=method, chunk_size=8, return_final_state=True
    )
    chex.assert_trees_all_close(final, final_whole, atol=2e-5, rtol=1e-5)
    if causal:
        chex.assert_trees_all_close(
            jnp.concatenate([first, second], axis=1), whole, atol=2e-5, rtol=1e-5
        )
        # the state is the normalised numerator and log δ of the direct sums
        ek = np.exp(np.asarray(k, np.float64))
        M = np.einsum("bshk,bshv->bhkv", ek, np.asarray(v, np.float64))
        delta = ek.sum(1)
        chex.assert_trees_all_close(final_whole.numerator, M / delta[..., None], atol=2e-5)
        chex.assert_trees_all_close(final_whole.log_normalizer, np.log(delta), rtol=1e-6)


def test_empty_state_equals_none():
    q, k, v = inputs()
    o = attention(q, k, v, initial_state=init_lightnet_state(B, H, K, V))
    chex.assert_trees_all_close(o, attention(q, k, v), atol=1e-6)


def test_token_by_token_decoding():
    q, k, v = inputs(seed=1)
    state, outs = init_lightnet_state(B, H, K, V), []

    @jax.jit
    @chex.assert_max_traces(n=1)  # one trace for every decoding step
    def step(q, k, v, state):
        return lightnet_attention(q, k, v, initial_state=state, return_final_state=True)

    for t in range(8):
        o, state = step(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1], state)
        outs.append(o)
    ref = reference(q[:, :8], k[:, :8], v[:, :8]).astype(np.float32)
    chex.assert_trees_all_close(jnp.concatenate(outs, axis=1), ref, atol=2e-5, rtol=1e-5)


def test_gradients_chunked_match_recurrent_with_large_keys():
    q, k, v = inputs(seed=2)
    w = jax.random.normal(jax.random.key(5), (B, L, H, V))

    def grad(method):
        f = lambda q, k, v: jnp.sum(lightnet_attention(q, k, v, method=method, chunk_size=8) * w)  # noqa: E731
        return jax.jit(jax.grad(f, argnums=(0, 1, 2)))(q, k, v)

    g_chunked = grad("chunked")
    chex.assert_tree_all_finite(g_chunked)
    chex.assert_trees_all_close(g_chunked, grad("recurrent"), atol=1e-4, rtol=1e-4)


def test_bidirectional_gradients(x64):
    q, k, v = (x.astype(jnp.float64) for x in inputs(shape=(B, 3, 4), spread=3.0))
    f = lambda q, k, v: lightnet_attention(q, k, v, causal=False)  # noqa: E731
    jax.test_util.check_grads(jax.jit(f), (q, k, v), order=1, modes=["rev"])


def test_dtype_and_errors():
    q, k, v = inputs(center=0.0)
    o, state = lightnet_attention(q, k, v.astype(jnp.bfloat16), return_final_state=True)
    assert o.dtype == jnp.bfloat16 and state.numerator.dtype == jnp.float32
    assert isinstance(state, LightNetState)
    with pytest.raises(ValueError, match=r"shape \[B, L, H, dk\] when causal"):
        lightnet_attention(q[:, :, None], k[:, :, None], v[:, :, None])
    with pytest.raises(ValueError, match="`method` must be one of"):
        lightnet_attention(q, k, v, method="parallel")
    with pytest.raises(ValueError, match="`initial_state.log_normalizer` must have shape"):
        lightnet_attention(q, k, v, initial_state=(jnp.zeros((B, H, K, V)), jnp.zeros((B, H))))
    with pytest.raises(ValueError, match="`q` and `k` must have the same shape"):
        lightnet_attention(q, k[:, 1:], v)


def lrpe_reference(x, theta, shape, num_prefix):
    x, theta = np.asarray(x, np.float64), np.asarray(theta, np.float64)
    d, out = x.shape[-1], np.zeros((*x.shape[:-1], 2 * x.shape[-1]))
    out[:, :num_prefix, :, :d] = x[:, :num_prefix]
    for p, n in enumerate(np.ndindex(*shape)):
        angle = np.concatenate([n_i * theta for n_i in n], axis=-1)[:, :d]  # [h, d]
        t = num_prefix + p
        out[:, t] = np.concatenate([x[:, t] * np.cos(angle), x[:, t] * np.sin(angle)], -1)
    return out


@pytest.mark.parametrize(("shape", "num_prefix"), [((4, 5), 0), ((3, 2, 4), 2), ((7,), 1)])
def test_md_lrpe_matches_numpy_and_is_relative(shape, num_prefix):
    d, e = 6, -(-6 // len(shape))
    keys = jax.random.split(jax.random.key(0), 3)
    n = num_prefix + int(np.prod(shape))
    q, k = jax.random.normal(keys[0], (2, 1, n, H, d))
    theta = jax.random.uniform(keys[1], (H, e))
    phi_q, phi_k = (
        md_lrpe(q, theta, shape, num_prefix=num_prefix),
        md_lrpe(k, theta, shape, num_prefix=num_prefix),
    )
    chex.assert_trees_all_close(phi_q, lrpe_reference(q, theta, shape, num_prefix), atol=1e-5)
    if num_prefix == 0:  # φ(q_n)·φ(k_m) = Σ_j q_j k_j cos(Θ(n) − Θ(m))_j
        grid = list(np.ndindex(*shape))
        angle = lambda n: np.concatenate([i * np.asarray(theta) for i in n], -1)[:, :d]  # noqa: E731
        a, b = 1, len(grid) - 1
        expected = np.sum(q[0, a] * k[0, b] * np.cos(angle(grid[a]) - angle(grid[b])), -1)
        chex.assert_trees_all_close(
            jnp.sum(phi_q[0, a] * phi_k[0, b], -1), expected.astype(np.float32), atol=1e-5
        )


def tpe_reference(x, q, k, log_decay, causal):
    x = np.asarray(x, np.float64)
    gain = np.einsum("ahd,ahd->ah", np.asarray(q, np.float64), np.asarray(k, np.float64))
    lam = np.exp(np.asarray(log_decay, np.float64))  # [a, h]
    spatial = x.shape[1:-2]
    out = np.zeros_like(x)
    for n in np.ndindex(*spatial):
        for a in range(len(spatial)):
            for m_a in range(spatial[a]):
                if causal and m_a > n[a]:
                    continue
                m = n[:a] + (m_a,) + n[a + 1 :]
                w = gain[a] * lam[a] ** abs(n[a] - m_a)  # [h]
                out[(slice(None), *n)] += w[:, None] * x[(slice(None), *m)]
    return out


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("spatial", [(6,), (3, 4)])
def test_md_tpe_matches_numpy(causal, spatial):
    keys = jax.random.split(jax.random.key(1), 4)
    m, d = len(spatial), 5
    x = jax.random.normal(keys[0], (2, *spatial, H, d))
    q, k = jax.random.normal(keys[1], (2, m, H, d))
    log_decay = jax.nn.log_sigmoid(jax.random.normal(keys[2], (m, H)))
    o = md_tpe(x, q, k, log_decay, causal=causal)
    ref = tpe_reference(x, q, k, log_decay, causal).astype(np.float32)
    chex.assert_trees_all_close(o, ref, atol=1e-4, rtol=1e-5)


def test_md_pe_errors():
    x = jnp.ones((1, 12, H, 6))
    with pytest.raises(ValueError, match="`theta` must have shape"):
        md_lrpe(x, jnp.ones((H, 2)), (3, 4))
    with pytest.raises(ValueError, match="num_prefix"):
        md_lrpe(x, jnp.ones((H, 3)), (3, 5))
    with pytest.raises(ValueError, match="`log_decay` must have shape"):
        md_tpe(jnp.ones((1, 3, 4, H, 2)), jnp.ones((2, H, 2)), jnp.ones((2, H, 2)), jnp.ones(H))
