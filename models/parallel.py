"""Sequence parallelism for every mixer: LASP-2 state passing with one all-gather per layer.

The sequence axis is split into W contiguous shards over the mesh axis ``axis_name`` (no causal
striping: recurrences need contiguous shards). Every recurrent mixer here is a linear recurrence
whose effect across shards is summarised by a small *memory state* of a size independent of L,
so each layer needs exactly one collective in the forward pass (Sun et al., LASP-2):

1. each shard computes the state its tokens leave behind, started from zero, and (with decay)
   its total decay;
2. ONE ``all_gather`` over ``axis_name`` of these summaries, packed in one float32 buffer;
3. an exclusive prefix combine of the W gathered summaries (the associative operator of the
   recurrence) gives the state entering the shard;
4. the local pass started from the entering state. For linear attention and the SSMs this
   equals the local output from a zero state plus the entering state's contribution
   (``linear_attention_inter``); linear attention runs it as one chunked pass with
   ``initial_state`` (one pass instead of two), Mamba and S4 add the correction explicitly.

Autodiff turns the all-gather into its transpose (a reduce-scatter of the gathered cotangents,
i.e. the paper's backward all-gather + suffix sum). The gathered summaries are W times a state
([W, B, H, dk, dv] per layer); they are what autodiff saves for the backward pass, independent
of L, so no ``custom_vjp`` is used.

Mixers:

- :func:`lasp2_linear_attention`: linear attention without decay, with per-head [B, L, H] or
  per-key-channel [B, L, H, dk] log decay, causal or bidirectional. Gathered:
  ``[W, B, H, dk·dv + (0 | 1 | dk)]``.
- :func:`lasp2_lightnet_attention`: LightNet; the state is the normalised numerator and the
  log-normaliser (``[W, B, H, dk·dv + dk]``), combined in log space (a masked log-sum-exp).
- :func:`sequence_parallel_selective_scan`: Mamba. A shard's decay is
  ``exp(A ⊙ Σ_t Δ_t)``, so gathering Σ_t Δ_t [B, D] with the final state [B, D, N] suffices
  (``[W, B, D, N + 1]``). The entering state is corrected in closed form,
  ``y_t += ⟨exp(A ⊙ Σ_{s≤t} Δ_s) ⊙ h_in, C_t⟩`` (log space), over chunks of ``chunk_size``
  tokens, rematerialised in the backward pass: extra memory O(B·chunk_size·D·N), never
  [B, L, D, N].
- :func:`sequence_parallel_s4`: S4D (diagonal, ZOH) and S4 (DPLR, bilinear), the SSM of
  :class:`~jaxdiv.models.s4.S4Block`. Time-invariant, so the decay Ā^{L_shard} is known on every
  shard and only the final states are gathered ([W, B, H, N2, 2], complex as real pairs). Local
  output: the FFT convolution with the kernel truncated to the shard (as ``S4Block``); final
  state and correction ``y_t += 2 Re(C Ā^{t+1} h_in)`` by two-level Vandermonde products
  (O(√L_shard) powers of Ā, never an [H, N2, L] array). The input is never gathered. To run an
  ``S4Block`` with the sequence sharded: ``y = sequence_parallel_s4(x, block._Lambda(), B, C,
  block.log_dt, block.D, P=P)`` with the complex ``B``, ``C``, ``P`` of the block, then GELU
  and ``out_proj`` (position-wise). Causal blocks only (``bidirectional=True`` would need the
  mirrored suffix pass; not implemented).
- :func:`lasp2h_attention`: softmax attention (hybrids): all-gather K and V, local queries
  against all keys with the causal mask offset by the shard index (LASP-2H).

Layouts: [B, L, H, d] (attention) or [B, L, D] (SSMs); batch over the mesh axes ``("data",
"fsdp")`` present, the sequence over ``axis_name``, heads / channels over ``"tensor"`` when the
mesh has it with size > 1. L must be a multiple of W.
"""

# B batch, L length (per shard inside shard_map), H heads / S4 channels, K key dim d_k,
# V value dim d_v, D channels, N state (N2 complex pairs for S4), W shards, J·T two-level split

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P_

from jaxdiv import _checks

from . import s4_kernels as sk
from .attention import softmax_attention
from .lightnet import LightNetState, lightnet_attention
from .linear_attention import (
    _check_log_decay,
    _check_qkv,
    combine_linear_attention_states,
    linear_attention,
    linear_attention_chunk_state,
    linear_attention_inter,
)
from .selective_scan import selective_scan


def sequence_mesh(axis_name: str | None):
    """The mesh in context (``jax.set_mesh``) when it shards ``axis_name`` over > 1 devices.

    Mixer blocks built with ``sequence_axis=axis_name`` call this at trace time and switch to
    their sequence-parallel form when it returns a mesh; otherwise (no mesh, or the axis has
    size 1, e.g. decoding on one device) they run the single-device op.
    """
    if axis_name is None:
        return None
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or axis_name not in mesh.axis_names or mesh.shape[axis_name] == 1:
        return None
    return mesh


_BATCH_AXES = ("data", "fsdp")
_HIGHEST = lax.Precision.HIGHEST


# --- mesh helpers -------------------------------------------------------------------------------


def _layout(mesh, axis_name: str, length: int, batch: int, inner: int | None):
    """(batch axes, inner axis) for PartitionSpecs, after checking the sizes divide.

    ``inner`` is the size of the heads / channels axis sharded over ``"tensor"`` (None: never).
    """
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"expected `axis_name` in the mesh axes {mesh.axis_names}, got {axis_name!r}."
        )
    shards = mesh.shape[axis_name]
    if length % shards:
        raise ValueError(
            f"expected the sequence length to be divisible by the {shards} shards of "
            f"{axis_name!r}, got L = {length}."
        )
    batch_axes = tuple(a for a in _BATCH_AXES if a in mesh.axis_names and a != axis_name)
    n_batch = math.prod(mesh.shape[a] for a in batch_axes)
    if batch % n_batch:
        raise ValueError(
            f"expected the batch size to be divisible by {n_batch} (mesh axes {batch_axes}), "
            f"got B = {batch}."
        )
    tensor = None
    if inner is not None and "tensor" in mesh.axis_names and mesh.shape["tensor"] > 1:
        if inner % mesh.shape["tensor"]:
            raise ValueError(
                f"expected the heads/channels ({inner}) to be divisible by the "
                f"{mesh.shape['tensor']} shards of 'tensor', got {inner}."
            )
        tensor = "tensor"
    return (batch_axes or None), tensor


def _exclusive(stack: jax.Array, index) -> jax.Array:
    """``stack[index − 1]`` (zeros for index 0): an inclusive prefix made exclusive."""
    shifted = jnp.concatenate([jnp.zeros_like(stack[:1]), stack[:-1]], axis=0)
    return lax.dynamic_index_in_dim(shifted, index, axis=0, keepdims=False)


# --- linear attention (LASP-2) ------------------------------------------------------------------


def _lasp2_local(q, k, v, g, scale, *, axis_name, causal, chunk_size):
    """Per-shard body: q, k [B, L, H, K], v [B, L, H, V], g None | [B, L, H] | [B, L, H, K]."""
    B, _, H, K = q.shape
    V = v.shape[-1]
    state, log_gamma = linear_attention_chunk_state(k, v, log_decay=g)  # [B, H, K, V], [B, H, G]
    parts = [state.reshape(B, H, K * V)] + ([] if g is None else [log_gamma.astype(state.dtype)])
    gathered = lax.all_gather(jnp.concatenate(parts, axis=-1), axis_name)  # [W, B, H, K·V + G]
    states = gathered[..., : K * V].reshape(gathered.shape[:3] + (K, V))  # [W, B, H, K, V]
    if not causal:
        total = jnp.sum(states, axis=0)  # [B, H, K, V]
        return linear_attention_inter(q, total, scale=scale)
    index = lax.axis_index(axis_name)
    if g is None:
        incoming = _exclusive(jnp.cumsum(states, axis=0), index)  # Σ_{j<i} S_j
    else:
        log_gammas = gathered[..., K * V :]  # [W, B, H, 1 or K]
        prefix = lax.associative_scan(
            combine_linear_attention_states, (log_gammas, states), axis=0
        )[1]  # [W, B, H, K, V]
        incoming = _exclusive(prefix, index)
    # The local chunked pass started from the incoming state: the same as its zero-state output
    # plus ``linear_attention_inter(q, incoming)``, in one pass.
    return linear_attention(
        q, k, v, log_decay=g, scale=scale, chunk_size=chunk_size, initial_state=incoming
    )  # [B, L, H, V]


def lasp2_linear_attention(
    q,
    k,
    v,
    *,
    mesh,
    axis_name: str = "sequence",
    log_decay=None,
    scale=None,
    causal: bool = True,
    chunk_size: int = 64,
) -> jax.Array:
    r"""Sequence-parallel linear attention (LASP-2): one all-gather of per-shard memory states.

    .. math::

        S^{(i)} = \sum_{s \in i} \mathrm{diag}(e^{G^{(i)}_L - G^{(i)}_s})\, k_s^\top v_s, \quad
        S_{\mathrm{in}}^{(i)} = \bigcirc_{j < i} (\gamma^{(j)}, S^{(j)}), \quad
        o_t = o^{\mathrm{local}}_t + (s\,q_t \odot e^{G^{(i)}_t})\, S_{\mathrm{in}}^{(i)}

    for shard i of W, with :math:`G^{(i)}` the cumulative log decay inside the shard,
    :math:`\gamma^{(j)}` shard j's total log decay and :math:`\circ` the operator
    :math:`(\gamma_a, S_a) \circ (\gamma_b, S_b) = (\gamma_a + \gamma_b,
    \mathrm{diag}(e^{\gamma_b}) S_a + S_b)` (a plain prefix sum without decay).
    Bidirectional: :math:`o_t = (s\,q_t) \sum_j S^{(j)}`. The states (float32) and log decays
    are gathered in one buffer ``[W, B, H, dk·dv + (0 | 1 | dk)]``, independent of L; q, k and v
    never leave their shard. Same results as
    :func:`~jaxdiv.models.linear_attention.linear_attention` on one device.

    Args:
      q: queries, [B, L, H, dk] (global shape; sharded as described in the module docstring).
      k: keys, [B, L, H, dk].
      v: values, [B, L, H, dv].
      mesh: a ``jax.sharding.Mesh`` with ``axis_name``.
      axis_name: the mesh axis the sequence is split over; L must be a multiple of its size.
      log_decay: None, [B, L, H] or [B, L, H, dk], values ≤ 0.
      scale: s, default dk^−½ (a Python number).
      causal: False for the bidirectional form (requires ``log_decay=None``).
      chunk_size: chunk length of the local chunked op (need not divide the shard length).

    Returns:
      [B, L, H, dv] in v's dtype, sharded like v.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxdiv.models.linear_attention import linear_attention
      >>> auto = (jax.sharding.AxisType.Auto,)
      >>> mesh = jax.make_mesh((jax.device_count(),), ("sequence",), axis_types=auto)
      >>> q, k, v = jax.random.normal(jax.random.key(0), (3, 1, 40, 2, 4))
      >>> o = lasp2_linear_attention(q, k, v, mesh=mesh)
      >>> o.shape, bool(jnp.allclose(o, linear_attention(q, k, v), atol=1e-4))
      ((1, 40, 2, 4), True)

    References:
      Sun, Lan, Zhong, Qu, Cheng, "LASP-2: Rethinking Sequence Parallelism for Linear Attention
      and Its Hybrid", https://arxiv.org/abs/2502.07563, Section 3 (Algorithms 1–2).
    """
    q, k, v = _check_qkv(q, k, v)
    log_decay = _check_log_decay(log_decay, q)
    if log_decay is not None and not causal:
        raise ValueError(
            "`causal=False` (bidirectional) requires `log_decay=None`, got log_decay of "
            f"shape {log_decay.shape}."
        )
    B, L, H, K = q.shape
    batch, tensor = _layout(mesh, axis_name, L, B, H)
    dtype = _checks.compute_dtype(q, k, v, *([] if log_decay is None else [log_decay]))
    scale = K**-0.5 if scale is None else scale
    spec = P_(batch, axis_name, tensor, None)
    args = [x.astype(dtype) for x in (q, k, v)]
    specs = [spec, spec, spec]
    if log_decay is not None:
        args.append(log_decay.astype(dtype))
        specs.append(spec if log_decay.ndim == 4 else P_(batch, axis_name, tensor))

    def body(q, k, v, *g):
        return _lasp2_local(
            q,
            k,
            v,
            g[0] if g else None,
            scale,
            axis_name=axis_name,
            causal=causal,
            chunk_size=chunk_size,
        )

    o = jax.shard_map(body, mesh=mesh, in_specs=tuple(specs), out_specs=spec)(*args)
    return o.astype(v.dtype)  # [B, L, H, V]


# --- LightNet -----------------------------------------------------------------------------------


def _combine_log_space(numerators, log_normalizers, mask):
    """Merges the masked LightNet states: z = log Σ_j e^{z_j}, M = Σ_j e^{z_j − z} M_j.

    numerators [W, B, H, K, V], log_normalizers [W, B, H, K], mask [W] bool. With nothing
    selected the result is the empty state (0, −inf), with finite gradients (double where).
    """
    m = lax.expand_dims(mask, (1, 2, 3))  # [W, 1, 1, 1]
    peak = jnp.max(jnp.where(m, log_normalizers, -jnp.inf), axis=0)  # [B, H, K]
    peak = lax.stop_gradient(jnp.where(jnp.isfinite(peak), peak, 0.0))
    weights = jnp.where(m, jnp.exp(jnp.where(m, log_normalizers - peak[None], 0.0)), 0.0)
    total = jnp.sum(weights, axis=0)  # [B, H, K]
    safe = jnp.where(total > 0, total, 1.0)
    z = jnp.where(total > 0, jnp.log(safe) + peak, -jnp.inf)  # [B, H, K]
    numerator = jnp.sum((weights / safe[None])[..., None] * numerators, axis=0)  # [B, H, K, V]
    return LightNetState(numerator, z)


def _lightnet_local(q, k, v, *, axis_name, causal, scale, chunk_size):
    B, _, H, K = q.shape
    V = v.shape[-1]
    z = jax.nn.logsumexp(k, axis=1)  # [B, H, K]
    numerator = jnp.einsum("blhk,blhv->bhkv", jnp.exp(k - z[:, None]), v)  # [B, H, K, V]
    packed = jnp.concatenate([numerator.reshape(B, H, K * V), z], axis=-1)
    gathered = lax.all_gather(packed, axis_name)  # [W, B, H, K·V + K]
    numerators = gathered[..., : K * V].reshape(gathered.shape[:3] + (K, V))
    log_normalizers = gathered[..., K * V :]  # [W, B, H, K]
    shards = jnp.arange(gathered.shape[0])
    if not causal:
        total = _combine_log_space(numerators, log_normalizers, shards >= 0)
        return jnp.einsum("blhk,bhkv->blhv", q * jnp.asarray(scale, q.dtype), total.numerator)
    incoming = _combine_log_space(numerators, log_normalizers, shards < lax.axis_index(axis_name))
    return lightnet_attention(
        q, k, v, scale=scale, initial_state=incoming, chunk_size=chunk_size
    )  # [B, L, H, V]


def lasp2_lightnet_attention(
    q,
    k,
    v,
    *,
    mesh,
    axis_name: str = "sequence",
    causal: bool = True,
    scale=None,
    chunk_size: int = 64,
) -> jax.Array:
    r"""Sequence-parallel LightNet attention: one all-gather of (numerator, log-normaliser).

    .. math::

        z^{(j)} = \log \sum_{s \in j} e^{k_s}, \quad
        \bar M^{(j)} = \sum_{s \in j} e^{k_s - z^{(j)}\,\top} v_s, \quad
        z_{\mathrm{in}}^{(i)} = \log \sum_{j < i} e^{z^{(j)}}, \quad
        \bar M_{\mathrm{in}}^{(i)} = \sum_{j < i} e^{z^{(j)} - z_{\mathrm{in}}^{(i)}} \bar M^{(j)}

    per key channel (a log-sum-exp combine, stable for keys of any size); shard i then runs
    :func:`~jaxdiv.models.lightnet.lightnet_attention` from the state
    :math:`(\bar M_{\mathrm{in}}^{(i)}, z_{\mathrm{in}}^{(i)})` (the normaliser changes every
    output, so the local pass needs the entering state; it is not a separable correction).
    Bidirectional: :math:`o_t = (s\,q_t) \bar M` with the state combined over all shards.
    Gathered: ``[W, B, H, dk·dv + dk]`` float32, independent of L.

    Args:
      q: queries, [B, L, H, dk].
      k: keys (softmax logits over time per channel), [B, L, H, dk]; finite.
      v: values, [B, L, H, dv].
      mesh: a ``jax.sharding.Mesh`` with ``axis_name``.
      axis_name: the mesh axis the sequence is split over; L must be a multiple of its size.
      causal: False for the bidirectional form.
      scale: s, default dk^−½ (a Python number).
      chunk_size: chunk length of the local chunked op.

    Returns:
      [B, L, H, dv] in v's dtype.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxdiv.models.lightnet import lightnet_attention
      >>> auto = (jax.sharding.AxisType.Auto,)
      >>> mesh = jax.make_mesh((jax.device_count(),), ("sequence",), axis_types=auto)
      >>> q, k, v = jax.random.normal(jax.random.key(0), (3, 1, 40, 2, 4))
      >>> o = lasp2_lightnet_attention(q, 10.0 * k, v, mesh=mesh)
      >>> bool(jnp.allclose(o, lightnet_attention(q, 10.0 * k, v), atol=1e-4))
      True

    References:
      Qin et al., "You Only Scan Once: Efficient Multi-dimension Sequential Modeling with
      LightNet", https://arxiv.org/abs/2405.21022, Section 3; Sun et al., "LASP-2",
      https://arxiv.org/abs/2502.07563, Section 3.
    """
    q, k, v = _check_qkv(q, k, v)
    B, L, H, K = q.shape
    batch, tensor = _layout(mesh, axis_name, L, B, H)
    dtype = _checks.compute_dtype(q, k, v)
    scale = K**-0.5 if scale is None else scale
    spec = P_(batch, axis_name, tensor, None)

    def body(q, k, v):
        return _lightnet_local(
            q, k, v, axis_name=axis_name, causal=causal, scale=scale, chunk_size=chunk_size
        )

    o = jax.shard_map(body, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec)(
        *(x.astype(dtype) for x in (q, k, v))
    )
    return o.astype(v.dtype)  # [B, L, H, V]


# --- LASP-2H: softmax attention -----------------------------------------------------------------


def lasp2h_attention(
    q, k, v, *, mesh, axis_name: str = "sequence", causal: bool = True, scale=None
) -> jax.Array:
    r"""Sequence-parallel softmax attention (LASP-2H): all-gather K and V, attend locally.

    .. math::

        o_t = \sum_{s \le t} \mathrm{softmax}_s(s\,q_t \cdot k_s)\, v_s, \qquad
        t \in [i L_W, (i + 1) L_W)

    on shard i (L_W = L / W): K and V are gathered over ``axis_name`` (the only collective;
    its transpose, a reduce-scatter of dK and dV, is the backward). The gathered keys are
    rotated so that shard i's own keys come last and later shards' keys are masked out, which
    offsets :func:`~jaxdiv.models.attention.softmax_attention`'s causal mask by the shard index.

    Args:
      q: queries, [B, L, H, d].
      k: keys, [B, L, H, d].
      v: values, [B, L, H, dv].
      mesh: a ``jax.sharding.Mesh`` with ``axis_name``.
      axis_name: the mesh axis the sequence is split over; L must be a multiple of its size.
      causal: apply the causal mask (False: every query sees every key).
      scale: s, default d^−½.

    Returns:
      [B, L, H, dv] in v's dtype.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxdiv.models.attention import softmax_attention
      >>> auto = (jax.sharding.AxisType.Auto,)
      >>> mesh = jax.make_mesh((jax.device_count(),), ("sequence",), axis_types=auto)
      >>> q, k, v = jax.random.normal(jax.random.key(0), (3, 1, 16, 2, 4))
      >>> o = lasp2h_attention(q, k, v, mesh=mesh)
      >>> bool(jnp.allclose(o, softmax_attention(q, k, v), atol=1e-5))
      True

    References:
      Sun et al., "LASP-2: Rethinking Sequence Parallelism for Linear Attention and Its
      Hybrid", https://arxiv.org/abs/2502.07563, Section 3.3 (LASP-2H).
    """
    q, k, v = _check_qkv(q, k, v)
    B, L, H, _ = q.shape
    batch, tensor = _layout(mesh, axis_name, L, B, H)
    spec = P_(batch, axis_name, tensor, None)

    def body(q, k, v):
        k = lax.all_gather(k, axis_name, axis=1, tiled=True)  # [B, L·W, H, d]
        v = lax.all_gather(v, axis_name, axis=1, tiled=True)
        if not causal:
            return softmax_attention(q, k, v, causal=False, scale=scale)
        local, total = q.shape[1], k.shape[1]
        index = lax.axis_index(axis_name)
        # Rotate so that shard i ends the key axis: [later shards | shards 0 … i].
        shift = total - (index + 1) * local
        k, v = (jnp.roll(x, shift, axis=1) for x in (k, v))
        where = jnp.arange(total) >= shift  # [S] keys of shards ≤ i
        where = jnp.broadcast_to(where[None], (q.shape[0], total))  # [B, S]
        return softmax_attention(q, k, v, causal=True, scale=scale, where=where)

    return jax.shard_map(body, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec)(q, k, v)


# --- Mamba: selective scan ----------------------------------------------------------------------


def _correction(cum_delta, A, h_in, C, chunk_size: int) -> jax.Array:
    """⟨exp(A ⊙ Σ_{s≤t} Δ_s) ⊙ h_in, C_t⟩ [B, L, D], in chunks of ``chunk_size`` tokens.

    cum_delta [B, L, D], A [D, N], h_in [B, D, N], C [B, L, N]. Each chunk forms
    [B, T, D, N] and is rematerialised in the backward pass.
    """
    B, L, D = cum_delta.shape
    T = min(chunk_size, L)
    n = -(-L // T)

    def chunks(x):  # [B, L, ·] -> [n, B, T, ·]
        x = jnp.pad(x, ((0, 0), (0, n * T - L), (0, 0)))
        return jnp.moveaxis(x.reshape(B, n, T, x.shape[-1]), 1, 0)

    @jax.checkpoint
    def one(xs):
        cum, c = xs  # [B, T, D], [B, T, N]
        decay = jnp.exp(cum[..., None] * A[None, None])  # [B, T, D, N]
        return jnp.einsum("btdn,bdn,btn->btd", decay, h_in, c)

    y = lax.map(one, (chunks(cum_delta), chunks(C)))  # [n, B, T, D]
    return jnp.moveaxis(y, 0, 1).reshape(B, n * T, D)[:, :L]


def _scan_local(u, delta, A, B, C, D, z, *, axis_name, batch, tensor, method, chunk_size):
    # selective_scan's hand-written backward returns cotangents that vary like the sequence: mark
    # the replicated inputs varying so that shard_map sums their cotangents (pcast's transpose).
    A = lax.pcast(A, (*(batch or ()), axis_name), to="varying")
    if tensor is not None:
        B, C = (lax.pcast(x, (tensor,), to="varying") for x in (B, C))
    # A zero initial state varying over the same mesh axes as the scan's carry (zeros_like keeps
    # the varying axes of its argument; a plain jnp.zeros would not match inside shard_map).
    h0 = jnp.zeros_like(u[:, 0, :, None] * A[None])  # [B, D, N]
    y, h_local = selective_scan(
        u,
        delta,
        A,
        B,
        C,
        method=method,
        chunk_size=chunk_size,
        initial_state=h0,
        return_last_state=True,
    )  # [B, L, D], [B, D, N]
    total_delta = jnp.sum(delta, axis=1)  # [B, D]
    packed = jnp.concatenate([h_local, total_delta[..., None]], axis=-1)  # [B, D, N + 1]
    gathered = lax.all_gather(packed, axis_name)  # [W, B, D, N + 1]
    states, sums = gathered[..., :-1], gathered[..., -1:]  # [W, B, D, N], [W, B, D, 1]

    def combine(first, second):  # (Σ Δ, h): (s_a + s_b, exp(A s_b) ⊙ h_a + h_b)
        return first[0] + second[0], jnp.exp(second[0] * A[None, None]) * first[1] + second[1]

    prefix = lax.associative_scan(combine, (sums, states), axis=0)[1]  # [W, B, D, N]
    h_in = _exclusive(prefix, lax.axis_index(axis_name))  # [B, D, N]
    y = y + _correction(jnp.cumsum(delta, axis=1), A, h_in, C, chunk_size)
    if D is not None:
        y = y + u * D[None, None]
    if z is not None:
        y = y * jax.nn.silu(z)
    return y  # [B, L, D]


def sequence_parallel_selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus: bool = False,
    *,
    mesh,
    axis_name: str = "sequence",
    method: str = "auto",
    chunk_size: int = 64,
) -> jax.Array:
    r"""Sequence-parallel Mamba selective scan: one all-gather of (final state, Σ Δ) per shard.

    .. math::

        h^{(j)} = \text{scan of shard } j \text{ from } 0, \quad
        \sigma^{(j)} = \sum_{t \in j} \Delta_t, \quad
        h_{\mathrm{in}}^{(i)} = \bigcirc_{j<i} (\sigma^{(j)}, h^{(j)}), \quad
        y_t = y^{\mathrm{local}}_t + \big\langle e^{A \odot \sum_{s \le t, s \in i} \Delta_s}
              \odot h_{\mathrm{in}}^{(i)}, C_t \big\rangle

    with :math:`(\sigma_a, h_a) \circ (\sigma_b, h_b) = (\sigma_a + \sigma_b,
    e^{A \sigma_b} \odot h_a + h_b)` (a shard's decay is :math:`\prod_t e^{\Delta_t A} =
    e^{A \odot \sigma}`), then :math:`+ D u` and :math:`\odot\,\mathrm{silu}(z)`. Gathered:
    ``[W, B, D, N + 1]`` float32. The local scan is
    :func:`~jaxdiv.models.selective_scan.selective_scan` (``method``, ``chunk_size``); the
    correction is computed in closed form in chunks of ``chunk_size`` tokens (extra memory
    O(B·chunk_size·D·N), rematerialised in the backward pass), costing about one more
    exponential per [B, L, D, N] element, fully parallel over L.

    Args:
      u: input, [B, L, D].
      delta: Δ before bias and softplus, [B, L, D].
      A: [D, N], real and negative.
      B: [B, L, N].
      C: [B, L, N].
      D: skip, [D] or None.
      z: gate, [B, L, D] or None.
      delta_bias: [D] or None.
      delta_softplus: apply softplus to ``delta`` (+ bias).
      mesh: a ``jax.sharding.Mesh`` with ``axis_name`` (D is sharded over ``"tensor"`` when
        present).
      axis_name: the mesh axis the sequence is split over; L must be a multiple of its size.
      method: the local ``selective_scan`` method.
      chunk_size: the local scan's chunk size and the correction's chunk length.

    Returns:
      y [B, L, D] in u's dtype.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxdiv.models.selective_scan import selective_scan
      >>> auto = (jax.sharding.AxisType.Auto,)
      >>> mesh = jax.make_mesh((jax.device_count(),), ("sequence",), axis_types=auto)
      >>> k = jax.random.split(jax.random.key(0), 4)
      >>> u, delta = jax.random.normal(k[0], (2, 2, 16, 3))
      >>> A = -jnp.exp(jax.random.normal(k[1], (3, 4)))
      >>> B, C = jax.random.normal(k[2], (2, 2, 16, 4))
      >>> y = sequence_parallel_selective_scan(u, delta, A, B, C, delta_softplus=True, mesh=mesh)
      >>> y_ref = selective_scan(u, delta, A, B, C, delta_softplus=True)
      >>> bool(jnp.allclose(y, y_ref, atol=1e-5))
      True

    References:
      Gu and Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
      https://arxiv.org/abs/2312.00752, Eq. (2); Sun et al., "LASP-2",
      https://arxiv.org/abs/2502.07563, Section 3 (all-gather of memory states).
    """
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    arrays = [u, delta, A, B, C, D, z, delta_bias]
    arrays = [
        None if x is None else _checks.float_array(x, n) for n, x in zip(names, arrays, strict=True)
    ]
    u, delta, A, B, C, D, z, delta_bias = arrays
    if u.ndim != 3:
        raise ValueError(f"`u` must have shape [B, L, D], got shape {u.shape}.")
    Bsz, L, Dch = u.shape
    if A.ndim != 2 or A.shape[0] != Dch:
        raise ValueError(f"`A` must have shape ({Dch}, N) [D, N], got {A.shape}.")
    shape_bn = (Bsz, L, A.shape[1])
    for name, x, shape, layout in (
        ("delta", delta, u.shape, "[B, L, D]"),
        ("B", B, shape_bn, "[B, L, N]"),
        ("C", C, shape_bn, "[B, L, N]"),
        ("D", D, (Dch,), "[D]"),
        ("z", z, u.shape, "[B, L, D]"),
        ("delta_bias", delta_bias, (Dch,), "[D]"),
    ):
        if x is not None:
            _checks.exact_shape(x, shape, name, layout)
    batch, tensor = _layout(mesh, axis_name, L, Bsz, Dch)
    dtype = _checks.compute_dtype(*[x for x in arrays if x is not None])
    u_f, delta_f, A, B, C = (x.astype(dtype) for x in (u, delta, A, B, C))
    if delta_bias is not None:
        delta_f = delta_f + delta_bias.astype(dtype)[None, None]
    if delta_softplus:
        delta_f = jax.nn.softplus(delta_f)  # Δ, [B, L, D]
    seq, bn = P_(batch, axis_name, tensor), P_(batch, axis_name, None)
    args, specs = [u_f, delta_f, A, B, C], [seq, seq, P_(tensor, None), bn, bn]
    for x, spec in ((D, P_(tensor)), (z, seq)):
        if x is not None:
            args.append(x.astype(dtype))
            specs.append(spec)
    has_D, has_z = D is not None, z is not None

    def body(u, delta, A, B, C, *rest):
        rest = list(rest)
        D = rest.pop(0) if has_D else None
        z = rest.pop(0) if has_z else None
        return _scan_local(
            u,
            delta,
            A,
            B,
            C,
            D,
            z,
            axis_name=axis_name,
            batch=batch,
            tensor=tensor,
            method=method,
            chunk_size=chunk_size,
        )

    y = jax.shard_map(body, mesh=mesh, in_specs=tuple(specs), out_specs=seq)(*args)
    return y.astype(u.dtype)  # [B, L, D]


# --- S4 / S4D -----------------------------------------------------------------------------------


def _two_level(length: int) -> tuple[int, int]:
    """(J, T) with J·T ≥ length, T = ⌈√length⌉."""
    T = math.isqrt(max(length - 1, 0)) + 1
    return -(-length // T), T


class _LTI:
    """Powers of a time-invariant Ā acting on [..., H, N2] vectors: diagonal in log space
    (``log_abar`` [H, N2], powers are exponentials of multiples) or dense (``abar`` [H, N2, N2],
    powers by repeated products)."""

    def __init__(self, log_abar=None, abar=None):
        self.log_abar, self.abar = log_abar, abar

    def power(self, m: int) -> "_LTI":
        if self.abar is None:
            return _LTI(log_abar=m * self.log_abar)
        return _LTI(abar=jnp.linalg.matrix_power(self.abar, m))

    def apply(self, x):  # Ā x, x [..., H, N2]
        if self.abar is None:
            return lax.expand_dims(jnp.exp(self.log_abar), tuple(range(x.ndim - 2))) * x
        return jnp.einsum("hmn,...hn->...hm", self.abar, x, precision=_HIGHEST)

    def apply_row(self, c):  # c Ā, c [..., H, N2] (row vectors)
        if self.abar is None:
            return self.apply(c)
        return jnp.einsum("...hm,hmn->...hn", c, self.abar, precision=_HIGHEST)

    def orbit(self, x, count: int, *, row: bool = False):
        """[count, ..., H, N2]: Ā^t x (or x Ā^t for rows), t = 0 … count − 1."""
        if self.abar is None:
            t = jnp.arange(count, dtype=self.log_abar.real.dtype)
            powers = jnp.exp(lax.expand_dims(t, (1, 2)) * self.log_abar[None])  # [T, H, N2]
            return lax.expand_dims(powers, tuple(range(1, 1 + x.ndim - 2))) * x[None]
        step = self.apply_row if row else self.apply

        def body(y, _):
            return step(y), y

        return lax.scan(body, x, None, length=count)[1]

    def horner(self, xs):
        """Σ_j Ā^j xs_j for xs [J, ..., H, N2]."""
        if self.abar is None:
            return jnp.sum(self.orbit(jnp.ones_like(xs[0]), xs.shape[0]) * xs, axis=0)

        def body(h, x):
            return self.apply(h) + x, None

        return lax.scan(body, jnp.zeros_like(xs[0]), xs, reverse=True)[0]


def _final_state(u, op: _LTI, Bbar):
    """h = Σ_s Ā^{L−1−s} B̄ u_s from a zero state, u [B, L, H] → complex [B, H, N2].

    Two-level in the lag r = L − 1 − s = jT + t: an inner contraction against Ā^t B̄ (T powers)
    gives [B, J, H, N2], then Σ_j Ā^{jT} (J powers).
    """
    Bsz, L, H = u.shape
    J, T = _two_level(L)
    rev = jnp.pad(jnp.flip(u, axis=1), ((0, 0), (0, J * T - L), (0, 0)))  # [B, J·T, H]
    rev = rev.reshape(Bsz, J, T, H).astype(Bbar.dtype)
    inner = jnp.einsum("bjth,thn->jbhn", rev, op.orbit(Bbar, T), precision=_HIGHEST)
    return op.power(T).horner(inner)  # Σ_j Ā^{jT} inner_j, [B, H, N2]


def _s4_correction(op: _LTI, C, h_in, length: int):
    """2 Re(C Ā^{t+1} h_in) for t < length, [B, length, H] real (two-level, t = jT + τ)."""
    J, T = _two_level(length)
    rows = op.power(T).orbit(C, J, row=True)  # [J, H, N2]
    cols = op.orbit(op.apply(h_in), T)  # [T, B, H, N2]
    y = 2 * jnp.einsum("jhn,tbhn->bjth", rows, cols, precision=_HIGHEST).real  # [B, J, T, H]
    return y.reshape(y.shape[0], J * T, -1)[:, :length]  # [B, L, H]


def _s4_local(u, Lambda, Bm, C, log_dt, D, P, *, axis_name):
    L = u.shape[1]
    dt = jnp.exp(log_dt)  # [H]
    if P is None:
        K = sk.ssm_kernel_diag(Lambda, Bm, C, log_dt, L)  # [H, L]
        op = _LTI(log_abar=dt[:, None] * Lambda)
        Bbar = sk.discretize_zoh(Lambda, Bm, log_dt)[1]  # [H, N2]
    else:
        K = sk.ssm_kernel_dplr(Lambda, P, Bm, C, log_dt, L)  # [H, L]
        Abar, Bbar = sk.discretize_dplr(Lambda, P, Bm, log_dt)  # [H, N2, N2], [H, N2]
        op = _LTI(abar=Abar)
    y = sk.causal_conv_fft(u, K, D)  # [B, L, H] local output from a zero state
    h_local = _final_state(u, op, Bbar)  # [B, H, N2] complex
    pairs = jnp.stack([h_local.real, h_local.imag], axis=-1)  # [B, H, N2, 2]
    gathered = lax.all_gather(pairs, axis_name)  # [W, B, H, N2, 2]
    states = lax.complex(gathered[..., 0], gathered[..., 1])  # [W, B, H, N2]
    shard_op, index = op.power(L), lax.axis_index(axis_name)

    def fold(h, xs):  # h_in = Σ_{j<i} Ā^{L(i−1−j)} h_j (Horner over the shards before i)
        j, h_j = xs
        return jnp.where(j < index, shard_op.apply(h) + h_j, h), None

    h_in = lax.scan(fold, jnp.zeros_like(states[0]), (jnp.arange(states.shape[0]), states))[0]
    return y + _s4_correction(op, C, h_in, L)  # [B, L, H]


def sequence_parallel_s4(
    u, Lambda, B, C, log_dt, D=None, *, P=None, mesh, axis_name: str = "sequence"
) -> jax.Array:
    r"""Sequence-parallel S4 / S4D layer (the SSM convolution of ``S4Block``) by state passing.

    .. math::

        y_t = \sum_{s \le t} K_{t-s} u_s + D u_t
            = y^{\mathrm{local}}_t + 2 \operatorname{Re}\big(C \bar A^{\,t+1} h_{\mathrm{in}}\big),
        \quad h^{(j)} = \sum_{s \in j} \bar A^{L_W - 1 - s} \bar B u_s, \quad
        h_{\mathrm{in}}^{(i)} = \sum_{j<i} (\bar A^{L_W})^{i-1-j} h^{(j)}

    per channel, with t local to shard i, :math:`y^{\mathrm{local}}` the FFT convolution of the
    shard with the kernel truncated to :math:`L_W` taps, :math:`K_l = 2\operatorname{Re}(C \bar A^l
    \bar B)`. Only the final states :math:`h^{(j)}` are gathered (Ā is the same on every
    shard): ``[W, B, H, N2, 2]`` float, independent of L; the input is never gathered.
    ``P=None``: S4D (diagonal Ā = e^{ΔΛ}, ZOH, powers in log space; ``S4Block(mode="diag")``);
    ``P`` given: S4 (A = diag(Λ) − PPᴴ, bilinear, dense Ā; ``S4Block(mode="dplr")``).

    Args:
      u: input, real [B, L, H].
      Lambda: complex [H, N2] (Re < 0), the diagonal part of A.
      B: complex [H, N2].
      C: complex [H, N2], the plain output vector.
      log_dt: real [H].
      D: skip, real [H] or None.
      P: None, complex [H, N2] or [R, H, N2] (low-rank part, DPLR).
      mesh: a ``jax.sharding.Mesh`` with ``axis_name`` (H over ``"tensor"`` when present).
      axis_name: the mesh axis the sequence is split over; L must be a multiple of its size.

    Returns:
      y [B, L, H] float32 (float64 for float64 inputs), as
      ``causal_conv_fft(u, kernel(L), D)`` on one device.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxdiv.models import s4_kernels as sk
      >>> auto = (jax.sharding.AxisType.Auto,)
      >>> mesh = jax.make_mesh((jax.device_count(),), ("sequence",), axis_types=auto)
      >>> Lambda = jnp.full((3, 4), -0.5 + 1j)
      >>> Bm = C = jnp.ones((3, 4), jnp.complex64)
      >>> u = jax.random.normal(jax.random.key(0), (2, 16, 3))
      >>> y = sequence_parallel_s4(u, Lambda, Bm, C, jnp.zeros(3), mesh=mesh)
      >>> y_ref = sk.causal_conv_fft(u, sk.ssm_kernel_diag(Lambda, Bm, C, jnp.zeros(3), 16))
      >>> bool(jnp.allclose(y, y_ref, atol=1e-4))
      True

    References:
      Gu, Goel, Ré, "Efficiently Modeling Long Sequences with Structured State Spaces",
      https://arxiv.org/abs/2111.00396, Eq. (3)–(5); Gu, Gupta, Goel, Ré, "On the
      Parameterization and Initialization of Diagonal State Space Models",
      https://arxiv.org/abs/2206.11893, Section 3; Sun et al., "LASP-2",
      https://arxiv.org/abs/2502.07563, Section 3.
    """
    u = _checks.float_array(u, "u")
    if u.ndim != 3:
        raise ValueError(f"`u` must have shape [B, L, H], got shape {u.shape}.")
    Lambda, Bm, C, log_dt = (jnp.asarray(x) for x in (Lambda, B, C, log_dt))
    H = u.shape[-1]
    for name, x in (("Lambda", Lambda), ("B", Bm), ("C", C)):
        if x.ndim != 2 or x.shape[0] != H:
            raise ValueError(f"`{name}` must have shape ({H}, N2) [H, N2], got {x.shape}.")
    batch, tensor = _layout(mesh, axis_name, u.shape[1], u.shape[0], H)
    rdtype = _checks.compute_dtype(u, log_dt, *(x.real for x in (Lambda, Bm, C)))
    cdtype = jnp.promote_types(rdtype, jnp.complex64)
    hn = P_(tensor, None)
    args = [u.astype(rdtype), *(x.astype(cdtype) for x in (Lambda, Bm, C)), log_dt.astype(rdtype)]
    specs = [P_(batch, axis_name, tensor), hn, hn, hn, P_(tensor)]
    if D is not None:
        args.append(_checks.float_array(D, "D").astype(rdtype))
        specs.append(P_(tensor))
    if P is not None:
        P = jnp.asarray(P)
        P = P[None] if P.ndim == 2 else P  # [R, H, N2]
        _checks.exact_shape(P, (P.shape[0], *Lambda.shape), "P", "[H, N2] or [R, H, N2]")
        args.append(P.astype(cdtype))
        specs.append(P_(None, tensor, None))
    has_D, has_P = D is not None, P is not None

    def body(u, Lambda, Bm, C, log_dt, *rest):
        rest = list(rest)
        D = rest.pop(0) if has_D else None
        P = rest.pop(0) if has_P else None
        return _s4_local(u, Lambda, Bm, C, log_dt, D, P, axis_name=axis_name)

    seq = P_(batch, axis_name, tensor)
    return jax.shard_map(body, mesh=mesh, in_specs=tuple(specs), out_specs=seq)(*args)
