r"""Reconstructions of published objectives whose method equations could not be verified.

Everything here follows the public descriptions of a paper (abstracts, reviews, citing papers,
code the paper builds on) but **not** its method section, which could not be read for either
paper: the formulas are this library's reconstructions, documented as such, and are kept out of
the verified registry (:func:`jaxdiv.get` / :func:`jaxdiv.names`). Select them explicitly, from
this module or with :func:`get` / :func:`names` here. Each function states which parts are
attested and by which source; the sources are collected in the project's research note
``research/papers-bdkd-sequencematch.md``.

* :func:`bd_kd`, :func:`bd_kd_teacher`: BD-KD (Amara et al., arXiv 2212.12965). No method
  equations or code are public. Sources: the v1 abstract (student-side balancing only), the v2
  abstract (sample-wise forward/reverse KL weighting on the student **and** teacher losses), a
  machine-written summary (sciencestack.ai: weights "guided by the entropy gap", teacher uses
  "reverse KL as a regularizer") and ABKD (Wang et al., ICML 2025), which cites BD-KD for
  entropy-based weighting of forward and reverse KL.
* :func:`sequence_match_loss`: SequenceMatch (Cundy & Ermon, ICLR 2024, arXiv 2306.05426). No
  code is public (a reproducibility audit, ri.k117.org, finds none). Sources: two OpenReview-based
  reviews of the paper (V = logsumexp of the logits, φ(x) = x − x²/4 for χ², γ^i step weights,
  γ = 0.998, α = 0.01, η = 0.001, negative sampling by "random noise" and "ground-truth noise"),
  the author's blog post quoting the paper on padding (``C-J-Cundy/website``: sequences shorter
  than N are treated as "having a sequence of padding tokens appended") and the IQ-Learn
  reference code it builds on (``Div99/IQ-Learn``, ``iq_learn/iq.py``).

If a full method section turns up, the functions are to be re-derived from it with float64 tests
of the same equations.

Conventions (API.md §1): student first, teacher second, per-row output (``sequence_match_loss``
is batch-wise, a scalar), ``where`` masks, no :math:`T^2` factor, gradients not stopped by the
losses unless stated.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import checks
from jaxdiv._logits import finish, kl, log_probs

# B batch, L length, V vocabulary (actions)

# ---------------------------------------------------------------- BD-KD


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
        >>> from jaxdiv.experimental import bd_kd
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
    balanced: bool = False,
    sharpness: float | jax.Array = float("inf"),
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

    ``balanced=True`` follows the v2 abstract, which (unlike v1) applies the "sample-wise
    weighting of forward and reverse Kullback-Leibler divergence" to the teacher's loss too:
    the teacher then gets the same per-row mixture as the student,

    .. math::
        \mathcal{L}_{\mathrm{BD}}^{\text{teacher, balanced}} =
        (1 - w)\,\mathrm{KL}(p_t \| p_s) + w\,\mathrm{KL}(p_s \| p_t),

    with the weight :math:`w` of :func:`bd_kd` (``sharpness`` as there; held constant), i.e.
    the value of :func:`bd_kd`, to be differentiated with respect to the teacher. Under the hard
    switch a row whose student is less confident than the teacher keeps the plain term above.

    .. warning::
        **Not verified against the paper.** A third-party summary of arXiv 2212.12965 says that
        "the teacher objective uses reverse KL as a regularizer". The summary uses the
        paper's notation, in which reverse KL is :math:`\mathrm{KL}(p^s\|p^t)`. The v2 abstract
        says the teacher loss is weighted per sample as well; the ``balanced`` form (the same
        mixture as the student's) is this module's reading of that sentence, not a
        transcription.

    Args:
        student_logits: unnormalised student scores, shape ``[..., V]`` (``V`` on ``axis``).
        teacher_logits: unnormalised teacher scores, same shape.
        balanced: ``False`` (v1 / summary: plain :math:`\mathrm{KL}(p_s\|p_t)`) or ``True``
            (v2: the entropy-gap-weighted mixture of :func:`bd_kd`).
        sharpness: ``balanced=True`` only: :math:`\kappa \in [0, \infty]` of :func:`bd_kd`.
        temperature: softmax temperature :math:`T > 0` (no :math:`T^2` factor).
        axis: the class axis.
        where: optional boolean mask, shape ``[...]`` (rows) or ``[..., V]`` (classes).

    Returns:
        Loss per row, shape ``[...]``, float32 (float64 for float64 inputs under x64).

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxdiv.experimental import bd_kd_teacher
        >>> s, t = jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([0.9, 0.1]))
        >>> print(f"{bd_kd_teacher(s, t):.4f}")
        0.5108
        >>> print(f"{bd_kd_teacher(t, s, balanced=True):.4f}")  # over-confident: forward KL
        0.5108

    References:
        Amara, Sepahvand, Meyer, Gross, Clark, `BD-KD: Balancing the Divergences for Online
        Knowledge Distillation <https://arxiv.org/abs/2212.12965>`_, arXiv 2212.12965 (v2, 2024),
        §3 (teacher loss); v1 abstract http://arxiv.org/abs/2212.12965v1 (student side only).
        Unverified against the paper (see the warning).
    """
    if not isinstance(balanced, bool):
        raise TypeError(f"`balanced` must be a bool, got {type(balanced).__name__}.")
    if balanced:
        return bd_kd(
            student_logits,
            teacher_logits,
            sharpness=sharpness,
            temperature=temperature,
            axis=axis,
            where=where,
        )
    _check_sharpness(sharpness)
    lp = log_probs(student_logits, teacher_logits, temperature=temperature, axis=axis, where=where)
    return finish(kl(lp.student, lp.teacher), lp.row_mask)


# ---------------------------------------------------------------- SequenceMatch


# B batch, L length, V vocabulary (actions)


def _int_array(x, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"`{name}` must have an integer dtype (token ids), got dtype {x.dtype}.")
    return x


def _bool_array(x, name: str, shape: tuple[int, ...], layout: str) -> jax.Array:
    x = jnp.asarray(x)
    if x.dtype != jnp.bool_:
        raise TypeError(f"`{name}` must be a boolean mask, got dtype {x.dtype}.")
    checks.exact_shape(x, shape, name, layout)
    return x


def sequence_match_loss(
    logits: ArrayLike,
    actions: ArrayLike,
    *,
    is_data: ArrayLike,
    where: ArrayLike | None = None,
    gamma: float | jax.Array = 1.0,
    alpha: float | jax.Array | None = 0.5,
    weighting: str = "uniform",
    terminal: str = "zero",
    pad_id: int | None = None,
) -> jax.Array:
    r"""SequenceMatch-χ² loss: IQ-Learn objective with the logits as Q-values, χ² to the mixture.

    For each sequence, position :math:`t` holds the state :math:`s_t` (the prefix), ``logits`` are
    :math:`\ell_\theta(\cdot \mid s_t)` and ``actions`` the token :math:`a_t` taken there, so
    :math:`s_{t+1}` is at position :math:`t+1`. With soft values and implied rewards

    .. math::
        V(s) = \log \sum_{a'} e^{\ell_\theta(a' \mid s)}, \qquad
        r_t = \ell_\theta(a_t \mid s_t) - \gamma\, V(s_{t+1}),

    and :math:`V = 0` at the terminal state that follows the last valid position (IQ-Learn's
    :math:`(1 - \text{done})`, ``terminal="zero"``; see below for ``"absorbing"``), the loss to
    **minimise** is

    .. math::
        \mathcal L(\theta) = -\,\mathbb E_{\text{data}}\Big[\sum_t w_t\, r_t\Big]
        + \mathbb E_{\text{mix}}\Big[\sum_t w_t \big(V(s_t) - \gamma V(s_{t+1})\big)\Big]
        + \frac{1}{4\alpha}\, \mathbb E_{\text{mix}}\Big[\sum_t w_t\, r_t^2\Big],

    with :math:`\mathbb E_{\text{mix}} = \tfrac12 \mathbb E_{\text{data}}
    + \tfrac12 \mathbb E_{\text{model}}`. Each expectation is a mean over the sequences of that
    kind in the batch (``is_data`` True / False). When one kind is absent, the mixture is the
    other kind alone. The position weights :math:`w_t` are 1 (``weighting="uniform"``, as IQ-Learn
    samples transitions) or :math:`\gamma^t` (``"discounted"``, the discounted occupancy measure).

    Where it comes from (derived here; see the module warning). χ² has
    :math:`f(x) = (x-1)^2`, with conjugate :math:`f^*(y) = y + y^2/4`. Then
    :math:`D_{\chi^2}(\rho_{\text{data}} \,\|\, \tfrac12(\rho_{\text{data}} + \rho_\theta))
    = \sup_r \mathbb E_{\text{data}}[r] - \mathbb E_{\text{mix}}[r + r^2/4]`, which is half of
    :math:`\mathbb E_{\text{data}}[r] - \mathbb E_\theta[r] - \tfrac12\mathbb E_{\text{mix}}[r^2]`.
    IQ-Learn's change of variables :math:`r = Q - \gamma V'` replaces the policy term by
    :math:`\mathbb E_\rho[V(s) - \gamma V(s')]`, for any occupancy :math:`\rho` (here the
    mixture). So ``alpha=0.5`` (:math:`1/(4\alpha) = 1/2`) is this χ²-mixture divergence exactly.
    Other values scale the χ² term as IQ-Learn's ``alpha`` does. ``alpha=None`` drops the
    quadratic term (:math:`\phi(x) = x`).

    Identity (tested): with data sequences only and ``alpha=None`` the value terms cancel the
    bootstrap terms transition by transition, which leaves maximum likelihood,
    :math:`\mathcal L = -\mathbb E_{\text{data}}[\sum_t w_t \log \mathrm{softmax}(\ell_\theta
    (\cdot\mid s_t))_{a_t}]`. This is :math:`-\sum_t \log \pi_\theta(a_t \mid s_t)` per sequence
    for ``"uniform"`` (any :math:`\gamma`) or for :math:`\gamma = 1`.

    Out of scope: generating model samples (with or without the ⟨bkspc⟩ action) and the
    paper's masking algorithm, which turns sequences containing backspaces into transformer
    inputs whose position :math:`t` holds state :math:`s_t`. A backspace is just an action
    id here. The paper's terminal/⟨eos⟩ treatment, its auxiliary terms and its exact
    hyperparameter conventions are not reproduced either. The reviews report the paper's
    settings as :math:`\gamma = 0.998`, :math:`\gamma^i` step weights (``"discounted"``; the
    defaults here are IQ-Learn's ``gamma=1``, ``"uniform"``), :math:`\alpha = 0.01`
    (parametrisation unknown: it is not attested to be this ``alpha``) and
    :math:`\eta = 0.001`, probably the weight of a behavioural-cloning (MLE) term that the
    paper mixes in after a BC-only warm-up; add that term yourself.

    Padding (``terminal="absorbing"``). The paper handles sequences of different lengths by
    "choosing an effective length N = max n, and treating all sequences shorter than N as
    having a sequence of padding tokens appended" (quoted by its author). With
    ``terminal="absorbing"`` every sequence runs to :math:`N = L`: after its last valid
    position it sits in the padding state and takes the action ``pad_id`` at every remaining
    position, with the model's own ``logits`` there as that state's Q-values (so pass the
    model's outputs on the padded input; they must be finite). Only the end of the array is
    terminal. This equals ``terminal="zero"`` on full-length sequences whose actions are
    ``pad_id`` after the end. Rows with no valid position are still removed.

    Negative samples. The ``is_data=False`` rows need not be the model's own generations: the
    paper's reviews describe negative sampling by "random noise" and "ground-truth noise", i.e.
    perturbed data sequences, which enter the loss the same way (``is_data=False``).

    Args:
        logits: ``[B, L, V]`` float, :math:`\ell_\theta(\cdot \mid s_t)` at each position.
        actions: ``[B, L]`` integer :math:`a_t \in [0, V)`; masked positions may hold anything
            (e.g. -100).
        is_data: ``[B]`` bool, True for dataset sequences and False for model samples.
        where: optional ``[B, L]`` bool of valid positions. Sequences are left-aligned:
            positions after the first False in a row are ignored. A row with no valid
            position is removed (the same as slicing it out). Masked logits may be NaN or -inf
            (with ``terminal="absorbing"``, only in rows with no valid position).
        gamma: discount :math:`\gamma \in (0, 1]` (Python number or JAX scalar).
        alpha: :math:`\alpha > 0`, weight :math:`1/(4\alpha)` of the χ² term, or ``None`` for
            no χ² term.
        weighting: ``"uniform"`` (:math:`w_t = 1`) or ``"discounted"`` (:math:`w_t = \gamma^t`).
        terminal: ``"zero"`` (:math:`V = 0` after the last valid position, IQ-Learn) or
            ``"absorbing"`` (padding state up to :math:`L`, the paper's padding to a common
            length).
        pad_id: the padding action, an int in ``[0, V)``; required for ``"absorbing"``.

    Returns:
        The batch loss, a scalar (float32; float64 for float64 logits under x64). It is
        batch-wise by definition: the data and mixture expectations need both kinds of sequence.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxdiv.experimental import sequence_match_loss
        >>> logits = jax.random.normal(jax.random.key(0), (4, 6, 10))
        >>> actions = jnp.zeros((4, 6), jnp.int32)
        >>> is_data = jnp.array([True, True, False, False])
        >>> sequence_match_loss(logits, actions, is_data=is_data, gamma=0.998).shape
        ()
        >>> nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), actions[..., None], -1)
        >>> mle = sequence_match_loss(logits, actions, is_data=jnp.ones(4, bool), alpha=None)
        >>> bool(jnp.allclose(mle, nll.sum((1, 2)).mean(), rtol=1e-5))
        True

    References:
        Cundy & Ermon, `SequenceMatch: Imitation Learning for Autoregressive Sequence Modelling
        with Backtracking <https://arxiv.org/abs/2306.05426>`_, ICLR 2024 (the objective of its
        §3-4; equation numbers unverified, see the warning). Garg et al., `IQ-Learn: Inverse
        soft-Q Learning for Imitation <https://arxiv.org/abs/2106.12142>`_, NeurIPS 2021, Eq. (10)
        and code ``iq_learn/iq.py``. Al-Hafez et al., `LS-IQ: Implicit Reward Regularization for
        Inverse Reinforcement Learning <https://arxiv.org/abs/2303.00599>`_, ICLR 2023 (χ² on the
        mixture).
    """
    q = checks.float_array(logits, "logits")
    if q.ndim != 3:
        raise ValueError(f"`logits` must have rank 3 ([B, L, V]), got shape {q.shape}.")
    B, L, _ = q.shape
    a = _int_array(actions, "actions")
    checks.exact_shape(a, (B, L), "actions", "[B, L]")
    is_data = _bool_array(is_data, "is_data", (B,), "[B]")
    valid = (
        jnp.ones((B, L), bool) if where is None else _bool_array(where, "where", (B, L), "[B, L]")
    )
    checks.scalar_in_range(gamma, "gamma", low=0.0, high=1.0, low_open=True)
    if alpha is not None:
        checks.positive(alpha, "alpha")
    checks.one_of(weighting, "weighting", ("uniform", "discounted"))
    checks.one_of(terminal, "terminal", ("zero", "absorbing"))
    pad = 0
    if terminal == "absorbing":
        if isinstance(pad_id, bool) or not isinstance(pad_id, int) or not 0 <= pad_id < q.shape[2]:
            raise ValueError(
                f"`pad_id` must be an int in [0, {q.shape[2]}) with terminal='absorbing', "
                f"got {pad_id!r}."
            )
        pad = pad_id

    dtype = checks.compute_dtype(q)
    valid = jnp.cumprod(valid, axis=1).astype(bool)  # [B, L] left-aligned prefix
    if terminal == "absorbing":
        # After its end a sequence stays in the padding state, taking `pad_id`, up to L.
        a = jnp.where(valid, a, pad)
        valid = jnp.broadcast_to(valid[:, :1], (B, L))
    # First `where`: masked positions become zeros before any logsumexp (NaN/-inf stay out).
    q = jnp.where(valid[..., None], q.astype(dtype), 0.0)  # [B, L, V]
    gamma = jnp.asarray(gamma, dtype)
    v = jax.nn.logsumexp(q, axis=-1)  # [B, L] V(s_t)
    q_a = jnp.take_along_axis(q, jnp.where(valid, a, 0)[..., None], axis=-1)[..., 0]  # [B, L]
    next_valid = jnp.pad(valid[:, 1:], ((0, 0), (0, 1)))  # [B, L] False: s_{t+1} is terminal
    v_next = jnp.where(next_valid, jnp.pad(v[:, 1:], ((0, 0), (0, 1))), 0.0)  # [B, L]
    r = q_a - gamma * v_next  # [B, L]
    if weighting == "uniform":
        w = valid.astype(dtype)
    else:
        w = jnp.where(valid, gamma ** jnp.arange(L, dtype=dtype), 0.0)  # [B, L]

    def per_sequence(x):  # [B, L] -> [B], masked positions exactly 0
        return jnp.sum(w * jnp.where(valid, x, 0.0), axis=1)

    present = valid[:, 0]  # [B] rows with at least one valid position
    data, model = present & is_data, present & ~is_data
    n_data = jnp.sum(data, dtype=dtype)
    n_model = jnp.sum(model, dtype=dtype)

    def mean_over(rows, x):  # [B] -> scalar mean over `rows`, 0 when empty
        return jnp.sum(jnp.where(rows, x, 0.0)) / jnp.maximum(jnp.sum(rows, dtype=dtype), 1.0)

    def mixture(x):
        w_data = jnp.where(n_model > 0, 0.5, 1.0)
        w_model = jnp.where(n_data > 0, 0.5, 1.0)
        return w_data * mean_over(data, x) + w_model * mean_over(model, x)

    loss = -mean_over(data, per_sequence(r)) + mixture(per_sequence(v - gamma * v_next))
    if alpha is not None:
        loss = loss + mixture(per_sequence(r * r)) / (4.0 * jnp.asarray(alpha, dtype))
    return loss


# ---------------------------------------------------------------- registry of the per-row ones

_REGISTRY: dict[str, Callable[..., jax.Array]] = {fn.__name__: fn for fn in (bd_kd, bd_kd_teacher)}


def names() -> tuple[str, ...]:
    """The experimental per-row divergences, sorted (not in :func:`jaxdiv.names`).

    Examples:
        >>> import jaxdiv.experimental
        >>> jaxdiv.experimental.names()
        ('bd_kd', 'bd_kd_teacher')
    """
    return tuple(sorted(_REGISTRY))


def get(name: str) -> Callable[..., jax.Array]:
    """The experimental per-row divergence ``name``; ``ValueError`` listing :func:`names` if none.

    Examples:
        >>> import jaxdiv.experimental
        >>> jaxdiv.experimental.get("bd_kd") is jaxdiv.experimental.bd_kd
        True
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown experimental divergence {name!r}; expected one of {list(names())}."
        )
    return _REGISTRY[name]
