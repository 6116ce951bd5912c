"""The accelerator path without an accelerator: cost, memory and roofline estimates from HLO.

Nothing here runs on a GPU or TPU. Every program is compiled by this JAX for the CPU and read
back: XLA's ``cost_analysis()`` and ``memory_analysis()``, the compiled HLO text and the jaxpr.
The roofline times are *estimates* for machines we do not have, with their assumptions stated.

1. Mixer blocks: one pre-norm residual ``Layer`` of ``jaxdiv.models.lm`` (norm, mixer, MLP
   where the mixer has one) per mixer, d_model = 1024 (d_inner = 2048, N = 16, bfloat16
   compute, float32 parameters), B = 8, L = 2048 (quick: B = 2, L = 512), forward+backward
   (gradient of sum(y²) in the parameters and the input). Mamba with the ``selective_scan``
   methods "chunked" and "sequential" (``"auto"``'s pick on every backend, from this
   estimate on GPU/TPU). Softmax
   attention with ``implementation="blockwise"`` (the flash form: what ``"auto"`` runs on TPU,
   and on GPU where cuDNN does not apply; passed explicitly, since this runs on the CPU) and
   with ``"reference"`` (the dense [B, H, L, L] scores, CPU's pick). cuDNN flash attention,
   ``"auto"``'s pick on an NVIDIA GPU for these unmasked bf16 inputs, is a GPU custom call
   that the CPU cannot compile, so it has no row.
2. Scan ops alone at the same sizes (bfloat16 inputs, state math in float32 as the ops do):
   ``selective_scan`` chunked / sequential / pallas and Mamba-2's ``ssd`` chunked / pallas (32
   heads of 64 channels, one group of B, C), forward and forward+backward, next to the CUDA
   Mamba selective-scan kernel's bound (one kernel reading u, Δ, B, C and writing y). The
   Pallas rows cannot be compiled here: :func:`measure_with_kernels` counts their kernels'
   traffic from the BlockSpecs and compiles the program around them.
3. Chunked SSD vs the sequential selective scan with the same state size (D·N), timed on this
   CPU at L = 4096 in the same process.

Counts. FLOPs come from the jaxpr (``harness.jaxpr_eqns``, loop bodies times their trip
counts): dot_general 2·M·N·K, convolutions 2·out·window·C_in/groups, every other arithmetic
op one per output element (reductions one per input element), data movement free. XLA's own
``cost_analysis`` FLOPs and bytes count a while loop's body once, whatever its trip count
(checked: a 100-step scan of a 64³ matmul reports the FLOPs of one), so they are shown as
reported but not used. Bytes accessed are summed from the compiled HLO by the rule
``cost_analysis`` applies per instruction (operands + result; a fusion reads only the slices
it slices out of a parameter and writes only the update of an in-place dynamic-update-slice),
with every while body multiplied by its ``known_trip_count``; with the trip counts set to 1
that sum is checked against ``cost_analysis``'s bytes. CPU fusion is not GPU/TPU fusion, so
the bytes are those of CPU's program, a proxy. Sequential steps are the trip counts of the
scans on the path (nested loops multiply, loops one after another add).

Roofline per device: max(FLOPs / peak, bytes / bandwidth) + steps × per-step latency.
Peaks are vendor data-sheet values: TPU v5e 197 TFLOP/s bf16 and 819 GB/s HBM (Google Cloud
TPU v5e documentation); H100 SXM 989 TFLOP/s dense bf16 and 3.35 TB/s HBM3 (NVIDIA H100
data sheet). Per-step latency (assumed): 5 µs per loop iteration on the GPU (XLA:GPU runs a
while loop's control on the host, launching the body's kernels and synchronising on the
predicate every iteration, jax-ml/jax#2491; QuantEcon measured about 8 µs an iteration for a
trivial body, QuantEcon/lecture-python-programming#437/#440), 1 µs on the TPU (the loop runs
on the chip's scalar unit, no host round trip; an assumption, not measured here).
"""

# B batch, L length, D channels (d_inner), N state, H heads, P head dim

import dataclasses
import math
import re
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks import harness
from jaxdiv.models.lm import Layer, LMConfig
from jaxdiv.models.ssm.selective_scan import selective_scan
from jaxdiv.models.ssm.ssd import ssd

D_MODEL, EXPAND, STATE, HEAD_DIM = 1024, 2, 16, 64
FULL, QUICK = (8, 2048), (2, 512)  # (B, L)
RACE_LENGTH = 4096
DOT_SHARE_TARGET, KERNEL_TARGET = 0.9, 1.5


@dataclasses.dataclass(frozen=True)
class Device:
    """Data-sheet peak (bf16, dense) and HBM bandwidth, and the assumed per-loop-step latency."""

    name: str
    flops: float  # FLOP/s
    bandwidth: float  # bytes/s
    step_latency: float  # seconds per sequential loop iteration (assumed)


DEVICES = (
    Device("TPU v5e", 197e12, 819e9, 1e-6),
    Device("H100 SXM", 989e12, 3.35e12, 5e-6),
)

# --------------------------------------------------------------------------------------------
# Counting: FLOPs and sequential steps from the jaxpr, bytes from the compiled HLO

_FREE = {
    "reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "slice",
    "dynamic_slice", "dynamic_update_slice", "concatenate", "pad", "gather", "scatter",
    "convert_element_type", "iota", "copy", "copy_p", "rev", "stop_gradient", "select_n",
    "device_put", "sharding_constraint", "split", "broadcast", "reduce_precision",
    "get", "swap",  # a Pallas kernel's ref loads and stores
}  # fmt: skip
_REDUCE = {
    "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin", "cumsum",
    "cumprod", "cummax", "cummin", "cumlogsumexp", "reduce_and", "reduce_or",
}  # fmt: skip


def _has_subjaxpr(eqn) -> bool:
    return any(
        isinstance(s, (jax.extend.core.ClosedJaxpr, jax.extend.core.Jaxpr))
        for p in eqn.params.values()
        for s in (p if isinstance(p, (tuple, list)) else (p,))
    )


def _eqn_flops(eqn) -> tuple[int, int]:
    """(all FLOPs, dot/convolution FLOPs) of one equation, counted once."""
    name = eqn.primitive.name
    if name == "dot_general":
        (contract, _), _ = eqn.params["dimension_numbers"]
        shape = eqn.invars[0].aval.shape
        flops = 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(shape[i] for i in contract)
        return flops, flops
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
        flops = 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) // out_features
        return flops, flops
    if name in _FREE or _has_subjaxpr(eqn) or not eqn.outvars:
        return 0, 0
    if name in _REDUCE:
        return math.prod(eqn.invars[0].aval.shape), 0
    return sum(math.prod(getattr(v.aval, "shape", ())) for v in eqn.outvars), 0


def jaxpr_flops(jaxpr) -> tuple[int, int]:
    """(FLOPs, dot/convolution FLOPs) of a jaxpr, loop bodies times their trip counts."""
    total = dots = 0
    for eqn, times in harness.jaxpr_eqns(jaxpr):
        f, d = _eqn_flops(eqn)
        total, dots = total + times * f, dots + times * d
    return total, dots


def sequential_steps(jaxpr) -> int:
    """Loop iterations on the path: nested scans multiply, scans one after another add."""
    steps = 0
    for eqn in jaxpr.eqns:
        subs = [
            s.jaxpr if isinstance(s, jax.extend.core.ClosedJaxpr) else s
            for p in eqn.params.values()
            for s in (p if isinstance(p, (tuple, list)) else (p,))
            if isinstance(s, (jax.extend.core.ClosedJaxpr, jax.extend.core.Jaxpr))
        ]
        inner = max((sequential_steps(s) for s in subs), default=0)
        if eqn.primitive.name == "scan":
            steps += eqn.params["length"] * max(inner, 1)
        elif eqn.primitive.name == "while":  # trip count unknown here: counted once
            steps += max(inner, 1)
        else:
            steps += inner
    return steps


_DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
    "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_HEADER = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = ")
_FREE_HLO = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all"}
_SLICING = {"dynamic-slice", "slice", "gather"}


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string (tuples summed)."""
    return sum(
        _DTYPE_BYTES.get(dt, 4) * math.prod(int(d) for d in dims.split(",") if d)
        for dt, dims in _ARRAY.findall(shape)
    )


def _closing(text: str) -> int:
    """Index of the parenthesis closing the one that opens ``text``."""
    depth = 0
    for index, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            return index
    raise ValueError(f"unbalanced parentheses in {text[:80]!r}")


def _split_instruction(line: str):
    """(name, shape text, opcode, operand names, attribute text) of one HLO instruction."""
    m = _INSTR.match(line)
    if m is None:
        return None
    rest = line[m.end() :]
    start = _closing(rest) if rest.startswith("(") else 0  # a tuple shape: past its ")"
    space = rest.index(" ", start)
    shape, rest = rest[:space], rest[space + 1 :]
    paren = rest.index("(")
    opcode, rest = rest[:paren], rest[paren:]
    end = _closing(rest)
    operands = re.findall(r"%([\w.\-]+)", rest[:end])
    attrs = rest[1:end] if opcode == "parameter" else rest[end + 1 :]  # a parameter: its number
    return m.group(1), shape, opcode, operands, attrs


def _computations(hlo: str) -> tuple[dict, str]:
    """{computation: [instruction tuples]} of an HLO module's text, and the entry's name."""
    comps, entry, current = {}, None, None
    for line in hlo.splitlines():
        head = _HEADER.match(line)
        if head:
            current = comps.setdefault(head.group(1), [])
            entry = head.group(1) if line.startswith("ENTRY") else entry
        elif line.startswith("}"):
            current = None
        elif current is not None:
            parts = _split_instruction(line)
            if parts:
                current.append(parts)
    return comps, entry


def _fusion_bytes(instr, shapes: dict, fused: list) -> int:
    """Bytes a fusion reads and writes: sliced parameters count their slices, an in-place
    dynamic-update-slice root writes (and reads) only its update."""
    _, shape, _, operands, _ = instr
    users, fused_shapes, param_index = {}, {}, {}
    for name, out, opcode, ops, attrs in fused:
        fused_shapes[name] = out
        if opcode == "parameter":
            param_index[name] = int(attrs)
        for op in ops:
            users.setdefault(op, []).append((opcode, name))
    root = fused[-1]
    in_place = None
    written = shape_bytes(shape)
    if root[2] == "dynamic-update-slice" and root[3][0] in param_index:
        in_place = root[3][0]
        written = shape_bytes(fused_shapes[root[3][1]])
    read = 0
    for name, index in param_index.items():
        if index >= len(operands):
            continue
        if name == in_place:
            continue
        uses = users.get(name, [])
        if uses and all(op in _SLICING for op, _ in uses):
            read += sum(shape_bytes(fused_shapes[u]) for _, u in uses)
        else:
            read += shape_bytes(shapes.get(operands[index], ""))
    return read + written


def hlo_bytes(hlo: str, *, trip_counts: bool = True) -> int:
    """Bytes accessed by a compiled HLO module, each while body times its trip count."""
    comps, entry = _computations(hlo)
    shapes = {name: shape for instrs in comps.values() for name, shape, *_ in instrs}

    def cost(comp: str) -> int:
        total = 0
        for instr in comps.get(comp, []):
            name, shape, opcode, operands, attrs = instr
            called = re.findall(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)", attrs)
            if opcode in _FREE_HLO or (opcode == "custom-call" and "callback" in attrs):
                continue  # a host callback: a kernel's stand-in, its traffic counted apart
            if opcode == "while":
                trip = re.search(r'known_trip_count":\{"n":"(\d+)"', attrs)
                n = int(trip.group(1)) if trip and trip_counts else 1
                total += n * sum(cost(c) for c in called)
            elif opcode in ("call", "async-start"):
                total += sum(cost(c) for c in called)
            elif opcode == "conditional":
                branches = re.findall(r"%([\w.\-]+)", attrs.split("branch_computations=")[-1])
                total += max((cost(c) for c in branches if c in comps), default=0)
            elif opcode == "fusion":
                total += _fusion_bytes(instr, shapes, comps[called[0]])
            elif opcode == "dynamic-slice":
                total += 2 * shape_bytes(shape)
            elif opcode == "dynamic-update-slice":
                total += 2 * shape_bytes(shapes.get(operands[1], ""))
            else:
                total += shape_bytes(shape) + sum(shape_bytes(shapes.get(o, "")) for o in operands)
        return total

    return cost(entry)


@dataclasses.dataclass
class Cost:
    """What the compiled program and its jaxpr say about one program."""

    flops: int
    dot_flops: int
    bytes: int
    bytes_untripped: int
    xla_flops: float
    xla_bytes: float
    steps: int
    temp_bytes: int
    compile_s: float
    kernel_bytes: int = 0  # of ``bytes``: the Pallas kernels' block traffic

    def roofline(self, device: Device) -> tuple[float, str]:
        """Estimated seconds on ``device`` and what bounds it (compute / memory + steps)."""
        compute, memory = self.flops / device.flops, self.bytes / device.bandwidth
        latency = self.steps * device.step_latency
        bound = "compute" if compute >= memory else "memory"
        if latency > max(compute, memory):
            bound = "loop steps"
        return max(compute, memory) + latency, bound


def measure(fn: Callable, *args, flops: tuple[int, int] | None = None, kernel_bytes: int = 0):
    """Compile ``fn`` for ``args`` (arrays or ShapeDtypeStructs) and count its cost.

    ``flops`` (all, dot) replaces the count from ``fn``'s jaxpr and ``kernel_bytes`` is added
    to the compiled program's bytes: what :func:`measure_with_kernels` knows of its kernels.
    """
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    total, dots = jaxpr_flops(jaxpr) if flops is None else flops
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - start
    hlo = compiled.as_text()
    xla = compiled.cost_analysis()
    return Cost(
        flops=total,
        dot_flops=dots,
        bytes=hlo_bytes(hlo) + kernel_bytes,
        bytes_untripped=hlo_bytes(hlo, trip_counts=False) + kernel_bytes,
        xla_flops=float(xla.get("flops", 0.0)),
        xla_bytes=float(xla.get("bytes accessed", 0.0)),
        steps=sequential_steps(jaxpr),
        temp_bytes=compiled.memory_analysis().temp_size_in_bytes,
        compile_s=seconds,
        kernel_bytes=kernel_bytes,
    )


def _block_bytes(mapping) -> int:
    dims = (d if isinstance(d, int) else getattr(d, "block_size", 1) for d in mapping.block_shape)
    return math.prod(dims) * mapping.array_aval.dtype.itemsize


def kernel_traffic(jaxpr) -> int:
    """HBM bytes of the Pallas kernels in ``jaxpr``, from their BlockSpecs: every input and
    output block once per grid program (what a Pallas pipeline moves; our kernels read each
    element of a block once), times how often the kernel runs."""
    total = 0
    for eqn, times in harness.jaxpr_eqns(jaxpr):
        if eqn.primitive.name == "pallas_call":
            grid = eqn.params["grid_mapping"]
            per_program = sum(_block_bytes(m) for m in grid.block_mappings)
            total += times * math.prod(grid.grid) * per_program
    return total


def measure_with_kernels(fn: Callable, *args) -> Cost:
    """:func:`measure` of a program whose Pallas kernels cannot be compiled here.

    FLOPs from the interpret-mode jaxpr (kernel bodies times their grid programs); bytes = the
    kernels' :func:`kernel_traffic` + the compiled HLO's around them, compiled with each kernel
    a stand-in (``jaxdiv.models.kernels._common.kernels_as_stand_ins``: one host callback, not
    counted); sequential steps, temporaries and XLA's raw counts are those of the program
    around the kernels (a kernel's loop over chunks runs inside one launch).
    """
    from jaxdiv.models.kernels._common import kernels_as_stand_ins

    # a fresh function for each trace: jit's trace cache does not know the stand-in switch
    interpreted = jax.make_jaxpr(lambda *a: fn(*a))(*args).jaxpr
    with kernels_as_stand_ins():
        return measure(
            lambda *a: fn(*a),
            *args,
            flops=jaxpr_flops(interpreted),
            kernel_bytes=kernel_traffic(interpreted),
        )


# --------------------------------------------------------------------------------------------
# Programs


MIXERS = (  # (label, mixer name, LMConfig overrides)
    ("Mamba, selective_scan chunked", "mamba", {"scan_method": "chunked"}),
    ("Mamba, selective_scan sequential (auto)", "mamba", {"scan_method": "sequential"}),
    ("Mamba-2, SSD chunked", "mamba2", {}),
    ("linear attention, chunked", "linear_attention", {}),
    ("LightNet, chunked", "lightnet", {}),
    (
        "softmax attention, reference (dense [L, L]; auto on CPU)",
        "attention",
        {"attention_implementation": "reference"},
    ),
    (
        "softmax attention, blockwise (auto on TPU; GPU when cuDNN does not apply)",
        "attention",
        {"attention_implementation": "blockwise"},
    ),
)


def block_program(mixer: str, overrides: dict, batch: int, length: int):
    """(fwd+bwd function, its abstract arguments) of one ``Layer`` with ``mixer``."""
    config = LMConfig(
        vocab_size=16,
        d_model=D_MODEL,
        n_layers=1,
        mixer=mixer,
        expand=EXPAND,
        d_state=STATE,
        mamba2_state=STATE,
        dtype="bfloat16",
        **overrides,
    )
    layer = nnx.eval_shape(lambda: Layer(config, mixer, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(layer)
    x = jax.ShapeDtypeStruct((batch, length, D_MODEL), jnp.bfloat16)  # [B, L, d_model]

    def loss(params, x):
        y = nnx.merge(graphdef, params)(x)
        return jnp.sum(jnp.square(y.astype(jnp.float32)))

    return jax.grad(loss, argnums=(0, 1)), (params, x)


def _spec(*shape, dtype=jnp.bfloat16):
    return jax.ShapeDtypeStruct(shape, dtype)


def scan_args(batch: int, length: int, channels: int):
    """Abstract selective-scan inputs: u, Δ [B, L, D]; A [D, N]; B, C [B, L, N]."""
    bld, bln = _spec(batch, length, channels), _spec(batch, length, STATE)
    return (bld, bld, _spec(channels, STATE, dtype=jnp.float32), bln, bln)


def ssd_args(batch: int, length: int, channels: int):
    """Abstract SSD inputs with H·P = ``channels``: x [B, L, H, P]; dt [B, L, H]; A [H];
    B, C [B, L, 1, N] (one group)."""
    heads = channels // HEAD_DIM
    bl1n = _spec(batch, length, 1, STATE)
    return (
        _spec(batch, length, heads, HEAD_DIM),
        _spec(batch, length, heads),
        _spec(heads, dtype=jnp.float32),
        bl1n,
        bl1n,
    )


def scan_fn(method: str):
    def fn(u, delta, A, B, C):
        return selective_scan(u, delta, A, B, C, delta_softplus=True, method=method)

    return fn


def ssd_fn(method: str):
    def fn(x, dt, A, B, C):
        return ssd(x, jax.nn.softplus(dt), A, B, C, method=method)

    return fn


def random_inputs(specs, key=None) -> tuple:
    """Normal draws for the abstract inputs of :func:`scan_args` / :func:`ssd_args`; A (the
    third) made negative."""
    keys = jax.random.split(jax.random.key(0) if key is None else key, len(specs))
    xs = [jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys, specs, strict=True)]
    xs[2] = -jnp.exp(xs[2])
    return tuple(xs)


def fwd_bwd(fn):
    """Gradient of sum(y²) in every input (float32 loss)."""

    def loss(*args):
        return jnp.sum(jnp.square(fn(*args).astype(jnp.float32)))

    return jax.grad(loss, argnums=tuple(range(5)))


def cuda_reference(batch: int, length: int, channels: int) -> tuple[int, int, int, int]:
    """(fwd FLOPs, fwd bytes, fwd+bwd FLOPs, fwd+bwd bytes) of the CUDA selective-scan kernel.

    Forward: one kernel reading u, Δ [B, L, D] and B, C [B, L, N] and writing y, bf16:
    (3·B·L·D + 2·B·L·N)·2 bytes, ≈ 9·B·L·D·N FLOPs. Backward (our estimate of the same
    kernel design): reads u, Δ, B, C, ∂y and writes ∂u, ∂Δ, ∂B, ∂C, (5·B·L·D + 4·B·L·N)·2
    bytes, and recomputes the forward while running the adjoint, ≈ 2 × the forward FLOPs.
    """
    bld, bln = batch * length * channels, batch * length * STATE
    fwd_flops, fwd_bytes = 9 * bld * STATE, (3 * bld + 2 * bln) * 2
    return fwd_flops, fwd_bytes, 3 * fwd_flops, fwd_bytes + (5 * bld + 4 * bln) * 2


# --------------------------------------------------------------------------------------------
# Tables


_COLUMNS = [
    "GFLOP",
    "dot share",
    "GB accessed",
    "seq. steps",
    "temp MiB",
    *(f"{d.name} est. ms" for d in DEVICES),
    *(f"{d.name} bound" for d in DEVICES),
    "XLA GFLOP (loops once)",
    "XLA GB (loops once)",
    "compile s",
]


def _cells(cost: Cost) -> dict:
    cells = {
        "GFLOP": cost.flops / 1e9,
        "dot share": cost.dot_flops / cost.flops if cost.flops else None,
        "GB accessed": cost.bytes / 1e9,
        "seq. steps": cost.steps,
        "temp MiB": harness.mib(cost.temp_bytes),
        "XLA GFLOP (loops once)": cost.xla_flops / 1e9,
        "XLA GB (loops once)": cost.xla_bytes / 1e9,
        "compile s": cost.compile_s,
    }
    for device in DEVICES:
        seconds, bound = cost.roofline(device)
        cells[f"{device.name} est. ms"] = seconds * 1e3
        cells[f"{device.name} bound"] = bound
    return cells


def _blocks(section: harness.Section, batch: int, length: int) -> list[Cost]:
    table = section.table(
        f"Mixer blocks (norm + mixer + MLP where it has one), forward+backward, B={batch}, "
        f"L={length}, d_model={D_MODEL}, N={STATE}, bf16 compute: compiled-HLO counts and "
        "roofline estimates (softmax attention: the accelerator path, implementation="
        '"blockwise" with 512×512 blocks, next to the dense reference)',
        ["block", *_COLUMNS],
    )
    costs = []
    for label, mixer, overrides in MIXERS:
        fn, args = block_program(mixer, overrides, batch, length)
        costs.append(measure(fn, *args))
        table.add(block=label, **_cells(costs[-1]))
    return costs


PALLAS_LABEL = "pallas (kernels' traffic from their BlockSpecs; never run on a device)"


def _ops(section: harness.Section, batch: int, length: int) -> dict:
    channels = EXPAND * D_MODEL
    table = section.table(
        f"Scan ops alone, B={batch}, L={length}, D={channels} (SSD: {channels // HEAD_DIM} "
        f"heads × {HEAD_DIM}), N={STATE}, bf16 inputs, next to the CUDA selective-scan "
        "kernel's bound",
        ["op", "pass", *_COLUMNS],
    )
    programs = {
        "selective_scan chunked": (scan_fn("chunked"), scan_args(batch, length, channels)),
        "selective_scan sequential": (scan_fn("sequential"), scan_args(batch, length, channels)),
        "ssd chunked": (ssd_fn("chunked"), ssd_args(batch, length, channels)),
    }
    costs = {}
    for name, (fn, args) in programs.items():
        for pass_name, f in (("fwd", fn), ("fwd+bwd", fwd_bwd(fn))):
            costs[name, pass_name] = measure(f, *args)
            table.add(op=name, **{"pass": pass_name}, **_cells(costs[name, pass_name]))
    for op, fn_of, args_of in (("selective_scan", scan_fn, scan_args), ("ssd", ssd_fn, ssd_args)):
        pallas, args = fn_of("pallas"), args_of(batch, length, channels)
        for pass_name, f in (("fwd", pallas), ("fwd+bwd", fwd_bwd(pallas))):
            costs[f"{op} pallas", pass_name] = cost = measure_with_kernels(f, *args)
            table.add(op=f"{op} {PALLAS_LABEL}", **{"pass": pass_name}, **_cells(cost))
    ref = cuda_reference(batch, length, channels)
    for pass_name, flops, nbytes in (("fwd", *ref[:2]), ("fwd+bwd (est.)", *ref[2:])):
        cost = Cost(flops, 0, nbytes, nbytes, math.nan, math.nan, 0, 0, math.nan)
        cells = _cells(cost)
        for key in ("dot share", "temp MiB", "XLA GFLOP (loops once)", "XLA GB (loops once)"):
            cells[key] = None
        cells["compile s"] = None
        table.add(op="CUDA selective-scan kernel (bound)", **{"pass": pass_name}, **cells)
        costs["cuda", pass_name] = cost
    return costs


def _race(section: harness.Section, quick: bool) -> tuple:
    """Chunked SSD vs sequential selective scan, same state size D·N, timed on this CPU."""
    batch, channels = (1, 256) if quick else (1, 1024)
    repeats = 3
    scan_in = random_inputs(scan_args(batch, RACE_LENGTH, channels))
    ssd_in = random_inputs(ssd_args(batch, RACE_LENGTH, channels))
    table = section.table(
        f"This CPU: chunked SSD vs the sequential selective scan, same state size D·N, "
        f"B={batch}, L={RACE_LENGTH}, D={channels}, N={STATE}, bf16 inputs "
        "(median [min–max] ms)",
        ["pass", "ssd chunked", "selective_scan sequential", "sequential / ssd"],
    )
    result = {}
    for pass_name, wrap in (("fwd", lambda f: f), ("fwd+bwd", fwd_bwd)):
        t_ssd = harness.time_jax(wrap(ssd_fn("chunked")), *ssd_in, repeats=repeats).timing
        t_seq = harness.time_jax(wrap(scan_fn("sequential")), *scan_in, repeats=repeats).timing
        table.add(
            **{"pass": pass_name, "ssd chunked": t_ssd, "selective_scan sequential": t_seq},
            **{"sequential / ssd": t_seq / t_ssd},
        )
        result[pass_name] = (t_ssd, t_seq)
    return result, (batch, channels)


def run(quick: bool) -> harness.Section:
    batch, length = QUICK if quick else FULL
    section = harness.Section(
        "accelerators",
        "Accelerator path, from compiled HLO (no accelerator used)",
        "Programs compiled by this JAX for the CPU and read back: FLOPs (jaxpr, loops times "
        "their trip counts; dot share = dot_general/convolution FLOPs over all), bytes "
        "accessed (compiled HLO, per-instruction rule of XLA's cost analysis, while bodies "
        "times their trip counts), sequential loop steps (scan trip counts, nested multiply, "
        "consecutive add), temporaries (`memory_analysis`). XLA's raw `cost_analysis` numbers "
        "count each loop body once and are shown for reference only. "
        f"Sizes: B={batch}, L={length}"
        + (" (quick mode; the full run uses B=8, L=2048)" if quick else "")
        + f", d_model={D_MODEL}, d_inner={EXPAND * D_MODEL}, N={STATE}. Roofline estimates "
        "= max(FLOPs/peak, bytes/bandwidth) + steps × per-step latency with data-sheet peaks "
        "(TPU v5e: 197 TFLOP/s bf16, 819 GB/s; H100 SXM: 989 TFLOP/s dense bf16, 3.35 TB/s) "
        "and assumed latencies (1 µs per loop step on TPU, 5 µs on GPU, where XLA runs the "
        "loop control on the host: jax-ml/jax#2491, about 8 µs an iteration measured in "
        "QuantEcon/lecture-python-programming#437). These are estimates for machines not "
        "used here; the bytes are those of CPU's fusion, a proxy for an accelerator's.",
    )
    blocks = _blocks(section, batch, length)
    ops = _ops(section, batch, length)
    race, (race_batch, race_channels) = _race(section, quick)

    checks = [c.bytes_untripped / c.xla_bytes for c in [*blocks, *ops.values()] if c.xla_bytes > 0]
    section.note(
        "Check of the byte counter: with every trip count set to 1 it gives "
        f"{min(checks):.2f}–{max(checks):.2f}× the bytes of XLA's `cost_analysis` over these "
        "programs (XLA refines fusions' operand use further than the counter does)."
    )
    dense, flash = blocks[-2], blocks[-1]  # the two softmax attention rows (MIXERS' order)
    section.note(
        "Softmax attention block, blockwise (flash) vs the dense reference at "
        f"B={batch}, L={length}: temporaries {flash.temp_bytes / 2**20:.0f} vs "
        f"{dense.temp_bytes / 2**20:.0f} MiB ({flash.temp_bytes / dense.temp_bytes:.2f}×), "
        f"bytes accessed {flash.bytes / 1e9:.2f} vs {dense.bytes / 1e9:.2f} GB, "
        f"{flash.flops / 1e9:.0f} vs {dense.flops / 1e9:.0f} GFLOP (block pairs entirely above "
        f"the causal diagonal are skipped; L ≤ 512 is one pair), {flash.steps} vs "
        f"{dense.steps} loop steps (one per 512×512 block pair, forward and backward). The "
        "blockwise program holds no [L, L] "
        "array (tests/models/test_accelerator_hlo.py checks its lowering at L = 16384); the "
        "rest of its temporaries are the layer's MLP and projections."
    )
    mamba2 = blocks[2]
    share = mamba2.dot_flops / mamba2.flops
    op = ops["ssd chunked", "fwd"]
    op_share = op.dot_flops / op.flops
    section.target(
        "chunked SSD: ≥ 90% of FLOPs in dot products",
        f"dot_general FLOPs / all FLOPs ≥ {DOT_SHARE_TARGET:.0%} (fwd+bwd of the op and of the "
        "Mamba-2 block)",
        f"op {ops['ssd chunked', 'fwd+bwd'].dot_flops / ops['ssd chunked', 'fwd+bwd'].flops:.1%}"
        f" (fwd {op_share:.1%}), block {share:.1%}",
        min(share, ops["ssd chunked", "fwd+bwd"].dot_flops / ops["ssd chunked", "fwd+bwd"].flops)
        >= DOT_SHARE_TARGET,
        _share_reason(ops["ssd chunked", "fwd+bwd"], batch, length),
    )
    t_ssd, t_seq = race["fwd+bwd"]
    f_ssd, f_seq = race["fwd"]
    section.target(
        f"chunked SSD faster than the sequential selective scan on CPU (L={RACE_LENGTH})",
        f"same state size (D={race_channels}, N={STATE}, B={race_batch}), fwd and fwd+bwd",
        f"fwd {f_ssd.median * 1e3:.0f} vs {f_seq.median * 1e3:.0f} ms; fwd+bwd "
        f"{t_ssd.median * 1e3:.0f} vs {t_seq.median * 1e3:.0f} ms",
        t_ssd.median < t_seq.median and f_ssd.median < f_seq.median,
        "" if t_ssd.median < t_seq.median and f_ssd.median < f_seq.median else "timed slower",
    )
    h100 = DEVICES[1]
    ref, _ = ops["cuda", "fwd"].roofline(h100)
    paths = {p: ops[f"ssd {p}", "fwd"].roofline(h100) for p in ("pallas", "chunked")}
    met = min(est for est, _ in paths.values()) <= KERNEL_TARGET * ref
    section.target(
        "Mamba-2 SSD step on H100 within 1.5× of the CUDA selective-scan kernel's bound",
        "roofline estimate of the SSD op, its best path (forward, same B, L, D, N) ≤ 1.5× the "
        "CUDA kernel's max(FLOPs/peak, bytes/bandwidth)",
        "; ".join(
            f"{p} {est * 1e3:.4f} ms = {est / ref:.2f}× ({bound}-bound)"
            for p, (est, bound) in paths.items()
        )
        + f"; CUDA bound {ref * 1e3:.4f} ms",
        met,
        ""
        if met
        else _kernel_reason(*(ops[k, "fwd"] for k in ("ssd pallas", "ssd chunked", "cuda"))),
    )
    scan = {m: ops[f"selective_scan {m}", "fwd+bwd"] for m in ("sequential", "chunked", "pallas")}
    scan_h100 = {m: c.roofline(h100)[0] * 1e3 for m, c in scan.items()}
    section.note(
        "Mamba's selective scan, forward+backward on the H100 estimate: sequential (`auto`) "
        f"{scan_h100['sequential']:.3f} ms ({scan['sequential'].bytes / 1e9:.2f} GB, "
        f"{scan['sequential'].steps} loop steps), chunked {scan_h100['chunked']:.3f} ms "
        f"({scan['chunked'].bytes / 1e9:.2f} GB), pallas {scan_h100['pallas']:.3f} ms "
        f"({scan['pallas'].bytes / 1e9:.2f} GB, of which its kernels "
        f"{scan['pallas'].kernel_bytes / 1e9:.2f} GB; the rest are the float32 casts, Δ's "
        "softplus and the gate around them). `auto` stays on the sequential scan until the "
        "kernels have been measured on a device."
    )
    pallas = ops["ssd pallas", "fwd"]
    section.note(
        f"The SSD op's pallas path moves {pallas.bytes / 1e9:.4f} GB forward: its kernels "
        f"{pallas.kernel_bytes / 1e9:.4f} GB, counted from their BlockSpecs (x read and y "
        "written once in bf16, B and C once per program, Δ and its cumulative sum in float32), "
        f"and the XLA ops around them {(pallas.bytes - pallas.kernel_bytes) / 1e9:.4f} GB "
        "(compiled with each kernel a stand-in). The kernels lower for the H100 (Triton) and "
        "TPU (Mosaic) but have never been compiled or run on one: this is the estimate the "
        "device check is there to confirm."
    )
    section.note(
        "The Mamba-2 target compares the SSD op (the layer's sequence step, without its "
        "projections) with the CUDA selective-scan kernel at the same B, L, D = "
        f"{EXPAND * D_MODEL}, N = {STATE}; the blocks table gives the whole layer. The CUDA "
        "kernel's numbers are a bound computed from the formula (not run): forward "
        "(3·B·L·D + 2·B·L·N)·2 bytes and 9·B·L·D·N FLOPs, one kernel; its fwd+bwd row adds "
        "our estimate of a backward kernel (reads u, Δ, B, C, ∂y, writes ∂u, ∂Δ, ∂B, ∂C; "
        "2× the forward FLOPs)."
    )
    return section


def _share_reason(cost: Cost, batch: int, length: int) -> str:
    share = cost.dot_flops / cost.flops
    if share >= DOT_SHARE_TARGET:
        return ""
    return (
        f"the op's elementwise work (segment sums, exps of the decay, masks, the D·x skip "
        f"and softplus) is {(1 - share):.0%} of its {cost.flops / 1e9:.1f} GFLOP; with "
        f"N={STATE} and P={HEAD_DIM} the chunk matmuls are small (T=64: 2·T·N and 2·T·P per "
        "element), so the elementwise share stays high at this state size"
    )


def _kernel_reason(pallas: Cost, chunked: Cost, ref: Cost) -> str:
    outside = pallas.bytes - pallas.kernel_bytes
    return (
        f"the pallas path moves {pallas.bytes / 1e9:.4f} GB ({pallas.bytes / ref.bytes:.1f}× the "
        f"CUDA kernel's {ref.bytes / 1e9:.4f} GB, which reads each input once in bf16 and keeps "
        f"everything else on chip): its kernels {pallas.kernel_bytes / 1e9:.4f} GB (from their "
        f"BlockSpecs), the XLA ops around them {outside / 1e9:.4f} GB. The chunked path moves "
        f"{chunked.bytes / 1e9:.3f} GB: XLA writes and re-reads float32 intermediates, the "
        f"largest the intra-chunk decay and score matrices [B, chunks, H, T, T], and takes "
        f"{chunked.steps} loop steps. Bytes around the kernels: CPU's fusion, a proxy"
    )
