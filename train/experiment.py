"""Everything a run needs, built from its config: ``build(config, workdir) -> Experiment``.

:func:`build` makes the mesh-bound pieces of a run (task, objective, model graph, optimizer,
state shardings, teacher, jitted steps, the compiled train step) and checks the config
before anything runs. The loop (``trainer.train``) only iterates; benchmarks, notebooks and
tests build the same ``Experiment`` to time or inspect one step.
"""

import dataclasses
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jaxdiv.models import LanguageModel, LMConfig, SequenceClassifier
from jaxdiv.models.common import decay_mask
from jaxdiv.train import sharding as shard_lib
from jaxdiv.train.checkpoint import Checkpointer, flatten_state, unflatten_state
from jaxdiv.train.data import Task, get_task
from jaxdiv.train.flops import flops_per_token
from jaxdiv.train.objective import Objective, config_to_dict
from jaxdiv.train.steps import make_eval_step, make_train_step
from jaxdiv.train.teacher import Trained, init_from_teacher, is_hf_directory, load_hf_teacher

# Keys that may change between a run and its resumption (they don't change the numbers).
RESUMABLE_KEYS = (
    "steps",
    "log_every",
    "checkpoint_every",
    "eval_every",
    "keep_checkpoints",
    "progress",
    "model.attention_implementation",  # the same function, computed another way
)


# ----------------------------------------------------------------------------- config


def check_resume_compatible(saved: dict, current: dict) -> None:
    """ValueError naming the keys that differ between the saved and the current config."""

    def flat(d, prefix=""):
        out = {}
        for key, value in d.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    a, b = flat(saved), flat(current)
    differing = sorted(
        k for k in set(a) | set(b) if k not in RESUMABLE_KEYS and a.get(k) != b.get(k)
    )
    if differing:
        details = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in differing)
        raise ValueError(
            f"The workdir holds a run with a different config ({details}); use a new --workdir "
            f"or the same config (only {list(RESUMABLE_KEYS)} may change on resume)."
        )


def model_config(config, vocab_size: int) -> LMConfig:
    """The ``LMConfig`` of ``config.model``; its vocabulary is the task's ``vocab_size``
    unless ``config.model.vocab_size`` sets a larger one (e.g. a teacher's padded vocabulary:
    the extra ids are never inputs nor targets)."""
    fields = config_to_dict(config.model)
    if fields.get("vocab_size") is not None and fields["vocab_size"] < vocab_size:
        raise ValueError(
            f"config.model.vocab_size={fields['vocab_size']} is smaller than the task's "
            f"vocabulary ({vocab_size})."
        )
    fields["vocab_size"] = fields.get("vocab_size") or vocab_size
    if fields.get("dtype") == "auto":  # the mixed-precision policy: bf16 compute on GPU/TPU
        fields["dtype"] = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    if isinstance(fields.get("mixer"), list):
        fields["mixer"] = tuple(fields["mixer"])
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(LMConfig)})
    if unknown:
        raise ValueError(f"config.model has unknown keys {unknown}.")
    return LMConfig(**fields)


def build_model(config, task: Task, *, rngs, sequence_parallel: bool = False) -> nnx.Module:
    """The student of ``config``: a ``LanguageModel`` or, for classification, a classifier."""
    lm_config = model_config(config, task.vocab_size)
    if sequence_parallel:
        lm_config = dataclasses.replace(lm_config, sequence_axis="sequence")
    if task.kind == "classification":
        return SequenceClassifier(lm_config, task.num_classes, rngs=rngs)
    return LanguageModel(lm_config, rngs=rngs)


def make_optimizer(opt, steps: int, params) -> tuple[optax.GradientTransformation, Callable]:
    """AdamW with linear warmup + cosine decay, global-norm clipping, no-decay mask."""
    if opt.name != "adamw":
        raise ValueError(f"config.optimizer.name must be 'adamw', got {opt.name!r}.")
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=opt.lr,
        warmup_steps=min(opt.warmup_steps, max(steps - 1, 0)),
        decay_steps=max(steps, 1),
        end_value=opt.lr * opt.min_lr_ratio,
    )
    return optax.chain(
        optax.clip_by_global_norm(opt.grad_clip),
        optax.adamw(
            schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=decay_mask(params)
        ),
    ), schedule


def validate(config, mesh) -> None:
    """Config errors that must surface before anything compiles."""
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    accum = int(config.optimizer.grad_accum_steps)
    if config.batch_size % (data_parallel * accum):
        raise ValueError(
            f"config.batch_size={config.batch_size} must be divisible by the data axes "
            f"(data×fsdp={data_parallel}) times optimizer.grad_accum_steps={accum}."
        )
    if config.batch_size % jax.process_count():
        raise ValueError(
            f"config.batch_size={config.batch_size} must be divisible by the number of "
            f"processes ({jax.process_count()})."
        )
    for key in ("steps", "log_every", "checkpoint_every"):
        if int(config[key]) < 1:
            raise ValueError(f"config.{key} must be >= 1, got {config[key]}.")


def task_of(config) -> Task:
    """The data task named by ``config.task``: its options are ``config.task.kwargs`` and any
    other key of ``config.task`` (e.g. ``task.files`` of the ``text`` task). A tokenizer
    ``"teacher"`` is the ``tokenizer.json`` of the Hugging Face teacher directory."""
    task = config_to_dict(config.task)
    options = {k: v for k, v in task.items() if k not in ("name", "kwargs")}
    options.update(config_to_dict(task.get("kwargs") or {}))
    if options.get("tokenizer") == "teacher":
        path = teacher_path(config)
        if path is None or not is_hf_directory(path):
            raise ValueError(
                f"config.task.tokenizer='teacher' needs a Hugging Face directory as "
                f"config.distill.teacher, got {path!r}."
            )
        options["tokenizer"] = str(path)
    return get_task(task["name"], **options)


def teacher_path(config) -> str | None:
    """``config.distill.teacher`` (or its alias ``teacher_workdir``), None without one."""
    distill = config.get("distill")
    if distill is None:
        return None
    return distill.get("teacher") or distill.get("teacher_workdir")


# ----------------------------------------------------------------------------- state


class StateSpec(NamedTuple):
    """Everything static about a run's state."""

    graphdef: Any
    tx: optax.GradientTransformation
    schedule: Callable
    init: Callable[[], dict]  # builds {"params", "opt_state", "step"} (+ online teacher)
    shardings: dict  # the matching tree of NamedShardings, from the logical axes


def train_state_spec(config, task: Task, mesh, *, rules=None, teacher=None) -> StateSpec:
    """The :class:`StateSpec` of a run; ``teacher = (params, tx)`` adds an online teacher."""
    sp = mesh.shape["sequence"] > 1  # models switch to their sequence-parallel forms

    def build():
        return build_model(config, task, rngs=nnx.Rngs(config.seed), sequence_parallel=sp)

    abstract = nnx.eval_shape(build)
    graphdef, abstract_params = nnx.split(abstract)
    param_sh = shard_lib.state_shardings(abstract_params, mesh, rules)
    tx, schedule = make_optimizer(config.optimizer, config.steps, abstract_params)
    repl = shard_lib.replicated(mesh)

    def opt_shardings(params, shardings, tx):
        return optax.tree_map_params(
            tx,
            lambda _, s: s,
            jax.eval_shape(tx.init, params),
            shardings,
            transform_non_params=lambda _: repl,
            is_leaf=lambda x: isinstance(x, nnx.Variable),
        )

    shardings = {
        "params": param_sh,
        "opt_state": opt_shardings(abstract_params, param_sh, tx),
        "step": repl,
    }
    if teacher is not None:
        teacher_params, teacher_tx = teacher
        teacher_sh = jax.tree.map(lambda x: x.sharding, teacher_params)
        shardings["teacher_params"] = teacher_sh
        shardings["teacher_opt_state"] = opt_shardings(teacher_params, teacher_sh, teacher_tx)

    def init():
        params = nnx.state(build())
        state = {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0)}
        if teacher is not None:
            state["teacher_params"] = teacher_params
            state["teacher_opt_state"] = teacher_tx.init(teacher_params)
        return state

    return StateSpec(graphdef, tx, schedule, init, shardings)


def abstract_of(init: Callable, shardings):
    """ShapeDtypeStructs of ``init()`` carrying ``shardings`` (the restore target)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        jax.eval_shape(init),
        shardings,
    )


def read_config(workdir) -> ml_collections.ConfigDict:
    """The config saved in ``workdir`` (FileNotFoundError without a run there)."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"No run in {workdir} (no config.json).")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_trained(workdir, mesh=None) -> Trained:
    """The latest checkpointed model of the run in ``workdir``."""
    config = read_config(workdir)
    task = task_of(config)
    mesh = mesh or shard_lib.make_mesh({"data": -1})
    spec = train_state_spec(config, task, mesh)
    with Checkpointer(Path(workdir) / "checkpoints") as ckpt:
        step = ckpt.latest_step()
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints.")
        abstract = abstract_of(spec.init, spec.shardings)
        flat, _ = ckpt.restore(step, flatten_state(abstract))
    params = unflatten_state(flat, abstract)["params"]
    return Trained(spec.graphdef, params, config, model_config(config, task.vocab_size))


def load_teacher(config, mesh) -> Trained:
    """``config.distill.teacher``: a Hugging Face directory (in ``distill.teacher_dtype``,
    bfloat16 by default) or a jaxdiv workdir."""
    path = teacher_path(config)
    if path is None:
        raise ValueError("config.distill needs a teacher: set config.distill.teacher.")
    if is_hf_directory(path):
        return load_hf_teacher(path, mesh, dtype=config.distill.get("teacher_dtype", "bfloat16"))
    if not Path(path).exists():
        raise FileNotFoundError(
            f"config.distill.teacher={path!r} does not exist (expected a jaxdiv workdir or a "
            f"Hugging Face model directory)."
        )
    return restore_trained(path, mesh)


# ----------------------------------------------------------------------------- experiment


@dataclasses.dataclass
class Experiment:
    """A built run: what :func:`jaxdiv.train.trainer.train` iterates over."""

    config: ml_collections.ConfigDict
    workdir: Path | None
    mesh: jax.sharding.Mesh
    task: Task
    objective: Objective
    spec: StateSpec
    teacher: Trained | None
    batch_shardings: dict
    step_fn: Callable  # the pure step: (state, batch, teacher_params) -> (state, metrics)
    train_step: Any  # step_fn compiled with the state's shardings and donation
    eval_step: Callable  # jitted: (params, batch, teacher_params) -> metrics
    flops_per_token: float
    memory: Any  # the compiled train step's memory analysis (None where unsupported)

    @property
    def teacher_params(self):
        """The frozen teacher's parameters the train step takes (None without a teacher term,
        or when the teacher trains online and lives in the state)."""
        if self.teacher is None or self.objective.online or not self.objective.needs_teacher:
            return None
        return self.teacher.params

    @property
    def tokens_per_step(self) -> int:
        return int(self.config.batch_size) * self.task.seq_len

    @property
    def hosts(self) -> dict:
        return {"process_index": jax.process_index(), "process_count": jax.process_count()}

    def global_batch(self, local: dict) -> dict:
        """This host's rows as global arrays with the batch shardings."""
        return {
            k: jax.make_array_from_process_local_data(self.batch_shardings[k], np.asarray(v))
            for k, v in local.items()
        }

    def init_state(self) -> dict:
        """A fresh state, created already sharded (with ``distill.init_from_teacher``, the
        student's parameters start from the teacher's where they match)."""
        state = jax.jit(self.spec.init, out_shardings=self.spec.shardings)()
        distill = self.config.get("distill")
        if self.teacher is not None and distill is not None and distill.get("init_from_teacher"):
            student = model_config(self.config, self.task.vocab_size)
            state["params"], copied = init_from_teacher(state["params"], student, self.teacher)
            if jax.process_index() == 0:
                total = len(jax.tree.leaves(state["params"]))
                print(f"[jaxdiv] initialised {len(copied)} of {total} parameters from the teacher")
        return state

    def abstract_state(self):
        """The state's ShapeDtypeStructs with their shardings (the restore target)."""
        return abstract_of(self.spec.init, self.spec.shardings)

    def evaluate(self, state: dict) -> dict:
        """Held-out metrics of the state's model (and KL to its teacher: the frozen one, or
        the online teacher of the state): batch means weighted by each batch's valid rows."""
        params = state["params"]
        frozen = None if self.teacher is None else self.teacher.params
        teacher_params = state.get("teacher_params", frozen)
        config, task = self.config, self.task
        sums, total = {}, 0.0
        batches = task.batches("eval", batch_size=int(config.batch_size), **self.hosts)
        for local in itertools.islice(batches, int(config.eval_batches)):
            batch = self.global_batch(local)
            out = jax.device_get(self.eval_step(params, batch, teacher_params))
            weight = float(out.pop("weight"))
            total += weight
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v) * weight
        sums = {k: v / max(total, 1.0) for k, v in sums.items()}
        if task.name == "pydoc_bytes":
            sums["bits_per_byte"] = sums["loss"] / np.log(2)
        return sums


def _claim_workdir(config, workdir: Path) -> None:
    """Saves the config in ``workdir``, or checks that a resumed run has the same one."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.json"
    current = json.loads(json.dumps(config_to_dict(config)))  # tuples -> lists, as saved
    if config_path.exists():
        check_resume_compatible(json.loads(config_path.read_text()), current)
    jax.experimental.multihost_utils.sync_global_devices("config-checked")
    if jax.process_index() == 0:
        config_path.write_text(json.dumps(current, indent=2, sort_keys=True))


def build(config, workdir=None, *, mesh=None, teacher: Trained | None = None) -> Experiment:
    """Builds the run of ``config`` (call inside ``jax.set_mesh(mesh)``).

    Args:
      config: the training config (a preset from ``get_config`` or a config file's).
      workdir: the run's directory; its ``config.json`` is written, or checked against
        ``config`` when the run resumes. None: nothing is written (benchmarks, tests).
      mesh: the device mesh; default ``make_mesh(config.mesh)``.
      teacher: a teacher to use instead of restoring ``config.distill.teacher``.

    Returns:
      The :class:`Experiment`, with its train step compiled from shapes and shardings alone,
      so config errors surface before any data is read.
    """
    mesh = mesh or shard_lib.make_mesh(config_to_dict(config.mesh))
    validate(config, mesh)
    task = task_of(config)
    objective = Objective.from_config(config, task.kind)
    path = teacher_path(config)
    if teacher is None and (objective.needs_teacher or (path and Path(path).exists())):
        teacher = load_teacher(config, mesh)  # an existing teacher also scores the baseline
    if teacher is not None:
        teacher_kind = "lm" if teacher.config is None else task_of(teacher.config).kind
        if teacher_kind != task.kind:
            raise ValueError(
                f"the teacher was trained on a {teacher_kind} task and the student's task is "
                f"{task.kind}; distillation needs a teacher of the same kind of task."
            )
        vocab = teacher.lm_config.vocab_size
        if vocab < task.vocab_size:
            raise ValueError(
                f"the teacher's vocabulary ({vocab} tokens) is smaller than the task's "
                f"({task.vocab_size}); teacher and student must share a tokenizer."
            )
        if config.model.get("vocab_size") is None:  # the student takes the teacher's size
            config.model.vocab_size = vocab
        if model_config(config, task.vocab_size).vocab_size != vocab:
            raise ValueError(
                f"config.model.vocab_size={config.model.vocab_size} differs from the teacher's "
                f"vocabulary ({vocab}); teacher and student logits must align."
            )
        objective.check_features(model_config(config, task.vocab_size), teacher.lm_config)
    if workdir is not None:
        _claim_workdir(config, Path(workdir))
    teacher_tx = None
    if teacher is not None and objective.online:
        teacher_tx, _ = make_optimizer(config.optimizer, config.steps, teacher.params)
    rules = config_to_dict(config.get("sharding_rules", {})) or None
    spec = train_state_spec(
        config,
        task,
        mesh,
        rules=rules,
        teacher=(teacher.params, teacher_tx) if teacher is not None and objective.online else None,
    )

    batch_sh = shard_lib.batch_sharding(mesh, 2, shard_sequence=mesh.shape["sequence"] > 1)
    label_sh = shard_lib.batch_sharding(mesh, 1, shard_sequence=False)
    example = next(task.batches("train", batch_size=int(config.batch_size), seed=config.seed))
    batch_shardings = {k: (label_sh if v.ndim == 1 else batch_sh) for k, v in example.items()}
    eval_teacher = None if teacher is None else teacher.graphdef  # KL to the teacher
    teacher_graphdef = eval_teacher if objective.needs_teacher else None  # the loss's teacher
    frozen = None if teacher_graphdef is None or objective.online else teacher.params
    teacher_sh = None if frozen is None else jax.tree.map(lambda x: x.sharding, frozen)
    eval_teacher_sh = (
        None if teacher is None else jax.tree.map(lambda x: x.sharding, teacher.params)
    )
    repl = shard_lib.replicated(mesh)
    step_fn = make_train_step(
        spec.graphdef,
        spec.tx,
        objective,
        teacher_graphdef=teacher_graphdef,
        teacher_tx=teacher_tx,
        grad_accum_steps=int(config.optimizer.grad_accum_steps),
        seed=int(config.seed),
    )
    train_step = jax.jit(
        step_fn,
        in_shardings=(spec.shardings, batch_shardings, teacher_sh),
        out_shardings=(spec.shardings, repl),
        donate_argnums=0,
    )
    eval_step = jax.jit(
        make_eval_step(spec.graphdef, objective, teacher_graphdef=eval_teacher),
        in_shardings=(
            spec.shardings["params"],
            batch_shardings,
            spec.shardings.get("teacher_params", eval_teacher_sh),  # online: the state's
        ),
        out_shardings=repl,
    )
    abstract_batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_shardings[k])
        for k, v in example.items()
    }
    compiled = train_step.lower(
        abstract_of(spec.init, spec.shardings), abstract_batch, frozen
    ).compile()
    flops = flops_per_token(
        model_config(config, task.vocab_size),
        task.seq_len,
        teacher=None if teacher_graphdef is None else teacher.lm_config,
        online=objective.online,
    )
    return Experiment(
        config=config,
        workdir=None if workdir is None else Path(workdir),
        mesh=mesh,
        task=task,
        objective=objective,
        spec=spec,
        teacher=teacher,
        batch_shardings=batch_shardings,
        step_fn=step_fn,
        train_step=compiled,
        eval_step=eval_step,
        flops_per_token=flops,
        memory=compiled.memory_analysis(),
    )
