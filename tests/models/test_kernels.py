"""Pallas kernels (``method="pallas"``, interpret mode on CPU) vs the reference methods.

Every case compares values AND gradients (w.r.t. every differentiable input) of one jitted
``value_and_grad`` of a scalar loss that mixes all outputs non-linearly. Shapes are tiny:
the Pallas interpreter is slow.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiv.models.attention.linear import linear_attention
from jaxdiv.models.kernels import selective_scan as ss_kernels
from jaxdiv.models.ssm.selective_scan import selective_scan
from jaxdiv.models.ssm.ssd import ssd

TOL = dict(rtol=1e-4, atol=1e-4)


def _normal(r, shape, dtype=jnp.float32):
    return jnp.asarray(r.normal(size=shape), dtype)


def _loss(fn):
    """A scalar of every output of ``fn`` (sin of the first, x·cos x of the others)."""

    def loss(*args):
        out = fn(*args)
        out = out if isinstance(out, tuple) else (out,)
        total = jnp.sum(jnp.sin(out[0].astype(jnp.float32)))
        for o in out[1:]:
            total = total + jnp.sum(o * jnp.cos(o))
        return total, out

    return loss


def _value_and_grads(fn, args):
    argnums = tuple(range(len(args)))
    return jax.jit(jax.value_and_grad(_loss(fn), argnums, has_aux=True))(*args)


def assert_same_values_and_grads(fn, ref, args, zero_grads=(), **tol):
    """``fn`` and ``ref`` agree in outputs, loss and gradients w.r.t. every argument.

    Each gradient must be non-zero somewhere, except those at the indices ``zero_grads``
    (exactly zero there, e.g. ∂A of one step from h_0 = 0).
    """
    (loss, out), grads = _value_and_grads(fn, args)
    (loss_ref, out_ref), grads_ref = _value_and_grads(ref, args)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, out_ref)
    chex.assert_trees_all_equal_shapes_and_dtypes(grads, grads_ref)
    chex.assert_tree_all_finite((out, grads))
    to32 = functools.partial(jax.tree.map, lambda x: x.astype(jnp.float32))
    chex.assert_trees_all_close(to32((loss, out)), to32((loss_ref, out_ref)), **(tol or TOL))
    chex.assert_trees_all_close(to32(grads), to32(grads_ref), **(tol or TOL))
    for i, g in enumerate(grads):  # not vacuous
        assert (float(jnp.max(jnp.abs(g.astype(jnp.float32)))) > 0) != (i in zero_grads), i


# --- selective_scan ----------------------------------------------------------------------------


def _scan_inputs(seed, batch, length, channels, state, dtype=jnp.float32):
    r = np.random.default_rng(seed)
    return dict(
        u=_normal(r, (batch, length, channels), dtype),
        delta=_normal(r, (batch, length, channels), dtype) - 1.0,
        A=jnp.asarray(-np.exp(r.normal(size=(channels, state))), dtype),
        B=_normal(r, (batch, length, state), dtype),
        C=_normal(r, (batch, length, state), dtype),
        D=_normal(r, (channels,), dtype),
        z=_normal(r, (batch, length, channels), dtype),
        delta_bias=_normal(r, (channels,), dtype) * 0.5,
        initial_state=_normal(r, (batch, channels, state), dtype),
    )


SCAN_CASES = {
    # L = 13 is not a multiple of the kernel's 8-step chunk; every optional input
    "all_options": (dict(batch=2, length=13, channels=3, state=4), True, ()),
    # a single step, no optional input, B = 1 (∂A = 0: the only step starts from h_0 = 0)
    "bare_L1": (dict(batch=1, length=1, channels=5, state=2), False, (2,)),
}


@pytest.mark.parametrize("case", SCAN_CASES)
def test_selective_scan_op_pallas_matches_sequential(case):
    shape, full, zero_grads = SCAN_CASES[case]
    x = _scan_inputs(0, **shape)
    names = list(x) if full else ["u", "delta", "A", "B", "C"]

    def run(method):
        def fn(*args):
            return selective_scan(
                **dict(zip(names, args, strict=True)),
                delta_softplus=full,
                method=method,
                return_last_state=True,
            )

        return fn

    args = [x[k] for k in names]
    assert_same_values_and_grads(run("pallas"), run("sequential"), args, zero_grads)


def test_selective_scan_kernel_channel_blocks():
    """D = 12 in blocks of 8 (two grid steps, D padded), 4-step chunks, L = 10, h_0 given."""
    x = _scan_inputs(1, batch=2, length=10, channels=12, state=3)
    names = ["u", "delta", "A", "B", "C", "initial_state"]
    args = [x[k] for k in names]
    args[1] = jax.nn.softplus(args[1])

    def kernel(u, delta, A, B, C, h0):
        return ss_kernels.selective_scan(u, delta, A, B, C, initial_state=h0, block_d=8, block_t=4)

    def ref(u, delta, A, B, C, h0):
        return selective_scan(
            u, delta, A, B, C, initial_state=h0, method="sequential", return_last_state=True
        )

    assert_same_values_and_grads(kernel, ref, args)


def test_selective_scan_pallas_bfloat16():
    """bf16 inputs: y in bf16 (rounded from the same float32 math), h_L and grads float32-exact."""
    x = _scan_inputs(2, batch=2, length=9, channels=4, state=3, dtype=jnp.bfloat16)

    def run(method):
        def fn(u, delta, A, B, C, D, z):
            return selective_scan(
                u, delta, A, B, C, D, z, delta_softplus=True, method=method,
                return_last_state=True,
            )  # fmt: skip

        return fn

    args = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z")]
    y, h = jax.eval_shape(run("pallas"), *args)
    assert y.dtype == jnp.bfloat16 and h.dtype == jnp.float32
    # one bf16 ulp (2⁻⁸ relative) where the float32 results round differently
    assert_same_values_and_grads(run("pallas"), run("sequential"), args, rtol=1e-2, atol=1e-2)


# --- linear_attention --------------------------------------------------------------------------

LA_CASES = {
    # decay kind, (B, L, H, dk, dv), chunk_size, initial state
    "none_L13_chunk4_S0": (None, (2, 13, 2, 4, 3), 4, True),
    "none_L5_one_short_chunk": (None, (1, 5, 1, 3, 2), 64, False),
    "head_L13_chunk8": ("head", (2, 13, 2, 4, 3), 8, False),
    "channel_L10_chunk4_S0": ("channel", (2, 10, 2, 4, 3), 4, True),
}


def _la_inputs(seed, decay, shape, dtype=jnp.float32):
    B, L, H, dk, dv = shape
    r = np.random.default_rng(seed)
    x = dict(
        q=_normal(r, (B, L, H, dk), dtype),
        k=_normal(r, (B, L, H, dk), dtype),
        v=_normal(r, (B, L, H, dv), dtype),
        initial_state=_normal(r, (B, H, dk, dv), dtype),
    )
    if decay is not None:
        g_shape = (B, L, H) if decay == "head" else (B, L, H, dk)
        x["log_decay"] = -jax.nn.softplus(_normal(r, g_shape, dtype) + 1.0)
    return x


def _la_run(names, method, chunk_size):
    def fn(*args):
        return linear_attention(
            **dict(zip(names, args, strict=True)),
            method=method,
            chunk_size=chunk_size,
            return_final_state=True,
        )

    return fn


@pytest.mark.parametrize("case", LA_CASES)
def test_linear_attention_pallas_matches_recurrent(case):
    decay, shape, chunk_size, with_s0 = LA_CASES[case]
    x = _la_inputs(0, decay, shape)
    names = [n for n in x if with_s0 or n != "initial_state"]
    args = [x[n] for n in names]
    pallas, ref = _la_run(names, "pallas", chunk_size), _la_run(names, "recurrent", 1)
    assert_same_values_and_grads(pallas, ref, args)


def test_linear_attention_pallas_bfloat16():
    """bf16 in, per-head decay: o in bf16 rounded from the same float32 math, S_L float32."""
    x = _la_inputs(1, "head", (2, 9, 2, 4, 4), dtype=jnp.bfloat16)
    names = list(x)
    args = [x[n] for n in names]
    pallas, ref = _la_run(names, "pallas", 4), _la_run(names, "recurrent", 1)
    o, S = jax.eval_shape(pallas, *args)
    assert o.dtype == jnp.bfloat16 and S.dtype == jnp.float32
    assert_same_values_and_grads(pallas, ref, args, rtol=1e-2, atol=1e-2)


def test_linear_attention_pallas_bidirectional():
    """``causal=False`` (no decay) with "pallas" computes the same as "chunked"."""
    x = _la_inputs(2, None, (1, 6, 2, 3, 2))
    out = [
        linear_attention(x["q"], x["k"], x["v"], causal=False, method=m)
        for m in ("pallas", "chunked")
    ]
    chex.assert_trees_all_close(out[0], out[1], **TOL)


# --- ssd ---------------------------------------------------------------------------------------

SSD_CASES = {
    # (b, L, h, p, g, n), chunk_size, D and initial state
    "g2_L13_chunk4_D_S0": ((2, 13, 4, 3, 2, 4), 4, True),
    "g1_L6_one_short_chunk": ((1, 6, 2, 2, 1, 3), 64, False),
    "g4_h4_L9_chunk8": ((1, 9, 4, 2, 4, 2), 8, False),
    # p = 32: 4 heads per program (128 lanes), one group
    "g1_4_heads_a_program_L11_chunk8": ((1, 11, 4, 32, 1, 3), 8, True),
    # p = 32, a group per head: each program reads the 4 groups of its 4 heads
    "g4_4_groups_a_program_L9_chunk8": ((1, 9, 4, 32, 4, 3), 8, False),
}


def _ssd_inputs(seed, shape, dtype=jnp.float32):
    b, L, h, p, g, n = shape
    r = np.random.default_rng(seed)
    return dict(
        x=_normal(r, (b, L, h, p), dtype),
        dt=jax.nn.softplus(_normal(r, (b, L, h), dtype) - 1.0),
        A=jnp.asarray(-np.exp(r.normal(size=(h,))), dtype),
        B=_normal(r, (b, L, g, n), dtype),
        C=_normal(r, (b, L, g, n), dtype),
        D=_normal(r, (h,), dtype),
        initial_state=_normal(r, (b, h, p, n), dtype),
    )


def _ssd_run(names, method, chunk_size):
    def fn(x, dt, A, B, C, *rest):
        kw = dict(zip(names[5:], rest, strict=True))
        return ssd(
            x, dt, A, B, C, **kw, chunk_size=chunk_size, method=method, return_final_state=True
        )

    return fn


@pytest.mark.parametrize("case", SSD_CASES)
def test_ssd_pallas_matches_recurrent(case):
    shape, chunk_size, full = SSD_CASES[case]
    x = _ssd_inputs(0, shape)
    names = list(x) if full else ["x", "dt", "A", "B", "C"]
    args = [x[n] for n in names]
    pallas, ref = _ssd_run(names, "pallas", chunk_size), _ssd_run(names, "recurrent", 1)
    assert_same_values_and_grads(pallas, ref, args)


def test_ssd_pallas_bfloat16():
    """bf16 in, g = 2 groups: y in bf16 rounded from the same float32 math, S_L float32."""
    x = _ssd_inputs(1, (1, 10, 4, 2, 2, 3), dtype=jnp.bfloat16)
    names = list(x)
    args = [x[n] for n in names]
    pallas, ref = _ssd_run(names, "pallas", 4), _ssd_run(names, "recurrent", 1)
    y, S = jax.eval_shape(pallas, *args)
    assert y.dtype == jnp.bfloat16 and S.dtype == jnp.float32
    assert_same_values_and_grads(pallas, ref, args, rtol=1e-2, atol=1e-2)
