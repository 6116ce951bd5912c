r"""BD-KD (Amara et al., arXiv 2212.12965): entropy-gap-balanced forward/reverse KL for online KD.

.. warning::
    **The exact equations of the paper (§3 of v2) could not be retrieved** while this module was
    written; only the abstract and third-party summaries could. What those state:
    sample-wise weighting of forward :math:`\mathrm{KL}(p_t\|p_s)` and reverse
    :math:`\mathrm{KL}(p_s\|p_t)` in the student loss, "guided by the entropy gap between teacher
    and student predictions", to balance the student's confidence; the teacher objective "uses
    reverse KL as a regulariser". The weighting rule below is this module's own rule, built
    to match that description. It is **not** a transcription of the paper. Check it against
    the PDF before you quote numbers as BD-KD.

Conventions (API.md §1): student first, teacher second, per-row output, ``where`` masks, no
:math:`T^2` factor, gradients of the two KL terms not stopped for either argument.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import checks
from jaxdiv._logits import finish, kl, log_probs


def _entropy(log_p: jax.Array) -> jax.Array:
    """Row-wise Shannon entropy (nats) on the last axis, with 0·log 0 = 0 (double-``where``)."""
    pos = log_p > -jnp.inf
    safe = jnp.where(pos, log_p, 0.0)
    return -jnp.sum(jnp.where(pos, jnp.exp(safe) * safe, 0.0), axis=-1)


def _check_sharpness(sharpness) -> None:
    v = checks.concrete(sharpness)
    if v is not None and not v >= 0.0:  # also rejects NaN; +inf is allowed (hard switch)
        raise ValueError(f"`sharpness` must be a number in [0, inf], got {v}.")


def _gated_kl(used: jax.Array, log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """Row-wise KL(p‖q) where ``used`` and exactly 0 elsewhere, with finite gradients there even
    when KL(p‖q) is infinite: unused rows see KL(q‖q) (double-``where`` on the inputs)."""
    return kl(jnp.where(used[..., None], log_p, log_q), log_q)


def bd_kd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    sharpness: float | jax.Array = float("inf"),
    temperature: float | jax.Array = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""BD-KD student distillation term: forward and reverse KL weighted per row by the entropy gap.

    .. math::
        \mathcal{L}_{\mathrm{BD}} = (1 - w)\,\mathrm{KL}(p_t \| p_s) + w\,\mathrm{KL}(p_s \| p_t),
        \qquad w = \operatorname{sg}\!\left[\sigma\!\left(\kappa\,(H(p_s) - H(p_t))\right)\right],

    with :math:`p_s = \mathrm{softmax}(s/T)`, :math:`p_t = \mathrm{softmax}(t/T)` for
    ``student_logits`` :math:`s` and ``teacher_logits`` :math:`t`,
    :math:`H(p) = -\sum_v p_v \log p_v` (nats, at the same temperature), :math:`\sigma` the
    logistic function, :math:`\kappa` = ``sharpness`` and :math:`\operatorname{sg}` the
    stop-gradient.

    The rule: where the student is **less** confident than the teacher
    (:math:`H(p_s) > H(p_t)`), the mode-seeking reverse KL dominates and sharpens the student;
    where it is **over**-confident (:math:`H(p_s) < H(p_t)`), the mass-covering forward KL
    dominates and spreads it. This is how this module reads the paper's "sample-wise weighting
    of forward and reverse KL guided by the entropy gap, balancing student confidence".
    ``sharpness=inf`` (default) is the hard switch :math:`w = \mathbb 1[H(p_s) > H(p_t)]`
    (:math:`w = 1/2` on exact ties, so identical inputs give 0), ``sharpness=0`` gives
    :math:`\tfrac12` (forward + reverse), and finite values interpolate.

    .. warning::
        **Not verified against the paper.** The exact equations of arXiv 2212.12965 §3 could not
        be retrieved. The direction (reverse KL for under-confident students) and the
        sigmoid/hard-switch form are this implementation's own reading of the abstract and of
        third-party summaries. They are not a transcription.

    The weights are sample weights, so they are held constant (``stop_gradient``): the paper's
    treatment could not be checked. This follows adaptive-weight KD practice, and without it
    the loss would reward the networks for moving their entropies to lower the weight of the
    larger KL term. The two KL terms keep their gradients in both arguments (online KD).
    A weight of exactly 0 removes its term, so a row is finite whenever the selected direction
    is finite (e.g. forward KL with teacher zeros under the hard switch); with :math:`0 < w`
    and :math:`p_t = 0 < p_s` somewhere the row is ``+inf``.

    Args:
        student_logits: unnormalised student scores, shape ``[..., V]`` (``V`` on ``axis``).
        teacher_logits: unnormalised teacher scores, same shape.
        sharpness: :math:`\kappa \in [0, \infty]`, slope of the weight in nats⁻¹ (Python number
            or JAX scalar); ``inf`` is the hard switch.
        temperature: softmax temperature :math:`T > 0`, used for the KLs and the entropies
            (no :math:`T^2` factor).
        axis: the class axis.
        where: optional boolean mask, shape ``[...]`` (rows) or ``[..., V]`` (classes).

    Returns:
        Loss per row, shape ``[...]``, float32 (float64 for float64 inputs under x64).

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxdiv._bd_kd import bd_kd
        >>> s = jnp.log(jnp.array([0.5, 0.5]))  # H(p_s) > H(p_t): reverse KL
        >>> t = jnp.log(jnp.array([0.9, 0.1]))
        >>> print(f"{bd_kd(s, t):.4f}")  # 0.5 log(5/9) + 0.5 log 5
        0.5108
        >>> print(f"{bd_kd(t, s):.4f}")  # over-confident student: forward KL, same value
        0.5108

    References:
        Amara, Sepahvand, Meyer, Gross, Clark, `BD-KD: Balancing the Divergences for Online
        Knowledge Distillation <https://arxiv.org/abs/2212.12965>`_, arXiv 2212.12965 (v2, 2024),
        §3 (student loss). The rule above is unverified against it (see the warning).
    """
    _check_sharpness(sharpness)
    lp = log_probs(student_logits, teacher_logits, temperature=temperature, axis=axis, where=where)
    gap = _entropy(lp.student) - _entropy(lp.teacher)  # [...] H(p_s) - H(p_t)
    kappa = jnp.asarray(sharpness, gap.dtype)
    # Ties give exactly 1/2, also for kappa = inf (inf * 0 would be NaN).
    w = jax.lax.stop_gradient(jax.nn.sigmoid(jnp.where(gap == 0, 0.0, kappa * gap)))
    forward = _gated_kl(w < 1, lp.teacher, lp.student)  # KL(p_t || p_s)
    reverse = _gated_kl(w > 0, lp.student, lp.teacher)  # KL(p_s || p_t)
    return finish((1.0 - w) * forward + w * reverse, lp.row_mask)


def bd_kd_teacher(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float | jax.Array = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""BD-KD teacher-side regulariser: the reverse KL :math:`\mathrm{KL}(p_s \,\|\, p_t)`.

    .. math::
        \mathcal{L}_{\mathrm{BD}}^{\text{teacher}} = \mathrm{KL}(p_s \| p_t)
        = \sum_v p_s(v) \left(\log p_s(v) - \log p_t(v)\right)

    In online KD the teacher is trained at the same time as the student. Its objective is a
    task loss plus this term, weighted by the caller. Differentiate it with respect to the
    teacher, and put the student under ``stop_gradient`` if the training step needs that (the
    loss stops no gradients itself). Numerically it is the same function as ``reverse_kl``; it
    exists under this name so that a BD-KD training step reads as in the paper. It is
    :math:`+\infty` (``inf``, never NaN) where :math:`p_t = 0 < p_s`.

    .. warning::
        **Not verified against the paper.** A third-party summary of arXiv 2212.12965 says that
        "the teacher objective uses reverse KL as a regularizer". The summary uses the
        paper's notation, in which reverse KL is :math:`\mathrm{KL}(p^s\|p^t)`. Any extra
        per-sample weighting in the paper's teacher loss could not be checked.

    Args:
        student_logits: unnormalised student scores, shape ``[..., V]`` (``V`` on ``axis``).
        teacher_logits: unnormalised teacher scores, same shape.
        temperature: softmax temperature :math:`T > 0` (no :math:`T^2` factor).
        axis: the class axis.
        where: optional boolean mask, shape ``[...]`` (rows) or ``[..., V]`` (classes).

    Returns:
        Loss per row, shape ``[...]``, float32 (float64 for float64 inputs under x64).

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxdiv._bd_kd import bd_kd_teacher
        >>> s, t = jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([0.9, 0.1]))
        >>> print(f"{bd_kd_teacher(s, t):.4f}")
        0.5108

    References:
        Amara, Sepahvand, Meyer, Gross, Clark, `BD-KD: Balancing the Divergences for Online
        Knowledge Distillation <https://arxiv.org/abs/2212.12965>`_, arXiv 2212.12965 (v2, 2024),
        §3 (teacher loss). Unverified against the paper (see the warning).
    """
    lp = log_probs(student_logits, teacher_logits, temperature=temperature, axis=axis, where=where)
    return finish(kl(lp.student, lp.teacher), lp.row_mask)
