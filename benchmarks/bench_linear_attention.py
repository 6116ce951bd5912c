"""Linear attention methods vs softmax attention: forward+backward time and peak memory.

    python benchmarks/bench_linear_attention.py [--quick]

B=1, H=4, dk=dv=64, L in {1k, 4k, 8k, 16k} ({1k, 4k} with --quick), no decay and per-head
decay. Times are medians of jitted ``grad`` calls after warm-up; peak memory is the compiled
program's temp + argument + output bytes. Ratios are against the chunked method in the same run.
Targets: chunked ≥ 4× faster than recurrent at L = 4k; chunked time(16k) ≤ 4.5 × time(4k).
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from jaxdiv.models.attention import softmax_attention
from jaxdiv.models.linear_attention import linear_attention

H, D = 4, 64


def make(length, decay):
    keys = jax.random.split(jax.random.key(0), 5)
    q, k, v, w = (jax.random.normal(key, (1, length, H, D)) for key in keys[:4])
    g = -jax.nn.softplus(jax.random.normal(keys[4], (1, length, H))) if decay else None
    return q, k, v, w, g


def measure(fn, args, repeats):
    grad = jax.jit(jax.grad(fn, argnums=(0, 1, 2)))
    compiled = grad.lower(*args).compile()
    mem = compiled.memory_analysis()
    peak = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak / 2**20


def linear(method, chunk_size=64):
    def fn(q, k, v, w, g):
        o = linear_attention(q, k, v, log_decay=g, method=method, chunk_size=chunk_size)
        return jnp.sum(o * w)

    return fn


def softmax(q, k, v, w, g):
    return jnp.sum(softmax_attention(q, k, v) * w)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    lengths = (1024, 4096) if quick else (1024, 4096, 8192, 16384)
    repeats = 3 if quick else 5
    print(f"backend: {jax.default_backend()}, devices: {jax.devices()[0].device_kind}")

    print("\n## chunk_size (chunked, fwd+bwd, no decay / per-head decay)\n")
    print("| L | chunk | time ms (none) | time ms (per-head) |")
    print("|---|---|---|---|")
    for length in (4096,) if quick else (4096, 16384):
        for chunk in (32, 64, 128, 256):
            row = [measure(linear("chunked", chunk), make(length, d), repeats)[0] for d in (0, 1)]
            print(f"| {length} | {chunk} | {row[0] * 1e3:.1f} | {row[1] * 1e3:.1f} |")

    results = {}
    print("\n## methods (fwd+bwd, no decay; ratio = time / chunked time at the same L)\n")
    print("| method | L | time ms | peak MiB | time ratio vs chunked |")
    print("|---|---|---|---|---|")
    for length in lengths:
        args = make(length, False)
        runs = {"chunked": linear("chunked"), "recurrent": linear("recurrent")}
        if length <= 4096:
            runs["parallel"] = linear("parallel")
        if length <= 8192:
            runs["softmax"] = softmax
        for name, fn in runs.items():
            results[name, length] = measure(fn, args, repeats)
            t, peak = results[name, length]
            ratio = t / results["chunked", length][0]
            print(f"| {name} | {length} | {t * 1e3:.1f} | {peak:.0f} | {ratio:.2f} |")

    speedup = results["recurrent", 4096][0] / results["chunked", 4096][0]
    print(f"\nrecurrent / chunked at L=4096: {speedup:.1f}x (target >= 4)")
    if not quick:
        growth = results["chunked", 16384][0] / results["chunked", 4096][0]
        print(f"chunked time(16k) / time(4k): {growth:.2f} (target <= 4.5)")


if __name__ == "__main__":
    main()
