"""Blockwise (flash) softmax attention and the ``implementation`` switch of softmax_attention.

"blockwise" (and "xla", "splash") against the dense "reference" in values and gradients, one
case against a float64 NumPy loop; the choice of "auto" per backend; errors for what cuDNN,
XLA's dot_product_attention and splash cannot express; the lowered HLO at L = 16384 holds no
[L, L] array; the model wiring (AttentionBlock, LMConfig, LASP-2H).
"""

# B batch, L query length, S key length, H heads, D head dim

import functools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiv.models.attention import softmax as softmax_module
from jaxdiv.models.attention.blocks import AttentionBlock
from jaxdiv.models.attention.blockwise import blockwise_attention
from jaxdiv.models.attention.parallel import lasp2h_attention
from jaxdiv.models.attention.softmax import choose_attention_implementation, softmax_attention
from jaxdiv.models.lm import LanguageModel, LMConfig

B, H, D = 2, 3, 8
TOL = dict(atol=1e-5, rtol=1e-5)


def inputs(lq, lk, *, d=D, heads=H, seed=0, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(keys[0], (B, lq, heads, d))
    k = 2.0 * jax.random.normal(keys[1], (B, lk, heads, d))
    v = jax.random.normal(keys[2], (B, lk, heads, d))
    w = jax.random.normal(keys[3], (B, lq, heads, d))  # a random cotangent
    return (*(x.astype(dtype) for x in (q, k, v)), w)


def key_padding(lk):
    where = np.ones((B, lk), bool)
    where[0, :2] = False  # left padding: the first queries of batch 0 see no key (causal)
    where[1, -3:] = False
    return where


def segments(lk):
    ids = np.zeros((B, lk), np.int32)
    ids[0, lk // 3 :] = 1
    ids[1, lk // 2 :] = 7
    return ids


def value_and_grads(fn, q, k, v, w):
    """o and the gradients in (q, k, v) of sum(w · o), one jitted program."""

    def loss(q, k, v):
        o = fn(q, k, v)
        return jnp.sum(w * o.astype(jnp.float32)), o

    grads, o = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return o, grads


def assert_matches_reference(q, k, v, w, implementation, tol=TOL, **kwargs):
    """``implementation`` (a name, or a function like softmax_attention) equals "reference"
    in value and in the gradients of sum(w · o); returns its (o, grads)."""
    if isinstance(implementation, str):
        implementation = functools.partial(softmax_attention, implementation=implementation)
    o, grads = value_and_grads(functools.partial(implementation, **kwargs), q, k, v, w)
    reference = functools.partial(softmax_attention, implementation="reference", **kwargs)
    ref_o, ref_grads = value_and_grads(reference, q, k, v, w)
    chex.assert_trees_all_close(o, ref_o, **tol)
    chex.assert_trees_all_close(grads, ref_grads, **tol)
    chex.assert_tree_all_finite(grads)
    return o, grads


def blocks(block_size, query_block_size=None):
    return functools.partial(
        blockwise_attention, block_size=block_size, query_block_size=query_block_size
    )


def numpy_attention(q, k, v, *, causal, scale, where=None, segment_ids=None):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    lq, lk = q.shape[1], k.shape[1]
    out = np.zeros((*q.shape[:-1], v.shape[-1]))
    for b in range(q.shape[0]):
        for i in range(lq):
            keys = [
                j
                for j in range(lk)
                if (not causal or j <= i + lk - lq)
                and (where is None or where[b, j])
                and (segment_ids is None or segment_ids[b, j] == segment_ids[b, i + lk - lq])
            ]
            if keys:
                logits = scale * np.einsum("hd,shd->hs", q[b, i], k[b, keys])
                p = np.exp(logits - logits.max(-1, keepdims=True))
                p /= p.sum(-1, keepdims=True)
                out[b, i] = np.einsum("hs,shd->hd", p, v[b, keys])
    return out


# --- blockwise vs reference ---------------------------------------------------------------------


def test_blockwise_matches_float64_numpy():
    q, k, v, _ = inputs(11, 17)
    where, ids = key_padding(17), segments(17)
    o = blockwise_attention(
        q, k, v, scale=0.3, where=where, segment_ids=ids, block_size=4, query_block_size=3
    )
    ref = numpy_attention(q, k, v, causal=True, scale=0.3, where=where, segment_ids=ids)
    chex.assert_trees_all_close(o, ref.astype(np.float32), **TOL)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    ("lq", "lk"),
    [(16, 16), (13, 13), (5, 13), (3, 16)],
    ids=["equal", "equal-not-multiple", "offset-not-multiple", "offset"],
)
def test_blockwise_matches_reference(causal, lq, lk):
    q, k, v, w = inputs(lq, lk)
    o, _ = assert_matches_reference(q, k, v, w, blocks(4), causal=causal)
    chex.assert_shape(o, (B, lq, H, D))


@pytest.mark.parametrize("masks", ["where", "segment_ids", "both"])
@pytest.mark.parametrize("causal", [True, False])
def test_blockwise_masks_match_reference(masks, causal):
    q, k, v, w = inputs(9, 14)
    kwargs = {}
    if masks in ("where", "both"):
        kwargs["where"] = key_padding(14)
    if masks in ("segment_ids", "both"):
        kwargs["segment_ids"] = segments(14)
    assert_matches_reference(q, k, v, w, blocks(4, 3), causal=causal, **kwargs)


@pytest.mark.parametrize(
    ("block_size", "query_block_size"), [(512, None), (64, 2), (5, 16), (1, 1)]
)
def test_block_sizes_do_not_change_the_result(block_size, query_block_size):
    """The default (one block here), key blocks larger than Lk, query blocks larger than Lq,
    single-entry blocks; softmax_attention(implementation="blockwise") is the default."""
    q, k, v, w = inputs(7, 10)
    fn = blocks(block_size, query_block_size)
    assert_matches_reference(q, k, v, w, fn, where=key_padding(10))
    if block_size == 512:
        default = functools.partial(softmax_attention, implementation="blockwise")
        chex.assert_trees_all_close(jax.jit(default)(q, k, v), jax.jit(fn)(q, k, v), **TOL)


def test_rows_without_a_visible_key_are_zero_with_zero_gradients():
    """Left padding (batch 0's first two queries) and more queries than keys (Lq > Lk: the
    first Lq − Lk queries precede every key), and every key masked."""
    q, k, v, w = inputs(9, 6)
    where = key_padding(6)
    where[1] = False
    o, (dq, _, _) = assert_matches_reference(q, k, v, w, blocks(4, 2), where=where)
    assert np.all(np.asarray(o[0, :5]) == 0.0)  # 3 before every key, then 2 padded keys
    assert np.all(np.asarray(dq[0, :5]) == 0.0)
    assert np.any(np.asarray(o[0, 5:]) != 0.0)
    assert np.all(np.asarray(o[1]) == 0.0) and np.all(np.asarray(dq[1]) == 0.0)


def test_a_traced_scale_is_differentiable():
    q, k, v, w = inputs(6, 6)

    def loss(scale, implementation):
        return jnp.sum(w * softmax_attention(q, k, v, scale=scale, implementation=implementation))

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    chex.assert_trees_all_close(grad(0.7, "blockwise"), grad(0.7, "reference"), **TOL)


def test_blockwise_check_grads_float64(x64):
    q, k, v, _ = (x.astype(jnp.float64) for x in inputs(5, 7))
    where = key_padding(7)

    def f(q, k, v):
        return blockwise_attention(q, k, v, where=where, block_size=3, query_block_size=2)

    jax.test_util.check_grads(jax.jit(f), (q, k, v), order=1, modes=["rev"])


def test_bf16_inputs():
    """bf16 matmul operands (P and dS rounded to bf16 as in FlashAttention), float32 softmax
    and accumulation, against the reference's float32 math on the same bf16 inputs."""
    q, k, v, w = inputs(12, 12, dtype=jnp.bfloat16)
    tol = dict(atol=3e-2, rtol=3e-2)
    o, grads = assert_matches_reference(q, k, v, w, blocks(4), tol=tol, where=key_padding(12))
    assert o.dtype == jnp.bfloat16
    assert all(g.dtype == jnp.bfloat16 for g in grads)


def test_jit_traces_once():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(q, k, v, where):
        return softmax_attention(q, k, v, where=where, implementation="blockwise")

    q, k, v, _ = inputs(8, 8)
    f(q, k, v, key_padding(8))
    f(q, k + 1.0, v, np.ones((B, 8), bool))


def test_blockwise_errors():
    q, k, v, _ = inputs(5, 4)
    with pytest.raises(ValueError, match="`segment_ids` needs Lq <= Lk"):
        blockwise_attention(q, k, v, segment_ids=segments(4))
    with pytest.raises(ValueError, match="`block_size` must be a positive int"):
        blockwise_attention(q, k, v, block_size=0)
    with pytest.raises(ValueError, match="`where` must have shape"):
        blockwise_attention(q, k, v, where=np.ones((B, 5), bool))
    with pytest.raises(ValueError, match="`v` must have shape"):
        blockwise_attention(q, k, v[:, :3])


# --- the other implementations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lq", "lk", "causal", "padded"),
    [(9, 9, True, False), (9, 9, True, True), (4, 9, False, True), (9, 9, False, False)],
)
def test_xla_translation_matches_reference(lq, lk, causal, padded):
    """The argument translation shared with "cudnn", run by XLA: masks, empty rows, scale."""
    q, k, v, w = inputs(lq, lk, d=16)
    where = key_padding(lk) if padded else None
    o, _ = assert_matches_reference(q, k, v, w, "xla", causal=causal, where=where, scale=0.35)
    if padded and causal:
        assert np.all(np.asarray(o[0, :2]) == 0.0)


def test_xla_with_a_traced_scale():
    q, k, v, w = inputs(6, 6, d=16)
    f = jax.jit(
        lambda s, impl: softmax_attention(q, k, v, scale=s, implementation=impl), static_argnums=1
    )
    chex.assert_trees_all_close(f(0.2, "xla"), f(0.2, "reference"), **TOL)


@pytest.mark.parametrize(
    ("implementation", "kwargs", "shapes", "match"),
    [
        ("xla", {"segment_ids": np.zeros((B, 9), np.int32)}, (9, 9, D), "`segment_ids`"),
        ("cudnn", {"segment_ids": np.zeros((B, 9), np.int32)}, (9, 9, D), "`segment_ids`"),
        ("xla", {}, (4, 9, D), "causal=True needs Lq == Lk"),
        ("cudnn", {}, (4, 9, D), "causal=True needs Lq == Lk"),
        ("cudnn", {}, (9, 9, D), "bfloat16 or float16 inputs, got float32"),
        ("cudnn", {"dtype": jnp.bfloat16}, (9, 9, 12), "multiple of 8"),
        ("splash", {"where": np.ones((B, 128), bool)}, (128, 128, D), "key padding"),
        ("splash", {}, (100, 100, D), "multiple of 128"),
    ],
)
def test_unsupported_inputs_raise_and_suggest_blockwise(implementation, kwargs, shapes, match):
    lq, lk, d = shapes
    dtype = kwargs.pop("dtype", jnp.float32)
    q, k, v, _ = inputs(lq, lk, d=d, dtype=dtype)
    with pytest.raises(ValueError, match=match) as info:
        softmax_attention(q, k, v, implementation=implementation, **kwargs)
    assert 'Use implementation="blockwise"' in str(info.value)


def test_unknown_implementation_suggests_the_closest_name():
    q, k, v, _ = inputs(3, 3)
    with pytest.raises(ValueError, match=r"got 'blokwise' \(did you mean 'blockwise'\?\)"):
        softmax_attention(q, k, v, implementation="blokwise")


def test_splash_interpret_mode_matches_reference():
    """The Pallas TPU splash kernel in interpret mode (off a TPU), with segment ids."""
    keys = jax.random.split(jax.random.key(3), 4)
    q, k, v, w = (jax.random.normal(key, (1, 128, 1, 64)) for key in keys)
    ids = np.zeros((1, 128), np.int32)
    ids[0, 50:] = 1
    assert_matches_reference(q, k, v, w, "splash", segment_ids=ids)


# --- "auto" ---------------------------------------------------------------------------------------


SHAPES = dict(q_length=256, k_length=256, head_dim=64)


@pytest.mark.parametrize(
    ("backend", "dtype", "kwargs", "expected"),
    [
        ("cpu", jnp.bfloat16, {}, "reference"),
        ("cpu", jnp.float32, {"has_where": True}, "reference"),
        ("gpu", jnp.bfloat16, {}, "cudnn"),
        ("gpu", jnp.float16, {"causal": False, "q_length": 8}, "cudnn"),
        ("cuda", jnp.bfloat16, {}, "cudnn"),
        ("gpu", jnp.float32, {}, "blockwise"),
        ("gpu", jnp.bfloat16, {"has_where": True}, "blockwise"),
        ("gpu", jnp.bfloat16, {"has_segment_ids": True}, "blockwise"),
        ("gpu", jnp.bfloat16, {"q_length": 8}, "blockwise"),  # causal, Lq != Lk: offset mask
        ("gpu", jnp.bfloat16, {"head_dim": 256}, "blockwise"),  # > 128: Hopper only
        ("gpu", jnp.bfloat16, {"head_dim": 60}, "blockwise"),
        ("gpu", jnp.bfloat16, {"value_head_dim": 32}, "blockwise"),
        ("gpu", jnp.bfloat16, {"static_scale": False}, "blockwise"),
        ("tpu", jnp.bfloat16, {}, "blockwise"),
        ("tpu", jnp.float32, {"has_where": True}, "blockwise"),
        ("rocm", jnp.bfloat16, {}, "blockwise"),
    ],
)
def test_choose_attention_implementation(backend, dtype, kwargs, expected):
    assert choose_attention_implementation(backend, dtype, **{**SHAPES, **kwargs}) == expected


def test_auto_follows_the_backend(monkeypatch):
    """On this CPU "auto" is the dense reference; told it runs on a TPU (or on a GPU with
    float32 inputs) it traces the blockwise scan."""
    q, k, v, _ = inputs(8, 8)

    def primitives():
        jaxpr = jax.make_jaxpr(lambda q, k, v: softmax_attention(q, k, v))(q, k, v)
        return {eqn.primitive.name for eqn in jaxpr.jaxpr.eqns}

    assert "custom_vjp_call" not in primitives() and "scan" not in primitives()
    for backend in ("tpu", "gpu"):
        monkeypatch.setattr(softmax_module, "_backend", lambda b=backend: b)
        assert primitives() & {"custom_vjp_call", "custom_vjp_call_jaxpr"}, backend


# --- no [L, L] array in the lowered program -------------------------------------------------------

L = 16384
_FLOAT_TENSOR = re.compile(r"tensor<((?:\d+x)+)(?:f16|bf16|f32|f64)>")


def _float_shapes(text: str) -> set[tuple[int, ...]]:
    return {
        tuple(int(s) for s in dims.rstrip("x").split("x")) for dims in _FLOAT_TENSOR.findall(text)
    }


def _lowered(fn, *args, grad: bool) -> set[tuple[int, ...]]:
    if grad:
        fn = jax.grad(lambda *a, f=fn: jnp.sum(f(*a).astype(jnp.float32)), argnums=(0, 1, 2))
    return _float_shapes(jax.jit(fn).lower(*args).as_text())


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "grad"])
def test_blockwise_lowering_has_no_length_squared_array(grad):
    spec = jax.ShapeDtypeStruct((1, L, 1, 64), jnp.float32)
    where = jax.ShapeDtypeStruct((1, L), jnp.bool_)

    def blockwise(q, k, v, where=None):
        return softmax_attention(q, k, v, where=where, implementation="blockwise")

    for fn, args in ((blockwise, (spec,) * 3), (blockwise, (spec,) * 3 + (where,))):
        shapes = _lowered(fn, *args, grad=grad)
        assert shapes
        squares = sorted(s for s in shapes if s.count(L) >= 2 or math.prod(s) >= L * 2048)
        assert not squares, squares
    # the check bites: the reference path holds the [B, H, L, L] scores
    dense = _lowered(
        lambda q, k, v: softmax_attention(q, k, v, implementation="reference"),
        *(spec,) * 3,
        grad=grad,
    )
    assert (1, 1, L, L) in dense


# --- the model wiring ---------------------------------------------------------------------------


def test_attention_block_blockwise_matches_reference():
    x = jax.random.normal(jax.random.key(1), (B, 10, 16))
    where, ids = key_padding(10), segments(10)
    outputs = {
        impl: nnx.jit(lambda block, x: block(x, where=where, segment_ids=ids))(
            AttentionBlock(16, num_heads=2, implementation=impl, rngs=nnx.Rngs(0)), x
        )
        for impl in ("blockwise", "reference")
    }
    chex.assert_trees_all_close(outputs["blockwise"], outputs["reference"], **TOL)
    with pytest.raises(ValueError, match="did you mean 'xla'"):
        AttentionBlock(16, implementation="xl", rngs=nnx.Rngs(0))


def test_lm_config_attention_implementation():
    """The registry hands LMConfig.attention_implementation to the attention layers."""
    tokens = jnp.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    kw = dict(vocab_size=17, d_model=16, n_layers=2, mixer=("linear_attention", "attention"))
    models = {
        impl: LanguageModel(LMConfig(**kw, attention_implementation=impl), rngs=nnx.Rngs(0))
        for impl in ("blockwise", "reference")
    }
    assert models["blockwise"].backbone.layers[1].mixer.implementation == "blockwise"
    assert (
        LanguageModel(LMConfig(**kw), rngs=nnx.Rngs(0)).backbone.layers[1].mixer.implementation
        == "auto"
    )
    logits = {impl: nnx.jit(lambda m: m(tokens))(model) for impl, model in models.items()}
    chex.assert_trees_all_close(logits["blockwise"], logits["reference"], **TOL)
    with pytest.raises(
        ValueError, match=r"LMConfig.attention_implementation.*did you mean 'blockwise'"
    ):
        LMConfig(**kw, attention_implementation="blockwize")


@pytest.mark.parametrize("causal", [True, False])
def test_lasp2h_with_blockwise_local_attention(causal):
    """Inside shard_map (scan carries must vary over the mesh axes like the inputs)."""
    mesh = jax.make_mesh((4,), ("sequence",), axis_types=(jax.sharding.AxisType.Auto,))
    q, k, v, w = inputs(24, 24)
    sharded = functools.partial(
        lasp2h_attention, mesh=mesh, causal=causal, implementation="blockwise"
    )
    o, grads = value_and_grads(sharded, q, k, v, w)
    single = functools.partial(softmax_attention, causal=causal, implementation="reference")
    ref_o, ref_grads = value_and_grads(single, q, k, v, w)
    chex.assert_trees_all_close(o, ref_o, **TOL)
    chex.assert_trees_all_close(grads, ref_grads, **TOL)
