"""Training tasks: batches as pure functions of ``(seed, step)``, nothing downloaded.

# B batch (global), L length (``seq_len``), P process count

Six tasks, built by :func:`get_task`: five embedded ones and ``text``, the user's own files
(``files.py``: plain text, JSONL, parquet or a Hugging Face ``save_to_disk`` directory,
tokenised with bytes or a ``tokenizer.json`` and packed with document boundaries kept).

=====================  ==============  =====  =======  ==================================
name                   kind            vocab  seq_len  data
=====================  ==============  =====  =======  ==================================
``pydoc_bytes``        lm              256    256      Python docs (``pydoc_data.topics``)
``selective_copying``  lm              16     64       synthetic (Mamba §4.1)
``induction_heads``    lm              16     64       synthetic (Mamba §4.1, H3)
``associative_recall`` lm              64     64       synthetic MQAR (Zoology)
``digits``             classification  17     64       scikit-learn digits, 8×8 pixels
``text``               lm              tok.   256      your files (``files``, ``format``)
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
:meth:`IndexedTask.shard` slices an already built batch the same way.

Evaluation. ``eval_batch(index, batch_size)`` for ``index < num_eval_batches(batch_size)``
walks the held-out examples in order; the last batch is padded to ``batch_size`` with rows whose
``mask`` is all False (LM: they drop out of any masked loss; classification: weight rows by
``mask.any(-1)``), so every held-out example is seen exactly once.
"""

import dataclasses

from jaxdiv.train.data.base import Batch as Batch
from jaxdiv.train.data.base import BatchIterator as BatchIterator
from jaxdiv.train.data.base import IndexedTask as IndexedTask
from jaxdiv.train.data.base import Task as Task
from jaxdiv.train.data.digits import Digits
from jaxdiv.train.data.files import TextFiles
from jaxdiv.train.data.synthetic import AssociativeRecall, InductionHeads, SelectiveCopying
from jaxdiv.train.data.text import PydocBytes

_TASKS: dict[str, type[IndexedTask]] = {
    cls.name: cls
    for cls in (PydocBytes, SelectiveCopying, InductionHeads, AssociativeRecall, Digits, TextFiles)
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
