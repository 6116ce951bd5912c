"""selective_scan / selective_scan_step vs an independent float64 NumPy loop."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxdiv.models.ssm.selective_scan import selective_scan, selective_scan_step

METHODS = ("sequential", "associative", "chunked", "auto")
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def reference(u, delta, A, B, C, D, z, delta_bias, softplus, h0):
    """Float64 loop: h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t, y_t = <h_t, C_t> (+ D u) (* silu z)."""
    u, delta, A, B, C = (np.asarray(x, np.float64) for x in (u, delta, A, B, C))
    batch, length, channels = u.shape
    if delta_bias is not None:
        delta = delta + np.asarray(delta_bias, np.float64)
    if softplus:
        delta = np.log1p(np.exp(delta))
    h = np.zeros((batch, channels, A.shape[1])) if h0 is None else np.array(h0, np.float64)
    y = np.zeros((batch, length, channels))
    for b in range(batch):
        for t in range(length):
            for d in range(channels):
                for n in range(A.shape[1]):
                    h[b, d, n] = (
                        np.exp(delta[b, t, d] * A[d, n]) * h[b, d, n]
                        + delta[b, t, d] * B[b, t, n] * u[b, t, d]
                    )
                y[b, t, d] = np.dot(h[b, d], C[b, t])
    if D is not None:
        y = y + u * np.asarray(D, np.float64)
    if z is not None:
        z = np.asarray(z, np.float64)
        y = y * z / (1.0 + np.exp(-z))
    return y, h


def make_inputs(seed=0, batch=2, length=13, channels=3, state=4, dtype=np.float64):
    r = np.random.default_rng(seed)
    out = {
        "u": r.normal(size=(batch, length, channels)),
        "delta": r.normal(size=(batch, length, channels)) - 1.0,
        "A": -np.exp(r.normal(size=(channels, state))),
        "B": r.normal(size=(batch, length, state)),
        "C": r.normal(size=(batch, length, state)),
        "D": r.normal(size=(channels,)),
        "z": r.normal(size=(batch, length, channels)),
        "delta_bias": r.normal(size=(channels,)) * 0.5,
        "initial_state": r.normal(size=(batch, channels, state)),
    }
    return {k: jnp.asarray(v.astype(dtype)) for k, v in out.items()}


OPTIONS = [
    dict(D=False, z=False, delta_bias=False, softplus=True, h0=False),
    dict(D=True, z=True, delta_bias=True, softplus=True, h0=True),
    dict(D=True, z=False, delta_bias=False, softplus=False, h0=True),
    dict(D=False, z=True, delta_bias=True, softplus=False, h0=False),
]


def call(x, opts, method, **kw):
    """Calls selective_scan with the optional inputs that ``opts`` switches on."""
    return selective_scan(
        x["u"],
        x["delta"] if opts["softplus"] else jnp.abs(x["delta"]),
        x["A"],
        x["B"],
        x["C"],
        D=x["D"] if opts["D"] else None,
        z=x["z"] if opts["z"] else None,
        delta_bias=x["delta_bias"] if opts["delta_bias"] else None,
        delta_softplus=opts["softplus"],
        initial_state=x["initial_state"] if opts["h0"] else None,
        method=method,
        **kw,
    )


def call_reference(x, opts):
    return reference(
        x["u"],
        x["delta"] if opts["softplus"] else jnp.abs(x["delta"]),
        x["A"],
        x["B"],
        x["C"],
        x["D"] if opts["D"] else None,
        x["z"] if opts["z"] else None,
        x["delta_bias"] if opts["delta_bias"] else None,
        opts["softplus"],
        x["initial_state"] if opts["h0"] else None,
    )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("opts", OPTIONS)
def test_matches_reference_float64(x64, method, opts):
    x = make_inputs()
    y, h = call(x, opts, method, chunk_size=4, return_last_state=True)  # 13 = 3·4 + 1
    y_ref, h_ref = call_reference(x, opts)
    assert y.dtype == jnp.float64 and h.dtype == jnp.float64
    chex.assert_trees_all_close((y, h), (y_ref, h_ref), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", METHODS[:3])
@pytest.mark.parametrize("length,chunk_size", [(1, 64), (5, 64), (16, 4), (17, 16)])
def test_lengths_and_chunks_float32(method, length, chunk_size):
    x = make_inputs(seed=1, length=length, dtype=np.float32)
    opts = OPTIONS[1]
    y, h = call(x, opts, method, chunk_size=chunk_size, return_last_state=True)
    y_ref, h_ref = call_reference(x, opts)
    chex.assert_shape((y, h), [(2, length, 3), (2, 3, 4)])
    assert y.dtype == jnp.float32
    chex.assert_trees_all_close((y, h), (y_ref, h_ref), rtol=1e-4, atol=1e-5)


def test_return_last_state_false_gives_y_only():
    x = make_inputs(dtype=np.float32)
    y = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], delta_softplus=True)
    chex.assert_shape(y, (2, 13, 3))


def _loss(method, chunk_size=4):
    def loss(*args):
        kw = dict(zip(NAMES[5:], args[5:], strict=True))
        y, h = selective_scan(
            *args[:5], delta_softplus=True, method=method, chunk_size=chunk_size,
            return_last_state=True, **kw,
        )  # fmt: skip
        return jnp.sum(jnp.sin(y)) + jnp.sum(h * jnp.cos(h))

    return loss


@pytest.mark.parametrize("method", ["associative", "chunked"])
def test_gradients_match_sequential(x64, method):
    x = make_inputs(seed=2)
    args = [x[k] for k in NAMES]
    argnums = tuple(range(len(args)))
    g_seq = jax.grad(_loss("sequential"), argnums)(*args)
    g = jax.grad(_loss(method, chunk_size=5), argnums)(*args)
    chex.assert_trees_all_close(g, g_seq, rtol=1e-9, atol=1e-9)
    chex.assert_tree_all_finite(g)


@pytest.mark.parametrize("chunk_size", [1, 4])
def test_sequential_gradient_numerically(x64, chunk_size):
    """The hand-written backward of "sequential" against finite differences."""
    x = make_inputs(seed=3, length=7, channels=2, state=3)
    check_grads(_loss("sequential", chunk_size), [x[k] for k in NAMES], order=1, modes=["rev"])


def test_gradients_float32_long_sequence():
    """Chunk-checkpointed backward vs autodiff of the associative form, L = 200, float32."""
    x = make_inputs(seed=4, length=200, channels=8, state=4, dtype=np.float32)
    args = [x[k] for k in NAMES]
    argnums = tuple(range(len(args)))
    g_seq = jax.jit(jax.grad(_loss("sequential", 64), argnums))(*args)
    g_ref = jax.jit(jax.grad(_loss("associative"), argnums))(*args)
    chex.assert_trees_all_close(g_seq, g_ref, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("method", ["sequential", "associative", "chunked"])
def test_bfloat16_inputs(method):
    x = make_inputs(seed=5, length=33, dtype=np.float32)
    opts = OPTIONS[1]
    y32, h32 = call(x, opts, method, chunk_size=8, return_last_state=True)
    xb = {k: v.astype(jnp.bfloat16) for k, v in x.items()}
    y, h = call(xb, opts, method, chunk_size=8, return_last_state=True)
    assert y.dtype == jnp.bfloat16 and h.dtype == jnp.float32
    chex.assert_tree_all_finite((y, h))
    scale = float(jnp.max(jnp.abs(y32)))
    chex.assert_trees_all_close(y.astype(jnp.float32), y32, rtol=3e-2, atol=5e-2 * scale)
    chex.assert_trees_all_close(h, h32, rtol=3e-2, atol=5e-2 * float(jnp.max(jnp.abs(h32))))


def test_jit_traces_once_per_shape():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(u, delta, A, B, C):
        return selective_scan(u, delta, A, B, C, delta_softplus=True, return_last_state=True)

    x = make_inputs(dtype=np.float32)
    f(x["u"], x["delta"], x["A"], x["B"], x["C"])
    f(x["u"] + 1.0, x["delta"] * 0.5, x["A"], x["B"], -x["C"])


def test_default_cpu_method_does_not_materialise_bldn(xla_optimized):
    """Forward and backward temporaries of "auto" on CPU stay below one [B, L, D, N] array
    (the associative form, which materialises it, is the positive control)."""
    x = make_inputs(seed=6, length=1024, channels=32, state=16, dtype=np.float32)
    args = [x[k] for k in ("u", "delta", "A", "B", "C")]
    bldn_bytes = 2 * 1024 * 32 * 16 * 4

    def temp_bytes(f):
        return jax.jit(f).lower(*args).compile().memory_analysis().temp_size_in_bytes

    def fwd(*a, method="auto"):
        return selective_scan(*a, delta_softplus=True, method=method)

    grad = jax.grad(lambda *a: jnp.sum(fwd(*a) ** 2), argnums=(0, 1, 2, 3, 4))
    assert temp_bytes(fwd) < bldn_bytes
    assert temp_bytes(grad) < bldn_bytes
    assert temp_bytes(lambda *a: fwd(*a, method="associative")) > bldn_bytes


def test_step_iterated_equals_scan():
    x = make_inputs(seed=7, dtype=np.float32)
    y_scan, h_scan = selective_scan(
        x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True,
        initial_state=x["initial_state"], return_last_state=True,
    )  # fmt: skip
    step = jax.jit(selective_scan_step, static_argnames="delta_softplus")
    h, ys = x["initial_state"], []
    for t in range(x["u"].shape[1]):
        y_t, h = step(
            h, x["u"][:, t], x["delta"][:, t], x["A"], x["B"][:, t], x["C"][:, t], x["D"],
            x["z"][:, t], x["delta_bias"], delta_softplus=True,
        )  # fmt: skip
        ys.append(y_t)
    chex.assert_trees_all_close((jnp.stack(ys, 1), h), (y_scan, h_scan), rtol=1e-5, atol=1e-5)


def test_step_matches_reference_one_step(x64):
    x = make_inputs(seed=8, length=1)
    y, h = selective_scan_step(
        x["initial_state"], x["u"][:, 0], x["delta"][:, 0], x["A"], x["B"][:, 0], x["C"][:, 0]
    )
    y_ref, h_ref = reference(
        x["u"], x["delta"], x["A"], x["B"], x["C"], None, None, None, False, x["initial_state"]
    )
    chex.assert_trees_all_close((y, h), (y_ref[:, 0], h_ref), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(delta=jnp.zeros((2, 13, 4))), ValueError, r"`delta` must have shape \(2, 13, 3\)"),
        (dict(A=jnp.zeros((4, 4))), ValueError, r"`A` must have shape \(3, N\) \[D, N\], got"),
        (dict(B=jnp.zeros((2, 13, 5))), ValueError, r"`B` must have shape \(2, 13, 4\)"),
        (dict(C=jnp.zeros((2, 12, 4))), ValueError, r"`C` must have shape \(2, 13, 4\)"),
        (dict(D=jnp.zeros((2,))), ValueError, r"`D` must have shape \(3,\)"),
        (dict(z=jnp.zeros((2, 13))), ValueError, r"`z` must have shape \(2, 13, 3\)"),
        (dict(delta_bias=jnp.zeros((3, 1))), ValueError, r"`delta_bias` must have shape \(3,\)"),
        (dict(initial_state=jnp.zeros((2, 4, 3))), ValueError, r"`initial_state` must have shape"),
        (dict(u=jnp.zeros((13, 3))), ValueError, r"`u` must have rank 3 \[B, L, D\], got shape"),
        (dict(u=jnp.zeros((2, 0, 3))), ValueError, r"`u` must have length L >= 1"),
        (dict(u=jnp.zeros((2, 13, 3), jnp.int32)), TypeError, r"`u` must have a floating dtype"),
        (dict(A=jnp.zeros((3, 4), jnp.complex64)), TypeError, r"`A` must have a floating dtype"),
        (dict(method="parallel"), ValueError, r"`method` must be one of .*got 'parallel'"),
        (dict(chunk_size=0), ValueError, r"`chunk_size` must be a positive int, got 0"),
        (dict(chunk_size=4.0), ValueError, r"`chunk_size` must be a positive int, got 4.0"),
    ],
)
def test_errors(change, error, match):
    x = make_inputs(dtype=np.float32)
    kw = {k: x[k] for k in ("u", "delta", "A", "B", "C")} | change
    with pytest.raises(error, match=match):
        selective_scan(**kw)


def test_step_errors():
    x = make_inputs(dtype=np.float32)
    args = [x["u"][:, 0], x["delta"][:, 0], x["A"], x["B"][:, 0], x["C"][:, 0]]
    with pytest.raises(ValueError, match=r"`h` must have shape \(2, 3, 4\) \(\[B, D, N\]\)"):
        selective_scan_step(jnp.zeros((2, 4, 3)), *args)
    with pytest.raises(ValueError, match=r"`B_t` must have shape \(2, 4\) \(\[B, N\]\)"):
        selective_scan_step(x["initial_state"], *args[:3], jnp.zeros((2, 5)), args[4])
    with pytest.raises(ValueError, match=r"`u_t` must have rank 2 \[B, D\]"):
        selective_scan_step(x["initial_state"], x["u"], *args[1:])
