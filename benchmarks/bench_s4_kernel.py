"""S4 / S4D convolution kernels vs a naive dense-power kernel (float32, forward only).

Run: ``python benchmarks/bench_s4_kernel.py`` (L in {1k, 4k, 16k}) or ``--quick`` (L in {1k, 4k}).
H = 256 channels, N = 64 (N2 = 32 conjugate pairs), HiPPO-LegS NPLR parameters (rank 1).
The baseline materialises the dense discretised DPLR matrix ``Ā`` ([H, N2, N2]) and runs
``x_{l+1} = Ā x_l``, ``K_l = 2 Re(C x_l)`` with ``lax.scan``. Times are medians of repeats of
jitted calls after warm-up; memory is XLA's ``memory_analysis`` (temp + arguments + outputs).
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiv.models.s4_kernels import (
    discretize_dplr,
    nplr_legs,
    ssm_kernel_diag,
    ssm_kernel_dplr,
)


def naive_dense_kernel(Lambda, P, B, C, log_dt, length):
    """``K_l = 2 Re(C Ā^l B̄)`` by ``length`` dense mat-vec products (the baseline)."""
    Abar, Bbar = discretize_dplr(Lambda, P, B, log_dt)  # [H, N2, N2], [H, N2]

    def step(x, _):
        y = 2 * jnp.einsum("hn,hn->h", C, x).real  # [H]
        return jnp.einsum("hmn,hn->hm", Abar, x), y

    _, K = jax.lax.scan(step, Bbar, None, length=length)  # [L, H]
    return K.T  # [H, L]


def timeit(fn, args, repeats):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def peak_bytes(fn, args):
    mem = fn.lower(*args).compile().memory_analysis()
    if mem is None:
        return float("nan")
    return mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="L in {1k, 4k} only")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    lengths = (1024, 4096) if args.quick else (1024, 4096, 16384)
    H, N = 256, 64
    rng = np.random.default_rng(0)
    Lambda, P, B, _ = nplr_legs(N)
    tile = lambda x: jnp.asarray(np.broadcast_to(x, (H, N // 2)), jnp.complex64)  # noqa: E731
    Lambda, P, B = tile(Lambda), tile(P), tile(B)
    C = jnp.asarray(rng.standard_normal((H, N // 2)) + 1j * rng.standard_normal((H, N // 2)))
    C = C.astype(jnp.complex64) * np.sqrt(0.5)
    log_dt = jnp.asarray(rng.uniform(np.log(1e-3), np.log(1e-1), H), jnp.float32)

    load = os.getloadavg()[0]
    print(
        f"backend: {jax.default_backend()}, H={H}, N={N} (N2={N // 2}), float32, forward, "
        f"load average {load:.1f} on {os.cpu_count()} CPUs\n"
    )
    print(
        "| L | naive dense scan (ms) | dplr (ms) | diag zoh (ms) | dplr speed-up | "
        "diag speed-up | dplr max err | naive / dplr / diag memory (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for L in lengths:
        naive = jax.jit(lambda *a, L=L: naive_dense_kernel(*a, L))
        dplr = jax.jit(lambda *a, L=L: ssm_kernel_dplr(*a, L))
        diag = jax.jit(lambda A, B, C, dt, L=L: ssm_kernel_diag(A, B, C, dt, L))
        dplr_args = (Lambda, P, B, C, log_dt)
        diag_args = (Lambda, B, C, log_dt)
        t_naive = timeit(naive, dplr_args, args.repeats)
        t_dplr = timeit(dplr, dplr_args, args.repeats)
        t_diag = timeit(diag, diag_args, args.repeats)
        ref = np.asarray(naive(*dplr_args))
        err = float(np.max(np.abs(np.asarray(dplr(*dplr_args)) - ref)) / np.max(np.abs(ref)))
        mib = [
            peak_bytes(f, a) / 2**20
            for f, a in ((naive, dplr_args), (dplr, dplr_args), (diag, diag_args))
        ]
        print(
            f"| {L} | {1e3 * t_naive:.1f} | {1e3 * t_dplr:.1f} | {1e3 * t_diag:.2f} | "
            f"{t_naive / t_dplr:.1f}x | {t_naive / t_diag:.0f}x | {err:.1e} | "
            f"{mib[0]:.0f} / {mib[1]:.0f} / {mib[2]:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
