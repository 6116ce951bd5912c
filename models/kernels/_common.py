"""Helpers shared by the Pallas kernels: interpret mode, per-target compiler parameters,
padding, and stand-ins for cost accounting."""

import contextlib
import contextvars

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

_STAND_IN = "stand-in"  # a resolved ``interpret`` value: static, so part of trace-cache keys
_STAND_INS_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "kernel_stand_ins", default=False
)


@contextlib.contextmanager
def kernels_as_stand_ins():
    """Cost accounting without a device (the ``accelerators`` benchmark): while active, every
    kernel call traced is a host callback with the kernel's signature that computes nothing,
    so a program that calls kernels compiles on the CPU with each kernel one custom call (its
    traffic is counted from its BlockSpecs apart: ``benchmarks.accelerators.kernel_traffic``).
    The kernels resolve ``interpret`` to a distinct static value meanwhile, so no trace cached
    outside the context is reused inside it, nor the reverse."""
    token = _STAND_INS_ACTIVE.set(True)
    try:
        yield
    finally:
        _STAND_INS_ACTIVE.reset(token)


def _stand_in(*, out_shape, **_):
    zeros = lambda *_: tuple(np.zeros(o.shape, o.dtype) for o in out_shape)
    return lambda *args: jax.pure_callback(zeros, tuple(out_shape), *args)


def resolve_interpret(interpret: bool | None) -> bool | str:
    """``None`` → interpret mode exactly when the default backend is the CPU (inside
    :func:`kernels_as_stand_ins`: the stand-in marker, whatever ``interpret``)."""
    if _STAND_INS_ACTIVE.get():
        return _STAND_IN
    if interpret is None:
        return jax.default_backend() == "cpu"
    return bool(interpret)


def pallas_call(kernel, *, grid: tuple[int, ...], interpret: bool | str, **kwargs):
    """``pl.pallas_call`` with each target's compiler parameters, chosen when lowering.

    The parameters are picked per *lowering* platform with ``lax.platform_dependent`` (not
    from ``jax.default_backend()``), so a function exported for TPU or GPU from a CPU host
    (``jax.export``) gets the target's kernel: TPU (Mosaic) with every grid dimension
    ``"parallel"`` (megacore may split them); CUDA and ROCm (Triton) with 4 warps and one
    pipeline stage (the kernels loop over time themselves). Untuned: no accelerator run has
    been made. Elsewhere (CPU) Pallas refuses to lower: ``interpret=True`` runs the Pallas
    interpreter on any platform.
    """
    if interpret == _STAND_IN:
        return _stand_in(**kwargs)
    if interpret:
        return pl.pallas_call(kernel, grid=grid, interpret=True, **kwargs)
    from jax.experimental.pallas import tpu as pltpu
    from jax.experimental.pallas import triton as pltriton

    def with_params(params):
        return pl.pallas_call(kernel, grid=grid, compiler_params=params, **kwargs)

    tpu = pltpu.CompilerParams(dimension_semantics=("parallel",) * len(grid))
    triton = with_params(pltriton.CompilerParams(num_warps=4, num_stages=1))
    return lambda *args: lax.platform_dependent(
        *args, tpu=with_params(tpu), cuda=triton, rocm=triton, default=with_params(None)
    )


def mm(a, b, ta: bool = False, tb: bool = False) -> jax.Array:
    """a @ b with optional transposes, float32 (or wider) accumulation at full precision."""
    dims = (((0 if ta else 1,), (1 if tb else 0,)), ((), ()))
    out = jnp.promote_types(a.dtype, jnp.float32)
    return lax.dot_general(a, b, dims, precision=lax.Precision.HIGHEST, preferred_element_type=out)


def causal_mask(C: int) -> jax.Array:
    """``[C, C]`` booleans, True where l ≥ s (row l, column s)."""
    return lax.broadcasted_iota(jnp.int32, (C, C), 0) >= lax.broadcasted_iota(jnp.int32, (C, C), 1)


def head_decays(G: jax.Array, mask: jax.Array) -> jax.Array:
    """``[C, C]`` e^{G_l − G_s} where ``mask`` (l ≥ s), exactly 0 above; G ``[C, 1]`` holds
    chunk-local cumulative log decays, so no exponent on the mask is positive."""
    return jnp.exp(jnp.where(mask, G - G.T, -jnp.inf))


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
