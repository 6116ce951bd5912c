"""Metrics logging: metrics.jsonl content and flushing, TensorBoard events, truncation on resume,
disabled writers, PNG plots, the progress bar and markdown tables."""

import io
import json
import math
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from jaxdiv.train.metrics import (
    MetricsWriter,
    Progress,
    format_table,
    format_value,
    plot_metrics,
    read_metrics,
)


def _lines(workdir):
    """metrics.jsonl parsed line by line, independently of ``read_metrics``."""
    with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _events(directory):
    """Every event of the TFRecord event files in ``directory`` (length, crc, data, crc)."""
    events = []
    for path in sorted(directory.iterdir()):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            events.append(event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length]))
            offset += 12 + length + 4
    return events


def _scalars(directory):
    return [(e.step, v.tag, v.simple_value) for e in _events(directory) for v in e.summary.value]


def _log_run(writer, steps):
    for step in steps:
        writer.write(step, "train", {"loss": 1.0 / step, "lr": 0.1 * step})
        if step % 2 == 0:
            writer.write(step, "eval", {"loss": 2.0 / step})


def test_jsonl_content_flushed_and_tensorboard(tmp_path):
    writer = MetricsWriter(tmp_path / "run")
    writer.write(1, "train", {"loss": 2.5, "grad_norm": np.float32(0.25), "tokens": 4096})
    writer.write(np.int64(2), "eval", {"loss": jnp.asarray(1.75, jnp.bfloat16), "acc": True})
    # Readable before close: every line is flushed when written.
    assert _lines(tmp_path / "run") == [
        {"step": 1, "split": "train", "loss": 2.5, "grad_norm": 0.25, "tokens": 4096.0},
        {"step": 2, "split": "eval", "loss": 1.75, "acc": 1.0},
    ]
    writer.close()
    records = read_metrics(tmp_path / "run")
    assert records == _lines(tmp_path / "run")
    assert all(
        type(v) is float for r in records for k, v in r.items() if k not in ("step", "split")
    )
    tensorboard = tmp_path / "run" / "tensorboard"
    assert sorted(p.name for p in tensorboard.iterdir()) == ["eval", "train"]
    assert _scalars(tensorboard / "train") == [
        (1, "loss", 2.5),
        (1, "grad_norm", 0.25),
        (1, "tokens", 4096.0),
    ]
    assert _scalars(tensorboard / "eval") == [(2, "loss", 1.75), (2, "acc", 1.0)]


def test_resume_truncates_to_an_uninterrupted_run(tmp_path):
    with MetricsWriter(tmp_path / "full", tensorboard=False) as writer:
        _log_run(writer, range(1, 9))

    with MetricsWriter(tmp_path / "resumed") as writer:
        _log_run(writer, range(1, 7))  # checkpoint at step 4, killed after logging step 6 ...
    with open(tmp_path / "resumed" / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 7, "split": "tr')  # ... in the middle of writing a line
    with MetricsWriter(tmp_path / "resumed", resume_step=4) as writer:
        assert [r["step"] for r in read_metrics(tmp_path / "resumed")] == [1, 2, 2, 3, 4, 4]
        _log_run(writer, range(5, 9))

    assert _lines(tmp_path / "resumed") == _lines(tmp_path / "full")
    assert len(_lines(tmp_path / "full")) == 8 + 4
    # TensorBoard: the resumed writer marks the restart so readers purge the old steps >= 5.
    for split in ("train", "eval"):
        starts = [
            e.step
            for e in _events(tmp_path / "resumed" / "tensorboard" / split)
            if e.session_log.status == event_pb2.SessionLog.START
        ]
        assert starts == [5]
    with MetricsWriter(tmp_path / "resumed", tensorboard=False, resume_step=-1):
        pass  # restarted before the first checkpoint: nothing logged survives
    assert _lines(tmp_path / "resumed") == []


def test_reopen_without_resume_step_appends_and_drops_cut_line(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.write(1, "train", {"loss": 1.0})
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 2, "spl')
    assert read_metrics(tmp_path) == [{"step": 1, "split": "train", "loss": 1.0}]
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.write(2, "train", {"loss": 0.5})
    assert _lines(tmp_path) == [
        {"step": 1, "split": "train", "loss": 1.0},
        {"step": 2, "split": "train", "loss": 0.5},
    ]


def test_disabled_writer_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    with MetricsWriter(workdir, enabled=False) as writer:
        writer.write(1, "train", {"loss": 1.0})
        writer.write(1, "train", {"loss": np.ones(3)})  # not even validated
    assert not workdir.exists()


def test_write_errors(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        with pytest.raises(ValueError, match=r"metric `loss` must be a scalar, got shape \(2,\)"):
            writer.write(1, "train", {"loss": np.ones(2)})
        with pytest.raises(TypeError, match="metric `name` must be a number"):
            writer.write(1, "train", {"name": "abc"})
        with pytest.raises(ValueError, match="metric names must not be 'step' or 'split'"):
            writer.write(1, "train", {"step": 3})
        with pytest.raises(ValueError, match="`split` must be a name .* got 'a/b'"):
            writer.write(1, "a/b", {"loss": 1.0})
        with pytest.raises(TypeError):
            writer.write(1.5, "train", {"loss": 1.0})
    assert _lines(tmp_path) == []


def _png_size(path):
    """Width and height from the PNG signature and IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_metrics_png(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        _log_run(writer, range(1, 9))
        writer.write(9, "train", {"loss": math.nan, "lr": 0.9})  # a gap, not a failure
    path = plot_metrics(tmp_path)
    assert path == tmp_path / "metrics.png"
    assert _png_size(path) == (600, 280)
    custom = plot_metrics(tmp_path, tmp_path / "curves.png", keys=("loss", "lr"))
    assert custom == tmp_path / "curves.png"
    assert _png_size(custom) == (600, 560)
    with pytest.raises(ValueError, match=r"`keys` must name logged metrics \['loss', 'lr'\]"):
        plot_metrics(tmp_path, keys=("loss", "accuracy"))


def test_progress_bar():
    stream = io.StringIO()
    bar = Progress(10, initial=3, file=stream)
    bar.update(7, loss=0.123456, tokens_per_s=2.5e6)
    bar.close()
    text = stream.getvalue()
    assert "7/10" in text
    assert "loss=0.1235, tokens_per_s=2,500,000" in text

    quiet = io.StringIO()
    bar = Progress(10, enabled=False, file=quiet)
    bar.update(5, loss=1.0)
    bar.close()
    assert quiet.getvalue() == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "-"),
        ("forward_kl", "forward_kl"),
        (0.0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (-2.3456789, "-2.346"),
        (0.001, "0.001"),
        (0.000999, "9.990e-04"),
        (9999.4, "9999"),
        (12345.6, "12,346"),
        (-9_999_999.0, "-9,999,999"),
        (12_345_678.0, "1.235e+07"),
        (math.nan, "nan"),
        (-math.inf, "-inf"),
        (7, "7"),
        (1234567, "1,234,567"),
        (np.int32(-42), "-42"),
        (np.float32(0.5), "0.5"),
        (jnp.asarray(3.25), "3.25"),
        (jnp.asarray(1.5, jnp.bfloat16), "1.5"),
        (True, "True"),
    ],
)
def test_format_value(value, expected):
    assert format_value(value) == expected


def test_format_table():
    rows = [
        {"divergence": "forward_kl", "loss": 2.31456, "steps": 1000, "note": "a|b"},
        {"divergence": "reverse_kl", "loss": math.nan, "steps": 20000},
        {"divergence": "js", "loss": 0.0004},
    ]
    expected = "\n".join(
        [
            "| divergence |      loss |  steps | note |",
            "| :--------- | --------: | -----: | :--- |",
            "| forward_kl |     2.315 |  1,000 | a\\|b |",
            "| reverse_kl |       nan | 20,000 | -    |",
            "| js         | 4.000e-04 |      - | -    |",
        ]
    )
    assert format_table(rows) == expected
    assert format_table(rows, ["loss", "divergence"]) == "\n".join(
        [
            "|      loss | divergence |",
            "| --------: | :--------- |",
            "|     2.315 | forward_kl |",
            "|       nan | reverse_kl |",
            "| 4.000e-04 | js         |",
        ]
    )
    assert format_table([], ["a"]) == "| a   |\n| :-- |"
