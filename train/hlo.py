"""Collectives in compiled HLO: what a sharded program moves between devices.

Used by the sequence-parallel tests, the LASP-2 benchmark and notebook 04 to count and size
the all-gathers, all-reduces, reduce-scatters, collective-permutes and all-to-alls that XLA
emitted, without running anything.
"""

import math
import re
from typing import NamedTuple

import jax

_KINDS = "all-gather|all-reduce|reduce-scatter|collective-permute|all-to-all"
# `%name = f32[8,1,2,64]{...} all-gather(...)` or, for combined collectives, a tuple result
# `%name = (f32[256,128]{1,0}, f32[128]{0}) all-reduce(...)`; also the async `-start` forms.
_INSTRUCTION = re.compile(r"= (\(.*?\)|\S+) (" + _KINDS + r")(-start)?\(")
_ARRAY = re.compile(r"(\w+)\[([\d,]*)\]")
_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s8": 1, "u8": 1, "pred": 1}


class Collective(NamedTuple):
    """One collective of an HLO module: its kind, the result dtype and shape."""

    kind: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bytes of the result (4 per element for dtypes not in the table)."""
        return math.prod(self.shape) * _BYTES.get(self.dtype, 4)


def collectives(hlo_text: str) -> list[Collective]:
    """Every collective result in ``hlo_text`` (``compiled.as_text()``), in program order: one
    entry per array of a combined (tuple-shaped) collective. An async ``-start`` of an
    all-gather or collective-permute returns (operands, results): only the results count."""
    found = []
    for shape, kind, start in _INSTRUCTION.findall(hlo_text):
        arrays = _ARRAY.findall(shape)
        if start and kind in ("all-gather", "collective-permute") and len(arrays) % 2 == 0:
            arrays = arrays[len(arrays) // 2 :]
        found += [
            Collective(kind, t, tuple(int(d) for d in dims.split(",") if d)) for t, dims in arrays
        ]
    return found


def compiled_collectives(fn, *args) -> list[Collective]:
    """The collectives of ``jax.jit(fn)`` compiled for ``args`` (nothing is run)."""
    return collectives(jax.jit(fn).lower(*args).compile().as_text())
