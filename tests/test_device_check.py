"""benchmarks.device_check: its help, and on CPU a clean exit that writes no numbers."""

import subprocess
import sys
from pathlib import Path

import jax
import pytest

from benchmarks import device_check

ROOT = Path(__file__).resolve().parents[1]


def test_help():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.device_check", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--out" in result.stdout and "Pallas kernel parity" in result.stdout


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the CPU-only path")
def test_cpu_writes_nothing(tmp_path, capsys):
    assert device_check.main(["--out", str(tmp_path / "results")]) == 0
    assert "no accelerator: nothing measured" in capsys.readouterr().out
    assert not (tmp_path / "results").exists()
