"""Sequence-parallel SSM mixers: state passing for Mamba (selective scan), Mamba-2 (SSD), S4/S4D.

See :mod:`jaxdiv.models.parallel` for the scheme (one all-gather of L-independent states).
"""

# B batch, L length (per shard inside shard_map), H S4 channels, D channels, N state
# (N2 complex pairs for S4), W shards, J·T two-level split

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P_

from jaxdiv import checks
from jaxdiv.models.sharding import exclusive_prefix, jit_shard_map, shard_layout

from . import s4_ops as sk
from .selective_scan import selective_scan
from .ssd import _check_inputs as _check_ssd_inputs
from .ssd import ssd

_HIGHEST = lax.Precision.HIGHEST


# --- Mamba: selective scan ----------------------------------------------------------------------


def _correction(cum_delta, A, h_in, C, chunk_size: int) -> jax.Array:
    """⟨exp(A ⊙ Σ_{s≤t} Δ_s) ⊙ h_in, C_t⟩ [B, L, D], in chunks of ``chunk_size`` tokens.

    cum_delta [B, L, D], A [D, N], h_in [B, D, N], C [B, L, N]. Each chunk forms
    [B, T, D, N] and is rematerialised in the backward pass.
    """
    B, L, D = cum_delta.shape
    T = min(chunk_size, L)
    n = -(-L // T)

    def chunks(x):  # [B, L, ·] -> [n, B, T, ·]
        x = jnp.pad(x, ((0, 0), (0, n * T - L), (0, 0)))
        return jnp.moveaxis(x.reshape(B, n, T, x.shape[-1]), 1, 0)

    @jax.checkpoint
    def one(xs):
        cum, c = xs  # [B, T, D], [B, T, N]
        decay = jnp.exp(cum[..., None] * A[None, None])  # [B, T, D, N]
        return jnp.einsum("btdn,bdn,btn->btd", decay, h_in, c)

    y = lax.map(one, (chunks(cum_delta), chunks(C)))  # [n, B, T, D]
    return jnp.moveaxis(y, 0, 1).reshape(B, n * T, D)[:, :L]


def _scan_local(u, delta, A, B, C, D, z, *, axis_name, batch, tensor, method, chunk_size):
    # selective_scan's hand-written backward returns cotangents that vary like the sequence: mark
    # the replicated inputs varying so that shard_map sums their cotangents (pcast's transpose).
    A = lax.pcast(A, (*(batch or ()), axis_name), to="varying")
    if tensor is not None:
        B, C = (lax.pcast(x, (tensor,), to="varying") for x in (B, C))
    # A zero initial state varying over the same mesh axes as the scan's carry (zeros_like keeps
    # the varying axes of its argument; a plain jnp.zeros would not match inside shard_map).
    h0 = jnp.zeros_like(u[:, 0, :, None] * A[None])  # [B, D, N]
    y, h_local = selective_scan(
        u,
        delta,
        A,
        B,
        C,
        method=method,
        chunk_size=chunk_size,
        initial_state=h0,
        return_last_state=True,
    )  # [B, L, D], [B, D, N]
    total_delta = jnp.sum(delta, axis=1)  # [B, D]
    packed = jnp.concatenate([h_local, total_delta[..., None]], axis=-1)  # [B, D, N + 1]
    gathered = lax.all_gather(packed, axis_name)  # [W, B, D, N + 1]
    states, sums = gathered[..., :-1], gathered[..., -1:]  # [W, B, D, N], [W, B, D, 1]

    def combine(first, second):  # (Σ Δ, h): (s_a + s_b, exp(A s_b) ⊙ h_a + h_b)
        return first[0] + second[0], jnp.exp(second[0] * A[None, None]) * first[1] + second[1]

    prefix = lax.associative_scan(combine, (sums, states), axis=0)[1]  # [W, B, D, N]
    h_in = exclusive_prefix(prefix, lax.axis_index(axis_name))  # [B, D, N]
    y = y + _correction(jnp.cumsum(delta, axis=1), A, h_in, C, chunk_size)
    if D is not None:
        y = y + u * D[None, None]
    if z is not None:
        y = y * jax.nn.silu(z)
    return y  # [B, L, D]


def sequence_parallel_selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus: bool = False,
    *,
    mesh,
    axis_name: str = "sequence",
    method: str = "auto",
    chunk_size: int = 64,
) -> jax.Array:
    r"""Sequence-parallel Mamba selective scan: one all-gather of (final state, Σ Δ) per shard.

    .. math::

        h^{(j)} = \text{scan of shard } j \text{ from } 0, \quad
        \sigma^{(j)} = \sum_{t \in j} \Delta_t, \quad
        h_{\mathrm{in}}^{(i)} = \bigcirc_{j<i} (\sigma^{(j)}, h^{(j)}), \quad
        y_t = y^{\mathrm{local}}_t + \big\langle e^{A \odot \sum_{s \le t, s \in i} \Delta_s}
              \odot h_{\mathrm{in}}^{(i)}, C_t \big\rangle

    with :math:`(\sigma_a, h_a) \circ (\sigma_b, h_b) = (\sigma_a + \sigma_b,
    e^{A \sigma_b} \odot h_a + h_b)` (a shard's decay is :math:`\prod_t e^{\Delta_t A} =
    e^{A \odot \sigma}`), then :math:`+ D u` and :math:`\odot\,\mathrm{silu}(z)`. Gathered:
    ``[W, B, D, N + 1]`` float32. The local scan is
    :func:`~jaxdiv.models.ssm.selective_scan.selective_scan` (``method``, ``chunk_size``); the
    correction is computed in closed form in chunks of ``chunk_size`` tokens (extra memory
    O(B·chunk_size·D·N), rematerialised in the backward pass), costing about one more
    exponential per [B, L, D, N] element, fully parallel over L.

    Args:
      u: input, [B, L, D].
      delta: Δ before bias and softplus, [B, L, D].
      A: [D, N], real and negative.
      B: [B, L, N].
      C: [B, L, N].
      D: skip, [D] or None.
      z: gate, [B, L, D] or None.
      delta_bias: [D] or None.
      delta_softplus: apply softplus to ``delta`` (+ bias).
      mesh: a ``jax.sharding.Mesh`` with ``axis_name`` (D is sharded over ``"tensor"`` when
        present).
      axis_name: the mesh axis the sequence is split over; L must be a multiple of its size.
      method: the local ``selective_scan`` method.
      chunk_size: the local scan's chunk size and the correction's chunk length.

    Returns:
      y [B, L, D] in u's dtype.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxdiv.models.ssm.selective_scan import selective_scan
      >>> auto = (jax.sharding.AxisType.Auto,)
      >>> mesh = jax.make_mesh((jax.device_count(),), ("sequence",), axis_types=auto)
      >>> k = jax.random.split(jax.random.key(0), 4)
      >>> u, delta = jax.random.normal(k[0], (2, 2, 16, 3))
      >>> A = -jnp.exp(jax.random.normal(k[1], (3, 4)))
      >>> B, C = jax.random.normal(k[2], (2, 2, 16, 4))
      >>> y = sequence_parallel_selective_scan(u, delta, A, B, C, delta_softplus=True, mesh=mesh)
      >>> y_ref = selective_scan(u, delta, A, B, C, delta_softplus=True)
      >>> bool(jnp.allclose(y, y_ref, atol=1e-5))
      True

    References:
      Gu and Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
      https://arxiv.org/abs/2312.00752, Eq. (2); Sun et al., "LASP-2",
      https://arxiv.org/abs/2502.07563, Section 3 (all-gather of memory states).
    """
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    arrays = [u, delta, A, B, C, D, z, delta_bias]
    arrays = [
        None if x is None else checks.float_array(x, n) for n, x in zip(names, arrays, strict=True)
    ]
    u, delta, A, B, C, D, z, delta_bias = arrays
    if u.ndim != 3:
        raise ValueError(f"`u` must have shape [B, L, D], got shape {u.shape}.")
    Bsz, L, Dch = u.shape
    if A.ndim != 2 or A.shape[0] != Dch:
        raise ValueError(f"`A` must have shape ({Dch}, N) [D, N], got {A.shape}.")
    shape_bn = (Bsz, L, A.shape[1])
    for name, x, shape, layout in (
        ("delta", delta, u.shape, "[B, L, D]"),
        ("B", B, shape_bn, "[B, L, N]"),
        ("C", C, shape_bn, "[B, L, N]"),
        ("D", D, (Dch,), "[D]"),
        ("z", z, u.shape, "[B, L, D]"),
        ("delta_bias", delta_bias, (Dch,), "[D]"),
    ):
        if x is not None:
            checks.exact_shape(x, shape, name, layout)
    batch, tensor = shard_layout(mesh, axis_name, L, Bsz, Dch)
    dtype = checks.compute_dtype(*[x for x in arrays if x is not None])
    u_f, delta_f, A, B, C = (x.astype(dtype) for x in (u, delta, A, B, C))
    if delta_bias is not None:
        delta_f = delta_f + delta_bias.astype(dtype)[None, None]
    if delta_softplus:
        delta_f = jax.nn.softplus(delta_f)  # Δ, [B, L, D]
    seq, bn = P_(batch, axis_name, tensor), P_(batch, axis_name, None)
    args, specs = [u_f, delta_f, A, B, C], [seq, seq, P_(tensor, None), bn, bn]
    for x, spec in ((D, P_(tensor)), (z, seq)):
        if x is not None:
            args.append(x.astype(dtype))
            specs.append(spec)
    has_D, has_z = D is not None, z is not None

    def body(u, delta, A, B, C, *rest):
        rest = list(rest)
        D = rest.pop(0) if has_D else None
        z = rest.pop(0) if has_z else None
        return _scan_local(
            u,
            delta,
            A,
            B,
            C,
            D,
            z,
            axis_name=axis_name,
            batch=batch,
            tensor=tensor,
            method=method,
            chunk_size=chunk_size,
        )

    y = jit_shard_map(body, mesh=mesh, in_specs=tuple(specs), out_specs=seq)(*args)
    return y.astype(u.dtype)  # [B, L, D]


# --- S4 / S4D -----------------------------------------------------------------------------------


def _two_level(length: int) -> tuple[int, int]:
    """(J, T) with J·T ≥ length, T = ⌈√length⌉."""
    T = math.isqrt(max(length - 1, 0)) + 1
    return -(-length // T), T


class _LTI:
    """Powers of a time-invariant Ā acting on [..., H, N2] vectors: diagonal in log space
    (``log_abar`` [H, N2], powers are exponentials of multiples) or dense (``abar`` [H, N2, N2],
    powers by repeated products)."""

    def __init__(self, log_abar=None, abar=None):
        self.log_abar, self.abar = log_abar, abar

    def power(self, m: int) -> "_LTI":
        if self.abar is None:
            return _LTI(log_abar=m * self.log_abar)
        return _LTI(abar=jnp.linalg.matrix_power(self.abar, m))

    def apply(self, x):  # Ā x, x [..., H, N2]
        if self.abar is None:
            return lax.expand_dims(jnp.exp(self.log_abar), tuple(range(x.ndim - 2))) * x
        return jnp.einsum("hmn,...hn->...hm", self.abar, x, precision=_HIGHEST)

    def apply_row(self, c):  # c Ā, c [..., H, N2] (row vectors)
        if self.abar is None:
            return self.apply(c)
        return jnp.einsum("...hm,hmn->...hn", c, self.abar, precision=_HIGHEST)

    def orbit(self, x, count: int, *, row: bool = False):
        """[count, ..., H, N2]: Ā^t x (or x Ā^t for rows), t = 0 … count − 1."""
        if self.abar is None:
            t = jnp.arange(count, dtype=self.log_abar.real.dtype)
            powers = jnp.exp(lax.expand_dims(t, (1, 2)) * self.log_abar[None])  # [T, H, N2]
            return lax.expand_dims(powers, tuple(range(1, 1 + x.ndim - 2))) * x[None]
        step = self.apply_row if row else self.apply

        def body(y, _):
            return step(y), y

        return lax.scan(body, x, None, length=count)[1]

    def horner(self, xs):
        """Σ_j Ā^j xs_j for xs [J, ..., H, N2]."""
        if self.abar is None:
            return jnp.sum(self.orbit(jnp.ones_like(xs[0]), xs.shape[0]) * xs, axis=0)

        def body(h, x):
            return self.apply(h) + x, None

        return lax.scan(body, jnp.zeros_like(xs[0]), xs, reverse=True)[0]


def _final_state(u, op: _LTI, Bbar):
    """h = Σ_s Ā^{L−1−s} B̄ u_s from a zero state, u [B, L, H] → complex [B, H, N2].

    Two-level in the lag r = L − 1 − s = jT + t: an inner contraction against Ā^t B̄ (T powers)
    gives [B, J, H, N2], then Σ_j Ā^{jT} (J powers).
    """
    Bsz, L, H = u.shape
    J, T = _two_level(L)
    rev = jnp.pad(jnp.flip(u, axis=1), ((0, 0), (0, J * T - L), (0, 0)))  # [B, J·T, H]
    rev = rev.reshape(Bsz, J, T, H).astype(Bbar.dtype)
    inner = jnp.einsum("bjth,thn->jbhn", rev, op.orbit(Bbar, T), precision=_HIGHEST)
    return op.power(T).horner(inner)  # Σ_j Ā^{jT} inner_j, [B, H, N2]


def _s4_correction(op: _LTI, C, h_in, length: int):
    """2 Re(C Ā^{t+1} h_in) for t < length, [B, length, H] real (two-level, t = jT + τ)."""
    J, T = _two_level(length)
    rows = op.power(T).orbit(C, J, row=True)  # [J, H, N2]
    cols = op.orbit(op.apply(h_in), T)  # [T, B, H, N2]
    y = 2 * jnp.einsum("jhn,tbhn->bjth", rows, cols, precision=_HIGHEST).real  # [B, J, T, H]
    return y.reshape(y.shape[0], J * T, -1)[:, :length]  # [B, L, H]


def _s4_local(u, Lambda, Bm, C, log_dt, D, P, *, axis_name):
    L = u.shape[1]
    dt = jnp.exp(log_dt)  # [H]
    if P is None:
        K = sk.ssm_kernel_diag(Lambda, Bm, C, log_dt, L)  # [H, L]
        op = _LTI(log_abar=dt[:, None] * Lambda)
        Bbar = sk.discretize_zoh(Lambda, Bm, log_dt)[1]  # [H, N2]
    else:
        K = sk.ssm_kernel_dplr(Lambda, P, Bm, C, log_dt, L)  # [H, L]
        Abar, Bbar = sk.discretize_dplr(Lambda, P, Bm, log_dt)  # [H, N2, N2], [H, N2]
        op = _LTI(abar=Abar)
    y = sk.causal_conv_fft(u, K, D)  # [B, L, H] local output from a zero state
    h_local = _final_state(u, op, Bbar)  # [B, H, N2] complex
    pairs = jnp.stack([h_local.real, h_local.imag], axis=-1)  # [B, H, N2, 2]
    gathered = lax.all_gather(pairs, axis_name)  # [W, B, H, N2, 2]
    states = lax.complex(gathered[..., 0], gathered[..., 1])  # [W, B, H, N2]
    shard_op, index = op.power(L), lax.axis_index(axis_name)

    def fold(h, xs):  # h_in = Σ_{j<i} Ā^{L(i−1−j)} h_j (Horner over the shards before i)
        j, h_j = xs
        return jnp.where(j < index, shard_op.apply(h) + h_j, h), None

    h_in = lax.scan(fold, jnp.zeros_like(states[0]), (jnp.arange(states.shape[0]), states))[0]
    return y + _s4_correction(op, C, h_in, L)  # [B, L, H]


def sequence_parallel_s4(
    u, Lambda, B, C, log_dt, D=None, *, P=None, mesh, axis_name: str = "sequence"
) -> jax.Array:
    r"""Sequence-parallel S4 / S4D layer (the SSM convolution of ``S4Block``) by state passing.

    .. math::

        y_t = \sum_{s \le t} K_{t-s} u_s + D u_t
            = y^{\mathrm{local}}_t + 2 \operatorname{Re}\big(C \bar A^{\,t+1} h_{\mathrm{in}}\big),
        \quad h^{(j)} = \sum_{s \in j} \bar A^{L_W - 1 - s} \bar B u_s, \quad
        h_{\mathrm{in}}^{(i)} = \sum_{j<i} (\bar A^{L_W})^{i-1-j} h^{(j)}

    per channel, with t local to shard i, :math:`y^{\mathrm{local}}` the FFT convolution of the
    shard with the kernel truncated to :math:`L_W` taps, :math:`K_l = 2\operatorname{Re}(C \bar A^l
    \bar B)`. Only the final states :math:`h^{(j)}` are gathered (Ā is the same on every
    shard): ``[W, B, H, N2, 2]`` float, independent of L; the input is never gathered.
    ``P=None``: S4D (diagonal Ā = e^{ΔΛ}, ZOH, powers in log space; ``S4Block(mode="diag")``);
    ``P`` given: S4 (A = diag(Λ) − PPᴴ, bilinear, dense Ā; ``S4Block(mode="dplr")``).

    Args:
      u: input, real [B, L, H].
      Lambda: complex [H, N2] (Re < 0), the diagonal part of A.
      B: complex [H, N2].
      C: complex [H, N2], the plain output vector.
      log_dt: real [H].
      D: skip, real [H] or None.
      P: None, complex [H, N2] or [R, H, N2] (low-rank part, DPLR).
      mesh: a ``jax.sharding.Mesh`` with ``axis_name`` (H over ``"tensor"`` when present).
      axis_name: the mesh axis the sequence is split over; L must be a multiple of its size.

    Returns:
      y [B, L, H] float32 (float64 for float64 inputs), as
      ``causal_conv_fft(u, kernel(L), D)`` on one device.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxdiv.models.ssm import s4_ops as sk
      >>> auto = (jax.sharding.AxisType.Auto,)
      >>> mesh = jax.make_mesh((jax.device_count(),), ("sequence",), axis_types=auto)
      >>> Lambda = jnp.full((3, 4), -0.5 + 1j)
      >>> Bm = C = jnp.ones((3, 4), jnp.complex64)
      >>> u = jax.random.normal(jax.random.key(0), (2, 16, 3))
      >>> y = sequence_parallel_s4(u, Lambda, Bm, C, jnp.zeros(3), mesh=mesh)
      >>> y_ref = sk.causal_conv_fft(u, sk.ssm_kernel_diag(Lambda, Bm, C, jnp.zeros(3), 16))
      >>> bool(jnp.allclose(y, y_ref, atol=1e-4))
      True

    References:
      Gu, Goel, Ré, "Efficiently Modeling Long Sequences with Structured State Spaces",
      https://arxiv.org/abs/2111.00396, Eq. (3)–(5); Gu, Gupta, Goel, Ré, "On the
      Parameterization and Initialization of Diagonal State Space Models",
      https://arxiv.org/abs/2206.11893, Section 3; Sun et al., "LASP-2",
      https://arxiv.org/abs/2502.07563, Section 3.
    """
    u = checks.float_array(u, "u")
    if u.ndim != 3:
        raise ValueError(f"`u` must have shape [B, L, H], got shape {u.shape}.")
    Lambda, Bm, C, log_dt = (jnp.asarray(x) for x in (Lambda, B, C, log_dt))
    H = u.shape[-1]
    for name, x in (("Lambda", Lambda), ("B", Bm), ("C", C)):
        if x.ndim != 2 or x.shape[0] != H:
            raise ValueError(f"`{name}` must have shape ({H}, N2) [H, N2], got {x.shape}.")
    batch, tensor = shard_layout(mesh, axis_name, u.shape[1], u.shape[0], H)
    rdtype = checks.compute_dtype(u, log_dt, *(x.real for x in (Lambda, Bm, C)))
    cdtype = jnp.promote_types(rdtype, jnp.complex64)
    hn = P_(tensor, None)
    args = [u.astype(rdtype), *(x.astype(cdtype) for x in (Lambda, Bm, C)), log_dt.astype(rdtype)]
    specs = [P_(batch, axis_name, tensor), hn, hn, hn, P_(tensor)]
    if D is not None:
        args.append(checks.float_array(D, "D").astype(rdtype))
        specs.append(P_(tensor))
    if P is not None:
        P = jnp.asarray(P)
        P = P[None] if P.ndim == 2 else P  # [R, H, N2]
        checks.exact_shape(P, (P.shape[0], *Lambda.shape), "P", "[H, N2] or [R, H, N2]")
        args.append(P.astype(cdtype))
        specs.append(P_(None, tensor, None))
    has_D, has_P = D is not None, P is not None

    def body(u, Lambda, Bm, C, log_dt, *rest):
        rest = list(rest)
        D = rest.pop(0) if has_D else None
        P = rest.pop(0) if has_P else None
        return _s4_local(u, Lambda, Bm, C, log_dt, D, P, axis_name=axis_name)

    seq = P_(batch, axis_name, tensor)
    return jit_shard_map(body, mesh=mesh, in_specs=tuple(specs), out_specs=seq)(*args)


# --- Mamba-2: SSD -------------------------------------------------------------------------------
# b batch, L length (per shard), h heads, p head dim, g groups, r = h / g, n state, W shards


def _ssd_local(x, dt, A, B, C, D, *, axis_name, chunk_size):
    b, L, h, p = x.shape
    g, n = B.shape[-2:]
    r = h // g
    # A zero initial state varying over the same mesh axes as the scan's carry (zeros_like keeps
    # the varying axes of its argument; a plain jnp.zeros would not match inside shard_map).
    S0 = jnp.zeros_like(x[:, 0, :, :, None] * B[:, 0, :1, None, :])  # [b, h, p, n]
    y, S_local = ssd(
        x, dt, A, B, C, D=D, chunk_size=chunk_size, initial_state=S0, return_final_state=True
    )  # [b, L, h, p], [b, h, p, n]
    a_cum = jnp.cumsum(dt * A[None, None], axis=1)  # Σ_{s≤t} Δ_s A, [b, L, h] (≤ 0)
    packed = jnp.concatenate([S_local.reshape(b, h, p * n), a_cum[:, -1, :, None]], axis=-1)
    gathered = lax.all_gather(packed, axis_name)  # [W, b, h, p·n + 1]
    states, sums = gathered[..., :-1], gathered[..., -1:]  # [W, b, h, p·n], [W, b, h, 1]

    def combine(first, second):  # (σ, S): (σ_a + σ_b, exp(σ_b) S_a + S_b)
        return first[0] + second[0], jnp.exp(second[0]) * first[1] + second[1]

    prefix = lax.associative_scan(combine, (sums, states), axis=0)[1]  # [W, b, h, p·n]
    S_in = exclusive_prefix(prefix, lax.axis_index(axis_name)).reshape(b, g, r, p, n)
    y_in = jnp.einsum("blgn,bgrpn->blgrp", C, S_in).reshape(b, L, h, p)  # S_in C_t
    return y + (jnp.exp(a_cum)[..., None] * y_in).astype(y.dtype)  # [b, L, h, p]


def sequence_parallel_ssd(
    x,
    dt,
    A,
    B,
    C,
    *,
    D=None,
    mesh,
    axis_name: str = "sequence",
    chunk_size: int = 64,
) -> jax.Array:
    r"""Sequence-parallel Mamba-2 SSD: one all-gather of (final state, Σ Δ A) per shard.

    .. math::

        S^{(j)} = \text{SSD of shard } j \text{ from } 0, \quad
        \sigma^{(j)} = \sum_{t \in j} \Delta_t A, \quad
        S_{\mathrm{in}}^{(i)} = \bigcirc_{j<i} (\sigma^{(j)}, S^{(j)}), \quad
        y_t = y^{\mathrm{local}}_t + e^{\sum_{s \le t, s \in i} \Delta_s A}\,
              S_{\mathrm{in}}^{(i)} C_t

    per head, with :math:`(\sigma_a, S_a) \circ (\sigma_b, S_b) = (\sigma_a + \sigma_b,
    e^{\sigma_b} S_a + S_b)` (a shard's decay is the scalar :math:`e^{\sigma}` per head).
    The local pass is :func:`~jaxdiv.models.ssm.ssd.ssd` (``"chunked"``, ``chunk_size``, with
    the D skip); the entering state's term is one einsum against C, scaled by the exponential
    of a within-shard cumulative log decay (≤ 0). Gathered: ``[W, b, h, p·n + 1]`` in the
    compute dtype, independent of L; the inputs are never gathered.

    Args:
      x: input ``[b, L, h, p]``.
      dt: Δ ``[b, L, h]``, positive.
      A: ``[h]``, negative.
      B: ``[b, L, g, n]``, g dividing h (head i uses group ``i // (h // g)``).
      C: ``[b, L, g, n]``.
      D: skip ``[h]`` or None.
      mesh: a ``jax.sharding.Mesh`` with ``axis_name``. Heads go over ``"tensor"`` when present
        (with B and C split by groups when g is a multiple of its size, replicated when g = 1;
        otherwise heads are not split).
      axis_name: the mesh axis the sequence is split over; L must be a multiple of its size.
      chunk_size: the local ``ssd``'s chunk length.

    Returns:
      y ``[b, L, h, p]`` in ``x``'s dtype, equal to ``ssd(x, dt, A, B, C, D=D)`` on one device.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxdiv.models.ssm.ssd import ssd
      >>> auto = (jax.sharding.AxisType.Auto,)
      >>> mesh = jax.make_mesh((jax.device_count(),), ("sequence",), axis_types=auto)
      >>> k = jax.random.split(jax.random.key(0), 3)
      >>> x = jax.random.normal(k[0], (2, 16, 4, 3))
      >>> dt = jax.nn.softplus(jax.random.normal(k[1], (2, 16, 4)))
      >>> B, C = jax.random.normal(k[2], (2, 2, 16, 1, 5))
      >>> A = -jnp.arange(1.0, 5.0)
      >>> y = sequence_parallel_ssd(x, dt, A, B, C, mesh=mesh)
      >>> bool(jnp.allclose(y, ssd(x, dt, A, B, C), atol=1e-5))
      True

    References:
      Dao and Gu, "Transformers are SSMs", https://arxiv.org/abs/2405.21060, Section 6 (the
      state passing between chunks, here between devices) and Section 8 (sequence parallelism
      by passing the recurrent state); Sun et al., "LASP-2", https://arxiv.org/abs/2502.07563,
      Section 3 (one all-gather of memory states).
    """
    x, dt, A, B, C, D, _, dtype = _check_ssd_inputs(x, dt, A, B, C, D, None, step=False)
    T = checks.positive_int(chunk_size, "chunk_size")
    b, L, h, p = x.shape
    g = B.shape[2]
    batch, tensor = shard_layout(mesh, axis_name, L, b, h)
    groups = None
    if tensor is not None and g > 1:
        if g % mesh.shape[tensor]:
            tensor = None  # heads of one device would straddle a group split: keep heads whole
        else:
            groups = tensor
    args = [x.astype(dtype), dt.astype(dtype), A.astype(dtype), B.astype(dtype), C.astype(dtype)]
    seq_h, bc = P_(batch, axis_name, tensor, None), P_(batch, axis_name, groups, None)
    specs = [seq_h, P_(batch, axis_name, tensor), P_(tensor), bc, bc]
    if D is not None:
        args.append(D.astype(dtype))
        specs.append(P_(tensor))

    def body(x, dt, A, B, C, *rest):
        D = rest[0] if rest else None
        return _ssd_local(x, dt, A, B, C, D, axis_name=axis_name, chunk_size=T)

    y = jit_shard_map(body, mesh=mesh, in_specs=tuple(specs), out_specs=seq_h)(*args)
    return y.astype(x.dtype)  # [b, L, h, p]
