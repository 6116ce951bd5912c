r"""SequenceMatch (Cundy & Ermon, ICLR 2024, arXiv 2306.05426): χ²-mixture imitation objective.

The model's logits are read as soft Q-values, and the loss is the IQ-Learn saddle-point form of an
occupancy-measure divergence between data sequences and model-generated sequences.

.. warning::
    **The exact equations of the paper could not be retrieved** while this module was written;
    only the abstract and third-party summaries could. What those state: logits are the
    Q-function, the objective is non-adversarial (IQ-Learn style), and the recommended divergence
    is the χ² divergence between the data and the data/model mixture. The formula below is
    derived here from that description, from the χ² convex conjugate, and from the IQ-Learn
    reference code (``Div99/IQ-Learn``, ``iq_learn/iq.py``: its ``value`` and ``regularize``
    χ² options). The terminal-state rule (:math:`V = 0` after the last token) and the ``alpha``
    parametrisation are IQ-Learn's conventions, not checked against the SequenceMatch paper.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import checks

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
) -> jax.Array:
    r"""SequenceMatch-χ² loss: IQ-Learn objective with the logits as Q-values, χ² to the mixture.

    For each sequence, position :math:`t` holds the state :math:`s_t` (the prefix), ``logits`` are
    :math:`\ell_\theta(\cdot \mid s_t)` and ``actions`` the token :math:`a_t` taken there, so
    :math:`s_{t+1}` is at position :math:`t+1`. With soft values and implied rewards

    .. math::
        V(s) = \log \sum_{a'} e^{\ell_\theta(a' \mid s)}, \qquad
        r_t = \ell_\theta(a_t \mid s_t) - \gamma\, V(s_{t+1}),

    and :math:`V = 0` at the terminal state that follows the last valid position (IQ-Learn's
    :math:`(1 - \text{done})`), the loss to **minimise** is

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
    hyperparameter conventions are not reproduced either. A secondary source reports
    :math:`\gamma = 0.998`, :math:`\alpha = 0.01` (parametrisation unknown) and an extra
    :math:`\eta = 0.001`.

    Args:
        logits: ``[B, L, V]`` float, :math:`\ell_\theta(\cdot \mid s_t)` at each position.
        actions: ``[B, L]`` integer :math:`a_t \in [0, V)`; masked positions may hold anything
            (e.g. -100).
        is_data: ``[B]`` bool, True for dataset sequences and False for model samples.
        where: optional ``[B, L]`` bool of valid positions. Sequences are left-aligned:
            positions after the first False in a row are ignored. A row with no valid
            position is removed (the same as slicing it out). Masked logits may be NaN or -inf.
        gamma: discount :math:`\gamma \in (0, 1]` (Python number or JAX scalar).
        alpha: :math:`\alpha > 0`, weight :math:`1/(4\alpha)` of the χ² term, or ``None`` for
            no χ² term.
        weighting: ``"uniform"`` (:math:`w_t = 1`) or ``"discounted"`` (:math:`w_t = \gamma^t`).

    Returns:
        The batch loss, a scalar (float32; float64 for float64 logits under x64). It is
        batch-wise by definition: the data and mixture expectations need both kinds of sequence.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxdiv._sequence_match import sequence_match_loss
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

    dtype = checks.compute_dtype(q)
    valid = jnp.cumprod(valid, axis=1).astype(bool)  # [B, L] left-aligned prefix
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
