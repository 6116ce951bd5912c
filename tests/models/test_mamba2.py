"""Mamba2Block and sequence_parallel_ssd: parity with Hugging Face Mamba2Mixer (weights copied
across), decoding, padding, sequence parallelism on the 8 forced CPU devices, bf16, parameters,
errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiv.models import Mamba2Block, ssd
from jaxdiv.models.common import decay_mask
from jaxdiv.models.parallel import sequence_parallel_ssd
from jaxdiv.train.hlo import compiled_collectives

D_MODEL, D_STATE, D_CONV, HEADDIM = 16, 8, 4, 8  # E = 32, H = 4
AXES = ("data", "fsdp", "sequence", "tensor")


def block(ngroups=2, **kw):
    return Mamba2Block(
        D_MODEL,
        d_state=D_STATE,
        d_conv=D_CONV,
        headdim=HEADDIM,
        ngroups=ngroups,
        chunk_size=4,
        rngs=nnx.Rngs(0),
        **kw,
    )


def inputs(seed=0, shape=(2, 13, D_MODEL)):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def make_mesh(shape):
    return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)


forward = nnx.jit(lambda b, x, where=None: b(x, where=where))


# --- parity with Hugging Face transformers ------------------------------------------------------


@pytest.mark.parametrize(("ngroups", "bias"), [(1, False), (2, True)])
def test_matches_transformers_mamba2_mixer(ngroups, bias):
    """Same function as transformers' Mamba2Mixer (pure-PyTorch path) with its weights copied
    across; L = 21 is not a multiple of the chunk size 8 used on both sides."""
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    H = 2 * D_MODEL // HEADDIM
    config = Mamba2Config(
        hidden_size=D_MODEL,
        state_size=D_STATE,
        conv_kernel=D_CONV,
        expand=2,
        head_dim=HEADDIM,
        num_heads=H,
        n_groups=ngroups,
        chunk_size=8,
        num_hidden_layers=1,
        vocab_size=10,
        use_bias=bias,
        use_conv_bias=True,
        layer_norm_epsilon=1e-5,
    )
    torch.manual_seed(0)
    mixer = Mamba2Mixer(config, layer_idx=0).eval()
    with torch.no_grad():  # random weights of realistic scale (the defaults leave norm = 1)
        for p in mixer.parameters():
            p.normal_(0.0, 0.3)
        mixer.A_log.copy_(torch.log(torch.rand(H) * 4 + 0.5))
        mixer.dt_bias.normal_(-1.0, 0.5)
    sd = {k: v.detach().numpy() for k, v in mixer.state_dict().items()}

    ours = Mamba2Block(
        D_MODEL,
        d_state=D_STATE,
        d_conv=D_CONV,
        headdim=HEADDIM,
        ngroups=ngroups,
        chunk_size=8,
        bias=bias,
        rngs=nnx.Rngs(0),
    )
    ours.in_proj.kernel[...] = jnp.asarray(sd["in_proj.weight"].T)
    ours.conv1d.kernel[...] = jnp.asarray(sd["conv1d.weight"][:, 0, :].T)
    ours.conv1d.bias[...] = jnp.asarray(sd["conv1d.bias"])
    for name in ("dt_bias", "A_log", "D"):
        getattr(ours, name)[...] = jnp.asarray(sd[name])
    ours.norm.scale[...] = jnp.asarray(sd["norm.weight"])
    ours.out_proj.kernel[...] = jnp.asarray(sd["out_proj.weight"].T)
    if bias:
        ours.in_proj.bias[...] = jnp.asarray(sd["in_proj.bias"])
        ours.out_proj.bias[...] = jnp.asarray(sd["out_proj.bias"])

    x = np.random.default_rng(1).normal(size=(2, 21, D_MODEL)).astype(np.float32)
    with torch.no_grad():
        expected = mixer(torch.from_numpy(x)).numpy()
    y = forward(ours, jnp.asarray(x))
    np.testing.assert_allclose(y, expected, atol=1e-4, rtol=1e-4)
    assert np.abs(expected).max() > 0.1  # not a trivially small output


# --- decoding and padding -----------------------------------------------------------------------


def test_step_matches_parallel():
    b = block()
    x = inputs(1, (2, 9, D_MODEL))
    step = nnx.jit(lambda b, x_t, c: b.step(x_t, c))
    cache = b.init_cache(2, 9)
    chex.assert_shape(cache["ssm"], (2, 4, HEADDIM, D_STATE))
    chex.assert_shape(cache["conv"], (2, D_CONV - 1, 32 + 2 * 2 * D_STATE))
    outs = []
    for t in range(9):
        y_t, cache = step(b, x[:, t], cache)
        outs.append(y_t)
    np.testing.assert_allclose(jnp.stack(outs, 1), forward(b, x), atol=2e-5, rtol=1e-4)


def test_padding_never_influences_real_positions():
    """Garbage at padded positions (left, right, in between) leaves real outputs unchanged, and
    right padding gives the outputs of the unpadded prefix."""
    b = block()
    x = inputs(2)
    where = jnp.ones((2, 13), bool).at[0, :3].set(False).at[1, 9:].set(False).at[1, 5].set(False)
    garbage = jnp.where(where[..., None], x, 50.0 * inputs(3))
    a, c = forward(b, x, where), forward(b, garbage, where)
    keep = where[..., None]
    np.testing.assert_allclose(jnp.where(keep, a, 0), jnp.where(keep, c, 0), atol=1e-5)
    right = jnp.ones((2, 13), bool).at[:, 9:].set(False)
    x_right = jnp.where(right[..., None], x, garbage)
    np.testing.assert_allclose(forward(b, x_right, right)[:, :9], forward(b, x[:, :9]), atol=1e-5)


def test_causal():
    b = block()
    x = inputs(4)
    y = x.at[:, 7:].set(inputs(5)[:, 7:])
    np.testing.assert_allclose(forward(b, x)[:, :7], forward(b, y)[:, :7], atol=1e-6)


# --- sequence parallelism -----------------------------------------------------------------------


# (data, fsdp, sequence, tensor), groups, gradients: the heads (4) go over "tensor" with B/C
# split by groups (g = 2), replicated (g = 1), or the heads stay whole (g = 2, tensor = 4).
SP_CASES = [
    ((1, 1, 8, 1), 1, True),
    ((2, 1, 2, 2), 2, True),
    ((1, 1, 2, 4), 2, False),
    ((1, 2, 2, 2), 1, False),
]


@pytest.mark.parametrize(
    ("shape", "g", "grads"), SP_CASES, ids=[f"{s}-g{g}" for s, g, _ in SP_CASES]
)
def test_sequence_parallel_ssd_equals_single_device(shape, g, grads):
    """Values (and, for two layouts, gradients for every input) equal the single-device op;
    6 tokens per shard is not a multiple of the chunk size 4."""
    mesh = make_mesh(shape)
    L = 6 * shape[2]
    r = np.random.default_rng(6)
    x = jnp.asarray(r.normal(size=(2, L, 4, 3)), jnp.float32)
    dt = jnp.asarray(np.log1p(np.exp(r.normal(size=(2, L, 4)) - 1)), jnp.float32)
    A = jnp.asarray(-r.uniform(0.05, 1.0, size=(4,)), jnp.float32)
    B, C = jnp.asarray(r.normal(size=(2, 2, L, g, 5)), jnp.float32)
    D = jnp.asarray(r.normal(size=(4,)), jnp.float32)
    w = jnp.asarray(r.normal(size=x.shape), jnp.float32)

    def run(fn):
        def f(*args):
            y = fn(*args)
            return jnp.sum(y * w), y

        if not grads:
            return jax.jit(lambda *a: (None, fn(*a)))
        return jax.jit(jax.grad(f, argnums=tuple(range(6)), has_aux=True))

    sp = run(lambda *a: sequence_parallel_ssd(*a[:5], D=a[5], mesh=mesh, chunk_size=4))
    single = run(lambda *a: ssd(*a[:5], D=a[5], chunk_size=4))
    (g_sp, y_sp), (g_ref, y_ref) = sp(x, dt, A, B, C, D), single(x, dt, A, B, C, D)
    chex.assert_trees_all_close(y_sp, y_ref, atol=2e-5, rtol=2e-5)
    chex.assert_trees_all_close(g_sp, g_ref, atol=1e-4, rtol=1e-4)


def test_sequence_parallel_ssd_is_one_all_gather_of_states():
    mesh = make_mesh((1, 1, 8, 1))
    x = jnp.zeros((1, 512, 4, 3))
    dt, B = jnp.zeros((1, 512, 4)), jnp.zeros((1, 512, 1, 5))
    found = compiled_collectives(
        lambda x, dt, B: sequence_parallel_ssd(x, dt, -jnp.ones(4), B, B, mesh=mesh), x, dt, B
    )
    assert [c.kind for c in found] == ["all-gather"], found
    assert found[0].shape == (8, 1, 4, 3 * 5 + 1), found  # [W, b, h, p·n + 1], no L


def test_sequence_parallel_block_equals_single_device():
    """The block built with sequence_axis, under a mesh sharding it, gives the outputs of the
    single-device block (the conv crosses shard boundaries; padding included)."""
    b = block(sequence_axis="sequence")
    x = inputs(7, (2, 16, D_MODEL))
    where = jnp.ones((2, 16), bool).at[1, 11:].set(False)
    ref = forward(b, x, where)
    with jax.set_mesh(make_mesh((2, 1, 4, 1))):
        got = forward(b, x, where)
    chex.assert_trees_all_close(got, ref, atol=2e-5, rtol=2e-5)


# --- dtypes, parameters, errors -----------------------------------------------------------------


def test_bf16_close_to_f32():
    """bf16 compute (same float32 parameters) stays close; bf16 storage keeps the SSM parameters
    in float32."""
    x = inputs(9)
    y = forward(block(dtype=jnp.bfloat16), x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(y.astype(jnp.float32), forward(block(), x), atol=5e-2, rtol=5e-2)
    stored = block(param_dtype=jnp.bfloat16)
    assert stored.in_proj.kernel[...].dtype == jnp.bfloat16
    for name in ("A_log", "D", "dt_bias"):
        assert getattr(stored, name)[...].dtype == jnp.float32


def test_shapes_initialisation_and_parameter_marks():
    b = Mamba2Block(32, rngs=nnx.Rngs(0))  # defaults: N = 64, P = 64, E = 64 -> H = 1
    assert (b.nheads, b.headdim, b.d_state, b.conv_dim) == (1, 64, 64, 64 + 2 * 64)
    chex.assert_shape(b.in_proj.kernel[...], (32, 64 + 192 + 1))
    b = block(dt_min=0.01, dt_max=0.05)
    dt = jax.nn.softplus(b.dt_bias[...])
    assert bool(jnp.all((dt >= 0.01 - 1e-6) & (dt <= 0.05 + 1e-6)))
    A = jnp.exp(b.A_log[...])
    assert bool(jnp.all((A >= 1.0) & (A <= 16.0)))
    mask = decay_mask(nnx.state(b, nnx.Param))
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    for name in ("A_log", "'D'", "dt_bias", "norm"):
        assert not any(v for k, v in flat.items() if name in k), name
    assert flat["['in_proj']['kernel']"] and flat["['out_proj']['kernel']"]


def test_config_errors():
    with pytest.raises(ValueError, match="`headdim` must divide expand \\* d_model = 32"):
        Mamba2Block(16, headdim=12, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="`ngroups` must divide the number of heads 4"):
        Mamba2Block(16, headdim=8, ngroups=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="`d_state` must be a positive int"):
        Mamba2Block(16, d_state=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="`dt_min` must be <= `dt_max`"):
        Mamba2Block(16, headdim=8, dt_min=0.5, dt_max=0.1, rngs=nnx.Rngs(0))
    b = block()
    with pytest.raises(ValueError, match=r"`x` must have shape \[B, L, D\] with D = 16"):
        b(jnp.zeros((2, 5, 8)))
    with pytest.raises(ValueError, match="`where` must have shape"):
        b(jnp.zeros((2, 5, 16)), where=jnp.ones((2, 4), bool))
    mesh = make_mesh((1, 1, 8, 1))
    with pytest.raises(ValueError, match="divisible by the 8 shards"):
        sequence_parallel_ssd(
            jnp.zeros((1, 12, 4, 3)),
            jnp.zeros((1, 12, 4)),
            -jnp.ones(4),
            jnp.zeros((1, 12, 1, 5)),
            jnp.zeros((1, 12, 1, 5)),
            mesh=mesh,
        )
