"""Self-distillation objectives: PS-KD progressive soft targets and the Distiller MI-α bound."""

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import checks

# B batch, C classes


def pskd_targets(
    labels_onehot: ArrayLike,
    prev_probs: ArrayLike,
    *,
    epoch: float | jax.Array,
    num_epochs: float | jax.Array,
    alpha_T: float | jax.Array = 0.8,
) -> jax.Array:
    r"""PS-KD soft targets: the labels mixed with the model's own predictions from the last epoch.

    .. math::

        \tilde y_t = (1 - \alpha_t)\,y + \alpha_t\,P_{t-1}(x), \qquad
        \alpha_t = \alpha_T\,\frac{t + 1}{E},

    with :math:`y` the one-hot label, :math:`P_{t-1}(x)` the softmax prediction recorded for the
    same sample in the previous epoch (the reference initialises it to the one-hot label in epoch
    0), :math:`t` = ``epoch`` counted from 0 and :math:`E` = ``num_epochs`` (the reference's
    ``end_epoch``), so :math:`\alpha_t` grows linearly to :math:`\alpha_T` in the last epoch.
    The PS-KD loss is the soft cross-entropy against these targets, e.g.
    ``optax.softmax_cross_entropy(logits, targets)`` (averaged over the batch, no temperature).
    ``prev_probs`` are stored values; gradients are not stopped here.

    Args:
      labels_onehot: ``[..., C]`` one-hot labels y (float).
      prev_probs: ``[..., C]`` previous-epoch probabilities :math:`P_{t-1}(x)`.
      epoch: t, the current epoch in ``[0, num_epochs - 1]`` (a Python number or a JAX scalar).
      num_epochs: E > 0, the total number of epochs.
      alpha_T: :math:`\alpha_T \in [0, 1]`, the final mixing weight (0.8 in the paper).

    Returns:
      ``[..., C]`` targets, float32 (float64 for float64 inputs under x64).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdiv._self_distillation import pskd_targets
      >>> y = jnp.array([[0.0, 1.0, 0.0]])
      >>> prev = jnp.array([[0.2, 0.5, 0.3]])
      >>> targets = pskd_targets(y, prev, epoch=9, num_epochs=10)  # alpha_t = 0.8
      >>> [[round(v, 3) for v in row] for row in targets.tolist()]
      [[0.16, 0.6, 0.24]]

    References:
      Kim, Ji, Yoon, Hwang, "Self-Knowledge Distillation with Progressive Refinement of
      Targets", ICCV 2021, https://arxiv.org/abs/2006.12000 (code
      https://github.com/lgcnsai/PS-KD-Pytorch, ``main.py``: ``alpha_T * (epoch + 1) / end_epoch``).
    """
    y = checks.float_array(labels_onehot, "labels_onehot")
    prev = checks.float_array(prev_probs, "prev_probs")
    checks.same_shape(y, prev, ("labels_onehot", "prev_probs"))
    checks.min_rank(y, 1, "labels_onehot", "[..., C]")
    checks.positive(num_epochs, "num_epochs")
    checks.scalar_in_range(alpha_T, "alpha_T", low=0.0, high=1.0)
    last_epoch = checks.concrete(num_epochs)
    checks.scalar_in_range(
        epoch, "epoch", low=0.0, high=math.inf if last_epoch is None else last_epoch - 1
    )

    dtype = checks.compute_dtype(y, prev)
    alpha_t = jnp.asarray(alpha_T, dtype) * (jnp.asarray(epoch, dtype) + 1) / num_epochs
    return (1 - alpha_t) * y.astype(dtype) + alpha_t * prev.astype(dtype)


def _log_loo_mean(scores: jax.Array) -> jax.Array:
    r"""[B, B]: entry (i, j) is :math:`\log \frac{1}{B-1}\sum_{k \ne j} e^{S_{ik}}`, stably.

    For j other than the row's argmax, the held-out term is at most half the row's total, so
    :math:`\log(\Sigma - e^{S_{ij}}) = \mathrm{lse}_i + \log(1 - e^{S_{ij} - \mathrm{lse}_i})`
    has no cancellation; for the argmax, the row's logsumexp without it is taken directly.
    """
    batch = scores.shape[-1]
    column = jnp.arange(batch)
    is_max = column[None, :] == jnp.argmax(scores, axis=-1)[:, None]  # [B, B]
    # Relative to the row max, so the log-sums stay O(log B): with huge scores, lse - S_ij
    # would otherwise round to 0 (1e30 + log B == 1e30) and give log1p(-1) = -inf, then NaN.
    # The result is shift-equivariant, so the shift carries no gradient.
    peak = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))  # [B, 1]
    x = scores - peak  # [B, B], <= 0
    lse = jax.nn.logsumexp(x, axis=-1, keepdims=True)  # [B, 1]
    held_out = jnp.where(is_max, -jnp.inf, x - lse)  # [B, B], <= -log 2 off the argmax
    without_j = lse + jnp.log1p(-jnp.exp(held_out))  # [B, B]
    without_max = jax.nn.logsumexp(x, axis=-1, where=~is_max)  # [B]
    return peak + jnp.where(is_max, without_max[:, None], without_j) - math.log(batch - 1)


def mi_alpha_bound(
    scores: ArrayLike, log_baseline: ArrayLike, *, alpha: float | jax.Array = 0.5
) -> jax.Array:
    r"""Distiller MI-α: the interpolated InfoNCE/TUBA lower bound on mutual information.

    .. math::

        \tilde I_{ij} &= \log\bigl(\alpha\, e^{m_{ij}} + (1-\alpha)\, e^{b_i}\bigr), \qquad
            m_{ij} = \log\frac{1}{B-1}\sum_{k \ne j} e^{S_{ik}}, \\
        I_\alpha &= 1 + \frac{1}{B(B-1)}\sum_{i \ne j}\bigl(S_{ii} - \tilde I_{ij}\bigr)
            - \frac{1}{B(B-1)}\sum_{i \ne j} e^{S_{ij} - \tilde I_{ii}},

    with :math:`S` = ``scores`` (critic values, row i: student sample i, column j: teacher sample
    j; the diagonal holds the positive pairs) and :math:`b` = ``log_baseline``. α = 1 is the
    InfoNCE end with the leave-one-out baseline :math:`m` (then the last term is exactly 1),
    α = 0 is TUBA with the learned log-baseline :math:`b`. The distillation loss is
    :math:`-I_\alpha`. This follows the arithmetic of the Distiller code
    (``interpolated_lower_bound``: leave-one-out log-mean, ``log_interpolate``, off-diagonal
    log-mean-exp; its docstring names the two ends the other way round, the arithmetic is what is
    implemented here), computed stably in log space. Differentiable in both arguments.

    Args:
      scores: ``[B, B]`` critic matrix :math:`S`, B ≥ 2.
      log_baseline: ``[B]`` log-baseline :math:`b` (e.g. the output of a baseline network).
      alpha: α ∈ [0, 1], the interpolation weight (the paper's user-facing ``--alpha``, 0.5).

    Returns:
      Scalar float32 (float64 for float64 inputs under x64): the bound :math:`I_\alpha` in nats.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxdiv._self_distillation import mi_alpha_bound
      >>> scores = 3.0 * jnp.eye(4) + 0.1 * jax.random.normal(jax.random.key(0), (4, 4))
      >>> bound = mi_alpha_bound(scores, jnp.zeros(4), alpha=0.5)
      >>> bound.shape, bool(bound > 0)
      ((), True)

    References:
      Poole, Ozair, van den Oord, Alemi, Tucker, "On Variational Bounds of Mutual Information",
      ICML 2019, https://arxiv.org/abs/1905.06922 (the interpolated bound I_α);
      He, Shi, Mueller, Zha, Li, Karypis, "Distiller: A Systematic Study of Model Distillation
      Methods in Natural Language Processing", SustaiNLP 2021,
      https://arxiv.org/abs/2109.11105 (code https://github.com/Cli212/Distiller,
      ``textbrewer/losses.py``).
    """
    s = checks.float_array(scores, "scores")
    b = checks.float_array(log_baseline, "log_baseline")
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 2:
        raise ValueError(f"`scores` must have shape [B, B] with B >= 2, got {s.shape}.")
    checks.exact_shape(b, s.shape[:1], "log_baseline", "[B]")
    checks.scalar_in_range(alpha, "alpha", low=0.0, high=1.0)

    dtype = checks.compute_dtype(s, b)
    s = s.astype(dtype)
    b = b.astype(dtype)
    batch = s.shape[0]
    alpha = jnp.asarray(alpha, dtype)
    interp = jnp.logaddexp(
        jnp.log(alpha) + _log_loo_mean(s), jnp.log1p(-alpha) + b[:, None]
    )  # [B, B]
    off_diag = ~jnp.eye(batch, dtype=bool)  # [B, B]
    num_pairs = batch * (batch - 1)
    joint = jnp.sum(jnp.where(off_diag, jnp.diagonal(s)[:, None] - interp, 0.0)) / num_pairs
    log_marg = jax.nn.logsumexp(s - jnp.diagonal(interp)[:, None], where=off_diag)
    return 1.0 + joint - jnp.exp(log_marg - math.log(num_pairs))
