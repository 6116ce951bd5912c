"""Bytes of collectives in the compiled train step, per mesh shape, against derived bounds.

The train step of a small attention LM is compiled (not run) for the 8 simulated CPU devices
in each mesh shape; the collectives in its HLO (``jaxdiv.train.hlo``, one entry per result
array) are summed in bytes of their results and compared with the least any implementation
of that parallelism must produce, ``benchmarks.collectives_analysis.derived_minimum`` (whose
docstring derives it from the parameter and activation sizes). Moved bytes must lie between
that minimum (else the parser lost collectives) and twice it (else a layout regression: an
activation gathered whole, parameters moved twice), without an accelerator. The benchmark
section ``collectives`` reports the same for a 1k-wide, 2k-long LM.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.collectives_analysis import MESHES, compile_step, derived_minimum  # noqa: E402

B, L, D, LAYERS = 8, 128, 128, 2


@pytest.mark.parametrize("name", list(MESHES))
def test_collective_bytes_within_twice_the_derived_minimum(name):
    mesh = MESHES[name]
    found, params = compile_step(mesh, d_model=D, seq_len=L, layers=LAYERS, batch=B)
    moved = sum(c.nbytes for c in found)
    least = derived_minimum(mesh, params, B * L * D * 4, LAYERS)
    report = f"{moved / 2**20:.2f} MiB moved, derived minimum {least / 2**20:.2f} MiB"
    assert least <= moved <= 2 * least, report
