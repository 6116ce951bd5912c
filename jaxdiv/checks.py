"""Input checks shared by every loss: run at trace time, raise with "expected ... got ...".

Checks never use ``assert`` (user input) and never look at array *values* inside ``jit``:
hyperparameter range checks run only when the value is concrete (a Python number or a
non-traced array), so schedules passed as traced scalars never retrace or fail.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


def float_array(x: ArrayLike, name: str) -> jax.Array:
    """Converts ``x`` to an array and checks it has a floating dtype (``TypeError`` if not)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must have a floating dtype, got dtype {x.dtype}.")
    return x


def compute_dtype(*arrays: ArrayLike) -> jnp.dtype:
    """The dtype the math runs in: the inputs' common dtype, at least float32."""
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def same_shape(a: jax.Array, b: jax.Array, names: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"`{names[0]}` and `{names[1]}` must have the same shape, got {a.shape} and {b.shape}."
        )


def min_rank(x: jax.Array, rank: int, name: str, layout: str) -> None:
    if x.ndim < rank:
        raise ValueError(f"`{name}` must have rank >= {rank} ({layout}), got shape {x.shape}.")


def exact_shape(x: jax.Array, shape: Sequence[int], name: str, layout: str) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"`{name}` must have shape {tuple(shape)} ({layout}), got {x.shape}.")


def canonical_axis(axis: int, ndim: int) -> int:
    """Returns ``axis`` as a non-negative index, ``ValueError`` if out of range."""
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise ValueError(f"`axis` must be an int, got {axis!r}.")
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"`axis` must be in [-{ndim}, {ndim}) for inputs of rank {ndim}, got {axis}."
        )
    return int(axis) % ndim


def concrete(value: ArrayLike) -> float | None:
    """The value of a scalar hyperparameter as a float, or None while it is traced."""
    try:
        arr = np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
    if arr.shape != ():
        raise ValueError(f"hyperparameters must be scalars, got shape {arr.shape}.")
    return float(arr)


def scalar_in_range(
    value: ArrayLike,
    name: str,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """``ValueError`` unless ``value`` is finite and in the interval (checked when concrete)."""
    v = concrete(value)
    if v is None:
        return
    below = v <= low if low_open else v < low
    above = v >= high if high_open else v > high
    if not math.isfinite(v) or below or above:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"`{name}` must be a finite number in {interval}, got {v}.")


def positive(value: ArrayLike, name: str) -> None:
    scalar_in_range(value, name, low=0.0, low_open=True)


def one_of(value: str, name: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {sorted(choices)}, got {value!r}.")


def _static_int(value, name: str, low: int, expected: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"`{name}` must be {expected}, got {value!r}.")
    return int(value)


def int_at_least(value: object, name: str, low: int) -> int:
    """``value`` as a Python int; ``ValueError`` unless it is a (static) integer ≥ ``low``."""
    return _static_int(value, name, low, f"an int >= {low}")


def positive_int(value: object, name: str) -> int:
    """``value`` as a Python int; ``ValueError`` unless it is a positive (static) integer."""
    return _static_int(value, name, 1, "a positive int")
