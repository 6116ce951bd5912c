"""What a training step minimises: the task loss plus the distillation terms, in one object.

:meth:`Objective.from_config` is the only place that reads ``config.distill``; a train step
calls :meth:`Objective.loss` with the student's and the teacher's outputs. The path of a
config key to the loss is therefore::

    --config.distill.temperature        (train/config.py: apply_overrides)
    -> Objective.from_config            (this file: checked, frozen)
    -> Objective.loss                   (this file: temperature_at(step) -> divergence)
    -> jaxdiv.get(divergence)(s, t, temperature=...)

Terms (a weight of 0 switches a term off):

    loss = task_weight · CE
         + weight · mean_tokens D(student ‖ teacher; T)       (any registry divergence)
         + sinkhorn_weight · SinKD(subsampled token rows)
         + feature_weight · Σ_layers mean_tokens ‖h_s − h_t‖² / D   (feature distillation)

A classification task (digits) is distilled per sequence: its rows are the class logits
[B, C] of each sequence (``output_mask``), for CE, the divergence and SinKD alike.
"""

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

import jaxdiv


def config_to_dict(config) -> dict:
    """A ConfigDict (or mapping) as a plain dict."""
    return config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)


def entropy(logits: jax.Array) -> jax.Array:
    """Per-row entropy (nats) of softmax(logits), 0·log 0 = 0."""
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.where(log_p > -jnp.inf, jnp.exp(log_p) * log_p, 0.0), axis=-1)


def output_mask(batch: Mapping, kind: str) -> jax.Array:
    """Which outputs are real: LM ``mask`` [B, L] (one prediction per token); classification
    [B] (one per sequence; padding rows of an eval batch have an all-False mask)."""
    return jnp.any(batch["mask"], axis=-1) if kind == "classification" else batch["mask"]


def task_loss(logits: jax.Array, batch: Mapping, kind: str) -> tuple[jax.Array, dict]:
    """Masked mean cross-entropy (LM: per token vs targets; classification: per sequence)."""
    if kind == "classification":
        rows = output_mask(batch, kind)
        ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
        return jaxdiv.masked_mean(ce, rows), {"accuracy": jaxdiv.masked_mean(correct, rows)}
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
    return jaxdiv.masked_mean(ce, batch["mask"]), {
        "accuracy": jaxdiv.masked_mean(correct, batch["mask"])
    }


def feature_distance(student: jax.Array, teacher: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked mean over tokens of ‖h_s − h_t‖² / D for hidden states [B, L, D]."""
    diff = student.astype(jnp.float32) - teacher.astype(jnp.float32)
    return jaxdiv.masked_mean(jnp.mean(diff**2, axis=-1), mask)


def _positive_temperature(value, key: str) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"config.distill.{key} must be > 0, got {value}.")
    return value


@dataclasses.dataclass(frozen=True)
class Objective:
    """The loss of a run (hashable: it is closed over by the jitted steps)."""

    kind: str = "lm"  # "lm" (next-token CE) or "classification"
    task_weight: float = 1.0
    divergence: str | None = None  # registry name; None: no divergence term
    divergence_kwargs: tuple = ()  # ((key, value), ...), hashable
    weight: float = 0.0
    temperature: float = 1.0
    temperature_end: float | None = None  # linear schedule to this value over total_steps
    total_steps: int = 1
    sinkhorn_weight: float = 0.0
    sinkhorn_rows: int = 64  # token rows subsampled per step for the O(N²) SinKD term
    feature_weight: float = 0.0
    feature_layers: tuple[str, ...] = ("final_norm",)  # names of the models' intermediates
    online: bool = False  # teacher trains too (BD-KD style): CE + reverse-KL regulariser
    teacher_weight: float = 1.0

    @classmethod
    def from_config(cls, config, kind: str) -> "Objective":
        """The objective of ``config`` (its ``distill`` section) for a task of ``kind``.

        Every distillation setting is checked here, before anything compiles: an unknown
        divergence, a temperature (or the end of its schedule) ≤ 0. A classification task is
        distilled per sequence: the divergence (and SinKD) compare the student's and the
        teacher's class logits [B, C], one row per sequence.
        """
        distill = config.get("distill")
        if distill is None:
            return cls(kind=kind)
        if distill.divergence is not None and distill.divergence not in jaxdiv.names():
            raise ValueError(
                f"config.distill.divergence={distill.divergence!r} is not a registered "
                f"divergence; expected one of {list(jaxdiv.names())}."
            )
        end = distill.get("temperature_end")
        return cls(
            kind=kind,
            task_weight=float(distill.task_weight),
            divergence=distill.divergence,
            divergence_kwargs=tuple(sorted(config_to_dict(distill.kwargs).items())),
            weight=float(distill.weight),
            temperature=_positive_temperature(distill.temperature, "temperature"),
            temperature_end=None if end is None else _positive_temperature(end, "temperature_end"),
            total_steps=int(config.steps),
            sinkhorn_weight=float(distill.sinkhorn_weight),
            sinkhorn_rows=int(distill.get("sinkhorn_rows", 64)),
            feature_weight=float(distill.get("feature_weight", 0.0)),
            feature_layers=tuple(distill.get("feature_layers", ("final_norm",))),
            online=bool(distill.get("online", False)),
            teacher_weight=float(distill.get("teacher_weight", 1.0)),
        )

    @property
    def needs_teacher(self) -> bool:
        """Whether any term compares the student with a teacher."""
        return bool(
            (self.divergence is not None and self.weight)
            or self.sinkhorn_weight
            or self.feature_weight
        )

    @property
    def needs_features(self) -> bool:
        """Whether the models must return their named intermediates."""
        return bool(self.feature_weight)

    def temperature_at(self, step) -> jax.Array:
        """Distillation temperature at ``step``: constant, or linear to ``temperature_end``."""
        if self.temperature_end is None:
            return jnp.float32(self.temperature)
        frac = jnp.minimum(step / max(self.total_steps - 1, 1), 1.0)
        return self.temperature + frac * (self.temperature_end - self.temperature)

    def _sinkhorn(self, student_logits, teacher_logits, mask, rng) -> jax.Array:
        """SinKD on a random subset of the masked rows, tokens or sequences (cost O(rows²))."""
        vocab = student_logits.shape[-1]
        s, t = student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab)
        rows = min(self.sinkhorn_rows, s.shape[0])
        # Random rows among the valid ones: sort valid first by random keys.
        keys = jax.random.uniform(rng, (s.shape[0],)) + (~mask.reshape(-1)).astype(jnp.float32)
        index = jnp.argsort(keys)[:rows]
        return jaxdiv.sinkhorn_kd(s[index], t[index], where=mask.reshape(-1)[index])

    def loss(
        self,
        logits: jax.Array,
        batch: Mapping,
        *,
        step,
        rng: jax.Array,
        teacher_logits: jax.Array | None = None,
        features: Mapping | None = None,
        teacher_features: Mapping | None = None,
    ) -> tuple[jax.Array, dict]:
        """``(loss, metrics)`` of the student; the teacher's outputs are taken as given."""
        loss, metrics = task_loss(logits, batch, self.kind)
        metrics["ce"] = loss
        loss = self.task_weight * loss
        if teacher_logits is None:
            return loss, metrics
        mask = output_mask(batch, self.kind)  # one row per token (LM) or sequence (classes)
        temperature = self.temperature_at(step)
        metrics["temperature"] = temperature
        if self.divergence is not None and self.weight:
            per_token = jaxdiv.get(self.divergence)(
                logits, teacher_logits, temperature=temperature, **dict(self.divergence_kwargs)
            )
            metrics["divergence"] = jaxdiv.masked_mean(per_token, mask)
            loss = loss + self.weight * metrics["divergence"]
        if self.sinkhorn_weight:
            metrics["sinkhorn"] = self._sinkhorn(logits, teacher_logits, mask, rng)
            loss = loss + self.sinkhorn_weight * metrics["sinkhorn"]
        if self.feature_weight:
            if features is None or teacher_features is None:
                raise ValueError("feature distillation needs `features` and `teacher_features`.")
            metrics["features"] = sum(  # hidden states are per token in both kinds of task
                feature_distance(features[name], teacher_features[name], batch["mask"])
                for name in self.feature_layers
            )
            loss = loss + self.feature_weight * metrics["features"]
        metrics["student_entropy"] = jaxdiv.masked_mean(entropy(logits), mask)
        metrics["teacher_entropy"] = jaxdiv.masked_mean(entropy(teacher_logits), mask)
        return loss, metrics

    def check_features(self, student_config, teacher_config) -> None:
        """ValueError unless every feature layer exists in both models with equal widths."""
        if not self.feature_weight:
            return
        if student_config.d_model != teacher_config.d_model:
            raise ValueError(
                f"config.distill.feature_weight needs equal widths; got student d_model="
                f"{student_config.d_model}, teacher d_model={teacher_config.d_model}."
            )
        for config, who in ((student_config, "student"), (teacher_config, "teacher")):
            names = {"embedding", "final_norm", *(f"layer_{i}" for i in range(config.n_layers))}
            unknown = sorted(set(self.feature_layers) - names)
            if unknown:
                raise ValueError(
                    f"config.distill.feature_layers has {unknown}, not intermediates of the "
                    f"{who}; expected names from {sorted(names)}."
                )
