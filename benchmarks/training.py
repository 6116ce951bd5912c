"""Training throughput and MFU: each training preset's step, and every mixer in a small LM.

1. Presets on embedded data (``embedded_presets``: all but ``distill_hf``, which needs your
   teacher and text; every one trains a ``LanguageModel`` or a
   ``SequenceClassifier``) at their default sizes. The train step is built as
   ``jaxdiv.train.trainer`` builds it (``jaxdiv.train.experiment.build``: the objective, the
   train step jitted with the state's shardings and donation, on the preset's mesh);
   a distillation preset's frozen teacher is the preset its teacher workdir names, at its
   initial parameters (the step's cost does not depend on their values). Tokens/s = B·L / the
   median step time after warm-up; MFU = FLOPs per token (``jaxdiv.train.flops``, analytic:
   6 per weight, attention's scores, the teacher's forward) × tokens/s / the float32 matmul
   peak measured at 1024³ (``peak_flops``). Target: MFU ≥ 30%. What bounds it is measured:
   every ``dot_general`` of the step's jaxpr (forward, backward, optimizer; those in scans
   times their trip counts) is timed alone at its shapes, giving the time the step's matmuls
   need at these sizes and their throughput against the 1024³ peak; XLA's cost analysis of
   the compiled step gives its flops and bytes (arithmetic intensity).
2. Per-mixer LM throughput: 2-layer ``LanguageModel(vocab 256, d_model 128, mixer=m)`` for
   every ``m`` in ``MIXERS``, the jitted gradient of the mean next-token cross-entropy in all
   parameters, B=4, L = 1k (quick, 2 repeats) or {1k, 4k, 16k} (5 repeats): tokens/s, the
   ratio to Mamba at the same L, and the compiled step's peak memory (runs needing more than
   6 GiB are compiled but not run).
"""

# B batch, L length, V vocab

import collections
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import lax

from benchmarks import harness
from jaxdiv.models import MIXERS, LanguageModel, LMConfig
from jaxdiv.models.ssm.selective_scan import selective_scan
from jaxdiv.train import config as train_config
from jaxdiv.train import sharding as shard_lib
from jaxdiv.train.experiment import Trained, build, model_config, teacher_path
from jaxdiv.train.flops import peak_flops
from jaxdiv.train.objective import Objective, config_to_dict

MFU_TARGET = 0.30
LM_BATCH, LM_VOCAB, LM_WIDTH, LM_LAYERS = 4, 256, 128, 2
MAX_BYTES = 6 * 2**30


# --------------------------------------------------------------------------------------------
# 1. Presets


def embedded_presets() -> list[str]:
    """The presets that run on embedded data, teachers first (a distillation preset reuses its
    teacher's init); ``distill_hf`` needs the user's teacher directory and text, so it is not
    benchmarked."""
    names = [
        n
        for n in train_config.preset_names()
        if train_config.get_config(n).task.get("name") != "text"
    ]
    return sorted(names, key=lambda n: _teacher_preset(train_config.get_config(n)) is not None)


def _teacher_preset(config) -> str | None:
    """The preset a distillation config's teacher workdir is named after (None: no teacher)."""
    path = teacher_path(config)
    if path is None or not Objective.from_config(config, "lm").needs_teacher:
        return None
    name = Path(path).name
    return name if name in train_config.preset_names() else None


def _preset_step(name: str, teachers: dict) -> dict:
    """Preset ``name``'s experiment (``jaxdiv.train.experiment.build``, no workdir) with a
    state and a batch; ``teachers`` maps each preset built so far to its initial model, used
    as the frozen teacher of the distillation presets that name it."""
    config = train_config.get_config(name)
    mesh = shard_lib.make_mesh(config_to_dict(config.mesh))
    teacher = _teacher_preset(config)
    with jax.set_mesh(mesh):
        exp = build(config, mesh=mesh, teacher=teachers.get(teacher))
        state = exp.init_state()
        task = exp.task
        teachers[name] = Trained(  # fresh buffers: ``state`` is donated to the timed steps
            exp.spec.graphdef,
            exp.init_state()["params"],
            config,
            model_config(config, task.vocab_size),
        )
        batch = exp.global_batch(next(task.batches("train", batch_size=config.batch_size)))
        dots = _step_dots(exp.step_fn, state, batch, exp.teacher_params)
    return {
        "compiled": exp.train_step,
        "graphdef": exp.spec.graphdef,
        "tx": exp.spec.tx,
        "lead": (config.batch_size, task.seq_len),
        "state": state,
        "batch": batch,
        "teacher_params": exp.teacher_params,
        "dots": dots,
        "tokens": exp.tokens_per_step,
        "flops": exp.flops_per_token,
        "row": {
            "model": _describe(teachers[name].lm_config, task.kind),
            "B×L": f"{config.batch_size}×{task.seq_len}",
            "teacher": teacher,
        },
    }


def _describe(lm: LMConfig, kind: str) -> str:
    mixers = "+".join(dict.fromkeys(lm.mixers))
    head = "classifier" if kind == "classification" else "LM"
    return f"{head} {lm.n_layers}×{mixers}, d {lm.d_model}, V {lm.vocab_size}"


def _dot_key(eqn):
    lhs, rhs = (v.aval for v in eqn.invars)
    return (
        (lhs.shape, str(lhs.dtype)),
        (rhs.shape, str(rhs.dtype)),
        eqn.params["dimension_numbers"],
        eqn.params.get("preferred_element_type"),
    )


def _dot_flops(key) -> int:
    (lhs, _), (rhs, _), ((lc, rc), (lb, _)), _ = key
    contracted = math.prod(lhs[i] for i in lc)
    batch = math.prod(lhs[i] for i in lb)
    free_lhs = math.prod(lhs) // (contracted * batch)
    free_rhs = math.prod(rhs) // (contracted * batch)
    return 2 * batch * free_lhs * free_rhs * contracted


def _step_dots(step, *args) -> collections.Counter:
    """{dot_general signature: times it runs} in one call of ``step(*args)``."""
    jaxpr = jax.make_jaxpr(step)(*args).jaxpr
    counts = collections.Counter()
    for eqn, times in harness.jaxpr_eqns(jaxpr):
        if eqn.primitive.name == "dot_general":
            counts[_dot_key(eqn)] += times
    return counts


def _parts(built: dict, params, repeats: int) -> tuple[dict[str, float], float | None]:
    """Seconds of parts of the step alone: ({each distinct layer's mixer and MLP forward+
    backward times the layers that have it, the optimizer update}, the Mamba layers'
    selective scans within their mixer time, or None without Mamba)."""
    model = nnx.merge(built["graphdef"], params)
    x = _normal((*built["lead"], model.backbone.config.d_model))  # [B, L, D]
    modules = collections.defaultdict(list)  # part name -> its modules in the layers
    for layer in model.backbone.layers:
        modules[layer.mixer_name].append(layer.mixer)
        if layer.mlp is not None:
            modules[f"{layer.mixer_name} MLP"].append(layer.mlp)
    parts = {}
    for name, found in modules.items():
        graphdef, module_params = nnx.split(found[0])

        def fwd_bwd(p, x, graphdef=graphdef):
            y, pullback = jax.vjp(lambda p, x: nnx.merge(graphdef, p)(x), p, x)
            return y, pullback(y)

        timing = harness.time_jax(fwd_bwd, module_params, x, repeats=repeats).timing
        parts[f"{len(found)}× {name}"] = len(found) * timing.median
    scans = None
    if "mamba" in modules:
        mamba = modules["mamba"][0]
        timing = _scan_fwd_bwd(
            built["lead"], mamba.d_inner, mamba.d_state, mamba.scan_method, repeats
        )
        scans = len(modules["mamba"]) * timing.median
    tx = built["tx"]

    def update(grads, opt_state, params):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    timing = harness.time_jax(update, params, tx.init(params), params, repeats=repeats).timing
    parts["optimizer"] = timing.median
    return parts, scans


def _normal(shape) -> jax.Array:
    """Standard normal float32 from NumPy (no compilation per shape)."""
    return jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)


def _scan_fwd_bwd(lead, channels: int, state: int, method: str, repeats: int):
    """Timing of Mamba's selective scan as its block calls it (with D and z), forward and
    backward (vjp with the output as cotangent), at [*lead, channels] with ``state``."""
    u, z = _normal((*lead, channels)), _normal((*lead, channels))  # [B, L, E]
    delta = jax.nn.softplus(_normal((*lead, channels)))  # [B, L, E], Δ > 0 as the block's
    A = -jnp.exp(_normal((channels, state)))  # [E, N]
    B, C = _normal((*lead, state)), _normal((*lead, state))  # [B, L, N]
    D = _normal((channels,))  # [E]

    def fwd_bwd(*args):
        y, pullback = jax.vjp(lambda *a: selective_scan(*a, method=method), *args)
        return y, pullback(y)

    return harness.time_jax(fwd_bwd, u, delta, A, B, C, D, z, repeats=repeats).timing


def _mfu_reason(step_s, dots, matmul_s, matmul_flops, parts, scans, peak) -> str:
    """Why a preset's MFU is low: where its step's time goes, measured part by part."""
    layers = {k: v for k, v in parts.items() if k != "optimizer"}
    layers_s = sum(layers.values())
    listed = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in layers.items())
    verdict = (
        "so the matmuls are not what bounds it"
        if matmul_s < step_s / 2
        else "so these small matmuls' throughput bounds it"
    )
    return (
        f"the step takes {step_s * 1e3:.0f} ms; its {sum(dots.values())} matmuls "
        f"({matmul_flops / 1e9:.2f} GFLOP) take {matmul_s * 1e3:.0f} ms timed alone at their "
        f"shapes ({matmul_s / step_s:.0%} of the step) and run at "
        f"{matmul_flops / matmul_s / peak:.0%} of the 1024³ peak, {verdict}; "
        f"the layers' mixers and MLPs, forward+backward alone at the step's "
        f"shapes, take {layers_s * 1e3:.0f} ms ({layers_s / step_s:.0%} of the step: {listed}; "
        f"projections included)"
        + (
            ""
            if scans is None
            else f", of which the Mamba layers' selective scans {scans * 1e3:.0f} ms "
            f"({scans / step_s:.0%} of the step)"
        )
        + f"; the optimizer update takes {parts['optimizer'] * 1e3:.1f} ms"
    )


def _time_dot(key, repeats: int) -> float:
    """Median seconds of this dot_general alone (jitted, random float inputs)."""
    (lhs, lhs_dtype), (rhs, rhs_dtype), dims, preferred = key
    a, b = _normal(lhs).astype(lhs_dtype), _normal(rhs).astype(rhs_dtype)
    run = harness.time_jax(
        lambda a, b: lax.dot_general(a, b, dims, preferred_element_type=preferred),
        a,
        b,
        repeats=repeats,
    )
    return run.timing.median


def _presets(section: harness.Section, quick: bool) -> None:
    steps, warmup = (3, 1) if quick else (10, 2)
    dot_repeats = 3 if quick else 10
    peak = peak_flops()
    table = section.table(
        "Training presets at their default sizes: step time, tokens/s, MFU",
        [
            "preset",
            "model",
            "B×L",
            "teacher",
            "step",
            "tokens/s",
            "MFLOP/token",
            "MFU",
            "build+compile s",
            "peak MiB",
        ],
    )
    bounds = section.table(
        "What bounds each preset's step: its matmuls timed alone at their shapes, XLA's counts",
        [
            "preset",
            "step ms",
            "matmuls",
            "matmul GFLOP",
            "analytic GFLOP",
            "matmuls alone ms",
            "matmul share of step",
            "matmul GFLOP/s",
            "matmul of 1024³ peak",
            "XLA GFLOP",
            "XLA MiB accessed",
            "XLA flop/byte",
            "MFU if only matmuls",
            "layers fwd+bwd alone ms",
            "layers share of step",
            "optimizer alone ms",
            "Mamba scans fwd+bwd alone ms",
        ],
    )
    teachers, dot_times = {}, {}
    for name in embedded_presets():
        start = time.perf_counter()
        built = _preset_step(name, teachers)
        compile_s = time.perf_counter() - start
        compiled, batch, teacher_params = built["compiled"], built["batch"], built["teacher_params"]
        box = {"state": built["state"]}

        def call(compiled=compiled, batch=batch, teacher_params=teacher_params, box=box):
            box["state"], metrics = compiled(box["state"], batch, teacher_params)
            jax.block_until_ready((box["state"], metrics))

        timing = harness.time_call(call, repeats=steps, warmup=warmup)
        parts, scans = _parts(built, box["state"]["params"], dot_repeats)
        layers = {k: v for k, v in parts.items() if k != "optimizer"}
        tokens, flops, dots = built["tokens"], built["flops"], built["dots"]
        rate = tokens / timing.median
        mfu = flops * rate / peak
        table.add(
            preset=name,
            **built["row"],
            step=timing,
            **{"tokens/s": rate, "MFLOP/token": flops / 1e6, "MFU": mfu},
            **{"build+compile s": compile_s},
            **{"peak MiB": harness.mib(harness.peak_bytes(compiled))},
        )
        for key in dots:
            if key not in dot_times:
                dot_times[key] = _time_dot(key, dot_repeats)
        matmul_s = sum(n * dot_times[k] for k, n in dots.items())
        matmul_flops = sum(n * _dot_flops(k) for k, n in dots.items())
        cost = compiled.cost_analysis() or {}
        xla_flops, xla_bytes = cost.get("flops"), cost.get("bytes accessed")
        share = matmul_s / timing.median
        bounds.add(
            preset=name,
            **{"step ms": timing.median * 1e3, "matmuls": sum(dots.values())},
            **{"matmul GFLOP": matmul_flops / 1e9, "analytic GFLOP": flops * tokens / 1e9},
            **{"matmuls alone ms": matmul_s * 1e3, "matmul share of step": share},
            **{"matmul GFLOP/s": matmul_flops / matmul_s / 1e9},
            **{"matmul of 1024³ peak": matmul_flops / matmul_s / peak},
            **{"XLA GFLOP": None if xla_flops is None else xla_flops / 1e9},
            **{"XLA MiB accessed": harness.mib(xla_bytes)},
            **{"XLA flop/byte": xla_flops / xla_bytes if xla_flops and xla_bytes else None},
            **{"MFU if only matmuls": flops * tokens / matmul_s / peak},
            **{
                "layers fwd+bwd alone ms": ", ".join(
                    f"{k} {v * 1e3:.0f}" for k, v in layers.items()
                )
            },
            **{"layers share of step": sum(layers.values()) / timing.median},
            **{"optimizer alone ms": parts["optimizer"] * 1e3},
            **{"Mamba scans fwd+bwd alone ms": None if scans is None else scans * 1e3},
        )
        met = mfu >= MFU_TARGET
        section.target(
            f"{name} MFU",
            f"≥ {MFU_TARGET:.0%} of the 1024³ matmul peak",
            f"{mfu:.1%} ({rate:,.0f} tokens/s)",
            met,
            ""
            if met
            else _mfu_reason(timing.median, dots, matmul_s, matmul_flops, parts, scans, peak),
        )
    section.note(
        f"Matmul peak (float32, 1024³, best of 5): {peak / 1e9:.0f} GFLOP/s. Preset steps: "
        f"{warmup} warm-up then {steps} timed (the same batch; state carried, donated). "
        '"matmuls" counts the dot_generals the step runs (its jaxpr, scan bodies times '
        'their trip counts); "matmul GFLOP" are their flops and "matmuls alone" the sum '
        f'of each timed alone at its shapes (median of {dot_repeats}); "analytic GFLOP" is '
        "FLOPs per token × B·L as MFU counts them (as the trainer does; for the classifier "
        'that counts a tied V×d head instead of its d×C one). "layers": each distinct '
        "layer's mixer and MLP, forward+backward (vjp, output as cotangent) alone at the "
        'step\'s [B, L, D], times the layers that have it; "Mamba scans": `selective_scan` '
        "as the Mamba block calls it, at its [B, L, expand·d] and state size, likewise. Parts "
        "are timed alone, so their shares need not add up to 1. Peak MiB: compiled step, "
        "temporaries + "
        "arguments + outputs."
    )


# --------------------------------------------------------------------------------------------
# 2. Per-mixer LM throughput


def _lm_step(mixer: str, length: int):
    """(gradient of the mean next-token cross-entropy, its arguments) for one 2-layer LM."""
    config = LMConfig(vocab_size=LM_VOCAB, d_model=LM_WIDTH, n_layers=LM_LAYERS, mixer=mixer)
    graphdef, params, rest = nnx.split(LanguageModel(config, rngs=nnx.Rngs(0)), nnx.Param, ...)
    tokens = jax.random.randint(jax.random.key(1), (LM_BATCH, length + 1), 0, LM_VOCAB)

    def loss(params, tokens):
        logits = nnx.merge(graphdef, params, rest)(tokens[:, :-1])  # [B, L, V]
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    return jax.grad(loss), (params, tokens)


def _mixers(section: harness.Section, quick: bool) -> None:
    lengths = (1024,) if quick else (1024, 4096, 16384)
    repeats = 2 if quick else 5
    table = section.table(
        f"{LM_LAYERS}-layer LMs (d_model {LM_WIDTH}, vocab {LM_VOCAB}), training gradient "
        f"step, B={LM_BATCH}: tokens/s per mixer",
        ["mixer", "L", "step", "tokens/s", "vs mamba", "peak MiB", "compile s"],
    )
    plot = section.plot("lm_throughput", "LM training throughput", "L", "tokens/s")
    rates = {}
    for length in lengths:
        for mixer in sorted(MIXERS, key=lambda m: m != "mamba"):  # mamba first: the baseline
            fn, args = _lm_step(mixer, length)
            start = time.perf_counter()
            compiled = harness.compile_jax(fn, *args)
            compile_s = time.perf_counter() - start
            peak = harness.peak_bytes(compiled)
            row = {"mixer": mixer, "L": length, "peak MiB": harness.mib(peak)}
            if peak > MAX_BYTES:
                table.add(**row, step=f"not run: needs {peak / 2**30:.1f} GiB")
                continue
            timing = harness.time_call(
                lambda c=compiled, a=args: jax.block_until_ready(c(*a)), repeats=repeats
            )
            rate = rates[mixer, length] = LM_BATCH * length / timing.median
            baseline = rates.get(("mamba", length))
            table.add(
                **row,
                step=timing,
                **{"tokens/s": rate, "vs mamba": rate / baseline if baseline else None},
                **{"compile s": compile_s},
            )
            plot.point(mixer, length, rate)
    if len(lengths) > 1:
        scaling = section.table(
            f"tokens/s at L relative to L={lengths[0]} (1 = linear time)",
            ["mixer"] + [f"L={n}" for n in lengths],
        )
        for mixer in sorted(MIXERS):
            base = rates.get((mixer, lengths[0]))
            scaling.add(
                mixer=mixer,
                **{
                    f"L={n}": rates[mixer, n] / base if base and (mixer, n) in rates else None
                    for n in lengths
                },
            )


def run(quick: bool) -> harness.Section:
    section = harness.Section(
        "training",
        "Training throughput and MFU",
        "**Presets**: every training preset (`python -m jaxdiv.train --config NAME`) at its "
        "default size, its train step built and jitted as the trainer does (state shardings, "
        "donation; a distillation preset with its teacher preset's model frozen), timed after "
        "warm-up; tokens/s = B·L / step time and MFU = analytic FLOPs per token × tokens/s / "
        "the float32 matmul peak measured at 1024³ on this machine (`jaxdiv.train.flops`). "
        "To see what bounds each step, every matmul (dot_general) the step runs is timed "
        "alone at its shapes and XLA's cost analysis of the compiled step gives its flops and "
        "bytes. **Mixers**: a 2-layer LM (d_model 128, vocab 256) per mixer, the jitted "
        f"gradient of the mean next-token cross-entropy, B={LM_BATCH}, L = "
        f"{'1k' if quick else '1k, 4k, 16k'}, tokens/s and peak memory, ratio to Mamba at the "
        "same L. Times are medians [min–max] of repeated calls after warm-up.",
    )
    _presets(section, quick)
    _mixers(section, quick)
    return section
