"""Pallas kernels, each behind the ``method="pallas"`` of its op (API.md §5).

- ``selective_scan``: Mamba's S6 recurrence (``jaxdiv.models.ssm.selective_scan``);
- ``linear_attention``: chunked linear attention with no, per-head or per-key-channel decay
  (``jaxdiv.models.attention.linear``);
- ``ssd``: Mamba-2 state-space duality (``jaxdiv.models.ssm.ssd``), the per-head-decay chunked
  recurrence on x's own layout and dtype, B and C per group.

Every kernel has a hand-written backward kernel wired with ``jax.custom_vjp``. On CPU they run
in Pallas interpret mode (``interpret=None`` resolves to ``jax.default_backend() == "cpu"``)
and equal the reference methods in value and gradient (``tests/models/test_kernels.py``).
The modules are not re-exported here (each module's public function has its op's name). The
block shapes follow the TPU (8, 128) tiling, the compiler parameters are chosen per lowering
platform (``_common.pallas_call``) and every kernel lowers for TPU (Mosaic) and GPU (Triton)
from a CPU host (``tests/models/test_kernel_lowering.py``: no value slicing inside kernels,
which Triton cannot lower; rows are read from the refs). No TPU or GPU run has been made: on
accelerators the kernels are opt-in and untested until measured there.
"""
