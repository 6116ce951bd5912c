"""Causal linear attention (chunked, recurrent, parallel) vs softmax attention and PyTorch CPU.

Forward+backward (the gradient in q, k, v of sum(o·w)) at B=1, H=4, dk=dv=64 of
``linear_attention`` without decay (``o_t = s q_t S_t``, ``S_t = S_{t-1} + k_tᵀ v_t``,
s = dk^−½) against ``softmax_attention`` and two PyTorch CPU implementations of the same
recurrence written here, both differentiated by autograd: a Python loop over time steps with
an [B, H, dk, dv] state (1 thread: its per-step ops are too small to split, and 2 threads
measured 0.5–36 s a call at L=4k on the shared 2-core machine against 0.5–0.8 s with 1), and a
chunked form on 1 and 2 threads (chunk 64: masked matmul inside each chunk plus the exclusive
prefix sum of the chunk states). Each peer's output and gradients must match ours to 1e-4
(relative to the largest entry) at L=256 before it is timed.
Also the old ``bench_linear_attention`` measurements: ``chunk_size`` with no and per-head decay,
and softmax attention's blockwise (flash) implementation against its dense reference on this CPU
(forward+backward time and compiled temporaries, causal, same process).
Targets: chunked ≥ 10× faster than the PyTorch loop at L=4k; chunked ≥ 4× faster than our
recurrent ``lax.scan`` at L=4k; (full) chunked time(16k) ≤ 4.5 × time(4k).
"""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from jaxdiv.models.attention.linear import linear_attention
from jaxdiv.models.attention.softmax import softmax_attention

# B batch, L length, H heads, K key dim, V value dim, N chunks, C chunk length

BATCH, HEADS, DIM, CHUNK = 1, 4, 64, 64
CHECK_LENGTH, RTOL = 256, 1e-4
TORCH_LOOP_CAP_S = 60.0  # don't run a PyTorch loop call estimated to take longer
SLOW_CALL_S = 2.0  # in quick mode, a call slower than this is timed once after its warm-up
LOOP_THREADS = 1  # PyTorch threads of the time loop (2 threads: full mode, up to 4k)

ABOUT = (
    f"Forward+backward (gradient in q, k, v of sum(o·w)) of causal linear attention without "
    f"decay at B={BATCH}, H={HEADS}, dk=dv={DIM}, float32: our `linear_attention` "
    f"(`chunked` with chunk {CHUNK}, the `recurrent` `lax.scan` and the quadratic `parallel` "
    "form up to 4k), our `softmax_attention` (up to 8k; it computes a different function, so "
    "it is timed, not checked) and two PyTorch CPU peers written in the benchmark, "
    "differentiated by autograd: a Python loop over time steps carrying an [B, H, dk, dv] "
    f"state ({LOOP_THREADS} thread: its per-step ops are too small to split, and 2 threads "
    "measured slower and far less stable on this shared 2-core machine; 2 threads are timed "
    "too in full mode up to 4k), and a chunked form on 1 and on 2 threads (chunk "
    f"{CHUNK}: masked q kᵀ inside each chunk plus the exclusive prefix sum of the chunk states "
    "kᵀv). Every peer's output and gradients must "
    f"match ours to {RTOL:g} (max abs difference relative to the largest entry) at "
    f"L={CHECK_LENGTH} before it is timed. JAX functions are jitted and timed after a warm-up "
    "call; peak memory is the compiled program's (temporaries + arguments + outputs); the "
    "PyTorch peers' memory is not measured."
)


def inputs(length: int, decay: bool = False):
    """q, k, v, w [B, L, H, D] and (with ``decay``) a per-head log decay [B, L, H]."""
    keys = jax.random.split(jax.random.key(0), 5)
    q, k, v, w = (jax.random.normal(key, (BATCH, length, HEADS, DIM)) for key in keys[:4])
    g = -jax.nn.softplus(jax.random.normal(keys[4], (BATCH, length, HEADS))) if decay else None
    return q, k, v, w, g


def jax_grad(method: str, chunk_size: int = CHUNK):
    """The gradient in (q, k, v) of sum(o·w) for one of our methods (or ``"softmax"``)."""

    def loss(q, k, v, w, g):
        if method == "softmax":
            return jnp.sum(softmax_attention(q, k, v) * w)
        o = linear_attention(q, k, v, log_decay=g, method=method, chunk_size=chunk_size)
        return jnp.sum(o * w)

    return jax.grad(loss, argnums=(0, 1, 2))


def torch_recurrent(torch, q, k, v):
    """o_t = s q_t S_t, S_t = S_{t−1} + k_tᵀ v_t by a Python loop over t; [B, L, H, V]."""
    B, _, H, K = q.shape
    q = q * K**-0.5
    state = q.new_zeros(B, H, K, v.shape[-1])  # [B, H, K, V]
    outputs = []
    for q_t, k_t, v_t in zip(q.unbind(1), k.unbind(1), v.unbind(1), strict=True):
        state = state + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)  # [B, H, K, V]
        outputs.append((q_t.unsqueeze(-2) @ state).squeeze(-2))  # [B, H, V]
    return torch.stack(outputs, 1)  # [B, L, H, V]


def torch_chunked(torch, q, k, v, chunk: int = CHUNK):
    """The same recurrence in chunks: masked q kᵀ inside, prefix-summed k_cᵀ v_c across."""
    B, L, H, K = q.shape
    V, pad = v.shape[-1], -L % chunk
    n = (L + pad) // chunk

    def chunks(x):  # [B, L, H, D] -> [B, N, H, C, D], zero padded
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
        return x.reshape(B, n, chunk, H, x.shape[-1]).transpose(2, 3)

    q, k, v = chunks(q * K**-0.5), chunks(k), chunks(v)
    mask = torch.ones(chunk, chunk, dtype=torch.bool).tril()  # [C, C]
    scores = (q @ k.transpose(-1, -2)).masked_fill(~mask, 0.0)  # [B, N, H, C, C]
    kv = k.transpose(-1, -2) @ v  # [B, N, H, K, V]
    entering = torch.cat([torch.zeros_like(kv[:, :1]), kv.cumsum(1)[:, :-1]], 1)  # [B, N, H, K, V]
    o = scores @ v + q @ entering  # [B, N, H, C, V]
    return o.transpose(2, 3).reshape(B, n * chunk, H, V)[:, :L]  # [B, L, H, V]


def torch_grad(torch, forward, threads: int, q, k, v, w):
    """A closure running forward+backward of sum(o·w) on ``threads``; returns (o, (dq, dk, dv))."""
    q, k, v, w = (torch.from_numpy(np.array(x)) for x in (q, k, v, w))
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]

    def call():
        torch.set_num_threads(threads)
        o = forward(torch, *leaves)
        return o, torch.autograd.grad((o * w).sum(), leaves)

    return call


def torch_peer(torch, forward, threads: int):
    """(q, k, v, w) -> (o, [dq, dk, dv]) as NumPy arrays, for the agreement check."""

    def peer(q, k, v, w):
        o, grads = torch_grad(torch, forward, threads, q, k, v, w)()
        return o.detach().numpy(), [g.numpy() for g in grads]

    return peer


def rel_diff(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))


def check(section: harness.Section, peers: dict) -> dict[str, bool]:
    """Output and gradient agreement of each peer with our chunked op at L=CHECK_LENGTH."""
    q, k, v, w, _ = inputs(CHECK_LENGTH)
    ref_o = linear_attention(q, k, v, chunk_size=CHUNK)
    ref_g = jax.jit(jax_grad("chunked"))(q, k, v, w, None)
    table = section.table(
        f"Agreement with our chunked op at L={CHECK_LENGTH} (max |diff| / max |ours|, "
        f"tolerance {RTOL:g})",
        ["implementation", "output", "dq", "dk", "dv", "match"],
    )
    ok = {}
    for name, run_peer in peers.items():
        o, grads = run_peer(q, k, v, w)
        diffs = [rel_diff(o, ref_o)] + [rel_diff(a, b) for a, b in zip(grads, ref_g, strict=True)]
        ok[name] = max(diffs) <= RTOL
        table.add(
            implementation=name,
            output=diffs[0],
            dq=diffs[1],
            dk=diffs[2],
            dv=diffs[3],
            match=ok[name],
        )
    return ok


def timed(section: harness.Section, name: str, call, quick: bool, repeats: int):
    """``time_call`` after one warm-up call; in quick mode a slow call is timed only once."""
    first = harness.time_call(call, repeats=1, warmup=0)
    if quick and first.median > SLOW_CALL_S:
        section.note(f"{name}: {first.median:.1f} s warm-up call, so timed once (quick mode)")
        return harness.time_call(call, repeats=1, warmup=0)
    return harness.time_call(call, repeats=repeats, warmup=0)


def run(quick: bool) -> harness.Section:
    section = harness.Section(
        "attention", "Linear attention vs softmax attention and PyTorch", ABOUT
    )
    lengths = (4096,) if quick else (1024, 4096, 16384)
    repeats = 3 if quick else 5

    checks = {
        f"ours {method}": lambda q, k, v, w, m=method: (
            linear_attention(q, k, v, method=m),
            jax.jit(jax_grad(m))(q, k, v, w, None),
        )
        for method in ("recurrent", "parallel")
    }
    torch_peers = {}
    if harness.have("torch"):
        import torch

        torch_peers = {
            "PyTorch chunked (2 threads)": (torch_chunked, 2),
            "PyTorch chunked (1 thread)": (torch_chunked, 1),
            f"PyTorch loop ({LOOP_THREADS} thread)": (torch_recurrent, LOOP_THREADS),
        }
        if not quick:
            torch_peers["PyTorch loop (2 threads)"] = (torch_recurrent, 2)
        for name, (forward, threads) in torch_peers.items():
            checks[name] = torch_peer(torch, forward, threads)
        section.note(f"torch {torch.__version__}")
    else:
        section.note("skipped: PyTorch peers, torch not installed (pip install -e '.[bench]')")
    ok = check(section, checks)
    for name, good in ok.items():
        if not good:
            section.target(
                f"{name} matches ours",
                f"max rel diff ≤ {RTOL:g}",
                "see the agreement table",
                False,
                "the implementations disagree: not timed",
            )

    times: dict[tuple[str, int], harness.Timing] = {}
    table = section.table(
        "Forward+backward, no decay (ratio = time / our chunked time at the same L)",
        ["method", "L", "time ms", "peak MiB", "÷ ours chunked"],
    )
    plot = section.plot("attention_time", "Forward+backward time", "L", "seconds")

    def record(name, length, timing, peak=None):
        times[name, length] = timing
        ratio = timing / times["ours chunked", length]
        table.add(
            **{"method": name, "L": length, "time ms": timing, "peak MiB": harness.mib(peak)},
            **{"÷ ours chunked": ratio},
        )
        plot.point(name, length, timing.median)

    for length in lengths:
        args = inputs(length)
        methods = ["chunked", "recurrent"]
        methods += ["parallel"] * (length <= 4096 and ok["ours parallel"])
        methods += ["softmax"] * (length <= 8192)
        for method in methods:
            name = method if method == "softmax" else f"ours {method}"
            compiled = harness.compile_jax(jax_grad(method), *args)
            call = lambda c=compiled, a=args: jax.block_until_ready(c(*a))  # noqa: E731
            record(
                name,
                length,
                timed(section, f"{name} at L={length}", call, quick, repeats),
                harness.peak_bytes(compiled),
            )
        for name, (forward, threads) in torch_peers.items():
            if not ok[name] or (threads > 1 and "loop" in name and length > 4096):
                continue
            if (name, length // 4) in times:
                estimate = 4 * times[name, length // 4].median
                if estimate > TORCH_LOOP_CAP_S:
                    section.note(
                        f"{name} at L={length} not run: about {estimate:.0f} s a call "
                        f"(4 × its L={length // 4} time) > the {TORCH_LOOP_CAP_S:g} s cap"
                    )
                    continue
            call = torch_grad(torch, forward, threads, *args[:4])
            record(name, length, timed(section, f"{name} at L={length}", call, quick, repeats))

    chunk_sizes(section, quick, repeats)
    blockwise_vs_reference(section, quick, repeats)

    ours = times["ours chunked", 4096]
    loop = times.get((f"PyTorch loop ({LOOP_THREADS} thread)", 4096))
    if loop is not None:
        speedup = loop / ours
        section.target(
            "chunked vs PyTorch recurrent loop, L=4k",
            "≥ 10× faster",
            f"{speedup:.0f}×",
            speedup >= 10,
            ""
            if speedup >= 10
            else f"PyTorch loop {loop.median * 1e3:.0f} ms vs ours {ours.median * 1e3:.0f} ms",
        )
    chunked = [
        times[key] for key in times if key[0].startswith("PyTorch chunked") and key[1] == 4096
    ]
    if chunked:
        ratio = min(t.median for t in chunked) / ours.median
        section.note(
            f"PyTorch chunked (faster thread count) / our chunked at L=4k: {ratio:.2f} (no target)"
        )
    recurrent = times["ours recurrent", 4096]
    speedup = recurrent / ours
    section.target(
        "chunked vs our recurrent lax.scan, L=4k",
        "≥ 4× faster",
        f"{speedup:.1f}×",
        speedup >= 4,
        ""
        if speedup >= 4
        else f"recurrent {recurrent.median * 1e3:.0f} ms vs chunked {ours.median * 1e3:.0f} ms",
    )
    if not quick:
        long = times["ours chunked", 16384]
        growth = long / ours
        section.target(
            "chunked is linear in L",
            "time(16k) / time(4k) ≤ 4.5",
            f"{growth:.2f}",
            growth <= 4.5,
            ""
            if growth <= 4.5
            else f"time(4k) {ours.median * 1e3:.0f} ms, time(16k) {long.median * 1e3:.0f} ms",
        )
    return section


def chunk_sizes(section: harness.Section, quick: bool, repeats: int) -> None:
    """Chunked forward+backward time against ``chunk_size``, no and per-head decay."""
    table = section.table(
        "Chunked forward+backward against chunk_size (ratio = time / chunk 64 time)",
        ["L", "chunk", "no decay ms", "÷ chunk 64", "per-head decay ms", "÷ chunk 64 (decay)"],
    )
    for length in (4096,) if quick else (4096, 16384):
        rows = {}
        for chunk in (32, 64, 128, 256):
            rows[chunk] = [
                harness.time_jax(
                    jax_grad("chunked", chunk), *inputs(length, d), repeats=repeats
                ).timing
                for d in (False, True)
            ]
        for chunk, (plain, decayed) in rows.items():
            table.add(
                **{
                    "L": length,
                    "chunk": chunk,
                    "no decay ms": plain,
                    "÷ chunk 64": plain / rows[64][0],
                    "per-head decay ms": decayed,
                    "÷ chunk 64 (decay)": decayed / rows[64][1],
                }
            )


def softmax_grad(implementation: str):
    """The gradient in (q, k, v) of sum(o·w) for causal ``softmax_attention``."""

    def loss(q, k, v, w):
        return jnp.sum(softmax_attention(q, k, v, implementation=implementation) * w)

    return jax.grad(loss, argnums=(0, 1, 2))


def blockwise_vs_reference(section: harness.Section, quick: bool, repeats: int) -> None:
    """Softmax attention, ``"blockwise"`` vs ``"reference"``: fwd+bwd time and temporaries."""
    table = section.table(
        'Softmax attention on this CPU, implementation="blockwise" (512×512 blocks, the '
        'accelerator path) vs "reference" (dense [B, H, L, L] scores, CPU\'s "auto"), causal, '
        f"forward+backward, B={BATCH}, H={HEADS}, d={DIM}, float32 "
        "(ratio = blockwise / reference)",
        [
            "L",
            "reference ms",
            "blockwise ms",
            "time ratio",
            "reference temp MiB",
            "blockwise temp MiB",
            "temp ratio",
        ],
    )
    for length in (2048,) if quick else (2048, 4096):
        q, k, v, w, _ = inputs(length)
        runs = {
            name: harness.time_jax(softmax_grad(name), q, k, v, w, repeats=repeats)
            for name in ("reference", "blockwise")
        }
        ref, flash = runs["reference"], runs["blockwise"]
        table.add(
            **{
                "L": length,
                "reference ms": ref.timing,
                "blockwise ms": flash.timing,
                "time ratio": flash.timing / ref.timing,
                "reference temp MiB": harness.mib(ref.temp_bytes),
                "blockwise temp MiB": harness.mib(flash.temp_bytes),
                "temp ratio": flash.temp_bytes / ref.temp_bytes,
            }
        )
