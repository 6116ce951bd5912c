"""Pallas kernels for Mamba-2's SSD (state-space duality), chunked form.

SSD is causal linear attention with a scalar decay per head and step (Dao & Gu 2024, Section
5): with q = C, k = B, v = Δ x and log decay a = Δ A,

    S_t = e^{Δ_t A} S_{t−1} + Δ_t x_t B_tᵀ  (S [p, n]),   y_t = S_t C_t + D x_t,

is ``linear_attention`` with per-head decay on the transposed state Sᵀ ``[n, p]`` and no
q scaling. So this module runs the per-head-decay kernels of
:mod:`jaxdiv.models.kernels.linear_attention` (forward kernel over (batch, heads) carrying the
state across chunks, per chunk the masked ``[T, T]`` matmul C Bᵀ ⊙ L plus the incoming state's
term; backward kernel over the chunks in reverse from checkpointed chunk states; custom VJP)
with B and C read per *group*: the BlockSpec index map sends head i to group i // (h / g), so
the grouped B, C are never repeated in memory; their per-head cotangents are summed over each
group after the backward kernel. Δ x, Δ A, the chunk-local cumulative sum of Δ A and the D x
skip are ordinary JAX around the kernels (their gradients, w.r.t. dt, A and D, come from
autodiff). Residual memory for the backward pass: the chunk-entering states, b·h·p·n·L/T
floats. Lowering notes are those of the linear-attention kernels: it lowers for TPU and GPU
from a CPU host, and has not been compiled or run on a device.
"""

# b batch, L length, h heads, p head dim, g groups, r = h / g, n state, T chunk length

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv.models.kernels.linear_attention import chunked_heads_major


def ssd_grouped(
    x: jax.Array,
    dt: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    S0: jax.Array,
    *,
    chunk_size: int,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
    """SSD on the op's grouped layout: x ``[b, L, g, r, p]``, dt ``[b, L, g, r]``, A ``[g, r]``,
    B, C ``[b, L, g, n]``, S0 ``[b, g, r, p, n]`` → (y ``[b, L, g, r, p]``, S_L like S0)."""
    b, L, g, r, p = x.shape
    n = B.shape[-1]
    h = g * r
    heads = lambda v: jnp.moveaxis(v.reshape(b, L, h, -1), 1, 2)  # [b, h, L, ·]
    q = jnp.moveaxis(C, 1, 2)  # [b, g, L, n]
    k = jnp.moveaxis(B, 1, 2)
    v = heads(x * dt[..., None])  # Δ x [b, h, L, p]
    log_decay = heads(dt * A.reshape(1, 1, g, r))  # Δ A [b, h, L, 1]
    state = jnp.swapaxes(S0.reshape(b, h, p, n), 2, 3)  # [b, h, n, p]
    y, S = chunked_heads_major(
        q, k, v, log_decay, state, chunk_size=chunk_size, interpret=interpret
    )
    y = jnp.moveaxis(y, 1, 2).reshape(b, L, g, r, p)
    return y, jnp.swapaxes(S, 2, 3).reshape(b, g, r, p, n)


def ssd(
    x: ArrayLike,
    dt: ArrayLike,
    A: ArrayLike,
    B: ArrayLike,
    C: ArrayLike,
    *,
    D: ArrayLike | None = None,
    chunk_size: int = 64,
    initial_state: ArrayLike | None = None,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""Mamba-2 SSD as Pallas kernels (forward and custom-VJP backward).

    .. math::

        S_t = e^{\Delta_t A} S_{t-1} + \Delta_t\, x_t B_t^\top, \qquad y_t = S_t C_t + D x_t

    in the layouts of ``jaxdiv.models.ssd`` (x ``[b, L, h, p]``, dt ``[b, L, h]``, A ``[h]``,
    B, C ``[b, L, g, n]`` with head i reading group i // (h / g), D ``[h]``, S_0 ``[b, h, p,
    n]``), computed in the inputs' common dtype (float32 at least). The op's
    ``method="pallas"`` validates its inputs and calls the same core.

    Args:
      x: input.
      dt: Δ, positive.
      A: per-head decay rate, negative.
      B: input projections.
      C: output projections.
      D: skip or None.
      chunk_size: T, tokens per chunk (L need not be a multiple).
      initial_state: S_0 or None (zeros).
      interpret: Pallas interpret mode; None: on CPU only.

    Returns:
      ``(y [b, L, h, p], S_L [b, h, p, n])``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> k = jax.random.split(jax.random.key(0), 3)
      >>> x = jax.random.normal(k[0], (1, 10, 4, 3))
      >>> dt = jax.nn.softplus(jax.random.normal(k[1], (1, 10, 4)))
      >>> B, C = jax.random.normal(k[2], (2, 1, 10, 2, 5))
      >>> y, S = ssd(x, dt, -jnp.arange(1.0, 5.0), B, C, chunk_size=4)
      >>> y.shape, S.shape
      ((1, 10, 4, 3), (1, 4, 3, 5))
    """
    x, dt, A, B, C = (jnp.asarray(v) for v in (x, dt, A, B, C))
    arrays = [x, dt, A, B, C] + [v for v in (D, initial_state) if v is not None]
    dtype = jnp.promote_types(jnp.result_type(*arrays), jnp.float32)
    b, L, h, p = x.shape
    g, n = B.shape[-2:]
    r = h // g
    if initial_state is None:
        S0 = jnp.zeros((b, g, r, p, n), dtype)
    else:
        S0 = jnp.asarray(initial_state, dtype).reshape(b, g, r, p, n)
    xf = x.astype(dtype)
    y, S = ssd_grouped(
        xf.reshape(b, L, g, r, p),
        dt.astype(dtype).reshape(b, L, g, r),
        A.astype(dtype).reshape(g, r),
        B.astype(dtype),
        C.astype(dtype),
        S0,
        chunk_size=chunk_size,
        interpret=interpret,
    )
    y = y.reshape(b, L, h, p)
    if D is not None:
        y = y + xf * jnp.asarray(D, dtype).reshape(1, 1, h, 1)
    return y, S.reshape(b, h, p, n)
