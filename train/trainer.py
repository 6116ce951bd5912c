"""The training loop: ``train(experiment)``, ``run(config, workdir)`` and ``load_model(workdir)``.

``run`` = :func:`jaxdiv.train.experiment.build` (everything a run needs, checked and compiled)
+ :func:`train` (the loop). One run trains one student (an LM or a sequence classifier),
optionally distilled from a teacher. Batches are a pure function of (seed, step); the workdir
holds ``config.json``, ``metrics.jsonl``, TensorBoard events, ``metrics.png`` and orbax
checkpoints. Re-running with the same workdir resumes; SIGTERM saves a checkpoint and returns
cleanly.
"""

import importlib.util
import math
import os
import signal
import threading
import time

import jax
from flax import nnx

from jaxdiv.train import sharding as shard_lib
from jaxdiv.train.checkpoint import Checkpointer, flatten_state, unflatten_state
from jaxdiv.train.experiment import Experiment, build, restore_trained
from jaxdiv.train.flops import peak_flops
from jaxdiv.train.metrics import MetricsWriter, Progress, plot_metrics, read_metrics
from jaxdiv.train.objective import config_to_dict


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


def load_model(workdir):
    """``(model, config)`` of the run in ``workdir``, with its latest checkpointed params."""
    trained = restore_trained(workdir)
    return nnx.merge(trained.graphdef, trained.params), trained.config


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
        return train(build(config, workdir, mesh=mesh))


def train(exp: Experiment) -> dict:
    """Runs the loop of a built experiment to ``config.steps`` (resuming its workdir)."""
    if exp.workdir is None:
        raise ValueError("train() needs an experiment built with a workdir.")
    config, workdir = exp.config, exp.workdir
    is_main = jax.process_index() == 0
    if is_main and exp.memory is not None:
        print(
            f"[jaxdiv] compiled train step: {exp.memory.temp_size_in_bytes / 2**20:.1f} MiB "
            f"temporaries, {exp.memory.argument_size_in_bytes / 2**20:.1f} MiB arguments"
        )
    peak = peak_flops()
    checkpointer = Checkpointer(
        workdir / "checkpoints", max_to_keep=int(config.get("keep_checkpoints", 3))
    )
    start, saved = checkpointer.latest_step(), {}
    if start is None:
        state = exp.init_state()
    else:
        abstract = exp.abstract_state()
        flat, saved = checkpointer.restore(start, flatten_state(abstract))
        state = unflatten_state(flat, abstract)
    start = start or 0
    batches = exp.task.batches(
        "train",
        batch_size=int(config.batch_size),
        seed=int(config.seed),
        start_step=start,
        state=saved.get("data"),
        **exp.hosts,
    )
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
                batch = exp.global_batch(next(batches))
                state, step_metrics = exp.train_step(state, batch, exp.teacher_params)
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
                    tps = timed_steps * exp.tokens_per_step / (now - last_log)
                    throughput = {"tokens_per_second": tps, "mfu": tps * exp.flops_per_token / peak}
                    metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                    metrics["lr"] = float(exp.spec.schedule(step - 1))
                    writer.write(step, "train", {**metrics, **throughput})
                    progress.update(step, loss=loss, tok_s=tps)
                    last_log, timed_steps = time.perf_counter(), 0
                eval_every = int(config.get("eval_every", 0) or 0)
                if (eval_every and step % eval_every == 0) or step == config.steps:
                    writer.write(step, "eval", exp.evaluate(state))
                    last_log = time.perf_counter()
                extra = {"step": step, "seed": int(config.seed), "data": batches.get_state()}
                if step % config.checkpoint_every == 0 or step == config.steps:
                    checkpointer.save(step, flatten_state(state), extra)
                if preemption.requested and step < config.steps:
                    checkpointer.save(step, flatten_state(state), extra, force=True)
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
        if is_main and importlib.util.find_spec("matplotlib") is not None:
            plot_metrics(workdir, keys=("loss",))  # metrics.png (the `examples` extra)
    return final
