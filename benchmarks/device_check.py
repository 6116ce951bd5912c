"""Device check: Pallas kernel parity and the training presets' step time on a GPU/TPU.

    python -m benchmarks.device_check                 # on a machine with an accelerator
    bash benchmarks/device_check.sh                   # the same, installing the package first

1. Kernel parity: the ``"pallas"`` method of ``selective_scan``, ``linear_attention`` and
   ``ssd`` against their reference methods (``"sequential"``, ``"chunked"``, ``"chunked"``) at
   small shapes, compiled for the device (not interpret mode): outputs and the gradients of
   sum(y²) in every input, max |Δ| / max |ref| per leaf, float32 with matmul precision
   "highest" (no TF32), tolerance ``PARITY_RTOL``.
2. Scan methods timed (forward+backward, bf16 inputs) at the sizes of the ``accelerators``
   section's estimates, B = 8, L = 2048, D = 2048, N = 16 (SSD: 32 heads of 64):
   ``selective_scan`` sequential (``"auto"``'s pick, from those estimates), chunked and
   pallas; ``ssd`` chunked and pallas. The measurement that confirms or overturns the pick.
3. The training presets (``jaxdiv.train.config.preset_names``), built as the trainer builds
   them (``benchmarks.training._preset_step``): median step time, tokens/s and MFU against
   this device's float32 matmul throughput measured at 1024³ (``jaxdiv.train.flops.peak_flops``).

Writes ``benchmarks/results/<date>-<device>-device-check.{json,md}``. On a CPU-only machine it
prints "no accelerator: nothing measured", writes nothing and exits 0: every number in the
report comes from the device it names.
"""

# B batch, L length, D channels, N state, H heads, K key dim, V value dim

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PARITY_RTOL = 1e-3  # float32 kernels vs the reference methods, relative to the largest entry


def _normal(key, shape):
    import jax

    return jax.random.normal(key, shape)


def parity_cases():
    """{name: (pallas fn, reference fn, inputs)} at small shapes."""
    import jax
    import jax.numpy as jnp

    from jaxdiv.models.attention.linear import linear_attention
    from jaxdiv.models.ssm.selective_scan import selective_scan
    from jaxdiv.models.ssm.ssd import ssd

    k = jax.random.split(jax.random.key(0), 5)
    B, L, D, N, H, K = 2, 256, 64, 16, 2, 32

    def scan(method):
        return lambda u, d, A, b, c: selective_scan(
            u, d, A, b, c, delta_softplus=True, method=method
        )

    scan_in = (
        _normal(k[0], (B, L, D)),
        _normal(k[1], (B, L, D)) - 2.0,
        -jnp.exp(_normal(k[2], (D, N))),
        _normal(k[3], (B, L, N)),
        _normal(k[4], (B, L, N)),
    )

    def lin(method):
        return lambda q, kk, v, g: linear_attention(q, kk, v, log_decay=g, method=method)

    lin_in = (
        _normal(k[0], (B, L, H, K)),
        _normal(k[1], (B, L, H, K)),
        _normal(k[2], (B, L, H, K)),
        -jax.nn.softplus(_normal(k[3], (B, L, H))),
    )

    def ssd_of(method):
        return lambda x, dt, A, b, c: ssd(x, dt, A, b, c, method=method)

    ssd_in = (
        _normal(k[0], (B, L, H, K)),
        jax.nn.softplus(_normal(k[1], (B, L, H)) - 1.0),
        -jnp.exp(_normal(k[2], (H,))),
        _normal(k[3], (B, L, 1, N)),
        _normal(k[4], (B, L, 1, N)),
    )
    return {
        "selective_scan pallas vs sequential": (scan("pallas"), scan("sequential"), scan_in),
        "linear_attention pallas vs chunked": (lin("pallas"), lin("chunked"), lin_in),
        "ssd pallas vs chunked": (ssd_of("pallas"), ssd_of("chunked"), ssd_in),
    }


def _max_rel(ours, ref) -> float:
    import jax
    import numpy as np

    worst = 0.0
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        worst = max(worst, float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)))
    return worst


def check_parity() -> list[dict]:
    import jax
    import jax.numpy as jnp

    rows = []
    with jax.default_matmul_precision("highest"):  # compare the kernels' math, not TF32 rounding
        cases = parity_cases()
    for name, (fast, ref, args) in cases.items():
        row = {"case": name}
        try:
            for pass_name, wrap in (
                ("value", lambda f: f),
                ("grad", lambda f: jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2, 3))),
            ):
                with jax.default_matmul_precision("highest"):
                    out = jax.jit(wrap(fast))(*args)
                    expected = jax.jit(wrap(ref))(*args)
                row[f"{pass_name} max rel diff"] = _max_rel(out, expected)
            row["ok"] = max(row["value max rel diff"], row["grad max rel diff"]) <= PARITY_RTOL
        except Exception as error:  # a kernel that does not compile here is a result too
            row["ok"] = False
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            traceback.print_exc()
        rows.append(row)
        print(row, flush=True)
    return rows


SCAN_METHODS = {"selective_scan": ("sequential", "chunked", "pallas"), "ssd": ("chunked", "pallas")}


def time_scans(batch: int, length: int, channels: int, repeats: int) -> list[dict]:
    """Median forward+backward ms of each method in ``SCAN_METHODS`` (bf16 inputs)."""
    from benchmarks import harness
    from benchmarks.accelerators import fwd_bwd, random_inputs, scan_args, scan_fn, ssd_args, ssd_fn

    rows = []
    for op, methods in SCAN_METHODS.items():
        fn, specs = (scan_fn, scan_args) if op == "selective_scan" else (ssd_fn, ssd_args)
        args = random_inputs(specs(batch, length, channels))
        for method in methods:
            row = {"op": op, "method": method, "B, L, D": f"{batch}, {length}, {channels}"}
            try:
                timing = harness.time_jax(fwd_bwd(fn(method)), *args, repeats=repeats).timing
                row.update({"fwd+bwd ms": timing.median * 1e3, "min ms": timing.min * 1e3})
            except Exception as error:  # a kernel that does not compile here is a result too
                row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
                traceback.print_exc()
            rows.append(row)
            print(row, flush=True)
    return rows


def time_presets(steps: int) -> list[dict]:
    import jax

    from benchmarks import harness, training
    from jaxdiv.train.flops import peak_flops

    peak = peak_flops()
    rows, teachers = [], {}
    for name in training.embedded_presets():
        row = {"preset": name, "matmul peak GFLOP/s (f32, 1024³, measured)": peak / 1e9}
        try:
            start = time.perf_counter()
            built = training._preset_step(name, teachers)
            box = {"state": built["state"]}

            def call(built=built, box=box):
                box["state"], metrics = built["compiled"](
                    box["state"], built["batch"], built["teacher_params"]
                )
                jax.block_until_ready((box["state"], metrics))

            call()  # compile
            row["build+compile s"] = time.perf_counter() - start
            timing = harness.time_call(call, repeats=steps, warmup=1)
            rate = built["tokens"] / timing.median
            row.update(
                {
                    "B×L": built["row"]["B×L"],
                    "step ms": timing.median * 1e3,
                    "step ms min": timing.min * 1e3,
                    "tokens/s": rate,
                    "MFU": built["flops"] * rate / peak,
                }
            )
        except Exception as error:
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            traceback.print_exc()
        rows.append(row)
        print(row, flush=True)
    return rows


def _markdown(meta: dict, parity: list[dict], scans: list[dict], presets: list[dict]) -> str:
    lines = [
        f"# Device check: {meta['device_kind']} ({meta['date']}, commit {meta['commit']})",
        "",
        f"Backend {meta['backend']}, {meta['device_count']} device(s), jax "
        f"{meta['versions'].get('jax')}. Every number was measured on this device.",
        "",
        f"## Kernel parity (pallas vs reference, max |Δ| / max |ref| ≤ {PARITY_RTOL:g})",
        "",
        "| case | value | grad | ok | error |",
        "|---|---|---|---|---|",
    ]
    for r in parity:
        lines.append(
            f"| {r['case']} | {r.get('value max rel diff', '')} | "
            f"{r.get('grad max rel diff', '')} | {'yes' if r['ok'] else 'no'} | "
            f"{r.get('error', '')} |"
        )
    lines += ["", "## Scan methods, forward+backward, bf16 inputs", ""]
    lines += ["| op | method | B, L, D | median ms | min ms | error |", "|---|---|---|---|---|---|"]
    for r in scans:
        times = [f"{r[k]:.3f}" if k in r else "" for k in ("fwd+bwd ms", "min ms")]
        lines.append(
            f"| {r['op']} | {r['method']} | {r['B, L, D']} | {times[0]} | {times[1]} | "
            f"{r.get('error', '')} |"
        )
    lines += ["", "## Training presets", "", "| preset | B×L | step ms | tokens/s | MFU | error |"]
    lines.append("|---|---|---|---|---|---|")
    for r in presets:
        mfu = f"{r['MFU']:.1%}" if "MFU" in r else ""
        step = f"{r['step ms']:.2f}" if "step ms" in r else ""
        rate = f"{r['tokens/s']:,.0f}" if "tokens/s" in r else ""
        lines.append(
            f"| {r['preset']} | {r.get('B×L', '')} | {step} | {rate} | {mfu} | "
            f"{r.get('error', '')} |"
        )
    if presets:
        peak = presets[0]["matmul peak GFLOP/s (f32, 1024³, measured)"]
        lines += [
            "",
            f"MFU against this device's measured float32 1024³ matmul: {peak:,.0f} GFLOP/s.",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.device_check", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per preset")
    parser.add_argument(
        "--skip-presets", action="store_true", help="kernel parity and scan timings only"
    )
    opts = parser.parse_args(argv)

    import jax

    if jax.default_backend() == "cpu":
        print("no accelerator: nothing measured")
        return 0
    from benchmarks.run import machine

    meta = machine()
    print(f"device check on {meta['device']} ({meta['device_kind']}), commit {meta['commit']}")
    parity = check_parity()
    scans = time_scans(8, 2048, 2048, repeats=opts.steps)
    presets = [] if opts.skip_presets else time_presets(opts.steps)
    stem = f"{meta['date']}-{meta['device']}-device-check"
    opts.out.mkdir(parents=True, exist_ok=True)
    results = {"meta": meta, "parity": parity, "scans": scans, "presets": presets}
    (opts.out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (opts.out / f"{stem}.md").write_text(_markdown(meta, parity, scans, presets))
    print(f"wrote {opts.out / stem}.json and .md")
    return 0 if all(r["ok"] for r in parity) else 1


if __name__ == "__main__":
    sys.exit(main())
