r"""Core divergences vs ``optax.losses`` and plain NumPy: value + gradient in the student logits.

``forward_kl``, ``reverse_kl`` and ``generalized_jsd`` (β = 0.5) on [4, 256, 32000] logits (quick)
or [8, 512, 32000] (full, float32 and bfloat16): the mean over rows and its gradient in the student
logits, jitted, against the same computation written with ``optax.losses.kl_divergence`` /
``kl_divergence_with_log_targets`` (jitted too; the JSD composed of two optax KLs with a log-space
mixture) and against NumPy float32 on host arrays with the analytic gradient
(:math:`\nabla_s \mathrm{KL}(p_t\|p_s) = p_s - p_t`, :math:`\nabla_s \mathrm{KL}(p_s\|p_t) =
p_s \odot (f - \langle p_s, f\rangle)` with :math:`f = \log p_s - \log p_t`, and for the JSD the
same form with :math:`f = (1-\beta)\log(p_s/m)`, all over the number of rows). Every peer's value
and gradient are checked against ours before anything is timed. "temps" is the compiled
temporary memory in units of one float32 [N, V] array (the gradient output is not a temporary).
No targets: the ratios are for reading.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxdiv
from benchmarks import harness

BETA = 0.5
VALUE_RTOL = 1e-4  # relative difference of the mean divergence
GRAD_RTOL = {"float32": 1e-3, "bfloat16": 2e-2}  # max abs difference / largest gradient entry


# --------------------------------------------------------------------------------------------
# optax (jitted), float32 math like ours


def optax_forward_kl(s, t):
    s, t = s.astype(jnp.float32), t.astype(jnp.float32)
    return optax.losses.kl_divergence(jax.nn.log_softmax(s), jax.nn.softmax(t))


def optax_reverse_kl(s, t):
    s, t = s.astype(jnp.float32), t.astype(jnp.float32)
    return optax.losses.kl_divergence_with_log_targets(jax.nn.log_softmax(t), jax.nn.log_softmax(s))


def optax_jsd(s, t):
    log_p_s = jax.nn.log_softmax(s.astype(jnp.float32))
    log_p_t = jax.nn.log_softmax(t.astype(jnp.float32))
    log_m = jnp.logaddexp(jnp.log(BETA) + log_p_t, jnp.log1p(-BETA) + log_p_s)
    kl = optax.losses.kl_divergence_with_log_targets
    return BETA * kl(log_m, log_p_t) + (1 - BETA) * kl(log_m, log_p_s)


# --------------------------------------------------------------------------------------------
# NumPy float32 on host: (mean over rows, gradient in the student logits)


def _np_log_softmax(x):
    z = x - x.max(axis=-1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return z


def _np_inputs(s, t):
    s, t = s.astype(np.float32, copy=False), t.astype(np.float32, copy=False)
    return _np_log_softmax(s), _np_log_softmax(t), s.size // s.shape[-1]


def _np_softmax_vjp(p_s, f, rows):
    """Gradient in the logits of mean_rows <p_s, f> when d<p_s, f>/dp_s = f + const."""
    return p_s * (f - np.sum(p_s * f, axis=-1, keepdims=True)) / np.float32(rows)


def numpy_forward_kl(s, t):
    log_p_s, log_p_t, rows = _np_inputs(s, t)
    p_s, p_t = np.exp(log_p_s), np.exp(log_p_t)
    value = np.sum(p_t * (log_p_t - log_p_s)) / rows
    return value, (p_s - p_t) / np.float32(rows)


def numpy_reverse_kl(s, t):
    log_p_s, log_p_t, rows = _np_inputs(s, t)
    p_s, f = np.exp(log_p_s), log_p_s - log_p_t
    return np.sum(p_s * f) / rows, _np_softmax_vjp(p_s, f, rows)


def numpy_jsd(s, t):
    log_p_s, log_p_t, rows = _np_inputs(s, t)
    p_s, p_t = np.exp(log_p_s), np.exp(log_p_t)
    log_m = np.log(np.float32(BETA) * p_t + np.float32(1 - BETA) * p_s)
    value = BETA * np.sum(p_t * (log_p_t - log_m)) + (1 - BETA) * np.sum(p_s * (log_p_s - log_m))
    f = np.float32(1 - BETA) * (log_p_s - log_m)  # d JSD / d p_s (the +1 terms cancel)
    return value / rows, _np_softmax_vjp(p_s, f, rows)


DIVERGENCES = (
    ("forward_kl", jaxdiv.forward_kl, optax_forward_kl, numpy_forward_kl),
    ("reverse_kl", jaxdiv.reverse_kl, optax_reverse_kl, numpy_reverse_kl),
    ("generalized_jsd", jaxdiv.generalized_jsd, optax_jsd, numpy_jsd),
)


def value_and_student_grad(fn):
    return jax.value_and_grad(lambda s, t: jnp.mean(fn(s, t)))


def mismatch(value, grad, ref_value, ref_grad) -> tuple[float, float]:
    """(relative value difference, max abs gradient difference / largest reference entry)."""
    value, ref_value = float(value), float(ref_value)
    grad, ref_grad = np.asarray(grad, np.float64), np.asarray(ref_grad, np.float64)
    grad_err = np.max(np.abs(grad - ref_grad)) / np.max(np.abs(ref_grad))
    return abs(value - ref_value) / abs(ref_value), float(grad_err)


def run(quick: bool) -> harness.Section:
    shape = (4, 256, 32000) if quick else (8, 512, 32000)
    dtypes = (jnp.float32,) if quick else (jnp.float32, jnp.bfloat16)
    repeats, np_repeats = (2, 2) if quick else (5, 3)
    unit = math.prod(shape) * 4  # one float32 [N, V] array
    section = harness.Section(
        "losses",
        "Core divergences vs optax and NumPy",
        f"Mean over rows and its gradient in the student logits of `forward_kl`, `reverse_kl` and "
        f"`generalized_jsd` (β = {BETA}) on logits {list(shape)} (3 × standard normal; "
        f"{', '.join(jnp.dtype(d).name for d in dtypes)}). Peers: the same quantity from "
        "`optax.losses.kl_divergence` (forward KL) and `kl_divergence_with_log_targets` "
        "(reverse KL; the JSD as two of them against a `logaddexp` mixture), jitted, float32 "
        "math; and a plain NumPy float32 implementation on host arrays (log-softmax, then the "
        "value and the analytic student gradient with NumPy ops, single call, no JAX). "
        "bfloat16 inputs are cast to float32 inside every implementation (inside the timed "
        "NumPy call too). Times are medians of repeated calls after a warm-up; ×optax and "
        "×NumPy are jaxdiv's time over the peer's. temps: compiled temporaries in units of one "
        f"float32 [N, V] array ({harness.mib(unit):.0f} MiB); NumPy's are not measured.",
    )
    table = section.table(
        "Value + student gradient",
        [
            "divergence",
            "dtype",
            "jaxdiv",
            "optax",
            "NumPy",
            "×optax",
            "×NumPy",
            "temps jaxdiv",
            "temps optax",
        ],
    )
    checks = section.table(
        "Agreement with jaxdiv (checked before timing)",
        ["divergence", "dtype", "peer", "value rel. diff", "grad diff / max |grad|", "ok"],
    )
    ks, kt = jax.random.split(jax.random.key(0))
    for dtype in dtypes:
        name_dtype = jnp.dtype(dtype).name
        s = (3 * jax.random.normal(ks, shape)).astype(dtype)
        t = (3 * jax.random.normal(kt, shape)).astype(dtype)
        s_host, t_host = np.asarray(s), np.asarray(t)
        for name, ours, optax_fn, numpy_fn in DIVERGENCES:
            mine = harness.time_jax(value_and_student_grad(ours), s, t, repeats=repeats)
            t_ours, m_ours, (value, grad) = mine.timing, mine.temp_bytes, mine.out
            row = {"divergence": name, "dtype": name_dtype, "jaxdiv": t_ours}
            row["temps jaxdiv"] = m_ours / unit

            theirs = harness.time_jax(value_and_student_grad(optax_fn), s, t, repeats=repeats)
            t_optax, m_optax, (o_value, o_grad) = theirs.timing, theirs.temp_bytes, theirs.out
            n_out = numpy_fn(s_host, t_host)
            tol = GRAD_RTOL[name_dtype]
            for peer, (p_value, p_grad) in (("optax", (o_value, o_grad)), ("NumPy", n_out)):
                v_err, g_err = mismatch(value, grad, p_value, p_grad)
                ok = v_err <= VALUE_RTOL and g_err <= tol
                checks.add(
                    divergence=name,
                    dtype=name_dtype,
                    peer=peer,
                    **{"value rel. diff": v_err, "grad diff / max |grad|": g_err, "ok": ok},
                )
                if not ok:
                    section.target(
                        f"{name} {name_dtype}: {peer} matches",
                        f"value ≤ {VALUE_RTOL:g} rel., grad ≤ {tol:g} of max",
                        f"value {v_err:.1e}, grad {g_err:.1e}",
                        False,
                        "outputs differ; the peer is not timed",
                    )
                    continue
                if peer == "optax":
                    row |= {"optax": t_optax, "×optax": t_ours / t_optax}
                    row["temps optax"] = m_optax / unit
                else:
                    t_numpy = harness.time_call(
                        lambda f=numpy_fn, a=s_host, b=t_host: f(a, b), repeats=np_repeats, warmup=0
                    )
                    row |= {"NumPy": t_numpy, "×NumPy": t_ours / t_numpy}
            table.add(**row)
    section.note(
        f"Tolerances: value {VALUE_RTOL:g} relative; gradient max |difference| ≤ "
        + ", ".join(f"{k} {v:g}" for k, v in GRAD_RTOL.items())
        + " of its largest entry (bfloat16 gradients are rounded to bfloat16, 2⁻⁸ relative)."
    )
    section.note(
        f"Timed calls: jaxdiv and optax {repeats}, NumPy {np_repeats}, each after one untimed "
        "call (the one whose output the agreement check uses). NumPy runs on one thread, XLA "
        "on all cores."
    )
    return section
