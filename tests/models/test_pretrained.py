"""Hugging Face checkpoints in and out: load_pretrained / save_pretrained / load_tokenizer.

Parity tests build tiny random transformers models (torch, float32) and compare logits with
the transformers forward; they import torch through ``pytest.importorskip``. Everything else
(round trips, bf16, sharding, errors, tokenizer) builds its fixtures with our own
``save_pretrained`` and runs without torch.
"""

import json
import math
import struct

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType
from safetensors.numpy import load_file, save_file

from jaxdiv.models import (
    LanguageModel,
    LMConfig,
    load_pretrained,
    load_tokenizer,
    save_pretrained,
)
from jaxdiv.models.attention.blocks import AttentionBlock
from jaxdiv.models.sharding import MESH_AXES

V = 97


def tokens(seed=0, shape=(2, 11), vocab=V):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


def random_model(config: LMConfig, seed=0) -> LanguageModel:
    """A model with every parameter random (norm scales, biases too), built without an init."""
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(abstract(config))
    for path, variable in nnx.to_flat_state(state):
        name, shape = path[-1], variable.get_value().shape
        noise = rng.standard_normal(shape)
        if name == "A_log":  # S4D-real A = -(1..N), perturbed
            value = np.log(np.arange(1, shape[-1] + 1)) + 0.1 * noise
        elif name == "D" or name == "scale":
            value = 1.0 + 0.2 * noise
        elif path[-2:] == ("dt_proj", "bias") or name == "dt_bias":  # Δ around 0.02
            value = -4.0 + 0.5 * noise
        else:
            value = 0.2 * noise
        variable.set_value(jnp.asarray(value, variable.get_value().dtype))
    return nnx.merge(graphdef, state)


forward = nnx.jit(lambda model, x: model(x))


def abstract(config: LMConfig) -> LanguageModel:
    return nnx.eval_shape(lambda: LanguageModel(config, rngs=nnx.Rngs(0)))


def params(model) -> dict:
    """Dotted path -> NumPy value (ShapeDtypeStruct for an abstract model)."""
    out = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = variable.get_value()
        out[".".join(map(str, path))] = (
            value if isinstance(value, jax.ShapeDtypeStruct) else np.asarray(value)
        )
    return out


# The transformers models of the parity tests have the same configs (shared compilations).
CONFIGS = {
    "llama": dict(
        mixer="attention",
        num_heads=4,
        num_kv_heads=2,
        mlp_hidden=64,
        rope_theta=5e5,
        tie_embeddings=False,
    ),
    "qwen2": dict(
        mixer="attention", num_heads=4, num_kv_heads=2, mlp_hidden=64, attention_bias=True
    ),
    "mamba": dict(mixer="mamba", d_state=8, norm_eps=1e-5),
    "mamba2": dict(  # tied head, 2 groups; E = 64, H = 8 heads of 8
        mixer="mamba2",
        mamba2_state=16,
        mamba2_headdim=8,
        mamba2_ngroups=2,
        chunk_size=8,
        norm_eps=1e-5,
    ),
}


def ours(kind, **kw) -> LMConfig:
    return LMConfig(vocab_size=V, d_model=32, n_layers=2, **{**CONFIGS[kind], **kw})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One random model per architecture, saved by us: kind -> (dir, model)."""
    out = {}
    for seed, kind in enumerate(CONFIGS):
        model = random_model(ours(kind), seed)
        out[kind] = (save_pretrained(model, tmp_path_factory.mktemp(kind)), model)
    return out


# ---------------------------------------------------------------------------------------------
# Model options the architectures need.


def test_new_options_unset_leave_the_model_unchanged():
    base = dict(vocab_size=17, d_model=16, n_layers=1, mixer="attention")
    a = LanguageModel(LMConfig(**base), rngs=nnx.Rngs(0))
    b = LanguageModel(  # heads() is 1 at d_model 16: the defaults spelled out
        LMConfig(**base, num_kv_heads=1, head_dim=16, mlp_hidden=64, rope_theta=10000.0),
        rngs=nnx.Rngs(0),
    )
    chex.assert_trees_all_equal(params(a), params(b))  # same shapes, same random stream
    for model in (a, b):
        block = model.backbone.layers[0].mixer
        assert (block.num_heads, block.num_kv_heads, block.head_dim) == (1, 1, 16)
        assert block.rope_base == 10000.0 and block.q_proj.bias is None


def test_grouped_query_attention_equals_repeated_heads():
    """GQA (kv head j serves query heads j·g … j·g + g − 1) = MHA with k/v weights repeated."""
    gqa = AttentionBlock(16, num_heads=4, num_kv_heads=2, qkv_bias=True, rngs=nnx.Rngs(0))
    mha = AttentionBlock(16, num_heads=4, qkv_bias=True, rngs=nnx.Rngs(1))
    mha.q_proj, mha.o_proj = gqa.q_proj, gqa.o_proj
    for seed, name in enumerate(("k_proj", "v_proj")):
        src, dst = getattr(gqa, name), getattr(mha, name)
        src.bias[...] = jax.random.normal(jax.random.key(seed), src.bias.shape)
        dst.kernel[...] = jnp.repeat(src.kernel[...].reshape(16, 2, 4), 2, axis=1).reshape(16, 16)
        dst.bias[...] = jnp.repeat(src.bias[...].reshape(2, 4), 2, axis=0).reshape(16)
    x = jax.random.normal(jax.random.key(3), (2, 5, 16))
    call = nnx.jit(lambda block, x: block(x))
    y = call(gqa, x)
    chex.assert_trees_all_close(y, call(mha, x), atol=1e-5)
    step = nnx.jit(lambda block, x_t, cache: block.step(x_t, cache))
    cache, steps = gqa.init_cache(2, 5), []
    for t in range(5):
        y_t, cache = step(gqa, x[:, t], cache)
        steps.append(y_t)
    chex.assert_trees_all_close(jnp.stack(steps, 1), y, atol=1e-5)


def test_config_rejects_bad_options():
    base = dict(vocab_size=17, d_model=32, n_layers=1, mixer="attention", num_heads=4)
    with pytest.raises(ValueError, match="num_kv_heads must be a positive int dividing"):
        LMConfig(**base, num_kv_heads=3)
    with pytest.raises(ValueError, match="mlp_hidden"):
        LMConfig(**base, mlp_hidden=-1)
    with pytest.raises(ValueError, match="rope_theta"):
        LMConfig(**base, rope_theta=0.0)


# ---------------------------------------------------------------------------------------------
# Our own round trips (no torch).


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_round_trip_is_exact(saved, kind, tmp_path):
    path, model = saved[kind]
    hf = json.loads((path / "config.json").read_text())
    assert hf["model_type"] == kind
    assert hf["tie_word_embeddings"] == model.config.tie_embeddings
    loaded = load_pretrained(path)
    assert loaded.config == model.config
    chex.assert_trees_all_equal(params(loaded), params(model))
    chex.assert_trees_all_equal(forward(loaded, tokens()), forward(model, tokens()))
    # the same through shards and an index file
    save_pretrained(model, tmp_path, max_shard_size=6000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert not (tmp_path / "model.safetensors").exists()
    chex.assert_trees_all_equal(params(load_pretrained(tmp_path)), params(model))


def test_bfloat16_load_and_bfloat16_checkpoint(saved, tmp_path):
    path, model = saved["mamba"]
    bf = load_pretrained(path, dtype="bfloat16")
    assert bf.config.dtype == bf.config.param_dtype == "bfloat16"
    p32, p16 = params(model), params(bf)
    declared = params(abstract(bf.config))  # SSM parameters and the final norm stay float32
    assert declared["backbone.embedding"].dtype == jnp.bfloat16
    assert declared["backbone.layers.0.mixer.A_log"].dtype == np.float32
    for name, value in p16.items():
        assert value.dtype == declared[name].dtype, name
        np.testing.assert_array_equal(value, p32[name].astype(value.dtype))
    chex.assert_trees_all_close(
        forward(bf, tokens()), forward(model, tokens()), atol=0.1, rtol=0.05
    )
    # a checkpoint stored in bfloat16 (BF16 tensors, read raw) loads bit for bit
    save_pretrained(bf, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    again = load_pretrained(tmp_path)
    assert again.config.param_dtype == "bfloat16"
    chex.assert_trees_all_equal(params(again), p16)


def test_chunked_reads_equal_whole_tensors(saved, monkeypatch):
    """Tensors read a few rows at a time (transposed, cast per chunk) load bit for bit."""
    from jaxdiv.models import pretrained

    monkeypatch.setattr(pretrained, "_CHUNK_BYTES", 200)  # 1-3 rows per read
    for kind in ("llama", "mamba2"):  # LINEAR, CONV and SAME layouts
        path, model = saved[kind]
        chex.assert_trees_all_equal(params(load_pretrained(path)), params(model))
        loaded = params(load_pretrained(path, dtype="bfloat16"))
        for name, value in params(model).items():
            np.testing.assert_array_equal(loaded[name], value.astype(loaded[name].dtype), name)


def test_loading_places_params_with_the_mesh_shardings(saved):
    from jaxdiv.train import sharding as train_sharding

    mesh = jax.make_mesh((1, 2, 1, 4), MESH_AXES, axis_types=(AxisType.Auto,) * 4)
    path, model = saved["llama"]
    want = train_sharding.state_shardings(nnx.state(model, nnx.Param), mesh)
    want = {".".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(want)}
    for loaded in (load_pretrained(path, mesh=mesh), None):
        if loaded is None:
            with jax.set_mesh(mesh):
                loaded = load_pretrained(path)
        got = {
            ".".join(map(str, p)): v.get_value().sharding
            for p, v in nnx.to_flat_state(nnx.state(loaded, nnx.Param))
        }
        assert got.keys() == want.keys()
        for name, sharding in got.items():
            assert sharding.is_equivalent_to(want[name], len(sharding.spec)), name
        specs = {name: tuple(s.spec) for name, s in got.items()}
        assert specs["backbone.embedding"] == (None, "fsdp")  # 97 rows: replicated
        assert specs["backbone.layers.0.mixer.k_proj.kernel"] == ("fsdp", "tensor")
    chex.assert_trees_all_close(forward(loaded, tokens()), forward(model, tokens()), atol=1e-5)


def test_tokenizer_is_copied_and_loaded(saved, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path, model = saved["qwen2"]
    assert load_tokenizer(path) is None
    save_pretrained(model, tmp_path / "a", tokenizer=tok)
    assert load_tokenizer(tmp_path / "a").encode("hello world x").ids == [1, 2, 0]
    save_pretrained(model, tmp_path / "b", tokenizer=tmp_path / "a")  # from a directory
    assert load_tokenizer(tmp_path / "b" / "tokenizer.json").encode("world").ids == [2]


# ---------------------------------------------------------------------------------------------
# Errors (fixtures from our own save_pretrained + file edits).


def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def edit_weights(path, fn):
    tensors = load_file(str(path / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture
def llama_dir(saved, tmp_path):
    save_pretrained(saved["llama"][1], tmp_path)
    return tmp_path


def test_missing_config_or_weights(llama_dir, tmp_path):
    with pytest.raises(ValueError, match=r"config\.json not found"):
        load_pretrained(tmp_path / "nowhere")
    (llama_dir / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="neither model.safetensors nor"):
        load_pretrained(llama_dir)


def test_unsupported_model_type_and_options(llama_dir):
    edit_config(llama_dir, model_type="gpt2")
    with pytest.raises(ValueError, match=r"model_type 'gpt2' is not supported.*'llama'"):
        load_pretrained(llama_dir)
    edit_config(llama_dir, model_type="llama", hidden_act="gelu")
    with pytest.raises(ValueError, match=r"hidden_act='gelu' is not supported"):
        load_pretrained(llama_dir)
    edit_config(llama_dir, hidden_act="silu", rope_parameters={"rope_type": "llama3"})
    with pytest.raises(ValueError, match="rope_type='llama3'"):
        load_pretrained(llama_dir)


def test_mamba2_config_fields_and_unsupported_options(saved, tmp_path):
    from jaxdiv.models.pretrained import config_from_hf

    hf = dict(model_type="mamba2", hidden_size=32, num_hidden_layers=2, vocab_size=V)
    config = config_from_hf(  # absent fields take Mamba2Config's defaults
        dict(hf, head_dim=16, layer_norm_epsilon=1e-3, rescale_prenorm_residual=True)
    )
    assert (config.mamba2_state, config.mamba2_ngroups, config.chunk_size) == (128, 8, 256)
    assert (config.mamba2_headdim, config.d_conv, config.expand) == (16, 4, 2)
    assert (config.norm_eps, config.tie_embeddings) == (1e-3, False)
    assert config_from_hf(dict(hf, head_dim=64)).mamba2_headdim is None  # = the automatic P

    path = save_pretrained(saved["mamba2"][1], tmp_path)
    hf = json.loads((path / "config.json").read_text())
    assert (hf["num_heads"], hf["head_dim"], hf["n_groups"], hf["state_size"]) == (8, 8, 2, 16)
    for limit in ([0.0, {"__float__": "Infinity"}], [0.0, math.inf]):  # transformers 5 and 4
        edit_config(path, time_step_limit=limit)
        assert load_pretrained(path).config == saved["mamba2"][1].config
    base = hf | dict(time_step_limit=[0.0, math.inf])
    for change, match in (
        (dict(time_step_limit=[0.0, 0.1]), r"time_step_limit=\[0\.0, 0\.1\] is not supported"),
        (dict(use_bias=True), "use_bias=True is not supported"),
        (dict(use_conv_bias=False), "use_conv_bias=False is not supported"),
        (dict(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
        (dict(num_heads=4), r"num_heads=4 is not supported; expected num_heads=8"),
        (dict(head_dim=48), r"head_dim=48 is not supported; expected a divisor"),
    ):
        edit_config(path, **base | change)  # each change alone
        with pytest.raises(ValueError, match=match):
            load_pretrained(path)
    edit_config(path, **base | dict(n_groups=1))  # tensors of 2 groups, config of 1
    with pytest.raises(ValueError, match=r"conv1d.bias' has shape \(128,\); expected \(96,\)"):
        load_pretrained(path)


def test_missing_and_unexpected_tensors(llama_dir):
    key = "model.layers.1.mlp.up_proj.weight"
    edit_weights(llama_dir, lambda t: t.pop(key))
    with pytest.raises(ValueError, match=rf"missing \['{key}'\], unexpected \[\]"):
        load_pretrained(llama_dir)
    edit_weights(llama_dir, lambda t: t.update({key: np.zeros((64, 32), np.float32)}))
    load_pretrained(llama_dir)  # repaired
    edit_weights(llama_dir, lambda t: t.update({"model.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['model.extra.weight'\]"):
        load_pretrained(llama_dir)


def test_header_and_data_that_disagree(llama_dir):
    file, key = llama_dir / "model.safetensors", "model.layers.0.mlp.up_proj.weight"
    data = file.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    header[key]["dtype"] = "F16"  # half the bytes the offsets span
    new = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(new)) + new + data[8 + size :])
    with pytest.raises(ValueError, match=rf"'{key}' has 8192 bytes of data; expected 2048 F16"):
        load_pretrained(llama_dir)
    file.write_bytes(data[:-100])  # truncated
    with pytest.raises(ValueError, match="ends before the tensor data its header promises"):
        load_pretrained(llama_dir)


def test_bad_dtype_is_rejected(llama_dir):
    with pytest.raises(ValueError, match="`dtype` must name a float dtype, got 'int32'"):
        load_pretrained(llama_dir, dtype="int32")


def test_wrong_shape_names_the_key(llama_dir):
    key = "model.layers.0.self_attn.k_proj.weight"
    edit_weights(llama_dir, lambda t: t.update({key: np.zeros((32, 32), np.float32)}))
    with pytest.raises(
        ValueError, match=rf"tensor '{key}' has shape \(32, 32\); expected \(16, 32\)"
    ):
        load_pretrained(llama_dir)


def test_save_rejects_configs_without_hf_equivalent(tmp_path):
    def save(**kw):
        config = LMConfig(vocab_size=17, d_model=16, n_layers=2, **kw)
        save_pretrained(abstract(config), tmp_path)

    with pytest.raises(ValueError, match=r"LMConfig.mixer='lightnet' has no Hugging Face"):
        save(mixer="lightnet")
    with pytest.raises(ValueError, match=r"LMConfig.mixer=\('mamba', 'attention'\)"):
        save(mixer=("mamba", "attention"))
    with pytest.raises(ValueError, match="mlp_hidden/mlp_ratio give no MLP"):
        save(mixer="attention", mlp_ratio=0.0)
    with pytest.raises(ValueError, match="attention_bias=True has no 'llama' equivalent"):
        config = LMConfig(
            vocab_size=17, d_model=16, n_layers=1, mixer="attention", attention_bias=True
        )
        save_pretrained(abstract(config), tmp_path, model_type="llama")


# ---------------------------------------------------------------------------------------------
# Parity with the transformers forward (torch).


def _randomize(module, seed):
    """Every torch parameter random (norm weights around 1, SSM parameters near their init)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith(("A_log", ".D", "dt_proj.bias", "dt_bias")):
                p.add_(0.1 * noise)
            elif "norm" in name:
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)


def _hf_models():
    tf = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    small = dict(hidden_size=32, num_hidden_layers=2, vocab_size=V)
    attn = dict(small, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
    mamba2 = dict(small, head_dim=8, num_heads=8, state_size=16, chunk_size=8)
    return {
        "llama": tf.LlamaForCausalLM(
            tf.LlamaConfig(**attn, tie_word_embeddings=False, rope_theta=5e5)
        ),
        "qwen2": tf.Qwen2ForCausalLM(tf.Qwen2Config(**attn, tie_word_embeddings=True)),
        "mamba": tf.MambaForCausalLM(tf.MambaConfig(**small, state_size=8)),
        # Mamba-2: E = 64, H = 8 heads of 8; untied head with 1 group, tied with 2
        "mamba2": tf.Mamba2ForCausalLM(tf.Mamba2Config(**mamba2, n_groups=1)),
        "mamba2_g2": tf.Mamba2ForCausalLM(
            tf.Mamba2Config(**mamba2, n_groups=2, tie_word_embeddings=True)
        ),
    }


def _torch_logits(model, x):
    import torch

    with torch.no_grad():
        return model(torch.tensor(np.array(x), dtype=torch.long)).logits.float().numpy()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """kind -> (single-file dir, sharded dir, torch model), random float32 weights."""
    out = {}
    for seed, (kind, model) in enumerate(_hf_models().items()):
        _randomize(model, seed)
        model.eval()
        single, sharded = tmp_path_factory.mktemp(kind), tmp_path_factory.mktemp(kind + "_sh")
        model.save_pretrained(single, safe_serialization=True)
        model.save_pretrained(sharded, safe_serialization=True, max_shard_size="20KB")
        out[kind] = (single, sharded, model)
    return out


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mamba", "mamba2", "mamba2_g2"])
def test_logits_equal_transformers(hf_dirs, kind):
    """Logits of the transformers forward; L = 11 is not a multiple of Mamba-2's chunk size 8
    (transformers' torch path pads to whole chunks, ours handles a partial last chunk)."""
    single, sharded, torch_model = hf_dirs[kind]
    assert (sharded / "model.safetensors.index.json").exists()
    x = tokens(1)
    want = _torch_logits(torch_model, x)
    assert np.abs(want).max() > 1.0  # informative logits, not ~0
    for path in (single, sharded):
        model = load_pretrained(path)
        chex.assert_trees_all_close(forward(model, x), want, atol=1e-4, rtol=0)
    if kind == "llama":
        assert model.config.rope_theta == 5e5 and model.config.num_kv_heads == 2
    if kind.startswith("mamba2"):  # every norm's epsilon is layer_norm_epsilon
        c = model.config
        assert (c.mixer, c.norm_eps, c.mamba2_headdim, c.chunk_size) == ("mamba2", 1e-5, 8, 8)
        assert (c.mamba2_ngroups, c.tie_embeddings) == ((2, True) if "g2" in kind else (1, False))
    if kind in ("qwen2", "mamba2_g2"):  # decoding through the cache equals the forward
        step = nnx.jit(lambda model, x_t, cache: model.step(x_t, cache))
        cache, steps = model.init_cache(2, x.shape[1]), []
        for t in range(x.shape[1]):
            logits, cache = step(model, x[:, t], cache)
            steps.append(logits)
        chex.assert_trees_all_close(jnp.stack(steps, 1), want, atol=1e-4, rtol=0)


def test_bfloat16_checkpoint_from_transformers(hf_dirs, tmp_path):
    import torch

    _, _, torch_model = hf_dirs["llama"]
    torch_model.to(torch.bfloat16).save_pretrained(tmp_path, safe_serialization=True)
    torch_model.to(torch.float32)
    model = load_pretrained(tmp_path)  # dtype=None: the checkpoint's bfloat16
    assert model.config.param_dtype == "bfloat16"
    want = torch_model.model.embed_tokens.weight.detach().to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(np.asarray(model.backbone.embedding[...], np.float32), want)
    x = tokens(2)
    chex.assert_trees_all_close(
        forward(model, x), _torch_logits(torch_model, x), atol=0.15, rtol=0.05
    )


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mamba", "mamba2"])
def test_save_pretrained_loads_in_transformers(saved, kind):
    tf = pytest.importorskip("transformers")
    path, model = saved[kind]
    torch_model = tf.AutoModelForCausalLM.from_pretrained(path).eval()
    assert (
        type(torch_model).__name__
        == json.loads((path / "config.json").read_text())["architectures"][0]
    )
    x = tokens(3)
    want = _torch_logits(torch_model, x)
    assert math.isfinite(float(np.abs(want).max()))
    chex.assert_trees_all_close(forward(model, x), want, atol=1e-4, rtol=0)
