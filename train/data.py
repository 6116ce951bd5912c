"""Embedded training tasks: batches as pure functions of ``(seed, step)``, nothing downloaded.

# B batch (global), L length (``seq_len``), P process count

Five tasks, built by :func:`get_task`:

=====================  ==============  =====  =======  ==================================
name                   kind            vocab  seq_len  data
=====================  ==============  =====  =======  ==================================
``pydoc_bytes``        lm              256    256      Python docs (``pydoc_data.topics``)
``selective_copying``  lm              16     64       synthetic (Mamba §4.1)
``induction_heads``    lm              16     64       synthetic (Mamba §4.1, H3)
``associative_recall`` lm              64     64       synthetic MQAR (Zoology)
``digits``             classification  17     64       scikit-learn digits, 8×8 pixels
=====================  ==============  =====  =======  ==================================

Batches are dicts of NumPy arrays. LM tasks give ``tokens`` int32 ``[B, L]``, ``targets`` int32
``[B, L]`` (``targets[b, t]`` is what the model should predict after reading
``tokens[b, :t + 1]``) and ``mask`` bool ``[B, L]`` (positions that count in the loss).
Classification gives ``tokens`` int32 ``[B, 64]``, ``labels`` int32 ``[B]`` and ``mask`` bool
``[B, 64]``.

Determinism. ``Task.train_batch(seed, step, batch_size)`` is a pure function of its arguments:
rows ``[16j, 16j + 16)`` of the global batch are generated together, vectorised, from their own
stream ``np.random.default_rng([0, seed, step, j])`` (digits: from per-epoch permutations seeded
by ``[0, seed, epoch]``), so a resumed run sees exactly the batches it would have seen, a host
can build its rows alone, and a row does not depend on the batch size (digits aside). Held-out
data is fixed: the last topics of the Python docs, a fixed 10% of the digit images, or, for the
synthetic tasks, examples ``[16j, 16j + 16)`` drawn from ``default_rng([1, j])`` (the leading
stream tag 1 never occurs in a training stream).

Multi-host. With ``process_index=i, process_count=P`` the batch methods return rows
``[i·B/P, (i+1)·B/P)`` of the global batch (``B`` divisible by ``P``), and only those rows are
generated; concatenating the hosts' rows gives the single-process batch.
:meth:`Task.shard` slices an already built batch the same way.

Evaluation. ``eval_batch(index, batch_size)`` for ``index < num_eval_batches(batch_size)``
walks the held-out examples in order; the last batch is padded to ``batch_size`` with rows whose
``mask`` is all False (LM: they drop out of any masked loss; classification: weight rows by
``mask.any(-1)``), so every held-out example is seen exactly once.
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from jaxdiv import checks

Batch = dict[str, np.ndarray]

_TRAIN, _EVAL = 0, 1  # leading seed words: train and held-out streams never coincide
_BLOCK = 16  # rows drawn from one random stream


# ----------------------------------------------------------------------------- helpers


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng([int(w) for w in words])


def _host_rows(batch_size: int, process_index: int, process_count: int) -> range:
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


def _concat(parts: Sequence[Batch]) -> Batch:
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _lm_rows(seq: np.ndarray, mask: np.ndarray) -> Batch:
    """Teacher-forced LM rows from sequences ``[n, L + 1]``: inputs and next tokens."""
    return {
        "tokens": seq[:, :-1].astype(np.int32),
        "targets": seq[:, 1:].astype(np.int32),
        "mask": np.asarray(mask, dtype=bool),
    }


def _subsets(rng: np.random.Generator, n: int, size: int, k: int) -> np.ndarray:
    """``[n, k]``: per row, ``k`` distinct values of ``range(size)`` in uniformly random order."""
    return rng.permuted(np.broadcast_to(np.arange(size), (n, size)), axis=1)[:, :k]


# ----------------------------------------------------------------------------- base class


@dataclasses.dataclass(frozen=True)
class Task:
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
        first, stop = rows.start // _BLOCK, -(-rows.stop // _BLOCK)
        blocks = _concat([self._generate(_rng(*words, j), _BLOCK) for j in range(first, stop)])
        offset = first * _BLOCK
        return {k: v[rows.start - offset : rows.stop - offset] for k, v in blocks.items()}

    def _train_rows(self, seed: int, step: int, batch_size: int, rows: range) -> Batch:
        """Rows ``rows`` of the global training batch ``step``."""
        return self._stream_rows((_TRAIN, seed, step), rows)

    def _eval_rows(self, ids: range) -> Batch:
        """Held-out examples ``ids`` (default: synthetic examples from the eval streams)."""
        return self._stream_rows((_EVAL,), ids)

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
        rows = _host_rows(batch_size, process_index, process_count)
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
        rows = _host_rows(batch_size, process_index, process_count)
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
        return _concat([self._eval_rows(real), pad])

    @staticmethod
    def shard(batch: Batch, process_index: int, process_count: int) -> Batch:
        """Rows ``[i·B/P, (i+1)·B/P)`` of a global batch: the part process ``i`` of ``P`` feeds.

        Examples:
            >>> import numpy as np
            >>> from jaxdiv.train.data import Task
            >>> Task.shard({"labels": np.arange(6)}, 2, 3)["labels"]
            array([4, 5])
        """
        batch_size = len(next(iter(batch.values())))
        rows = _host_rows(batch_size, process_index, process_count)
        return {k: v[rows.start : rows.stop] for k, v in batch.items()}


# ----------------------------------------------------------------------------- Python docs


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
class PydocBytes(Task):
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
        return _lm_rows(seq, np.ones((starts.size, self.seq_len), bool))

    def _generate(self, rng, n):
        train, _ = self.split()
        return self._windows(train, rng.integers(0, train.size - self.seq_len, size=n))

    def _eval_rows(self, ids):
        _, held_out = self.split()
        return self._windows(held_out, np.arange(ids.start, ids.stop) * self.seq_len)


# ----------------------------------------------------------------------------- synthetic


@dataclasses.dataclass(frozen=True)
class SelectiveCopying(Task):
    """Selective copying: recall the scattered data tokens, in order, after the markers.

    Vocabulary: 0 blank (noise), ``1 … V−2`` data tokens, ``V−1`` the marker. Inputs are a
    region of ``L − K`` positions, blank except ``K`` data tokens (uniform, with replacement) at
    uniformly random distinct positions, followed by ``K`` markers. At the ``k``-th marker the
    target is the ``k``-th data token of the region; only those ``K`` positions are masked in.
    Elsewhere ``targets`` holds the next input token (never in the loss).

    Options:
        seq_len: total length ``L`` (default 64; the paper uses 4096).
        num_tokens: number ``K`` of tokens to memorise (default 8; the paper uses 16);
            ``2K <= L``.
        vocab_size: ``V`` including blank and marker (default 16, as in the paper), >= 3.
        num_eval_examples: size of the fixed held-out set (default 1024).

    References:
        Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
        https://arxiv.org/abs/2312.00752, §3.1 Fig. 2 and §4.1.

    Examples:
        >>> from jaxdiv.train.data import get_task
        >>> task = get_task("selective_copying", seq_len=12, num_tokens=3)
        >>> batch = task.eval_batch(0, batch_size=1)
        >>> batch["mask"][0].nonzero()[0]
        array([ 9, 10, 11])
        >>> data = batch["tokens"][0, :9]
        >>> bool((data[data > 0] == batch["targets"][0, 9:]).all())
        True
    """

    name: ClassVar[str] = "selective_copying"
    kind: ClassVar[str] = "lm"
    seq_len: int = 64
    num_tokens: int = 8
    vocab_size: int = 16
    num_eval_examples: int = 1024

    def __post_init__(self):
        checks.int_at_least(self.num_tokens, "num_tokens", 1)
        checks.int_at_least(self.seq_len, "seq_len", 2 * self.num_tokens)
        checks.int_at_least(self.vocab_size, "vocab_size", 3)
        checks.int_at_least(self.num_eval_examples, "num_eval_examples", 1)

    def _generate(self, rng, n):
        L, K, V = self.seq_len, self.num_tokens, self.vocab_size
        region = L - K
        positions = np.sort(_subsets(rng, n, region, K), axis=1)  # [n, K]
        data = rng.integers(1, V - 1, size=(n, K), dtype=np.int32)  # [n, K]
        tokens = np.zeros((n, L), np.int32)
        np.put_along_axis(tokens, positions, data, axis=1)
        tokens[:, region:] = V - 1
        targets = np.zeros((n, L), np.int32)
        targets[:, :-1] = tokens[:, 1:]
        targets[:, region:] = data
        mask = np.zeros((n, L), bool)
        mask[:, region:] = True
        return {"tokens": tokens, "targets": targets, "mask": mask}


@dataclasses.dataclass(frozen=True)
class InductionHeads(Task):
    """Induction heads: after ``special, key … special`` predict ``key``.

    Vocabulary: ``0 … V−2`` ordinary tokens, ``V−1`` the special token. A sequence of ``L + 1``
    uniform ordinary tokens gets the special token at a uniform position ``p ∈ [0, L−3]`` and at
    position ``L−1`` (the last input); the token after the first one (the key, at ``p + 1``) is
    also the final target. ``targets`` are the inputs shifted by one; only position ``L−1`` is
    masked in.

    Options:
        seq_len: length ``L`` (default 64; the paper trains at 256), >= 3.
        vocab_size: ``V`` including the special token (default 16, as in the paper), >= 3.
        num_eval_examples: size of the fixed held-out set (default 1024).

    References:
        Olsson et al., "In-context Learning and Induction Heads", https://arxiv.org/abs/2209.11895;
        Fu et al., "Hungry Hungry Hippos", https://arxiv.org/abs/2212.14052, §3.1;
        Gu & Dao, "Mamba", https://arxiv.org/abs/2312.00752, §4.1.

    Examples:
        >>> from jaxdiv.train.data import get_task
        >>> task = get_task("induction_heads", seq_len=10)
        >>> b = task.train_batch(0, 0, 1)
        >>> tokens, first = b["tokens"][0], int((b["tokens"][0] == 15).argmax())
        >>> b["mask"][0].nonzero()[0], bool(b["targets"][0, 9] == tokens[first + 1])
        (array([9]), True)
    """

    name: ClassVar[str] = "induction_heads"
    kind: ClassVar[str] = "lm"
    seq_len: int = 64
    vocab_size: int = 16
    num_eval_examples: int = 1024

    def __post_init__(self):
        checks.int_at_least(self.seq_len, "seq_len", 3)
        checks.int_at_least(self.vocab_size, "vocab_size", 3)
        checks.int_at_least(self.num_eval_examples, "num_eval_examples", 1)

    def _generate(self, rng, n):
        L, special = self.seq_len, self.vocab_size - 1
        seq = rng.integers(0, special, size=(n, L + 1))  # [n, L + 1]
        p = rng.integers(0, L - 2, size=n)  # [n]
        rows = np.arange(n)
        seq[rows, p] = special
        seq[:, L - 1] = special
        seq[:, L] = seq[rows, p + 1]
        mask = np.zeros((n, L), bool)
        mask[:, L - 1] = True
        return _lm_rows(seq, mask)


@dataclasses.dataclass(frozen=True)
class AssociativeRecall(Task):
    """Multi-query associative recall (MQAR): key–value pairs, then each key queried once.

    Vocabulary: 0 blank, keys ``1 … C`` with ``C = ⌊(V−1)/2⌋``, values ``C+1 … V−1``. A sequence
    of ``L + 1`` tokens starts with ``P`` pairs ``k_1 v_1 … k_P v_P`` (distinct keys, values
    uniform with replacement); the remaining ``L + 1 − 2P`` positions are blank except ``P``
    non-overlapping bigrams ``k v``, one per key in random order at uniformly random
    non-overlapping places. ``targets`` are the inputs shifted by one; the masked positions are
    the query keys, whose target is the key's value.

    Options:
        seq_len: length ``L`` (default 64); ``L + 1 >= 4P``.
        num_kv_pairs: number ``P`` of pairs (and queries) (default 8).
        vocab_size: ``V`` including the blank (default 64); needs ``⌊(V−1)/2⌋ >= P``.
        num_eval_examples: size of the fixed held-out set (default 1024).

    References:
        Arora et al., "Zoology: Measuring and Improving Recall in Efficient Language Models",
        https://arxiv.org/abs/2312.04927, §3.1 (MQAR); Ba et al., "Using Fast Weights to Attend
        to the Recent Past", https://arxiv.org/abs/1610.06258 (associative recall).

    Examples:
        >>> from jaxdiv.train.data import get_task
        >>> task = get_task("associative_recall", seq_len=16, num_kv_pairs=2, vocab_size=9)
        >>> b = task.train_batch(0, 0, 1)
        >>> pairs = dict(b["tokens"][0, :4].reshape(2, 2).tolist())
        >>> queries = b["tokens"][0][b["mask"][0]].tolist()
        >>> answers = b["targets"][0][b["mask"][0]].tolist()
        >>> sorted(queries) == sorted(pairs), [pairs[k] for k in queries] == answers
        (True, True)
    """

    name: ClassVar[str] = "associative_recall"
    kind: ClassVar[str] = "lm"
    seq_len: int = 64
    num_kv_pairs: int = 8
    vocab_size: int = 64
    num_eval_examples: int = 1024

    def __post_init__(self):
        P = checks.int_at_least(self.num_kv_pairs, "num_kv_pairs", 1)
        checks.int_at_least(self.seq_len, "seq_len", 4 * P - 1)
        checks.int_at_least(self.vocab_size, "vocab_size", 2 * P + 1)
        checks.int_at_least(self.num_eval_examples, "num_eval_examples", 1)

    def _generate(self, rng, n):
        L, P, V = self.seq_len, self.num_kv_pairs, self.vocab_size
        num_keys = (V - 1) // 2
        keys = _subsets(rng, n, num_keys, P) + 1  # [n, P]
        values = rng.integers(num_keys + 1, V, size=(n, P))  # [n, P]
        seq = np.zeros((n, L + 1), np.int64)
        seq[:, 0 : 2 * P : 2] = keys
        seq[:, 1 : 2 * P : 2] = values
        # P non-overlapping bigrams in R slots: sorted distinct picks among R − P, shifted by rank.
        region = L + 1 - 2 * P
        starts = 2 * P + np.sort(_subsets(rng, n, region - P, P), axis=1) + np.arange(P)
        order = _subsets(rng, n, P, P)  # [n, P] which pair each query slot asks for
        np.put_along_axis(seq, starts, np.take_along_axis(keys, order, axis=1), axis=1)
        np.put_along_axis(seq, starts + 1, np.take_along_axis(values, order, axis=1), axis=1)
        mask = np.zeros((n, L), bool)
        np.put_along_axis(mask, starts, True, axis=1)
        return _lm_rows(seq, mask)


# ----------------------------------------------------------------------------- digits

_DIGITS_SPLIT_SEED = 0  # fixed permutation of the 1797 images, independent of any run seed


@functools.lru_cache(maxsize=1)
def _digits_data() -> tuple[np.ndarray, np.ndarray]:
    """(pixels int32 [1797, 64] in 0…16, labels int32 [1797]) from scikit-learn's package."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            "the 'digits' task needs scikit-learn (it ships the images): pip install scikit-learn"
        ) from e
    digits = load_digits()
    return digits.data.astype(np.int32), digits.target.astype(np.int32)


@functools.lru_cache(maxsize=4)
def _digits_split(eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    n = _digits_data()[1].size
    perm = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(n)
    num_eval = max(1, round(eval_fraction * n))
    return np.sort(perm[:-num_eval]), np.sort(perm[-num_eval:])


@dataclasses.dataclass(frozen=True)
class Digits(Task):
    """scikit-learn digits as sequence classification: 64 pixels (0…16) in raster order → digit.

    The 1797 8×8 images (UCI optical digits, packaged with scikit-learn, no download) are split
    once by a fixed permutation (seed 0, whatever the run seed): ``round(eval_fraction · 1797)``
    images held out. Training draws the training images without replacement, epoch by epoch:
    the ``g``-th example of a run (``g = step·B + row``) is image ``perm_e[g mod N]`` of epoch
    ``e = ⌊g / N⌋``, ``perm_e`` a permutation seeded by ``(seed, e)``. ``mask`` is all True
    (all False on eval padding rows).

    Options:
        eval_fraction: fraction of the images held out (default 0.1: 180 images).

    References:
        Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine Learning
        Repository (1998), https://doi.org/10.24432/C50P49; scikit-learn ``load_digits``.

    Examples:
        >>> from jaxdiv.train.data import get_task
        >>> task = get_task("digits")
        >>> b = task.train_batch(seed=0, step=0, batch_size=4)
        >>> b["tokens"].shape, b["labels"].shape, task.vocab_size, task.num_classes
        ((4, 64), (4,), 17, 10)
    """

    name: ClassVar[str] = "digits"
    kind: ClassVar[str] = "classification"
    vocab_size: ClassVar[int] = 17
    seq_len: ClassVar[int] = 64
    num_classes: ClassVar[int] = 10
    eval_fraction: float = 0.1

    def __post_init__(self):
        if not 0.0 < self.eval_fraction < 0.5:
            raise ValueError(f"`eval_fraction` must be in (0, 0.5), got {self.eval_fraction!r}.")

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """(train indices, held-out indices) into ``sklearn.datasets.load_digits()``, sorted."""
        return _digits_split(self.eval_fraction)

    @property
    def num_eval_examples(self) -> int:
        return self.split()[1].size

    def _images(self, indices: np.ndarray) -> Batch:
        pixels, labels = _digits_data()
        return {
            "tokens": pixels[indices],
            "labels": labels[indices],
            "mask": np.ones((indices.size, 64), bool),
        }

    def _eval_rows(self, ids):
        return self._images(self.split()[1][ids.start : ids.stop])

    def _train_rows(self, seed, step, batch_size, rows):
        train = self.split()[0]
        n = train.size
        g = step * batch_size + np.arange(rows.start, rows.stop)  # global example counters
        epochs = g // n
        picks = np.empty(g.size, np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            picks[sel] = train[_rng(_TRAIN, seed, e).permutation(n)[g[sel] % n]]
        return self._images(picks)


# ----------------------------------------------------------------------------- registry

_TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (PydocBytes, SelectiveCopying, InductionHeads, AssociativeRecall, Digits)
}


def task_names() -> tuple[str, ...]:
    """Names accepted by :func:`get_task`."""
    return tuple(_TASKS)


def get_task(name: str, **options) -> Task:
    """The task called ``name`` with its options (see each task class for them and defaults).

    Args:
        name: one of :func:`task_names`.
        **options: task options, e.g. ``seq_len``; unknown ones raise ``ValueError``.

    Returns:
        A frozen :class:`Task`.

    Examples:
        >>> from jaxdiv.train.data import get_task
        >>> task = get_task("associative_recall", num_kv_pairs=4)
        >>> task.kind, task.vocab_size, task.seq_len, task.num_classes
        ('lm', 64, 64, None)
    """
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(_TASKS)}.")
    cls = _TASKS[name]
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for task {name!r}; "
            f"expected some of {', '.join(allowed)}."
        )
    return cls(**options)
