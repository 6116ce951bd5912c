"""SinKD (`sinkhorn_kd`) vs a per-row forward KL: value+grad time and peak memory.

Run: ``python benchmarks/bench_sinkhorn.py`` (N in {32, 256, 1024}, V = 32000) or with
``--quick`` (N in {32, 256}). Prints markdown tables:

1. the whole loss (value + gradient w.r.t. both logits) for sinkhorn_kd (unrolled and
   implicit) and forward KL on the same [N, V] logits, with peak memory from XLA's
   memory analysis (temp + arguments + outputs) and the ratio to forward KL;
2. the split: building W (value + VJP of the blocked L1 cost) and the Sinkhorn solve
   (value + gradient w.r.t. W) through ott vs a plain-JAX unrolled recursion on the same W.

Targets: peak memory at N=1024, V=32000 under 2 GB; ott solve within 1.2x of the plain one.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from jaxdiv._sinkhorn import _l1_cost, _solve_unrolled, sinkhorn_kd

try:
    from jaxdiv._divergences import forward_kl
except ImportError:  # minimal stand-in, KL(p_t || p_s) per row

    def forward_kl(s, t, *, temperature=1.0):
        log_p_s = jax.nn.log_softmax(s / temperature, axis=-1)
        log_p_t = jax.nn.log_softmax(t / temperature, axis=-1)
        return jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)


V = 32000
EPSILON, NUM_ITERS, TEMPERATURE = 0.1, 20, 2.0


def plain_recursion(w, epsilon, num_iters):
    """SinKD's recursion on the full plan, unrolled by jax.grad."""
    p = jnp.exp(-w / epsilon)
    for _ in range(num_iters):
        p = p / jnp.sum(p, axis=1, keepdims=True)
        p = p / jnp.sum(p, axis=0, keepdims=True)
    return jnp.sum(p * w)


def measure(fn, *args, repeats):
    """Median seconds of a compiled call and peak bytes (temp + arguments + outputs)."""
    compiled = jax.jit(fn).lower(*args).compile()
    mem = compiled.memory_analysis()
    peak = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak


def row(name, n, seconds, peak, base=None):
    ratio = "" if base is None else f"{seconds / base:.2f}x"
    return f"| {name} | {n} | {seconds * 1e3:.1f} | {ratio} | {peak / 2**20:.0f} |"


def bench_size(n, repeats):
    """Rows of both tables for N = n."""
    ks, kt, kg = jax.random.split(jax.random.key(n), 3)
    s = 3.0 * jax.random.normal(ks, (n, V))
    t = 3.0 * jax.random.normal(kt, (n, V))
    both = (0, 1)
    kl = jax.value_and_grad(
        lambda s, t: jnp.mean(forward_kl(s, t, temperature=TEMPERATURE)), argnums=both
    )
    unrolled = jax.value_and_grad(
        lambda s, t: sinkhorn_kd(
            s, t, temperature=TEMPERATURE, epsilon=EPSILON, num_iters=NUM_ITERS
        ),
        argnums=both,
    )
    implicit = jax.value_and_grad(
        lambda s, t: sinkhorn_kd(s, t, temperature=TEMPERATURE, epsilon=EPSILON, mode="implicit"),
        argnums=both,
    )
    base, peak = measure(kl, s, t, repeats=repeats)
    loss_rows = [row("forward_kl (baseline)", n, base, peak, base)]
    for name, fn in (("sinkhorn_kd unrolled", unrolled), ("sinkhorn_kd implicit", implicit)):
        loss_rows.append(row(name, n, *measure(fn, s, t, repeats=repeats), base))

    p_s = jax.nn.softmax(s / TEMPERATURE, axis=-1)
    p_t = jax.nn.softmax(t / TEMPERATURE, axis=-1)
    w = _l1_cost(p_s, p_t)
    cot = jax.random.normal(kg, (n, n))
    eps = jnp.float32(EPSILON)
    build = lambda a, b: jax.vjp(_l1_cost, a, b)[1](cot)
    ott_solve = jax.value_and_grad(lambda w: _solve_unrolled(w, eps, NUM_ITERS)[1])
    plain_solve = jax.value_and_grad(lambda w: plain_recursion(w, eps, NUM_ITERS))
    split_rows = [row("build W (value + VJP)", n, *measure(build, p_s, p_t, repeats=repeats))]
    plain_t, plain_peak = measure(plain_solve, w, repeats=20)
    split_rows.append(row("solve: plain-JAX recursion (baseline)", n, plain_t, plain_peak, plain_t))
    ott_t, ott_peak = measure(ott_solve, w, repeats=20)
    split_rows.append(row("solve: ott (sinkhorn_kd path)", n, ott_t, ott_peak, plain_t))
    return loss_rows, split_rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="N in {32, 256} only")
    args = parser.parse_args()
    sizes = (32, 256) if args.quick else (32, 256, 1024)
    print(
        f"backend: {jax.default_backend()}, V = {V}, epsilon = {EPSILON}, "
        f"num_iters = {NUM_ITERS}, T = {TEMPERATURE}\n"
    )

    loss_rows, split_rows = [], []
    for n in sizes:
        loss, split = bench_size(n, repeats=5 if n <= 256 else 1)
        loss_rows += loss
        split_rows += split

    header = "| what | N | ms (median) | ratio | peak MiB |\n|---|---|---|---|---|"
    print("Loss value + gradient w.r.t. both logits (ratio vs forward_kl)\n")
    print(header, *loss_rows, sep="\n")
    print("\nSplit: W build and the solve (value + gradient w.r.t. W; ratio vs plain recursion)\n")
    print(header, *split_rows, sep="\n")


if __name__ == "__main__":
    main()
