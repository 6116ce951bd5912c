"""Byte-level language modelling on the Python documentation every install carries."""

import dataclasses
import functools
from typing import ClassVar

import numpy as np

from jaxdiv import checks
from jaxdiv.train.data.base import Batch, IndexedTask, lm_rows


@functools.lru_cache(maxsize=4)
def _pydoc_split(eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train bytes, held-out bytes) as uint8 arrays; the last topics by sorted name held out."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    num_eval = max(1, round(eval_fraction * len(names)))

    def encode(keys):
        return np.frombuffer("\n".join(topics[k] for k in keys).encode("utf-8"), np.uint8)

    return encode(names[:-num_eval]), encode(names[-num_eval:])


@dataclasses.dataclass(frozen=True)
class PydocBytes(IndexedTask):
    """Byte-level language modelling on the Python documentation every install carries.

    The corpus is ``pydoc_data.topics.topics`` (the texts of ``help("topic")``): topics sorted
    by name, joined by a newline, UTF-8 encoded; the last ``round(eval_fraction · #topics)``
    topics (at least one) are held out. The text, hence the data, is that of the running
    Python version. Training rows are windows of ``L + 1`` bytes at uniformly random offsets
    of the training text; held-out example ``i`` is the window starting at byte ``i·L`` of the
    held-out text. ``targets`` are the inputs shifted by one byte; ``mask`` is all True.

    Options:
        seq_len: window length ``L`` (default 256).
        eval_fraction: fraction of the topics held out (default 0.1: 8 of 79 topics).

    Examples:
        >>> from jaxdiv.train.data import get_task
        >>> task = get_task("pydoc_bytes", seq_len=16)
        >>> batch = task.train_batch(seed=0, step=0, batch_size=2)
        >>> bool((batch["tokens"][:, 1:] == batch["targets"][:, :-1]).all())
        True
        >>> task.vocab_size, bool(batch["mask"].all())
        (256, True)
    """

    name: ClassVar[str] = "pydoc_bytes"
    kind: ClassVar[str] = "lm"
    vocab_size: ClassVar[int] = 256
    seq_len: int = 256
    eval_fraction: float = 0.1

    def __post_init__(self):
        checks.int_at_least(self.seq_len, "seq_len", 1)
        if not 0.0 < self.eval_fraction < 0.5:
            raise ValueError(f"`eval_fraction` must be in (0, 0.5), got {self.eval_fraction!r}.")
        _, held_out = self.split()
        if self.seq_len >= held_out.size:
            raise ValueError(
                f"`seq_len` must be < {held_out.size} (held-out bytes), got {self.seq_len}."
            )

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """(training text, held-out text) as uint8 byte arrays."""
        return _pydoc_split(self.eval_fraction)

    @property
    def num_eval_examples(self) -> int:
        return (self.split()[1].size - 1) // self.seq_len

    def _windows(self, text: np.ndarray, starts: np.ndarray) -> Batch:
        seq = text[starts[:, None] + np.arange(self.seq_len + 1)]  # [n, L + 1]
        return lm_rows(seq, np.ones((starts.size, self.seq_len), bool))

    def _generate(self, rng, n):
        train, _ = self.split()
        return self._windows(train, rng.integers(0, train.size - self.seq_len, size=n))

    def _eval_rows(self, ids):
        _, held_out = self.split()
        return self._windows(held_out, np.arange(ids.start, ids.stop) * self.seq_len)
