"""softmax_attention vs float64 NumPy (causal offset, key padding); KV-cache decoding."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiv.models.attention.softmax import attend_with_cache, init_kv_cache, softmax_attention

B, H, D = 2, 3, 4


def reference(q, k, v, causal=True, scale=None, where=None):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    lq, lk = q.shape[1], k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = np.zeros((*q.shape[:-1], v.shape[-1]))
    for b in range(q.shape[0]):
        for h in range(q.shape[2]):
            for i in range(lq):
                keys = [
                    j
                    for j in range(lk)
                    if (not causal or j <= i + lk - lq) and (where is None or where[b, j])
                ]
                if not keys:
                    continue
                logits = np.array([scale * q[b, i, h] @ k[b, j, h] for j in keys])
                p = np.exp(logits - logits.max())
                out[b, i, h] = (p / p.sum()) @ v[b, keys, h]
    return out


def inputs(lq=5, lk=9, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(keys[0], (B, lq, H, D)),
        3.0 * jax.random.normal(keys[1], (B, lk, H, D)),
        jax.random.normal(keys[2], (B, lk, H, D)),
    )


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("lq", "lk"), [(7, 7), (3, 9)])
@pytest.mark.parametrize("padded", [False, True])
def test_matches_numpy(causal, lq, lk, padded):
    q, k, v = inputs(lq, lk)
    where = np.ones((B, lk), bool)
    if padded:
        where[0, :2] = False
        where[1, -3:] = False
    o = softmax_attention(q, k, v, causal=causal, scale=0.4, where=where if padded else None)
    ref = reference(q, k, v, causal=causal, scale=0.4, where=where)
    chex.assert_trees_all_close(o, ref.astype(np.float32), atol=1e-5, rtol=1e-5)


def test_fully_masked_rows_are_zero_with_finite_gradients():
    q, k, v = inputs(4, 4)
    where = jnp.array([[False, False, True, True], [True, True, True, True]])
    o = softmax_attention(q, k, v, where=where)  # batch 0: queries 0 and 1 see no key
    chex.assert_trees_all_close(o[0, :2], jnp.zeros((2, H, D)))
    grads = jax.grad(lambda q, k, v: softmax_attention(q, k, v, where=where).sum(), (0, 1, 2))(
        q, k, v
    )
    chex.assert_tree_all_finite(grads)


def test_bf16_inputs_use_float32_softmax():
    q, k, v = inputs()
    o = softmax_attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16))
    assert o.dtype == jnp.bfloat16
    ref = reference(*(np.asarray(x.astype(jnp.bfloat16), np.float32) for x in (q, k, v)))
    chex.assert_trees_all_close(o.astype(jnp.float32), ref.astype(np.float32), atol=2e-2)


def test_gradients(x64):
    q, k, v = (x.astype(jnp.float64) for x in inputs(3, 6))
    f = jax.jit(lambda q, k, v: softmax_attention(q, k, v))
    jax.test_util.check_grads(f, (q, k, v), order=1, modes=["rev"])


def test_cache_decoding_equals_full_causal_attention():
    q, k, v = inputs(9, 9, seed=1)
    full = softmax_attention(q, k, v)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(q, k, v, cache, index):
        return attend_with_cache(q, k, v, cache, index)

    cache = init_kv_cache(B, 12, H, D)
    o, cache = attend_with_cache(q[:, :3], k[:, :3], v[:, :3], cache, 0)  # a prompt block
    outs = [o]
    for t in range(3, 9):
        o, cache = step(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1], cache, t)
        outs.append(o)
    chex.assert_trees_all_close(jnp.concatenate(outs, axis=1), full, atol=1e-5)
    chex.assert_trees_all_close(cache.k[:, :9], k)


def test_jit_traces_once_per_shape():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(q, k, v, scale):
        return softmax_attention(q, k, v, scale=scale)

    q, k, v = inputs()
    f(q, k, v, 0.5)
    f(q, k + 1, v, 0.3)


def test_errors():
    q, k, v = inputs()
    with pytest.raises(ValueError, match="`k` must have shape"):
        softmax_attention(q, k[..., :2], v)
    with pytest.raises(ValueError, match="`v` must have shape"):
        softmax_attention(q, k, v[:, :3])
    with pytest.raises(ValueError, match="`where` must have shape"):
        softmax_attention(q, k, v, where=jnp.ones((B, 3), bool))
    with pytest.raises(TypeError, match="floating dtype"):
        softmax_attention(q, k.astype(jnp.int32), v)
    with pytest.raises(ValueError, match="at most 4 tokens"):
        attend_with_cache(q, k[:, :5], v[:, :5], init_kv_cache(B, 4, H, D), 0)
