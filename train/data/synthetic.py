"""Synthetic sequence tasks from the Mamba and Zoology papers: selective copying, induction
heads, multi-query associative recall.
"""

import dataclasses
from typing import ClassVar

import numpy as np

from jaxdiv import checks
from jaxdiv.train.data.base import IndexedTask, lm_rows, subsets


@dataclasses.dataclass(frozen=True)
class SelectiveCopying(IndexedTask):
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
        positions = np.sort(subsets(rng, n, region, K), axis=1)  # [n, K]
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
class InductionHeads(IndexedTask):
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
        return lm_rows(seq, mask)


@dataclasses.dataclass(frozen=True)
class AssociativeRecall(IndexedTask):
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
        keys = subsets(rng, n, num_keys, P) + 1  # [n, P]
        values = rng.integers(num_keys + 1, V, size=(n, P))  # [n, P]
        seq = np.zeros((n, L + 1), np.int64)
        seq[:, 0 : 2 * P : 2] = keys
        seq[:, 1 : 2 * P : 2] = values
        # P non-overlapping bigrams in R slots: sorted distinct picks among R − P, shifted by rank.
        region = L + 1 - 2 * P
        starts = 2 * P + np.sort(subsets(rng, n, region - P, P), axis=1) + np.arange(P)
        order = subsets(rng, n, P, P)  # [n, P] which pair each query slot asks for
        np.put_along_axis(seq, starts, np.take_along_axis(keys, order, axis=1), axis=1)
        np.put_along_axis(seq, starts + 1, np.take_along_axis(values, order, axis=1), axis=1)
        mask = np.zeros((n, L), bool)
        np.put_along_axis(mask, starts, True, axis=1)
        return lm_rows(seq, mask)
