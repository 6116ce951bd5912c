"""Orbax checkpoints of sharded training state: async, atomic, keep-last-N, restore onto any mesh.

The only module of jaxdiv that imports orbax. Each checkpoint step holds two items written
together: ``state``, any pytree of ``jax.Array`` (an ``nnx.State``, optimizer state, or a dict
of them, possibly sharded over a multi-device mesh), and ``extra``, a JSON object (data
position, config hash, seeds). Orbax writes a step into a temporary directory and renames it
once every item is complete, so a step interrupted mid-write is never listed or restored; after
each save it deletes all but the latest ``max_to_keep`` steps.

Restoring goes *into* an abstract state: a pytree of ``jax.ShapeDtypeStruct`` whose
``.sharding`` says where each array goes (``jax.eval_shape`` of the init under the current
shardings, or ``nnx.eval_shape``), so a checkpoint written on one mesh loads onto another mesh
or onto one device.

Multi-host: construct the ``Checkpointer`` and call ``save``/``restore`` on every process; orbax
coordinates the writes (each process writes its own shards) and the final rename.
"""

import json
import operator
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxdiv import checks


def flatten_state(tree) -> dict:
    """``{path: leaf}`` with readable paths: the checkpoint layout, independent of pytree types."""
    return {
        jax.tree_util.keystr(path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def unflatten_state(flat: dict, like):
    """The inverse of :func:`flatten_state`, shaped like the pytree ``like``."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree.unflatten(treedef, [flat[jax.tree_util.keystr(p)] for p, _ in paths])


def _step(step, name: str = "step") -> int:
    try:
        value = operator.index(step)
    except TypeError:
        raise TypeError(f"`{name}` must be an int, got {step!r}.") from None
    if value < 0:
        raise ValueError(f"`{name}` must be >= 0, got {value}.")
    return value


class Checkpointer:
    """Saves training state and a JSON ``extra`` by step; restores them onto any sharding.

    Wraps ``orbax.checkpoint.CheckpointManager`` with two items per step: ``state``
    (``StandardSave``: arrays, sharded or not) and ``extra`` (``JsonSave``).

    Args:
      directory: root directory, created if missing; step ``s`` lives in ``directory/s``.
      max_to_keep: number of most recent steps kept (older ones are deleted after each save);
        ``None`` keeps every step.
      save_interval_steps: ``save`` writes only steps that are multiples of it, unless
        ``force=True`` or JAX's multi-host preemption sync point was reached (orbax's
        ``FixedIntervalPolicy`` + ``PreemptionCheckpointingPolicy``).
      async_save: if True, ``save`` returns once the arrays are copied off the devices and the
        files are written in the background (so the caller may donate or overwrite the state
        right away); ``wait`` blocks until the writes are done. If False, ``save`` blocks.

    Examples:
      >>> import tempfile
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from jaxdiv.train.checkpoint import Checkpointer
      >>> tmp = tempfile.TemporaryDirectory()
      >>> state = {"w": jnp.arange(4.0), "step": jnp.asarray(7)}
      >>> with Checkpointer(tmp.name, max_to_keep=2) as ckpt:
      ...     for step in range(3):
      ...         _ = ckpt.save(step, state, {"examples_seen": 32 * step})
      ...     ckpt.wait()
      ...     restored, extra = ckpt.restore(ckpt.latest_step(), jax.eval_shape(lambda: state))
      >>> ckpt.all_steps(), extra, restored["w"].tolist()
      ([1, 2], {'examples_seen': 64}, [0.0, 1.0, 2.0, 3.0])
      >>> tmp.cleanup()
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        save_interval_steps: int = 1,
        async_save: bool = True,
    ):
        if max_to_keep is not None:
            checks.positive_int(max_to_keep, "max_to_keep")
        checks.positive_int(save_interval_steps, "save_interval_steps")
        self.directory = os.path.abspath(os.fspath(directory))
        policies = ocp.checkpoint_managers
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=policies.AnySavePolicy(
                [
                    policies.FixedIntervalPolicy(save_interval_steps),
                    policies.PreemptionCheckpointingPolicy(),
                ]
            ),
            preservation_policy=policies.LatestN(max_to_keep),
            enable_async_checkpointing=bool(async_save),
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "extra")
        )

    def save(
        self, step: int, state: Any, extra: dict | None = None, *, force: bool = False
    ) -> bool:
        """Saves ``state`` and ``extra`` under ``step`` (asynchronously if ``async_save``).

        Args:
          step: training step, an int >= 0.
          state: pytree of ``jax.Array`` (any shardings), e.g. ``nnx.State`` or a dict of them.
          extra: JSON-serialisable dict saved with the state (default ``{}``).
          force: save even if ``step`` is not a multiple of ``save_interval_steps`` or is not
            later than the latest saved step (e.g. on SIGTERM).

        Returns:
          True if a save was started; False if ``step`` was skipped (off the interval, or a
          checkpoint for ``step`` already exists, as after resuming from it).
        """
        step = _step(step)
        extra = {} if extra is None else extra
        if not isinstance(extra, dict):
            raise TypeError(f"`extra` must be a dict, got {type(extra).__name__}.")
        try:
            json.dumps(extra)
        except (TypeError, ValueError) as err:
            raise TypeError(f"`extra` must be JSON-serialisable, got {extra!r} ({err}).") from None
        if step in self._manager.all_steps():
            return False
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra)
        )
        return bool(self._manager.save(step, args=args, force=force))

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
        """Restores ``step`` into the structure, dtypes and shardings of ``abstract_state``.

        Waits for pending asynchronous saves first.

        Args:
          step: a saved step, or ``None`` for the latest.
          abstract_state: pytree with the structure of the saved ``state`` whose leaves are
            ``jax.ShapeDtypeStruct`` (or arrays) carrying the target ``.sharding``; leaves without
            a sharding get the one they were saved with, which needs the same devices.

        Returns:
          ``(state, extra)``: the pytree of ``jax.Array`` laid out as ``abstract_state`` says,
          and the ``extra`` dict saved with it.
        """
        self.wait()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"No checkpoint to restore in {self.directory}.")
            step = steps[-1]
        step = _step(step)
        if step not in steps:
            raise FileNotFoundError(
                f"`step` must be a saved step of {self.directory}, expected one of {steps}, "
                f"got {step}."
            )
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()
        )
        restored = self._manager.restore(step, args=args)
        return restored.state, dict(restored.extra)

    def latest_step(self) -> int | None:
        """The latest saved step (including one being written asynchronously), or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """The saved steps, ascending."""
        return sorted(self._manager.all_steps())

    def wait(self) -> None:
        """Blocks until every asynchronous save has been written and finalised."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources."""
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
