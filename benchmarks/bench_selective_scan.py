"""Selective scan: time and peak memory of each method against an exp-throughput bound.

Run: ``python benchmarks/bench_selective_scan.py [--quick] [--repeats R] [--clock cpu]``.

For B=2, D=256, N=16 and L in {1k, 4k, 16k} ({1k, 4k} with ``--quick``), it times the forward
pass and forward+backward (gradient of sum(y²) in u, delta, A, B, C) of every method of
``selective_scan`` (median of repeats after a warm-up; wall clock, or process CPU time with
``--clock cpu``, steadier on a shared machine), reads peak memory from the
compiled executable (temp + arguments + outputs), and divides by the bound

    B·L·D·N / exp-throughput,

the time this machine needs for the B·L·D·N exponentials every method must evaluate, measured in
the same run as ``jnp.exp`` over float32 chunks of 2**22 elements (chunks big enough to
stream, small enough that the allocator reuses their buffers; one array of B·L·D·N elements is
page-fault bound and about 10x slower). "sequential (autodiff)" is the sequential scan
differentiated by plain JAX autodiff instead of its hand-written backward, for comparison.
Methods whose compiled peak memory exceeds ``--max-gb`` are reported but not run.
"""

import argparse
import importlib
import statistics
import time

import jax
import jax.numpy as jnp

# The module itself (``jaxdiv.models.selective_scan`` as an attribute is the re-exported function).
ss = importlib.import_module("jaxdiv.models.selective_scan")

BATCH, CHANNELS, STATE = 2, 256, 16
EXP_CHUNK = 1 << 22


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn, args, repeats: int, clock=time.perf_counter) -> float:
    """Median time of ``fn(*args)`` after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = clock()
        jax.block_until_ready(fn(*args))
        times.append(clock() - start)
    return statistics.median(times)


def peak_bytes(fn, args) -> int:
    stats = fn.lower(*args).compile().memory_analysis()
    return stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes


def inputs(length: int):
    k = jax.random.split(jax.random.key(0), 5)
    u = jax.random.normal(k[0], (BATCH, length, CHANNELS))
    delta = jax.random.normal(k[1], (BATCH, length, CHANNELS)) - 2.0
    A = -jnp.exp(jax.random.normal(k[2], (CHANNELS, STATE)))
    B = jax.random.normal(k[3], (BATCH, length, STATE))
    C = jax.random.normal(k[4], (BATCH, length, STATE))
    return u, delta, A, B, C


def scan_fn(method: str):
    def fn(u, delta, A, B, C):
        return ss.selective_scan(u, delta, A, B, C, delta_softplus=True, method=method)

    return fn


def autodiff_sequential(u, delta, A, B, C):
    """The sequential scan with its custom VJP bypassed (plain autodiff through lax.scan)."""
    custom = ss._sequential
    ss._sequential = custom.fun
    try:
        return scan_fn("sequential")(u, delta, A, B, C)
    finally:
        ss._sequential = custom


def grad_fn(fn):
    return jax.grad(lambda *a: jnp.sum(fn(*a) ** 2), argnums=(0, 1, 2, 3, 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="L in {1k, 4k} only")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 quick, 5 full")
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall", help="cpu: process time, steadier"
    )
    parser.add_argument("--max-gb", type=float, default=6.0, help="skip runs needing more")
    opts = parser.parse_args()
    repeats = opts.repeats or (3 if opts.quick else 5)
    clock = CLOCKS[opts.clock]
    lengths = (1024, 4096) if opts.quick else (1024, 4096, 16384)
    methods = {
        "sequential": scan_fn("sequential"),
        "sequential (autodiff)": autodiff_sequential,
        "chunked": scan_fn("chunked"),
        "associative": scan_fn("associative"),
    }
    x = jax.random.uniform(jax.random.key(1), (EXP_CHUNK,), minval=-5.0, maxval=0.0)
    exp = jax.jit(jnp.exp)
    auto = ss._check_method("auto", 64)
    print(f"backend {jax.default_backend()}, auto = {auto!r}, {opts.clock} clock\n")
    columns = ["L", "method", "fwd ms", "fwd / bound", "fwd+bwd ms", "fwd+bwd / bound"]
    columns += ["peak MB fwd", "peak MB fwd+bwd"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for length in lengths:
        args = inputs(length)
        exp_time = timed(exp, (x,), max(repeats, 20), clock)  # re-measured per L: the load drifts
        bound = exp_time * BATCH * length * CHANNELS * STATE / EXP_CHUNK
        rate = f"exp at {EXP_CHUNK / exp_time / 1e9:.2f} G/s"
        print(f"| {length} | bound ({rate}) | {bound * 1e3:.1f} | 1 | {bound * 1e3:.1f} | 1 | | |")
        for name, fn in methods.items():
            row = [str(length), name]
            mems = []
            for f in (jax.jit(fn), jax.jit(grad_fn(fn))):
                mem = peak_bytes(f, args)
                mems.append(f"{mem / 2**20:.0f}")
                if mem > opts.max_gb * 2**30:
                    row += ["skipped", ""]
                    continue
                t = timed(f, args, repeats, clock)
                row += [f"{t * 1e3:.1f}", f"{t / bound:.1f}"]
            print("| " + " | ".join(row + mems) + " |", flush=True)


if __name__ == "__main__":
    main()
