"""Divergences of LM-head logits computed in row chunks, never holding [N, V] logits."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxdiv import checks
from jaxdiv._registry import get


def fused_linear_divergence(
    student_hidden: ArrayLike,
    student_weight: ArrayLike,
    teacher_hidden: ArrayLike,
    teacher_weight: ArrayLike,
    *,
    divergence: str | Callable[..., jax.Array] = "forward_kl",
    chunk_size: int = 1024,
    temperature: float | jax.Array = 1.0,
    where: ArrayLike | None = None,
    **kwargs: Any,
) -> jax.Array:
    r"""Per-row divergence of ``student_hidden @ student_weight`` vs ``teacher_hidden @
    teacher_weight``, in row chunks so that no ``[N, V]`` logits exist at once.

    .. math::
        D_i = D\!\left(h^s_i W^s,\; h^t_i W^t\right), \qquad i = 1..N

    The rows are processed ``chunk_size`` at a time under ``jax.checkpoint`` inside a
    ``lax.map``: the forward pass keeps only the ``[N]`` results, and the backward pass
    recomputes each chunk's logits before differentiating it, so forward and backward hold
    ``[chunk_size, V]`` logits of each model instead of ``[N, V]``. The price is one extra
    pair of chunk matmuls in the backward pass. The result equals the unfused divergence.

    Args:
        student_hidden: student final hidden states, shape ``[N, d_s]`` (or ``[..., d_s]``,
            leading dims flattened).
        student_weight: student LM head, shape ``[d_s, V]``.
        teacher_hidden: teacher final hidden states, shape ``[N, d_t]`` (same leading dims).
        teacher_weight: teacher LM head, shape ``[d_t, V]``.
        divergence: a registry name (``jaxdiv.names()``) or a per-row divergence function
            ``fn(student_logits, teacher_logits, *, temperature, where, **kwargs)``.
        chunk_size: rows per chunk (``N`` is padded up to a multiple internally).
        temperature: softmax temperature, passed to the divergence.
        where: optional boolean row mask, shape ``[N]`` (or the leading dims).
        **kwargs: further keyword arguments of the divergence (e.g. ``beta``).

    Returns:
        Divergence per row, shape ``[N]`` (the leading dims), float32 at least.

    Examples:
        >>> import jax, jax.numpy as jnp, jaxdiv
        >>> ks = jax.random.split(jax.random.key(0), 4)
        >>> hs, ws = jax.random.normal(ks[0], (10, 4)), jax.random.normal(ks[1], (4, 7))
        >>> ht, wt = jax.random.normal(ks[2], (10, 3)), jax.random.normal(ks[3], (3, 7))
        >>> fused = jaxdiv.fused_linear_divergence(hs, ws, ht, wt, divergence="jensen_shannon",
        ...                                        chunk_size=4)
        >>> bool(jnp.allclose(fused, jaxdiv.jensen_shannon(hs @ ws, ht @ wt), atol=1e-6))
        True

    References:
        Hsu et al., `Liger Kernel: Efficient Triton Kernels for LLM Training
        <https://arxiv.org/abs/2410.10989>`_, 2024 (fused linear cross-entropy / JSD).
    """
    fn = get(divergence) if isinstance(divergence, str) else divergence
    if not callable(fn):
        raise TypeError(f"`divergence` must be a registry name or a callable, got {fn!r}.")
    hs = checks.float_array(student_hidden, "student_hidden")
    ws = checks.float_array(student_weight, "student_weight")
    ht = checks.float_array(teacher_hidden, "teacher_hidden")
    wt = checks.float_array(teacher_weight, "teacher_weight")
    checks.min_rank(hs, 1, "student_hidden", "[N, d_s]")
    checks.min_rank(ht, 1, "teacher_hidden", "[N, d_t]")
    if ws.ndim != 2 or ws.shape[0] != hs.shape[-1]:
        raise ValueError(
            f"`student_weight` must have shape [d_s={hs.shape[-1]}, V], got {ws.shape}."
        )
    checks.exact_shape(wt, (ht.shape[-1], ws.shape[1]), "teacher_weight", "[d_t, V]")
    if hs.shape[:-1] != ht.shape[:-1]:
        raise ValueError(
            "`student_hidden` and `teacher_hidden` must have the same leading (row) dims, got "
            f"{hs.shape[:-1]} and {ht.shape[:-1]}."
        )
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int, got {chunk_size!r}.")
    rows_shape = hs.shape[:-1]
    if where is None:
        where = jnp.ones(rows_shape, bool)
    where = jnp.asarray(where)
    if where.dtype != jnp.bool_:
        raise TypeError(f"`where` must be a boolean mask, got dtype {where.dtype}.")
    checks.exact_shape(where, rows_shape, "where", "row mask")

    hs, ht, where = hs.reshape(-1, hs.shape[-1]), ht.reshape(-1, ht.shape[-1]), where.reshape(-1)
    n = hs.shape[0]
    chunk = min(chunk_size, max(n, 1))
    pad = -n % chunk
    # Padding rows are masked, so they give exactly 0 and no gradient.
    hs, ht = jnp.pad(hs, ((0, pad), (0, 0))), jnp.pad(ht, ((0, pad), (0, 0)))
    where = jnp.pad(where, (0, pad))
    num_chunks = (n + pad) // chunk

    @jax.checkpoint
    def one_chunk(xs):
        h_s, h_t, w = xs
        return fn(h_s @ ws, h_t @ wt, temperature=temperature, where=w, **kwargs)  # [C]

    per_row = jax.lax.map(
        one_chunk,
        (
            hs.reshape(num_chunks, chunk, -1),
            ht.reshape(num_chunks, chunk, -1),
            where.reshape(num_chunks, chunk),
        ),
    )
    return per_row.reshape(-1)[:n].reshape(rows_shape)
