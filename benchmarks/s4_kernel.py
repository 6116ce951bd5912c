"""S4 / S4D convolution kernels vs a naive dense-power kernel (float32, forward only).

H = 256 channels, N = 64 (N2 = 32 conjugate pairs), HiPPO-LegS NPLR parameters (rank 1),
L ∈ {1k, 4k} (quick) or {1k, 4k, 16k} (full). The baseline materialises the dense discretised
DPLR matrix ``Ā`` ([H, N2, N2]) and runs ``x_{l+1} = Ā x_l``, ``K_l = 2 Re(C x_l)`` with
``lax.scan``; ``ssm_kernel_dplr`` (Cauchy + Woodbury) must match it to 1e-4 relative before it
is timed. ``ssm_kernel_diag`` (S4D, ZOH, Λ without the low-rank term) computes a different
kernel and is timed only.
"""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from jaxdiv.models.ssm.s4_ops import discretize_dplr, nplr_legs, ssm_kernel_diag, ssm_kernel_dplr

# H channels, N2 conjugate pairs (N = 2 N2 real state), L length

CHANNELS, STATE = 256, 64
RTOL = 1e-4

ABOUT = (
    f"Convolution kernels K [H, L] of H={CHANNELS} SSMs with N={STATE} (N2={STATE // 2} "
    "conjugate pairs), HiPPO-LegS NPLR parameters (rank 1), random C and Δ, float32, forward "
    "only, jitted and timed after a warm-up call. Baseline: the naive dense-power kernel — the "
    "discretised DPLR matrix Ā [H, N2, N2] formed densely (`discretize_dplr`) and "
    "x_{l+1} = Ā x_l, K_l = 2 Re(C x_l) by `lax.scan`. `ssm_kernel_dplr` (S4: Cauchy kernel + "
    f"Woodbury identity, FFT) must match it to {RTOL:g} (max |diff| / max |K|) before it is "
    "timed; `ssm_kernel_diag` (S4D: the same Λ and B without the low-rank term, ZOH, "
    "Vandermonde) is a different kernel and is timed only. Memory is the compiled program's "
    "peak (temporaries + arguments + outputs)."
)


def naive_dense_kernel(Lambda, P, B, C, log_dt, length: int):
    """``K_l = 2 Re(C Ā^l B̄)`` by ``length`` dense mat-vec products (the baseline)."""
    Abar, Bbar = discretize_dplr(Lambda, P, B, log_dt)  # [H, N2, N2], [H, N2]

    def step(x, _):
        y = 2 * jnp.einsum("hn,hn->h", C, x).real  # [H]
        return jnp.einsum("hmn,hn->hm", Abar, x), y

    _, K = jax.lax.scan(step, Bbar, None, length=length)  # [L, H]
    return K.T  # [H, L]


def parameters():
    """(Λ, P, B, C, log Δ): LegS NPLR tiled over H channels, random C and Δ."""
    rng = np.random.default_rng(0)
    Lambda, P, B, _ = nplr_legs(STATE)
    tile = lambda x: jnp.asarray(np.broadcast_to(x, (CHANNELS, STATE // 2)), jnp.complex64)  # noqa: E731
    shape = (CHANNELS, STATE // 2)
    C = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * np.sqrt(0.5)
    log_dt = rng.uniform(np.log(1e-3), np.log(1e-1), CHANNELS)
    return (
        tile(Lambda),
        tile(P),
        tile(B),
        jnp.asarray(C, jnp.complex64),
        jnp.asarray(log_dt, jnp.float32),
    )


def run(quick: bool) -> harness.Section:
    section = harness.Section("s4_kernel", "S4 / S4D convolution kernels", ABOUT)
    lengths = (1024, 4096) if quick else (1024, 4096, 16384)
    repeats = 3 if quick else 5
    Lambda, P, B, C, log_dt = parameters()
    dplr_args, diag_args = (Lambda, P, B, C, log_dt), (Lambda, B, C, log_dt)

    table = section.table(
        "Kernel time and compiled peak memory (speed-up = naive time / time)",
        [
            "L",
            "naive ms",
            "dplr ms",
            "diag ms",
            "dplr speed-up",
            "diag speed-up",
            "dplr rel err",
            "naive MiB",
            "dplr MiB",
            "diag MiB",
        ],
    )
    plot = section.plot("s4_kernel_time", "S4 kernel time vs L", "L", "seconds")
    worst = 0.0
    for length in lengths:
        naive = lambda *a, L=length: naive_dense_kernel(*a, L)  # noqa: E731
        dplr = lambda *a, L=length: ssm_kernel_dplr(*a, L)  # noqa: E731
        diag = lambda *a, L=length: ssm_kernel_diag(*a, L)  # noqa: E731
        ref = np.asarray(jax.jit(naive)(*dplr_args))
        err = float(
            np.max(np.abs(np.asarray(jax.jit(dplr)(*dplr_args)) - ref)) / np.max(np.abs(ref))
        )
        worst = max(worst, err)
        naive_run = harness.time_jax(naive, *dplr_args, repeats=repeats)
        t_naive, m_naive = naive_run.timing, naive_run.peak_bytes
        diag_run = harness.time_jax(diag, *diag_args, repeats=repeats)
        t_diag, m_diag = diag_run.timing, diag_run.peak_bytes
        row = {
            "L": length,
            "naive ms": t_naive,
            "diag ms": t_diag,
            "diag speed-up": t_naive / t_diag,
            "dplr rel err": err,
            "naive MiB": harness.mib(m_naive),
            "diag MiB": harness.mib(m_diag),
        }
        plot.point("naive dense scan", length, t_naive.median)
        plot.point("diag (S4D)", length, t_diag.median)
        if err <= RTOL:
            dplr_run = harness.time_jax(dplr, *dplr_args, repeats=repeats)
            t_dplr, m_dplr = dplr_run.timing, dplr_run.peak_bytes
            row |= {"dplr ms": t_dplr, "dplr speed-up": t_naive / t_dplr}
            row["dplr MiB"] = harness.mib(m_dplr)
            plot.point("dplr (S4)", length, t_dplr.median)
        table.add(**row)
    section.target(
        "DPLR kernel matches the dense-power kernel",
        f"max rel err ≤ {RTOL:g} at every L",
        f"{worst:.1e}",
        worst <= RTOL,
        "" if worst <= RTOL else f"max rel err {worst:.1e}: DPLR not timed where it exceeds",
    )
    return section
