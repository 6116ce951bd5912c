"""Model-level benchmarks: the Mamba mixer against Hugging Face, and LM training throughput.

    python benchmarks/bench_models.py [--quick] [--repeats R] [--clock cpu] [--max-gb 6]
                                      [--skip-hf]

1. ``MambaBlock`` vs Hugging Face ``transformers`` ``MambaMixer`` on PyTorch CPU (its
   pure-PyTorch path: a Python loop over time steps; ``mamba_ssm`` / ``causal_conv1d`` /
   ``kernels`` / ``mambapy`` absent, ``use_mambapy`` and ``use_associative_scan`` off, checked
   before timing and by counting the loop's ``torch.matmul`` calls) with the same weights, at
   B=2, L=512, d_model=256, d_state=16, d_conv=4, expand=2. The HF weights (A_log and D
   perturbed so that they are not the default init) are copied into the block with
   ``load_torch_mamba``; the outputs must agree to 1e-4 (max abs) and the gradients of
   sum(output²) in the input and every parameter to 1e-3 relative to each one's largest entry
   before anything is timed. Times: forward (PyTorch under ``no_grad``) and forward+backward
   (``.backward()`` of sum(output²); JAX: ``jax.grad`` in the input and all parameters, jitted
   through ``nnx.split``), PyTorch with ``torch.set_num_threads(2)``.
   Target: ours ≥ 20× faster forward+backward.
2. 2-layer ``LanguageModel(LMConfig(vocab_size=256, d_model=128, n_layers=2, mixer=m))`` for
   every ``m`` in ``MIXERS``: training throughput (jitted gradient of the mean next-token
   cross-entropy in all parameters) at B=4 for L in {1k, 4k} (``--quick``) or {1k, 4k, 16k},
   tokens/s = B·L / step time, and peak memory of the compiled step (temp + arguments +
   outputs from ``memory_analysis``); runs needing more than ``--max-gb`` are compiled but not
   run (softmax attention's [L, L] scores at 16k). Ratios are against Mamba at the same L.

Times are medians of repeats after a warm-up call (wall clock, or process CPU time with
``--clock cpu``); with ``--quick`` the HF forward+backward (10 to 60 s a call, depending on
the machine's load) is the one timed call of the gradient check, and the LM steps get 2 repeats
(quick mode: 80 s on 2 idle cores, 3.5 minutes on busy ones; full mode: 9 minutes busy).
The PyTorch peer's times vary with the load far more than ours (many small ops on 2 threads).
The exit status is 1 only when outputs or gradients disagree; targets print MET / NOT MET.
"""

import argparse
import importlib.util
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxdiv.models import MIXERS, LanguageModel, LMConfig, MambaBlock, load_torch_mamba

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}

# Mamba vs Hugging Face
M_BATCH, M_LENGTH, M_WIDTH, M_STATE, M_CONV, M_EXPAND = 2, 512, 256, 16, 4, 2
OUT_ATOL, GRAD_RTOL, TARGET_SPEEDUP = 1e-4, 1e-3, 20.0

# Language models
LM_BATCH, LM_VOCAB, LM_WIDTH, LM_LAYERS = 4, 256, 128, 2


def median_time(call, repeats: int, clock, *, warmup: bool = True) -> float:
    """Median time of ``call()`` (which blocks until its result is ready)."""
    if warmup:
        call()
    times = []
    for _ in range(repeats):
        start = clock()
        call()
        times.append(clock() - start)
    return statistics.median(times)


def peak_bytes(compiled) -> int:
    stats = compiled.memory_analysis()
    return stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes


def table(columns, rows) -> None:
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |", flush=True)


def verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


# --------------------------------------------------------------------------------------------
# 1. Mamba mixer vs Hugging Face MambaMixer


def hf_slow_path_checks(modeling, mixer) -> list[tuple[str, bool]]:
    """Static evidence that ``MambaMixer`` runs its pure-PyTorch path on this machine."""
    checks = [
        (f"`{name}` not installed", importlib.util.find_spec(name) is None)
        for name in ("mamba_ssm", "causal_conv1d", "kernels", "mambapy")
    ]
    for name in ("mamba_inner_fn", "causal_conv1d_fn", "mamba_selective_scan"):
        fn = getattr(modeling, name)
        cells = (c.cell_contents for c in fn.__closure__)
        closure = dict(zip(fn.__code__.co_freevars, cells, strict=True))
        is_torch = closure.get("implementation") is getattr(fn, "__wrapped__", None)
        checks.append((f"`{name}` is the PyTorch fallback", is_torch))
    checks.append(("use_mambapy off", not mixer.use_mambapy))
    checks.append(("use_associative_scan off", not mixer.use_associative_scan))
    return checks


def count_matmuls(torch, fn) -> int:
    """Number of ``torch.matmul`` calls made by ``fn()`` (the slow scan does one per step)."""
    import torch.overrides

    class Counter(torch.overrides.TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.matmul:
                Counter.calls += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        fn()
    return Counter.calls


def max_rel_diff(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))


def bench_mamba_vs_hf(opts, clock) -> bool:
    """Prints the comparison; returns False on an output or gradient mismatch."""
    print("## 1. Mamba mixer vs Hugging Face `MambaMixer` (PyTorch CPU, pure-PyTorch path)\n")
    try:
        import torch
        import transformers
        from transformers.models.mamba import modeling_mamba
    except ImportError as err:
        print(f"not run: {err} (pip install torch transformers)\n")
        return True
    torch.set_num_threads(2)
    torch.manual_seed(0)
    config = transformers.MambaConfig(
        vocab_size=16,
        hidden_size=M_WIDTH,
        state_size=M_STATE,
        conv_kernel=M_CONV,
        expand=M_EXPAND,
        num_hidden_layers=1,
        use_bias=False,
        use_conv_bias=True,
        use_mambapy=False,
        use_associative_scan=False,
    )
    mixer = modeling_mamba.MambaMixer(config, layer_idx=0).float()
    with torch.no_grad():  # move A_log and D off their constant init so the test sees them
        mixer.A_log.add_(0.5 * torch.randn_like(mixer.A_log))
        mixer.D.add_(0.5 * torch.randn_like(mixer.D))
    state_dict = {k: v.detach().float().numpy() for k, v in mixer.state_dict().items()}

    def block_with(weights):  # HF's use_bias / use_conv_bias are MambaBlock's bias / conv_bias
        block = MambaBlock(
            M_WIDTH,
            d_state=M_STATE,
            d_conv=M_CONV,
            expand=M_EXPAND,
            dt_rank=mixer.time_step_rank,
            bias=config.use_bias,
            conv_bias=config.use_conv_bias,
            rngs=nnx.Rngs(0),
        )
        return load_torch_mamba(block, weights)

    graphdef, params = nnx.split(block_with(state_dict))

    x_np = np.random.default_rng(0).standard_normal((M_BATCH, M_LENGTH, M_WIDTH), np.float32)
    x_torch, x = torch.from_numpy(x_np), jnp.asarray(x_np)
    fwd = jax.jit(lambda params, x: nnx.merge(graphdef, params)(x))
    grad = jax.jit(
        jax.grad(lambda params, x: jnp.sum(nnx.merge(graphdef, params)(x) ** 2), argnums=(0, 1))
    )

    def torch_fwd():
        with torch.no_grad():
            return mixer(x_torch)

    def torch_fwd_bwd():
        mixer.zero_grad(set_to_none=True)
        xt = x_torch.clone().requires_grad_(True)
        (mixer(xt) ** 2).sum().backward()
        return xt.grad

    checks = hf_slow_path_checks(modeling_mamba, mixer)
    matmuls = count_matmuls(torch, torch_fwd)
    loop = f"{matmuls} `torch.matmul` calls per forward (the time loop: ≥ L = {M_LENGTH})"
    checks.append((loop, matmuls >= M_LENGTH))
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} torch threads; slow-path checks:"
    )
    for name, ok in checks:
        print(f"- {name}: {'yes' if ok else 'NO'}")
    slow_path = all(ok for _, ok in checks)

    # Correctness first: outputs, then gradients (the torch backward doubles as its warm-up).
    out_diff = float(np.max(np.abs(np.asarray(fwd(params, x)) - torch_fwd().numpy())))
    start = clock()
    x_grad_torch = torch_fwd_bwd().numpy()
    checked_s = clock() - start  # --quick: the one HF forward+backward sample
    torch_grads = {k: v.grad.detach().numpy() for k, v in mixer.named_parameters()}
    ref_params = dict(nnx.to_flat_state(nnx.state(block_with(torch_grads))))
    our_params, our_x = grad(params, x)
    grad_diffs = {"x": max_rel_diff(our_x, x_grad_torch)}
    for path, ours in nnx.to_flat_state(our_params):
        grad_diffs[".".join(map(str, path))] = max_rel_diff(ours[...], ref_params[path][...])
    worst = max(grad_diffs, key=grad_diffs.get)
    outputs_ok = out_diff <= OUT_ATOL
    grads_ok = grad_diffs[worst] <= GRAD_RTOL
    print(
        f"\nforward max |ours − HF| = {out_diff:.2e} (tolerance {OUT_ATOL:g}): "
        f"{'ok' if outputs_ok else 'MISMATCH'}"
    )
    print(
        f"gradients max |ours − HF| / max |HF| = {grad_diffs[worst]:.2e} at `{worst}` "
        f"(tolerance {GRAD_RTOL:g}, over x and {len(grad_diffs) - 1} parameters): "
        f"{'ok' if grads_ok else 'MISMATCH'}\n"
    )
    if not (outputs_ok and grads_ok):
        return False

    jax_repeats = opts.repeats or (5 if opts.quick else 10)
    block_ready = jax.block_until_ready
    rows, speedups = [], {}
    passes = (  # PyTorch was warmed up by the checks above (no compilation to wait for)
        ("forward", lambda: block_ready(fwd(params, x)), torch_fwd, 3),
        ("forward+backward", lambda: block_ready(grad(params, x)), torch_fwd_bwd, 3),
    )
    for name, ours, theirs, torch_repeats in passes:
        t_ours = median_time(ours, jax_repeats, clock)
        if opts.quick and name == "forward+backward":  # ~1 min per call: reuse the checked one
            t_theirs, torch_repeats = checked_s, "1 (the checked call)"
        else:
            t_theirs = median_time(theirs, torch_repeats, clock, warmup=False)
        speedups[name] = t_theirs / t_ours
        rows.append(
            [
                name,
                f"{t_ours * 1e3:.1f}",
                f"{t_theirs * 1e3:.0f}",
                torch_repeats,
                f"{speedups[name]:.1f}×",
            ]
        )
    table(["pass", "ours ms", "HF ms", "HF repeats", "speed-up (HF / ours)"], rows)
    met = speedups["forward+backward"] >= TARGET_SPEEDUP and slow_path
    print(
        f"\nTarget: ours ≥ {TARGET_SPEEDUP:g}× faster forward+backward than the HF slow path: "
        f"{speedups['forward+backward']:.1f}× — {verdict(met)}"
        + ("" if slow_path else " (the HF slow path was not confirmed)")
        + "\n"
    )
    return True


# --------------------------------------------------------------------------------------------
# 2. Language models: training throughput


def lm_step(mixer: str, length: int):
    """(jitted gradient of the mean next-token cross-entropy, its arguments) for one LM."""
    config = LMConfig(vocab_size=LM_VOCAB, d_model=LM_WIDTH, n_layers=LM_LAYERS, mixer=mixer)
    graphdef, params, rest = nnx.split(LanguageModel(config, rngs=nnx.Rngs(0)), nnx.Param, ...)
    tokens = jax.random.randint(jax.random.key(1), (LM_BATCH, length + 1), 0, LM_VOCAB)

    def loss(params, tokens):
        logits = nnx.merge(graphdef, params, rest)(tokens[:, :-1])  # [B, L, V]
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    return jax.jit(jax.grad(loss)), (params, tokens)


def bench_language_models(opts, clock) -> None:
    lengths = (1024, 4096) if opts.quick else (1024, 4096, 16384)
    repeats = opts.repeats or (2 if opts.quick else 5)
    print(
        f"## 2. {LM_LAYERS}-layer LMs (d_model {LM_WIDTH}, vocab {LM_VOCAB}), training step "
        f"(forward+backward of the mean cross-entropy), B={LM_BATCH}\n"
    )
    rows, notes, rates = [], [], {}
    for length in lengths:
        mamba_rate = None
        for mixer in sorted(MIXERS, key=lambda m: m != "mamba"):  # mamba first: the baseline
            step, args = lm_step(mixer, length)
            start = time.perf_counter()
            compiled = step.lower(*args).compile()
            compile_s = time.perf_counter() - start
            peak = peak_bytes(compiled)
            row = [mixer, length]
            if peak > opts.max_gb * 2**30:
                rows.append(row + ["skipped", "", "", f"{peak / 2**20:.0f}", f"{compile_s:.0f}"])
                notes.append(
                    f"{mixer} at L={length}: not run, the compiled step needs "
                    f"{peak / 2**30:.1f} GB > --max-gb {opts.max_gb:g}"
                )
                continue
            t = median_time(lambda c=compiled, a=args: jax.block_until_ready(c(*a)), repeats, clock)
            rate = rates[mixer, length] = LM_BATCH * length / t
            mamba_rate = rate if mixer == "mamba" else mamba_rate
            rows.append(
                row
                + [
                    f"{rate:,.0f}",
                    f"{rate / mamba_rate:.2f}" if mamba_rate else "",
                    f"{t * 1e3:.0f}",
                    f"{peak / 2**20:.0f}",
                    f"{compile_s:.0f}",
                ]
            )
            print(f"  [{mixer} L={length}: {t * 1e3:.0f} ms]", file=sys.stderr, flush=True)
    table(["mixer", "L", "tokens/s", "vs mamba", "step ms", "peak MiB", "compile s"], rows)
    for note in notes:
        print(f"- {note}")
    print(f"\nScaling: tokens/s at L relative to L={lengths[0]} (1 = linear time)\n")
    scaling = [
        [m]
        + [f"{rates[m, n] / rates[m, lengths[0]]:.2f}" if (m, n) in rates else "" for n in lengths]
        for m in sorted(MIXERS)
        if (m, lengths[0]) in rates
    ]
    table(["mixer"] + [f"L={n}" for n in lengths], scaling)
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="LM lengths {1k, 4k}, fewer repeats")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="JAX repeats (default: mixer 10, LMs 5; quick 5, 2)",
    )
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall", help="cpu: process time, steadier"
    )
    parser.add_argument("--max-gb", type=float, default=6.0, help="skip LM steps needing more")
    parser.add_argument("--skip-hf", action="store_true", help="skip the Hugging Face comparison")
    opts = parser.parse_args()
    clock = CLOCKS[opts.clock]
    start = time.perf_counter()
    print(
        f"backend {jax.default_backend()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}, {opts.clock} clock, {'quick' if opts.quick else 'full'}\n"
    )
    ok = True if opts.skip_hf else bench_mamba_vs_hf(opts, clock)
    bench_language_models(opts, clock)
    print(f"total {time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.1f}")
    if not ok:
        print("FAILED: MambaBlock and the Hugging Face MambaMixer disagree", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
