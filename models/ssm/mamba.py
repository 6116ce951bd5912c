"""The Mamba (S6) mixer block as a Flax NNX module, and a loader for reference PyTorch weights.

:class:`MambaBlock` is the token mixer alone (no norm, no residual), the same function as the
reference ``mamba_ssm`` ``Mamba`` (``mamba_simple.py``, non-fused path) and Hugging Face
``MambaMixer``; its parameters keep the reference names so :func:`load_torch_mamba` can copy a
PyTorch state dict across.
"""

# B batch, L length, D channels (d_model), E inner width (expand·d_model), N state,
# R dt_rank, K conv width (d_conv)

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiv import checks
from jaxdiv.models.common import Linear, dense, logical_param
from jaxdiv.models.sharding import sequence_mesh

from .parallel import sequence_parallel_selective_scan
from .selective_scan import METHODS as SCAN_METHODS
from .selective_scan import selective_scan, selective_scan_step

# PyTorch's default ``nn.Linear`` init for a ``[in, out]`` kernel: U(±1/√fan_in).
_torch_default_init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _uniform(bound: float):
    """U(−bound, bound)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _check_where(where, shape: tuple[int, int]):
    """``where`` as a bool ``[B, L]`` array (or None), ``ValueError`` on a wrong shape."""
    if where is None:
        return None
    where = jnp.asarray(where)
    checks.exact_shape(where, shape, "where", "[B, L]")
    return where.astype(bool)


def _check_x(x, rank: int, d_model: int, layout: str) -> jax.Array:
    x = checks.float_array(x, "x")
    if x.ndim != rank or x.shape[-1] != d_model:
        raise ValueError(f"`x` must have shape {layout} with D = {d_model}, got {x.shape}.")
    return x


class CausalConv1d(nnx.Module):
    """Depthwise causal convolution along the length: ``y_t = Σ_k w_k ⊙ x_{t−K+1+k} + b``.

    The kernel ``[K, E]`` is the PyTorch ``Conv1d(E, E, K, groups=E, padding=K−1)`` weight
    ``[E, 1, K]`` transposed; left zero padding, cross-correlation, as the reference.
    """

    def __init__(
        self,
        features: int,
        kernel_size: int,
        *,
        use_bias: bool = True,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        bound = kernel_size**-0.5  # PyTorch default (fan_in = K for a depthwise conv)
        self.kernel = logical_param(
            _uniform(bound)(rngs.params(), (kernel_size, features), param_dtype), (None, "mlp")
        )
        self.bias = (
            logical_param(
                _uniform(bound)(rngs.params(), (features,), param_dtype), ("mlp",), no_decay=True
            )
            if use_bias
            else None
        )
        self.kernel_size = kernel_size
        self.dtype = dtype

    def _finish(self, y: jax.Array) -> jax.Array:
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype).reshape((1,) * (y.ndim - 1) + y.shape[-1:])
        return y

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, L, E] -> [B, L, E]
        dtype = self.dtype or x.dtype
        K, L = self.kernel_size, x.shape[1]
        w = self.kernel[...].astype(dtype)
        xp = jnp.pad(x.astype(dtype), ((0, 0), (K - 1, 0), (0, 0)))  # [B, K − 1 + L, E]
        y = sum(xp[:, k : k + L] * w[k][None, None] for k in range(K))  # [B, L, E]
        return self._finish(y)

    def step(self, window: jax.Array) -> jax.Array:  # [B, K, E] (last K inputs) -> [B, E]
        dtype = self.dtype or window.dtype
        y = jnp.einsum("bke,ke->be", window.astype(dtype), self.kernel[...].astype(dtype))
        return self._finish(y)


class DeltaProjection(nnx.Module):
    """Mamba's Δ projection ``Δ = softplus(δ W + b)`` (the reference ``dt_proj``), Δ in float32.

    ``kernel [R, E]`` is U(±R^{−½}); the bias ``[E]`` is float32 and ``no_decay`` whatever
    ``param_dtype``, initialised to softplus⁻¹(dt) with dt log-uniform in [dt_min, dt_max]
    floored at ``dt_init_floor`` (so the initial Δ lies in that range). The bias is added and
    the softplus taken in float32, as the reference does inside its scan.
    """

    def __init__(
        self,
        dt_rank: int,
        features: int,
        *,
        dt_min: float,
        dt_max: float,
        dt_init_floor: float,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.kernel = logical_param(
            _uniform(dt_rank**-0.5)(rngs.params(), (dt_rank, features), param_dtype),
            (None, "mlp"),
        )
        log_dt = jax.random.uniform(
            rngs.params(), (features,), jnp.float32, math.log(dt_min), math.log(dt_max)
        )
        dt = jnp.maximum(jnp.exp(log_dt), dt_init_floor)
        inv_softplus = dt + jnp.log(-jnp.expm1(-dt))
        self.bias = logical_param(inv_softplus, ("mlp",), no_decay=True)  # [E]
        self.dtype = dtype

    def __call__(self, dt: jax.Array) -> jax.Array:  # [..., R] -> [..., E] float32
        dtype = self.dtype or dt.dtype
        dt = dense(dt.astype(dtype), self.kernel[...].astype(dtype)).astype(jnp.float32)
        return jax.nn.softplus(dt + self.bias[...].reshape((1,) * (dt.ndim - 1) + (-1,)))


class MambaBlock(nnx.Module):
    r"""The Mamba (S6) mixer: gated, convolved, input-selective diagonal SSM.

    With :math:`x` the input ``[B, L, D]``:

    .. math::

        (u, z) &= x W_{\text{in}}, \qquad
        u \leftarrow \operatorname{silu}(\operatorname{conv1d}(u)), \qquad
        (\delta, B, C) = u W_x, \\
        \Delta &= \operatorname{softplus}(\delta W_\Delta + b_\Delta), \qquad
        A = -\exp(A_{\log}), \\
        h_t &= \exp(\Delta_t A) \odot h_{t-1} + \Delta_t B_t u_t, \qquad
        y_t = (\langle h_t, C_t \rangle + D \odot u_t) \odot \operatorname{silu}(z_t), \\
        \text{out} &= y W_{\text{out}},

    the reference ``Mamba`` block (non-fused path): ``in_proj`` (D → 2E, u first, z second),
    causal depthwise ``conv1d`` (width ``d_conv``, left padding) + SiLU, ``x_proj``
    (E → R + 2N), ``dt_proj`` (R → E; its bias b_Δ enters inside the softplus, in float32),
    ``A_log`` (S4D-Real init A = −(1, …, N) per channel), ``D`` (ones), the selective scan
    (:func:`jaxdiv.models.ssm.selective_scan.selective_scan`) and ``out_proj`` (E → D).

    Initialisation follows the reference: Linear and conv weights U(±1/√fan_in) (PyTorch's
    default; the model-level rescaling of ``out_proj`` is the caller's), ``dt_proj.kernel``
    U(±R^{−½}), ``dt_proj.bias`` = softplus⁻¹(dt) with dt log-uniform in [dt_min, dt_max]
    floored at ``dt_init_floor``, projection biases zero. ``A_log``, ``D`` and ``dt_proj.bias``
    are float32 and carry ``no_decay``, whatever ``param_dtype``.

    Padding (``where`` False): the input and the conv input are zeroed and Δ = 0 there, an exact
    identity step of the scan, so padded positions (left, right or in between) never influence
    real ones. Decoding: :meth:`init_cache` and :meth:`step` (conv window + SSM state).

    Args:
      d_model: D, the model width.
      d_state: N, the SSM state size per channel.
      d_conv: K, the causal conv width.
      expand: E = expand · D.
      dt_rank: R, the rank of the Δ projection; ``"auto"`` is ⌈D/16⌉.
      dt_min: smallest initial Δ.
      dt_max: largest initial Δ.
      dt_init_floor: floor of the initial Δ.
      conv_bias: give ``conv1d`` a bias.
      bias: give ``in_proj`` and ``out_proj`` biases.
      scan_method: ``method`` of ``selective_scan`` (``"auto"``, ``"sequential"``,
        ``"associative"``, ``"chunked"``).
      dtype: compute dtype (default: the input's); the scan and its state run in float32.
      param_dtype: storage dtype of the projection and conv weights.
      rngs: ``nnx.Rngs`` (``params`` stream).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from jaxdiv.models.ssm.mamba import MambaBlock
      >>> block = MambaBlock(16, rngs=nnx.Rngs(0))
      >>> x = jax.random.normal(jax.random.key(1), (2, 8, 16))
      >>> y = block(x)
      >>> cache = block.init_cache(2, 8)
      >>> y0, cache = block.step(x[:, 0], cache)
      >>> y.shape, bool(jnp.allclose(y0, y[:, 0], atol=1e-5))
      ((2, 8, 16), True)

    References:
      Gu and Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
      https://arxiv.org/abs/2312.00752, Algorithm 2, Section 3.4 and Figure 3.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        scan_method: str = "auto",
        sequence_axis: str | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        d_model = checks.positive_int(d_model, "d_model")
        d_state = checks.positive_int(d_state, "d_state")
        d_conv = checks.positive_int(d_conv, "d_conv")
        expand = checks.positive_int(expand, "expand")
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        dt_rank = checks.positive_int(dt_rank, "dt_rank")
        checks.positive(dt_min, "dt_min")
        checks.positive(dt_max, "dt_max")
        if dt_min > dt_max:
            raise ValueError(f"`dt_min` must be <= `dt_max`, got {dt_min} > {dt_max}.")
        checks.scalar_in_range(dt_init_floor, "dt_init_floor", low=0.0)
        checks.one_of(scan_method, "scan_method", SCAN_METHODS)
        d_inner = expand * d_model
        self.d_model, self.d_state, self.d_conv, self.d_inner = d_model, d_state, d_conv, d_inner
        self.dt_rank, self.scan_method, self.dtype = dt_rank, scan_method, dtype
        self.sequence_axis = sequence_axis  # sequence parallelism (see parallel.sequence_mesh)

        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.in_proj = Linear(
            d_model,
            2 * d_inner,
            axes=("embed", "mlp"),
            use_bias=bias,
            kernel_init=_torch_default_init,
            **kw,
        )
        self.conv1d = CausalConv1d(d_inner, d_conv, use_bias=conv_bias, **kw)
        self.x_proj = Linear(
            d_inner,
            dt_rank + 2 * d_state,
            axes=("mlp", None),
            kernel_init=_torch_default_init,
            **kw,
        )
        self.dt_proj = DeltaProjection(
            dt_rank,
            d_inner,
            dt_min=dt_min,
            dt_max=dt_max,
            dt_init_floor=dt_init_floor,
            **kw,
        )
        A = jnp.broadcast_to(jnp.arange(1, d_state + 1, dtype=jnp.float32), (d_inner, d_state))
        self.A_log = logical_param(jnp.log(A), ("mlp", "state"), no_decay=True)  # [E, N]
        self.D = logical_param(jnp.ones((d_inner,), jnp.float32), ("mlp",), no_decay=True)  # [E]
        self.out_proj = Linear(
            d_inner,
            d_model,
            axes=("mlp", "embed"),
            use_bias=bias,
            kernel_init=_torch_default_init,
            **kw,
        )

    def _ssm_inputs(self, u: jax.Array):
        """x_proj and dt_proj: u ``[..., E]`` → (Δ float32 ``[..., E]``, B, C ``[..., N]``)."""
        R, N = self.dt_rank, self.d_state
        dt, B, C = jnp.split(self.x_proj(u), [R, R + N], axis=-1)  # [..., R], [..., N] x 2
        return self.dt_proj(dt), B, C

    def __call__(self, x, *, where=None) -> jax.Array:
        """Parallel (training) form: ``x [B, L, D]`` → ``[B, L, D]`` in ``dtype``.

        Args:
          x: input ``[B, L, D]``.
          where: bool ``[B, L]``, True at real tokens (None: all real).
        """
        x = _check_x(x, 3, self.d_model, "[B, L, D]")
        where = _check_where(where, x.shape[:2])
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        if where is not None:
            x = jnp.where(where[..., None], x, 0)
        u, z = jnp.split(self.in_proj(x), 2, axis=-1)  # [B, L, E] each
        if where is not None:
            u = jnp.where(where[..., None], u, 0)
        u = jax.nn.silu(self.conv1d(u))  # [B, L, E]
        delta, B, C = self._ssm_inputs(u)
        if where is not None:
            delta = jnp.where(where[..., None], delta, 0)
        A = -jnp.exp(self.A_log[...])  # [E, N]
        mesh = sequence_mesh(self.sequence_axis)
        if mesh is None:
            y = selective_scan(u, delta, A, B, C, self.D[...], z, method=self.scan_method)
        else:  # sequence sharded: per-shard scans joined by one all-gather of states
            y = sequence_parallel_selective_scan(
                u, delta, A, B, C, self.D[...], z, mesh=mesh, axis_name=self.sequence_axis
            )
        return self.out_proj(y.astype(dtype))  # [B, L, D]

    def init_cache(self, batch_size: int, max_length: int, *, dtype=jnp.float32) -> dict:
        """Empty decoding cache (the state size does not depend on ``max_length``).

        Args:
          batch_size: B.
          max_length: unused (kept for the common mixer interface).
          dtype: dtype of the conv window (the SSM state is float32).

        Returns:
          ``{"conv": [B, K − 1, E] zeros (the last K − 1 conv inputs),
          "ssm": [B, E, N] float32 zeros}``.
        """
        return {
            "conv": jnp.zeros((batch_size, self.d_conv - 1, self.d_inner), dtype),
            "ssm": jnp.zeros((batch_size, self.d_inner, self.d_state), jnp.float32),
        }

    def step(self, x_t, cache: dict) -> tuple[jax.Array, dict]:
        """One decoding step: ``x_t [B, D]`` → ``(y_t [B, D], new cache)``, as :meth:`__call__`.

        Args:
          x_t: the current token's input ``[B, D]``.
          cache: from :meth:`init_cache` or a previous step.
        """
        x_t = _check_x(x_t, 2, self.d_model, "[B, D]")
        dtype = self.dtype or x_t.dtype
        u, z = jnp.split(self.in_proj(x_t.astype(dtype)), 2, axis=-1)  # [B, E] each
        conv = cache["conv"]
        window = jnp.concatenate([conv, u[:, None].astype(conv.dtype)], axis=1)  # [B, K, E]
        u = jax.nn.silu(self.conv1d.step(window))  # [B, E]
        delta, B, C = self._ssm_inputs(u)
        A = -jnp.exp(self.A_log[...])  # [E, N]
        y, h = selective_scan_step(cache["ssm"], u, delta, A, B, C, self.D[...], z)
        new_cache = {"conv": window[:, 1:], "ssm": h.astype(cache["ssm"].dtype)}
        return self.out_proj(y.astype(dtype)), new_cache  # [B, D]


# PyTorch key -> (path in the block, transpose to our layout)
_TORCH_KEYS = {
    "in_proj.weight": (("in_proj", "kernel"), lambda w: w.T),
    "in_proj.bias": (("in_proj", "bias"), None),
    "conv1d.weight": (("conv1d", "kernel"), lambda w: w[:, 0, :].T),
    "conv1d.bias": (("conv1d", "bias"), None),
    "x_proj.weight": (("x_proj", "kernel"), lambda w: w.T),
    "dt_proj.weight": (("dt_proj", "kernel"), lambda w: w.T),
    "dt_proj.bias": (("dt_proj", "bias"), None),
    "A_log": (("A_log",), None),
    "D": (("D",), None),
    "out_proj.weight": (("out_proj", "kernel"), lambda w: w.T),
    "out_proj.bias": (("out_proj", "bias"), None),
}


def _torch_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch layout of one of our parameters."""
    if key == "conv1d.weight":
        return (shape[1], 1, shape[0])
    if key.endswith(".weight"):
        return shape[::-1]
    return shape


def load_torch_mamba(block: MambaBlock, state_dict: Mapping) -> MambaBlock:
    """Copies a reference / Hugging Face Mamba mixer state dict into ``block`` (in place).

    Keys (PyTorch layouts): ``in_proj.weight`` ``[2E, D]``, ``conv1d.weight`` ``[E, 1, K]``,
    ``conv1d.bias`` ``[E]``, ``x_proj.weight`` ``[R + 2N, E]``, ``dt_proj.weight`` ``[E, R]``,
    ``dt_proj.bias`` ``[E]``, ``A_log`` ``[E, N]``, ``D`` ``[E]``, ``out_proj.weight``
    ``[D, E]``, and ``in_proj.bias`` / ``out_proj.bias`` / ``conv1d.bias`` exactly when the
    block has them (``bias=True`` / ``conv_bias=True``). Weights are transposed to our
    ``[in, out]`` / ``[K, E]`` layouts and cast to each parameter's dtype. Strip any prefix
    (``backbone.layers.0.mixer.``) first. Everything is checked before anything is written.

    Args:
      block: the target :class:`MambaBlock` (its configuration must match the weights).
      state_dict: mapping from the keys above to arrays: NumPy, or anything ``np.asarray``
        accepts (e.g. ``{k: v.detach().float().numpy() for k, v in mixer.state_dict().items()}``
        for a PyTorch module; NumPy has no bfloat16).

    Returns:
      ``block``, updated in place.

    Raises:
      ValueError: unknown or missing keys (listed), or a shape mismatch (naming the key).

    Examples:
      >>> import numpy as np
      >>> from flax import nnx
      >>> from jaxdiv.models.ssm.mamba import MambaBlock, load_torch_mamba
      >>> block = MambaBlock(16, rngs=nnx.Rngs(0))
      >>> sd = {"D": np.zeros(32), "A_log": np.zeros((32, 16)),
      ...       "in_proj.weight": np.zeros((64, 16)), "conv1d.weight": np.zeros((32, 1, 4)),
      ...       "conv1d.bias": np.zeros(32), "x_proj.weight": np.zeros((33, 32)),
      ...       "dt_proj.weight": np.zeros((32, 1)), "dt_proj.bias": np.zeros(32),
      ...       "out_proj.weight": np.ones((16, 32))}
      >>> float(load_torch_mamba(block, sd).out_proj.kernel[...].sum())
      512.0

    References:
      Gu and Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
      https://arxiv.org/abs/2312.00752 (reference code: ``mamba_ssm/modules/mamba_simple.py``).
    """
    expected = {}
    for key, (path, transform) in _TORCH_KEYS.items():
        owner = block
        for name in path[:-1]:
            owner = getattr(owner, name)
        param = getattr(owner, path[-1])
        if param is not None:
            expected[key] = (param, transform)
    unknown = sorted(set(state_dict) - set(expected))
    missing = sorted(set(expected) - set(state_dict))
    if unknown or missing:
        raise ValueError(
            f"state_dict keys do not match the MambaBlock: unknown keys {unknown}, "
            f"missing keys {missing}."
        )
    values = {}
    for key, (param, transform) in expected.items():
        value = np.asarray(state_dict[key])
        want = _torch_shape(key, tuple(param[...].shape))
        if value.shape != want:
            raise ValueError(
                f"state_dict[{key!r}] must have shape {want} for this MambaBlock, "
                f"got {value.shape}."
            )
        values[key] = jnp.asarray(transform(value) if transform else value, param[...].dtype)
    for key, (param, _) in expected.items():
        param[...] = values[key]
    return block
