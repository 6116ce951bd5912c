"""The accelerator-path methods never hold a per-token state or an [L, L] matrix.

Each op's forward+backward is lowered (not compiled or run) at L = 16384 with small batch and
widths, and every floating-point tensor type in the lowered StableHLO is checked: none may have
as many elements as the per-token state materialised over the sequence (B·L·D·N for the
selective scan, B·L·H·P·N for SSD, B·L·H·K·V for linear attention and LightNet), and none may
have two axes of length L. Softmax attention is here in its blockwise (flash) form, alone and
inside the attention block (its dense "reference" form builds the [B, H, L, L] logits); it has
no per-token state, so its bound is the scores of every query against 2048 keys (L·2048; a
blockwise step holds [B, H, 512, 512]).
"""

# B batch, L length, D channels, N state, H heads, P head dim, K key dim, V value dim

import math
import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxdiv.models.attention.blocks import AttentionBlock
from jaxdiv.models.attention.lightnet import lightnet_attention
from jaxdiv.models.attention.linear import linear_attention
from jaxdiv.models.attention.softmax import softmax_attention
from jaxdiv.models.ssm.selective_scan import selective_scan
from jaxdiv.models.ssm.ssd import ssd

L = 16384
_FLOAT_TENSOR = re.compile(r"tensor<((?:\d+x)+)(f16|bf16|f32|f64)>")


def _spec(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _float_shapes(text: str) -> set[tuple[int, ...]]:
    return {
        tuple(int(d) for d in dims.rstrip("x").split("x"))
        for dims, _ in _FLOAT_TENSOR.findall(text)
    }


def _fwd_bwd_text(fn, args) -> str:
    def loss(*a):
        return jnp.sum(jnp.square(fn(*a)))

    grad = jax.grad(loss, argnums=tuple(range(len(args))))
    return jax.jit(grad).lower(*args).as_text()


def _attention_block(d_model: int, heads: int):
    """(fn(params, x), abstract params) of an AttentionBlock with blockwise attention."""
    block = nnx.eval_shape(
        lambda: AttentionBlock(
            d_model, num_heads=heads, implementation="blockwise", rngs=nnx.Rngs(0)
        )
    )
    graphdef, params = nnx.split(block)
    return (lambda p, x: nnx.merge(graphdef, p)(x)), params


_BLOCK, _BLOCK_PARAMS = _attention_block(64, 1)

# (name, op, abstract args, elements of the per-token state over the sequence)
CASES = [
    (
        "selective_scan chunked",
        lambda u, d, A, B, C: selective_scan(u, d, A, B, C, delta_softplus=True, method="chunked"),
        (_spec(1, L, 16), _spec(1, L, 16), _spec(16, 8), _spec(1, L, 8), _spec(1, L, 8)),
        1 * L * 16 * 8,
    ),
    (
        "ssd chunked",
        lambda x, dt, A, B, C: ssd(x, dt, A, B, C, method="chunked"),
        (_spec(1, L, 2, 16), _spec(1, L, 2), _spec(2), _spec(1, L, 1, 16), _spec(1, L, 1, 16)),
        1 * L * 2 * 16 * 16,
    ),
    (
        "ssd pallas (the Pallas interpreter's program)",
        lambda x, dt, A, B, C: ssd(x, dt, A, B, C, method="pallas"),
        (_spec(1, L, 2, 16), _spec(1, L, 2), _spec(2), _spec(1, L, 1, 16), _spec(1, L, 1, 16)),
        1 * L * 2 * 16 * 16,
    ),
    (
        "linear_attention chunked (per-head decay)",
        lambda q, k, v, g: linear_attention(q, k, v, log_decay=g, method="chunked"),
        (_spec(1, L, 2, 32), _spec(1, L, 2, 32), _spec(1, L, 2, 32), _spec(1, L, 2)),
        1 * L * 2 * 32 * 32,
    ),
    (
        "linear_attention chunked (no decay)",
        lambda q, k, v: linear_attention(q, k, v, method="chunked"),
        (_spec(1, L, 2, 32), _spec(1, L, 2, 32), _spec(1, L, 2, 32)),
        1 * L * 2 * 32 * 32,
    ),
    (
        "lightnet chunked (the block's chunk 16)",
        lambda q, k, v: lightnet_attention(q, k, v, method="chunked", chunk_size=16),
        (_spec(1, L, 2, 32), _spec(1, L, 2, 32), _spec(1, L, 2, 32)),
        1 * L * 2 * 32 * 32,
    ),
    (
        "softmax_attention blockwise",
        lambda q, k, v: softmax_attention(q, k, v, implementation="blockwise"),
        (_spec(1, L, 1, 64), _spec(1, L, 1, 64), _spec(1, L, 1, 64)),
        1 * L * 2048,
    ),
    (
        "AttentionBlock blockwise (d_model 64, one head)",
        _BLOCK,
        (_BLOCK_PARAMS, _spec(1, L, 64)),
        1 * L * 2048,
    ),
]


@pytest.mark.parametrize(("name", "fn", "args", "state"), CASES, ids=[c[0] for c in CASES])
def test_no_per_token_state_and_no_length_squared(name, fn, args, state):
    shapes = _float_shapes(_fwd_bwd_text(fn, args))
    assert shapes, f"{name}: no float tensor types parsed from the lowered text"
    too_big = sorted(s for s in shapes if math.prod(s) >= state)
    assert not too_big, f"{name}: tensors with >= {state} elements: {too_big}"
    squares = sorted(s for s in shapes if s.count(L) >= 2)
    assert not squares, f"{name}: tensors with an [L, L] pair of axes: {squares}"


def test_parser_sees_a_materialised_state():
    """The check bites: the associative selective scan holds [B, L, N, D] in its lowered text."""
    args = (_spec(1, 256, 4), _spec(1, 256, 4), _spec(4, 2), _spec(1, 256, 2), _spec(1, 256, 2))

    def fn(u, d, A, B, C):
        return selective_scan(u, d, A, B, C, method="associative")

    shapes = _float_shapes(_fwd_bwd_text(fn, args))
    assert any(math.prod(s) >= 256 * 4 * 2 for s in shapes)


def test_benchmark_counters_scale_loops_by_their_trip_counts():
    """``benchmarks.accelerators``' counters: a 100-step scan of a 64³ matmul is 100 matmuls
    (XLA's own cost analysis counts the loop body once), and with trip counts set to 1 the
    byte counter agrees with XLA's."""
    accelerators = pytest.importorskip("benchmarks.accelerators")

    def fn(x):
        return jax.lax.scan(lambda c, _: (c @ x, None), x, None, length=100)[0]

    x = _spec(64, 64)
    cost = accelerators.measure(fn, x)
    assert cost.dot_flops == 100 * 2 * 64**3
    assert cost.steps == 100
    assert cost.xla_flops < 2 * 2 * 64**3  # the body once
    assert 0.9 <= cost.bytes_untripped / cost.xla_bytes <= 1.1
    assert cost.bytes > 50 * cost.bytes_untripped


def test_kernel_traffic_counts_every_block_once_per_grid_program():
    """Counted by hand from the BlockSpecs of the no-decay linear-attention forward kernel:
    per (batch, head) program it reads q, k, v ``[L, K]`` and S_0 ``[K, V]`` and writes o
    ``[L, V]`` and S_L, float32; 2 heads, 2 programs."""
    accelerators = pytest.importorskip("benchmarks.accelerators")
    from jaxdiv.models.kernels.linear_attention import linear_attention as kernel

    Lq, K = 64, 16
    q = _spec(1, Lq, 2, K)
    jaxpr = jax.make_jaxpr(lambda q: kernel(q, q, q, chunk_size=16))(q).jaxpr
    per_program = (3 * Lq * K + K * K + Lq * K + K * K) * 4
    assert accelerators.kernel_traffic(jaxpr) == 2 * per_program


def test_kernel_stand_ins_compile_without_the_kernels_and_leave_no_trace_behind():
    """``measure_with_kernels``: the kernels' FLOPs from their bodies, their bytes from their
    blocks, no loop of the interpreter in the compiled program; afterwards the op still
    computes (no stand-in cached into a later trace)."""
    accelerators = pytest.importorskip("benchmarks.accelerators")
    from jaxdiv.models.kernels._common import kernels_as_stand_ins

    def fn(q):
        return linear_attention(q, q, q, method="pallas", chunk_size=16)

    q = jax.random.normal(jax.random.key(0), (1, 64, 2, 16))
    cost = accelerators.measure_with_kernels(fn, q)
    interpreted = jax.make_jaxpr(fn)(q).jaxpr
    assert cost.kernel_bytes == accelerators.kernel_traffic(interpreted) > 0
    assert cost.bytes > cost.kernel_bytes  # plus the XLA ops around the kernel
    assert cost.steps == 0  # the interpreter's grid and chunk loops are gone
    # per head and chunk of 16: q kᵀ, A v, q S, kᵀ v, each 2·16³ (by hand), 2 heads × 4 chunks
    assert cost.dot_flops == 2 * 4 * 4 * 2 * 16**3
    with kernels_as_stand_ins():
        assert not jnp.any(jax.jit(lambda q: fn(q))(q))  # a stand-in computes nothing
    expected = linear_attention(q, q, q, method="chunked", chunk_size=16)
    assert jnp.allclose(jax.jit(fn)(q), expected, atol=1e-4)
