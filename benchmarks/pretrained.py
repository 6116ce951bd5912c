"""Host memory of ``load_pretrained``: the peak resident set while a checkpoint loads.

A Llama-type model (quick: ~106M parameters, full: ~374M) is written by our ``save_pretrained``
as float32 safetensors in 3 shards; each load then runs in a fresh Python process (so the
parent's memory, the model it saved included, does not count). The child imports jaxdiv, loads
a tiny checkpoint of the same architecture once (imports, tracing and allocator warm-up), resets
its high-water mark (``/proc/self/clear_refs``), then runs ``load_pretrained(dir, dtype=...)``
and reports ``VmHWM`` minus the ``VmRSS`` just before the call: the peak above the post-import
baseline. A sampling thread (1 ms) records the largest anonymous and file-backed parts of the
resident set (``RssAnon``, ``RssFile``: file pages of a memory-mapped shard count in the
latter). On a CPU backend the loaded parameters themselves live in host memory, so the floor is
1× the model bytes. Target (issue): loading N parameters peaks under 1.5× N·bytes(dtype).
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import harness
from jaxdiv.models import LanguageModel, LMConfig, save_pretrained

TARGET = 1.5
ROOT = Path(__file__).resolve().parents[1]
SIZES = {  # Llama-type: untied head, SwiGLU MLP
    "quick": dict(vocab_size=32000, d_model=768, n_layers=8, num_heads=12, mlp_hidden=2048),
    "full": dict(vocab_size=32000, d_model=1024, n_layers=24, num_heads=16, mlp_hidden=2816),
    "tiny": dict(vocab_size=256, d_model=64, n_layers=2, num_heads=4, mlp_hidden=128),
}
SHARDS = 3


def llama_config(size: dict) -> LMConfig:
    return LMConfig(**size, mixer="attention", tie_embeddings=False)


def write_checkpoint(config: LMConfig, path: Path, shards: int = SHARDS) -> int:
    """A model of ``config`` with cheap deterministic weights (no random init), saved by
    ``save_pretrained`` in about ``shards`` float32 shards; returns its parameter count."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: LanguageModel(config, rngs=nnx.Rngs(0))))
    count = 0
    for i, (_, variable) in enumerate(nnx.to_flat_state(state)):
        shape = variable.get_value().shape
        count += int(np.prod(shape))
        value = np.full(shape, 0.01 * (i + 1), np.float32)  # distinct per tensor
        variable.set_value(jnp.asarray(value))
    model = nnx.merge(graphdef, state)
    save_pretrained(model, path, max_shard_size=-(-count * 4 // shards) + 1)
    return count


_CHILD = textwrap.dedent(
    """
    import json, sys, threading, time
    import jax
    from safetensors import safe_open  # noqa: F401  (imported before the baseline)
    from jaxdiv.models import load_pretrained

    def status():
        fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
        keys = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
        return {k: int(fields[k].split()[0]) * 1024 for k in keys}

    tiny, path, dtype = sys.argv[1:4]
    jax.block_until_ready(jax.tree.leaves(load_pretrained(tiny, dtype=dtype)))  # warm-up
    peaks, done = {"RssAnon": 0, "RssFile": 0}, threading.Event()

    def sample():
        while not done.is_set():
            now = status()
            for k in peaks:
                peaks[k] = max(peaks[k], now[k])
            time.sleep(0.001)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current VmRSS
    base = status()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    model = load_pretrained(path, dtype=dtype)
    leaves = jax.block_until_ready(jax.tree.leaves(model))
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    end = status()
    print(json.dumps(dict(
        base=base["VmRSS"], peak=end["VmHWM"] - base["VmRSS"], held=end["VmRSS"] - base["VmRSS"],
        anon=peaks["RssAnon"] - base["RssAnon"], file=peaks["RssFile"] - base["RssFile"],
        model_bytes=sum(x.nbytes for x in leaves), seconds=seconds,
        backend=jax.default_backend(),
    )))
    """
)


def measure(tiny: Path, path: Path, dtype: str) -> dict:
    """Runs one load in a fresh process; the child's JSON record."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tiny), str(path), dtype],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"load_pretrained child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(
    quick: bool, size: str | None = None, dtypes: tuple[str, ...] = ("float32", "bfloat16")
) -> harness.Section:
    """The section; ``size`` (a key of :data:`SIZES`) overrides the mode's ("tiny": tests)."""
    size = size or ("quick" if quick else "full")
    config = llama_config(SIZES[size])
    section = harness.Section(
        "pretrained",
        "load_pretrained host memory",
        __doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
    )
    table = section.table(
        f"load_pretrained of a {size} Llama-type checkpoint (float32 safetensors)",
        [
            "dtype",
            "params (M)",
            "N·bytes MiB",
            "peak MiB",
            "peak / N·bytes",
            "held MiB",
            "max anon MiB",
            "max file MiB",
            "load s",
        ],
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny, path = tmp / "tiny", tmp / "ckpt"
        write_checkpoint(llama_config(SIZES["tiny"]), tiny, shards=1)
        count = write_checkpoint(config, path)
        disk = sum(f.stat().st_size for f in path.glob("*.safetensors"))
        section.note(
            f"{count / 1e6:.1f}M parameters, {disk / 2**20:.0f} MiB on disk in "
            f"{len(list(path.glob('*.safetensors')))} files."
        )
        for dtype in dtypes:
            rec = measure(tiny, path, dtype)
            nbytes = count * jnp.dtype(dtype).itemsize
            ratio = rec["peak"] / nbytes
            table.add(
                dtype=dtype,
                **{
                    "params (M)": count / 1e6,
                    "N·bytes MiB": harness.mib(nbytes),
                    "peak MiB": harness.mib(rec["peak"]),
                    "peak / N·bytes": ratio,
                    "held MiB": harness.mib(rec["held"]),
                    "max anon MiB": harness.mib(rec["anon"]),
                    "max file MiB": harness.mib(rec["file"]),
                    "load s": rec["seconds"],
                },
            )
            reason = ""
            if ratio > TARGET:
                reason = (
                    f"peak {harness.mib(rec['peak']):.0f} MiB: anonymous memory up to "
                    f"{harness.mib(rec['anon']):.0f} MiB (the loaded model is "
                    f"{harness.mib(rec['model_bytes']):.0f} MiB), file-backed pages up to "
                    f"{harness.mib(rec['file']):.0f} MiB"
                )
            section.target(
                f"load peak ≤ {TARGET:g}× N·bytes ({dtype}, {rec['backend']})",
                f"≤ {TARGET:g}×",
                f"{ratio:.2f}×",
                ratio <= TARGET,
                reason,
            )
    return section
