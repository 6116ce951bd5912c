"""The Mamba-2 mixer block as a Flax NNX module.

:class:`Mamba2Block` is the token mixer alone (no outer norm, no residual), the same function as
the reference ``mamba_ssm`` ``Mamba2Simple`` (``mamba2_simple.py``, non-fused path) and Hugging
Face ``Mamba2Mixer`` (its pure-PyTorch path); its parameters keep the reference names
(``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``, ``D``, ``norm``, ``out_proj``) so a loader
can map checkpoints onto it.
"""

# B batch, L length, D channels (d_model), E inner width (expand·d_model), H heads (E / P),
# P head dim (headdim), G groups (ngroups), N state (d_state), K conv width (d_conv),
# X conv channels (E + 2·G·N)

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiv import checks
from jaxdiv.models.common import Linear, logical_param
from jaxdiv.models.sharding import sequence_mesh

from .mamba import CausalConv1d, _check_where, _check_x, _torch_default_init
from .parallel import sequence_parallel_ssd
from .ssd import ssd, ssd_step


class GatedRMSNorm(nnx.Module):
    r"""Grouped, gated RMS norm: ``norm(y ⊙ silu(z)) · w`` over groups of ``group_size`` channels.

    .. math::

        u = y \odot \operatorname{silu}(z), \qquad
        \text{out}_{G_k} = \frac{u_{G_k}}{\sqrt{\operatorname{mean}(u_{G_k}^2) + \epsilon}}
        \odot w_{G_k}

    for each group :math:`G_k` of ``group_size`` consecutive channels (the reference
    ``RMSNormGated(norm_before_gate=False)``). Statistics and result in float32.
    """

    def __init__(
        self,
        features: int,
        *,
        group_size: int,
        eps: float = 1e-5,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        if features % group_size:
            raise ValueError(f"`group_size` must divide the {features} features, got {group_size}.")
        self.scale = logical_param(jnp.ones((features,), param_dtype), ("mlp",), no_decay=True)
        self.group_size, self.eps = group_size, eps

    def __call__(self, y: jax.Array, z: jax.Array) -> jax.Array:  # [..., E] x 2 -> [..., E] f32
        u = y.astype(jnp.float32) * jax.nn.silu(z.astype(jnp.float32))
        groups = u.reshape(*u.shape[:-1], -1, self.group_size)  # [..., G, E / G]
        ms = jnp.mean(jnp.square(groups), axis=-1, keepdims=True)
        u = (groups * jax.lax.rsqrt(ms + self.eps)).reshape(u.shape)
        scale = self.scale[...].astype(jnp.float32)
        return u * scale.reshape((1,) * (u.ndim - 1) + scale.shape)


class Mamba2Block(nnx.Module):
    r"""The Mamba-2 mixer: gated, convolved multi-head SSM with a scalar decay per head (SSD).

    With :math:`x` the input ``[B, L, D]``:

    .. math::

        (z, \xi, \delta) &= x W_{\text{in}}, \qquad
        \xi \leftarrow \operatorname{silu}(\operatorname{conv1d}(\xi)), \qquad
        (u, B, C) = \xi, \\
        \Delta &= \operatorname{softplus}(\delta + b_\Delta), \qquad A = -\exp(A_{\log}), \\
        S_t &= e^{\Delta_t A} S_{t-1} + \Delta_t u_t B_t^\top, \qquad
        y_t = S_t C_t + D u_t \quad \text{(per head)}, \\
        \text{out} &= \operatorname{RMSNorm}_G(y \odot \operatorname{silu}(z))\, W_{\text{out}},

    the reference ``Mamba2Simple`` / Hugging Face ``Mamba2Mixer``: ``in_proj`` (D → E + X + H, in
    the order z, xBC, dt), causal depthwise ``conv1d`` (width ``d_conv``, left padding) + SiLU
    over xBC (X = E + 2GN channels), split into u (H heads of P = ``headdim`` channels), B and C
    (G = ``ngroups`` groups of N = ``d_state``; head i reads group i // (H / G)), the SSD
    (:func:`jaxdiv.models.ssm.ssd.ssd`, chunked), the gated grouped RMS ``norm`` (group size
    E / G, ``norm_before_gate=False``) and ``out_proj`` (E → D). ``A_log``, ``D`` and ``dt_bias``
    are one number per head.

    Initialisation follows the reference: Linear and conv weights U(±1/√fan_in), ``dt_bias`` =
    softplus⁻¹(dt) with dt log-uniform in [dt_min, dt_max] floored at ``dt_init_floor``,
    A ~ U(``A_init_range``), D = 1, norm weight 1. ``A_log``, ``D`` and ``dt_bias`` are float32
    and carry ``no_decay``, whatever ``param_dtype``. The SSD, its state and the gated norm run
    in float32.

    Padding (``where`` False): the input and the conv input are zeroed, the conv output zeroed
    and Δ = 0 there (an exact identity step of the recurrence), so padded positions never
    influence real ones. Decoding: :meth:`init_cache` and :meth:`step` (conv window + SSM state
    ``[B, H, P, N]``). Sequence parallelism: built with ``sequence_axis`` and called under a
    mesh that shards that axis (``jax.set_mesh``), the SSD runs as
    :func:`~jaxdiv.models.ssm.parallel.sequence_parallel_ssd`.

    Args:
      d_model: D, the model width.
      d_state: N, the SSM state size per head.
      d_conv: K, the causal conv width.
      expand: E = expand · D.
      headdim: P, channels per head (must divide E).
      ngroups: G, groups of heads sharing B and C (must divide H = E / P).
      chunk_size: the SSD chunk length.
      A_init_range: (low, high) of the uniform initial −A.
      dt_min: smallest initial Δ.
      dt_max: largest initial Δ.
      dt_init_floor: floor of the initial Δ.
      dt_limit: (low, high) clamp of Δ after the softplus (the reference's ``dt_limit``;
        the default (0, ∞) is no clamp).
      conv_bias: give ``conv1d`` a bias.
      bias: give ``in_proj`` and ``out_proj`` biases.
      norm_eps: ε of the gated RMS norm.
      sequence_axis: the mesh axis of sequence parallelism (None: never).
      dtype: compute dtype of the projections and the conv (default: the input's).
      param_dtype: storage dtype of the projection, conv and norm weights.
      rngs: ``nnx.Rngs`` (``params`` stream).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> block = Mamba2Block(16, d_state=8, headdim=8, chunk_size=4, rngs=nnx.Rngs(0))
      >>> x = jax.random.normal(jax.random.key(1), (2, 10, 16))
      >>> y = block(x)
      >>> cache = block.init_cache(2, 10)
      >>> y0, cache = block.step(x[:, 0], cache)
      >>> y.shape, bool(jnp.allclose(y0, y[:, 0], atol=1e-5))
      ((2, 10, 16), True)

    References:
      Dao and Gu, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
      Structured State Space Duality", https://arxiv.org/abs/2405.21060, Section 7 (the Mamba-2
      block, Figure 6) and Listing 1.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 64,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, math.inf),
        conv_bias: bool = True,
        bias: bool = False,
        norm_eps: float = 1e-5,
        sequence_axis: str | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        d_model = checks.positive_int(d_model, "d_model")
        d_state = checks.positive_int(d_state, "d_state")
        d_conv = checks.positive_int(d_conv, "d_conv")
        expand = checks.positive_int(expand, "expand")
        headdim = checks.positive_int(headdim, "headdim")
        ngroups = checks.positive_int(ngroups, "ngroups")
        chunk_size = checks.positive_int(chunk_size, "chunk_size")
        d_inner = expand * d_model
        if d_inner % headdim:
            raise ValueError(
                f"`headdim` must divide expand * d_model = {d_inner}, got headdim={headdim}."
            )
        nheads = d_inner // headdim
        if nheads % ngroups:
            raise ValueError(
                f"`ngroups` must divide the number of heads {nheads} (= expand * d_model / "
                f"headdim), got ngroups={ngroups}."
            )
        lo, hi = A_init_range
        if not 0 < lo <= hi:
            raise ValueError(f"`A_init_range` must satisfy 0 < low <= high, got {A_init_range}.")
        checks.positive(dt_min, "dt_min")
        checks.positive(dt_max, "dt_max")
        if dt_min > dt_max:
            raise ValueError(f"`dt_min` must be <= `dt_max`, got {dt_min} > {dt_max}.")
        checks.scalar_in_range(dt_init_floor, "dt_init_floor", low=0.0)
        if not 0 <= dt_limit[0] < dt_limit[1]:
            raise ValueError(f"`dt_limit` must satisfy 0 <= low < high, got {dt_limit}.")
        self.d_model, self.d_state, self.d_conv, self.d_inner = d_model, d_state, d_conv, d_inner
        self.headdim, self.nheads, self.ngroups = headdim, nheads, ngroups
        self.conv_dim = d_inner + 2 * ngroups * d_state
        self.chunk_size, self.dt_limit, self.dtype = chunk_size, tuple(dt_limit), dtype
        self.sequence_axis = sequence_axis  # sequence parallelism (see parallel.sequence_mesh)

        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.in_proj = Linear(
            d_model,
            d_inner + self.conv_dim + nheads,
            axes=("embed", "mlp"),
            use_bias=bias,
            kernel_init=_torch_default_init,
            **kw,
        )
        self.conv1d = CausalConv1d(self.conv_dim, d_conv, use_bias=conv_bias, **kw)
        log_dt = jax.random.uniform(
            rngs.params(), (nheads,), jnp.float32, math.log(dt_min), math.log(dt_max)
        )
        dt = jnp.maximum(jnp.exp(log_dt), dt_init_floor)
        self.dt_bias = logical_param(dt + jnp.log(-jnp.expm1(-dt)), ("heads",), no_decay=True)
        A = jax.random.uniform(rngs.params(), (nheads,), jnp.float32, lo, hi)
        self.A_log = logical_param(jnp.log(A), ("heads",), no_decay=True)  # [H]
        self.D = logical_param(jnp.ones((nheads,), jnp.float32), ("heads",), no_decay=True)
        self.norm = GatedRMSNorm(
            d_inner, group_size=d_inner // ngroups, eps=norm_eps, param_dtype=param_dtype
        )
        self.out_proj = Linear(
            d_inner,
            d_model,
            axes=("mlp", "embed"),
            use_bias=bias,
            kernel_init=_torch_default_init,
            **kw,
        )

    def _split_xbc(self, xbc: jax.Array):
        """xBC ``[..., X]`` → (u float32 ``[..., H, P]``, B, C ``[..., G, N]``)."""
        E, GN = self.d_inner, self.ngroups * self.d_state
        u, B, C = jnp.split(xbc, [E, E + GN], axis=-1)
        lead = xbc.shape[:-1]
        u = u.astype(jnp.float32).reshape(*lead, self.nheads, self.headdim)
        B = B.reshape(*lead, self.ngroups, self.d_state)
        return u, B, C.reshape(*lead, self.ngroups, self.d_state)

    def _dt(self, dt: jax.Array) -> jax.Array:
        """Δ = softplus(δ + b_Δ) in float32, clamped to ``dt_limit`` when one is set."""
        dt = dt.astype(jnp.float32) + self.dt_bias[...].reshape((1,) * (dt.ndim - 1) + (-1,))
        dt = jax.nn.softplus(dt)
        if self.dt_limit != (0.0, math.inf):
            dt = jnp.clip(dt, *self.dt_limit)
        return dt

    def __call__(self, x, *, where=None) -> jax.Array:
        """Parallel (training) form: ``x [B, L, D]`` → ``[B, L, D]`` in ``dtype``.

        Args:
          x: input ``[B, L, D]``.
          where: bool ``[B, L]``, True at real tokens (None: all real).
        """
        x = _check_x(x, 3, self.d_model, "[B, L, D]")
        where = _check_where(where, (x.shape[0], x.shape[1]))
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        if where is not None:
            x = jnp.where(where[..., None], x, 0)
        E = self.d_inner
        z, xbc, dt = jnp.split(self.in_proj(x), [E, E + self.conv_dim], axis=-1)
        if where is not None:
            xbc = jnp.where(where[..., None], xbc, 0)
        xbc = jax.nn.silu(self.conv1d(xbc))  # [B, L, X]
        if where is not None:
            xbc = jnp.where(where[..., None], xbc, 0)
        u, B, C = self._split_xbc(xbc)  # [B, L, H, P], [B, L, G, N] x 2
        dt = self._dt(dt)  # [B, L, H]
        if where is not None:
            dt = jnp.where(where[..., None], dt, 0)
        A = -jnp.exp(self.A_log[...])  # [H]
        axis = self.sequence_axis
        mesh = sequence_mesh(axis)
        if mesh is None or axis is None:
            y = ssd(u, dt, A, B, C, D=self.D[...], chunk_size=self.chunk_size)
        else:  # sequence sharded: per-shard SSDs joined by one all-gather of states
            y = sequence_parallel_ssd(
                u,
                dt,
                A,
                B,
                C,
                D=self.D[...],
                mesh=mesh,
                axis_name=axis,
                chunk_size=self.chunk_size,
            )
        y = self.norm(y.reshape(*y.shape[:2], E), z)  # [B, L, E] float32
        return self.out_proj(y.astype(dtype))  # [B, L, D]

    def init_cache(self, batch_size: int, max_length: int, *, dtype=jnp.float32) -> dict:
        """Empty decoding cache (the state size does not depend on ``max_length``).

        Args:
          batch_size: B.
          max_length: unused (kept for the common mixer interface).
          dtype: dtype of the conv window (the SSM state is float32).

        Returns:
          ``{"conv": [B, K − 1, X] zeros (the last K − 1 conv inputs),
          "ssm": [B, H, P, N] float32 zeros}``.
        """
        return {
            "conv": jnp.zeros((batch_size, self.d_conv - 1, self.conv_dim), dtype),
            "ssm": jnp.zeros((batch_size, self.nheads, self.headdim, self.d_state), jnp.float32),
        }

    def step(self, x_t, cache: dict) -> tuple[jax.Array, dict]:
        """One decoding step: ``x_t [B, D]`` → ``(y_t [B, D], new cache)``, as :meth:`__call__`.

        Args:
          x_t: the current token's input ``[B, D]``.
          cache: from :meth:`init_cache` or a previous step.
        """
        x_t = _check_x(x_t, 2, self.d_model, "[B, D]")
        dtype = self.dtype or x_t.dtype
        E = self.d_inner
        z, xbc, dt = jnp.split(self.in_proj(x_t.astype(dtype)), [E, E + self.conv_dim], axis=-1)
        conv = cache["conv"]
        window = jnp.concatenate([conv, xbc[:, None].astype(conv.dtype)], axis=1)  # [B, K, X]
        u, B, C = self._split_xbc(jax.nn.silu(self.conv1d.step(window)))
        A = -jnp.exp(self.A_log[...])  # [H]
        y, S = ssd_step(cache["ssm"], u, self._dt(dt), A, B, C, self.D[...])  # [B, H, P]
        y = self.norm(y.reshape(y.shape[0], E), z)  # [B, E] float32
        new_cache = {"conv": window[:, 1:], "ssm": S.astype(cache["ssm"].dtype)}
        return self.out_proj(y.astype(dtype)), new_cache  # [B, D]
