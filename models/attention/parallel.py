"""Sequence-parallel attention-family mixers: LASP-2 (linear attention, LightNet), LASP-2H.

See :mod:`jaxdiv.models.parallel` for the scheme (one all-gather of L-independent states).
"""

# B batch, L length (per shard inside shard_map), H heads, K key dim d_k, V value dim d_v,
# W shards

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P_

from jaxdiv import checks
from jaxdiv.models.sharding import exclusive_prefix, jit_shard_map, shard_layout

from .lightnet import LightNetState, lightnet_attention
from .linear import (
    _check_log_decay,
    _check_qkv,
    combine_linear_attention_states,
    linear_attention,
    linear_attention_chunk_state,
    linear_attention_inter,
)
from .softmax import check_implementation, softmax_attention

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
        incoming = exclusive_prefix(jnp.cumsum(states, axis=0), index)  # Σ_{j<i} S_j
    else:
        log_gammas = gathered[..., K * V :]  # [W, B, H, 1 or K]
        prefix = lax.associative_scan(
            combine_linear_attention_states, (log_gammas, states), axis=0
        )[1]  # [W, B, H, K, V]
        incoming = exclusive_prefix(prefix, index)
    # The output is linear in the entering state: the local chunked pass from a zero state plus
    # ``linear_attention_inter(q, incoming)``. The local pass does not depend on the all-gather,
    # so XLA's scheduler can run it while the states are in flight (LASP-2's overlap of
    # communication with the intra-chunk computation); only the cheap inter term waits.
    zero = jnp.zeros_like(state)  # varying over the shards, like the inputs (shard_map types)
    local = linear_attention(
        q, k, v, log_decay=g, scale=scale, chunk_size=chunk_size, initial_state=zero
    )
    inter = linear_attention_inter(q, incoming, log_decay=g, scale=scale)  # [B, L, H, V]
    return (local + inter).astype(local.dtype)  # [B, L, H, V]


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
    :func:`~jaxdiv.models.attention.linear.linear_attention` on one device.

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
      >>> from jaxdiv.models.attention.linear import linear_attention
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
    batch, tensor = shard_layout(mesh, axis_name, L, B, H)
    dtype = checks.compute_dtype(q, k, v, *([] if log_decay is None else [log_decay]))
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

    o = jit_shard_map(body, mesh=mesh, in_specs=tuple(specs), out_specs=spec)(*args)
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
    :func:`~jaxdiv.models.attention.lightnet.lightnet_attention` from the state
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
      >>> from jaxdiv.models.attention.lightnet import lightnet_attention
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
    batch, tensor = shard_layout(mesh, axis_name, L, B, H)
    dtype = checks.compute_dtype(q, k, v)
    scale = K**-0.5 if scale is None else scale
    spec = P_(batch, axis_name, tensor, None)

    def body(q, k, v):
        return _lightnet_local(
            q, k, v, axis_name=axis_name, causal=causal, scale=scale, chunk_size=chunk_size
        )

    o = jit_shard_map(body, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec)(
        *(x.astype(dtype) for x in (q, k, v))
    )
    return o.astype(v.dtype)  # [B, L, H, V]


# --- LASP-2H: softmax attention -----------------------------------------------------------------


def lasp2h_attention(
    q,
    k,
    v,
    *,
    mesh,
    axis_name: str = "sequence",
    causal: bool = True,
    scale=None,
    implementation: str = "auto",
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
      implementation: ``softmax_attention``'s implementation for the local attention (the
        local queries against all gathered keys). ``"blockwise"`` keeps every shard from
        holding [L / W, L] scores. Causal, ``"auto"`` picks it off the CPU (the rotated keys
        come with an offset causal mask and a ``where``, which cuDNN cannot take); the
        bidirectional form may go to cuDNN.

    Returns:
      [B, L, H, dv] in v's dtype.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxdiv.models.attention.softmax import softmax_attention
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
    check_implementation(implementation)
    B, L, H, _ = q.shape
    batch, tensor = shard_layout(mesh, axis_name, L, B, H)
    spec = P_(batch, axis_name, tensor, None)

    def body(q, k, v):
        k = lax.all_gather(k, axis_name, axis=1, tiled=True)  # [B, L·W, H, d]
        v = lax.all_gather(v, axis_name, axis=1, tiled=True)
        if not causal:
            return softmax_attention(
                q, k, v, causal=False, scale=scale, implementation=implementation
            )
        local, total = q.shape[1], k.shape[1]
        index = lax.axis_index(axis_name)
        # Rotate so that shard i ends the key axis: [later shards | shards 0 … i].
        shift = total - (index + 1) * local
        k, v = (jnp.roll(x, shift, axis=1) for x in (k, v))
        where = jnp.arange(total) >= shift  # [S] keys of shards ≤ i
        where = jnp.broadcast_to(where[None], (q.shape[0], total))  # [B, S]
        return softmax_attention(
            q, k, v, causal=True, scale=scale, where=where, implementation=implementation
        )

    return jit_shard_map(body, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec)(q, k, v)
