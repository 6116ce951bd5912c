"""scikit-learn digits as sequence classification (8×8 pixels in raster order)."""

import dataclasses
import functools
from typing import ClassVar

import numpy as np

from jaxdiv.train.data.base import TRAIN_STREAM, Batch, IndexedTask, rng

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
class Digits(IndexedTask):
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
            picks[sel] = train[rng(TRAIN_STREAM, seed, e).permutation(n)[g[sel] % n]]
        return self._images(picks)
