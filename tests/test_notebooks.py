"""The Colab notebooks in colab/: outputs stripped in git, and each one runs in smoke mode."""

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "colab").glob("*.ipynb"))
CELL_TIMEOUT_S = 300


def _kernel_env() -> dict[str, str]:
    """The test process's environment in smoke mode, without conftest's 8 forced CPU devices
    (a notebook runs like a fresh Colab runtime: one device, default JAX settings)."""
    env = dict(os.environ, JAXDIV_SMOKE="1", MPLBACKEND="Agg", PYDEVD_DISABLE_FILE_VALIDATION="1")
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "xla_force_host_platform_device_count" not in f)
    return env


def test_every_notebook_is_collected():
    names = [path.name for path in NOTEBOOKS]
    for name in (
        "01_divergences",
        "02_distill_lm",
        "03_sequence_models",
        "05_alignment",
        "06_distill_your_model",
    ):
        assert f"{name}.ipynb" in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_stripped(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert notebook["nbformat"] == 4
    assert set(notebook["metadata"]) <= {"kernelspec", "language_info", "colab"}
    for index, cell in enumerate(notebook["cells"]):
        where = f"{path.name} cell {index}"
        assert cell.get("metadata", {}) in ({}, {"id": cell.get("id")}), where
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{where} has outputs"
            assert cell["execution_count"] is None, f"{where} has an execution count"
    first = "".join(notebook["cells"][1]["source"])  # the install cell, after the title
    assert '"google.colab" in sys.modules' in first
    assert first.count("https://github.com/") == 1, "one REPO_URL in the install cell"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # cwd: runs/ land in tmp_path
    )
    # no wall-time assertion: speed is for benchmarks, and a loaded machine must not decide a
    # test; the STYLE budget (all notebooks ≤ 10 min) is read from the --durations report
    client.execute(env=_kernel_env())  # raises CellExecutionError on the first failing cell
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors, errors
