"""Training logs: metrics.jsonl, TensorBoard scalars, a PNG of the curves, a progress bar, tables.

``<workdir>/metrics.jsonl`` holds one JSON object per logged step and split, e.g.
``{"step": 100, "split": "train", "loss": 2.31, "lr": 0.001}``, flushed after every line so
nothing is lost when the job is stopped. The same scalars go to TensorBoard event files under
``<workdir>/tensorboard/<split>/`` (written with tensorboardX, no TensorFlow needed).

A resumed run opens the writer with ``resume_step=k`` (the restored checkpoint's step): lines
with a step after ``k`` are dropped and TensorBoard is told to discard the old events after
``k``, so the logs read as those of one uninterrupted run.

Only process 0 writes or shows anything; on the other processes of a multi-host run every
writer and progress bar is a no-op.
"""

import json
import math
import operator
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

METRICS_FILE = "metrics.jsonl"
_SPLIT_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")


def _scalar(value, name: str) -> float:
    """A metric value (Python, NumPy or JAX scalar) as a float."""
    array = np.asarray(value)
    if array.shape != ():
        raise ValueError(f"metric `{name}` must be a scalar, got shape {array.shape}.")
    if not (jnp.issubdtype(array.dtype, jnp.number) or array.dtype == np.bool_):
        raise TypeError(f"metric `{name}` must be a number, got {value!r}.")
    return float(array)


def _rewrite(path: Path, resume_step: int | None) -> None:
    """Drops an incomplete last line and, if ``resume_step`` is given, lines after that step."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    complete = lines[:-1]  # the part after the last newline is empty or cut off mid-write
    if resume_step is not None:
        complete = [
            line for line in complete if not line or json.loads(line)["step"] <= resume_step
        ]
    new_text = "".join(line + "\n" for line in complete)
    if new_text != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(new_text, encoding="utf-8")
        os.replace(tmp, path)


class MetricsWriter:
    """Appends scalar metrics to ``<workdir>/metrics.jsonl`` and to TensorBoard.

    Args:
      workdir: run directory (created if missing).
      enabled: if False (or on a process other than 0) every method is a no-op.
      tensorboard: also write TensorBoard event files under ``<workdir>/tensorboard/<split>/``.
      resume_step: step of the checkpoint a resumed run starts from: existing lines with a
        larger step are dropped, and every split's TensorBoard events after it are marked for
        purging (a ``SessionLog.START`` at ``resume_step + 1``). ``-1`` starts an empty log
        (a run restarted before its first checkpoint); ``None`` appends to the file as it is.

    Examples:
      >>> import tempfile
      >>> from jaxdiv.train.metrics import MetricsWriter, read_metrics
      >>> workdir = tempfile.TemporaryDirectory()
      >>> with MetricsWriter(workdir.name, tensorboard=False) as writer:
      ...     writer.write(1, "train", {"loss": 2.5, "lr": 1e-3})
      ...     writer.write(2, "train", {"loss": 2.0, "lr": 1e-3})
      >>> with MetricsWriter(workdir.name, tensorboard=False, resume_step=1) as writer:
      ...     writer.write(2, "eval", {"loss": 2.25})
      >>> for record in read_metrics(workdir.name):
      ...     print(record)
      {'step': 1, 'split': 'train', 'loss': 2.5, 'lr': 0.001}
      {'step': 2, 'split': 'eval', 'loss': 2.25}
      >>> workdir.cleanup()
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        resume_step: int | None = None,
    ):
        self.enabled = bool(enabled) and jax.process_index() == 0
        self.workdir = Path(workdir)
        self.path = self.workdir / METRICS_FILE
        self._tensorboard = tensorboard
        self._writers: dict[str, Any] = {}
        self._purge_step = None
        self._file: IO[str] | None = None
        if resume_step is not None:
            resume_step = operator.index(resume_step)
            self._purge_step = resume_step + 1
        if not self.enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            _rewrite(self.path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")  # closed by close()
        tensorboard_dir = self.workdir / "tensorboard"
        if tensorboard and resume_step is not None and tensorboard_dir.is_dir():
            for split_dir in sorted(tensorboard_dir.iterdir()):  # purge every split's old steps now
                self._tensorboard_writer(split_dir.name)

    def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
        """Logs the scalar ``metrics`` of ``split`` (e.g. "train", "eval") at ``step``.

        Args:
          step: training step (int).
          split: name of the data split, letters, digits, ``_``, ``.`` or ``-``.
          metrics: name -> scalar (Python, NumPy or JAX); stored as float (non-finite values
            as ``NaN``/``Infinity``, which Python's ``json`` reads back).
        """
        if not self.enabled:
            return
        step = operator.index(step)
        if not isinstance(split, str) or not _SPLIT_PATTERN.fullmatch(split):
            raise ValueError(
                f"`split` must be a name of letters, digits, '_', '.' or '-', got {split!r}."
            )
        record: dict[str, Any] = {"step": step, "split": split}
        for name, value in metrics.items():
            if name in record:
                raise ValueError(f"metric names must not be 'step' or 'split', got {name!r}.")
            record[name] = _scalar(value, name)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tensorboard:
            writer = self._tensorboard_writer(split)
            for name, value in record.items():
                if name not in ("step", "split"):
                    writer.add_scalar(name, value, step)
            writer.flush()

    def _tensorboard_writer(self, split: str):
        if split not in self._writers:
            from tensorboardX import SummaryWriter  # heavy import, only when used

            self._writers[split] = SummaryWriter(
                str(self.workdir / "tensorboard" / split), purge_step=self._purge_step
            )
        return self._writers[split]

    def close(self) -> None:
        """Flushes and closes the files."""
        if self._file is not None:
            self._file.close()
            self._file = None
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """Reads ``<workdir>/metrics.jsonl`` (ignoring a last line cut off mid-write).

    Args:
      workdir: run directory.

    Returns:
      One dict per logged line, in file order, each with ``step``, ``split`` and the metrics.
    """
    text = (Path(workdir) / METRICS_FILE).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n")[:-1] if line]


def plot_metrics(
    workdir: str | os.PathLike,
    path: str | os.PathLike | None = None,
    keys: Sequence[str] = ("loss",),
) -> Path:
    """Plots the train and eval curves of ``keys`` against step into a PNG, one panel per key.

    Non-finite values are left out. Uses matplotlib's Agg canvas (no display needed).

    Args:
      workdir: run directory holding ``metrics.jsonl``.
      path: output file (default ``<workdir>/metrics.png``).
      keys: metric names, each logged at least once.

    Returns:
      The path of the PNG written.
    """
    from matplotlib.figure import Figure  # heavy import, only when used

    records = read_metrics(workdir)
    keys = [keys] if isinstance(keys, str) else list(keys)
    logged = sorted({name for record in records for name in record} - {"step", "split"})
    missing = [key for key in keys if key not in logged]
    if not keys or missing:
        raise ValueError(
            f"`keys` must name logged metrics {logged}, got {keys} ({missing} missing)."
        )
    splits = sorted({record["split"] for record in records}, key=lambda s: (s != "train", s))
    path = Path(workdir) / "metrics.png" if path is None else Path(path)
    fig = Figure(figsize=(6.0, 2.8 * len(keys)), layout="constrained")
    axes = fig.subplots(len(keys), 1, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys, strict=True):
        for split in splits:
            points = [
                (record["step"], record[key])
                for record in records
                if record["split"] == split and key in record and math.isfinite(record[key])
            ]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="o" if split != "train" else None, label=split)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[-1].set_xlabel("step")
    fig.savefig(path, dpi=100)
    return path


class Progress:
    """A tqdm progress bar over training steps with a postfix (loss, tokens/s, ...).

    Args:
      total: last step.
      initial: step the run starts from (e.g. after a resume).
      enabled: if False (or on a process other than 0) nothing is shown.
      file: stream to write to (default stderr).

    Examples:
      >>> import io
      >>> from jaxdiv.train.metrics import Progress
      >>> stream = io.StringIO()
      >>> bar = Progress(10, initial=2, file=stream)
      >>> bar.update(10, loss=1.23456, tokens_per_s=51234.5)
      >>> bar.close()
      >>> "10/10" in stream.getvalue(), "loss=1.235, tokens_per_s=51,234" in stream.getvalue()
      (True, True)
    """

    def __init__(
        self, total: int, *, initial: int = 0, enabled: bool = True, file: IO[str] | None = None
    ):
        self._bar = tqdm.tqdm(
            total=total,
            initial=initial,
            disable=not enabled or jax.process_index() != 0,
            unit="step",
            dynamic_ncols=file is None,
            file=file,
        )

    def update(self, step: int, **postfix) -> None:
        """Moves the bar to ``step`` and shows ``postfix`` (name -> value, numbers formatted)."""
        if self._bar.disable:
            return
        if postfix:
            self._bar.set_postfix({k: format_value(v) for k, v in postfix.items()}, refresh=False)
        self._bar.update(operator.index(step) - self._bar.n)

    def close(self) -> None:
        """Shows the final state and closes the bar."""
        self._bar.close()


def format_value(value) -> str:
    """Formats a number readably: 4 significant digits, thousands separators, or an exponent.

    Args:
      value: a Python/NumPy/JAX scalar, a string or None.

    Returns:
      ``"-"`` for None; integers with thousands separators; floats with 4 significant digits
      when 1e-3 <= |x| < 1e4, rounded with thousands separators below 1e7, else in exponent
      form; anything else ``str(value)``.

    Examples:
      >>> from jaxdiv.train.metrics import format_value
      >>> [format_value(v) for v in (0.0, 2.314159, 0.0123456, 123456.7, 2.5e-5, 3e9, 12000)]
      ['0', '2.314', '0.01235', '123,457', '2.500e-05', '3.000e+09', '12,000']
    """
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    array = np.asarray(value)
    if array.shape != () or array.dtype == np.bool_:
        return str(value)
    if jnp.issubdtype(array.dtype, jnp.integer):
        return f"{int(array):,}"
    if not jnp.issubdtype(array.dtype, jnp.floating):
        return str(value)
    x = float(array)
    magnitude = abs(x)
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    if 1e-3 <= magnitude < 1e4:
        return f"{x:.4g}"
    if 1e4 <= magnitude < 1e7:
        return f"{x:,.0f}"
    return f"{x:.3e}"


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Formats ``rows`` as a markdown table (numbers right-aligned, see ``format_value``).

    Args:
      rows: one dict per table row.
      columns: keys to show, in order (default: every key, in order of first appearance);
        missing entries show ``-``.

    Returns:
      The table, one line per row after the header and alignment lines, no trailing newline.

    Examples:
      >>> from jaxdiv.train.metrics import format_table
      >>> rows = [{"divergence": "forward_kl", "loss": 2.31456, "tokens/s": 123456.0},
      ...         {"divergence": "js", "loss": 0.5}]
      >>> print(format_table(rows, ["divergence", "loss", "tokens/s"]))
      | divergence |  loss | tokens/s |
      | :--------- | ----: | -------: |
      | forward_kl | 2.315 |  123,456 |
      | js         |   0.5 |        - |
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    columns = list(columns)
    cells = [[format_value(row.get(c)).replace("|", "\\|") for c in columns] for row in rows]
    numeric = [
        all(not isinstance(row.get(c), str) for row in rows)
        and any(row.get(c) is not None for row in rows)
        for c in columns
    ]
    headers = [c.replace("|", "\\|") for c in columns]
    widths = [
        max([len(header), 3] + [len(line[i]) for line in cells]) for i, header in enumerate(headers)
    ]

    def line(values: Sequence[str]) -> str:
        padded = (
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    rule = [
        ("-" * (w - 1) + ":") if right else (":" + "-" * (w - 1))
        for w, right in zip(widths, numeric, strict=True)
    ]
    return "\n".join([line(headers), "| " + " | ".join(rule) + " |"] + [line(c) for c in cells])
