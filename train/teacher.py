"""Teachers: a jaxdiv workdir or a Hugging Face directory, and a student initialised from one.

``config.distill.teacher`` names either a jaxdiv run directory (its latest checkpoint; see
``experiment.restore_trained``) or a Hugging Face causal-LM directory (``config.json`` with a
``model_type`` + safetensors), loaded by :func:`jaxdiv.models.load_pretrained` straight onto
the run's mesh, in ``config.distill.teacher_dtype`` (bfloat16 by default). The teacher is
frozen: it is never in the optimizer state nor in the student's checkpoints.

``config.distill.init_from_teacher=True`` starts the student from the teacher wherever the
two agree (:func:`init_from_teacher`): parameters are matched by their path in the model,
student layer ``i`` reading teacher layer ``⌊i·T/S⌋`` (S student layers, T teacher layers,
evenly spread), and copied when the shapes are equal. Per mixer:

- embeddings, LM head, RMSNorms, gated MLPs: copied whenever the widths match;
- ``attention`` and ``linear_attention`` students: ``q_proj``, ``k_proj``, ``v_proj``,
  ``o_proj`` have the same names and layouts as the teacher's attention, so a linear-attention
  student starts with the teacher's projections (the softmax kernel becomes a linear one:
  q→q, k→k, v→v, o→o, as in Mamba-in-the-Llama's q→C, k→B, v→x, o→out);
- ``mamba2`` students of an attention teacher (Mamba-in-the-Llama, Wang et al. 2024,
  https://arxiv.org/abs/2408.15237, §3): the SSD recurrence is linear attention with C as the
  query, B as the key and x as the value, so the slices of ``in_proj`` that make x, B and C
  take the teacher's ``v_proj``, ``k_proj`` and ``q_proj`` kernels and ``out_proj`` takes
  ``o_proj``, each where its shape matches (x: ``expand·d_model`` = the teacher's value
  width; B: ``mamba2_ngroups · mamba2_state`` = its key width, e.g. groups = key-value heads
  and state = head width; C likewise from the queries, so with grouped-query teachers C keeps
  its initialisation); z, Δ, the convolution, A and D keep theirs;
- ``mamba``, ``s4``, ``s4d``, ``lightnet``: no mapping from attention is known for their
  mixers (Mamba's B and C are computed from the convolved x, not from the layer input), so
  they keep their initialisation; everything around them (embeddings, norms, MLPs) is copied.
"""

import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_collections
from flax import nnx

from jaxdiv.models import LMConfig, load_pretrained


class Trained(NamedTuple):
    """A trained model: graph, parameters, its run config (None for a Hugging Face directory)
    and its ``LMConfig``."""

    graphdef: Any
    params: Any
    config: ml_collections.ConfigDict | None
    lm_config: LMConfig


def is_hf_directory(path) -> bool:
    """Whether ``path`` is a Hugging Face model directory (``config.json`` with a
    ``model_type``) rather than a jaxdiv workdir."""
    config = Path(path) / "config.json"
    if not config.exists() or (Path(path) / "checkpoints").exists():
        return False
    return "model_type" in json.loads(config.read_text())


def load_hf_teacher(path, mesh, *, dtype: str = "bfloat16") -> Trained:
    """The Hugging Face model in ``path``, its parameters sharded over ``mesh``."""
    model = load_pretrained(path, dtype=dtype, mesh=mesh)
    graphdef, params = nnx.split(model)
    return Trained(graphdef, params, None, model.config)


def _layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Student layer i -> teacher layer ⌊i·T/S⌋ (layers spread evenly over the teacher)."""
    return {i: i * teacher_layers // student_layers for i in range(student_layers)}


def _mamba2_slices(student: LMConfig) -> dict[str, slice]:
    """The columns of a Mamba2Block's ``in_proj`` kernel that make x, B and C."""
    inner = student.expand * student.d_model
    groups = student.mamba2_ngroups * student.mamba2_state
    x = slice(inner, 2 * inner)
    return {
        "v_proj": x,
        "k_proj": slice(x.stop, x.stop + groups),
        "q_proj": slice(x.stop + groups, x.stop + 2 * groups),
    }


def _attention_into_mamba2(flat: dict, source: dict, i: int, j: int, student: LMConfig):
    """Mamba-in-the-Llama: teacher layer j's v/k/q/o projections into student layer i's
    Mamba-2 ``in_proj`` slices and ``out_proj`` where shapes match; returns the copied paths."""
    copied = []
    target = ("backbone", "layers", i, "mixer")
    in_proj = flat.get((*target, "in_proj", "kernel"))
    for name, columns in _mamba2_slices(student).items():
        found = source.get(("backbone", "layers", j, "mixer", name, "kernel"))
        if in_proj is None or found is None:
            continue
        kernel, value = in_proj.get_value(), found.get_value()
        if value.shape != kernel[:, columns].shape:
            continue
        kernel = kernel.at[:, columns].set(value.astype(kernel.dtype))
        in_proj = in_proj.replace(jax.device_put(kernel, in_proj.get_value().sharding))
        copied.append(".".join(map(str, (*target, "in_proj", "kernel", name))))
    if in_proj is not None:
        flat[(*target, "in_proj", "kernel")] = in_proj
    out_proj = flat.get((*target, "out_proj", "kernel"))
    found = source.get(("backbone", "layers", j, "mixer", "o_proj", "kernel"))
    if out_proj is not None and found is not None:
        value = out_proj.get_value()
        if found.get_value().shape == value.shape:
            new = found.get_value().astype(value.dtype)
            flat[(*target, "out_proj", "kernel")] = out_proj.replace(
                jax.device_put(new, value.sharding, may_alias=False)
            )
            copied.append(".".join(map(str, (*target, "out_proj", "kernel"))))
    return copied


def init_from_teacher(params, student: LMConfig, teacher: Trained) -> tuple[Any, list[str]]:
    """``(params, copied)``: the student's params with every tensor that matches the teacher's
    (same path, layer i ← layer ⌊i·T/S⌋, same shape) replaced by the teacher's, in the
    student's dtype and sharding; ``copied`` lists the student paths that were replaced."""
    layers = _layer_map(student.n_layers, teacher.lm_config.n_layers)
    source = {path: v for path, v in nnx.to_flat_state(teacher.params)}
    copied, flat = [], {}
    for path, variable in nnx.to_flat_state(params):
        key = path
        if len(path) > 2 and path[:2] == ("backbone", "layers"):
            key = (*path[:2], layers[int(path[2])], *path[3:])
        found = source.get(key)
        value = variable.get_value()
        if found is not None and found.get_value().shape == value.shape:
            new = found.get_value().astype(value.dtype)  # a copy: the student's state is
            # donated to each step, so it must never alias the frozen teacher's buffers
            variable = variable.replace(jax.device_put(new, value.sharding, may_alias=False))
            copied.append(".".join(map(str, path)))
        flat[path] = variable
    for i, j in layers.items():
        if student.mixers[i] == "mamba2" and teacher.lm_config.mixers[j] == "attention":
            copied += _attention_into_mamba2(flat, source, i, j, student)
    return nnx.from_flat_state(list(flat.items())), copied
