"""Test configuration: 8 simulated CPU devices and strict rank promotion, set before JAX starts."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache per test session, inherited by the subprocesses (CLI runs,
# notebook kernels, multi-process tests): the many tiny train runs compile the same programs,
# and a cache hit skips XLA. Fresh per session, so no stale executable survives a change.
_COMPILATION_CACHE = tempfile.mkdtemp(prefix="jaxdiv-test-xla-cache-")
atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _COMPILATION_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# Tests run tiny programs, so XLA's optimising passes cost more than they save: without them a
# train run takes two thirds of the time (measured on the train tests). Semantics are the same;
# tests about what the optimised program contains ask for it with `xla_optimized`. Subprocesses
# inherit this; the README's main job and the benchmarks run fully optimised.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# Property tests (tests/losses/test_properties.py): `ci` (the default, so that a random draw
# never decides a CI run) is bounded and reproducible; `default` draws fresh random examples
# (HYPOTHESIS_PROFILE=default) to explore locally. No example database is written
# (the tree is shared); the first example of each test pays JAX compilation, hence no deadline.
# The function-scoped fixtures used there (trace counter, rank-promotion switch) hold no
# per-example state.
_HYPOTHESIS = dict(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile("default", max_examples=25, **_HYPOTHESIS)
settings.register_profile("ci", max_examples=15, derandomize=True, print_blob=True, **_HYPOTHESIS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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
def xla_optimized():
    """Compiles with XLA's optimisations on (fusion, LLVM passes), as users' programs are."""
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture
def x64():
    """Enables float64 for references that need it."""
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def pytest_configure(config):
    # hypothesis's failure report touches mypy_extensions.TypedDict, deprecated; with the
    # project's `filterwarnings = error` that would hide the failing example.
    config.addinivalue_line(
        "filterwarnings", "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
    )
