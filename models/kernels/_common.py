"""Helpers shared by the Pallas kernels: interpret mode, compiler parameters, padding."""

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


def resolve_interpret(interpret: bool | None) -> bool:
    """``None`` → interpret mode exactly when the default backend is the CPU."""
    if interpret is None:
        return jax.default_backend() == "cpu"
    return bool(interpret)


def compiler_params(num_grid_dims: int, *, interpret: bool) -> pl.CompilerParams | None:
    """Per-backend compiler parameters for a grid whose every dimension is independent.

    TPU (Mosaic): every grid dimension ``"parallel"`` (megacore may split them); GPU (Triton):
    4 warps, one pipeline stage (the kernels loop over time themselves). Untuned: no
    accelerator run has been made.
    """
    if interpret:
        return None
    backend = jax.default_backend()
    if backend == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.CompilerParams(dimension_semantics=("parallel",) * num_grid_dims)
    if backend == "gpu":
        from jax.experimental.pallas import triton as pltriton

        return pltriton.CompilerParams(num_warps=4, num_stages=1)
    return None


def pad_axis(x: jax.Array, axis: int, multiple: int) -> jax.Array:
    """Zero-pads ``axis`` of ``x`` up to a multiple of ``multiple``."""
    pad = -x.shape[axis] % multiple
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths)


def check_block(value: int, name: str) -> int:
    """A positive int block size (``ValueError`` otherwise)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return value
