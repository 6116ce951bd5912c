"""Checkpointer: round trips (NNX state, optimizer moments, RNG keys, extra), restore onto other
meshes, keep-last-N, save interval, async saves, interrupted steps, errors."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from jaxdiv.train.checkpoint import Checkpointer


class _Net(nnx.Module):
    def __init__(self, *, rngs):
        self.linear = nnx.Linear(4, 8, rngs=rngs)
        self.norm = nnx.BatchNorm(8, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.dropout(self.norm(self.linear(x)))


def _trained_state(seed):
    """Model + AdamW state after two steps: moments, batch stats and RNG counts are not trivial."""
    model = _Net(rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(seed + 1), (16, 4))

    @nnx.jit
    def train_step(model, optimizer):
        optimizer.update(model, nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model))

    for _ in range(2):
        train_step(model, optimizer)
    return model, optimizer


def _host(tree):
    """NumPy copy of every leaf (PRNG keys as their raw data), independent of the checkpointer."""
    return jax.tree.map(
        lambda x: np.asarray(
            jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        ),
        tree,
    )


def test_nnx_round_trip_with_extra(tmp_path):
    model, optimizer = _trained_state(0)
    state = {"model": nnx.state(model), "opt": nnx.state(optimizer)}
    expected = _host(state)
    assert int(expected["opt"]["step"][...]) == 2  # moments and counts are not at their init
    extra = {
        "examples_seen": 4096,
        "config_hash": "ab12",
        "seeds": [0, 1],
        "lr": 1e-3,
        "nested": {"a": None},
    }
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(5, state, extra)
        ckpt.wait()

    # A fresh process would rebuild the abstract state from the init, never from the saved values.
    fresh_model, fresh_opt = nnx.eval_shape(lambda: _trained_state(1))
    abstract = {"model": nnx.state(fresh_model), "opt": nnx.state(fresh_opt)}
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 5
        restored, restored_extra = ckpt.restore(5, abstract)
    assert restored_extra == extra
    chex.assert_trees_all_equal(_host(restored), expected)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    key = restored["model"]["dropout"]["rngs"]["key"][...]
    assert jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    # The restored state drives a model again.
    graphdef = nnx.graphdef(model)
    rebuilt = nnx.merge(graphdef, restored["model"])
    chex.assert_trees_all_equal(
        np.asarray(rebuilt.linear.kernel[...]), expected["model"]["linear"]["kernel"][...]
    )


def test_restore_onto_other_meshes(tmp_path):
    mesh8 = jax.make_mesh((8,), ("data",))
    w = np.arange(8 * 16, dtype=np.float32).reshape(8, 16) / 7.0
    b = np.linspace(-1.0, 1.0, 16, dtype=np.float32)
    count = np.int32(3)
    state = {
        "w": jax.device_put(w, NamedSharding(mesh8, P("data", None))),
        "b": jax.device_put(b, NamedSharding(mesh8, P("data"))),
        "count": jax.device_put(count, NamedSharding(mesh8, P())),
    }
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        assert ckpt.save(0, state)

        mesh24 = jax.make_mesh((2, 4), ("fsdp", "tensor"))
        target = {
            "w": NamedSharding(mesh24, P("fsdp", "tensor")),
            "b": NamedSharding(mesh24, P("tensor")),
            "count": NamedSharding(mesh24, P()),
        }
        one = SingleDeviceSharding(jax.devices()[5])
        for shardings in (target, {k: one for k in state}):
            abstract = {
                k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k])
                for k, v in state.items()
            }
            restored, extra = ckpt.restore(0, abstract)
            assert extra == {}
            for k, expected in (("w", w), ("b", b), ("count", count)):
                assert restored[k].sharding == shardings[k]
                np.testing.assert_array_equal(np.asarray(restored[k]), expected)


def test_keep_last_n_and_reopen(tmp_path):
    state = {"x": jnp.zeros(3)}
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        for step in range(5):
            assert ckpt.save(step, {"x": state["x"] + step})
        ckpt.wait()
        assert ckpt.all_steps() == [3, 4]
        assert ckpt.latest_step() == 4
    assert sorted(os.listdir(tmp_path)) == ["3", "4"]
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:  # a resumed run keeps counting
        assert ckpt.all_steps() == [3, 4]
        assert ckpt.save(5, state)
        ckpt.wait()
        assert ckpt.all_steps() == [4, 5]
        restored, _ = ckpt.restore(None, jax.eval_shape(lambda: state))
        np.testing.assert_array_equal(np.asarray(restored["x"]), np.zeros(3))
        restored, _ = ckpt.restore(4, jax.eval_shape(lambda: state))
        np.testing.assert_array_equal(np.asarray(restored["x"]), np.full(3, 4.0))


def test_save_interval_force_and_existing_step(tmp_path):
    state = {"x": jnp.ones(2)}
    with Checkpointer(tmp_path, save_interval_steps=10, max_to_keep=None) as ckpt:
        assert not ckpt.save(5, state)
        assert ckpt.save(10, state)
        assert not ckpt.save(15, state)
        assert ckpt.save(17, state, {"reason": "sigterm"}, force=True)
        assert not ckpt.save(17, state, force=True)  # already saved (e.g. resumed from it)
        assert ckpt.save(20, state)
        ckpt.wait()
        assert ckpt.all_steps() == [10, 17, 20]
        assert ckpt.restore(17, jax.eval_shape(lambda: state))[1] == {"reason": "sigterm"}


def test_async_save_copies_before_returning(tmp_path):
    """After an async save returns, the caller may delete (donate) its arrays."""
    mesh = jax.make_mesh((8,), ("data",))
    values = np.random.default_rng(0).normal(size=(256, 512)).astype(np.float32)
    x = jax.device_put(values, NamedSharding(mesh, P("data", None)))
    abstract = {"x": jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)}
    ckpt = Checkpointer(tmp_path, async_save=True)
    assert ckpt.save(1, {"x": x}, {"step": 1})
    assert ckpt.latest_step() == 1  # listed while (possibly) still being written
    x.delete()
    ckpt.wait()
    assert os.listdir(tmp_path) == ["1"]
    restored, extra = ckpt.restore(1, abstract)
    ckpt.close()
    np.testing.assert_array_equal(np.asarray(restored["x"]), values)
    assert extra == {"step": 1}


def test_interrupted_step_is_ignored(tmp_path):
    state = {"x": jnp.arange(3.0)}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(2, state, {"good": True})
    # A job killed while writing step 3 leaves orbax's temporary directory behind, unrenamed.
    stray = tmp_path / "3.orbax-checkpoint-tmp-1234567890"
    (stray / "state").mkdir(parents=True)
    (stray / "state" / "garbage").write_text("partial")
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [2]
        assert ckpt.latest_step() == 2
        restored, extra = ckpt.restore(None, jax.eval_shape(lambda: state))
    assert extra == {"good": True}
    np.testing.assert_array_equal(np.asarray(restored["x"]), np.arange(3.0))


def test_errors(tmp_path):
    state = {"x": jnp.ones(2)}
    with pytest.raises(ValueError, match="`max_to_keep` must be a positive int, got 0"):
        Checkpointer(tmp_path, max_to_keep=0)
    with pytest.raises(ValueError, match="`save_interval_steps` must be a positive int"):
        Checkpointer(tmp_path, save_interval_steps=-1)
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() is None
        with pytest.raises(FileNotFoundError, match="No checkpoint to restore"):
            ckpt.restore(None, state)
        with pytest.raises(TypeError, match="`extra` must be JSON-serialisable"):
            ckpt.save(0, state, {"array": np.ones(2)})
        with pytest.raises(TypeError, match="`extra` must be a dict, got list"):
            ckpt.save(0, state, [1])
        with pytest.raises(ValueError, match="`step` must be >= 0, got -1"):
            ckpt.save(-1, state)
        with pytest.raises(TypeError, match="`step` must be an int, got 1.5"):
            ckpt.save(1.5, state)
        ckpt.save(0, state)
        with pytest.raises(FileNotFoundError, match=r"expected one of \[0\], got 3"):
            ckpt.restore(3, state)
