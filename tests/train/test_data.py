"""Embedded tasks: determinism, layouts, answers checked by independent parsers, held-out splits,
multi-host slicing and error messages."""

import numpy as np
import pytest

from jaxdiv.train.data import IndexedTask, Task, get_task, task_names

NAMES = ("pydoc_bytes", "selective_copying", "induction_heads", "associative_recall", "digits")

# Small options so the whole file runs in seconds.
SMALL = {
    "pydoc_bytes": {"seq_len": 32},
    "selective_copying": {"seq_len": 24, "num_tokens": 4, "num_eval_examples": 50},
    "induction_heads": {"seq_len": 20, "num_eval_examples": 50},
    "associative_recall": {"seq_len": 32, "num_kv_pairs": 4, "vocab_size": 20},
    "digits": {},
}


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _concat(parts):
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ----------------------------------------------------------------------------- registry


def test_names():
    assert task_names() == (*NAMES, "text")  # text: the user's files (tests/train/test_files.py)
    for name in NAMES:
        assert get_task(name).name == name


def test_unknown_task_lists_names():
    with pytest.raises(ValueError, match="unknown task 'nope'; expected one of pydoc_bytes, "):
        get_task("nope")


def test_unknown_option_lists_options():
    with pytest.raises(ValueError, match="unknown option.*colour.*expected some of seq_len"):
        get_task("induction_heads", colour=1)


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("selective_copying", {"seq_len": 7, "num_tokens": 4}, "`seq_len` must be an int >= 8"),
        ("selective_copying", {"vocab_size": 2}, "`vocab_size` must be an int >= 3"),
        ("induction_heads", {"seq_len": 2}, "`seq_len` must be an int >= 3"),
        ("induction_heads", {"seq_len": 8.0}, "`seq_len` must be an int"),
        (
            "associative_recall",
            {"num_kv_pairs": 8, "seq_len": 30},
            "`seq_len` must be an int >= 31",
        ),
        ("associative_recall", {"num_kv_pairs": 8, "vocab_size": 16}, "`vocab_size` .* >= 17"),
        ("pydoc_bytes", {"seq_len": 10**7}, "`seq_len` must be < "),
        ("pydoc_bytes", {"eval_fraction": 0.0}, "`eval_fraction` must be in"),
        ("digits", {"eval_fraction": 0.7}, "`eval_fraction` must be in"),
    ],
)
def test_bad_options(name, options, match):
    with pytest.raises(ValueError, match=match):
        get_task(name, **options)


def test_bad_batch_arguments():
    task = get_task("induction_heads", **SMALL["induction_heads"])
    with pytest.raises(ValueError, match="`seed` must be an int >= 0, got -1"):
        task.train_batch(-1, 0, 4)
    with pytest.raises(ValueError, match="`step` must be an int >= 0, got 1.5"):
        task.train_batch(0, 1.5, 4)
    with pytest.raises(ValueError, match="`batch_size` must be an int >= 1, got 0"):
        task.train_batch(0, 0, 0)
    with pytest.raises(ValueError, match="`batch_size` must be divisible by process_count=3"):
        task.train_batch(0, 0, 4, process_count=3)
    with pytest.raises(ValueError, match=r"`process_index` must be in \[0, 2\)"):
        task.train_batch(0, 0, 4, process_index=2, process_count=2)
    with pytest.raises(ValueError, match=r"`index` must be in \[0, 13\) for batch_size=4, got 13"):
        task.eval_batch(13, 4)
    with pytest.raises(ValueError, match="divisible by process_count=4"):
        IndexedTask.shard({"tokens": np.zeros((6, 3))}, 0, 4)


# ----------------------------------------------------------------------------- generic contract


@pytest.fixture(params=NAMES)
def task(request):
    return get_task(request.param, **SMALL[request.param])


def test_attributes_and_layout(task):
    L = task.seq_len
    batch = task.train_batch(seed=1, step=2, batch_size=6)
    if task.kind == "lm":
        assert task.num_classes is None
        assert set(batch) == {"tokens", "targets", "mask"}
        assert batch["targets"].shape == (6, L) and batch["targets"].dtype == np.int32
        assert 0 <= batch["targets"].min() and batch["targets"].max() < task.vocab_size
        assert batch["mask"].any(axis=1).all()
    else:
        assert task.kind == "classification" and task.num_classes == 10
        assert set(batch) == {"tokens", "labels", "mask"}
        assert batch["labels"].shape == (6,) and batch["labels"].dtype == np.int32
        assert 0 <= batch["labels"].min() and batch["labels"].max() < task.num_classes
        assert batch["mask"].all()
    assert batch["tokens"].shape == (6, L) and batch["tokens"].dtype == np.int32
    assert batch["mask"].shape == (6, L) and batch["mask"].dtype == np.bool_
    assert 0 <= batch["tokens"].min() and batch["tokens"].max() < task.vocab_size
    assert _equal(task.eval_batch(0, 6), task.eval_batch(0, 6))
    assert task.eval_batch(0, 6).keys() == batch.keys()


def test_pure_function_of_seed_and_step(task):
    a = task.train_batch(seed=3, step=7, batch_size=8)
    assert _equal(a, task.train_batch(seed=3, step=7, batch_size=8))
    assert _equal(a, get_task(task.name, **SMALL[task.name]).train_batch(3, 7, 8))
    assert not np.array_equal(a["tokens"], task.train_batch(3, 8, 8)["tokens"])
    assert not np.array_equal(a["tokens"], task.train_batch(4, 7, 8)["tokens"])
    # rows differ from each other (each row has its own stream)
    assert len({row.tobytes() for row in a["tokens"]}) == 8


@pytest.mark.parametrize("process_count", [2, 4, 5])
def test_hosts_together_give_the_single_process_batch(task, process_count):
    full = task.train_batch(5, 11, 40)  # hosts' rows straddle the 16-row stream blocks
    parts = [
        task.train_batch(5, 11, 40, process_index=i, process_count=process_count)
        for i in range(process_count)
    ]
    assert all(p["tokens"].shape[0] == 40 // process_count for p in parts)
    assert _equal(_concat(parts), full)
    for i, part in enumerate(parts):
        assert _equal(IndexedTask.shard(full, i, process_count), part)
    for index in (0, task.num_eval_batches(40) - 1):  # the last one is padded
        eval_parts = [
            task.eval_batch(index, 40, process_index=i, process_count=process_count)
            for i in range(process_count)
        ]
        assert _equal(_concat(eval_parts), task.eval_batch(index, 40))


@pytest.mark.parametrize("name", NAMES[:4])
def test_rows_do_not_depend_on_batch_size(name):
    task = get_task(name, **SMALL[name])
    assert _equal(task.train_batch(1, 2, 20), IndexedTask.shard(task.train_batch(1, 2, 40), 0, 2))


def test_eval_covers_held_out_set_once_with_padding(task):
    batch_size = 7
    n = task.num_eval_examples
    assert task.num_eval_batches(batch_size) == -(-n // batch_size)
    batches = [task.eval_batch(i, batch_size) for i in range(task.num_eval_batches(batch_size))]
    real = np.concatenate([b["mask"].any(axis=1) for b in batches])
    assert real[:n].all() and not real[n:].any()
    pad = batches[-1]
    for key in pad:
        assert not pad[key][real[-batch_size:] == 0].any()  # padding rows are all zero / False
    # batch size does not change the held-out examples or their order
    other = [task.eval_batch(i, 4) for i in range(task.num_eval_batches(4))]
    for key in pad:
        a = np.concatenate([b[key] for b in batches])[:n]
        b = np.concatenate([o[key] for o in other])[:n]
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- pydoc


def _pydoc_texts(eval_topics):
    from pydoc_data.topics import topics

    names = sorted(topics)
    train = "\n".join(topics[k] for k in names[:-eval_topics]).encode()
    held_out = "\n".join(topics[k] for k in names[-eval_topics:]).encode()
    return train, held_out


def test_pydoc_windows_and_split():
    L = 32
    task = get_task("pydoc_bytes", seq_len=L)
    train, held_out = _pydoc_texts(eval_topics=8)  # round(0.1 · 79); 8 held-out topics
    assert [a.tobytes() for a in task.split()] == [train, held_out]
    batch = task.train_batch(0, 0, 16)
    assert batch["mask"].all()
    np.testing.assert_array_equal(batch["tokens"][:, 1:], batch["targets"][:, :-1])
    for tokens, targets in zip(batch["tokens"], batch["targets"], strict=True):
        window = bytes(np.append(tokens, targets[-1]).astype(np.uint8))
        assert window in train
    assert task.num_eval_examples == (len(held_out) - 1) // L
    n = task.num_eval_batches(64)
    rows = _concat([task.eval_batch(i, 64) for i in range(n)])
    for i in range(task.num_eval_examples):
        expected = np.frombuffer(held_out[i * L : i * L + L + 1], np.uint8)
        np.testing.assert_array_equal(rows["tokens"][i], expected[:-1])
        np.testing.assert_array_equal(rows["targets"][i], expected[1:])
    # the held-out text is the tail of the corpus, the training text its head: no overlap
    from pydoc_data.topics import topics

    corpus = "\n".join(topics[k] for k in sorted(topics)).encode()
    assert corpus == train + b"\n" + held_out


def test_pydoc_train_windows_cover_the_training_text():
    task = get_task("pydoc_bytes", seq_len=8)
    train, _ = _pydoc_texts(eval_topics=8)
    starts = []
    for step in range(4):
        for row in task.train_batch(0, step, 64)["tokens"]:
            starts.append(train.find(bytes(row.astype(np.uint8))))
            assert starts[-1] >= 0
    # uniform offsets: spread over the whole text, not clustered at its start
    assert min(starts) < len(train) // 4 and max(starts) > 3 * len(train) // 4


# ----------------------------------------------------------------------------- synthetic tasks


def test_selective_copying_answers():
    L, K, V = 24, 4, 16
    task = get_task("selective_copying", seq_len=L, num_tokens=K, vocab_size=V)
    batch = task.train_batch(0, 0, 64)
    positions = []
    for tokens, targets, mask in zip(batch["tokens"], batch["targets"], batch["mask"], strict=True):
        region = tokens[: L - K]
        assert (tokens[L - K :] == V - 1).all()  # markers
        assert ((region >= 0) & (region <= V - 2)).all()
        memorised = [t for t in region if t != 0]  # blanks are 0
        assert len(memorised) == K
        assert mask.nonzero()[0].tolist() == list(range(L - K, L))
        assert targets[mask].tolist() == memorised
        np.testing.assert_array_equal(targets[: L - K], tokens[1 : L - K + 1])
        positions += list(np.nonzero(region)[0])
    assert min(positions) == 0 and max(positions) == L - K - 1  # spacing varies over the region


def test_induction_heads_answers():
    L, V = 20, 16
    task = get_task("induction_heads", seq_len=L, vocab_size=V)
    batch = task.train_batch(2, 5, 64)
    firsts = set()
    for tokens, targets, mask in zip(batch["tokens"], batch["targets"], batch["mask"], strict=True):
        special = np.flatnonzero(tokens == V - 1)
        assert len(special) == 2 and special[1] == L - 1
        first = special[0]
        assert first + 1 < L - 1
        assert mask.nonzero()[0].tolist() == [L - 1]
        assert targets[L - 1] == tokens[first + 1]
        np.testing.assert_array_equal(targets[:-1], tokens[1:])
        firsts.add(int(first))
    assert len(firsts) > 5


def test_associative_recall_answers():
    L, P, V = 32, 4, 20
    task = get_task("associative_recall", seq_len=L, num_kv_pairs=P, vocab_size=V)
    num_keys = (V - 1) // 2
    for batch in (task.train_batch(0, 0, 64), task.eval_batch(0, 64)):
        for tokens, targets, mask in zip(
            batch["tokens"], batch["targets"], batch["mask"], strict=True
        ):
            pairs = tokens[: 2 * P].reshape(P, 2)
            assert (pairs[:, 0] >= 1).all() and (pairs[:, 0] <= num_keys).all()
            assert (pairs[:, 1] > num_keys).all() and (pairs[:, 1] < V).all()
            table = dict(pairs.tolist())
            assert len(table) == P  # distinct keys
            # queries: the key tokens after the context; each key exactly once
            queries = [t for t in range(2 * P, L) if 1 <= tokens[t] <= num_keys]
            assert mask.nonzero()[0].tolist() == queries
            assert sorted(tokens[queries].tolist()) == sorted(table)
            assert all(targets[t] == table[tokens[t]] for t in queries)
            np.testing.assert_array_equal(targets[:-1], tokens[1:])


def test_synthetic_eval_stream_is_not_a_train_stream():
    for name in ("selective_copying", "induction_heads", "associative_recall"):
        task = get_task(name, **SMALL[name])
        held_out = {row.tobytes() for row in task.eval_batch(0, 16)["tokens"]}
        for seed in range(3):
            train = task.train_batch(seed, 0, 16)["tokens"]
            assert not held_out & {row.tobytes() for row in train}


# ----------------------------------------------------------------------------- digits


def _rows(tokens, labels):
    table = np.concatenate([tokens, labels[:, None]], axis=1)
    return table[np.lexsort(table.T[::-1])]


def test_digits_split_and_epochs():
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels, labels = digits.data.astype(np.int32), digits.target.astype(np.int32)
    task = get_task("digits")
    train_idx, eval_idx = task.split()
    assert len(eval_idx) == 180 and len(train_idx) == 1797 - 180
    assert not set(train_idx.tolist()) & set(eval_idx.tolist())
    assert sorted(np.concatenate([train_idx, eval_idx]).tolist()) == list(range(1797))
    assert len(np.unique(labels[eval_idx])) == 10

    held_out = _concat([task.eval_batch(i, 64) for i in range(task.num_eval_batches(64))])
    np.testing.assert_array_equal(held_out["tokens"][:180], pixels[eval_idx])
    np.testing.assert_array_equal(held_out["labels"][:180], labels[eval_idx])

    # batch 49 divides 1617: 33 steps are exactly one epoch, every training image once
    assert len(train_idx) == 33 * 49
    for epoch in range(2):
        seen = _concat([task.train_batch(0, 33 * epoch + s, 49) for s in range(33)])
        np.testing.assert_array_equal(
            _rows(seen["tokens"], seen["labels"]), _rows(pixels[train_idx], labels[train_idx])
        )
    first, second = (task.train_batch(0, s, 49)["labels"] for s in (0, 33))
    assert not np.array_equal(first, second)  # each epoch is reshuffled


# ----------------------------------------------------------------------------- task protocol


@pytest.mark.parametrize("name", NAMES)
def test_every_task_follows_the_protocol(name):
    task = get_task(name, **SMALL[name])
    assert isinstance(task, Task)
    assert task.kind in ("lm", "classification") and task.vocab_size > 1 and task.seq_len > 1


@pytest.mark.parametrize("name", NAMES)
def test_batches_resume_from_their_state(name):
    """A train iterator restarted from a saved state yields exactly the batches that follow."""
    task = get_task(name, **SMALL[name])
    it = task.batches("train", batch_size=8, seed=3)
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    assert state == {"step": 3}
    following = next(it)
    resumed = task.batches("train", batch_size=8, seed=3, state=state)
    assert _equal(next(resumed), following)
    assert all(_equal(b, task.train_batch(3, i, 8)) for i, b in enumerate(first))
    host = task.batches("train", batch_size=8, seed=3, process_index=1, process_count=2)
    assert _equal(next(host), IndexedTask.shard(first[0], 1, 2))


@pytest.mark.parametrize("name", NAMES)
def test_eval_batches_cover_the_held_out_set_once(name):
    task = get_task(name, **SMALL[name])
    batches = list(task.batches("eval", batch_size=16))
    assert len(batches) == task.num_eval_batches(16)
    assert sum(int(b["mask"].any(-1).sum()) for b in batches) == task.num_eval_examples


def test_unknown_split_is_named():
    with pytest.raises(ValueError, match="split"):
        get_task("induction_heads").batches("test", batch_size=8)
