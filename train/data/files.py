"""The ``text`` task: language modelling on the user's own files, tokenised and packed.

# B batch (global), L length (``seq_len``), N training rows of an epoch

Pipeline (a pure function of ``(seed, step)``, like every :class:`IndexedTask`, so a resumed
run reads exactly the batches it would have read):

1. **Read** documents from ``files`` (one glob or a list of globs, sorted) in ``format``:
   ``text`` (each file split into documents at blank lines, each stripped), ``jsonl`` (one
   JSON object per line, the document in ``field``), ``parquet`` (column ``field``) or
   ``hf_disk`` (a Hugging Face ``datasets`` directory written by ``save_to_disk``; a
   ``DatasetDict`` uses its ``train`` split), column ``field``. Parquet and ``hf_disk`` need
   ``pyarrow``.
2. **Split** documents into training and held-out sets by a fixed permutation (seed 0, any
   run seed): ``round(eval_fraction · #documents)`` documents (at least one) held out.
3. **Tokenise** with ``tokenizer``: ``"bytes"`` (UTF-8 bytes, vocabulary 256) or the path of
   a ``tokenizer.json`` (Hugging Face ``tokenizers``; a directory holding one works too),
   through a ``grain.MapDataset`` of documents.
4. **Pack** each set's documents, in order, into one token stream with a segment id per token
   (the document it came from), and cut it into rows of ``L + 1`` tokens with stride ``L``
   (the last partial row is dropped; a set shorter than one row is an error). A row gives
   ``tokens = row[:-1]``, ``targets = row[1:]``, ``segment_ids`` [L] (document index, from 0,
   within the row) and ``mask`` [L], True where the target continues the token's document:
   **no loss is ever taken across a document boundary**, and the train step passes
   ``segment_ids`` to the model, whose attention layers never attend across documents.
5. **Shuffle**: the ``g``-th training row of a run (``g = step·B + row``) is row
   ``perm_e[g mod N]`` of epoch ``e = ⌊g / N⌋``, ``perm_e`` grain's index shuffle seeded by
   ``(seed, e)``; held-out rows are read in order. Multi-host: each process builds only its
   rows of each global batch (``process_index``, ``process_count``).

The token streams are built once per process and kept in memory (int32: 4 bytes per token).
"""

import dataclasses
import functools
import glob
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import grain
import numpy as np

from jaxdiv import checks
from jaxdiv.train.data.base import Batch, IndexedTask

FORMATS = ("text", "jsonl", "parquet", "hf_disk")
_SPLIT_SEED = 0  # fixed document split, independent of any run seed
_PARAGRAPH = re.compile(r"\n\s*\n")


# ----------------------------------------------------------------------------- reading


def _paths(files: str | Sequence[str] | None) -> list[Path]:
    patterns = [files] if isinstance(files, str) else list(files or ())
    if not any(patterns):
        raise ValueError(
            "`task.files` is not set; expected a path, a glob or a list of them "
            "(e.g. --config.task.files='texts/*.txt')."
        )
    found = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(pattern), recursive=True))
        if not matches:
            raise FileNotFoundError(f"`task.files`: no file matches {pattern!r}.")
        found.extend(Path(m) for m in matches)
    return found


def _arrow_column(table, field: str, where: Path) -> list[str]:
    if field not in table.column_names:
        raise ValueError(
            f"{where} has no column {field!r} (`task.field`); columns: {table.column_names}."
        )
    return [str(x) for x in table.column(field).to_pylist() if x is not None]


def _read_hf_disk(path: Path, field: str) -> list[str]:
    import pyarrow as pa

    if (path / "dataset_dict.json").exists():  # a DatasetDict: its train split
        path = path / "train"
    state = path / "state.json"
    if not state.exists():
        raise ValueError(
            f"{path} is not a Hugging Face `save_to_disk` directory (no state.json); "
            f"expected `task.format='hf_disk'` to point at one."
        )
    docs = []
    for entry in json.loads(state.read_text())["_data_files"]:
        with pa.memory_map(str(path / entry["filename"])) as source:
            docs += _arrow_column(pa.ipc.open_stream(source).read_all(), field, path)
    return docs


def _read_jsonl(path: Path, field: str) -> list[str]:
    docs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if field not in record:
            raise ValueError(f"{path}:{number} has no field {field!r} (`task.field`).")
        docs.append(str(record[field]))
    return docs


def read_documents(files: str | Sequence[str], format: str, field: str) -> list[str]:
    """The documents of ``files`` in ``format`` (see the module docstring), empty ones dropped."""
    checks.one_of(format, "format", FORMATS)
    docs: list[str] = []
    for path in _paths(files):
        if format == "text":
            docs += [p.strip() for p in _PARAGRAPH.split(path.read_text(encoding="utf-8"))]
        elif format == "jsonl":
            docs += _read_jsonl(path, field)
        elif format == "parquet":
            import pyarrow.parquet as pq

            docs += _arrow_column(pq.read_table(path), field, path)
        else:
            docs += _read_hf_disk(path, field)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"`task.files` {files!r} holds no non-empty document.")
    return docs


# ----------------------------------------------------------------------------- tokenising


@functools.lru_cache(maxsize=8)
def load_tokenizer(spec: str) -> tuple[Callable[[str], np.ndarray], int]:
    """``(encode, vocab_size)`` for ``"bytes"`` or a ``tokenizer.json`` path (or its folder)."""
    if spec == "bytes":
        return (lambda text: np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)), 256
    path = Path(spec)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(
            f"`task.tokenizer`: {spec!r} is neither 'bytes' nor a tokenizer.json (or a folder "
            f"holding one)."
        )
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))

    def encode(text: str) -> np.ndarray:
        return np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, np.int32)

    return encode, tokenizer.get_vocab_size()


def pack(documents: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens, segment_ids)``: the documents concatenated, each token tagged with its
    document's index."""
    lengths = np.array([len(d) for d in documents])
    tokens = np.concatenate(documents) if documents else np.zeros(0, np.int32)
    return tokens.astype(np.int32), np.repeat(np.arange(len(documents)), lengths)


@functools.lru_cache(maxsize=4)
def _streams(files, format, field, tokenizer, eval_fraction):
    """(train, held-out) packed streams ``(tokens, segment_ids)``."""
    docs = read_documents(files, format, field)
    if len(docs) < 2:
        raise ValueError(
            f"`task.files` holds {len(docs)} document; the held-out split needs at least 2."
        )
    encode, _ = load_tokenizer(tokenizer)
    perm = np.random.default_rng(_SPLIT_SEED).permutation(len(docs))
    num_eval = max(1, round(eval_fraction * len(docs)))
    held_out, train = np.sort(perm[:num_eval]), np.sort(perm[num_eval:])
    tokenized = grain.MapDataset.source(docs).map(encode)
    return pack([tokenized[int(i)] for i in train]), pack([tokenized[int(i)] for i in held_out])


# ----------------------------------------------------------------------------- the task


@dataclasses.dataclass(frozen=True)
class TextFiles(IndexedTask):
    """Language modelling on local files (see the module docstring for the pipeline).

    Options:
        files: a path or glob, or a list of them (required).
        format: "text" (default), "jsonl", "parquet" or "hf_disk".
        field: the JSON field / column holding the text (default "text"; not for "text").
        tokenizer: "bytes" (default) or the path of a ``tokenizer.json`` (or its folder).
        seq_len: row length ``L`` (default 256).
        eval_fraction: fraction of the documents held out (default 0.1).

    Examples:
        >>> import pathlib, tempfile
        >>> from jaxdiv.train.data import get_task
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
        >>> _ = path.write_text("first document\\n\\nsecond one\\n\\na third, longer document")
        >>> task = get_task("text", files=str(path), seq_len=8, eval_fraction=0.3)
        >>> batch = task.train_batch(seed=0, step=0, batch_size=2)
        >>> batch["tokens"].shape, task.vocab_size
        ((2, 8), 256)
    """

    name: ClassVar[str] = "text"
    kind: ClassVar[str] = "lm"
    files: str | tuple[str, ...] | None = None
    format: str = "text"
    field: str = "text"
    tokenizer: str = "bytes"
    seq_len: int = 256
    eval_fraction: float = 0.1

    def __post_init__(self):
        if isinstance(self.files, list):
            object.__setattr__(self, "files", tuple(self.files))
        checks.one_of(self.format, "format", FORMATS)
        checks.int_at_least(self.seq_len, "seq_len", 1)
        if not 0.0 < self.eval_fraction < 0.5:
            raise ValueError(f"`eval_fraction` must be in (0, 0.5), got {self.eval_fraction!r}.")
        for name, (tokens, _) in zip(("training", "held-out"), self._split(), strict=True):
            if tokens.size < self.seq_len + 1:
                raise ValueError(
                    f"the {name} documents of `task.files` hold {tokens.size} tokens, fewer "
                    f"than one row of seq_len + 1 = {self.seq_len + 1}; use more text or a "
                    f"shorter `seq_len`."
                )

    def _split(self):
        return _streams(self.files, self.format, self.field, self.tokenizer, self.eval_fraction)

    @property
    def vocab_size(self) -> int:  # type: ignore[override]
        return load_tokenizer(self.tokenizer)[1]

    @property
    def num_eval_examples(self) -> int:
        return _num_rows(self._split()[1], self.seq_len)

    def _rows(self, stream, rows: np.ndarray) -> Batch:
        tokens, segments = stream
        index = rows[:, None] * self.seq_len + np.arange(self.seq_len + 1)  # [n, L + 1]
        seq, seg = tokens[index], segments[index]
        seg = seg - seg[:, :1]  # documents numbered from 0 within each row
        return {
            "tokens": seq[:, :-1],
            "targets": seq[:, 1:],
            "mask": seg[:, :-1] == seg[:, 1:],
            "segment_ids": seg[:, :-1].astype(np.int32),
        }

    def _eval_rows(self, ids):
        return self._rows(self._split()[1], np.arange(ids.start, ids.stop))

    def _train_rows(self, seed, step, batch_size, rows):
        train = self._split()[0]
        n = _num_rows(train, self.seq_len)
        g = step * batch_size + np.arange(rows.start, rows.stop)  # global row counters
        picks = np.empty(g.size, np.int64)
        for e in np.unique(g // n):
            sel = g // n == e
            order = grain.MapDataset.range(n).shuffle(seed=_epoch_seed(seed, int(e)))
            picks[sel] = [order[int(i)] for i in g[sel] % n]
        return self._rows(train, picks)


def _num_rows(stream, seq_len: int) -> int:
    """Rows of ``seq_len + 1`` tokens with stride ``seq_len`` in a stream."""
    return (stream[0].size - 1) // seq_len


def _epoch_seed(seed: int, epoch: int) -> int:
    """One 32-bit shuffle seed per (run seed, epoch) (grain's range)."""
    return int(np.random.default_rng([seed, epoch]).integers(2**32))
