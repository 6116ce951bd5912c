"""Preference-alignment objectives with f-divergences: f-DPO (pairwise) and f-DPG (policy gradient).

Both work on *sequence-level* log-probabilities (sums of token log-probs over the completion), so
their inputs are arrays of scalars per sequence, not logits. Every ``exp`` of a log-ratio runs in
float32 (at least) with its argument clamped at :data:`EXP_CLAMP` (the value TRL >= 0.29 uses for
fp32/bf16), so values and gradients stay finite for log-ratios of any size.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import checks

EXP_CLAMP = 80.0
"""Largest argument passed to ``exp`` for a log-ratio (``exp(80) ~ 5.5e34``, finite in float32)."""

FDPO_DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")
FDPG_DIVERGENCES = ("forward_kl", "reverse_kl", "js", "tv", "chi_squared", "reverse_chi_squared")


def _clamped_exp(x: jax.Array) -> jax.Array:
    return jnp.exp(jnp.minimum(x, EXP_CLAMP))


def _fdpo_psi(log_u: jax.Array, divergence: str, alpha) -> jax.Array:
    """psi(u) = f'(u) up to an additive constant (which cancels in psi(u_w) - psi(u_l))."""
    if divergence == "reverse_kl":
        return log_u
    if divergence == "forward_kl":
        return -_clamped_exp(-log_u)  # -1/u
    if divergence == "js":
        return jax.nn.log_sigmoid(log_u)  # log(2u / (1 + u)) - log 2
    return -_clamped_exp(-alpha * log_u) / alpha  # (1 - u^-alpha) / alpha - 1 / alpha


def fdpo_loss(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    ref_chosen_logps: ArrayLike,
    ref_rejected_logps: ArrayLike,
    *,
    beta: float | jax.Array = 0.1,
    divergence: str = "reverse_kl",
    alpha: float | jax.Array = 0.5,
) -> jax.Array:
    r"""f-DPO: direct preference optimisation under an f-divergence regulariser, per pair.

    .. math::

        \ell = -\log\sigma\bigl(\beta\,(\psi(u_w) - \psi(u_l))\bigr), \qquad
        u = \frac{\pi_\theta(y \mid x)}{\pi_{\mathrm{ref}}(y \mid x)},

    where :math:`u_w` (:math:`u_l`) is the ratio of the chosen (rejected) completion, computed from
    summed sequence log-probabilities, and :math:`\psi = f'` with additive constants dropped:

    ==============  ===========================================  ============================
    ``divergence``  :math:`\psi(u)`                               regulariser
    ==============  ===========================================  ============================
    "reverse_kl"    :math:`\log u`                                KL(π‖π_ref) (plain DPO)
    "forward_kl"    :math:`-1/u`                                  KL(π_ref‖π)
    "js"            :math:`\log(2u/(1+u))`                        Jensen–Shannon
    "alpha"         :math:`(1 - u^{-\alpha})/\alpha`, 0 < α < 1   α-divergence
    ==============  ===========================================  ============================

    ``exp`` runs in float32 with its argument clamped at ``EXP_CLAMP = 80`` (so
    :math:`1/u \le e^{80}`); beyond the clamp the loss is flat in that log-ratio, with finite values
    and gradients for log-ratios of any size (e.g. ±200).

    Conventions: α follows the paper (α → 0 approaches reverse KL, α → 1 forward KL).
    Hugging Face TRL >= 0.29 (``f_divergence_type="alpha_divergence"``) uses
    :math:`\alpha_{\mathrm{TRL}} = 1 - \alpha` (default 0.5, self-dual, so same numbers);
    TRL <= 0.28 uses the paper's α but defaults to ``f_alpha_divergence_coef=1.0``, which is
    ``divergence="forward_kl"`` here. TRL's ``"js_divergence"`` is ``"js"`` here. Label
    smoothing and the other TRL loss types are not included.

    Args:
      policy_chosen_logps: ``[...]`` summed log π_θ(y_w | x).
      policy_rejected_logps: ``[...]`` summed log π_θ(y_l | x).
      ref_chosen_logps: ``[...]`` summed log π_ref(y_w | x).
      ref_rejected_logps: ``[...]`` summed log π_ref(y_l | x).
      beta: β > 0, the regularisation strength.
      divergence: one of "reverse_kl", "forward_kl", "js", "alpha".
      alpha: α in (0, 1), used by ``divergence="alpha"`` only.

    Returns:
      ``[...]`` loss per pair, float32 (float64 for float64 inputs under x64). Not reduced.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdiv._alignment import fdpo_loss
      >>> loss = fdpo_loss(jnp.array([-10.0, -12.0]), jnp.array([-11.0, -9.0]),
      ...                  jnp.array([-10.5, -11.0]), jnp.array([-10.5, -10.0]), divergence="js")
      >>> loss.shape
      (2,)
      >>> z = jnp.array(-1.0)
      >>> round(float(fdpo_loss(z, z, z, z)), 4)  # equal ratios: log 2
      0.6931

    References:
      Wang, Jiang, Yang, Liu, Chen, "Beyond Reverse KL: Generalizing Direct Preference
      Optimization with Diverse Divergence Constraints", ICLR 2024,
      https://arxiv.org/abs/2309.16240 (the f-DPO objective; official code
      https://github.com/alecwangcq/f-divergence-dpo, ``trainers.py``).
    """
    names = (
        "policy_chosen_logps",
        "policy_rejected_logps",
        "ref_chosen_logps",
        "ref_rejected_logps",
    )
    arrays = [
        checks.float_array(a, n)
        for a, n in zip(
            (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps),
            names,
            strict=True,
        )
    ]
    for a, n in zip(arrays[1:], names[1:], strict=True):
        checks.same_shape(arrays[0], a, (names[0], n))
    checks.one_of(divergence, "divergence", FDPO_DIVERGENCES)
    checks.positive(beta, "beta")
    if divergence == "alpha":
        checks.scalar_in_range(alpha, "alpha", low=0.0, high=1.0, low_open=True, high_open=True)

    dtype = checks.compute_dtype(*arrays)
    pi_w, pi_l, ref_w, ref_l = (a.astype(dtype) for a in arrays)
    log_u_w = pi_w - ref_w
    log_u_l = pi_l - ref_l
    alpha = jnp.asarray(alpha, dtype)
    margin = _fdpo_psi(log_u_w, divergence, alpha) - _fdpo_psi(log_u_l, divergence, alpha)
    return -jax.nn.log_sigmoid(jnp.asarray(beta, dtype) * margin)


def _fdpg_f_prime(log_t: jax.Array, divergence: str) -> jax.Array:
    """f'(t) of the generator f with D_f(π‖p) = E_p f(π/p), from log t."""
    if divergence == "forward_kl":
        return -_clamped_exp(-log_t)
    if divergence == "reverse_kl":
        return log_t + 1.0
    if divergence == "js":
        return jnp.log(2.0) - jax.nn.softplus(-log_t)
    if divergence == "tv":
        return 0.5 * jnp.sign(log_t)
    if divergence == "chi_squared":
        return 1.0 - _clamped_exp(-2.0 * log_t)
    return 2.0 * jnp.expm1(jnp.minimum(log_t, EXP_CLAMP))


def _scalar_or_like(value, like: jax.Array, name: str) -> jax.Array:
    if isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # a Python number such as log_z=0
    value = checks.float_array(value, name)
    if value.shape not in ((), like.shape):
        raise ValueError(
            f"`{name}` must be a scalar or have shape {like.shape} (one per sample), "
            f"got {value.shape}."
        )
    return jnp.broadcast_to(value, like.shape)


def fdpg_loss(
    policy_logps: ArrayLike,
    proposal_logps: ArrayLike,
    target_log_scores: ArrayLike,
    *,
    divergence: str = "js",
    log_z: ArrayLike,
    baseline: ArrayLike = 0.0,
) -> jax.Array:
    r"""f-DPG surrogate loss: its gradient is the policy-gradient estimate of ∇ D_f(π_θ ‖ p).

    .. math::

        \mathcal{L} = \frac{1}{N}\sum_{i=1}^N -\,
            \operatorname{sg}\Bigl[\frac{\pi_\theta(x_i)}{q(x_i)}\Bigr]
            \bigl(-f'(\operatorname{sg}[t_i]) - b\bigr)\,\log\pi_\theta(x_i),
        \qquad t_i = \frac{\pi_\theta(x_i)}{p(x_i)}, \quad
        p(x) = \exp(\log P(x) - \log Z),

    with samples :math:`x_i \sim q`, :math:`\operatorname{sg}` = ``stop_gradient`` and
    :math:`-f'(t)` the pseudo-reward. Hence :math:`\nabla\mathcal{L} =
    \frac1N\sum_i \frac{\pi_\theta}{q}\,(f'(t_i) + b)\,\nabla\log\pi_\theta`,
    whose expectation under :math:`q` is :math:`\nabla_\theta D_f(\pi_\theta\|p)
    = \mathbb{E}_{\pi_\theta}[f'(t)\,\nabla\log\pi_\theta]` for any constant ``baseline`` b.
    As in disco, ``baseline`` is on the pseudo-reward scale (e.g. a moving average of past
    :math:`-f'`), i.e. the paper's baseline :math:`\bar B` on the :math:`f'` scale is ``-baseline``.
    Only ``policy_logps`` receives gradients; the loss value itself is not :math:`D_f`.

    ``divergence`` (with :math:`t = \pi/p`):

    =======================  ==================  ==============================
    ``divergence``           :math:`D_f`           :math:`f'(t)`
    =======================  ==================  ==============================
    "forward_kl"             KL(p‖π)               :math:`-1/t`
    "reverse_kl"             KL(π‖p)               :math:`\log t + 1`
    "js"                     KL(π‖m) + KL(p‖m)     :math:`\log(2t/(1+t))`
    "tv"                     ½ Σ |π − p|           :math:`\operatorname{sign}(\log t)/2`
    "chi_squared"            χ²(p‖π)               :math:`1 - t^{-2}`
    "reverse_chi_squared"    χ²(π‖p)               :math:`2(t - 1)`
    =======================  ==================  ==============================

    ("js" is twice the Jensen–Shannon divergence, m = (π + p)/2, as in the paper's code.)
    Every ``exp`` of a log-ratio (the importance weight and :math:`t^{\pm 1}, t^{-2}`) has its
    argument clamped at ``EXP_CLAMP = 80``; a product of two clamped factors can still overflow
    float32, so clip importance weights (or refresh the proposal) when π and q drift apart.

    Args:
      policy_logps: ``[...]`` log π_θ(x_i), summed over the sequence (gradients flow here).
      proposal_logps: ``[...]`` log q(x_i) of the sampling proposal.
      target_log_scores: ``[...]`` log P(x_i), the unnormalised target (EBM) log-score.
      divergence: one of the names above.
      log_z: log Z, the target's log-partition estimate: a scalar or ``[...]`` (per context).
      baseline: b, a scalar or ``[...]``, on the pseudo-reward scale.

    Returns:
      Scalar float32 (float64 for float64 inputs under x64): the mean over all samples.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxdiv._alignment import fdpg_loss
      >>> log_pi = jnp.array([-3.0, -5.0, -4.0])
      >>> loss = fdpg_loss(log_pi, log_pi, jnp.array([-2.0, -6.0, -4.0]), log_z=0.0)
      >>> loss.shape
      ()
      >>> jax.grad(fdpg_loss)(log_pi, log_pi, jnp.array([-2.0, -6.0, -4.0]), log_z=0.0).shape
      (3,)

    References:
      Go, Korbak, Kruszewski, Rozen, Ryu, Dymetman, "Aligning Language Models with Preferences
      through f-divergence Minimization", ICML 2023, https://arxiv.org/abs/2302.08215
      (the f-DPG gradient estimator; authors' library https://github.com/naver/disco,
      ``disco/tuners/losses``).
    """
    log_pi = checks.float_array(policy_logps, "policy_logps")
    log_q = checks.float_array(proposal_logps, "proposal_logps")
    log_p_unnorm = checks.float_array(target_log_scores, "target_log_scores")
    checks.same_shape(log_pi, log_q, ("policy_logps", "proposal_logps"))
    checks.same_shape(log_pi, log_p_unnorm, ("policy_logps", "target_log_scores"))
    checks.one_of(divergence, "divergence", FDPG_DIVERGENCES)
    log_z = _scalar_or_like(log_z, log_pi, "log_z")
    baseline = _scalar_or_like(baseline, log_pi, "baseline")

    dtype = checks.compute_dtype(log_pi, log_q, log_p_unnorm, log_z, baseline)
    log_pi = log_pi.astype(dtype)
    sg_log_pi = jax.lax.stop_gradient(log_pi)
    log_p = jax.lax.stop_gradient(log_p_unnorm.astype(dtype) - log_z.astype(dtype))
    log_t = sg_log_pi - log_p
    weight = _clamped_exp(sg_log_pi - jax.lax.stop_gradient(log_q.astype(dtype)))
    advantage = -_fdpg_f_prime(log_t, divergence) - jax.lax.stop_gradient(baseline.astype(dtype))
    return jnp.mean(-weight * advantage * log_pi)
