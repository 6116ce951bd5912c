"""``fused_linear_divergence`` vs the divergence of materialised logits (value + gradients).

Both sides compute the mean forward KL of ``student_hidden @ student_weight`` against a frozen
teacher's ``teacher_hidden @ teacher_weight`` and its gradient w.r.t. the student hidden states
and LM head; the fused one in row chunks of 1024 (no [N, V] logits at once). The outputs must
agree before anything is timed. Peak memory is the compiled program's temporaries + arguments +
outputs. Targets (issue), stated for N = 8192, d = 256, V = 32000 (full mode; quick mode measures
N = 2048 and says so): peak memory ≤ 0.25× the unfused computation, time ≤ 1.3×.
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxdiv
from benchmarks import harness

D, V, CHUNK = 256, 32000, 1024  # CHUNK: at N = TARGET_N; quick mode keeps CHUNK / N
TARGET_N, TIME_RATIO, MEMORY_RATIO = 8192, 1.3, 0.25
VALUE_RTOL, GRAD_RTOL = 1e-5, 1e-4  # value relative; gradients relative to the largest entry


def loss(fused: bool, chunk: int, hs, ws, ht, wt):
    """Mean forward KL over rows; the teacher is frozen."""
    ht, wt = jax.lax.stop_gradient(ht), jax.lax.stop_gradient(wt)
    if fused:
        per_row = jaxdiv.fused_linear_divergence(hs, ws, ht, wt, chunk_size=chunk)
    else:
        per_row = jaxdiv.forward_kl(hs @ ws, ht @ wt)
    return jnp.mean(per_row)


def value_and_grads(fused: bool, chunk: int):
    return jax.value_and_grad(lambda *a: loss(fused, chunk, *a), argnums=(0, 1))


def mismatch(out, ref) -> float:
    """Largest of the value's relative difference and each gradient's max |difference| over its
    largest entry."""
    (value, grads), (ref_value, ref_grads) = out, ref
    errs = [abs(float(value) - float(ref_value)) / abs(float(ref_value))]
    for g, r in zip(grads, ref_grads, strict=True):
        g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
        errs.append(float(np.max(np.abs(g - r)) / np.max(np.abs(r))))
    return max(errs)


def run(quick: bool) -> harness.Section:
    n = 2048 if quick else TARGET_N
    repeats = 2 if quick else 3
    chunk = CHUNK * n // TARGET_N  # the same fraction of the rows per chunk in both modes
    at = f"N = {n}, d = {D}, V = {V}"
    section = harness.Section(
        "fused",
        "fused_linear_divergence vs materialised logits",
        f"Mean forward KL of student logits `h_s @ W_s` against teacher logits `h_t @ W_t` "
        f"({at}, float32, chunk {chunk}) and its gradient w.r.t. `h_s` and `W_s` (teacher under "
        "`stop_gradient`): `fused_linear_divergence` (row chunks under `jax.checkpoint`, no "
        "[N, V] logits at once) vs `forward_kl` of the materialised [N, V] logits, both jitted "
        "in this process. Outputs agree to "
        f"{VALUE_RTOL:g} (value, relative) and {GRAD_RTOL:g} (gradients, max |diff| over the "
        f"largest entry) before timing; times are medians of {repeats} calls after a warm-up; "
        "peak memory is XLA's compiled temporaries + arguments + outputs. The targets are stated "
        f"for N = {TARGET_N}"
        + (
            f"; quick mode measures N = {n} with chunk {chunk} (the same rows per chunk, 1/8)."
            if quick
            else "."
        ),
    )
    keys = jax.random.split(jax.random.key(0), 4)
    inputs = (
        jax.random.normal(keys[0], (n, D)),
        jax.random.normal(keys[1], (D, V)) * D**-0.5,
        jax.random.normal(keys[2], (n, D)),
        jax.random.normal(keys[3], (D, V)) * D**-0.5,
    )
    plain = harness.time_jax(value_and_grads(False, chunk), *inputs, repeats=repeats)
    fused = harness.time_jax(value_and_grads(True, chunk), *inputs, repeats=repeats)
    t_plain, m_plain, out_plain = plain.timing, plain.peak_bytes, plain.out
    t_fused, m_fused, out_fused = fused.timing, fused.peak_bytes, fused.out
    err = mismatch(out_fused, out_plain)
    table = section.table(
        f"Forward KL value + student gradients, {at}",
        ["computation", "time", "peak MiB", "time ratio", "memory ratio"],
    )
    tol = max(VALUE_RTOL, GRAD_RTOL)
    if err > tol:
        section.target("outputs match", f"≤ {tol:g}", f"{err:.1e}", False, "fused ≠ unfused")
        return section  # the timings of a mismatch are not reported
    section.note(f"fused vs unfused: largest relative difference {err:.1e}.")
    table.add(
        computation="unfused (materialised logits)",
        time=t_plain,
        **{"peak MiB": harness.mib(m_plain), "time ratio": 1.0, "memory ratio": 1.0},
    )
    table.add(
        computation="fused_linear_divergence",
        time=t_fused,
        **{
            "peak MiB": harness.mib(m_fused),
            "time ratio": t_fused / t_plain,
            "memory ratio": m_fused / m_plain,
        },
    )
    suffix = "" if n == TARGET_N else f" (quick: N = {n}; stated for N = {TARGET_N})"
    time_ratio, memory_ratio = t_fused / t_plain, m_fused / m_plain
    why_slow = ""
    if time_ratio > TIME_RATIO:  # what the extra time is: the recomputed logit matmuls?
        t_mm = harness.time_jax(lambda a, b, c, d: (a @ b, c @ d), *inputs, repeats=2).timing
        why_slow = (
            f"fused − unfused = {(t_fused.median - t_plain.median) * 1e3:.0f} ms; the two "
            f"[{n}, {D}] @ [{D}, {V}] logit matmuls that the fused backward pass recomputes "
            f"take {t_mm.median * 1e3:.0f} ms on their own"
        )
    # Arguments + outputs are the same for both; the rest is temporaries.
    io = sum(x.nbytes for x in inputs) + sum(x.nbytes for x in jax.tree.leaves(out_plain))
    chunk_logits = chunk * V * 4
    why_big = (
        f"fused {harness.mib(m_fused):.0f} MiB = arguments + outputs {harness.mib(io):.0f} MiB + "
        f"temporaries {harness.mib(m_fused - io):.0f} MiB "
        f"({(m_fused - io) / chunk_logits:.1f}× one [{chunk}, {V}] float32 logits chunk); "
        f"unfused temporaries {harness.mib(m_plain - io):.0f} MiB"
    )
    section.target(
        f"time vs unfused{suffix}",
        f"≤ {TIME_RATIO:g}×",
        f"{time_ratio:.2f}×",
        time_ratio <= TIME_RATIO,
        why_slow,  # empty when met
    )
    section.target(
        f"peak memory vs unfused{suffix}",
        f"≤ {MEMORY_RATIO:g}×",
        f"{memory_ratio:.3f}×",
        memory_ratio <= MEMORY_RATIO,
        "" if memory_ratio <= MEMORY_RATIO else why_big,
    )
    return section
