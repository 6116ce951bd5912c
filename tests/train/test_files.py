"""The ``text`` task: reading every format, packing with document boundaries, determinism."""

import json

import numpy as np
import pytest

from jaxdiv.train.data import IndexedTask, Task, get_task
from jaxdiv.train.data.files import read_documents

DOCS = [f"document {i}: " + "abcdefghij"[i % 10] * (5 + 3 * i) for i in range(12)]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(DOCS) + "\n")
    return path


def _reference_rows(docs, seq_len):
    """Independent packing: bytes of each document, concatenated, windows of seq_len + 1
    with stride seq_len, and for each window the document of every byte."""
    stream, owner = [], []
    for i, doc in enumerate(docs):
        data = list(doc.encode())
        stream += data
        owner += [i] * len(data)
    rows = []
    for start in range(0, len(stream) - seq_len, seq_len):
        rows.append((stream[start : start + seq_len + 1], owner[start : start + seq_len + 1]))
    return rows


def test_every_format_reads_the_same_documents(tmp_path, text_file):
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(DOCS)))
    assert read_documents(str(text_file), "text", "text") == DOCS
    assert read_documents(str(jsonl), "jsonl", "body") == DOCS
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": DOCS}), tmp_path / "corpus.parquet")
    assert read_documents(str(tmp_path / "*.parquet"), "parquet", "body") == DOCS
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"body": DOCS}).save_to_disk(str(tmp_path / "hf"))
    assert read_documents(str(tmp_path / "hf"), "hf_disk", "body") == DOCS
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": DOCS[:3]})}).save_to_disk(
        str(tmp_path / "hf_dict")
    )
    assert read_documents(str(tmp_path / "hf_dict"), "hf_disk", "body") == DOCS[:3]


def test_rows_are_packed_documents_and_the_loss_never_crosses_a_boundary(text_file):
    task = get_task("text", files=str(text_file), seq_len=16, eval_fraction=0.25)
    assert isinstance(task, Task) and task.vocab_size == 256
    train_docs, held_out_docs = _split_docs(task)
    held_out = _reference_rows(held_out_docs, 16)
    assert task.num_eval_examples == len(held_out)
    batch = task.eval_batch(0, len(held_out))
    for r, (seq, owner) in enumerate(held_out):
        np.testing.assert_array_equal(batch["tokens"][r], seq[:-1])
        np.testing.assert_array_equal(batch["targets"][r], seq[1:])
        same = np.array(owner[:-1]) == np.array(owner[1:])
        np.testing.assert_array_equal(batch["mask"][r], same)  # no target from another doc
        np.testing.assert_array_equal(batch["segment_ids"][r], np.array(owner[:-1]) - owner[0])
    # Training rows are the reference rows of the training documents, in a shuffled order.
    train = _reference_rows(train_docs, 16)
    epoch = task.train_batch(seed=5, step=0, batch_size=len(train))
    got = sorted(map(tuple, epoch["tokens"].tolist()))
    assert got == sorted(tuple(seq[:-1]) for seq, _ in train)  # one epoch: each row once


def _split_docs(task):
    """The documents on each side of the split, recovered from the task's own streams."""
    (train, _), (held_out, _) = task._split()
    text = bytes(np.concatenate([train, held_out]).astype(np.uint8)).decode()
    held = [d for d in DOCS if d in bytes(held_out.astype(np.uint8)).decode()]
    assert len(held) == max(1, round(0.25 * len(DOCS)))
    assert all(d in text for d in DOCS)
    return [d for d in DOCS if d not in held], held


def test_batches_are_deterministic_shuffled_per_epoch_and_split_by_host(text_file):
    task = get_task("text", files=str(text_file), seq_len=8)
    a, b = task.train_batch(1, 7, 8), task.train_batch(1, 7, 8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(task.train_batch(2, 7, 8)["tokens"], a["tokens"])
    host = task.train_batch(1, 7, 8, process_index=1, process_count=2)
    assert all(np.array_equal(host[k], IndexedTask.shard(a, 1, 2)[k]) for k in a)
    it = task.batches("train", batch_size=8, seed=1, start_step=7)
    assert np.array_equal(next(it)["tokens"], a["tokens"]) and it.get_state() == {"step": 8}


def test_tokenizer_json(tmp_path, text_file):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train([str(text_file)], trainers.BpeTrainer(vocab_size=60, special_tokens=["[UNK]"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    task = get_task("text", files=str(text_file), seq_len=4, tokenizer=str(tmp_path))
    assert task.vocab_size == tok.get_vocab_size()
    batch = task.train_batch(0, 0, 4)
    assert batch["tokens"].max() < task.vocab_size


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"files": "/nonexistent/*.txt"}, FileNotFoundError, "no file matches"),
        ({"format": "csv"}, ValueError, "`format`"),
        ({"format": "jsonl", "field": "missing"}, ValueError, "no field 'missing'"),
        ({"seq_len": 4096}, ValueError, "fewer than one row of seq_len"),
        ({"tokenizer": "/nope/tokenizer.json"}, FileNotFoundError, "`task.tokenizer`"),
    ],
)
def test_errors_name_the_option(tmp_path, text_file, options, error, message):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"text": "x"}) + "\n")
    options = {"files": str(jsonl if options.get("format") == "jsonl" else text_file), **options}
    with pytest.raises(error, match=message):
        get_task("text", **options)
