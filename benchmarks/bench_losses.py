"""Core divergences vs optax and a naive softmax/log implementation (value + student gradient).

    python benchmarks/bench_losses.py            # [8, 512, 32000], float32 and bfloat16
    python benchmarks/bench_losses.py --quick    # [4, 256, 32000]

Every row is jitted, warmed up, and timed as the median of repeats in this process; "x optax" is
the time ratio against optax's function of the same divergence (where optax has one), "temps" is
the compiled temporary memory in units of one float32 [N, V] array (what the math needs beyond
inputs and outputs: the gradient output itself is not a temporary).
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import jaxdiv


def naive_forward_kl(s, t):
    p_s, p_t = jax.nn.softmax(s.astype(jnp.float32)), jax.nn.softmax(t.astype(jnp.float32))
    return jnp.sum(p_t * (jnp.log(p_t) - jnp.log(p_s)), -1)


def naive_reverse_kl(s, t):
    return naive_forward_kl(t, s)


def naive_jsd(s, t, beta=0.5):
    p_s, p_t = jax.nn.softmax(s.astype(jnp.float32)), jax.nn.softmax(t.astype(jnp.float32))
    m = beta * p_t + (1 - beta) * p_s
    return beta * jnp.sum(p_t * jnp.log(p_t / m), -1) + (1 - beta) * jnp.sum(
        p_s * jnp.log(p_s / m), -1
    )


def optax_forward_kl(s, t):
    s, t = s.astype(jnp.float32), t.astype(jnp.float32)
    return optax.losses.kl_divergence(jax.nn.log_softmax(s), jax.nn.softmax(t))


def optax_reverse_kl(s, t):
    s, t = s.astype(jnp.float32), t.astype(jnp.float32)
    return optax.losses.kl_divergence_with_log_targets(jax.nn.log_softmax(t), jax.nn.log_softmax(s))


def value_and_student_grad(fn):
    return jax.jit(jax.value_and_grad(lambda s, t: jnp.mean(fn(s, t))))


def measure(fn, s, t, repeats):
    compiled = value_and_student_grad(fn).lower(s, t).compile()
    mem = compiled.memory_analysis()
    jax.block_until_ready(compiled(s, t))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(s, t))
        times.append(time.perf_counter() - start)
    return statistics.median(times), mem.temp_size_in_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    shape = (4, 256, 32000) if args.quick else (8, 512, 32000)
    unit = shape[0] * shape[1] * shape[2] * 4
    rows = [
        ("forward_kl", jaxdiv.forward_kl, optax_forward_kl, naive_forward_kl),
        ("reverse_kl", jaxdiv.reverse_kl, optax_reverse_kl, naive_reverse_kl),
        ("generalized_jsd", jaxdiv.generalized_jsd, None, naive_jsd),
    ]
    print(f"backend {jax.default_backend()}, logits {list(shape)}, value + student gradient\n")
    print(
        "| divergence | dtype | jaxdiv ms | optax ms | naive ms | x optax | x naive "
        "| temps jaxdiv | temps optax | temps naive |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dtype in (jnp.float32, jnp.bfloat16):
        key_s, key_t = jax.random.split(jax.random.key(0))
        s = (3 * jax.random.normal(key_s, shape)).astype(dtype)
        t = (3 * jax.random.normal(key_t, shape)).astype(dtype)
        for name, ours, peer, naive in rows:
            t_ours, m_ours = measure(ours, s, t, args.repeats)
            t_naive, m_naive = measure(naive, s, t, args.repeats)
            if peer is None:
                t_peer = m_peer = None
            else:
                t_peer, m_peer = measure(peer, s, t, args.repeats)
            fmt = lambda x, scale=1e3: "—" if x is None else f"{x * scale:.1f}"
            ratio = lambda a, b: "—" if b is None else f"{a / b:.2f}"
            temps = lambda m: "—" if m is None else f"{m / unit:.2f}"
            print(
                f"| {name} | {jnp.dtype(dtype).name} | {fmt(t_ours)} | {fmt(t_peer)} "
                f"| {fmt(t_naive)} | {ratio(t_ours, t_peer)} | {ratio(t_ours, t_naive)} "
                f"| {temps(m_ours)} | {temps(m_peer)} | {temps(m_naive)} |"
            )


if __name__ == "__main__":
    main()
