"""The training loop: ``run(config, workdir)`` and ``load_model(workdir)`` (API.md §4).

One run trains one student (an LM or a sequence classifier), optionally distilled from a
teacher restored from ``config.distill.teacher_workdir``. The state is created already sharded
(jit with out_shardings), the step is compiled once with explicit in/out shardings and
donation, batches are a pure function of (seed, step), and the workdir holds ``config.json``,
``metrics.jsonl``, TensorBoard events, ``metrics.png`` and orbax checkpoints. Re-running with
the same workdir resumes; SIGTERM saves a checkpoint and returns cleanly.
"""

import dataclasses
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

import jaxdiv
from jaxdiv.models import LanguageModel, LMConfig, SequenceClassifier
from jaxdiv.models.common import decay_mask
from jaxdiv.train import sharding as shard_lib
from jaxdiv.train.checkpoint import Checkpointer
from jaxdiv.train.data import get_task
from jaxdiv.train.flops import flops_per_token, peak_flops
from jaxdiv.train.metrics import MetricsWriter, Progress, plot_metrics, read_metrics
from jaxdiv.train.steps import Objective, make_eval_step, make_train_step

# Keys that may change between a run and its resumption (they don't change the numbers).
RESUMABLE_KEYS = (
    "steps",
    "log_every",
    "checkpoint_every",
    "eval_every",
    "keep_checkpoints",
    "progress",
)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf."""


class _Preemption:
    """Turns SIGTERM into a flag the loop checks after each step (main thread only)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


# ----------------------------------------------------------------------------- config


def config_to_dict(config) -> dict:
    return config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)


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
    fields = config_to_dict(config.model)
    if fields.get("vocab_size") not in (None, vocab_size):
        raise ValueError(
            f"config.model.vocab_size={fields['vocab_size']} does not match the task's "
            f"vocabulary ({vocab_size})."
        )
    fields["vocab_size"] = vocab_size
    if isinstance(fields.get("mixer"), list):
        fields["mixer"] = tuple(fields["mixer"])
    unknown = sorted(set(fields) - {f.name for f in LMConfig.__dataclass_fields__.values()})
    if unknown:
        raise ValueError(f"config.model has unknown keys {unknown}.")
    return LMConfig(**fields)


def build_model(config, task, *, rngs, sequence_parallel: bool = False) -> nnx.Module:
    lm_config = model_config(config, task.vocab_size)
    if sequence_parallel:
        lm_config = dataclasses.replace(lm_config, sequence_axis="sequence")
    if task.kind == "classification":
        return SequenceClassifier(lm_config, task.num_classes, rngs=rngs)
    return LanguageModel(lm_config, rngs=rngs)


def make_optimizer(opt, steps: int, params) -> optax.GradientTransformation:
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


def make_objective(config, task) -> Objective:
    distill = config.get("distill")
    if distill is None:
        return Objective(kind=task.kind)
    if distill.divergence is not None and distill.divergence not in jaxdiv.names():
        raise ValueError(
            f"config.distill.divergence={distill.divergence!r} is not a registered divergence; "
            f"expected one of {list(jaxdiv.names())}."
        )
    if task.kind != "lm":
        raise ValueError("config.distill is supported for language-model tasks only.")
    return Objective(
        kind=task.kind,
        task_weight=float(distill.task_weight),
        divergence=distill.divergence,
        divergence_kwargs=tuple(sorted(config_to_dict(distill.kwargs).items())),
        weight=float(distill.weight),
        temperature=float(distill.temperature),
        temperature_end=distill.get("temperature_end"),
        total_steps=int(config.steps),
        sinkhorn_weight=float(distill.sinkhorn_weight),
        sinkhorn_rows=int(distill.get("sinkhorn_rows", 64)),
        online=bool(distill.get("online", False)),
        teacher_weight=float(distill.get("teacher_weight", 1.0)),
    )


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


# ----------------------------------------------------------------------------- state


def _flat(tree) -> dict:
    """{path: leaf} with readable paths: the checkpoint layout, independent of pytree types."""
    return {
        jax.tree_util.keystr(path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _unflat(flat: dict, like):
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree.unflatten(treedef, [flat[jax.tree_util.keystr(p)] for p, _ in paths])


def train_state_spec(config, task, mesh, *, rules=None, teacher=None):
    """Everything static about a run's state: ``(graphdef, tx, schedule, init, shardings)``.

    ``init()`` builds the state pytree ``{"params", "opt_state", "step"}`` (plus the online
    teacher's params and optimizer state when ``teacher = (params, tx)``); ``shardings`` is the
    matching tree of NamedShardings, from the parameters' logical axes.
    """
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

    return graphdef, tx, schedule, init, shardings


def abstract_of(init, shardings):
    """ShapeDtypeStructs of ``init()`` carrying ``shardings`` (the restore target)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        jax.eval_shape(init),
        shardings,
    )


def read_config(workdir) -> ml_collections.ConfigDict:
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"No run in {workdir} (no config.json).")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_trained(workdir, mesh=None):
    """``(graphdef, params, config)`` of the latest checkpoint of the run in ``workdir``."""
    config = read_config(workdir)
    task = get_task(config.task.name, **config_to_dict(config.task.get("kwargs", {})))
    mesh = mesh or shard_lib.make_mesh({"data": -1})
    graphdef, _, _, init, shardings = train_state_spec(config, task, mesh)
    with Checkpointer(Path(workdir) / "checkpoints") as ckpt:
        step = ckpt.latest_step()
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints.")
        abstract = abstract_of(init, shardings)
        flat, _ = ckpt.restore(step, _flat(abstract))
    return graphdef, _unflat(flat, abstract)["params"], config


def load_model(workdir):
    """``(model, config)`` of the run in ``workdir``, with its latest checkpointed params."""
    graphdef, params, config = restore_trained(workdir)
    return nnx.merge(graphdef, params), config


# ----------------------------------------------------------------------------- loop


def maybe_initialize_distributed() -> None:
    """``jax.distributed.initialize`` when the environment describes several processes."""
    if jax.distributed.is_initialized():
        return
    env = os.environ
    if "JAX_COORDINATOR_ADDRESS" in env:
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env["JAX_PROCESS_ID"]),
        )
    elif "TPU_WORKER_HOSTNAMES" in env and "," in env["TPU_WORKER_HOSTNAMES"]:
        jax.distributed.initialize()  # TPU pod: everything comes from the TPU metadata


def run(config, workdir) -> dict:
    """Trains (or resumes) the run described by ``config`` in ``workdir``; returns final metrics.

    The returned dict has the last train metrics, the final eval metrics (``eval_*``), and
    ``tokens_per_second``, ``mfu``, ``step`` and ``preempted``. With ``config.mesh.sequence``
    > 1 the models run their sequence-parallel forms (``jaxdiv.models.parallel``).
    """
    maybe_initialize_distributed()
    mesh = shard_lib.make_mesh(config_to_dict(config.mesh))
    with jax.set_mesh(mesh):
        return _run(config, Path(workdir), mesh)


def _run(config, workdir: Path, mesh) -> dict:
    is_main = jax.process_index() == 0
    validate(config, mesh)
    task = get_task(config.task.name, **config_to_dict(config.task.get("kwargs", {})))
    objective = make_objective(config, task)

    # The config of a run is part of its identity: resume only into the same config.
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.json"
    current = json.loads(json.dumps(config_to_dict(config)))  # tuples -> lists, as saved
    if config_path.exists():
        check_resume_compatible(json.loads(config_path.read_text()), current)
    jax.experimental.multihost_utils.sync_global_devices("config-checked")
    if is_main:
        config_path.write_text(json.dumps(current, indent=2, sort_keys=True))

    # The teacher (frozen, or trained alongside in online mode) comes from its own workdir.
    rules = config_to_dict(config.get("sharding_rules", {})) or None
    teacher_graphdef = teacher_params = teacher_tx = teacher_lm = None
    if objective.divergence is not None or objective.sinkhorn_weight:
        teacher_graphdef, teacher_params, teacher_config = restore_trained(
            config.distill.teacher_workdir, mesh
        )
        teacher_lm = model_config(teacher_config, task.vocab_size)
        if objective.online:
            teacher_tx, _ = make_optimizer(config.optimizer, config.steps, teacher_params)
    graphdef, tx, schedule, init_state, state_sh = train_state_spec(
        config,
        task,
        mesh,
        rules=rules,
        teacher=(teacher_params, teacher_tx) if objective.online else None,
    )
    param_sh, repl = state_sh["params"], shard_lib.replicated(mesh)

    batch_sh = shard_lib.batch_sharding(mesh, 2, shard_sequence=mesh.shape["sequence"] > 1)
    label_sh = shard_lib.batch_sharding(mesh, 1, shard_sequence=False)

    def batch_shardings(batch):
        return {k: (label_sh if v.ndim == 1 else batch_sh) for k, v in batch.items()}

    hosts = {"process_index": jax.process_index(), "process_count": jax.process_count()}
    example = task.train_batch(config.seed, 0, config.batch_size, **hosts)
    example_sh = batch_shardings(example)
    train_step = make_train_step(
        graphdef,
        tx,
        objective,
        teacher_graphdef=teacher_graphdef,
        teacher_tx=teacher_tx,
        grad_accum_steps=int(config.optimizer.grad_accum_steps),
        seed=int(config.seed),
    )
    teacher_in_sh = (
        None if teacher_params is None else jax.tree.map(lambda x: x.sharding, teacher_params)
    )
    train_step = jax.jit(
        train_step,
        in_shardings=(state_sh, example_sh, teacher_in_sh),
        out_shardings=(state_sh, repl),
        donate_argnums=0,
    )
    eval_step = jax.jit(
        make_eval_step(graphdef, objective, teacher_graphdef=teacher_graphdef),
        in_shardings=(param_sh, example_sh, teacher_in_sh),
        out_shardings=repl,
    )

    def global_batch(local):
        """This host's rows (a pure function of seed and step) as global sharded arrays."""
        return {
            k: jax.make_array_from_process_local_data(example_sh[k], np.asarray(v))
            for k, v in local.items()
        }

    # Compile once, from shapes and shardings alone (config errors surface before any I/O).
    abstract_state = abstract_of(init_state, state_sh)
    abstract_batch = {
        k: jax.ShapeDtypeStruct((config.batch_size, *v.shape[1:]), v.dtype, sharding=example_sh[k])
        for k, v in example.items()
    }
    compiled = train_step.lower(abstract_state, abstract_batch, teacher_params).compile()
    memory = compiled.memory_analysis()
    if is_main and memory is not None:
        print(
            f"[jaxdiv] compiled train step: {memory.temp_size_in_bytes / 2**20:.1f} MiB "
            f"temporaries, {memory.argument_size_in_bytes / 2**20:.1f} MiB arguments"
        )

    tokens_per_step = config.batch_size * task.seq_len
    flops = flops_per_token(
        model_config(config, task.vocab_size),
        task.seq_len,
        teacher=teacher_lm,
        online=objective.online,
    )
    peak = peak_flops()

    def evaluate():
        """Held-out metrics: batch means averaged with each batch's weight (valid rows)."""
        sums, total = {}, 0.0
        for i in range(min(task.num_eval_batches(config.batch_size), int(config.eval_batches))):
            batch = global_batch(task.eval_batch(i, config.batch_size, **hosts))
            out = jax.device_get(eval_step(state["params"], batch, teacher_params))
            weight = float(out.pop("weight"))
            total += weight
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v) * weight
        sums = {k: v / max(total, 1.0) for k, v in sums.items()}
        if task.name == "pydoc_bytes":
            sums["bits_per_byte"] = sums["loss"] / math.log(2)
        return sums

    # Resume from the latest checkpoint, or start with the state created already sharded.
    checkpointer = Checkpointer(
        workdir / "checkpoints", max_to_keep=int(config.get("keep_checkpoints", 3))
    )
    start = checkpointer.latest_step()
    if start is None:
        state = jax.jit(init_state, out_shardings=state_sh)()
    else:
        flat, _ = checkpointer.restore(start, _flat(abstract_state))
        state = _unflat(flat, abstract_state)
    start = start or 0
    writer = MetricsWriter(workdir, enabled=is_main, resume_step=start)
    progress = Progress(
        config.steps, initial=start, enabled=is_main and config.get("progress", True)
    )
    metrics, last_log, step = {}, time.perf_counter(), start
    timed_steps = 0
    throughput = {"tokens_per_second": float("nan"), "mfu": float("nan")}
    preempted = False
    try:
        with _Preemption() as preemption:
            while step < config.steps:
                batch = global_batch(
                    task.train_batch(config.seed, step, config.batch_size, **hosts)
                )
                state, step_metrics = compiled(state, batch, teacher_params)
                step += 1
                timed_steps += 1
                loss = float(step_metrics["loss"])
                param_norm = float(step_metrics["param_norm"])  # after this step's update
                if not (math.isfinite(loss) and math.isfinite(param_norm)):
                    checkpointer.wait()
                    raise NonFiniteLossError(
                        f"Non-finite training at step {step} (loss {loss}, parameter norm "
                        f"{param_norm}); stopping. The last good checkpoint (step "
                        f"{checkpointer.latest_step()}) is kept in {workdir}/checkpoints."
                    )
                if step % config.log_every == 0 or step == config.steps:
                    now = time.perf_counter()
                    tps = timed_steps * tokens_per_step / (now - last_log)
                    throughput = {"tokens_per_second": tps, "mfu": tps * flops / peak}
                    metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                    metrics["lr"] = float(schedule(step - 1))
                    writer.write(step, "train", {**metrics, **throughput})
                    progress.update(step, loss=loss, tok_s=tps)
                    last_log, timed_steps = time.perf_counter(), 0
                eval_every = int(config.get("eval_every", 0) or 0)
                if (eval_every and step % eval_every == 0) or step == config.steps:
                    writer.write(step, "eval", evaluate())
                    last_log = time.perf_counter()
                if step % config.checkpoint_every == 0 or step == config.steps:
                    checkpointer.save(step, _flat(state), {"step": step, "seed": int(config.seed)})
                if preemption.requested and step < config.steps:
                    checkpointer.save(
                        step, _flat(state), {"step": step, "seed": int(config.seed)}, force=True
                    )
                    preempted = True
                    break
    finally:
        checkpointer.wait()
        checkpointer.close()
        progress.close()
        writer.close()
    final = {"step": step, "preempted": preempted, **metrics, **throughput}
    if not preempted:
        eval_rows = [m for m in read_metrics(workdir) if m["split"] == "eval" and m["step"] == step]
        final.update(
            {
                f"eval_{k}": v
                for k, v in (eval_rows[-1] if eval_rows else {}).items()
                if k not in ("step", "split")
            }
        )
        if is_main:
            plot_metrics(workdir, keys=("loss",))
    return final
