"""Packed documents (``segment_ids``): attention never crosses a document boundary."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiv.models import LanguageModel, LMConfig, softmax_attention


def test_softmax_attention_with_segments_equals_each_document_alone():
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 9, 2, 4))
    lengths = (4, 3, 2)
    ids = jnp.asarray(np.repeat(np.arange(3), lengths)[None].repeat(2, 0))  # [B, L]
    packed = softmax_attention(q, k, v, segment_ids=ids)
    start = 0
    for n in lengths:
        part = slice(start, start + n)
        alone = softmax_attention(q[:, part], k[:, part], v[:, part])
        chex.assert_trees_all_close(packed[:, part], alone, atol=1e-6)
        start += n


def test_segments_with_fewer_queries_use_the_last_positions():
    q, k, v = jax.random.normal(jax.random.key(1), (3, 1, 6, 1, 4))
    ids = jnp.array([[0, 0, 0, 1, 1, 1]])
    out = softmax_attention(q[:, -2:], k, v, segment_ids=ids)  # queries at positions 4, 5
    alone = softmax_attention(q[:, -2:], k[:, 3:], v[:, 3:])
    chex.assert_trees_all_close(out, alone, atol=1e-6)


def test_bad_segment_ids_shape_is_named():
    x = jnp.zeros((1, 4, 1, 2))
    with pytest.raises(ValueError, match="segment_ids"):
        softmax_attention(x, x, x, segment_ids=jnp.zeros((1, 3), jnp.int32))


def test_attention_lm_on_a_packed_row_equals_the_documents_alone():
    """RoPE is relative, the MLP and norms are per position: an attention-only LM on a packed
    row with segment ids gives each document the logits it has alone."""
    config = LMConfig(vocab_size=17, d_model=16, n_layers=2, mixer="attention", num_heads=2)
    model = LanguageModel(config, rngs=nnx.Rngs(0))
    a, b = jnp.array([[3, 1, 4, 1, 5]]), jnp.array([[9, 2, 6]])
    packed = model(jnp.concatenate([a, b], 1), segment_ids=jnp.array([[0] * 5 + [1] * 3]))
    chex.assert_trees_all_close(packed[:, :5], model(a), atol=1e-5)
    chex.assert_trees_all_close(packed[:, 5:], model(b), atol=1e-5)
    unsegmented = model(jnp.concatenate([a, b], 1))
    assert not np.allclose(unsegmented[:, 5:], model(b), atol=1e-3)  # the mask matters


def test_recurrent_mixers_accept_segment_ids_in_a_hybrid():
    config = LMConfig(vocab_size=17, d_model=16, n_layers=2, mixer=("mamba", "attention"))
    model = LanguageModel(config, rngs=nnx.Rngs(0))
    tokens = jnp.array([[1, 2, 3, 4]])
    out = model(tokens, segment_ids=jnp.array([[0, 0, 1, 1]]))
    chex.assert_shape(out, (1, 4, 17))
    chex.assert_tree_all_finite(out)
