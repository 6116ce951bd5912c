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


def test_scan_timings_cover_every_method_and_reach_the_report():
    rows = device_check.time_scans(1, 16, 64, repeats=1)  # pallas in interpret mode on CPU
    assert [(r["op"], r["method"]) for r in rows] == [
        (op, method) for op, methods in device_check.SCAN_METHODS.items() for method in methods
    ]
    assert all("error" not in r and 0 < r["min ms"] <= r["fwd+bwd ms"] for r in rows), rows
    meta = {
        "device_kind": "cpu",
        "date": "2026-12-04",
        "commit": "abc",
        "backend": "cpu",
        "device_count": 1,
        "versions": {"jax": "0"},
    }
    text = device_check._markdown(meta, [], rows, [])
    assert "| selective_scan | sequential | 1, 16, 64 |" in text
    assert "| ssd | pallas | 1, 16, 64 |" in text
