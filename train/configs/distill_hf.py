"""Distill your own pretrained Hugging Face teacher into a Mamba student on your own text.

    jaxdiv-train --config distill_hf --workdir runs/distill_hf \\
        --config.distill.teacher=/path/to/SmolLM-135M \\
        --config.task.files='/path/to/texts/*.txt'

The teacher is any local ``llama`` / ``qwen2`` / ``mamba`` directory (``config.json``,
safetensors, ``tokenizer.json``), loaded frozen in bfloat16 and sharded like the student; the
student (24 Mamba layers of width 576, ~80M weights) shares its tokenizer and vocabulary and
starts from the teacher's embeddings and final norm (``distill.init_from_teacher``). Other
formats: ``--config.task.format=jsonl --config.task.field=text`` (or ``parquet``,
``hf_disk``); another student: ``--config.model.mixer=linear_attention`` (which also copies
the teacher's q/k/v/o projections), ``lightnet``, or a hybrid tuple.

Expected runtime, estimated from the FLOPs, not measured on an accelerator: with a
SmolLM-135M teacher, ``jaxdiv.train.flops`` counts 0.78 GFLOP per token (6 per student
weight, 2 per teacher weight, the teacher's attention), 25.6 PFLOP for the 2000 steps of
16×1024 tokens: about 1–2 minutes on one H100 (989 TFLOP/s bf16) and 5–11 minutes on one
TPU v5e chip (197 TFLOP/s) at 40–20% MFU. On 2 CPU cores only the smoke size is practical
(``JAXDIV_SMOKE=1``-like overrides: ``--config.steps=4 --config.task.seq_len=32``).
Expected result: held-out cross-entropy falling below the same student trained on the data
alone (``--config.distill.weight=0 --config.distill.task_weight=1``); the README's "Distill
your own model" section has the recipe.
"""

from jaxdiv.train.configs.common import base_config, distill_config


def get_config():
    c = distill_config(base_config())
    c.steps = 2000
    c.batch_size = 16
    c.eval_every = 500
    c.checkpoint_every = 250
    c.task = {
        "name": "text",
        "files": None,  # required: a path or glob of your text (see the docstring)
        "format": "text",
        "field": "text",
        "tokenizer": "teacher",  # the teacher directory's tokenizer.json
        "seq_len": 1024,
    }
    c.model.d_model = 576
    c.model.n_layers = 24
    c.model.mixer = "mamba"
    c.model.dtype = "auto"  # bfloat16 compute on GPU/TPU, float32 on CPU
    c.optimizer.lr = 1e-3
    c.distill.teacher = None  # required: a Hugging Face directory or a jaxdiv workdir
    c.distill.teacher_workdir = None
    c.distill.teacher_dtype = "bfloat16"
    c.distill.init_from_teacher = True
    c.distill.divergence = "forward_kl"
    c.distill.weight = 1.0
    c.distill.task_weight = 0.5
    return c
