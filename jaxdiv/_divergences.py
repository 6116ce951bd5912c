r"""Per-row divergences between a student and a teacher distribution given as logits.

Conventions (API.md §1): student first, teacher second; :math:`p_s = \mathrm{softmax}(s/T)`,
:math:`p_t = \mathrm{softmax}(t/T)` along ``axis``; hyperparameters keyword-only; the result has
the input shape without ``axis`` (no reduction), dtype float32 (float64 for float64 inputs
under ``jax_enable_x64``); ``where`` masks rows (``[...]``) or classes (``[..., V]``) exactly,
with finite gradients; "forward" is :math:`\mathrm{KL}(p_t\|p_s)`, "reverse" is
:math:`\mathrm{KL}(p_s\|p_t)`. No :math:`T^2` factor except in :func:`hinton_kd`.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import checks
from jaxdiv._logits import finish, kl, log_probs, weighted_expm1


def forward_kl(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float | jax.Array = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Forward KL divergence :math:`\mathrm{KL}(p_t \,\|\, p_s)` (mode covering).

    .. math::
        \mathrm{KL}(p_t \| p_s) = \sum_v p_t(v) \left(\log p_t(v) - \log p_s(v)\right)

    with :math:`p_s = \mathrm{softmax}(s/T)` for ``student_logits`` :math:`s`,
    :math:`p_t = \mathrm{softmax}(t/T)` for ``teacher_logits`` :math:`t`. Classes with
    :math:`p_t(v) = 0` (teacher logit ``-inf``) contribute 0 with finite gradients.

    Args:
        student_logits: unnormalised student scores, shape ``[..., V]`` (``V`` on ``axis``).
        teacher_logits: unnormalised teacher scores, same shape.
        temperature: softmax temperature :math:`T > 0` (no :math:`T^2` factor).
        axis: the class axis.
        where: optional boolean mask, shape ``[...]`` (rows) or ``[..., V]`` (classes).

    Returns:
        Divergence per row, shape ``[...]``, float32 (float64 for float64 inputs under x64).

    Examples:
        >>> import jax.numpy as jnp, jaxdiv
        >>> s, t = jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([0.9, 0.1]))
        >>> print(f"{jaxdiv.forward_kl(s, t):.4f}")  # 0.9 log 1.8 + 0.1 log 0.2
        0.3681

    References:
        Kullback & Leibler, On Information and Sufficiency, Ann. Math. Statist. 1951;
        Hinton et al., `Distilling the Knowledge in a Neural Network
        <https://arxiv.org/abs/1503.02531>`_, 2015.
    """
    lp = log_probs(student_logits, teacher_logits, temperature=temperature, axis=axis, where=where)
    return finish(kl(lp.teacher, lp.student), lp.row_mask)


def reverse_kl(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float | jax.Array = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Reverse KL divergence :math:`\mathrm{KL}(p_s \,\|\, p_t)` (mode seeking).

    .. math::
        \mathrm{KL}(p_s \| p_t) = \sum_v p_s(v) \left(\log p_s(v) - \log p_t(v)\right)

    It is :math:`+\infty` (returned as ``inf``, never NaN) when some class has
    :math:`p_t(v) = 0 < p_s(v)`.

    Args:
        student_logits: unnormalised student scores, shape ``[..., V]``.
        teacher_logits: unnormalised teacher scores, same shape.
        temperature: softmax temperature :math:`T > 0`.
        axis: the class axis.
        where: optional boolean mask, shape ``[...]`` or ``[..., V]``.

    Returns:
        Divergence per row, shape ``[...]``, float32 (or float64 under x64).

    Examples:
        >>> import jax.numpy as jnp, jaxdiv
        >>> s, t = jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([0.9, 0.1]))
        >>> print(f"{jaxdiv.reverse_kl(s, t):.4f}")  # 0.5 log(5/9) + 0.5 log 5
        0.5108

    References:
        Gu et al., `MiniLLM: Knowledge Distillation of Large Language Models
        <https://arxiv.org/abs/2306.08543>`_, 2023.
    """
    lp = log_probs(student_logits, teacher_logits, temperature=temperature, axis=axis, where=where)
    return finish(kl(lp.student, lp.teacher), lp.row_mask)


def _log_mixture(log_a, log_b, weight_a):
    """log(w·a + (1−w)·b) for a traced or concrete weight w ∈ [0, 1], in log space."""
    weight_a = jnp.asarray(weight_a, log_a.dtype)
    weighted_a = jnp.log(weight_a) + log_a
    weighted_b = jnp.log1p(-weight_a) + log_b
    # Classes where both weighted terms are zero (both zero, or one zero and the other's weight
    # 0 or 1) stay -inf, with the logaddexp kept away from (-inf, -inf), whose gradient is NaN
    # (double-where).
    both_zero = (weighted_a == -jnp.inf) & (weighted_b == -jnp.inf)
    weighted_a = jnp.where(both_zero, 0.0, weighted_a)
    weighted_b = jnp.where(both_zero, 0.0, weighted_b)
    return jnp.where(both_zero, -jnp.inf, jnp.logaddexp(weighted_a, weighted_b))


def generalized_jsd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    beta: float | jax.Array = 0.5,
    temperature: float | jax.Array = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Generalized Jensen–Shannon divergence of GKD, :math:`\mathrm{JSD}_\beta(p_t \| p_s)`.

    .. math::
        \mathrm{JSD}_\beta = \beta\,\mathrm{KL}(p_t \| m) + (1-\beta)\,\mathrm{KL}(p_s \| m),
        \qquad m = \beta p_t + (1-\beta) p_s,

    computed with :math:`\log m` in log space. Following TRL (≥ 0.16), the endpoints are
    defined as the limits of the *normalised* family: ``beta=0`` returns
    :math:`\mathrm{KL}(p_t\|p_s)` and ``beta=1`` returns :math:`\mathrm{KL}(p_s\|p_t)`
    exactly (the interior form itself tends to 0 there).

    Args:
        student_logits: unnormalised student scores, shape ``[..., V]``.
        teacher_logits: unnormalised teacher scores, same shape.
        beta: interpolation :math:`\beta \in [0, 1]` (Python number or JAX scalar).
        temperature: softmax temperature :math:`T > 0`.
        axis: the class axis.
        where: optional boolean mask, shape ``[...]`` or ``[..., V]``.

    Returns:
        Divergence per row, shape ``[...]``, float32 (or float64 under x64).

    Examples:
        >>> import jax.numpy as jnp, jaxdiv
        >>> s, t = jnp.array([0.0, 2.0]), jnp.array([2.0, 0.0])
        >>> bool(jnp.allclose(jaxdiv.generalized_jsd(s, t, beta=0.0), jaxdiv.forward_kl(s, t)))
        True

    References:
        Agarwal et al., `On-Policy Distillation of Language Models: Learning from
        Self-Generated Mistakes <https://arxiv.org/abs/2306.13649>`_, ICLR 2024, Eq. (1).
    """
    checks.scalar_in_range(beta, "beta", low=0.0, high=1.0)
    lp = log_probs(student_logits, teacher_logits, temperature=temperature, axis=axis, where=where)
    b = checks.concrete(beta)
    if b == 0.0:
        return finish(kl(lp.teacher, lp.student), lp.row_mask)
    if b == 1.0:
        return finish(kl(lp.student, lp.teacher), lp.row_mask)

    def interior(beta):
        log_m = _log_mixture(lp.teacher, lp.student, beta)
        value = beta * kl(lp.teacher, log_m) + (1.0 - beta) * kl(lp.student, log_m)
        return jnp.maximum(value, 0.0)  # rounding in log m can leave -1e-8 at p_s = p_t

    if b is not None:
        return finish(interior(jnp.asarray(b, lp.student.dtype)), lp.row_mask)
    # Traced beta: select the endpoints; clip inside so the unused branch has finite gradients.
    beta = jnp.asarray(beta, lp.student.dtype)
    tiny = jnp.finfo(lp.student.dtype).eps
    value = jnp.where(
        beta == 0.0,
        kl(lp.teacher, lp.student),
        jnp.where(
            beta == 1.0, kl(lp.student, lp.teacher), interior(jnp.clip(beta, tiny, 1.0 - tiny))
        ),
    )
    return finish(value, lp.row_mask)


def jensen_shannon(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float | jax.Array = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Jensen–Shannon divergence, :func:`generalized_jsd` with :math:`\beta = 1/2`.

    .. math::
        \mathrm{JS}(p_t, p_s) = \tfrac12 \mathrm{KL}(p_t \| m) + \tfrac12 \mathrm{KL}(p_s \| m),
        \qquad m = \tfrac12 (p_t + p_s).

    Symmetric, bounded by :math:`\log 2`.

    Args:
        student_logits: unnormalised student scores, shape ``[..., V]``.
        teacher_logits: unnormalised teacher scores, same shape.
        temperature: softmax temperature :math:`T > 0`.
        axis: the class axis.
        where: optional boolean mask, shape ``[...]`` or ``[..., V]``.

    Returns:
        Divergence per row, shape ``[...]``, float32 (or float64 under x64).

    Examples:
        >>> import jax.numpy as jnp, jaxdiv
        >>> s, t = jnp.array([0.0, -jnp.inf]), jnp.array([-jnp.inf, 0.0])
        >>> print(f"{jaxdiv.jensen_shannon(s, t):.4f}")  # disjoint supports: log 2
        0.6931

    References:
        Lin, Divergence measures based on the Shannon entropy, IEEE Trans. Inf. Theory 1991.
    """
    return generalized_jsd(
        student_logits, teacher_logits, beta=0.5, temperature=temperature, axis=axis, where=where
    )


def skew_kl(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    alpha: float | jax.Array = 0.1,
    temperature: float | jax.Array = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""DistiLLM skew KL, :math:`\mathrm{KL}(p_t \,\|\, \alpha p_t + (1-\alpha) p_s)`.

    .. math::
        \mathrm{SKL}^{(\alpha)} = \sum_v p_t(v) \left(\log p_t(v)
        - \log\left(\alpha p_t(v) + (1-\alpha) p_s(v)\right)\right)

    The teacher-entropy term is included (the DistiLLM code omits it, which shifts the value
    but not the gradient). ``alpha=0`` is forward KL; any ``alpha > 0`` keeps the value
    bounded by :math:`-\log\alpha` even where :math:`p_s = 0`.

    Args:
        student_logits: unnormalised student scores, shape ``[..., V]``.
        teacher_logits: unnormalised teacher scores, same shape.
        alpha: skew :math:`\alpha \in [0, 1]`.
        temperature: softmax temperature :math:`T > 0`.
        axis: the class axis.
        where: optional boolean mask, shape ``[...]`` or ``[..., V]``.

    Returns:
        Divergence per row, shape ``[...]``, float32 (or float64 under x64).

    Examples:
        >>> import jax.numpy as jnp, jaxdiv
        >>> s, t = jnp.array([0.0, -jnp.inf]), jnp.array([-jnp.inf, 0.0])
        >>> print(f"{jaxdiv.skew_kl(s, t, alpha=0.1):.4f}")  # -log 0.1
        2.3026

    References:
        Ko et al., `DistiLLM: Towards Streamlined Distillation for Large Language Models
        <https://arxiv.org/abs/2402.03898>`_, ICML 2024, Eq. (4).
    """
    checks.scalar_in_range(alpha, "alpha", low=0.0, high=1.0)
    lp = log_probs(student_logits, teacher_logits, temperature=temperature, axis=axis, where=where)
    log_m = _log_mixture(lp.teacher, lp.student, alpha)
    return finish(kl(lp.teacher, log_m), lp.row_mask)


def skew_reverse_kl(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    alpha: float | jax.Array = 0.1,
    temperature: float | jax.Array = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""DistiLLM skew reverse KL, :math:`\mathrm{KL}(p_s \,\|\, (1-\alpha) p_t + \alpha p_s)`.

    .. math::
        \mathrm{SRKL}^{(\alpha)} = \sum_v p_s(v) \left(\log p_s(v)
        - \log\left((1-\alpha) p_t(v) + \alpha p_s(v)\right)\right)

    ``alpha=0`` is reverse KL; any ``alpha > 0`` keeps it finite where :math:`p_t = 0`.

    Args:
        student_logits: unnormalised student scores, shape ``[..., V]``.
        teacher_logits: unnormalised teacher scores, same shape.
        alpha: skew :math:`\alpha \in [0, 1]`.
        temperature: softmax temperature :math:`T > 0`.
        axis: the class axis.
        where: optional boolean mask, shape ``[...]`` or ``[..., V]``.

    Returns:
        Divergence per row, shape ``[...]``, float32 (or float64 under x64).

    Examples:
        >>> import jax.numpy as jnp, jaxdiv
        >>> s, t = jnp.array([0.0, -jnp.inf]), jnp.array([-jnp.inf, 0.0])
        >>> print(f"{jaxdiv.skew_reverse_kl(s, t, alpha=0.1):.4f}")
        2.3026

    References:
        Ko et al., `DistiLLM: Towards Streamlined Distillation for Large Language Models
        <https://arxiv.org/abs/2402.03898>`_, ICML 2024, Eq. (5).
    """
    checks.scalar_in_range(alpha, "alpha", low=0.0, high=1.0)
    lp = log_probs(student_logits, teacher_logits, temperature=temperature, axis=axis, where=where)
    log_m = _log_mixture(lp.student, lp.teacher, alpha)
    return finish(kl(lp.student, log_m), lp.row_mask)


def total_variation(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float | jax.Array = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Total variation distance :math:`\tfrac12 \sum_v |p_t(v) - p_s(v)|`, in :math:`[0, 1]`.

    Args:
        student_logits: unnormalised student scores, shape ``[..., V]``.
        teacher_logits: unnormalised teacher scores, same shape.
        temperature: softmax temperature :math:`T > 0`.
        axis: the class axis.
        where: optional boolean mask, shape ``[...]`` or ``[..., V]``.

    Returns:
        Distance per row, shape ``[...]``, float32 (or float64 under x64).

    Examples:
        >>> import jax.numpy as jnp, jaxdiv
        >>> s, t = jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([0.9, 0.1]))
        >>> print(f"{jaxdiv.total_variation(s, t):.4f}")
        0.4000

    References:
        Wen et al., `f-Divergence Minimization for Sequence-Level Knowledge Distillation
        <https://arxiv.org/abs/2307.15190>`_, ACL 2023.
    """
    lp = log_probs(student_logits, teacher_logits, temperature=temperature, axis=axis, where=where)
    value = 0.5 * jnp.sum(jnp.abs(jnp.exp(lp.teacher) - jnp.exp(lp.student)), axis=-1)
    return finish(value, lp.row_mask)


def hellinger(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float | jax.Array = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Squared Hellinger distance :math:`\tfrac12 \sum_v (\sqrt{p_t(v)} - \sqrt{p_s(v)})^2`.

    Computed as :math:`\sqrt{p} = e^{\log p / 2}`, so zero probabilities have finite gradients.
    In :math:`[0, 1]`.

    Args:
        student_logits: unnormalised student scores, shape ``[..., V]``.
        teacher_logits: unnormalised teacher scores, same shape.
        temperature: softmax temperature :math:`T > 0`.
        axis: the class axis.
        where: optional boolean mask, shape ``[...]`` or ``[..., V]``.

    Returns:
        Squared distance per row, shape ``[...]``, float32 (or float64 under x64).

    Examples:
        >>> import jax.numpy as jnp, jaxdiv
        >>> s, t = jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([0.5, 0.5]))
        >>> print(f"{jaxdiv.hellinger(s, t):.4f}")
        0.0000

    References:
        Hellinger, Neue Begründung der Theorie quadratischer Formen, J. reine angew. Math. 1909.
    """
    lp = log_probs(student_logits, teacher_logits, temperature=temperature, axis=axis, where=where)
    diff = jnp.exp(0.5 * lp.teacher) - jnp.exp(0.5 * lp.student)
    return finish(0.5 * jnp.sum(diff * diff, axis=-1), lp.row_mask)


def chi_squared(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float | jax.Array = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Pearson :math:`\chi^2(p_t \,\|\, p_s) = \sum_v (p_t(v) - p_s(v))^2 / p_s(v)`.

    Evaluated per class as :math:`p_s\,(e^{r}-1)^2` for :math:`r = \log p_t - \log p_s \le 0`
    and :math:`p_t^2/p_s\,(1-e^{-r})^2` for :math:`r > 0`, so it is exact near
    :math:`p_t = p_s` and never forms :math:`0\cdot\infty`. :math:`+\infty` where
    :math:`p_s(v) = 0 < p_t(v)`.

    Args:
        student_logits: unnormalised student scores, shape ``[..., V]``.
        teacher_logits: unnormalised teacher scores, same shape.
        temperature: softmax temperature :math:`T > 0`.
        axis: the class axis.
        where: optional boolean mask, shape ``[...]`` or ``[..., V]``.

    Returns:
        Divergence per row, shape ``[...]``, float32 (or float64 under x64).

    Examples:
        >>> import jax.numpy as jnp, jaxdiv
        >>> s, t = jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([0.9, 0.1]))
        >>> print(f"{jaxdiv.chi_squared(s, t):.4f}")  # 0.4²/0.5 · 2
        0.6400

    References:
        Pearson, On the criterion that a given system of deviations..., Phil. Mag. 1900;
        Nishida et al., `Chi-square loss for softmax <https://arxiv.org/abs/2108.13822>`_.
    """
    lp = log_probs(student_logits, teacher_logits, temperature=temperature, axis=axis, where=where)
    s_pos, t_pos = lp.student > -jnp.inf, lp.teacher > -jnp.inf
    both = s_pos & t_pos
    safe_ls = jnp.where(both, lp.student, 0.0)
    safe_lt = jnp.where(both, lp.teacher, 0.0)
    r = safe_lt - safe_ls
    up = r > 0
    r_up, r_down = jnp.where(up, r, 1.0), jnp.where(up, 0.0, r)
    term_up = jnp.exp(2.0 * safe_lt - safe_ls) * jnp.square(jnp.expm1(-r_up))
    term_down = jnp.exp(safe_ls) * jnp.square(jnp.expm1(r_down))
    term = jnp.where(up, term_up, term_down)
    # p_t = 0 < p_s contributes p_s; p_s = 0 < p_t contributes +inf; both zero contribute 0.
    term = jnp.where(
        both, term, jnp.where(t_pos, jnp.inf, jnp.exp(jnp.where(s_pos, lp.student, -jnp.inf)))
    )
    return finish(jnp.sum(term, axis=-1), lp.row_mask)


def _expm1_over(a, x):
    """(e^{a x} − 1)/a, equal to x at a = 0 (expm1 keeps it exact for tiny a)."""
    zero = a == 0.0
    a_safe = jnp.where(zero, 1.0, a)
    return jnp.where(zero, x, jnp.expm1(a_safe * x) / a_safe)


def _alpha_side(log_w, log_other, a):
    r"""-(1/(1-a)) Σ_{w>0} w·(e^{a r} − 1)/a with r = log other − log w, i.e. the Amari
    divergence written around the distribution ``w``; smooth in ``a`` through ``a = 0``."""
    w_pos = log_w > -jnp.inf
    safe_lw = jnp.where(w_pos, log_w, 0.0)
    safe_lo = jnp.where(w_pos, log_other, 0.0)
    o_zero = safe_lo == -jnp.inf
    # Finite where o > 0, and 0 (not -inf) where o = 0: that side is selected away below, and
    # a -inf here would turn its zero cotangent into NaN gradients (double-where).
    r = jnp.where(o_zero, 0.0, safe_lo - safe_lw)
    zero = a == 0.0
    a_safe = jnp.where(zero, 1.0, a)
    # Where other = 0: e^{a r} = 0 (a > 0) gives w·(−1)/a; a ≤ 0 makes the divergence +inf.
    finite = jnp.where(zero, jnp.exp(safe_lw) * r, weighted_expm1(safe_lw, a_safe * r) / a_safe)
    at_zero_other = jnp.where(a > 0.0, -jnp.exp(safe_lw) / a_safe, -jnp.inf)
    term = jnp.where(o_zero, at_zero_other, finite)
    return -jnp.sum(jnp.where(w_pos, term, 0.0), axis=-1) / (1.0 - a)


def alpha_divergence(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    alpha: float | jax.Array,
    temperature: float | jax.Array = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Amari :math:`\alpha`-divergence, any real :math:`\alpha`, with KL at the ends.

    .. math::
        D_\alpha(p_t \| p_s) = \frac{1 - \sum_v p_t(v)^\alpha\, p_s(v)^{1-\alpha}}
        {\alpha (1 - \alpha)}

    ``alpha=1`` gives :math:`\mathrm{KL}(p_t\|p_s)` (forward), ``alpha=0`` gives
    :math:`\mathrm{KL}(p_s\|p_t)` (reverse), ``alpha=0.5`` is four times the squared Hellinger
    distance. The sum is rewritten as :math:`1 + \sum_v p_s (e^{\alpha r} - 1)` with
    :math:`r = \log p_t - \log p_s` (for :math:`\alpha < 1/2`; mirrored around :math:`p_t`
    otherwise), so :math:`\alpha \to 0` and :math:`\alpha \to 1` are smooth limits, not
    0/0. Values are :math:`+\infty` where the divergence is (e.g. :math:`\alpha \le 0` with
    :math:`p_t = 0 < p_s`).

    Args:
        student_logits: unnormalised student scores, shape ``[..., V]``.
        teacher_logits: unnormalised teacher scores, same shape.
        alpha: any finite real :math:`\alpha` (Python number or JAX scalar).
        temperature: softmax temperature :math:`T > 0`.
        axis: the class axis.
        where: optional boolean mask, shape ``[...]`` or ``[..., V]``.

    Returns:
        Divergence per row, shape ``[...]``, float32 (or float64 under x64).

    Examples:
        >>> import jax.numpy as jnp, jaxdiv
        >>> s, t = jnp.array([0.0, 1.0, 2.0]), jnp.array([2.0, 1.0, 0.0])
        >>> d1 = jaxdiv.alpha_divergence(s, t, alpha=1.0)
        >>> bool(jnp.allclose(d1, jaxdiv.forward_kl(s, t)))
        True

    References:
        Amari, Differential-Geometrical Methods in Statistics, 1985;
        Cichocki & Amari, `Families of Alpha- Beta- and Gamma- Divergences
        <https://doi.org/10.3390/e12061532>`_, Entropy 2010, Eq. (4).
    """
    checks.scalar_in_range(alpha, "alpha")
    lp = log_probs(student_logits, teacher_logits, temperature=temperature, axis=axis, where=where)
    a = jnp.asarray(alpha, lp.student.dtype)
    # Around p_s with exponent alpha (exact for alpha -> 0), around p_t with 1 - alpha.
    around_student = lambda a: _alpha_side(lp.student, lp.teacher, a)
    around_teacher = lambda a: _alpha_side(lp.teacher, lp.student, 1.0 - a)
    a_value = checks.concrete(alpha)
    if a_value is not None:
        value = around_student(a) if a_value < 0.5 else around_teacher(a)
    else:
        # Traced alpha: both sides run, so each gets an exponent in its own range (double-where):
        # the unused side at alpha = 0 or 1 would divide by 1 - 1 = 0 and give NaN gradients.
        low = a < 0.5
        value = jnp.where(
            low, around_student(jnp.where(low, a, 0.0)), around_teacher(jnp.where(low, 1.0, a))
        )
    return finish(jnp.maximum(value, 0.0), lp.row_mask)  # no -1e-8 from rounding


def f_divergence(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    f: Callable[[jax.Array], jax.Array],
    f_slope_at_infinity: float | jax.Array = jnp.inf,
    temperature: float | jax.Array = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Generic Csiszár :math:`f`-divergence :math:`D_f(p_t \,\|\, p_s)`.

    .. math::
        D_f(p_t \| p_s) = \sum_{v:\, p_s(v) > 0} p_s(v)\, f\!\left(\frac{p_t(v)}{p_s(v)}\right)
        + f'(\infty) \sum_{v:\, p_s(v) = 0} p_t(v),
        \qquad f'(\infty) = \lim_{u\to\infty} f(u)/u

    with :math:`f` convex and :math:`f(1) = 0`. The ratio is formed as
    :math:`e^{\log p_t - \log p_s}`; where it overflows float32 (log-ratios beyond ~88,
    e.g. at very low temperatures or extreme logits) a generic :math:`f` cannot be evaluated,
    and the class contributes the :math:`p_s \to 0` limit :math:`f'(\infty)\,p_t` instead
    (``+inf`` with the default slope, never NaN); the same where :math:`f(u)` overflows.
    Prefer the dedicated functions (``forward_kl``, ``chi_squared``, …) there: they stay
    exact in log space.
    Examples: :math:`f(u) = u\log u` is forward KL,
    :math:`-\log u` reverse KL, :math:`\tfrac12|u-1|` total variation (with
    ``f_slope_at_infinity=0.5``), :math:`(u-1)^2` Pearson :math:`\chi^2`.

    Args:
        student_logits: unnormalised student scores, shape ``[..., V]``.
        teacher_logits: unnormalised teacher scores, same shape.
        f: elementwise, jnp-traceable convex function with :math:`f(1) = 0`; it receives
            :math:`u = p_t/p_s \in [0, \infty)` (note ``0 * log 0`` must be handled by ``f``
            if :math:`p_t` can be 0, e.g. with ``jax.scipy.special.xlogy``).
        f_slope_at_infinity: :math:`\lim_{u\to\infty} f(u)/u`, used for classes with
            :math:`p_s = 0 < p_t` (default :math:`+\infty`, right for KL-like :math:`f`).
        temperature: softmax temperature :math:`T > 0`.
        axis: the class axis.
        where: optional boolean mask, shape ``[...]`` or ``[..., V]``.

    Returns:
        Divergence per row, shape ``[...]``, float32 (or float64 under x64).

    Examples:
        >>> import jax.numpy as jnp, jaxdiv
        >>> from jax.scipy.special import xlogy
        >>> s, t = jnp.array([0.0, 1.0, 2.0]), jnp.array([2.0, 1.0, 0.0])
        >>> d = jaxdiv.f_divergence(s, t, f=lambda u: xlogy(u, u))
        >>> bool(jnp.allclose(d, jaxdiv.forward_kl(s, t)))
        True

    References:
        Csiszár, Information-type measures of difference of probability distributions,
        Studia Sci. Math. Hungar. 1967; Ali & Silvey, J. R. Stat. Soc. B 1966.
    """
    if not callable(f):
        raise TypeError(f"`f` must be a callable f(u) -> array, got {type(f).__name__}.")
    lp = log_probs(student_logits, teacher_logits, temperature=temperature, axis=axis, where=where)
    s_pos = lp.student > -jnp.inf
    safe_ls = jnp.where(s_pos, lp.student, 0.0)
    log_u = jnp.where(s_pos, lp.teacher, 0.0) - safe_ls
    # A ratio beyond the float range (p_s underflowing next to p_t) takes the p_s -> 0 limit
    # below instead of p_s · f(inf) = 0 · inf = NaN; its exp never runs (double-where).
    on = s_pos & (log_u < math.log(jnp.finfo(log_u.dtype).max))
    f_u = f(jnp.exp(jnp.where(on, log_u, 0.0)))
    # f(u) itself can overflow for a superlinear f next to an underflowed p_s (0 · inf): the
    # same limit again (+inf with such an f's slope, never NaN).
    on = on & (f_u < jnp.inf)
    term = jnp.exp(safe_ls) * jnp.where(on, f_u, 0.0)
    # Off the student's support: p_t · f'(∞), with the slope zeroed elsewhere (no inf · 0).
    p_t = jnp.exp(lp.teacher)
    off = ~on & (p_t > 0.0)
    slope = jnp.where(off, jnp.asarray(f_slope_at_infinity, lp.student.dtype), 0.0)
    off_support = p_t * slope
    return finish(jnp.sum(jnp.where(on, term, off_support), axis=-1), lp.row_mask)


def hinton_kd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float | jax.Array = 4.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Hinton knowledge distillation loss :math:`T^2\,\mathrm{KL}(p_t \,\|\, p_s)`.

    .. math::
        \mathcal{L}_\mathrm{KD} = T^2 \sum_v p_t(v) \left(\log p_t(v) - \log p_s(v)\right),
        \qquad p = \mathrm{softmax}(z / T)

    The :math:`T^2` factor keeps the gradient scale independent of :math:`T` (Hinton et al.
    §2); it is the only loss in jaxdiv that has it.

    Args:
        student_logits: unnormalised student scores, shape ``[..., V]``.
        teacher_logits: unnormalised teacher scores, same shape.
        temperature: softmax temperature :math:`T > 0` (default 4).
        axis: the class axis.
        where: optional boolean mask, shape ``[...]`` or ``[..., V]``.

    Returns:
        Loss per row, shape ``[...]``, float32 (or float64 under x64).

    Examples:
        >>> import jax.numpy as jnp, jaxdiv
        >>> s, t = jnp.array([0.0, 4.0]), jnp.array([4.0, 0.0])
        >>> kd = jaxdiv.hinton_kd(s, t, temperature=4.0)
        >>> bool(jnp.allclose(kd, 16 * jaxdiv.forward_kl(s, t, temperature=4.0)))
        True

    References:
        Hinton, Vinyals & Dean, `Distilling the Knowledge in a Neural Network
        <https://arxiv.org/abs/1503.02531>`_, 2015, §2.
    """
    value = forward_kl(
        student_logits, teacher_logits, temperature=temperature, axis=axis, where=where
    )
    return jnp.square(jnp.asarray(temperature, value.dtype)) * value
