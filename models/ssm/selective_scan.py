"""Mamba's selective scan: the input-dependent diagonal state-space recurrence, as a pure op.

The discretisation and one recurrence step are written once (``_discretize``, ``_step``) and
shared by the single-step decoder ``selective_scan_step`` and every scan method:

- ``"sequential"``: ``lax.scan`` over time that discretises inside the step (no ``[B, L, D, N]``
  array in forward or backward). Its gradient is a hand-written reverse-time scan that keeps the
  state every ``chunk_size`` steps and recomputes the states of one chunk at a time.
- ``"associative"``: ``lax.associative_scan`` over the materialised ``exp(Δ A)``, ``Δ B u``.
- ``"chunked"``: ``lax.scan`` over chunks of ``chunk_size`` steps passing the state, with an
  associative scan inside each chunk (rematerialised in the backward pass).
- ``"pallas"``: the Pallas kernels of ``jaxdiv.models.kernels.selective_scan`` (forward and
  reverse-time adjoint, custom VJP); interpret mode on CPU.
"""

# B batch, L length, D channels, N state, H heads

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxdiv import checks
from jaxdiv.models.kernels import selective_scan as _kernels  # pyright: ignore[reportMissingImports]

METHODS = ("auto", "sequential", "associative", "chunked", "pallas")


def _lead(v: jax.Array, ndim: int) -> jax.Array:
    """Reshapes ``v`` with size-1 leading axes to rank ``ndim`` (explicit broadcasting)."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def _delta(delta, delta_bias, delta_softplus: bool) -> jax.Array:
    """Δ = softplus(delta + delta_bias) (bias and softplus optional), in ``delta``'s dtype."""
    if delta_bias is not None:
        delta = delta + _lead(delta_bias, delta.ndim)
    return jax.nn.softplus(delta) if delta_softplus else delta


def _discretize(delta, A_T, u, B) -> tuple[jax.Array, jax.Array]:
    """Zero-order hold for A, Euler for B: (exp(Δ A), Δ u B), both state-major ``[..., N, D]``.

    Args: delta, u ``[..., D]``; A_T = Aᵀ ``[N, D]``; B ``[..., N]``. The state is kept as
    ``[..., N, D]`` (D, the long axis, minor): on CPU this runs the time loop faster
    than ``[..., D, N]``.
    """
    decay = jnp.exp(delta[..., None, :] * _lead(A_T, delta.ndim + 1))  # [..., N, D]
    inp = B[..., :, None] * (delta * u)[..., None, :]  # [..., N, D]
    return decay, inp


def _step(h, delta, A_T, u, B, C) -> tuple[jax.Array, jax.Array]:
    """h ← exp(Δ A) ⊙ h + Δ u B, y = ⟨h, C⟩: state [..., N, D] → (state, y [..., D])."""
    decay, inp = _discretize(delta, A_T, u, B)
    h = decay * h + inp  # [..., N, D]
    return h, jnp.sum(h * C[..., :, None], axis=-2)  # [..., D]


def _finish(y, u, D, z) -> jax.Array:
    """y + D u, then y ⊙ silu(z) (each when given)."""
    if D is not None:
        y = y + u * _lead(D, u.ndim)
    if z is not None:
        y = y * jax.nn.silu(z)
    return y


# --- "sequential": lax.scan with a chunk-checkpointed reverse-time backward -------------------
# Time-major inputs split in chunks: delta, u [Lc, T, B, D]; B, C [Lc, T, B, N]; A_T [N, D];
# states [B, N, D].


def _scan_chunk(h, delta, A_T, u, B, C):
    """Runs ``_step`` over one chunk: state, [T, B, ·] inputs → (state, y [T, B, D])."""

    def body(h, xs):
        return _step(h, xs[0], A_T, xs[1], xs[2], xs[3])

    return lax.scan(body, h, (delta, u, B, C))


@jax.custom_vjp
def _sequential(h0, delta, A_T, u, B, C):
    def chunk(h, xs):
        return _scan_chunk(h, xs[0], A_T, xs[1], xs[2], xs[3])

    hL, y = lax.scan(chunk, h0, (delta, u, B, C))
    return y, hL  # [Lc, T, B, D], [B, N, D]


def _sequential_fwd(h0, delta, A_T, u, B, C):
    def chunk(h, xs):
        h_end, y = _scan_chunk(h, xs[0], A_T, xs[1], xs[2], xs[3])
        return h_end, (y, h)

    hL, (y, starts) = lax.scan(chunk, h0, (delta, u, B, C))
    return (y, hL), (starts, delta, A_T, u, B, C)  # starts [Lc, B, N, D]: chunk-initial states


def _sequential_bwd(res, cts):
    """Reverse-time adjoint, one chunk at a time: with g_t = ∂/∂h_t (through y_t and h_{t+1}),

    g_t = exp(Δ_{t+1} A) ⊙ g_{t+1} + C_t gy_t,   q_t = g_t ⊙ exp(Δ_t A) ⊙ h_{t−1},
    ∂Δ_t = Σ_n q_t A + u_t Σ_n g_t B_t,   ∂u_t = Δ_t Σ_n g_t B_t,   ∂A = Σ_{b,t} q_t Δ_t,
    ∂B_t = Σ_d g_t Δ_t u_t,   ∂C_t = Σ_d h_t gy_t,   ∂h_0 = exp(Δ_1 A) ⊙ g_1.

    Per chunk: recompute the chunk's states from its saved initial state (one exp per element),
    run the g recurrence backwards (also accumulating ∂A), then the contractions as einsums.
    """
    starts, delta, A_T, u, B, C = res
    gy, ghL = cts

    def chunk(carry, xs):
        r, gA = carry
        h_start, d, uu, b, c, g = xs  # [B, N, D], [T, B, D], [T, B, N]
        decay, inp = _discretize(d, A_T, uu, b)  # [T, B, N, D]

        def forward(h_prev, xs_t):
            h = xs_t[0] * h_prev + xs_t[1]
            return h, (h_prev, h)

        _, (h_prev, h) = lax.scan(forward, h_start, (decay, inp))  # h_{t-1}, h_t [T, B, N, D]

        def backward(carry, xs_t):
            r, gA = carry  # r = exp(Δ_{t+1} A) ⊙ g_{t+1}, ∂A accumulated over later steps
            dec, hp, d_t, c_t, g_t = xs_t
            gh = r + c_t[..., :, None] * g_t[..., None, :]  # g_t [B, N, D]
            r = dec * gh
            q = r * hp
            return (r, gA + q * d_t[..., None, :]), (gh, q * A_T[None])

        (r, gA), (gh, qA) = lax.scan(backward, (r, gA), (decay, h_prev, d, c, g), reverse=True)
        gx = jnp.einsum("tbnd,tbn->tbd", gh, b)  # Σ_n g_t B_t
        g_delta = gx * uu + jnp.sum(qA, axis=-2)  # [T, B, D]
        gB = jnp.einsum("tbnd,tbd->tbn", gh, d * uu)
        gC = jnp.einsum("tbnd,tbd->tbn", h, g)
        return (r, gA), (g_delta, gx * d, gB, gC)

    (gh0, gA), (g_delta, g_u, gB, gC) = lax.scan(
        chunk, (ghL, jnp.zeros_like(ghL)), (starts, delta, u, B, C, gy), reverse=True
    )
    return gh0, g_delta, jnp.sum(gA, axis=0), g_u, gB, gC


_sequential.defvjp(_sequential_fwd, _sequential_bwd)


def _chunks(x, T: int, axis: int) -> jax.Array:
    """Zero-pads ``axis`` to a multiple of ``T`` and splits it as (L/T, T)."""
    L = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, -L % T)
    x = jnp.pad(x, pad)
    return x.reshape(x.shape[:axis] + (-1, T) + x.shape[axis + 1 :])


def _run_sequential(h0, delta, A_T, u, B, C, T: int):
    """[B, L, ·] inputs → (y [B, L, D], h_L). Padding has Δ = 0: an exact identity step."""
    L = u.shape[1]
    T = min(T, L)
    args = [_chunks(jnp.swapaxes(x, 0, 1), T, 0) for x in (delta, u, B, C)]  # [Lc, T, B, ·]
    y, hL = _sequential(h0, args[0], A_T, args[1], args[2], args[3])
    y = y.reshape((-1,) + y.shape[2:])[:L]  # [L, B, D]
    return jnp.swapaxes(y, 0, 1), hL


# --- "associative" and "chunked" --------------------------------------------------------------


def _associative(h0, delta, A_T, u, B, C):
    """[B, L, ·] inputs → (y [B, L, D], h_L), parallel over L via ``lax.associative_scan``."""
    decay, inp = _discretize(delta, A_T, u, B)  # [B, L, N, D]
    inp = inp.at[:, 0].add(decay[:, 0] * h0)

    def combine(left, right):
        return left[0] * right[0], right[0] * left[1] + right[1]

    _, h = lax.associative_scan(combine, (decay, inp), axis=1)  # [B, L, N, D]
    return jnp.sum(h * C[..., None], axis=-2), h[:, -1]


def _run_chunked(h0, delta, A_T, u, B, C, T: int):
    """Chunks of ``T`` steps, associative inside, state carried between (rematerialised)."""
    L = u.shape[1]
    T = min(T, L)
    args = [jnp.swapaxes(_chunks(x, T, 1), 0, 1) for x in (delta, u, B, C)]  # [Lc, B, T, ·]

    def chunk(h, xs):
        y, h = _associative(h, xs[0], A_T, xs[1], xs[2], xs[3])
        return h, y

    hL, y = lax.scan(jax.checkpoint(chunk, prevent_cse=False), h0, tuple(args))
    y = jnp.swapaxes(y, 0, 1)  # [B, Lc, T, D]
    return y.reshape(y.shape[0], -1, y.shape[-1])[:, :L], hL


# --- public API --------------------------------------------------------------------------------


def _check_inputs(u, delta, A, B, C, D, z, delta_bias, h, *, step: bool) -> list[Any]:
    """Validates dtypes and shapes; returns the arrays cast to the compute dtype (None kept)."""
    names = (
        ("u_t", "delta_t", "B_t", "C_t", "z_t", "h")
        if step
        else ("u", "delta", "B", "C", "z", "initial_state")
    )
    layout, bn = ("[B, D]", "[B, N]") if step else ("[B, L, D]", "[B, L, N]")
    u = checks.float_array(u, names[0])
    if u.ndim != layout.count(",") + 1:
        raise ValueError(
            f"`{names[0]}` must have rank {layout.count(',') + 1} {layout}, got shape {u.shape}."
        )
    if not step and u.shape[1] == 0:
        raise ValueError(f"`u` must have length L >= 1 [B, L, D], got shape {u.shape}.")
    A = checks.float_array(A, "A")
    if A.ndim != 2 or A.shape[0] != u.shape[-1]:
        raise ValueError(f"`A` must have shape ({u.shape[-1]}, N) [D, N], got {A.shape}.")
    shape_bn = u.shape[:-1] + A.shape[1:]
    arrays: list[jax.Array | None] = [u]
    for name, x, shape, lay in (
        (names[1], delta, u.shape, layout),
        ("A", A, A.shape, "[D, N]"),
        (names[2], B, shape_bn, bn),
        (names[3], C, shape_bn, bn),
        ("D", D, u.shape[-1:], "[D]"),
        (names[4], z, u.shape, layout),
        ("delta_bias", delta_bias, u.shape[-1:], "[D]"),
        (names[5], h, (u.shape[0], *A.shape), "[B, D, N]"),
    ):
        if x is not None:
            x = checks.float_array(x, name)
            checks.exact_shape(x, shape, name, lay)
        arrays.append(x)
    dtype = checks.compute_dtype(*[x for x in arrays if x is not None])
    return [None if x is None else x.astype(dtype) for x in arrays]


def _check_method(method: str, chunk_size: int) -> str:
    """Validates ``method`` and ``chunk_size``; resolves "auto" (see ``selective_scan``)."""
    checks.one_of(method, "method", METHODS)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int, got {chunk_size!r}.")
    return "sequential" if method == "auto" else method


def selective_scan(
    u: ArrayLike,
    delta: ArrayLike,
    A: ArrayLike,
    B: ArrayLike,
    C: ArrayLike,
    D: ArrayLike | None = None,
    z: ArrayLike | None = None,
    delta_bias: ArrayLike | None = None,
    delta_softplus: bool = False,
    *,
    method: str = "auto",
    chunk_size: int = 64,
    initial_state: ArrayLike | None = None,
    return_last_state: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Mamba's selective scan: a diagonal state-space recurrence with input-dependent Δ, B, C.

    .. math::

        \Delta_t = \operatorname{softplus}(\delta_t + b_\Delta), \quad
        h_t = \exp(\Delta_t A) \odot h_{t-1} + \Delta_t B_t u_t, \quad
        y_t = (\langle h_t, C_t \rangle + D \odot u_t) \odot \operatorname{silu}(z_t),

    per batch row and channel d, with h_t[d] ∈ ℝᴺ, δ = ``delta``, b_Δ = ``delta_bias`` (the
    bias and the softplus only when given/asked), h_0 = ``initial_state`` (zeros by default);
    the D u and silu(z) terms only when ``D`` and ``z`` are given. A is discretised by
    zero-order hold and B by Euler, as in the reference CUDA kernel. The state and decay math
    run in float32 at least whatever the input dtype; ``y`` comes back in ``u``'s dtype.

    Methods (all agree to float tolerance):

    - ``"sequential"``: ``lax.scan`` that discretises inside the step; never materialises
      ``[B, L, D, N]`` (forward or backward). Hand-written backward: a reverse-time scan that
      stores the state every ``chunk_size`` steps and recomputes one chunk at a time, so
      its state memory is O(B·D·N·(L/chunk_size + 6·chunk_size)).
    - ``"associative"``: ``lax.associative_scan`` over ``exp(Δ A)``, ``Δ B u``
      (materialises ``[B, L, D, N]``).
    - ``"chunked"``: ``lax.scan`` over chunks of ``chunk_size`` steps carrying the state, an
      associative scan inside each chunk (``[B, chunk_size, D, N]``), rematerialised in the
      backward pass. Lengths that are not a multiple of ``chunk_size`` are padded with Δ = 0
      (an exact identity step).
    - ``"pallas"``: Pallas kernels (``jaxdiv.models.kernels.selective_scan``): grid over
      (batch, channel blocks), the state ``[N, block_d]`` carried on chip through a time loop
      inside the kernel; backward kernel running the adjoint recurrence in reverse time from
      states checkpointed every 8 steps (``chunk_size`` is not used). On CPU it runs in Pallas
      interpret mode (slow: for checking); on TPU/GPU it has not been compiled or measured yet.
    - ``"auto"``: ``"sequential"`` on every backend. On CPU it is the fastest (measured: the
      benchmark suite's ``kernels`` section, ``python -m benchmarks --only kernels``). On
      GPU/TPU, where no device has been lent, it is the estimate's pick: for a Mamba layer's
      forward+backward at B = 8, L = 2048, d_model = 1024, the roofline estimate from the
      compiled HLO (``python -m benchmarks --only accelerators``) gives 64 ms for
      ``"sequential"`` vs 114 ms for ``"chunked"`` on an H100 (5 µs assumed per loop step;
      ``"chunked"`` moves 3.4× the bytes, its ``[B, chunk_size, D, N]`` intermediates) and
      144 vs 464 ms on a TPU v5e; ``"associative"`` needs ``[B, L, D, N]`` memory.
      ``"pallas"`` is opt-in until it has been measured on a device: ``"auto"`` never picks it.

    Cost: every method evaluates B·L·D·N exps forward; ``"sequential"`` recomputes them once
    more in its backward pass instead of storing ``[B, L, D, N]``. Choices behind it (their
    measurements are in the benchmark reports): the state is laid out ``[B, N, D]`` (D, the
    long axis, minor); the time loop is not unrolled; the hand-written backward replaces JAX
    autodiff through the scan (less time and memory); ``chunk_size`` 32 to 64. It is
    reverse-mode only (custom VJP): for ``jax.jvp`` use ``"chunked"`` or ``"associative"``.

    Args:
      u: input ``[B, L, D]``.
      delta: Δ before bias and softplus ``[B, L, D]``.
      A: state matrix diagonals ``[D, N]``, real and negative (not checked: values are not
        looked at under ``jit``).
      B: input projections ``[B, L, N]``.
      C: output projections ``[B, L, N]``.
      D: skip connection ``[D]`` or None.
      z: gate ``[B, L, D]`` or None.
      delta_bias: added to ``delta`` ``[D]`` or None.
      delta_softplus: apply softplus to ``delta`` (+ bias).
      method: ``"auto"``, ``"sequential"``, ``"associative"``, ``"chunked"`` or ``"pallas"``.
      chunk_size: chunk length of ``"chunked"`` and the checkpoint interval of
        ``"sequential"``'s backward pass.
      initial_state: h_0 ``[B, D, N]`` or None (zeros), e.g. for decoding after a prompt or
        for sequence parallelism.
      return_last_state: also return h_L.

    Returns:
      y ``[B, L, D]`` in ``u``'s dtype, and with ``return_last_state`` the pair ``(y, h_L)``,
      h_L ``[B, D, N]`` in the compute dtype (float32 at least).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxdiv.models.ssm.selective_scan import selective_scan
      >>> k = jax.random.split(jax.random.key(0), 4)
      >>> u = jax.random.normal(k[0], (2, 10, 3))
      >>> delta = jax.random.normal(k[1], (2, 10, 3))
      >>> A = -jnp.exp(jax.random.normal(k[2], (3, 4)))
      >>> B, C = jax.random.normal(k[3], (2, 2, 10, 4))
      >>> y, h = selective_scan(u, delta, A, B, C, delta_softplus=True, return_last_state=True)
      >>> y.shape, h.shape
      ((2, 10, 3), (2, 3, 4))
      >>> y2 = selective_scan(u, delta, A, B, C, delta_softplus=True, method="chunked",
      ...                     chunk_size=4)
      >>> bool(jnp.allclose(y, y2, atol=1e-5))
      True

    References:
      Gu and Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
      https://arxiv.org/abs/2312.00752, Algorithm 2 and Eq. (2a), (2b), (4).
    """
    method = _check_method(method, chunk_size)
    out_dtype = jnp.asarray(u).dtype
    u, delta, A, B, C, D, z, delta_bias, h0 = _check_inputs(
        u, delta, A, B, C, D, z, delta_bias, initial_state, step=False
    )
    delta = _delta(delta, delta_bias, delta_softplus)
    # _check_inputs returns jax.Arrays, but pyright keeps the parameters' declared ArrayLike.
    A_T = A.T  # pyright: ignore[reportAttributeAccessIssue]  # [N, D]
    h0 = jnp.zeros((u.shape[0], *A_T.shape), u.dtype) if h0 is None else jnp.swapaxes(h0, 1, 2)  # pyright: ignore[reportAttributeAccessIssue, reportGeneralTypeIssues]
    if method == "sequential":
        y, hL = _run_sequential(h0, delta, A_T, u, B, C, chunk_size)
    elif method == "chunked":
        y, hL = _run_chunked(h0, delta, A_T, u, B, C, chunk_size)
    elif method == "pallas":
        y, hL = _kernels.scan_state_major(h0, delta, A_T, u, B, C)
    else:
        y, hL = _associative(h0, delta, A_T, u, B, C)
    y = _finish(y, u, D, z).astype(out_dtype)
    return (y, jnp.swapaxes(hL, 1, 2)) if return_last_state else y


def selective_scan_step(
    h: ArrayLike,
    u_t: ArrayLike,
    delta_t: ArrayLike,
    A: ArrayLike,
    B_t: ArrayLike,
    C_t: ArrayLike,
    D: ArrayLike | None = None,
    z_t: ArrayLike | None = None,
    delta_bias: ArrayLike | None = None,
    delta_softplus: bool = False,
) -> tuple[jax.Array, jax.Array]:
    r"""One step of ``selective_scan``, for recurrent decoding.

    .. math::

        h \leftarrow \exp(\Delta_t A) \odot h + \Delta_t B_t u_t, \quad
        y_t = (\langle h, C_t \rangle + D \odot u_t) \odot \operatorname{silu}(z_t),

    with Δ_t = softplus(δ_t + b_Δ) as in ``selective_scan`` (same code). Iterating it over t
    from h_0 gives ``selective_scan``'s outputs and last state.

    Args:
      h: state ``[B, D, N]``.
      u_t: input ``[B, D]``.
      delta_t: Δ before bias and softplus ``[B, D]``.
      A: ``[D, N]``, real and negative.
      B_t: ``[B, N]``.
      C_t: ``[B, N]``.
      D: skip ``[D]`` or None.
      z_t: gate ``[B, D]`` or None.
      delta_bias: ``[D]`` or None.
      delta_softplus: apply softplus to ``delta_t`` (+ bias).

    Returns:
      ``(y_t, h)``: y_t ``[B, D]`` in ``u_t``'s dtype, the new state ``[B, D, N]`` in the
      compute dtype (float32 at least).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdiv.models.ssm.selective_scan import selective_scan_step
      >>> h = jnp.zeros((1, 2, 3))
      >>> y, h = selective_scan_step(h, jnp.ones((1, 2)), jnp.ones((1, 2)), -jnp.ones((2, 3)),
      ...                            jnp.ones((1, 3)), jnp.ones((1, 3)))
      >>> y.tolist(), h.shape
      ([[3.0, 3.0]], (1, 2, 3))

    References:
      Gu and Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
      https://arxiv.org/abs/2312.00752, Eq. (2a), (2b) and Algorithm 2.
    """
    out_dtype = jnp.asarray(u_t).dtype
    u_t, delta_t, A, B_t, C_t, D, z_t, delta_bias, h = _check_inputs(
        u_t, delta_t, A, B_t, C_t, D, z_t, delta_bias, h, step=True
    )
    if h is None:
        raise ValueError("`h` must be an array [B, D, N], got None.")
    delta_t = _delta(delta_t, delta_bias, delta_softplus)
    # A is a jax.Array after _check_inputs; pyright keeps its declared ArrayLike.
    h, y = _step(jnp.swapaxes(h, 1, 2), delta_t, A.T, u_t, B_t, C_t)  # pyright: ignore[reportAttributeAccessIssue]
    return _finish(y, u_t, D, z_t).astype(out_dtype), jnp.swapaxes(h, 1, 2)
