"""Test configuration: 8 simulated CPU devices and strict rank promotion, set before JAX starts."""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True)
def _fresh_trace_counter():
    """`chex.assert_max_traces` counts per function name: start every test from zero."""
    import chex

    chex.clear_trace_counter()


@pytest.fixture
def rng():
    """A fresh JAX PRNG key for each test."""
    return jax.random.key(0)


@pytest.fixture
def allow_rank_promotion():
    """ott-jax 0.6 relies on implicit rank promotion, also in its custom VJPs (traced after any
    `with` block closes), so tests that differentiate through ott relax the setting whole."""
    jax.config.update("jax_numpy_rank_promotion", "allow")
    yield
    jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Enables float64 for references that need it."""
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)
