"""The task protocol and the base of the embedded tasks (batches as pure functions of a step).

# B batch (global), L length (``seq_len``), P process count

A :class:`Task` is what the trainer consumes: ``name``, ``kind`` ("lm" or
"classification"), ``vocab_size``, ``seq_len``, ``num_classes`` and
``batches(split, ...)``, an iterator of batches whose ``get_state()`` is saved in every
checkpoint and handed back as ``state`` on resume, so a resumed run reads exactly the batches
it would have read. :class:`IndexedTask` implements it for tasks whose batch ``step`` is a pure
function of ``(seed, step)``: their state is the step alone.
"""

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from jaxdiv import checks

Batch = dict[str, np.ndarray]
SPLITS = ("train", "eval")

TRAIN_STREAM, EVAL_STREAM = 0, 1  # leading seed words: train and held-out streams never coincide
BLOCK = 16  # rows drawn from one random stream


@runtime_checkable
class BatchIterator(Protocol):
    """Batches of one split; ``get_state()`` is JSON-able and resumes the iterator."""

    def __iter__(self) -> Iterator[Batch]: ...

    def __next__(self) -> Batch: ...

    def get_state(self) -> dict[str, Any]: ...


@runtime_checkable
class Task(Protocol):
    """What the trainer needs of a data task."""

    name: ClassVar[str]
    kind: ClassVar[str]
    num_classes: ClassVar[int | None]

    @property
    def vocab_size(self) -> int: ...

    @property
    def seq_len(self) -> int: ...

    def batches(
        self,
        split: str,
        *,
        batch_size: int,
        seed: int = 0,
        start_step: int = 0,
        state: dict[str, Any] | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ) -> BatchIterator:
        """This host's rows of the global batches of ``split`` ("train": endless, from
        ``start_step`` or the saved ``state``; "eval": each held-out example once)."""
        ...


def rng(*words: int) -> np.random.Generator:
    return np.random.default_rng([int(w) for w in words])


def host_rows(batch_size: int, process_index: int, process_count: int) -> range:
    """Rows ``[i·B/P, (i+1)·B/P)`` of a global batch of ``B`` rows held by process ``i``."""
    batch_size = checks.int_at_least(batch_size, "batch_size", 1)
    process_count = checks.int_at_least(process_count, "process_count", 1)
    process_index = checks.int_at_least(process_index, "process_index", 0)
    if process_index >= process_count:
        raise ValueError(
            f"`process_index` must be in [0, {process_count}) for process_count="
            f"{process_count}, got {process_index}."
        )
    if batch_size % process_count:
        raise ValueError(
            f"`batch_size` must be divisible by process_count={process_count}, got {batch_size}."
        )
    per_host = batch_size // process_count
    return range(process_index * per_host, (process_index + 1) * per_host)


def concat(parts: Sequence[Batch]) -> Batch:
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def lm_rows(seq: np.ndarray, mask: np.ndarray) -> Batch:
    """Teacher-forced LM rows from sequences ``[n, L + 1]``: inputs and next tokens."""
    return {
        "tokens": seq[:, :-1].astype(np.int32),
        "targets": seq[:, 1:].astype(np.int32),
        "mask": np.asarray(mask, dtype=bool),
    }


def subsets(rng: np.random.Generator, n: int, size: int, k: int) -> np.ndarray:
    """``[n, k]``: per row, ``k`` distinct values of ``range(size)`` in uniformly random order."""
    return rng.permuted(np.broadcast_to(np.arange(size), (n, size)), axis=1)[:, :k]


@dataclasses.dataclass(frozen=True)
class IndexedTask:
    """A task whose batches are pure functions of ``(seed, step)`` (see the module docstring).

    Subclasses set ``name``, ``kind`` ("lm" or "classification"), ``vocab_size``, ``seq_len``,
    ``num_classes`` (None for LM tasks) and ``num_eval_examples`` (size of the held-out set),
    and generate rows vectorised, a block of 16 rows per random stream.

    Examples:
        >>> from jaxdiv.train.data import get_task
        >>> task = get_task("induction_heads", seq_len=32)
        >>> batch = task.train_batch(seed=0, step=3, batch_size=8)
        >>> {k: (v.shape, v.dtype.name) for k, v in batch.items()}
        {'tokens': ((8, 32), 'int32'), 'targets': ((8, 32), 'int32'), 'mask': ((8, 32), 'bool')}
        >>> host1 = task.train_batch(0, 3, 8, process_index=1, process_count=2)
        >>> bool((host1["tokens"] == batch["tokens"][4:]).all())
        True
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    num_classes: ClassVar[int | None] = None

    # Subclass hooks ------------------------------------------------------------------

    def _generate(self, rng: np.random.Generator, n: int) -> Batch:
        """``n`` training examples drawn from ``rng``, vectorised."""
        raise NotImplementedError

    def _stream_rows(self, words: tuple[int, ...], rows: range) -> Batch:
        """Rows ``rows`` of the examples drawn block by block from streams ``[*words, block]``."""
        first, stop = rows.start // BLOCK, -(-rows.stop // BLOCK)
        blocks = concat([self._generate(rng(*words, j), BLOCK) for j in range(first, stop)])
        offset = first * BLOCK
        return {k: v[rows.start - offset : rows.stop - offset] for k, v in blocks.items()}

    def _train_rows(self, seed: int, step: int, batch_size: int, rows: range) -> Batch:
        """Rows ``rows`` of the global training batch ``step``."""
        return self._stream_rows((TRAIN_STREAM, seed, step), rows)

    def _eval_rows(self, ids: range) -> Batch:
        """Held-out examples ``ids`` (default: synthetic examples from the eval streams)."""
        return self._stream_rows((EVAL_STREAM,), ids)

    # Public API ----------------------------------------------------------------------

    def train_batch(
        self,
        seed: int,
        step: int,
        batch_size: int,
        *,
        process_index: int = 0,
        process_count: int = 1,
    ) -> Batch:
        """Training batch ``step`` of the run seeded ``seed``: a pure function of the arguments.

        Args:
            seed: run seed, int >= 0.
            step: optimizer step, int >= 0.
            batch_size: global batch size ``B``.
            process_index: this host's index ``i`` (multi-host input).
            process_count: number of hosts ``P``; ``B`` must be divisible by ``P``.

        Returns:
            Dict of NumPy arrays holding rows ``[i·B/P, (i+1)·B/P)`` of the global batch;
            LM: ``tokens``, ``targets`` int32 and ``mask`` bool, each ``[B/P, L]``;
            classification: ``tokens`` int32 and ``mask`` bool ``[B/P, L]``, ``labels`` int32
            ``[B/P]``.
        """
        seed = checks.int_at_least(seed, "seed", 0)
        step = checks.int_at_least(step, "step", 0)
        rows = host_rows(batch_size, process_index, process_count)
        return self._train_rows(seed, step, batch_size, rows)

    def num_eval_batches(self, batch_size: int) -> int:
        """Number of held-out batches of ``batch_size`` rows (the last one padded)."""
        batch_size = checks.int_at_least(batch_size, "batch_size", 1)
        return -(-self.num_eval_examples // batch_size)

    def eval_batch(
        self, index: int, batch_size: int, *, process_index: int = 0, process_count: int = 1
    ) -> Batch:
        """Held-out batch ``index``: examples ``[index·B, (index+1)·B)`` in a fixed order.

        Rows past the last held-out example are padding: zeros with ``mask`` all False.

        Args:
            index: batch index in ``[0, num_eval_batches(batch_size))``.
            batch_size: global batch size ``B``.
            process_index: this host's index ``i`` (multi-host input).
            process_count: number of hosts ``P``; ``B`` must be divisible by ``P``.

        Returns:
            Dict of NumPy arrays laid out as in :meth:`train_batch`, rows
            ``[i·B/P, (i+1)·B/P)`` of the global batch.
        """
        rows = host_rows(batch_size, process_index, process_count)
        num_batches = self.num_eval_batches(batch_size)
        index = checks.int_at_least(index, "index", 0)
        if index >= num_batches:
            raise ValueError(
                f"`index` must be in [0, {num_batches}) for batch_size={batch_size}, got {index}."
            )
        start = index * batch_size
        real = range(start + rows.start, min(start + rows.stop, self.num_eval_examples))
        template = self._eval_rows(range(1))
        pad = {
            k: np.zeros((len(rows) - len(real),) + v.shape[1:], v.dtype)
            for k, v in template.items()
        }
        if not real:
            return pad
        return concat([self._eval_rows(real), pad])

    def batches(
        self,
        split: str,
        *,
        batch_size: int,
        seed: int = 0,
        start_step: int = 0,
        state: dict[str, Any] | None = None,
        process_index: int = 0,
        process_count: int = 1,
    ) -> "StepIterator":
        """The :class:`Task` protocol: :meth:`train_batch` from ``start_step`` (or the saved
        ``state["step"]``) on, endlessly, or every :meth:`eval_batch` once.

        Examples:
            >>> from jaxdiv.train.data import get_task
            >>> task = get_task("induction_heads", seq_len=32)
            >>> it = task.batches("train", batch_size=8, start_step=3)
            >>> bool((next(it)["tokens"] == task.train_batch(0, 3, 8)["tokens"]).all())
            True
            >>> it.get_state()
            {'step': 4}
        """
        checks.one_of(split, "split", SPLITS)
        hosts = {"process_index": process_index, "process_count": process_count}
        start = checks.int_at_least((state or {}).get("step", start_step), "start_step", 0)
        if split == "train":
            return StepIterator(
                lambda step: self.train_batch(seed, step, batch_size, **hosts), start
            )
        stop = self.num_eval_batches(batch_size)
        return StepIterator(lambda i: self.eval_batch(i, batch_size, **hosts), start, stop)

    @staticmethod
    def shard(batch: Batch, process_index: int, process_count: int) -> Batch:
        """Rows ``[i·B/P, (i+1)·B/P)`` of a global batch: the part process ``i`` of ``P`` feeds.

        Examples:
            >>> import numpy as np
            >>> from jaxdiv.train.data import IndexedTask
            >>> IndexedTask.shard({"labels": np.arange(6)}, 2, 3)["labels"]
            array([4, 5])
        """
        batch_size = len(next(iter(batch.values())))
        rows = host_rows(batch_size, process_index, process_count)
        return {k: v[rows.start : rows.stop] for k, v in batch.items()}


class StepIterator:
    """Batches ``make(step)`` for step = start, start + 1, … (< stop); its state is the step."""

    def __init__(self, make, start: int = 0, stop: int | None = None):
        self._make, self._step, self._stop = make, start, stop

    def __iter__(self) -> "StepIterator":
        return self

    def __next__(self) -> Batch:
        if self._stop is not None and self._step >= self._stop:
            raise StopIteration
        batch = self._make(self._step)
        self._step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        """``{"step": the index of the next batch}`` (JSON-able)."""
        return {"step": self._step}
