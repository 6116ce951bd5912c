"""Pure train / eval steps: losses of a batch, gradients, optimizer update, metrics.

The training state is a plain dict pytree ``{"params", "opt_state", "step"}`` (plus
``"teacher_params"``/``"teacher_opt_state"`` in online distillation). Models enter as
``(graphdef, params)`` and are merged inside the jitted functions (NNX: split outside jit,
merge inside). The teacher is frozen unless ``online``: its forward pass runs under
``stop_gradient`` and it is never part of the saved state.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jaxdiv


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a step minimises; built from ``config.distill`` (weights 0 switch terms off)."""

    kind: str = "lm"  # "lm" (next-token CE) or "classification"
    task_weight: float = 1.0
    divergence: str | None = None  # registry name; None: no distillation
    divergence_kwargs: tuple = ()  # ((key, value), ...), hashable
    weight: float = 0.0
    temperature: float = 1.0
    temperature_end: float | None = None  # linear schedule to this value over total_steps
    total_steps: int = 1
    sinkhorn_weight: float = 0.0
    sinkhorn_rows: int = 64  # token rows subsampled per step for the O(N²) SinKD term
    online: bool = False  # teacher trains too (BD-KD style): CE + reverse-KL regulariser
    teacher_weight: float = 1.0


def entropy(logits: jax.Array) -> jax.Array:
    """Per-row entropy (nats) of softmax(logits), 0·log 0 = 0."""
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.where(log_p > -jnp.inf, jnp.exp(log_p) * log_p, 0.0), axis=-1)


def task_loss(logits, batch, kind: str):
    """Masked mean cross-entropy (LM: per token vs targets; classification: per sequence)."""
    if kind == "classification":
        rows = jnp.any(batch["mask"], axis=-1)  # padding rows (eval) have an all-False mask
        ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
        return jaxdiv.masked_mean(ce, rows), {"accuracy": jaxdiv.masked_mean(correct, rows)}
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
    return jaxdiv.masked_mean(ce, batch["mask"]), {
        "accuracy": jaxdiv.masked_mean(correct, batch["mask"])
    }


def _sinkhorn_term(student_logits, teacher_logits, mask, rng, objective: Objective):
    """SinKD on a random subset of the masked token rows (its cost is O(rows²))."""
    vocab = student_logits.shape[-1]
    s, t = student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab)
    rows = min(objective.sinkhorn_rows, s.shape[0])
    # Random rows among the valid ones: sort valid first by random keys.
    keys = jax.random.uniform(rng, (s.shape[0],)) + (~mask.reshape(-1)).astype(jnp.float32)
    index = jnp.argsort(keys)[:rows]
    valid = mask.reshape(-1)[index]
    return jaxdiv.sinkhorn_kd(s[index], t[index], where=valid)


def temperature_at(step, objective: Objective):
    """Distillation temperature at ``step``: constant, or linear to ``temperature_end``."""
    if objective.temperature_end is None:
        return jnp.float32(objective.temperature)
    frac = jnp.minimum(step / max(objective.total_steps - 1, 1), 1.0)
    return objective.temperature + frac * (objective.temperature_end - objective.temperature)


def objective_terms(logits, teacher_logits, batch, rng, objective: Objective, temperature=None):
    """(loss, metrics) of the student given (stop-gradient) teacher logits."""
    loss, metrics = task_loss(logits, batch, objective.kind)
    metrics["ce"] = loss
    loss = objective.task_weight * loss
    if teacher_logits is None:
        return loss, metrics
    mask = batch["mask"]
    if objective.divergence is not None and objective.weight:
        fn = jaxdiv.get(objective.divergence)
        per_token = fn(
            logits, teacher_logits, temperature=temperature, **dict(objective.divergence_kwargs)
        )
        divergence = jaxdiv.masked_mean(per_token, mask)
        metrics["divergence"] = divergence
        loss = loss + objective.weight * divergence
    if objective.sinkhorn_weight:
        sinkhorn = _sinkhorn_term(logits, teacher_logits, mask, rng, objective)
        metrics["sinkhorn"] = sinkhorn
        loss = loss + objective.sinkhorn_weight * sinkhorn
    metrics["student_entropy"] = jaxdiv.masked_mean(entropy(logits), mask)
    metrics["teacher_entropy"] = jaxdiv.masked_mean(entropy(teacher_logits), mask)
    return loss, metrics


def _micro_batches(batch, accum: int):
    """[B, ...] -> [accum, B / accum, ...] for gradient accumulation."""
    return jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)


def make_train_step(
    graphdef,
    tx: optax.GradientTransformation,
    objective: Objective,
    *,
    teacher_graphdef=None,
    teacher_tx: optax.GradientTransformation | None = None,
    grad_accum_steps: int = 1,
    seed: int = 0,
) -> Callable:
    """Returns ``step(state, batch, teacher_params) -> (state, metrics)`` (a pure function).

    ``teacher_params`` is ``None`` without distillation, and ignored in online mode (the
    teacher then lives in the state).
    """

    def student_loss(params, teacher_logits, batch, rng, temperature):
        model = nnx.merge(graphdef, params)
        logits = model(batch["tokens"])
        return objective_terms(logits, teacher_logits, batch, rng, objective, temperature)

    def teacher_forward(teacher_params, batch):
        teacher = nnx.merge(teacher_graphdef, teacher_params)
        return teacher(batch["tokens"])

    def teacher_loss(teacher_params, student_logits, batch):
        logits = teacher_forward(teacher_params, batch)
        ce, _ = task_loss(logits, batch, objective.kind)
        reg = jaxdiv.masked_mean(jaxdiv.reverse_kl(logits, student_logits), batch["mask"])
        return ce + objective.teacher_weight * reg, {"teacher_ce": ce}

    def grads_of(state, batch, teacher_params, rng):
        teacher_logits = None
        if teacher_graphdef is not None:
            tp = state["teacher_params"] if objective.online else teacher_params
            teacher_logits = jax.lax.stop_gradient(teacher_forward(tp, batch))
        temperature = temperature_at(state["step"], objective)
        (loss, metrics), grads = jax.value_and_grad(student_loss, has_aux=True)(
            state["params"], teacher_logits, batch, rng, temperature
        )
        if teacher_logits is not None:
            metrics["temperature"] = temperature
        metrics["loss"] = loss
        out = {"student": grads}
        if objective.online:
            student_logits = jax.lax.stop_gradient(
                nnx.merge(graphdef, state["params"])(batch["tokens"])
            )
            (t_loss, t_metrics), t_grads = jax.value_and_grad(teacher_loss, has_aux=True)(
                state["teacher_params"], student_logits, batch
            )
            metrics.update(t_metrics, teacher_loss=t_loss)
            out["teacher"] = t_grads
        return out, metrics

    def step(state, batch, teacher_params=None):
        rng = jax.random.fold_in(jax.random.key(seed), state["step"])
        if grad_accum_steps == 1:
            grads, metrics = grads_of(state, batch, teacher_params, rng)
        else:

            def body(carry, micro):
                index, micro_batch = micro
                g, m = grads_of(state, micro_batch, teacher_params, jax.random.fold_in(rng, index))
                return jax.tree.map(jnp.add, carry, (g, m)), None

            zeros = jax.eval_shape(
                grads_of, state, jax.tree.map(lambda x: x[:1], batch), teacher_params, rng
            )
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
            micro = (jnp.arange(grad_accum_steps), _micro_batches(batch, grad_accum_steps))
            (grads, metrics), _ = jax.lax.scan(body, zeros, micro)
            grads, metrics = jax.tree.map(lambda x: x / grad_accum_steps, (grads, metrics))
        updates, opt_state = tx.update(grads["student"], state["opt_state"], state["params"])
        new_state = dict(
            state,
            params=optax.apply_updates(state["params"], updates),
            opt_state=opt_state,
            step=state["step"] + 1,
        )
        metrics["grad_norm"] = optax.tree.norm(grads["student"])
        metrics["param_norm"] = optax.tree.norm(new_state["params"])
        if objective.online:
            t_updates, t_opt = teacher_tx.update(
                grads["teacher"], state["teacher_opt_state"], state["teacher_params"]
            )
            new_state["teacher_params"] = optax.apply_updates(state["teacher_params"], t_updates)
            new_state["teacher_opt_state"] = t_opt
        return new_state, metrics

    return step


def make_eval_step(graphdef, objective: Objective, *, teacher_graphdef=None) -> Callable:
    """Returns ``eval_step(params, batch, teacher_params) -> metrics`` (batch means + weight)."""

    def eval_step(params, batch, teacher_params=None):
        logits = nnx.merge(graphdef, params)(batch["tokens"])
        loss, metrics = task_loss(logits, batch, objective.kind)
        metrics["loss"] = loss
        # Weight of this batch in the held-out average (the last batch may be padded).
        rows = jnp.any(batch["mask"], axis=-1)
        metrics["weight"] = jnp.sum(rows if objective.kind == "classification" else batch["mask"])
        if teacher_graphdef is not None:
            teacher_logits = nnx.merge(teacher_graphdef, teacher_params)(batch["tokens"])
            metrics["kl_to_teacher"] = jaxdiv.masked_mean(
                jaxdiv.forward_kl(logits, teacher_logits), batch["mask"]
            )
        return metrics

    return eval_step
