"""Pure train / eval steps: the objective of a batch, gradients, optimizer update, metrics.

The training state is a plain dict pytree ``{"params", "opt_state", "step"}`` (plus
``"teacher_params"``/``"teacher_opt_state"`` in online distillation). Models enter as
``(graphdef, params)`` and are merged inside the jitted functions (NNX: split outside jit,
merge inside). The teacher is frozen unless ``online``: its forward pass runs under
``stop_gradient`` and it is never part of the saved state.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jaxdiv
from jaxdiv.train.objective import Objective, output_mask, task_loss


def forward(graphdef, params, batch, *, features: bool = False):
    """``(logits, intermediates or None)`` of the model ``(graphdef, params)`` on a batch
    (its ``segment_ids``, when the task packs documents, keep attention within each one)."""
    model = nnx.merge(graphdef, params)
    kwargs = {"segment_ids": batch["segment_ids"]} if "segment_ids" in batch else {}
    if features:
        return model(batch["tokens"], return_intermediates=True, **kwargs)
    return model(batch["tokens"], **kwargs), None


def micro_batches(batch, accum: int):
    """[B, ...] -> [accum, B / accum, ...]: micro-batch i takes rows i, i + accum, i + 2·accum….

    Strided rows keep every micro-batch spread over the devices of the batch axes exactly as
    the full batch is (device d holds the same rows of every micro-batch), so splitting moves
    no activation between devices.
    """
    return jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), batch
    )


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
    teacher then lives in the state). With ``grad_accum_steps = k`` the batch is split into k
    micro-batches whose gradients and metrics are averaged: the same update as one batch.
    """
    features = objective.needs_features

    def student_loss(params, teacher_out, batch, rng, step):
        logits, hidden = forward(graphdef, params, batch, features=features)
        teacher_logits, teacher_hidden = teacher_out
        return objective.loss(
            logits,
            batch,
            step=step,
            rng=rng,
            teacher_logits=teacher_logits,
            features=hidden,
            teacher_features=teacher_hidden,
        )

    def teacher_loss(teacher_params, student_logits, batch):
        logits, _ = forward(teacher_graphdef, teacher_params, batch)
        ce, _ = task_loss(logits, batch, objective.kind)
        reg = jaxdiv.reverse_kl(logits, student_logits)
        reg = jaxdiv.masked_mean(reg, output_mask(batch, objective.kind))
        return ce + objective.teacher_weight * reg, {"teacher_ce": ce}

    def grads_of(state, batch, teacher_params, rng):
        teacher_out = (None, None)
        if teacher_graphdef is not None:
            tp = state["teacher_params"] if objective.online else teacher_params
            teacher_out = jax.lax.stop_gradient(
                forward(teacher_graphdef, tp, batch, features=features)
            )
        (loss, metrics), grads = jax.value_and_grad(student_loss, has_aux=True)(
            state["params"], teacher_out, batch, rng, state["step"]
        )
        metrics["loss"] = loss
        out = {"student": grads}
        if objective.online:
            student_logits = jax.lax.stop_gradient(forward(graphdef, state["params"], batch)[0])
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
            micro = (jnp.arange(grad_accum_steps), micro_batches(batch, grad_accum_steps))
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
            assert teacher_tx is not None  # online mode always builds the teacher's optimizer
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
        logits, _ = forward(graphdef, params, batch)
        loss, metrics = task_loss(logits, batch, objective.kind)
        metrics["loss"] = loss
        # Weight of this batch in the held-out average (the last batch may be padded).
        rows = jnp.any(batch["mask"], axis=-1)
        metrics["weight"] = jnp.sum(rows if objective.kind == "classification" else batch["mask"])
        if teacher_graphdef is not None:
            teacher_logits, _ = forward(teacher_graphdef, teacher_params, batch)
            metrics["kl_to_teacher"] = jaxdiv.masked_mean(
                jaxdiv.forward_kl(logits, teacher_logits), output_mask(batch, objective.kind)
            )
        return metrics

    return eval_step
