"""Registry of the per-row divergences, keyed by function name (what configs select).

The keys are the contract of API.md §2: every verified per-row divergence plus ``bd_kd``,
which API.md lists although it is a reconstruction (the BD-KD paper publishes no method
equations); it lives in ``jaxdiv.experimental`` with its sources, and ``experimental.names()``
lists every reconstruction.
"""

from collections.abc import Callable

import jax

from jaxdiv import _distillation, _divergences, experimental

_REGISTRY: dict[str, Callable[..., jax.Array]] = {
    fn.__name__: fn
    for fn in (
        _divergences.forward_kl,
        _divergences.reverse_kl,
        _divergences.generalized_jsd,
        _divergences.jensen_shannon,
        _divergences.skew_kl,
        _divergences.skew_reverse_kl,
        _divergences.total_variation,
        _divergences.hellinger,
        _divergences.chi_squared,
        _divergences.alpha_divergence,
        _divergences.f_divergence,
        _divergences.hinton_kd,
        _distillation.top_k_kl,
        experimental.bd_kd,
    )
}


def register(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """Adds a per-row divergence ``fn(student_logits, teacher_logits, **kw)`` under its name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def names() -> tuple[str, ...]:
    """The registered divergence names, sorted.

    Examples:
        >>> import jaxdiv
        >>> "forward_kl" in jaxdiv.names()
        True
    """
    return tuple(sorted(_REGISTRY))


def get(name: str) -> Callable[..., jax.Array]:
    """The per-row divergence registered as ``name``; ``ValueError`` listing ``names()`` if none.

    Examples:
        >>> import jaxdiv
        >>> jaxdiv.get("reverse_kl") is jaxdiv.reverse_kl
        True
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown divergence {name!r}; expected one of {list(names())}.")
    return _REGISTRY[name]
