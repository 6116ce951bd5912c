"""Reductions of unreduced per-row losses."""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def masked_mean(
    values: ArrayLike, where: ArrayLike | None = None, *, axis: int | tuple[int, ...] | None = None
) -> jax.Array:
    r"""Mean of ``values`` over the entries selected by ``where``; 0 when none is selected.

    .. math::
        \bar x = \frac{\sum_i w_i x_i}{\max(1, \sum_i w_i)}

    Unselected entries are replaced by 0 before the sum (double-``where``), so NaN or inf
    there never reaches the value or the gradient.

    Args:
        values: array of per-row values, shape ``[...]``.
        where: optional boolean mask broadcastable to ``values``; ``None`` selects everything.
        axis: axis or axes to reduce (``None``: all).

    Returns:
        The mean, shape of ``values`` without ``axis``, dtype at least float32.

    Examples:
        >>> import jax.numpy as jnp, jaxdiv
        >>> x = jnp.array([1.0, 2.0, jnp.nan])
        >>> print(jaxdiv.masked_mean(x, jnp.array([True, True, False])))
        1.5
        >>> print(jaxdiv.masked_mean(x, jnp.zeros(3, bool)))
        0.0
    """
    values = jnp.asarray(values)
    dtype = jnp.promote_types(values.dtype, jnp.float32)
    values = values.astype(dtype)
    if where is None:
        return jnp.mean(values, axis=axis)
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(f"`where` must be a boolean mask, got dtype {where.dtype}.")
    try:
        where = jnp.broadcast_to(where, values.shape)
    except ValueError:
        raise ValueError(
            f"`where` must broadcast to the shape of `values` {values.shape}, got {where.shape}."
        ) from None
    total = jnp.sum(jnp.where(where, values, 0.0), axis=axis)
    count = jnp.sum(where, axis=axis, dtype=dtype)
    return total / jnp.maximum(count, 1.0)
