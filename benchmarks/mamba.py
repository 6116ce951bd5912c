"""``MambaBlock`` vs Hugging Face ``transformers`` ``MambaMixer`` on PyTorch CPU, same weights.

The peer runs its pure-PyTorch path (a Python loop over time steps): ``mamba_ssm``,
``causal_conv1d``, ``kernels`` and ``mambapy`` absent, ``use_mambapy`` and
``use_associative_scan`` off — checked before timing, and by counting the loop's
``torch.matmul`` calls. HF's weights (``A_log`` and ``D`` perturbed off their constant init) are
copied into the block with ``load_torch_mamba``; outputs must agree to 1e-4 (max abs) and the
gradients of sum(output²) in the input and every parameter to 1e-3 relative to each one's largest
entry before anything is timed. Target: ours ≥ 20× faster forward+backward at B=2, L=512,
d_model=256, d_state=16, d_conv=4, expand=2.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import harness
from jaxdiv.models import MambaBlock, load_torch_mamba

BATCH, LENGTH, WIDTH, STATE, CONV, EXPAND = 2, 512, 256, 16, 4, 2
OUT_ATOL, GRAD_RTOL, TARGET_SPEEDUP = 1e-4, 1e-3, 20.0

ABOUT = (
    f"`MambaBlock` against Hugging Face `transformers` `MambaMixer` on PyTorch CPU "
    f"(2 threads) with the same weights, B={BATCH}, L={LENGTH}, d_model={WIDTH}, "
    f"d_state={STATE}, d_conv={CONV}, expand={EXPAND}. The peer runs its pure-PyTorch path "
    "(a Python loop over time steps: no `mamba_ssm`, `causal_conv1d`, `kernels` or `mambapy`; "
    "checked before timing). Outputs must agree to "
    f"{OUT_ATOL:g} and gradients of sum(y²) in the input and every parameter to {GRAD_RTOL:g} "
    "(relative to each one's largest entry) before anything is timed. Forward: PyTorch under "
    "`no_grad`; forward+backward: `.backward()` vs `jax.grad` in the input and all parameters."
)


def slow_path_checks(modeling, mixer) -> list[tuple[str, bool]]:
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


def run(quick: bool) -> harness.Section:
    section = harness.Section("mamba", "Mamba block vs Hugging Face MambaMixer", ABOUT)
    if not (harness.have("torch") and harness.have("transformers")):
        section.note("skipped: torch / transformers not installed (pip install -e '.[bench]')")
        return section
    import torch
    import transformers
    from transformers.models.mamba import modeling_mamba

    torch.set_num_threads(2)
    torch.manual_seed(0)
    config = transformers.MambaConfig(
        vocab_size=16,
        hidden_size=WIDTH,
        state_size=STATE,
        conv_kernel=CONV,
        expand=EXPAND,
        num_hidden_layers=1,
        use_bias=False,
        use_conv_bias=True,
        use_mambapy=False,
        use_associative_scan=False,
    )
    mixer = modeling_mamba.MambaMixer(config, layer_idx=0).float()
    with torch.no_grad():  # move A_log and D off their constant init so the check sees them
        mixer.A_log.add_(0.5 * torch.randn_like(mixer.A_log))
        mixer.D.add_(0.5 * torch.randn_like(mixer.D))
    state_dict = {k: v.detach().float().numpy() for k, v in mixer.state_dict().items()}

    def block_with(weights):  # HF's use_bias / use_conv_bias are MambaBlock's bias / conv_bias
        block = MambaBlock(
            WIDTH,
            d_state=STATE,
            d_conv=CONV,
            expand=EXPAND,
            dt_rank=mixer.time_step_rank,
            bias=config.use_bias,
            conv_bias=config.use_conv_bias,
            rngs=nnx.Rngs(0),
        )
        return load_torch_mamba(block, weights)

    graphdef, params = nnx.split(block_with(state_dict))
    x_np = np.random.default_rng(0).standard_normal((BATCH, LENGTH, WIDTH), np.float32)
    x_torch, x = torch.from_numpy(x_np), jnp.asarray(x_np)
    forward = jax.jit(lambda params, x: nnx.merge(graphdef, params)(x))
    gradient = jax.jit(
        jax.grad(lambda params, x: jnp.sum(nnx.merge(graphdef, params)(x) ** 2), argnums=(0, 1))
    )

    def torch_forward():
        with torch.no_grad():
            return mixer(x_torch)

    input_grad = {}

    def torch_gradient():
        mixer.zero_grad(set_to_none=True)
        xt = x_torch.clone().requires_grad_(True)
        (mixer(xt) ** 2).sum().backward()
        input_grad["x"] = xt.grad.numpy()

    checks = slow_path_checks(modeling_mamba, mixer)
    matmuls = count_matmuls(torch, torch_forward)
    checks.append(
        (f"{matmuls} `torch.matmul` calls per forward (≥ L: the time loop)", matmuls >= LENGTH)
    )
    slow_path = all(ok for _, ok in checks)
    section.note(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} threads. Slow-path checks: "
        + "; ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in checks)
    )

    # Correctness first: outputs, then gradients. The one checked PyTorch forward+backward is
    # also its first timing sample (in quick mode the only one: about a minute a call).
    out_diff = float(np.max(np.abs(np.asarray(forward(params, x)) - torch_forward().numpy())))
    checked = harness.time_call(torch_gradient, repeats=1, warmup=0)
    torch_grads = {k: v.grad.detach().numpy() for k, v in mixer.named_parameters()}
    ref_params = dict(nnx.to_flat_state(nnx.state(block_with(torch_grads))))
    our_params, our_x = gradient(params, x)
    grad_diffs = {"x": max_rel_diff(our_x, input_grad["x"])}
    for path, ours in nnx.to_flat_state(our_params):
        grad_diffs[".".join(map(str, path))] = max_rel_diff(ours[...], ref_params[path][...])
    worst = max(grad_diffs, key=grad_diffs.get)
    outputs_ok, grads_ok = out_diff <= OUT_ATOL, grad_diffs[worst] <= GRAD_RTOL
    section.target(
        "outputs match HF",
        f"max abs diff ≤ {OUT_ATOL:g}",
        f"{out_diff:.1e}",
        outputs_ok,
        "" if outputs_ok else "the two implementations disagree: nothing timed",
    )
    section.target(
        "gradients match HF",
        f"max rel diff ≤ {GRAD_RTOL:g} (x and {len(grad_diffs) - 1} parameters)",
        f"{grad_diffs[worst]:.1e} at `{worst}`",
        grads_ok,
        "" if grads_ok else "the two implementations disagree: nothing timed",
    )
    if not (outputs_ok and grads_ok):
        return section

    repeats = 5 if quick else 10
    ours_fwd = harness.time_call(lambda: jax.block_until_ready(forward(params, x)), repeats=repeats)
    ours_grad = harness.time_call(
        lambda: jax.block_until_ready(gradient(params, x)), repeats=repeats
    )
    theirs_fwd = harness.time_call(torch_forward, repeats=3, warmup=0)  # warmed up by the checks
    theirs_grad = checked if quick else harness.time_call(torch_gradient, repeats=3, warmup=0)
    table = section.table("Time per call", ["pass", "ours ms", "HF ms", "HF / ours"])
    for name, ours, theirs in (
        ("forward", ours_fwd, theirs_fwd),
        ("forward+backward", ours_grad, theirs_grad),
    ):
        table.add(**{"pass": name, "ours ms": ours, "HF ms": theirs, "HF / ours": theirs / ours})
    speedup = theirs_grad / ours_grad
    section.target(
        "Mamba forward+backward vs HF PyTorch CPU",
        f"≥ {TARGET_SPEEDUP:g}× faster",
        f"{speedup:.0f}×",
        speedup >= TARGET_SPEEDUP and slow_path,
        ""
        if slow_path
        else "the HF slow path was not confirmed, so the ratio is not the stated one",
    )
    if quick:
        section.note("quick mode: the HF forward+backward time is the one checked call")
    return section
