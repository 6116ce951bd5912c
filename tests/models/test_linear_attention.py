"""linear_attention: every method vs a float64 NumPy loop; chunk pieces (LASP-2); gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiv.models.attention.linear import (
    METHODS,
    combine_linear_attention_states,
    linear_attention,
    linear_attention_chunk_state,
    linear_attention_inter,
)

B, L, H, K, V = 2, 37, 2, 5, 3
STATIC = ("causal", "method", "chunk_size", "return_final_state")
attention = jax.jit(linear_attention, static_argnames=STATIC)  # one compile, not op-by-op


def reference(q, k, v, g=None, scale=None, causal=True, s0=None):
    """S_t = diag(exp g_t) S_{t-1} + k_tᵀ v_t, o_t = scale q_t S_t, one token at a time."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, length, h, dk = q.shape
    scale = dk**-0.5 if scale is None else scale
    state = np.zeros((b, h, dk, v.shape[-1])) if s0 is None else np.array(s0, np.float64)
    out = np.zeros((b, length, h, v.shape[-1]))
    for t in range(length):
        if g is not None:
            decay = np.exp(np.asarray(g, np.float64)[:, t])
            decay = decay[..., None] if decay.ndim == 2 else decay  # [b, h, dk or 1]
            state = decay[..., None] * state
        state = state + np.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        out[:, t] = scale * np.einsum("bhk,bhkv->bhv", q[:, t], state)
    if not causal:
        out = scale * np.einsum("blhk,bhkv->blhv", q, state)
    return out, state


def inputs(seed=0, length=L, decay="none", strength=1.0):
    keys = jax.random.split(jax.random.key(seed), 5)
    q = jax.random.normal(keys[0], (B, length, H, K))
    k = jax.random.normal(keys[1], (B, length, H, K))
    v = jax.random.normal(keys[2], (B, length, H, V))
    shape = {"none": None, "head": (B, length, H), "channel": (B, length, H, K)}[decay]
    g = None if shape is None else -strength * jax.nn.softplus(jax.random.normal(keys[3], shape))
    s0 = jax.random.normal(keys[4], (B, H, K, V))
    return q, k, v, g, s0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("decay", ["none", "head", "channel"])
@pytest.mark.parametrize("with_state", [False, True])
def test_causal_matches_numpy(method, decay, with_state):
    q, k, v, g, s0 = inputs(decay=decay)
    s0 = s0 if with_state else None
    o, state = attention(
        q, k, v, log_decay=g, method=method, chunk_size=8, initial_state=s0,
        return_final_state=True,
    )  # fmt: skip
    o_ref, state_ref = reference(q, k, v, g, s0=s0)
    chex.assert_shape(o, (B, L, H, V))
    chex.assert_trees_all_close(o, o_ref.astype(np.float32), atol=2e-5, rtol=1e-5)
    chex.assert_trees_all_close(state, state_ref.astype(np.float32), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 7, 16, 37, 64])
def test_chunked_any_length_and_chunk(chunk_size):
    q, k, v, g, _ = inputs(decay="channel")
    o = attention(q, k, v, log_decay=g, chunk_size=chunk_size, scale=0.3)
    o_ref, _ = reference(q, k, v, g, scale=0.3)
    chex.assert_trees_all_close(o, o_ref.astype(np.float32), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("with_state", [False, True])
def test_bidirectional_matches_numpy(method, with_state):
    q, k, v, _, s0 = inputs()
    s0 = s0 if with_state else None
    o, state = attention(
        q, k, v, causal=False, method=method, initial_state=s0, return_final_state=True
    )
    o_ref, state_ref = reference(q, k, v, causal=False, s0=s0)
    chex.assert_trees_all_close(o, o_ref.astype(np.float32), atol=2e-5, rtol=1e-5)
    chex.assert_trees_all_close(state, state_ref.astype(np.float32), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("decay", ["head", "channel"])
def test_strong_decay_is_finite_and_exact(decay):
    # cumulative log decay reaches -2000 inside a chunk: any 1/b factor would overflow
    q, k, v, g, _ = inputs(decay=decay, strength=40.0)
    o = attention(q, k, v, log_decay=g, chunk_size=32)
    chex.assert_tree_all_finite(o)
    chex.assert_trees_all_close(o, reference(q, k, v, g)[0].astype(np.float32), atol=2e-5)


@pytest.mark.parametrize("decay", ["none", "head", "channel"])
def test_gradients_chunked_match_recurrent(decay):
    q, k, v, g, s0 = inputs(decay=decay, length=21)
    w = jax.random.normal(jax.random.key(9), (B, 21, H, V))

    def loss(method):
        def f(q, k, v, g, s0):
            o, s = attention(
                q, k, v, log_decay=g, method=method, chunk_size=8, initial_state=s0,
                return_final_state=True,
            )  # fmt: skip
            return jnp.sum(o * w) + jnp.sum(jnp.sin(s))

        return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3, 4) if g is not None else (0, 1, 2, 4)))

    args = (q, k, v, g, s0)
    chex.assert_trees_all_close(loss("chunked")(*args), loss("recurrent")(*args), atol=1e-4)
    chex.assert_trees_all_close(loss("parallel")(*args), loss("recurrent")(*args), atol=1e-4)


def test_gradients_vs_finite_differences(x64):
    q, k, v, g, s0 = (None if x is None else x.astype(jnp.float64) for x in inputs(length=9))
    g = -jax.nn.softplus(jax.random.normal(jax.random.key(3), (B, 9, H, K), jnp.float64))
    f = lambda q, k, v, g, s0: attention(  # noqa: E731
        q, k, v, log_decay=g, chunk_size=4, initial_state=s0
    )
    jax.test_util.check_grads(jax.jit(f), (q, k, v, g, s0), order=1, modes=["rev"])


@pytest.mark.parametrize("decay", ["none", "head", "channel"])
def test_shard_pieces_compose_to_the_full_sequence(decay):
    # LASP-2 pattern: per-shard states, an associative scan over shards, local + inter outputs
    q, k, v, g, s0 = inputs(decay=decay, length=36)
    bounds = [(0, 10), (10, 25), (25, 36)]
    pieces = [slice(a, b) for a, b in bounds]
    gs = [None if g is None else g[:, p] for p in pieces]
    pairs = [
        linear_attention_chunk_state(k[:, p], v[:, p], log_decay=gp)
        for p, gp in zip(pieces, gs, strict=True)
    ]
    states, log_gammas = zip(*pairs, strict=True)
    stacked = (jnp.stack(log_gammas), jnp.stack(states))
    _, inclusive = jax.lax.associative_scan(combine_linear_attention_states, stacked)
    incoming = [s0] + [
        combine_linear_attention_states(
            (jnp.zeros_like(log_gammas[0]), s0), (stacked[0][: i + 1].sum(0), inclusive[i])
        )[1]
        for i in range(2)
    ]
    outputs = [
        attention(q[:, p], k[:, p], v[:, p], log_decay=gp)
        + linear_attention_inter(q[:, p], s_in, log_decay=gp)
        for p, gp, s_in in zip(pieces, gs, incoming, strict=True)
    ]
    o_ref, _ = reference(q, k, v, g, s0=s0)
    chex.assert_trees_all_close(
        jnp.concatenate(outputs, axis=1), o_ref.astype(np.float32), atol=2e-5, rtol=1e-5
    )


def test_dtypes():
    q, k, v, g, _ = inputs(decay="head")
    o, state = linear_attention(
        q.astype(jnp.bfloat16), k, v.astype(jnp.bfloat16), log_decay=g, return_final_state=True
    )
    assert o.dtype == jnp.bfloat16 and state.dtype == jnp.float32


def test_jit_traces_once_per_shape():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(q, k, v, g, scale):
        return linear_attention(q, k, v, log_decay=g, scale=scale)

    q, k, v, g, _ = inputs(decay="head")
    f(q, k, v, g, 0.5)
    f(q + 1, k, v, g, 0.25)


def test_errors():
    q, k, v, g, s0 = inputs(decay="head")
    with pytest.raises(ValueError, match="requires `log_decay=None`"):
        linear_attention(q, k, v, log_decay=g, causal=False)
    with pytest.raises(ValueError, match="`method` must be one of"):
        linear_attention(q, k, v, method="fast")
    with pytest.raises(ValueError, match="`log_decay` must have shape"):
        linear_attention(q, k, v, log_decay=g[..., :1])
    with pytest.raises(ValueError, match="`chunk_size` must be a positive int"):
        linear_attention(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="`initial_state` must have shape"):
        linear_attention(q, k, v, initial_state=s0[..., :1])
    with pytest.raises(ValueError, match="`q` and `k` must have the same shape"):
        linear_attention(q, k[:, :5], v)
    with pytest.raises(ValueError, match="`v` must have shape"):
        linear_attention(q, k, v[:, :5])
    with pytest.raises(TypeError, match="floating dtype"):
        linear_attention(q.astype(jnp.int32), k, v)
