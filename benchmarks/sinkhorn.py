"""SinKD (``sinkhorn_kd``) vs POT's ``ot.sinkhorn`` on the same cost matrix, and vs forward KL.

For [N, V] logits (V = 32000, 3 × standard normal, float32; T = 2, ε = 0.1, 20 iterations):

1. the whole loss, value + gradient w.r.t. both logits: ``sinkhorn_kd`` (unrolled and implicit)
   against ``forward_kl``, with compiled peak memory;
2. the split: building W (forward, and its VJP) and the 20-iteration solve (value + gradient
   w.r.t. W) through ott vs the plain-JAX recursion (a ``fori_loop``) on the same W;
3. POT: host softmax (NumPy) + the L1 cost matrix on host (``scipy.spatial.distance.cdist``
   'cityblock' or a row-blocked NumPy loop, whichever measured faster) + ``ot.sinkhorn`` with
   all-ones marginals, ``reg`` = ε, ``numItermax`` = 20, ``stopThr`` = 0 on Wᵀ (POT scales
   columns first, SinKD rows first), value ⟨P, W⟩ — against the jitted ``sinkhorn_kd`` value on
   the same logits; values must agree to 1e-4 (relative) before POT is timed;
4. scaling of time and peak memory with N, and W's throughput (N²·V |a − b| terms forward,
   2·N²·V in the VJP) against a bound for the same elementwise work measured in the same run.

Targets: ``sinkhorn_kd`` value ≤ 1.5× POT + cost at N = 256 (issue); the ott solve ≤ 1.2× the
plain recursion; peak memory at N = 1024 under 2 GB (full mode).
"""

import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial import distance

from benchmarks import harness
from jaxdiv._divergences import forward_kl
from jaxdiv._sinkhorn import _l1_cost, _l1_cost_bwd, _sign, _solve_unrolled, sinkhorn_kd

V = 32000
EPSILON, NUM_ITERS, TEMPERATURE = 0.1, 20, 2.0
TARGET_N, TARGET_RATIO = 256, 1.5
SOLVE_RATIO, MEMORY_N, MEMORY_LIMIT = 1.2, 1024, 2 * 10**9
POT_RTOL = 1e-4
SOLVE_RTOL = 1e-4  # ott vs plain solve: value, and gradient relative to its largest entry
MAX_REPEATS = 20


def measure(call, *, allowance: float, min_repeats: int = 1, accept=None):
    """(Timing, output of the first call). The first call is the warm-up and sizes the repeats
    to about ``allowance`` seconds; a first call longer than that is itself the measurement
    when ``min_repeats`` is 1 (the program is compiled ahead of time: nothing left to warm).
    A first output that ``accept`` rejects is returned with no timing (None)."""
    outputs = []
    first = harness.time_call(lambda: outputs.append(call()), repeats=1, warmup=0)
    if accept is not None and not accept(outputs[0]):
        return None, outputs[0]
    if first.median >= allowance and min_repeats == 1:
        return first, outputs[0]
    repeats = min(MAX_REPEATS, max(min_repeats, round(allowance / first.median)))
    return harness.time_call(call, repeats=repeats, warmup=0), outputs[0]


def measure_jax(fn, *args, **kwargs):
    """(Timing, peak bytes, output) of ``jax.jit(fn)(*args)``."""
    compiled = harness.compile_jax(fn, *args)
    timing, out = measure(lambda: jax.block_until_ready(compiled(*args)), **kwargs)
    return timing, harness.peak_bytes(compiled), out


def measure_host(fn, *args, **kwargs):
    """(Timing, peak bytes, output) of a NumPy function: the inputs plus the most its first
    call held at once (``tracemalloc``, which sees NumPy's allocations)."""
    tracemalloc.start()
    try:
        timing, out = measure(lambda: fn(*args), **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return timing, peak + sum(getattr(a, "nbytes", 0) for a in args), out


# --------------------------------------------------------------------------------------------
# Baselines


def plain_recursion(w, epsilon, num_iters):
    """SinKD's recursion on the full plan, differentiated through the loop by jax.grad."""

    def step(_, p):
        p = p / jnp.sum(p, axis=1, keepdims=True)
        return p / jnp.sum(p, axis=0, keepdims=True)

    p = jax.lax.fori_loop(0, num_iters, step, jnp.exp(-w / epsilon))
    return jnp.sum(p * w)


def plain_solve(w):
    return plain_recursion(w, jnp.asarray(EPSILON, w.dtype), NUM_ITERS)


def ott_solve(w):
    """The solve inside ``sinkhorn_kd`` (unrolled mode)."""
    return _solve_unrolled(w, jnp.asarray(EPSILON, w.dtype), NUM_ITERS)[1]


def host_softmax(x):
    z = x / np.float32(TEMPERATURE)
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def cost_cdist(p_s, p_t):
    return distance.cdist(p_s, p_t, "cityblock")  # float64 [N, N]


def cost_blocked(p_s, p_t):
    """W one row at a time: an [N, V] temporary, never [N, N, V]."""
    w = np.empty((p_s.shape[0], p_t.shape[0]), np.float32)
    for i, row in enumerate(p_s):
        w[i] = np.abs(row - p_t).sum(axis=-1)
    return w


COSTS = {"cdist": cost_cdist, "blocked NumPy": cost_blocked}


def pot_solve(w):
    """⟨P, W⟩ after SinKD's 20 row-then-column normalisations, through POT.

    POT's ``sinkhorn_knopp`` updates v (columns) then u (rows) each iteration, the reverse of
    SinKD, so it gets Wᵀ; with all-ones marginals (SinKD's mass N, POT's u starts at 1/N, which
    the first v update absorbs) its plan is SinKD's Pᵀ in exact arithmetic.
    """
    import ot

    ones = np.ones(w.shape[0], w.dtype)
    plan = ot.sinkhorn(
        ones, ones, w.T, EPSILON, method="sinkhorn", numItermax=NUM_ITERS, stopThr=0.0, warn=False
    )
    return float(np.sum(plan * w.T))


def pot_value(s, t, cost):
    """(POT's SinKD value, the host cost matrix) from logits."""
    w = cost(host_softmax(s), host_softmax(t))
    return pot_solve(w), w


# --------------------------------------------------------------------------------------------
# Machine bounds for W's elementwise work: the same access pattern on a streaming operand


# [rows, cols] float32 operands of 16 MiB (held in L3), and one of 128 MiB streamed from DRAM.
BOUND_SHAPES, DRAM_SHAPE = ((4096, 1024), (16384, 256)), (32768, 1024)


def abs_rows(x, r):
    """W's forward pattern: |x − r| against a broadcast row, summed along the minor axis."""
    return jnp.sum(jnp.abs(x - r[None, :]), axis=-1)  # [R]


def sign_rows(x, c, g):
    """W's VJP pattern (``row_grad``): g·sign(c − x), a broadcast column and row, summed along
    the minor axis."""
    return jnp.sum(g[None, :] * _sign(c[:, None] - x), axis=-1)  # [R]


def bounds(allowance):
    """G terms/s of W's two elementwise patterns, the best of the ``BOUND_SHAPES`` layouts (held
    in L3), and of the forward pattern streamed from memory (``DRAM_SHAPE``)."""

    def rate(fn, shape, with_column):
        ks = jax.random.split(jax.random.key(7), 4)
        x = jax.random.uniform(ks[0], shape)
        row = jax.random.uniform(ks[1], shape[1:])
        args = (x, jax.random.uniform(ks[2], shape[:1]), row) if with_column else (x, row)
        timing = measure_jax(fn, *args, allowance=allowance / 2, min_repeats=5)[0]
        return x.size / timing.median / 1e9

    return {
        "|a − b|": max(rate(abs_rows, shape, False) for shape in BOUND_SHAPES),
        "g·sign(a − b)": max(rate(sign_rows, shape, True) for shape in BOUND_SHAPES),
        "stream": rate(abs_rows, DRAM_SHAPE, False),
    }


# --------------------------------------------------------------------------------------------


def losses():
    """(forward_kl, unrolled, implicit, value-only) functions of (student, teacher) logits."""
    both = (0, 1)
    kl = jax.value_and_grad(
        lambda s, t: jnp.mean(forward_kl(s, t, temperature=TEMPERATURE)), argnums=both
    )

    def skd(s, t, **kwargs):
        return sinkhorn_kd(s, t, temperature=TEMPERATURE, epsilon=EPSILON, **kwargs)

    unrolled = jax.value_and_grad(lambda s, t: skd(s, t, num_iters=NUM_ITERS), argnums=both)
    implicit = jax.value_and_grad(lambda s, t: skd(s, t, mode="implicit"), argnums=both)
    value = lambda s, t: skd(s, t, num_iters=NUM_ITERS)  # noqa: E731
    return kl, unrolled, implicit, value


def rel(a, b) -> float:
    return abs(float(a) - float(b)) / abs(float(b))


def run(quick: bool) -> harness.Section:
    scaling_ns = (32, 64, 128, 256) if quick else (32, 64, 128, 256, 512, 1024)
    table_ns = (32, 256) if quick else (32, 256, 1024)
    allowance = 1.0 if quick else 3.0
    have_pot = harness.have("ot")
    section = harness.Section(
        "sinkhorn",
        "SinKD (sinkhorn_kd) vs POT and forward KL",
        f"`sinkhorn_kd` (T = {TEMPERATURE:g}, ε = {EPSILON:g}, {NUM_ITERS} iterations, kernel "
        f"mode) on [N, V] logits, V = {V}, 3 × standard normal, float32, N = "
        f"{', '.join(map(str, scaling_ns))}. (1) The whole loss, value + gradient w.r.t. both "
        "logits, unrolled and implicit, vs `forward_kl` (mean over rows) on the same logits; "
        "(2) its parts: building W (forward; VJP) and the solve (value + gradient w.r.t. W) "
        "through ott vs the plain-JAX recursion (a `fori_loop` differentiated by `jax.grad`); "
        "(3) the peer POT (`ot.sinkhorn`, NumPy "
        "backend, no gradients): host softmax + the L1 cost on host + `ot.sinkhorn(ones, ones, "
        f"Wᵀ, reg={EPSILON:g}, numItermax={NUM_ITERS}, stopThr=0)` and ⟨P, W⟩ — the same "
        "problem (all-ones marginals, the same 20 row-then-column scalings: POT scales columns "
        "first, hence Wᵀ), checked to agree with the jitted `sinkhorn_kd` value to "
        f"{POT_RTOL:g} (relative) before POT is timed; (4) W's throughput (N²·V |a − b| terms "
        "forward, 2·N²·V sign terms in the VJP) against the same elementwise pattern on a "
        "streaming 16 MiB operand held in L3, in the same run. Peak memory: "
        "XLA's compiled temporaries + arguments + outputs; for POT the host inputs plus "
        "`tracemalloc`'s peak during a call. The first call of each program is its warm-up "
        f"and sets the number of timed calls (about {allowance:g} s each, at least 3 for the "
        f"N = {TARGET_N} target); a first call longer than that is itself the (single) timing.",
    )
    loss_table = section.table(
        "Loss value + gradient w.r.t. both logits (ratio vs forward_kl)",
        ["N", "what", "time", "×forward_kl", "peak MiB"],
    )
    split_table = section.table(
        "Split: building W and the solve (solve ratio vs the plain recursion)",
        ["N", "what", "time", "ratio", "peak MiB"],
    )
    pot_table = section.table(
        "sinkhorn_kd value vs POT + cost on the same logits",
        [
            "N",
            "ours (value)",
            "POT + cost",
            "×POT",
            "of which ot.sinkhorn",
            "ours value+grad",
            "value ours",
            "value POT",
            "rel. diff",
        ],
    )
    w_table = section.table(
        "W throughput (G terms/s; bound: the same elementwise pattern on an L3-resident operand)",
        ["N", "pass", "G terms", "time", "G terms/s", "bound G terms/s", "×bound"],
    )
    time_plot = section.plot("sinkhorn_time", "SinKD time vs N (V = 32000)", "N", "seconds")
    memory_plot = section.plot("sinkhorn_memory", "SinKD peak memory vs N", "N", "MiB")

    bound = bounds(allowance)
    cost_name = None
    if not have_pot:
        section.note("skipped POT: `pot` not installed (pip install -e '.[bench]')")
    else:
        import ot

        # Pick the host cost implementation at N = 64 (both do N²·V terms).
        rng = np.random.default_rng(0)
        p_s = host_softmax(3 * rng.standard_normal((64, V), np.float32))
        p_t = host_softmax(3 * rng.standard_normal((64, V), np.float32))
        picks = {}
        for name, cost in COSTS.items():
            call = lambda c=cost: c(p_s, p_t)  # noqa: E731
            picks[name] = measure(call, allowance=allowance / 2, min_repeats=3)[0]
        cost_name = min(picks, key=lambda k: picks[k].median)
        section.note(
            "POT's `sinkhorn_knopp` starts from u = 1/N and updates v = b / Kᵀu then u = a / Kv; "
            "on Wᵀ with a = b = 1 that is SinKD's row-then-column scaling exactly (the first "
            "update absorbs the 1/N). POT's default uniform marginals 1/N would give the plan "
            "over N (and the value over N). The remaining difference is rounding: `sinkhorn_kd` "
            "builds W in float32."
        )
        section.note(
            f"POT {ot.__version__}; host L1 cost at N = 64: "
            + ", ".join(f"{k} {v.median * 1e3:.0f} ms" for k, v in picks.items())
            + f"; POT uses {cost_name} "
            + ("(float64 output, so POT iterates in float64)." if cost_name == "cdist" else ".")
        )

    results, solve_diffs = {}, []
    for n in scaling_ns:
        ks, kt, kg = jax.random.split(jax.random.key(n), 3)
        s = 3.0 * jax.random.normal(ks, (n, V))
        t = 3.0 * jax.random.normal(kt, (n, V))
        kl, unrolled, implicit, value = losses()
        headline = 3 if n == TARGET_N else 1
        r = results[n] = {}
        r["kl"] = measure_jax(kl, s, t, allowance=allowance)
        r["unrolled"] = measure_jax(unrolled, s, t, allowance=allowance)
        r["value"] = measure_jax(value, s, t, allowance=allowance, min_repeats=headline)
        for key, label in (("unrolled", "sinkhorn_kd value+grad"), ("kl", "forward_kl value+grad")):
            time_plot.point(label, n, r[key][0].median)
            memory_plot.point(label, n, harness.mib(r[key][1]))
        time_plot.point("sinkhorn_kd value", n, r["value"][0].median)
        memory_plot.point("sinkhorn_kd value", n, harness.mib(r["value"][1]))

        if have_pot:
            s_host, t_host = np.asarray(s), np.asarray(t)
            ours = float(r["value"][2])
            pot_timing, pot_peak, (pot, w_host) = measure_host(
                pot_value,
                s_host,
                t_host,
                COSTS[cost_name],
                allowance=allowance,
                min_repeats=headline,
                accept=lambda out, ours=ours: rel(ours, out[0]) <= POT_RTOL,
            )
            row = {"N": n, "ours (value)": r["value"][0], "ours value+grad": r["unrolled"][0]}
            row |= {"value ours": ours, "value POT": pot, "rel. diff": rel(ours, pot)}
            if pot_timing is None:
                section.target(
                    f"POT value matches at N = {n}",
                    f"≤ {POT_RTOL:g} relative",
                    f"{rel(ours, pot):.1e}",
                    False,
                    "the two solvers disagree; POT not timed",
                )
            else:
                solve_only = measure(lambda w=w_host: pot_solve(w), allowance=allowance / 4)[0]
                r["pot"], r["pot_solve"] = pot_timing, solve_only
                row |= {"POT + cost": pot_timing, "×POT": r["value"][0] / pot_timing}
                row["of which ot.sinkhorn"] = solve_only
                time_plot.point("POT + cost value", n, pot_timing.median)
                memory_plot.point("POT + cost value", n, harness.mib(pot_peak))
            pot_table.add(**row)

        if n not in table_ns:
            continue
        base = r["kl"][0]
        loss_table.add(
            N=n,
            what="forward_kl (baseline)",
            time=base,
            **{"×forward_kl": 1.0},
            **{"peak MiB": harness.mib(r["kl"][1])},
        )
        r["implicit"] = measure_jax(implicit, s, t, allowance=allowance)
        for key, label in (
            ("unrolled", "sinkhorn_kd unrolled"),
            ("implicit", "sinkhorn_kd implicit"),
        ):
            timing, peak, _ = r[key]
            loss_table.add(
                N=n,
                what=label,
                time=timing,
                **{"×forward_kl": timing / base},
                **{"peak MiB": harness.mib(peak)},
            )

        p_s = jax.nn.softmax(s / TEMPERATURE, axis=-1)
        p_t = jax.nn.softmax(t / TEMPERATURE, axis=-1)
        cot = jax.random.normal(kg, (n, n))
        w_fwd = measure_jax(_l1_cost, p_s, p_t, allowance=allowance)
        w_vjp = measure_jax(
            lambda a, b, g: _l1_cost_bwd((a, b), g), p_s, p_t, cot, allowance=allowance
        )
        w = w_fwd[2]
        plain = measure_jax(
            jax.value_and_grad(plain_solve),
            w,
            allowance=allowance,
            min_repeats=5,
        )
        ott = measure_jax(
            jax.value_and_grad(ott_solve),
            w,
            allowance=allowance,
            min_repeats=5,
        )
        solve_diff = max(
            rel(ott[2][0], plain[2][0]),
            float(jnp.max(jnp.abs(ott[2][1] - plain[2][1])) / jnp.max(jnp.abs(plain[2][1]))),
        )
        for label, (timing, peak, _), ratio in (
            ("build W: forward", w_fwd, None),
            ("build W: VJP", w_vjp, None),
            ("solve: plain-JAX recursion (baseline)", plain, 1.0),
            ("solve: ott (sinkhorn_kd path)", ott, ott[0] / plain[0]),
        ):
            split_table.add(
                N=n, what=label, time=timing, ratio=ratio, **{"peak MiB": harness.mib(peak)}
            )
        r["ott"], r["plain"], r["w_fwd"] = ott, plain, w_fwd[0]
        solve_diffs.append(f"N = {n}: {solve_diff:.1e}")
        if solve_diff > SOLVE_RTOL:
            section.target(
                f"ott solve matches the plain recursion, N = {n}",
                f"≤ {SOLVE_RTOL:g}",
                f"{solve_diff:.1e}",
                False,
                "value or gradient w.r.t. W differs (relative to the largest entry)",
            )

        for label, timing, terms, bound_key in (
            ("forward |a − b|", w_fwd[0], n * n * V, "|a − b|"),
            ("VJP g·sign(a − b)", w_vjp[0], 2 * n * n * V, "g·sign(a − b)"),
        ):
            rate = terms / timing.median / 1e9
            r[label] = rate
            w_table.add(
                N=n,
                **{
                    "pass": label,
                    "G terms": terms / 1e9,
                    "time": timing,
                    "G terms/s": rate,
                    "bound G terms/s": bound[bound_key],
                    "×bound": rate / bound[bound_key],
                },
            )

    # Targets
    big = max(table_ns)
    r = results[TARGET_N]
    if "pot" in r:
        ratio = r["value"][0] / r["pot"]
        pot_cost = r["pot"].median - r["pot_solve"].median
        rates = (
            f"at N = {TARGET_N}, W forward {r['forward |a − b|']:.2f} G terms/s (L3 bound "
            f"{bound['|a − b|']:.2f}); POT's host softmax + {cost_name} cost together "
            f"{TARGET_N**2 * V / pot_cost / 1e9:.2f} G terms/s, its `ot.sinkhorn` "
            f"{r['pot_solve'].median * 1e3:.2f} ms"
        )
        section.note(f"Where the time goes: {rates}.")
        met = ratio <= TARGET_RATIO
        section.target(
            f"sinkhorn_kd value vs POT + cost, N = {TARGET_N}",
            f"≤ {TARGET_RATIO:g}×",
            f"{ratio:.2f}×",
            met,
            "" if met else rates,
        )
    ott_ratio = results[big]["ott"][0] / results[big]["plain"][0]
    section.target(
        f"ott solve vs plain recursion (value + grad w.r.t. W), N = {big}",
        f"≤ {SOLVE_RATIO:g}×",
        f"{ott_ratio:.2f}×",
        ott_ratio <= SOLVE_RATIO,
        ""
        if ott_ratio <= SOLVE_RATIO
        else f"ott {results[big]['ott'][0].median * 1e3:.1f} ms vs plain "
        f"{results[big]['plain'][0].median * 1e3:.1f} ms",
    )
    if MEMORY_N in results:
        peak = results[MEMORY_N]["unrolled"][1]
        section.target(
            f"sinkhorn_kd value+grad peak memory, N = {MEMORY_N}",
            f"< {MEMORY_LIMIT / 1e9:g} GB",
            f"{peak / 1e9:.2f} GB",
            peak < MEMORY_LIMIT,
            ""
            if peak < MEMORY_LIMIT
            else f"compiled temporaries + arguments + outputs {peak / 1e9:.2f} GB",
        )
    else:
        section.note(f"peak-memory target (N = {MEMORY_N} < 2 GB) is measured in full mode only.")
    section.note(
        "ott solve vs the plain recursion (value rel. diff, or gradient max |diff| over its "
        f"largest entry, whichever is larger; tolerance {SOLVE_RTOL:g}): " + "; ".join(solve_diffs)
    )
    section.note(
        "Bounds in this run (W's access patterns on one streaming float32 operand of 16 MiB, "
        "held in L3, reduced along its minor axis; the faster of shapes "
        f"{' and '.join(map(str, BOUND_SHAPES))}): forward "
        f"sum |x − r| {bound['|a − b|']:.2f} G terms/s, VJP sum g·sign(c − x) "
        f"{bound['g·sign(a − b)']:.2f} G terms/s (sign as x/(|x| + tiny), as in `_l1_cost`'s "
        f"VJP); the forward pattern streamed from memory ({DRAM_SHAPE}) "
        f"{bound['stream']:.2f} G terms/s. ×bound = W's rate over the L3 bound (a ratio near or "
        "above 1 means W runs at the speed of its elementwise work)."
    )
    return section
