"""S4 and S4D pure ops: discretisation, convolution kernels, FFT convolution, recurrent step.

Conventions (API.md §3). Every state tensor stores N2 = N/2 complex entries, one per conjugate
pair of the real N-dimensional state; the missing halves are accounted for by taking ``2·Re`` of
every output. Per channel h the complex system is ``x' = A x + B u``, ``y = 2·Re(C x)``, with

- S4D (diagonal): ``A = diag(A_h)``;
- S4 (DPLR): ``A = diag(Λ_h) − Σ_r P_{r,h} P_{r,h}ᴴ``, an ``[N2, N2]`` matrix never formed by
  the convolution kernel.

``C`` is always the plain output vector, ``K_l = 2·Re(C Ā^l B̄)``; the DPLR kernel forms
``C̃ = C (I − Ā^L)`` internally. Δ = exp(log_dt), one step per channel.

Initialisations (``hippo_legs``, ``nplr_legs``, ``s4d_*_init``) are float64/complex128 NumPy,
computed on the host; cast them to the parameter dtype when building a module.
"""

# B batch, L length, H channels (heads), N state (N2 = N/2 conjugate pairs kept), R rank

import math
from typing import overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxdiv import checks

_HIGHEST = jax.lax.Precision.HIGHEST
# Node-state pairs per Cauchy chunk (4M: ~32 MB of float32 reciprocals per chunk).
_CAUCHY_CHUNK_ELEMENTS = 1 << 22


def _complex_array(x, name: str) -> jax.Array:
    """Converts ``x`` to a complex array (real floats allowed), ``TypeError`` otherwise."""
    x = jnp.asarray(x)
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.complexfloating)):
        raise TypeError(f"`{name}` must have a floating or complex dtype, got dtype {x.dtype}.")
    return x


@overload
def _ssm_inputs(
    A: ArrayLike, B: ArrayLike, C: None, log_dt: ArrayLike, names: tuple[str, str, str] = ...
) -> tuple[jax.Array, jax.Array, None, jax.Array]: ...
@overload
def _ssm_inputs(
    A: ArrayLike, B: ArrayLike, C: ArrayLike, log_dt: ArrayLike, names: tuple[str, str, str] = ...
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]: ...
def _ssm_inputs(A, B, C, log_dt, names=("A", "B", "C")):
    """Validated ``A, B, C`` ([H, N2] complex) and ``Δ`` ([H] real) in a common dtype."""
    A = _complex_array(A, names[0])
    B = _complex_array(B, names[1])
    log_dt = checks.float_array(log_dt, "log_dt")
    if A.ndim != 2:
        raise ValueError(f"`{names[0]}` must have rank 2 ([H, N2]), got shape {A.shape}.")
    checks.exact_shape(B, A.shape, names[1], "[H, N2]")
    checks.exact_shape(log_dt, A.shape[:1], "log_dt", "[H]")
    arrays = [A, B, log_dt]
    if C is not None:
        C = _complex_array(C, names[2])
        checks.exact_shape(C, A.shape, names[2], "[H, N2]")
        arrays.append(C)
    cdtype = jnp.result_type(*arrays, jnp.complex64)
    rdtype = jnp.finfo(cdtype).dtype
    A, B = A.astype(cdtype), B.astype(cdtype)
    C = None if C is None else C.astype(cdtype)
    return A, B, C, jnp.exp(log_dt.astype(rdtype))


def _rank_P(P, shape: tuple[int, ...]) -> jax.Array:
    """``P`` as ``[R, H, N2]`` (a rank-1 ``[H, N2]`` gets a leading axis)."""
    P = _complex_array(P, "P")
    if P.ndim == 2:
        P = P[None]
    if P.ndim != 3 or P.shape[1:] != tuple(shape):
        raise ValueError(
            f"`P` must have shape {tuple(shape)} or (R, *{tuple(shape)}) ([H, N2] or [R, H, N2]), "
            f"got {P.shape}."
        )
    return P


def discretize_zoh(A: ArrayLike, B: ArrayLike, log_dt: ArrayLike) -> tuple[jax.Array, jax.Array]:
    r"""Zero-order-hold discretisation of a diagonal SSM.

    .. math::
        \bar A = e^{\Delta A}, \qquad \bar B = \frac{e^{\Delta A} - 1}{A} B,
        \qquad \Delta = e^{\text{log\_dt}},

    elementwise (``A`` is the diagonal). Requires ``A ≠ 0`` (``Re A < 0`` for stability).

    Args:
      A: complex ``[H, N2]``, the diagonal state matrix.
      B: complex ``[H, N2]``, the input vector.
      log_dt: real ``[H]``, the log step size per channel.

    Returns:
      ``(Abar, Bbar)``, complex ``[H, N2]`` each (complex64, complex128 for float64 inputs).

    Examples:
      >>> import jax.numpy as jnp
      >>> Abar, Bbar = discretize_zoh(jnp.full((1, 2), -0.5 + 1j), jnp.ones((1, 2)), jnp.zeros(1))
      >>> Abar.shape, bool(jnp.all(jnp.abs(Abar) < 1))
      ((1, 2), True)

    References:
      Gu, Gupta, Goel, Ré, `On the Parameterization and Initialization of Diagonal State Space
      Models <https://arxiv.org/abs/2206.11893>`_, 2022, Section 2 (ZOH discretisation).
    """
    A, B, _, dt = _ssm_inputs(A, B, None, log_dt)
    dtA = dt[:, None] * A  # [H, N2]
    return jnp.exp(dtA), jnp.expm1(dtA) / A * B


def discretize_bilinear(
    A: ArrayLike, B: ArrayLike, log_dt: ArrayLike
) -> tuple[jax.Array, jax.Array]:
    r"""Bilinear (Tustin) discretisation of a diagonal SSM.

    .. math::
        \bar A = \frac{1 + \Delta A / 2}{1 - \Delta A / 2}, \qquad
        \bar B = \frac{\Delta}{1 - \Delta A / 2} B, \qquad \Delta = e^{\text{log\_dt}},

    elementwise (``A`` is the diagonal).

    Args:
      A: complex ``[H, N2]``, the diagonal state matrix.
      B: complex ``[H, N2]``, the input vector.
      log_dt: real ``[H]``, the log step size per channel.

    Returns:
      ``(Abar, Bbar)``, complex ``[H, N2]`` each (complex64, complex128 for float64 inputs).

    Examples:
      >>> import jax.numpy as jnp
      >>> Abar, _ = discretize_bilinear(jnp.full((1, 1), -2.0 + 0j), jnp.ones((1, 1)), jnp.zeros(1))
      >>> Abar.real.round(4).tolist()
      [[0.0]]

    References:
      Gu, Goel, Ré, `Efficiently Modeling Long Sequences with Structured State Spaces
      <https://arxiv.org/abs/2111.00396>`_, 2022, Eq. (3).
    """
    A, B, _, dt = _ssm_inputs(A, B, None, log_dt)
    half = dt[:, None] / 2 * A  # [H, N2]
    return (1 + half) / (1 - half), dt[:, None] / (1 - half) * B


def _small_solve(S: jax.Array, rhs: jax.Array) -> jax.Array:
    """``S⁻¹ rhs`` for a batch of ``R × R`` systems ``[..., R, R]``, ``rhs`` ``[..., R, K]``."""
    if S.shape[-1] == 1:
        return rhs / S
    return jnp.linalg.solve(S, rhs)


def _bilinear_dplr(
    Lambda: jax.Array, P: jax.Array, B: jax.Array, dt: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Dense bilinear ``Ā = (I − ΔA/2)⁻¹(I + ΔA/2)``, ``B̄ = (I − ΔA/2)⁻¹ΔB`` of a DPLR ``A``.

    ``I − ΔA/2 = D + (Δ/2) P Pᴴ`` with ``D = diag(1 − Δλ/2)``; Woodbury gives
    ``(I − ΔA/2)⁻¹ = D⁻¹ − D⁻¹P S⁻¹ PᴴD⁻¹``, ``S = (2/Δ) I_R + PᴴD⁻¹P`` (an ``R × R`` solve, no
    dense factorisation), and ``Ā = 2 (I − ΔA/2)⁻¹ − I``.
    """
    R = P.shape[0]
    d = 1 - dt[:, None] / 2 * Lambda  # [H, N2]
    U = P / d[None]  # [R, H, N2]  D⁻¹P
    V = P.conj() / d[None]  # [R, H, N2]  PᴴD⁻¹
    S = jnp.einsum("rhn,shn->hrs", P.conj(), U, precision=_HIGHEST)  # [H, R, R]
    S = S + (2 / dt)[:, None, None] * jnp.eye(R, dtype=S.dtype)[None]
    W = _small_solve(S, jnp.moveaxis(V, 0, 1))  # [H, R, N2]  S⁻¹PᴴD⁻¹
    eye = jnp.eye(Lambda.shape[-1], dtype=Lambda.dtype)[None]  # [1, N2, N2]
    M_inv = (1 / d)[:, :, None] * eye - jnp.einsum(
        "rhm,hrn->hmn", U, W, precision=_HIGHEST
    )  # [H, N2, N2]
    Bbar = dt[:, None] * (B / d - jnp.einsum("rhm,hr->hm", U, jnp.einsum("hrn,hn->hr", W, B)))
    return 2 * M_inv - eye, Bbar  # [H, N2, N2], [H, N2]


def discretize_dplr(
    Lambda: ArrayLike, P: ArrayLike, B: ArrayLike, log_dt: ArrayLike
) -> tuple[jax.Array, jax.Array]:
    r"""Dense bilinear discretisation of the DPLR SSM, for the recurrent (decoding) mode.

    .. math::
        A = \operatorname{diag}(\Lambda) - \sum_r P_r P_r^H, \qquad
        \bar A = (I - \tfrac{\Delta}{2} A)^{-1} (I + \tfrac{\Delta}{2} A), \qquad
        \bar B = (I - \tfrac{\Delta}{2} A)^{-1} \Delta B.

    Use the result with :func:`ssm_step` and the plain ``C``: iterating the step reproduces
    :func:`ssm_kernel_dplr` (no ``C̃`` to invert, unlike the official S4 code).

    Args:
      Lambda: complex ``[H, N2]``, the diagonal part.
      P: complex ``[H, N2]`` (rank 1) or ``[R, H, N2]``, the low-rank part.
      B: complex ``[H, N2]``, the input vector.
      log_dt: real ``[H]``, the log step size per channel.

    Returns:
      ``(Abar, Bbar)``: complex ``[H, N2, N2]`` and ``[H, N2]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> Abar, Bbar = discretize_dplr(
      ...     jnp.full((3, 4), -0.5 + 1j), jnp.ones((3, 4)), jnp.ones((3, 4)), jnp.zeros(3))
      >>> Abar.shape, Bbar.shape
      ((3, 4, 4), (3, 4))

    References:
      Gu, Goel, Ré, `Efficiently Modeling Long Sequences with Structured State Spaces
      <https://arxiv.org/abs/2111.00396>`_, 2022, Eq. (3) and Appendix C.2.
    """
    Lambda, B, _, dt = _ssm_inputs(Lambda, B, None, log_dt, names=("Lambda", "B", "C"))
    P = _rank_P(P, Lambda.shape).astype(Lambda.dtype)
    return _bilinear_dplr(Lambda, P, B, dt)


def _vandermonde_2re(c: jax.Array, z: jax.Array, length: int) -> jax.Array:
    """``K_l = 2·Re Σ_n c_n e^{l z_n}`` for ``l < length``, ``[H, L]`` real.

    Two-level Vandermonde: ``l = jT + t`` with ``T = ⌈√L⌉``, so
    ``e^{l z} = e^{jT z} e^{t z}``; both factors are exponentials of multiples of ``z`` (log
    space, no repeated powers) and the sum over ``n`` is one real batched matmul with
    ``O(H N (J + T))`` exponentials instead of ``O(H N L)``.
    """
    T = math.isqrt(length - 1) + 1
    J = -(-length // T)
    rdtype = jnp.finfo(z.dtype).dtype
    t = jnp.arange(T, dtype=rdtype)
    j = jnp.arange(J, dtype=rdtype) * T
    alpha = c[:, None, :] * jnp.exp(z[:, None, :] * j[None, :, None])  # [H, J, N2]
    beta = jnp.exp(z[:, :, None] * t[None, None, :])  # [H, N2, T]
    # Re(αβ) = Re α Re β − Im α Im β, as one real contraction over 2·N2.
    left = jnp.concatenate([alpha.real, -alpha.imag], axis=-1)  # [H, J, 2N2]
    right = jnp.concatenate([beta.real, beta.imag], axis=-2)  # [H, 2N2, T]
    K = jnp.einsum("hjn,hnt->hjt", left, right, precision=_HIGHEST)  # [H, J, T]
    return 2 * K.reshape(K.shape[0], J * T)[:, :length]  # [H, L]


def ssm_kernel_diag(
    A: ArrayLike,
    B: ArrayLike,
    C: ArrayLike,
    log_dt: ArrayLike,
    length: int,
    *,
    discretization: str = "zoh",
) -> jax.Array:
    r"""S4D convolution kernel of a diagonal SSM (Vandermonde in log space).

    .. math::
        K_l = 2 \operatorname{Re} \sum_{n=1}^{N/2} C_n \bar B_n \bar A_n^{\,l},
        \qquad \bar A_n^{\,l} = e^{l \log \bar A_n}, \qquad l = 0, \dots, L - 1,

    with ZOH (``log Ā = ΔA``, ``B̄ = (e^{ΔA} − 1)/A · B``) or bilinear
    (``log Ā = log1p(ΔA/2) − log1p(−ΔA/2)``, ``B̄ = Δ/(1 − ΔA/2) · B``) discretisation,
    ``Δ = exp(log_dt)``. Powers are exponentials of ``l log Ā``, evaluated as a two-level
    Vandermonde product (``O(H N √L)`` exponentials, one ``[H, √L, N] × [H, N, √L]`` matmul).

    Args:
      A: complex ``[H, N2]``, the diagonal of the state matrix (``Re A < 0``).
      B: complex ``[H, N2]``, the input vector.
      C: complex ``[H, N2]``, the output vector.
      log_dt: real ``[H]``, the log step size per channel.
      length: the kernel length ``L`` (static Python int).
      discretization: ``"zoh"`` (default) or ``"bilinear"``.

    Returns:
      ``K``: real ``[H, L]`` (float32, float64 for float64/complex128 inputs).

    Examples:
      >>> import jax.numpy as jnp
      >>> A = jnp.full((2, 4), -0.5 + 1j)
      >>> K = ssm_kernel_diag(A, jnp.ones((2, 4)), jnp.ones((2, 4)), jnp.zeros(2), 16)
      >>> K.shape, K.dtype
      ((2, 16), dtype('float32'))

    References:
      Gu, Gupta, Goel, Ré, `On the Parameterization and Initialization of Diagonal State Space
      Models <https://arxiv.org/abs/2206.11893>`_, 2022, Section 3 (Vandermonde kernel).
    """
    checks.one_of(discretization, "discretization", ("zoh", "bilinear"))
    length = checks.positive_int(length, "length")
    A, B, C, dt = _ssm_inputs(A, B, C, log_dt)
    dtA = dt[:, None] * A  # [H, N2]
    if discretization == "zoh":
        z, Bbar = dtA, jnp.expm1(dtA) / A * B
    else:
        z = jnp.log1p(dtA / 2) - jnp.log1p(-dtA / 2)
        Bbar = dt[:, None] / (1 - dtA / 2) * B
    return _vandermonde_2re(C * Bbar, z, length)


def _matrix_power(M: jax.Array, exponent: int) -> jax.Array:
    """``M^exponent`` by repeated squaring (static exponent ≥ 1), full-precision matmuls."""
    result, base = None, M
    while True:
        if exponent & 1:
            result = base if result is None else jnp.matmul(result, base, precision=_HIGHEST)
        exponent >>= 1
        if not exponent:
            # The exponent is >= 1, so `result` is set before the first return.
            return result  # pyright: ignore[reportReturnType]
        base = jnp.matmul(base, base, precision=_HIGHEST)


def _cauchy(left: jax.Array, z: jax.Array, om: jax.Array) -> jax.Array:
    """Cauchy kernel ``q_m(ω) = Σ_n v_{m,n} / (2(1 − ω) − z_n (1 + ω))``, ``[M, H, Lc]`` complex.

    ``left = [[Re v, −Im v], [Im v, Re v]]``: ``[2M, H, 2N2]`` (the complex product as a real
    contraction), ``z = ΔΛ``: ``[H, N2]``, ``om``: ``[Lc]`` nodes. The reciprocals are formed
    once per (node, state) in real arithmetic and contracted with all numerators in one matmul.
    """
    den = 2 * (1 - om)[None, None, :] - z[:, :, None] * (1 + om)[None, None, :]  # [H, N2, Lc]
    inv = 1 / (den.real**2 + den.imag**2)
    w = jnp.concatenate([den.real * inv, -den.imag * inv], axis=1)  # [H, 2N2, Lc]
    q = jnp.einsum("mhn,hnl->mhl", left, w, precision=_HIGHEST)  # [2M, H, Lc]
    M = q.shape[0] // 2
    return jax.lax.complex(q[:M], q[M:])  # [M, H, Lc]


def _woodbury(q: jax.Array, om: jax.Array) -> jax.Array:
    """``K̂ = q_00 − q_01 (I + r_11)⁻¹ r_10`` with ``r = q (1 + ω)/2``; ``q``: ``[1+R, 1+R, H, Lc]``.

    ``q_ab = 2/(1+ω) · k_ab`` are the Cauchy sums with the bilinear factor folded in, so
    ``r_ab = k_ab`` and the Nyquist node ``ω = −1`` needs no division by ``1 + ω``.
    """
    R = q.shape[0] - 1
    s = (1 + om) / 2  # [Lc]
    q00, q01 = q[0, 0], q[0, 1:]  # [H, Lc], [R, H, Lc]
    r10, r11 = q[1:, 0] * s[None, None], q[1:, 1:] * s[None, None, None]  # [R, H, Lc], [R, R, ...]
    if R == 1:
        return q00 - q01[0] * r10[0] / (1 + r11[0, 0])  # [H, Lc]
    lhs = jnp.eye(R, dtype=q.dtype)[None, None] + jnp.moveaxis(
        r11, (0, 1), (-2, -1)
    )  # [H, Lc, R, R]
    sol = jnp.linalg.solve(lhs, jnp.moveaxis(r10, 0, -1)[..., None])[..., 0]  # [H, Lc, R]
    return q00 - jnp.einsum("rhl,hlr->hl", q01, sol)  # [H, Lc]


def ssm_kernel_dplr(
    Lambda: ArrayLike, P: ArrayLike, B: ArrayLike, C: ArrayLike, log_dt: ArrayLike, length: int
) -> jax.Array:
    r"""S4 (DPLR) convolution kernel via the truncated generating function, Cauchy and Woodbury.

    The SSM ``A = diag(Λ) − Σ_r P_r P_rᴴ`` is discretised bilinearly; its kernel
    ``K_l = 2 Re(C Ā^l B̄)`` (plain ``C``) is recovered from the truncated generating function
    at the roots of unity ``ω_k = e^{−2πik/L}``:

    .. math::
        \hat K(\omega) = \sum_{l<L} C \bar A^l \bar B\, \omega^l
        = \tilde C (I - \bar A \omega)^{-1} \bar B
        = \frac{2}{1+\omega} \tilde C \big(g(\omega) I - A\big)^{-1} B,
        \qquad \tilde C = C (I - \bar A^L),
        \qquad g(\omega) = \frac{2}{\Delta} \frac{1-\omega}{1+\omega},

    and the Woodbury identity with ``Q = P``, ``R(ω) = diag(1/(g − λ_n))``:

    .. math::
        \hat K = k_{\tilde C B} - k_{\tilde C P} (I + k_{P^* P})^{-1} k_{P^* B},
        \qquad k_{ab}(\omega) = \sum_n \frac{a_n b_n}{g(\omega) - \lambda_n}
        \ \text{(Cauchy kernel)},

    then ``K = 2 Re(IFFT(K̂))``. The factor ``2/(1+ω)`` is folded into the Cauchy denominators
    (``2Δ / (2(1−ω) − Δλ(1+ω))``), so the Nyquist node ``ω = −1`` stays finite in float32.
    ``C̃`` uses the dense ``[H, N2, N2]`` ``Ā`` raised to ``L`` by repeated squaring.

    Note: the state is the ``N2``-dimensional complex system with ``2·Re`` output (API.md §3);
    the official S4 code instead couples the two conjugate halves through the low-rank term.
    To reproduce that (real) system, pass all ``N`` eigenvalues (both halves) and ``C / 2``.

    Args:
      Lambda: complex ``[H, N2]``, the diagonal part (``Re Λ < 0``).
      P: complex ``[H, N2]`` (rank 1) or ``[R, H, N2]``, the low-rank part.
      B: complex ``[H, N2]``, the input vector.
      C: complex ``[H, N2]``, the plain output vector.
      log_dt: real ``[H]``, the log step size per channel.
      length: the kernel length ``L`` (static Python int).

    Returns:
      ``K``: real ``[H, L]`` (float32, float64 for float64/complex128 inputs).

    Examples:
      >>> import jax.numpy as jnp
      >>> Lambda = jnp.full((2, 4), -0.5 + 1j)
      >>> P = B = C = jnp.ones((2, 4))
      >>> ssm_kernel_dplr(Lambda, P, B, C, jnp.zeros(2), 16).shape
      (2, 16)

    References:
      Gu, Goel, Ré, `Efficiently Modeling Long Sequences with Structured State Spaces
      <https://arxiv.org/abs/2111.00396>`_, 2022, Algorithm 1, Eq. (5), Lemmas C.2–C.3.
    """
    length = checks.positive_int(length, "length")
    Lambda, B, C, dt = _ssm_inputs(Lambda, B, C, log_dt, names=("Lambda", "B", "C"))
    P = _rank_P(P, Lambda.shape).astype(Lambda.dtype)
    R, H, N2 = P.shape
    Abar, _ = _bilinear_dplr(Lambda, P, B, dt)
    AL = _matrix_power(Abar, length)  # [H, N2, N2]
    Ct = C - jnp.einsum("hm,hmn->hn", C, AL, precision=_HIGHEST)  # [H, N2]

    a = jnp.concatenate([Ct[None], P.conj()], axis=0)  # [1 + R, H, N2]
    b = jnp.concatenate([B[None], P], axis=0)  # [1 + R, H, N2]
    v = 2 * jnp.einsum("h,ihn,jhn->ijhn", dt.astype(a.dtype), a, b)  # [1 + R, 1 + R, H, N2]
    v = v.reshape((1 + R) ** 2, H, N2)  # [M, H, N2]
    left = jnp.concatenate(
        [
            jnp.concatenate([v.real, -v.imag], axis=-1),
            jnp.concatenate([v.imag, v.real], axis=-1),
        ],
        axis=0,
    )  # [2M, H, 2N2]
    z = dt[:, None] * Lambda  # [H, N2]

    @jax.checkpoint
    def generating_function(om):  # K̂ at the nodes om [Lc] -> [H, Lc]
        return _woodbury(_cauchy(left, z, om).reshape(1 + R, 1 + R, H, -1), om)

    omega = jnp.asarray(np.exp(-2j * np.pi * np.arange(length) / length), Lambda.dtype)  # [L]
    chunk = max(1, _CAUCHY_CHUNK_ELEMENTS // (H * N2))
    if length <= chunk:
        Khat = generating_function(omega)  # [H, L]
    else:
        # Nodes in chunks (lax.map, rematerialised in the backward pass): no [H, N2, L] array.
        # Padding repeats the node ω = 1 (finite wherever the real nodes are); sliced off.
        n_chunks = -(-length // chunk)
        nodes = jnp.pad(omega, (0, n_chunks * chunk - length), constant_values=1)
        nodes = nodes.reshape(n_chunks, chunk)  # [n_chunks, Lc]
        Khat = jax.lax.map(generating_function, nodes)  # [n_chunks, H, Lc]
        Khat = jnp.moveaxis(Khat, 0, 1).reshape(H, n_chunks * chunk)[:, :length]  # [H, L]
    return 2 * jnp.fft.ifft(Khat, axis=-1).real  # [H, L]


def ssm_step(
    x_prev: ArrayLike, u_t: ArrayLike, Abar: ArrayLike, Bbar: ArrayLike, C: ArrayLike
) -> tuple[jax.Array, jax.Array]:
    r"""One recurrent step of a discretised SSM (decoding mode), diagonal or dense.

    .. math::
        x_t = \bar A x_{t-1} + \bar B u_t, \qquad y_t = 2 \operatorname{Re}(C x_t),

    with ``Ā`` diagonal (``[H, N2]``, from :func:`discretize_zoh` / :func:`discretize_bilinear`)
    or dense (``[H, N2, N2]``, from :func:`discretize_dplr`). Iterating from ``x_0 = 0`` gives
    ``y = K * u`` for the matching kernel; the skip term ``D u`` is not included.

    Args:
      x_prev: complex ``[..., H, N2]``, the previous state.
      u_t: real ``[..., H]``, the input at this step.
      Abar: complex ``[H, N2]`` (diagonal) or ``[H, N2, N2]`` (dense).
      Bbar: complex ``[H, N2]``.
      C: complex ``[H, N2]``, the plain output vector.

    Returns:
      ``(x, y)``: the new state, complex ``[..., H, N2]``, and the output, real ``[..., H]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> Abar, Bbar = discretize_zoh(jnp.full((2, 4), -0.5 + 1j), jnp.ones((2, 4)), jnp.zeros(2))
      >>> x, y = ssm_step(jnp.zeros((3, 2, 4), jnp.complex64), jnp.ones((3, 2)), Abar, Bbar,
      ...                 jnp.ones((2, 4)))
      >>> x.shape, y.shape
      ((3, 2, 4), (3, 2))

    References:
      Gu, Goel, Ré, `Efficiently Modeling Long Sequences with Structured State Spaces
      <https://arxiv.org/abs/2111.00396>`_, 2022, Eq. (3) (recurrent view).
    """
    Abar = _complex_array(Abar, "Abar")
    if Abar.ndim not in (2, 3) or (Abar.ndim == 3 and Abar.shape[-1] != Abar.shape[-2]):
        raise ValueError(
            f"`Abar` must have shape [H, N2] (diagonal) or [H, N2, N2] (dense), got {Abar.shape}."
        )
    shape = Abar.shape[:2]
    Bbar = _complex_array(Bbar, "Bbar")
    C = _complex_array(C, "C")
    x_prev = _complex_array(x_prev, "x_prev")
    u_t = checks.float_array(u_t, "u_t")
    checks.exact_shape(Bbar, shape, "Bbar", "[H, N2]")
    checks.exact_shape(C, shape, "C", "[H, N2]")
    checks.min_rank(x_prev, 2, "x_prev", "[..., H, N2]")
    checks.exact_shape(x_prev, x_prev.shape[:-2] + shape, "x_prev", "[..., H, N2]")
    checks.exact_shape(u_t, x_prev.shape[:-1], "u_t", "[..., H]")
    if Abar.ndim == 2:
        Ax = jnp.einsum("hn,...hn->...hn", Abar, x_prev)  # [..., H, N2]
    else:
        Ax = jnp.einsum("hmn,...hn->...hm", Abar, x_prev, precision=_HIGHEST)  # [..., H, N2]
    x = Ax + jnp.einsum("hn,...h->...hn", Bbar, u_t)  # [..., H, N2]
    y = 2 * jnp.einsum("hn,...hn->...h", C, x, precision=_HIGHEST).real  # [..., H]
    return x, y


def causal_conv_fft(u: ArrayLike, K: ArrayLike, D: ArrayLike | None = None) -> jax.Array:
    r"""Causal convolution ``y = K * u (+ D u)`` along the length axis, via FFT.

    .. math::
        y_{t,h} = \sum_{s=0}^{t} K_{h,s}\, u_{t-s,h} + D_h u_{t,h},

    computed as ``irfft(rfft(u, n) · rfft(K, n))[:L]`` with ``n = L + L_K`` (``2L`` for a
    full-length kernel), so there is no circular wrap-around. Kernel taps beyond ``L`` are
    dropped; a shorter kernel acts as zero-padded.

    Args:
      u: real ``[..., L, H]`` (e.g. ``[B, L, H]``), the input sequence.
      K: real ``[H, L_K]``, the kernel (e.g. from :func:`ssm_kernel_diag`).
      D: optional real ``[H]``, the skip connection.

    Returns:
      ``y``: real ``[..., L, H]`` (float32 at least; float64 for float64 inputs).

    Examples:
      >>> import jax.numpy as jnp
      >>> u = jnp.zeros((1, 4, 1)).at[0, 0, 0].set(1.0)
      >>> K = jnp.array([[1.0, 2.0, 3.0, 4.0]])
      >>> causal_conv_fft(u, K)[0, :, 0].round(4).tolist()
      [1.0, 2.0, 3.0, 4.0]

    References:
      Gu, Goel, Ré, `Efficiently Modeling Long Sequences with Structured State Spaces
      <https://arxiv.org/abs/2111.00396>`_, 2022, Eq. (4)–(5).
    """
    u = checks.float_array(u, "u")
    K = checks.float_array(K, "K")
    checks.min_rank(u, 2, "u", "[..., L, H]")
    L, H = u.shape[-2:]
    if K.ndim != 2 or K.shape[0] != H:
        raise ValueError(f"`K` must have shape ({H}, L_K) ([H, L_K]), got {K.shape}.")
    arrays = [u, K]
    if D is not None:
        D = checks.float_array(D, "D")
        checks.exact_shape(D, (H,), "D", "[H]")
        arrays.append(D)
    dtype = checks.compute_dtype(*arrays)
    K = K[:, :L].astype(dtype)
    n = L + K.shape[-1]
    lead = (1,) * (u.ndim - 2)
    u_f = jnp.fft.rfft(u.astype(dtype), n=n, axis=-2)  # [..., n//2 + 1, H]
    K_f = jnp.fft.rfft(K, n=n, axis=-1).T.reshape(lead + (n // 2 + 1, H))  # [..., n//2 + 1, H]
    y = jnp.fft.irfft(u_f * K_f, n=n, axis=-2)[..., :L, :]  # [..., L, H]
    if D is not None:
        y = y + u.astype(dtype) * D.astype(dtype).reshape(lead + (1, H))
    return y


def hippo_legs(N: int) -> tuple[np.ndarray, np.ndarray]:
    r"""The HiPPO-LegS state matrix and input vector (float64 NumPy).

    .. math::
        A_{nk} = -\begin{cases} \sqrt{2n+1}\sqrt{2k+1} & n > k \\ n + 1 & n = k \\
        0 & n < k \end{cases}, \qquad B_n = \sqrt{2n+1}, \qquad n, k = 0, \dots, N-1.

    Args:
      N: the state size (positive int).

    Returns:
      ``(A, B)``: float64 ``[N, N]`` and ``[N]``.

    Examples:
      >>> A, B = hippo_legs(3)
      >>> A.round(3).tolist()
      [[-1.0, 0.0, 0.0], [-1.732, -2.0, 0.0], [-2.236, -3.873, -3.0]]

    References:
      Gu, Dao, Ermon, Rudra, Ré, `HiPPO: Recurrent Memory with Optimal Polynomial Projections
      <https://arxiv.org/abs/2008.07669>`_, 2020, Theorem 2 (LegS); S4 (arXiv:2111.00396) Eq. (2).
    """
    N = checks.positive_int(N, "N")
    r = np.sqrt(2.0 * np.arange(N) + 1.0)
    A = np.diag(-(np.arange(N) + 1.0)) - np.tril(np.outer(r, r), -1)
    return A, r.copy()


def nplr_legs(N: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""Normal-plus-low-rank form of HiPPO-LegS in its eigenbasis (complex128 NumPy).

    .. math::
        A = A^{(N)} - p p^\top, \quad p_n = \sqrt{n + \tfrac12}, \quad
        A^{(N)} = -\tfrac12 I + S \ (S \text{ skew}), \quad
        A^{(N)} = V \Lambda V^H + \overline{V \Lambda V^H},

    diagonalised in float64 (``eigh`` of the Hermitian ``−iS``). Only the ``N2 = N/2``
    eigenvalues with positive imaginary part are kept (their conjugates complete the real
    system), so ``A = 2 Re(V diag(Λ) Vᴴ) − p pᵀ`` with ``p = 2 Re(V P)``, ``B_legs = 2 Re(V B)``.

    Args:
      N: the real state size (positive, even).

    Returns:
      ``(Lambda, P, B, V)``: complex128 ``[N2]`` (``−½ + iω``, ascending ``ω > 0``),
      ``[N2]`` (``P = Vᴴ p``), ``[N2]`` (``B = Vᴴ B_legs``) and ``[N, N2]`` (orthonormal
      eigenvectors).

    Examples:
      >>> Lambda, P, B, V = nplr_legs(4)
      >>> Lambda.real.tolist(), bool(all(Lambda.imag > 0)), V.shape
      ([-0.5, -0.5], True, (4, 2))

    References:
      Gu, Goel, Ré, `Efficiently Modeling Long Sequences with Structured State Spaces
      <https://arxiv.org/abs/2111.00396>`_, 2022, Theorem 1 and Corollary 3.1 (NPLR of HiPPO).
    """
    N = checks.positive_int(N, "N")
    if N % 2:
        raise ValueError(f"`N` must be even (conjugate pairs, N2 = N/2), got {N}.")
    A, B_legs = hippo_legs(N)
    p = np.sqrt(np.arange(N) + 0.5)
    S = A + np.outer(p, p) + 0.5 * np.eye(N)  # skew-symmetric
    omega, V = np.linalg.eigh(-1j * S)  # ascending real ω; eigenvalues of S are iω
    if np.any(np.abs(omega) < 1e-12):
        raise ValueError(f"HiPPO-LegS normal part has a zero eigenvalue for N={N}.")
    V = V[:, N // 2 :]
    Lambda = -0.5 + 1j * omega[N // 2 :]
    return Lambda, V.conj().T @ p, V.conj().T @ B_legs, V


def s4d_lin_init(H: int, N2: int) -> np.ndarray:
    r"""S4D-Lin initialisation of the diagonal state matrix (complex128 NumPy).

    .. math::
        A_n = -\tfrac12 + i \pi n, \qquad n = 0, \dots, N2 - 1,

    the same for every channel.

    Args:
      H: number of channels.
      N2: number of conjugate pairs kept (``N = 2·N2``).

    Returns:
      ``A``: complex128 ``[H, N2]``.

    Examples:
      >>> s4d_lin_init(1, 3).imag.round(4).tolist()
      [[0.0, 3.1416, 6.2832]]

    References:
      Gu, Gupta, Goel, Ré, `On the Parameterization and Initialization of Diagonal State Space
      Models <https://arxiv.org/abs/2206.11893>`_, 2022, Section 4 (S4D-Lin).
    """
    H, N2 = checks.positive_int(H, "H"), checks.positive_int(N2, "N2")
    A = -0.5 + 1j * np.pi * np.arange(N2)
    return np.broadcast_to(A, (H, N2)).copy()


def s4d_inv_init(H: int, N2: int) -> np.ndarray:
    r"""S4D-Inv initialisation of the diagonal state matrix (complex128 NumPy).

    .. math::
        A_n = -\tfrac12 + i \frac{N}{\pi} \Big( \frac{N}{2n+1} - 1 \Big),
        \qquad N = 2 \cdot N2, \quad n = 0, \dots, N2 - 1.

    Args:
      H: number of channels.
      N2: number of conjugate pairs kept (``N = 2·N2``).

    Returns:
      ``A``: complex128 ``[H, N2]``.

    Examples:
      >>> s4d_inv_init(1, 2).imag.round(3).tolist()
      [[3.82, 0.424]]

    References:
      Gu, Gupta, Goel, Ré, `On the Parameterization and Initialization of Diagonal State Space
      Models <https://arxiv.org/abs/2206.11893>`_, 2022, Section 4 (S4D-Inv).
    """
    H, N2 = checks.positive_int(H, "H"), checks.positive_int(N2, "N2")
    N = 2 * N2
    A = -0.5 + 1j * N / np.pi * (N / (2 * np.arange(N2) + 1) - 1)
    return np.broadcast_to(A, (H, N2)).copy()


def s4d_real_init(H: int, N2: int) -> np.ndarray:
    r"""S4D-Real initialisation of the diagonal state matrix (complex128 NumPy, zero imaginary).

    .. math::
        A_n = -(n + 1), \qquad n = 0, \dots, N2 - 1.

    Args:
      H: number of channels.
      N2: number of (real) modes.

    Returns:
      ``A``: complex128 ``[H, N2]``.

    Examples:
      >>> s4d_real_init(1, 3).real.tolist()
      [[-1.0, -2.0, -3.0]]

    References:
      Gu, Gupta, Goel, Ré, `On the Parameterization and Initialization of Diagonal State Space
      Models <https://arxiv.org/abs/2206.11893>`_, 2022, Section 4 (S4D-Real).
    """
    H, N2 = checks.positive_int(H, "H"), checks.positive_int(N2, "N2")
    A = -(np.arange(N2) + 1.0) + 0j
    return np.broadcast_to(A, (H, N2)).copy()
