"""From (student, teacher) logits to safe log-probabilities: the shared front end of every loss.

``log_probs`` implements API.md §1 once: dtype/shape/axis checks, the float32-at-least compute
dtype, the temperature, and the ``where`` mask with the double-``where`` rule (masked rows and
masked classes are replaced *before* the softmax, so NaN/-inf there never reaches values or
gradients). Per-row divergences then only see ``[..., V]`` log-probabilities whose zero
probabilities are exactly ``-inf``, and ``finish`` zeroes the masked rows of the result.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import checks


class LogProbs(NamedTuple):
    """Log-probabilities on the last axis, in the compute dtype."""

    student: jax.Array  # [..., V] log p_s (-inf where p_s = 0)
    teacher: jax.Array  # [..., V] log p_t
    row_mask: jax.Array | None  # [...] bool, False for rows that must give exactly 0


def split_where(
    where: ArrayLike | None, shape: tuple[int, ...], axis: int
) -> tuple[jax.Array | None, jax.Array | None]:
    """Splits a ``where`` mask into (row_mask [...], class_mask [..., V]) with ``axis`` last."""
    if where is None:
        return None, None
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(f"`where` must be a boolean mask, got dtype {where.dtype}.")
    row_shape = shape[:axis] + shape[axis + 1 :]
    if where.shape == shape:
        return None, jnp.moveaxis(where, axis, -1)
    if where.shape == row_shape:
        return where, None
    raise ValueError(
        f"`where` must have shape {row_shape} (per row) or {shape} (per class), got {where.shape}."
    )


def log_probs(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float | jax.Array = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> LogProbs:
    """Checks the inputs and returns masked, tempered log-softmaxes with ``axis`` moved last."""
    s = checks.float_array(student_logits, "student_logits")
    t = checks.float_array(teacher_logits, "teacher_logits")
    checks.same_shape(s, t, ("student_logits", "teacher_logits"))
    checks.min_rank(s, 1, "student_logits", "[..., V]")
    axis = checks.canonical_axis(axis, s.ndim)
    checks.positive(temperature, "temperature")
    row_mask, class_mask = split_where(where, s.shape, axis)

    dtype = checks.compute_dtype(s, t)
    s = jnp.moveaxis(s.astype(dtype), axis, -1)
    t = jnp.moveaxis(t.astype(dtype), axis, -1)
    if class_mask is not None:
        # Removing classes = slicing them out of both arrays: they get probability 0.
        s = jnp.where(class_mask, s, -jnp.inf)
        t = jnp.where(class_mask, t, -jnp.inf)
        row_mask = jnp.any(class_mask, axis=-1)
    if row_mask is not None:
        # First `where`: masked rows become harmless zeros before any log/exp.
        s = jnp.where(row_mask[..., None], s, 0.0)
        t = jnp.where(row_mask[..., None], t, 0.0)
    temperature = jnp.asarray(temperature, dtype)
    return LogProbs(_log_softmax(s / temperature), _log_softmax(t / temperature), row_mask)


def _log_softmax(x: jax.Array) -> jax.Array:
    # Shift by the row max first, then subtract log Σ e^shifted ∈ [0, log V]: `x − logsumexp(x)`
    # loses the log V term to rounding once |x| is huge (1e30 + log 5 == 1e30 in float32, so a
    # uniform row got log p = 0 for every class, and divergences went negative). Written out
    # rather than jax.nn.log_softmax so that XLA fuses it into its consumers.
    shifted = x - jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def finish(values: jax.Array, row_mask: jax.Array | None) -> jax.Array:
    """Second `where`: masked rows give exactly 0."""
    if row_mask is None:
        return values
    return jnp.where(row_mask, values, 0.0)


def kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    r"""Row-wise :math:`\mathrm{KL}(p\|q) = \sum_v p_v(\log p_v - \log q_v)` on the last axis.

    Classes with :math:`p_v = 0` contribute 0 with finite gradients for both arguments (the
    only non-finite intermediate, ``-inf - -inf``, has constant derivatives and is selected
    away); classes with :math:`p_v > 0 = q_v` make the row :math:`+\infty`, also when
    :math:`p_v` underflows to 0 (no :math:`0\cdot\infty`).
    """
    p_pos = log_p > -jnp.inf
    diff = jnp.where(p_pos, log_p - log_q, 0.0)
    infinite = diff == jnp.inf
    # inf is kept out of the product too, so an infinite row has finite gradients where its
    # cotangent is 0 (e.g. a row that a later mask drops).
    term = jnp.where(infinite, jnp.inf, jnp.exp(log_p) * jnp.where(infinite, 0.0, diff))
    return jnp.sum(term, axis=-1)


def weighted_expm1(log_w: jax.Array, x: jax.Array) -> jax.Array:
    r""":math:`w\,(e^{x} - 1)` for :math:`w = e^{\log w}`, exact near :math:`x = 0` and free of
    :math:`0\cdot\infty` when :math:`w` underflows while :math:`e^{x}` overflows."""
    pos = x > 0
    x_pos = jnp.where(pos, x, 1.0)
    # For x > 0: w (e^x - 1) = exp(log w + x + log(1 - e^{-x})).
    big = jnp.exp(log_w + x_pos + jnp.log(-jnp.expm1(-x_pos)))
    small = jnp.exp(log_w) * jnp.expm1(jnp.where(pos, 0.0, x))
    return jnp.where(pos, big, small)
