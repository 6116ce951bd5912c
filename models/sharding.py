"""Mesh axis names and the helpers every sequence-parallel form shares.

The one home of the mesh axis names: ``jaxdiv.train`` builds its meshes with
:data:`MESH_AXES`, and the sequence-parallel forms (``attention/parallel.py``,
``ssm/parallel.py``) place the batch over :data:`BATCH_AXES`.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax

MESH_AXES = ("data", "fsdp", "sequence", "tensor")
"""Every mesh axis, outermost first: data parallel, FSDP, sequence parallel, tensor parallel."""

BATCH_AXES = ("data", "fsdp")
"""The mesh axes the batch is split over."""


def sequence_mesh(axis_name: str | None):
    """The mesh in context (``jax.set_mesh``) when it shards ``axis_name`` over > 1 devices.

    Mixer blocks built with ``sequence_axis=axis_name`` call this at trace time and switch to
    their sequence-parallel form when it returns a mesh; otherwise (no mesh, or the axis has
    size 1, e.g. decoding on one device) they run the single-device op.
    """
    if axis_name is None:
        return None
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or axis_name not in mesh.axis_names or mesh.shape[axis_name] == 1:
        return None
    return mesh


def shard_layout(mesh, axis_name: str, length: int, batch: int, inner: int | None):
    """(batch axes, inner axis) for PartitionSpecs, after checking the sizes divide.

    ``inner`` is the size of the heads / channels axis sharded over ``"tensor"`` (None: never).
    """
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"expected `axis_name` in the mesh axes {mesh.axis_names}, got {axis_name!r}."
        )
    shards = mesh.shape[axis_name]
    if length % shards:
        raise ValueError(
            f"expected the sequence length to be divisible by the {shards} shards of "
            f"{axis_name!r}, got L = {length}."
        )
    batch_axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names and a != axis_name)
    n_batch = math.prod(mesh.shape[a] for a in batch_axes)
    if batch % n_batch:
        raise ValueError(
            f"expected the batch size to be divisible by {n_batch} (mesh axes {batch_axes}), "
            f"got B = {batch}."
        )
    tensor = None
    if inner is not None and "tensor" in mesh.axis_names and mesh.shape["tensor"] > 1:
        if inner % mesh.shape["tensor"]:
            raise ValueError(
                f"expected the heads/channels ({inner}) to be divisible by the "
                f"{mesh.shape['tensor']} shards of 'tensor', got {inner}."
            )
        tensor = "tensor"
    return (batch_axes or None), tensor


def exclusive_prefix(stack: jax.Array, index) -> jax.Array:
    """``stack[index − 1]`` (zeros for index 0): an inclusive prefix made exclusive."""
    shifted = jnp.concatenate([jnp.zeros_like(stack[:1]), stack[:-1]], axis=0)
    return lax.dynamic_index_in_dim(shifted, index, axis=0, keepdims=False)
