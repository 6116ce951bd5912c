"""Sequence parallelism (models/parallel.py): every mixer over a sharded sequence equals one device.

Values are checked against float64 NumPy loops written here; gradients against the single-device
ops; the communication pattern against the compiled HLO.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiv.models.attention.lightnet import lightnet_attention
from jaxdiv.models.attention.linear import linear_attention
from jaxdiv.models.attention.softmax import softmax_attention
from jaxdiv.models.parallel import (
    lasp2_lightnet_attention,
    lasp2_linear_attention,
    lasp2h_attention,
    sequence_parallel_s4,
    sequence_parallel_selective_scan,
)
from jaxdiv.models.ssm import s4_ops as sk
from jaxdiv.models.ssm.selective_scan import selective_scan
from jaxdiv.train.hlo import compiled_collectives

AXES = ("data", "fsdp", "sequence", "tensor")
# (data, fsdp, sequence, tensor): sequence 2, 4, 8 combined with data / fsdp / tensor.
MESHES = [(2, 1, 4, 1), (1, 1, 8, 1), (4, 1, 2, 1), (1, 2, 2, 2)]
PER_SHARD = 6  # tokens per shard: not a multiple of the chunk size 4 used below
CHUNK = 4
TOL = dict(atol=2e-4, rtol=2e-4)


def make_mesh(shape):
    return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)


def normal(key, shape, scale=1.0):
    return scale * jax.random.normal(key, shape, jnp.float32)


def close(a, b, tol=TOL):
    chex.assert_trees_all_close(a, b, **tol)


def grads(fn, *args):
    return jax.jit(jax.grad(fn, argnums=tuple(range(len(args)))))(*args)


def check(sp, single, args, w, reference, tol=TOL, grad_tol=TOL):
    """Values of ``sp`` vs the float64 reference, gradients vs the single-device op (one compile
    for the sharded value and gradients)."""

    def loss(*a):
        o = sp(*a)
        return jnp.sum(o * w), o

    g, o = jax.jit(jax.grad(loss, argnums=tuple(range(len(args))), has_aux=True))(*args)
    chex.assert_shape(o, w.shape)
    np.testing.assert_allclose(o, reference, **tol)
    close(g, grads(lambda *a: jnp.sum(single(*a) * w), *args), grad_tol)


# --- float64 NumPy references -------------------------------------------------------------------


def ref_linear_attention(q, k, v, g, causal):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, L, H, K = q.shape
    q = q * K**-0.5
    g = np.zeros((B, L, H, 1)) if g is None else np.asarray(g, np.float64)
    g = g[..., None] if g.ndim == 3 else g
    S = np.zeros((B, H, K, v.shape[-1]))
    o = np.zeros(v.shape)
    for t in range(L):
        S = np.exp(g[:, t])[..., None] * S + np.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        o[:, t] = np.einsum("bhk,bhkv->bhv", q[:, t], S)
    if not causal:
        o = np.einsum("blhk,bhkv->blhv", q, S)
    return o


def ref_lightnet(q, k, v, causal):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    q = q * q.shape[-1] ** -0.5
    e = np.exp(k)
    if causal:
        M = np.cumsum(np.einsum("blhk,blhv->blhkv", e, v), axis=1)
        delta = np.cumsum(e, axis=1)
    else:
        M = np.einsum("blhk,blhv->bhkv", e, v)[:, None]
        delta = e.sum(axis=1, keepdims=True)
    return np.einsum("blhk,blhkv->blhv", q, M / delta[..., None])


def ref_selective_scan(u, delta, A, B, C, D, z, delta_bias):
    u, delta, A, B, C, D, z, delta_bias = (
        np.asarray(x, np.float64) for x in (u, delta, A, B, C, D, z, delta_bias)
    )
    dt = np.log1p(np.exp(delta + delta_bias))
    h = np.zeros((u.shape[0], *A.shape))
    y = np.zeros(u.shape)
    for t in range(u.shape[1]):
        h = np.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * u[:, t])[..., None] * B[:, t, None]
        y[:, t] = np.einsum("bdn,bn->bd", h, C[:, t])
    y = y + D * u
    return y * z / (1 + np.exp(-z))


def ref_s4(u, Lambda, Bm, C, log_dt, D, P):
    u = np.asarray(u, np.float64)
    Lambda, Bm, C, P = (
        None if x is None else np.asarray(x, np.complex128) for x in (Lambda, Bm, C, P)
    )
    dt = np.exp(np.asarray(log_dt, np.float64))
    H, N2 = Lambda.shape
    if P is None:
        Abar = np.stack([np.diag(np.exp(dt[h] * Lambda[h])) for h in range(H)])
        Bbar = np.expm1(dt[:, None] * Lambda) / Lambda * Bm
    else:
        A = np.stack([np.diag(Lambda[h]) - np.outer(P[h], P[h].conj()) for h in range(H)])
        eye = np.eye(N2)
        inv = np.stack([np.linalg.inv(eye - dt[h] / 2 * A[h]) for h in range(H)])
        Abar = np.einsum("hmk,hkn->hmn", inv, eye + dt[:, None, None] / 2 * A)
        Bbar = np.einsum("hmn,hn->hm", inv, dt[:, None] * Bm)
    x = np.zeros((u.shape[0], H, N2), np.complex128)
    y = np.zeros(u.shape)
    for t in range(u.shape[1]):
        x = np.einsum("hmn,bhn->bhm", Abar, x) + Bbar * u[:, t, :, None]
        y[:, t] = 2 * np.einsum("hn,bhn->bh", C, x).real
    return y + np.asarray(D, np.float64) * u


def ref_softmax(q, k, v, causal):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("blhd,bshd->bhls", q, k) * q.shape[-1] ** -0.5
    if causal:
        L = q.shape[1]
        logits = np.where(np.tril(np.ones((L, L), bool)), logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bhls,bshd->blhd", w / w.sum(-1, keepdims=True), v)


# --- linear attention ---------------------------------------------------------------------------


def qkv(rng, shape, dv=4, key_scale=1.0):
    kq, kk, kv, kw = jax.random.split(rng, 4)
    return (
        normal(kq, shape),
        normal(kk, shape, key_scale),
        normal(kv, shape[:3] + (dv,)),
        normal(kw, shape[:3] + (dv,)),
    )


@pytest.mark.parametrize(
    ("mesh_shape", "decay"),
    [(MESHES[0], None), (MESHES[1], "head"), (MESHES[2], "channel"), (MESHES[3], "channel")],
)
def test_lasp2_linear_attention_causal(rng, mesh_shape, decay):
    mesh = make_mesh(mesh_shape)
    L = PER_SHARD * mesh_shape[2]
    q, k, v, w = qkv(rng, (4, L, 2, 3))
    args = (q, k, v)
    if decay is not None:
        shape = (4, L, 2) if decay == "head" else (4, L, 2, 3)
        args += (-jax.nn.softplus(normal(jax.random.fold_in(rng, 7), shape)),)
    g = args[3] if decay else None

    def sp(q, k, v, *g):
        return lasp2_linear_attention(
            q, k, v, mesh=mesh, log_decay=g[0] if g else None, chunk_size=CHUNK
        )

    def single(q, k, v, *g):
        return linear_attention(q, k, v, log_decay=g[0] if g else None)

    check(sp, single, args, w, ref_linear_attention(q, k, v, g, True))


@pytest.mark.parametrize("mesh_shape", MESHES[1:3])
def test_lasp2_linear_attention_bidirectional(rng, mesh_shape):
    mesh = make_mesh(mesh_shape)
    q, k, v, w = qkv(rng, (4, PER_SHARD * mesh_shape[2], 2, 3))
    check(
        lambda *a: lasp2_linear_attention(*a, mesh=mesh, causal=False),
        lambda *a: linear_attention(*a, causal=False),
        (q, k, v),
        w,
        ref_linear_attention(q, k, v, None, False),
    )


@pytest.mark.slow
def test_lasp2_chunk_size_and_dtype(rng):
    mesh = make_mesh((1, 1, 4, 1))
    q, k, v, _ = qkv(rng, (1, 40, 2, 4))
    o = lasp2_linear_attention(q, k, v, mesh=mesh, chunk_size=3, scale=0.5)
    np.testing.assert_allclose(
        o, linear_attention(q, k, v, scale=0.5, method="recurrent"), atol=1e-4
    )
    o16 = lasp2_linear_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), mesh=mesh)
    assert o16.dtype == jnp.bfloat16
    chex.assert_tree_all_finite(o16)


# --- LightNet -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mesh_shape", "causal"), [(MESHES[0], True), (MESHES[3], True), (MESHES[1], False)]
)
def test_lasp2_lightnet(rng, mesh_shape, causal):
    mesh = make_mesh(mesh_shape)
    q, k, v, w = qkv(rng, (4, PER_SHARD * mesh_shape[2], 2, 3), key_scale=3.0)
    check(
        lambda *a: lasp2_lightnet_attention(*a, mesh=mesh, causal=causal, chunk_size=CHUNK),
        lambda *a: lightnet_attention(*a, causal=causal),
        (q, k, v),
        w,
        ref_lightnet(q, k, v, causal),
    )


@pytest.mark.slow
def test_lasp2_lightnet_large_keys(rng):
    mesh = make_mesh((1, 1, 8, 1))
    q, k, v, _ = qkv(rng, (1, 48, 2, 3), key_scale=80.0)
    o = lasp2_lightnet_attention(q, k, v, mesh=mesh)
    chex.assert_tree_all_finite(o)
    np.testing.assert_allclose(o, lightnet_attention(q, k, v, method="recurrent"), atol=1e-4)


# --- LASP-2H ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mesh_shape", "causal"), [(MESHES[1], True), (MESHES[3], True), (MESHES[2], False)]
)
def test_lasp2h_attention(rng, mesh_shape, causal):
    mesh = make_mesh(mesh_shape)
    q, k, v, w = qkv(rng, (4, PER_SHARD * mesh_shape[2], 2, 3))
    check(
        lambda *a: lasp2h_attention(*a, mesh=mesh, causal=causal),
        lambda *a: softmax_attention(*a, causal=causal),
        (q, k, v),
        w,
        ref_softmax(q, k, v, causal),
        tol=dict(atol=1e-5, rtol=1e-5),
    )


# --- Mamba --------------------------------------------------------------------------------------


def mamba_inputs(rng, L, Dch=4, N=3):
    ks = jax.random.split(rng, 9)
    u, delta, z, w = (normal(kk, (4, L, Dch)) for kk in ks[:4])
    A = -jnp.exp(normal(ks[4], (Dch, N)))
    B, C = normal(ks[5], (4, L, N)), normal(ks[6], (4, L, N))
    return (u, delta, A, B, C, normal(ks[7], (Dch,)), z, normal(ks[8], (Dch,))), w


@pytest.mark.parametrize("mesh_shape", [MESHES[0], MESHES[3]])
def test_sequence_parallel_selective_scan(rng, mesh_shape):
    mesh = make_mesh(mesh_shape)
    args, w = mamba_inputs(rng, PER_SHARD * mesh_shape[2])
    check(
        lambda *a: sequence_parallel_selective_scan(
            *a, delta_softplus=True, mesh=mesh, chunk_size=CHUNK
        ),
        lambda *a: selective_scan(*a, delta_softplus=True),
        args,
        w,
        ref_selective_scan(*args),
        grad_tol=dict(atol=5e-4, rtol=5e-4),
    )


@pytest.mark.slow
def test_sequence_parallel_selective_scan_minimal(rng):
    mesh = make_mesh((1, 1, 4, 1))
    (u, delta, A, B, C, *_), _ = mamba_inputs(rng, 40)
    delta = jax.nn.softplus(delta)
    y = sequence_parallel_selective_scan(u, delta, A, B, C, mesh=mesh, method="chunked")
    np.testing.assert_allclose(y, selective_scan(u, delta, A, B, C), atol=1e-4)


# --- S4 / S4D -----------------------------------------------------------------------------------


def s4_inputs(rng, L, H=4, N2=3, dplr=False):
    ks = jax.random.split(rng, 8)
    Lambda = jax.lax.complex(-jnp.exp(normal(ks[0], (H, N2), 0.5)), normal(ks[1], (H, N2)))
    Bm, C, P = (
        jax.lax.complex(normal(a, (H, N2)), normal(b, (H, N2)))
        for a, b in (ks[2:4], ks[4:6], ks[6:8])
    )
    u = normal(jax.random.fold_in(rng, 1), (4, L, H))
    log_dt = jnp.log(jnp.linspace(0.05, 0.5, H))
    D = normal(jax.random.fold_in(rng, 2), (H,))
    w = normal(jax.random.fold_in(rng, 3), (4, L, H))
    return u, Lambda, Bm, C, log_dt, D, (0.3 * P if dplr else None), w


@pytest.mark.parametrize(
    ("mesh_shape", "dplr"), [(MESHES[1], False), (MESHES[3], False), (MESHES[0], True)]
)
def test_sequence_parallel_s4(rng, mesh_shape, dplr):
    mesh = make_mesh(mesh_shape)
    L = PER_SHARD * mesh_shape[2]
    u, Lambda, Bm, C, log_dt, D, P, w = s4_inputs(rng, L, dplr=dplr)

    def single(u, log_dt, Lambda):
        if P is None:
            K = sk.ssm_kernel_diag(Lambda, Bm, C, log_dt, L)
        else:
            K = sk.ssm_kernel_dplr(Lambda, P, Bm, C, log_dt, L)
        return sk.causal_conv_fft(u, K, D)

    check(
        lambda u, log_dt, Lambda: sequence_parallel_s4(u, Lambda, Bm, C, log_dt, D, P=P, mesh=mesh),
        single,
        (u, log_dt, Lambda),
        w,
        ref_s4(u, Lambda, Bm, C, log_dt, D, P),
        tol=dict(atol=5e-4, rtol=5e-4),
        grad_tol=dict(atol=2e-3, rtol=2e-3),
    )


# --- communication ------------------------------------------------------------------------------


@pytest.mark.parametrize("decay", [None, "channel"])
def test_one_all_gather_independent_of_length(decay):
    mesh = make_mesh((1, 1, 8, 1))
    found = {}
    for L in (1024, 8192):
        x = jnp.zeros((1, L, 2, 8))
        g = None if decay is None else jnp.zeros((1, L, 2, 8))
        found[L] = compiled_collectives(
            lambda q, k, v, g: lasp2_linear_attention(q, k, v, mesh=mesh, log_decay=g), x, x, x, g
        )
        assert [kind for kind, _, _ in found[L]] == ["all-gather"], found[L]
        shape = found[L][0][2]
        assert L not in shape and L // 8 not in shape, shape  # no q, k or v moved
    assert found[1024] == found[8192]
    W, B, H, packed = found[1024][0][2]
    assert (W, B, H, packed) == (8, 1, 2, 8 * 8 + (0 if decay is None else 8))


def test_one_all_gather_other_mixers(rng):
    mesh = make_mesh((1, 1, 8, 1))
    x = jnp.zeros((1, 512, 2, 8))
    (u, delta, A, B, C, *_), _ = mamba_inputs(rng, 512)
    u, Lambda, Bm, Cm, log_dt, D, _, _ = s4_inputs(rng, 512)
    for fn, args in (
        (lambda q, k, v: lasp2_lightnet_attention(q, k, v, mesh=mesh), (x, x, x)),
        (lambda *a: sequence_parallel_selective_scan(*a, mesh=mesh), (u[..., :4], delta, A, B, C)),
        (lambda u: sequence_parallel_s4(u, Lambda, Bm, Cm, log_dt, D, mesh=mesh), (u,)),
    ):
        found = compiled_collectives(fn, *args)
        assert [kind for kind, _, _ in found] == ["all-gather"], found
        assert 512 not in found[0][2] and 64 not in found[0][2], found


# --- errors -------------------------------------------------------------------------------------


def test_errors():
    mesh = make_mesh((1, 1, 8, 1))
    x = jnp.zeros((1, 20, 2, 4))
    with pytest.raises(ValueError, match="divisible by the 8 shards"):
        lasp2_linear_attention(x, x, x, mesh=mesh)
    with pytest.raises(ValueError, match="axis_name"):
        lasp2h_attention(x, x, x, mesh=mesh, axis_name="context")
    x = jnp.zeros((1, 16, 2, 4))
    with pytest.raises(ValueError, match="requires `log_decay=None`"):
        lasp2_linear_attention(x, x, x, mesh=mesh, causal=False, log_decay=x[..., 0])
    with pytest.raises(ValueError, match="log_decay"):
        lasp2_linear_attention(x, x, x, mesh=mesh, log_decay=x[..., :2])
    with pytest.raises(TypeError, match="floating"):
        lasp2_lightnet_attention(x.astype(jnp.int32), x, x, mesh=mesh)
    with pytest.raises(ValueError, match="batch size"):
        lasp2_linear_attention(x, x, x, mesh=make_mesh((2, 1, 4, 1)))
    with pytest.raises(ValueError, match=r"`A` must have shape \(2, N\) \[D, N\], got \(3, 2\)"):
        sequence_parallel_selective_scan(
            x[..., 0], x[..., 0], jnp.zeros((3, 2)), x[..., :2], x[..., :2], mesh=mesh
        )
