"""Mesh axis names, logical-axis rules, activation constraints, sequence-sharding helpers.

The one home of the mesh axis names (``jaxdiv.train`` builds its meshes with
:data:`MESH_AXES`) and of the logical-axis rules: parameters carry logical axis names
(``common.logical_param``) that :data:`DEFAULT_RULES` maps to mesh axes (used by the trainer's
state shardings and by ``load_pretrained``); activations are pinned at block boundaries by
:func:`constrain` with :data:`ACTIVATION_RULES`, so XLA never guesses a layout that moves
whole activations between devices. A logical dim whose size the mesh axes do not divide is
replicated instead (small models on big meshes stay valid): the rules are a preference, never
an error. The sequence-parallel forms (``attention/parallel.py``, ``ssm/parallel.py``) place
the batch over :data:`BATCH_AXES`.
"""

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "sequence", "tensor")
"""Every mesh axis, outermost first: data parallel, FSDP, sequence parallel, tensor parallel."""

BATCH_AXES = ("data", "fsdp")
"""The mesh axes the batch is split over."""

Rules = Mapping[str, str | tuple[str, ...] | None]

DEFAULT_RULES: Rules = {
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "vocab": "tensor",
    "kv": None,
    "state": None,
}
"""Parameter logical axis -> mesh axis (or axes; None: replicated)."""

ACTIVATION_RULES: Rules = {
    "batch": BATCH_AXES,
    "length": "sequence",
    "embed": None,  # the residual stream is whole on every device of a batch shard
    "vocab": "tensor",
}
"""Activation logical axis -> mesh axis (or axes; None: replicated)."""


def logical_to_spec(
    logical_axes: Sequence[str | None], shape: Sequence[int], mesh, rules: Rules | None = None
) -> PartitionSpec:
    """The PartitionSpec of a value of ``shape`` annotated with ``logical_axes`` on ``mesh``
    (``rules`` default :data:`DEFAULT_RULES`): each dim takes its rule's mesh axes that have
    size > 1, are not used by an earlier dim and divide it; otherwise it is replicated."""
    rules = DEFAULT_RULES if rules is None else rules
    spec, used = [], set()
    for name, size in zip(logical_axes, shape, strict=True):
        target = rules.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if mesh.shape.get(a, 1) > 1 and a not in used)
        if axes and size % math.prod(mesh.shape[a] for a in axes) == 0:
            spec.append(axes[0] if len(axes) == 1 else axes)
            used.update(axes)
        else:
            spec.append(None)
    return PartitionSpec(*spec)


def param_sharding(variable, mesh, rules: Rules | None = None) -> NamedSharding:
    """The NamedSharding of an ``nnx.Variable`` from its ``logical_axes`` metadata on ``mesh``
    (replicated when it has none)."""
    axes = variable.get_metadata().get("logical_axes")
    shape = variable.get_value().shape
    if axes is None:
        return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """``x`` pinned to the layout of its activation ``logical_axes`` (:data:`ACTIVATION_RULES`)
    on the mesh in context (``jax.set_mesh``); unchanged without a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_spec(logical_axes, x.shape, mesh, ACTIVATION_RULES)
    return jax.lax.with_sharding_constraint(x, spec)


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


def jit_shard_map(body, *, mesh, in_specs, out_specs):
    """``jax.shard_map`` under ``jax.jit``: inside a traced program the two are one, and an eager
    call compiles the per-shard body once instead of dispatching it op by op (a local scan of
    L/W steps, eagerly, costs minutes on CPU)."""
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs))


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
