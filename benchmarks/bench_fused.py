"""fused_linear_divergence vs the unfused divergence of materialised logits (value + gradients).

    python benchmarks/bench_fused.py            # N=8192, d=256, V=32000
    python benchmarks/bench_fused.py --quick    # N=2048

Both sides compute the forward KL of ``student_hidden @ student_weight`` against a frozen
teacher's ``teacher_hidden @ teacher_weight`` and its gradient w.r.t. the student hidden
states and LM head. Peak memory is the compiled program's temporaries + arguments + outputs
(``memory_analysis``); times are medians after warm-up, in this process.
Targets (issue): peak memory ≤ 1/4 of the unfused computation, time ≤ 1.3×.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import jaxdiv


def loss(fused, hs, ws, ht, wt, chunk_size):
    ht, wt = jax.lax.stop_gradient(ht), jax.lax.stop_gradient(wt)
    if fused:
        per_row = jaxdiv.fused_linear_divergence(hs, ws, ht, wt, chunk_size=chunk_size)
    else:
        per_row = jaxdiv.forward_kl(hs @ ws, ht @ wt)
    return jnp.mean(per_row)


def measure(fused, args, chunk_size, repeats):
    fn = jax.jit(jax.value_and_grad(lambda *a: loss(fused, *a, chunk_size), argnums=(0, 1)))
    compiled = fn.lower(*args).compile()
    mem = compiled.memory_analysis()
    peak = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=1024)
    args = parser.parse_args()
    n, d, v = (2048 if args.quick else 8192), 256, 32000
    keys = jax.random.split(jax.random.key(0), 4)
    inputs = (
        jax.random.normal(keys[0], (n, d)),
        jax.random.normal(keys[1], (d, v)) * d**-0.5,
        jax.random.normal(keys[2], (n, d)),
        jax.random.normal(keys[3], (d, v)) * d**-0.5,
    )
    t_plain, m_plain = measure(False, inputs, args.chunk_size, args.repeats)
    t_fused, m_fused = measure(True, inputs, args.chunk_size, args.repeats)
    print(
        f"backend {jax.default_backend()}, N={n}, d={d}, V={v}, chunk={args.chunk_size}, "
        "forward KL value + student gradients\n"
    )
    print("| computation | time ms | peak MiB | time ratio | memory ratio |")
    print("|---|---|---|---|---|")
    print(
        f"| unfused (materialised logits) | {t_plain * 1e3:.0f} | {m_plain / 2**20:.0f} | 1 | 1 |"
    )
    print(
        f"| fused_linear_divergence | {t_fused * 1e3:.0f} | {m_fused / 2**20:.0f} "
        f"| {t_fused / t_plain:.2f} | {m_fused / m_plain:.3f} |"
    )
    print(
        f"\nmemory target (<= 0.25): {'MET' if m_fused <= m_plain / 4 else 'NOT MET'}; "
        f"time target (<= 1.3x): {'MET' if t_fused <= 1.3 * t_plain else 'NOT MET'}"
    )


if __name__ == "__main__":
    main()
