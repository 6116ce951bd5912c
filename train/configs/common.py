"""Defaults every preset starts from (API.md §4: the keys every preset has)."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    # Not type-locked: e.g. `model.mixer` may be one name or a tuple of per-layer names.
    c = ml_collections.ConfigDict(type_safe=False)
    c.seed = 0
    c.steps = 200  # optimizer steps
    c.batch_size = 16
    c.log_every = 20
    c.eval_every = 100  # 0: only at the end
    c.eval_batches = 4
    c.checkpoint_every = 100
    c.keep_checkpoints = 3
    c.progress = True  # tqdm bar on process 0
    # Device mesh: one axis may be -1 (= the remaining devices).
    c.mesh = {"data": -1, "fsdp": 1, "sequence": 1, "tensor": 1}
    c.task = {"name": "pydoc_bytes", "kwargs": {"seq_len": 128}}
    # The model's own LMConfig fields (vocab_size comes from the task).
    c.model = {
        "d_model": 64,
        "n_layers": 2,
        "mixer": "mamba",
        "num_heads": None,
        "mlp_ratio": 4.0,
        # Mixed precision: parameters (and optimizer state) float32; compute "auto" = bfloat16
        # on GPU/TPU, float32 on CPU. Scans, softmaxes and losses accumulate in float32.
        "dtype": "auto",
        "param_dtype": "float32",
        # Rematerialisation per layer: "none", "block", "mixer_only" or a
        # jax.checkpoint_policies name (jaxdiv.models.lm.REMAT_POLICIES).
        "remat": "none",
        # Softmax attention layers: "auto" = dense on CPU, cuDNN or blockwise (flash) on GPU,
        # blockwise on TPU; "blockwise" never holds an [L, L] array (softmax_attention).
        "attention_implementation": "auto",
    }
    c.optimizer = {
        "name": "adamw",
        "lr": 3e-3,
        "warmup_steps": 20,
        "min_lr_ratio": 0.1,
        "weight_decay": 0.1,
        "b1": 0.9,
        "b2": 0.98,
        "grad_clip": 1.0,
        "grad_accum_steps": 1,  # micro-batches per optimizer step
    }
    return c


def distill_config(base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds the distillation keys (API.md §4) to ``base``."""
    base.distill = {
        "teacher": None,  # a jaxdiv workdir or a Hugging Face model directory
        "teacher_workdir": "./runs/pretrain_lm",  # alias of `teacher`, used when it is None
        "teacher_dtype": "bfloat16",  # a Hugging Face teacher's dtype (frozen)
        "init_from_teacher": False,  # start the student from the teacher where shapes match
        "divergence": "forward_kl",  # a jaxdiv registry name
        "kwargs": {},  # its keyword arguments, e.g. {"beta": 0.5}
        "weight": 1.0,
        "task_weight": 0.5,  # cross-entropy on the data
        "sinkhorn_weight": 0.0,  # optional SinKD term on subsampled token rows
        "sinkhorn_rows": 64,
        "temperature": 1.0,
        "temperature_end": None,  # linear temperature schedule when set
        "feature_weight": 0.0,  # MSE between named hidden states (equal widths only)
        "feature_layers": ("final_norm",),  # names from model(..., return_intermediates=True)
        "online": False,  # teacher trained alongside (BD-KD style)
        "teacher_weight": 1.0,  # online teacher's reverse-KL regulariser weight
    }
    return base
