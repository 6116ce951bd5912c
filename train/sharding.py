"""Device mesh (data, fsdp, sequence, tensor) and logical-axis → mesh-axis shardings.

Parameters carry logical axis names (``models/common.py``); ``DEFAULT_RULES`` and
``logical_to_spec`` (from :mod:`jaxdiv.models.sharding`, their one home) map them to mesh
axes. A logical dim whose size the mesh axes do not divide is replicated instead (small
models on big meshes stay valid), so the rules are a preference, never an error.
"""

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxdiv.models.sharding import BATCH_AXES, MESH_AXES, param_sharding


# Logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves the sizes of (data, fsdp, sequence, tensor), one of which may be -1."""
    unknown = sorted(set(mesh_config) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"config.mesh has unknown axes {unknown}; expected {list(MESH_AXES)}.")
    sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh may have at most one -1 axis, got {dict(mesh_config)}.")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(
            f"config.mesh sizes must be positive (or one -1), got {dict(mesh_config)}."
        )
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(
                f"config.mesh {dict(mesh_config)}: the fixed axes ({known} devices) do not "
                f"divide the {num_devices} available devices."
            )
        sizes[sizes.index(-1)] = num_devices // known
    if num_devices % int(np.prod(sizes)):
        raise ValueError(
            f"config.mesh {dict(mesh_config)} uses {int(np.prod(sizes))} devices, which does "
            f"not divide the {num_devices} available (set one axis to -1 to take them all)."
        )
    return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices=None) -> Mesh:
    """A mesh with the four named axes (Auto axis types: GSPMD propagates shardings).

    A mesh smaller than the device count (a divisor of it) takes the first devices, e.g.
    ``{"data": 1}`` runs on one device of eight.
    """
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_config, len(devices))
    devices = devices[: int(np.prod(shape))]
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def state_shardings(state, mesh: Mesh, rules=None):
    """NamedShardings for an ``nnx.State`` of parameters, from their ``logical_axes`` names."""
    from flax import nnx

    return jax.tree.map(
        lambda v: v.replace(param_sharding(v, mesh, rules)),
        state,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def batch_sharding(mesh: Mesh, ndim: int, *, shard_sequence: bool) -> NamedSharding:
    """Batch over (data, fsdp); the sequence (dim 1) over ``sequence`` when asked."""
    spec = [BATCH_AXES] + [None] * (ndim - 1)
    if shard_sequence and ndim > 1:
        spec[1] = "sequence"
    return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
