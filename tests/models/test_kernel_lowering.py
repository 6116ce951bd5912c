"""The Pallas kernels lower for TPU (Mosaic) and GPU (Triton), checked on a CPU-only host.

``jit(...).trace(...).lower(lowering_platforms=...)`` lowers for a platform that is not
present: Pallas turns each kernel into the target's kernel IR in Python (Mosaic for TPU, Triton
for GPU), so a kernel that uses an operation the target's Pallas lowering lacks (Triton has no
value slicing, for one), or a block shape the target rejects (TPU's (8, 128) tiling), fails
here. This is the first compilation stage only: the Mosaic passes and the Triton compiler run
on the device (libtpu, the CUDA plugin), so a kernel that lowers here can still fail there;
``benchmarks/device_check.sh`` runs the kernels on a device.

Shapes are small but of the class the targets accept: Triton needs power-of-two block
dimensions and dot operands of at least 16 in each dimension.
"""

import functools

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractDevice, AbstractMesh, use_abstract_mesh

from jaxdiv.models.kernels import linear_attention as la_kernels
from jaxdiv.models.kernels import selective_scan as ss_kernels
from jaxdiv.models.kernels import ssd as ssd_kernels

# Mosaic reads the TPU generation from the device; on a CPU host an abstract device names it.
TPU_V5E = AbstractDevice(device_kind="TPU v5 lite", num_cores=1, platform="tpu")
# each target's custom call holding a kernel, and a mark of our compiler parameters in it
KERNEL_CALL = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton"}

B, L, H, K, V, N, D = 1, 64, 2, 16, 16, 16, 64


def _lower(fn, args, platform: str) -> str:
    """The StableHLO text of ``jit(fn)`` lowered for ``platform`` ("tpu" or "cuda")."""
    lower = lambda: jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()
    if platform == "tpu":
        with use_abstract_mesh(AbstractMesh((1,), ("x",), abstract_device=TPU_V5E)):
            return lower()
    return lower()


def _f32(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _with_grads(fn, n_args):
    """(outputs, gradients w.r.t. every argument) of a scalar of all of ``fn``'s outputs."""

    def loss(*args):
        return sum(jnp.sum(jnp.sin(o.astype(jnp.float32))) for o in fn(*args))

    return lambda *args: (fn(*args), jax.grad(loss, tuple(range(n_args)))(*args))


def _selective_scan(platform, *args):
    # block_d: each target's default, all of D ≤ 128 on TPU ((8, 128) tiles), 32 on GPU
    block_d = D if platform == "tpu" else 32
    return ss_kernels.scan_state_major(*args, block_d=block_d, block_t=8, interpret=False)


def _linear_attention(decay, platform, q, k, v, g):
    g = None if decay == "none" else g
    return la_kernels.linear_attention(q, k, v, log_decay=g, chunk_size=16, interpret=False)


def _ssd(platform, *args):
    return ssd_kernels.ssd(*args, chunk_size=16, interpret=False)


CASES = {
    "selective_scan": (
        _selective_scan,
        (_f32(B, N, D), _f32(B, L, D), _f32(N, D), _f32(B, L, D), _f32(B, L, N), _f32(B, L, N)),
    ),
    **{
        f"linear_attention[{decay}]": (
            functools.partial(_linear_attention, decay),
            (
                _f32(B, L, H, K),
                _f32(B, L, H, K),
                _f32(B, L, H, V),
                _f32(B, L, H) if decay == "head" else _f32(B, L, H, K),
            ),
        )
        for decay in ("none", "head", "channel")
    },
    # a group per head (r = 1): each program reads its 2 heads' 2 groups
    "ssd[group per head]": (
        _ssd,
        (_f32(B, L, 4, 64), _f32(B, L, 4), _f32(4), _f32(B, L, 4, N), _f32(B, L, 4, N)),
    ),
    # 4 heads of 64 in 2 groups of B, C: 2 heads a program (128 lanes), grouped index maps;
    # x in bfloat16 (read and written as is)
    "ssd": (
        _ssd,
        (
            jax.ShapeDtypeStruct((B, L, 4, 64), jnp.bfloat16),
            _f32(B, L, 4),
            _f32(4),
            _f32(B, L, 2, N),
            _f32(B, L, 2, N),
        ),
    ),
}


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_lowers_forward_and_backward(case, platform):
    fn, args = CASES[case]
    text = _lower(_with_grads(functools.partial(fn, platform), len(args)), args, platform)
    # three kernels, each a custom call: the forward, the custom VJP's forward (which saves
    # the chunk states) and the backward
    assert text.count(KERNEL_CALL[platform]) == 3, text.count(KERNEL_CALL[platform])
    if platform == "cuda":  # our Triton parameters, chosen for the lowering platform
        assert text.count("num_stages = 1 : i32, num_warps = 4 : i32") == 3


def test_cpu_without_interpret_mode_is_refused():
    q = jnp.zeros((B, L, H, K))
    with pytest.raises(ValueError, match="Only interpret mode is supported on CPU"):
        jax.jit(lambda q: la_kernels.linear_attention(q, q, q, interpret=False)).lower(q)
