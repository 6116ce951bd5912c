"""Building blocks shared by every model family: parameters with logical axes, norms, dense layers.

# B batch, L length, D model width (d_model), F MLP width, V vocab

Every parameter is an ``nnx.Param`` carrying

* ``logical_axes``: a tuple of *logical* axis names (``"embed"``, ``"mlp"``, ``"heads"``,
  ``"vocab"``, ``"state"``, ``None``), mapped to mesh axes by the training code
  (``jaxdiv.train.sharding``). A key of our own, not Flax's ``out_sharding``: Flax would
  apply that eagerly under a mesh context, where logical names are not mesh axes;
* ``no_decay=True`` for parameters that take no weight decay (norm scales, biases, SSM
  ``A_log``, ``D``, Δ biases, ...); :func:`decay_mask` turns the marks into an optax mask.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]

default_kernel_init = nnx.initializers.lecun_normal()


def logical_param(value: jax.Array, axes: Sequence[str | None], *, no_decay: bool = False):
    """An ``nnx.Param`` holding ``value`` with logical sharding ``axes`` and a decay mark."""
    if len(axes) != jnp.ndim(value):
        raise ValueError(f"`axes` must name each of the {jnp.ndim(value)} dims, got {axes}.")
    return nnx.Param(value, logical_axes=tuple(axes), no_decay=no_decay)


def decay_mask(state: nnx.State) -> nnx.State:
    """Pytree of bools, True where weight decay applies (for ``optax.adamw(mask=...)``)."""
    return jax.tree.map(
        lambda v: not v.get_metadata().get("no_decay", False),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def _lead(v: jax.Array, ndim: int) -> jax.Array:
    """``v [F]`` as ``[1, ..., 1, F]`` of rank ``ndim`` (explicit: no implicit rank promotion)."""
    return v.reshape((1,) * (ndim - 1) + v.shape)


def _model_parallel_mesh() -> bool:
    """Whether the mesh in context shards the sequence or the tensor axis."""
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and any(mesh.shape.get(a, 1) > 1 for a in ("sequence", "tensor"))


def dense(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x [..., in] @ w [in, out]``.

    Without sequence or tensor sharding it is one 2-D matmul over the rows flattened to
    ``[-1, in]``: XLA:CPU compiles the backward of a rank-3 ``dot`` with an extra transpose,
    which the flattened form avoids (the benchmark suite's ``kernels`` section) with the same
    numbers. When the mesh in context shards the sequence or the tensor axis, flattening
    [B, L] would merge a sharded dim into one XLA cannot split, and it would all-gather the
    sequence: then it is an N-D contraction that keeps every dim's sharding.
    """
    if x.ndim > 2 and _model_parallel_mesh():
        return jnp.einsum("...i,io->...o", x, w)  # [..., out]
    y = jnp.dot(x.reshape(-1, x.shape[-1]), w)  # [rows, out]
    return y.reshape(*x.shape[:-1], w.shape[-1])  # [..., out]


class Linear(nnx.Module):
    """``y = x W (+ b)`` with logical axes on ``W [in, out]``; compute in ``dtype``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        axes: Axes = ("embed", "mlp"),
        use_bias: bool = False,
        kernel_init=default_kernel_init,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.kernel = logical_param(
            kernel_init(rngs.params(), (in_features, out_features), param_dtype), axes
        )
        self.bias = (
            logical_param(jnp.zeros((out_features,), param_dtype), axes[-1:], no_decay=True)
            if use_bias
            else None
        )
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or jnp.result_type(x, self.kernel[...])
        y = dense(x.astype(dtype), self.kernel[...].astype(dtype))  # [..., out]
        if self.bias is not None:
            y = y + _lead(self.bias[...].astype(dtype), y.ndim)
        return y


class RMSNorm(nnx.Module):
    """Root-mean-square layer norm (Zhang & Sennrich 2019), statistics in float32."""

    def __init__(
        self,
        features: int,
        *,
        eps: float = 1e-6,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        self.scale = logical_param(jnp.ones((features,), param_dtype), ("embed",), no_decay=True)
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (y * _lead(self.scale[...].astype(jnp.float32), y.ndim)).astype(
            self.dtype or x.dtype
        )


class MLP(nnx.Module):
    """Gated SiLU feed-forward block (SwiGLU, Shazeer 2020): ``W_o (silu(x W_g) ⊙ x W_u)``."""

    def __init__(
        self, d_model: int, hidden: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate = Linear(d_model, hidden, axes=("embed", "mlp"), **kw)
        self.up = Linear(d_model, hidden, axes=("embed", "mlp"), **kw)
        self.down = Linear(hidden, d_model, axes=("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, L, D] -> [B, L, D]
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))
