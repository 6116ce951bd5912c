"""The S4 / S4D mixer block as a Flax NNX module: H independent SSMs, FFT convolution, GELU, linear.

Convolution mode computes the kernel of each channel's SSM (:mod:`jaxdiv.models.ssm.s4_ops`) and
convolves with FFT; decoding mode runs the same discretised SSM as a recurrence, one token at a
time. Conventions follow :mod:`jaxdiv.models.ssm.s4_ops`: each channel keeps N2 = N/2 complex
modes (one per conjugate pair) and outputs ``2·Re(C x)``; ``C`` is the plain output vector.
"""

# B batch, L length, H channels (d_model), N state (N2 = N/2 conjugate pairs kept)

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiv import checks
from jaxdiv.models.common import Linear, logical_param
from jaxdiv.models.sharding import sequence_mesh

from . import s4_ops as sk
from .parallel import sequence_parallel_s4

MODES = ("dplr", "diag")
INITS = ("legs", "lin", "inv")


def _pair(z: np.ndarray) -> jax.Array:
    """complex ``[...]`` → float32 real pairs ``[..., 2]``."""
    return jnp.asarray(np.stack([z.real, z.imag], axis=-1), jnp.float32)


def _complex(p: nnx.Param) -> jax.Array:
    """float real pairs ``[..., 2]`` → complex ``[...]``."""
    p = p[...]
    return jax.lax.complex(p[..., 0], p[..., 1])


def _complex_normal_pairs(key, shape: tuple[int, ...], scale: float) -> jax.Array:
    """Complex normal as float32 real pairs ``[..., 2]``, parts each N(0, scale²/2) (so
    E|z|² = scale²); traceable, so models can be built under ``jax.jit``/``nnx.eval_shape``."""
    return scale / np.sqrt(2) * jax.random.normal(key, (*shape, 2), jnp.float32)


def _initial_ssm(init: str, H: int, N: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(Λ ``[H, N2]``, B ``[H, N2]``, LegS low-rank P ``[H, N2]`` or None), complex128."""
    N2 = N // 2
    if init == "legs":
        Lambda, P, B, _ = sk.nplr_legs(N)
        return tuple(np.broadcast_to(v, (H, N2)).copy() for v in (Lambda, B, P))
    Lambda = sk.s4d_lin_init(H, N2) if init == "lin" else sk.s4d_inv_init(H, N2)
    return Lambda, np.ones((H, N2), np.complex128), None


class S4Block(nnx.Module):
    r"""S4 mixer: one SSM per channel (DPLR or diagonal), FFT convolution, GELU, output linear.

    With :math:`u` the input ``[B, L, H]`` (H = ``d_model``), per channel h:

    .. math::

        y_{t,h} = \sum_{s \le t} K_{h, t-s}\, u_{s,h} + D_h u_{t,h}, \qquad
        K_{h,l} = 2 \operatorname{Re}\big(C_h \bar A_h^{\,l} \bar B_h\big), \qquad
        \text{out} = \operatorname{GELU}(y)\, W + b,

    the S4 layer of the paper / Annotated S4 with a plain position-wise output linear (no GLU),
    GELU exact (erf). ``mode="dplr"`` (S4): :math:`A = \operatorname{diag}(\Lambda) - P P^H`
    (rank 1), bilinear discretisation, kernel by :func:`~jaxdiv.models.ssm.s4_ops.ssm_kernel_dplr`
    (Cauchy + Woodbury). ``mode="diag"`` (S4D): :math:`A = \operatorname{diag}(\Lambda)`, ZOH,
    kernel by :func:`~jaxdiv.models.ssm.s4_ops.ssm_kernel_diag`. Δ = exp(``log_dt``) per channel.

    Parameters (SSM parameters are float32 whatever ``param_dtype``; complex ones are stored as
    real pairs ``[..., 2]``):

    - ``Lambda_real_log`` ``[H, N2]``: log(−Re Λ), so Re Λ < 0 always; ``Lambda_imag``
      ``[H, N2]``: Im Λ. ``B``, ``P`` (DPLR only), ``C`` ``[H, N2, 2]``; ``log_dt`` ``[H]``;
      ``D`` ``[H]``; ``out_proj`` (Linear H → H with bias, ``param_dtype``).
    - ``no_decay``: Λ, P, B, log_dt and D (as the reference, which trains them without weight
      decay); ``C`` and the output linear's kernel *do* take weight decay (the reference treats
      C as an ordinary weight).

    Initialisation (``init``): ``"legs"``: Λ, P, B of the normal-plus-low-rank HiPPO-LegS
    (:func:`~jaxdiv.models.ssm.s4_ops.nplr_legs`; ``mode="diag"`` keeps Λ and B and drops P,
    S4D-LegS); ``"lin"`` / ``"inv"``: S4D-Lin / S4D-Inv Λ, B = 1, and for ``mode="dplr"`` a
    small random P (complex normal, E|P_n|² = 1/N2). C complex normal (E|C_n|² = 1), D ~ N(0, 1),
    log Δ ~ U[log dt_min, log dt_max].

    ``bidirectional=True`` adds a second output vector ``C_rev`` and a strictly anti-causal
    term :math:`\sum_{s > t} K^{\text{rev}}_{h, s-t-1} u_{s,h}` (non-causal: no decoding).

    Padding (``where`` False): the input is zeroed there before the convolution, so padded
    positions never influence real ones. Decoding: :meth:`init_cache` / :meth:`step` run the
    recurrence :math:`x_t = \bar A x_{t-1} + \bar B u_t` with the same Ā, B̄ (dense Ā from
    :func:`~jaxdiv.models.ssm.s4_ops.discretize_dplr` for DPLR) and the plain C, equal to the
    convolution token by token.

    Args:
      d_model: H, the number of channels (independent SSMs).
      d_state: N, the real state size per channel (even; N2 = N/2 complex modes are kept).
      mode: ``"dplr"`` (S4) or ``"diag"`` (S4D).
      init: ``"legs"``, ``"lin"`` or ``"inv"``.
      dt_min: smallest initial Δ.
      dt_max: largest initial Δ.
      bidirectional: add the anti-causal term (no ``step``).
      dtype: compute dtype of the output linear (default: the input's); the SSM runs in float32.
      param_dtype: storage dtype of the output linear.
      rngs: ``nnx.Rngs`` (``params`` stream).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxdiv.models.ssm.s4 import S4Block
      >>> block = S4Block(16, d_state=8, rngs=nnx.Rngs(0))
      >>> x = jax.random.normal(jax.random.key(1), (2, 12, 16))
      >>> y = block(x)
      >>> cache = block.init_cache(2, 12)
      >>> y0, cache = block.step(x[:, 0], cache)
      >>> y.shape, bool(jnp.allclose(y0, y[:, 0], atol=1e-4))
      ((2, 12, 16), True)

    References:
      Gu, Goel, Ré, "Efficiently Modeling Long Sequences with Structured State Spaces",
      https://arxiv.org/abs/2111.00396, Section 3 and Algorithm 1; Gu, Gupta, Goel, Ré, "On the
      Parameterization and Initialization of Diagonal State Space Models",
      https://arxiv.org/abs/2206.11893, Section 3 and Listing 1.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        mode: str = "dplr",
        init: str = "legs",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        bidirectional: bool = False,
        sequence_axis: str | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        for name, value in (("d_model", d_model), ("d_state", d_state)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        if d_state % 2:
            raise ValueError(
                f"`d_state` must be even (the state is kept as N/2 conjugate pairs), got {d_state}."
            )
        checks.one_of(mode, "mode", MODES)
        checks.one_of(init, "init", INITS)
        checks.positive(dt_min, "dt_min")
        checks.positive(dt_max, "dt_max")
        if dt_min > dt_max:
            raise ValueError(f"`dt_min` must be <= `dt_max`, got {dt_min} > {dt_max}.")
        H, N2 = int(d_model), int(d_state) // 2
        self.d_model, self.d_state, self.mode = H, int(d_state), mode
        self.bidirectional, self.dtype = bool(bidirectional), dtype
        self.sequence_axis = sequence_axis  # sequence parallelism (see parallel.sequence_mesh)

        Lambda, B, P = _initial_ssm(init, H, int(d_state))
        axes = ("embed", "state")
        self.Lambda_real_log = logical_param(
            jnp.asarray(np.log(-Lambda.real), jnp.float32), axes, no_decay=True
        )  # [H, N2]
        self.Lambda_imag = logical_param(
            jnp.asarray(Lambda.imag, jnp.float32), axes, no_decay=True
        )  # [H, N2]
        self.B = logical_param(_pair(B), (*axes, None), no_decay=True)  # [H, N2, 2]
        if mode == "dplr":
            P = (
                _pair(P)
                if P is not None
                else _complex_normal_pairs(rngs.params(), (H, N2), N2**-0.5)
            )
            self.P = logical_param(P, (*axes, None), no_decay=True)  # [H, N2, 2]
        else:
            self.P = None
        self.C = logical_param(
            _complex_normal_pairs(rngs.params(), (H, N2), 1.0), (*axes, None)
        )  # [H, N2, 2]
        self.C_rev = (
            logical_param(_complex_normal_pairs(rngs.params(), (H, N2), 1.0), (*axes, None))
            if bidirectional
            else None
        )  # [H, N2, 2]
        self.log_dt = logical_param(
            jax.random.uniform(
                rngs.params(), (H,), jnp.float32, float(np.log(dt_min)), float(np.log(dt_max))
            ),
            ("embed",),
            no_decay=True,
        )  # [H]
        self.D = logical_param(
            jax.random.normal(rngs.params(), (H,), jnp.float32), ("embed",), no_decay=True
        )  # [H]
        self.out_proj = Linear(
            H,
            H,
            axes=("mlp", "embed"),
            use_bias=True,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def _Lambda(self) -> jax.Array:
        """Λ = −exp(``Lambda_real_log``) + i ``Lambda_imag``, complex ``[H, N2]``."""
        return jax.lax.complex(-jnp.exp(self.Lambda_real_log[...]), self.Lambda_imag[...])

    def kernel(self, length: int, *, reverse: bool = False) -> jax.Array:
        """The convolution kernel ``K [H, length]`` float32 (``reverse``: with ``C_rev``)."""
        C = _complex(self.C_rev if reverse else self.C)
        Lambda, B, log_dt = self._Lambda(), _complex(self.B), self.log_dt[...]
        if self.mode == "dplr":
            return sk.ssm_kernel_dplr(Lambda, _complex(self.P), B, C, log_dt, length)
        return sk.ssm_kernel_diag(Lambda, B, C, log_dt, length)

    def _finish(self, y: jax.Array, dtype) -> jax.Array:
        """GELU and the output linear, ``[..., H]`` float32 → ``[..., H]`` in ``dtype``."""
        return self.out_proj(jax.nn.gelu(y, approximate=False).astype(dtype))

    def __call__(self, x, *, where=None) -> jax.Array:
        """Convolution (training) form: ``x [B, L, H]`` → ``[B, L, H]`` in ``dtype``.

        Args:
          x: input ``[B, L, H]``.
          where: bool ``[B, L]``, True at real tokens (None: all real).
        """
        x = checks.float_array(x, "x")
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"`x` must have shape [B, L, H] with H = {self.d_model}, got {x.shape}."
            )
        dtype = self.dtype or x.dtype
        u = x.astype(checks.compute_dtype(x))  # [B, L, H], float32 at least
        if where is not None:
            where = jnp.asarray(where)
            checks.exact_shape(where, x.shape[:2], "where", "[B, L]")
            u = jnp.where(where.astype(bool)[..., None], u, 0)
        L = x.shape[1]
        mesh = sequence_mesh(self.sequence_axis)
        if mesh is not None:
            if self.bidirectional:
                raise ValueError("bidirectional S4Block does not run with the sequence sharded.")
            P = _complex(self.P) if self.mode == "dplr" else None
            y = sequence_parallel_s4(
                u,
                self._Lambda(),
                _complex(self.B),
                _complex(self.C),
                self.log_dt[...],
                self.D[...],
                P=P,
                mesh=mesh,
                axis_name=self.sequence_axis,
            )
            return self._finish(y, dtype)
        y = sk.causal_conv_fft(u, self.kernel(L), self.D[...])  # [B, L, H]
        if self.bidirectional:
            # Strictly future taps: K_rev shifted by one lag, applied to the time-reversed input.
            K_rev = jnp.pad(self.kernel(L, reverse=True), ((0, 0), (1, 0)))[:, :L]  # [H, L]
            y = y + jnp.flip(sk.causal_conv_fft(jnp.flip(u, axis=1), K_rev), axis=1)
        return self._finish(y, dtype)

    def _check_causal(self) -> None:
        if self.bidirectional:
            raise ValueError("decoding needs a causal block, got bidirectional=True.")

    def init_cache(self, batch_size: int, max_length: int, *, dtype=jnp.float32) -> dict:
        """Empty decoding cache (the state size does not depend on ``max_length``).

        Args:
          batch_size: B.
          max_length: unused (kept for the common mixer interface).
          dtype: real dtype of the state (the state is its complex counterpart).

        Returns:
          ``{"ssm": [B, H, N2] complex zeros}`` (complex64 for float32).
        """
        self._check_causal()
        cdtype = jnp.promote_types(dtype, jnp.complex64)
        return {"ssm": jnp.zeros((batch_size, self.d_model, self.d_state // 2), cdtype)}

    def step(self, x_t, cache: dict) -> tuple[jax.Array, dict]:
        """One decoding step: ``x_t [B, H]`` → ``(y_t [B, H], new cache)``, as :meth:`__call__`.

        Args:
          x_t: the current token's input ``[B, H]``.
          cache: from :meth:`init_cache` or a previous step.
        """
        self._check_causal()
        x_t = checks.float_array(x_t, "x_t")
        if x_t.ndim != 2 or x_t.shape[-1] != self.d_model:
            raise ValueError(
                f"`x_t` must have shape [B, H] with H = {self.d_model}, got {x_t.shape}."
            )
        dtype = self.dtype or x_t.dtype
        u = x_t.astype(checks.compute_dtype(x_t))  # [B, H]
        Lambda, B, log_dt = self._Lambda(), _complex(self.B), self.log_dt[...]
        if self.mode == "dplr":
            Abar, Bbar = sk.discretize_dplr(Lambda, _complex(self.P), B, log_dt)  # [H, N2, N2]
        else:
            Abar, Bbar = sk.discretize_zoh(Lambda, B, log_dt)  # [H, N2]
        state, y = sk.ssm_step(cache["ssm"], u, Abar, Bbar, _complex(self.C))  # [B, H, N2]
        y = y + u * self.D[...].astype(u.dtype)[None]  # [B, H]
        return self._finish(y, dtype), {"ssm": state.astype(cache["ssm"].dtype)}
