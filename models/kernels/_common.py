"""Helpers shared by the Pallas kernels: interpret mode, per-target compiler parameters, padding."""

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl


def resolve_interpret(interpret: bool | None) -> bool:
    """``None`` → interpret mode exactly when the default backend is the CPU."""
    if interpret is None:
        return jax.default_backend() == "cpu"
    return bool(interpret)


def pallas_call(kernel, *, grid: tuple[int, ...], interpret: bool, **kwargs):
    """``pl.pallas_call`` with each target's compiler parameters, chosen when lowering.

    The parameters are picked per *lowering* platform with ``lax.platform_dependent`` (not
    from ``jax.default_backend()``), so a function exported for TPU or GPU from a CPU host
    (``jax.export``) gets the target's kernel: TPU (Mosaic) with every grid dimension
    ``"parallel"`` (megacore may split them); CUDA and ROCm (Triton) with 4 warps and one
    pipeline stage (the kernels loop over time themselves). Untuned: no accelerator run has
    been made. Elsewhere (CPU) Pallas refuses to lower: ``interpret=True`` runs the Pallas
    interpreter on any platform.
    """
    if interpret:
        return pl.pallas_call(kernel, grid=grid, interpret=True, **kwargs)
    from jax.experimental.pallas import tpu as pltpu
    from jax.experimental.pallas import triton as pltriton

    def with_params(params):
        call = pl.pallas_call(kernel, grid=grid, compiler_params=params, **kwargs)
        return lambda *args: call(*args)

    tpu = pltpu.CompilerParams(dimension_semantics=("parallel",) * len(grid))
    triton = with_params(pltriton.CompilerParams(num_warps=4, num_stages=1))
    return lambda *args: lax.platform_dependent(
        *args, tpu=with_params(tpu), cuda=triton, rocm=triton, default=with_params(None)
    )


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
