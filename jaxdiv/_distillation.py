"""Distillation objectives built on the per-row divergences: KL-Top and MDCS consistency."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxdiv import checks
from jaxdiv._divergences import forward_kl
from jaxdiv._logits import finish, kl, log_probs
from jaxdiv._reduce import masked_mean


def top_k_kl(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    k: int,
    renormalize: bool = False,
    temperature: float | jax.Array = 1.0,
    axis: int = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""KL-Top (OSTQuant): forward KL restricted to the teacher's top-:math:`k` classes.

    With :math:`\mathcal{K}` the indices of the :math:`k` largest teacher logits of the row:

    .. math::
        \text{renormalize=False:}\quad
        \sum_{c \in \mathcal{K}} p_t(c) \left(\log p_t(c) - \log p_s(c)\right)
        \qquad \text{(full-vocabulary softmaxes, then gather)}

        \text{renormalize=True:}\quad
        \mathrm{KL}\!\left(\mathrm{softmax}(t_\mathcal{K}/T) \,\|\,
        \mathrm{softmax}(s_\mathcal{K}/T)\right)
        \qquad \text{(softmaxes over the } k \text{ classes only)}

    With ``renormalize=True``, a student with no mass on the teacher's top-:math:`k` classes
    gives ``+inf``.

    ``renormalize=False`` is the OSTQuant trainer's ``kl_top`` (``post_attn=True``, the
    README setting); it is not a divergence in the strict sense (it can be negative when the
    student puts more mass than the teacher on the top-k set) but its minimiser over the
    student matches the teacher on :math:`\mathcal{K}`. The selection is not differentiated
    (indices); the values at the selected classes are, for both arguments.

    Args:
        student_logits: unnormalised student scores, shape ``[..., V]``.
        teacher_logits: unnormalised teacher scores, same shape; the top-k is taken on these.
        k: number of classes kept, ``1 <= k <= V``.
        renormalize: whether to renormalise both distributions over the :math:`k` classes.
        temperature: softmax temperature :math:`T > 0`.
        axis: the class axis.
        where: optional boolean mask, shape ``[...]`` or ``[..., V]`` (masked classes are
            never selected while enough unmasked classes remain).

    Returns:
        Value per row, shape ``[...]``, float32 (or float64 under x64).

    Examples:
        >>> import jax.numpy as jnp, jaxdiv
        >>> s, t = jnp.array([0.0, 1.0, 2.0, 3.0]), jnp.array([3.0, 2.0, 1.0, 0.0])
        >>> bool(jnp.allclose(jaxdiv.top_k_kl(s, t, k=4), jaxdiv.forward_kl(s, t)))
        True
        >>> bool(jnp.allclose(jaxdiv.top_k_kl(s, t, k=2, renormalize=True),
        ...                   jaxdiv.forward_kl(s[:2], t[:2])))
        True

    References:
        Hu et al., `OSTQuant: Refining Large Language Model Quantization with Orthogonal and
        Scaling Transformations for Better Distribution Fitting
        <https://arxiv.org/abs/2501.13987>`_, ICLR 2025, §4.3 (KL-Top loss).
    """
    lp = log_probs(student_logits, teacher_logits, temperature=temperature, axis=axis, where=where)
    num_classes = lp.teacher.shape[-1]
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= num_classes:
        raise ValueError(f"`k` must be an int in [1, {num_classes}] (the class count), got {k!r}.")
    _, index = jax.lax.top_k(jax.lax.stop_gradient(lp.teacher), int(k))  # [..., k]
    top_t = jnp.take_along_axis(lp.teacher, index, axis=-1)
    top_s = jnp.take_along_axis(lp.student, index, axis=-1)
    if renormalize:
        top_t = jax.nn.log_softmax(top_t, axis=-1)
        # A student with no mass on the teacher's top-k cannot be renormalised there (0/0):
        # every selected class has p_t > 0 = p_s, so the KL is +inf (double-where, no NaN).
        empty = jnp.all(top_s == -jnp.inf, axis=-1, keepdims=True)
        top_s = jax.nn.log_softmax(jnp.where(empty, 0.0, top_s), axis=-1)
        top_s = jnp.where(empty, -jnp.inf, top_s)
    return finish(kl(top_t, top_s), lp.row_mask)


def mdcs_consistency(
    strong_logits: ArrayLike,
    weak_logits: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""MDCS consistency self-distillation with Confident Instance Sampling; a scalar.

    The weak-augmentation view is the teacher, the strong view the student. Only rows whose
    weak-view prediction is correct are distilled (CIS):

    .. math::
        \mathcal{S} = \{ i : \arg\max_c z^\mathrm{weak}_{i,c} = y_i \},\qquad
        \mathcal{L}_\mathrm{CS} = \frac{1}{\max(1, |\mathcal{S}|)} \sum_{i \in \mathcal{S}}
        \mathrm{KL}\!\left(\mathrm{softmax}(z^\mathrm{weak}_i) \,\|\,
        \mathrm{softmax}(z^\mathrm{strong}_i)\right)

    (temperature 1, 0 when no row is selected). In MDCS the logits are each expert's
    logit-adjusted logits and the weak view is detached: wrap ``weak_logits`` in
    ``jax.lax.stop_gradient`` to reproduce that (this function does not stop gradients).

    Args:
        strong_logits: student logits on the strongly augmented view, shape ``[..., C]``.
        weak_logits: teacher logits on the weakly augmented view, same shape.
        labels: integer class labels, shape ``[...]``.
        where: optional boolean row mask, shape ``[...]`` (e.g. padding).

    Returns:
        Scalar mean KL over the selected rows, float32 (or float64 under x64).

    Examples:
        >>> import jax.numpy as jnp, jaxdiv
        >>> weak = jnp.array([[2.0, 0.0], [0.0, 2.0]])
        >>> strong = jnp.array([[0.0, 0.0], [5.0, 0.0]])
        >>> labels = jnp.array([0, 0])  # only row 0 is confident and correct
        >>> bool(jnp.allclose(jaxdiv.mdcs_consistency(strong, weak, labels),
        ...                   jaxdiv.forward_kl(strong[0], weak[0])))
        True

    References:
        Zhao et al., `MDCS: More Diverse Experts with Consistency Self-distillation for
        Long-tailed Recognition <https://arxiv.org/abs/2308.09922>`_, ICCV 2023, Eq. (9)–(10).
    """
    strong = checks.float_array(strong_logits, "strong_logits")
    weak = checks.float_array(weak_logits, "weak_logits")
    checks.same_shape(strong, weak, ("strong_logits", "weak_logits"))
    checks.min_rank(strong, 1, "strong_logits", "[..., C]")
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"`labels` must have an integer dtype, got dtype {labels.dtype}.")
    checks.exact_shape(labels, strong.shape[:-1], "labels", "[...] = logits shape without C")
    confident = jnp.argmax(weak, axis=-1) == labels
    if where is not None:
        where = jnp.asarray(where)
        checks.exact_shape(where, strong.shape[:-1], "where", "[...] row mask")
        confident = confident & where
    per_row = forward_kl(strong, weak, where=confident)
    return masked_mean(per_row, confident)
