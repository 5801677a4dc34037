"""HF checkpoints in and out: every LLM family and vision tower against the transformers PyTorch model.

Each fixture is a tiny random model built locally with transformers and saved as safetensors, so the
tests need no downloads. fp32 parity is asserted at 1e-4; bf16 (our params and compute in bfloat16
against the fp32 reference) at 5% of the largest logit, and argmax agreement.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_fixtures  # noqa: E402
from hf_fixtures import LLM_COMMON, LLMS, VISION, VISION_COMMON  # noqa: E402

from semrel_jax.convert import check, hf  # noqa: E402
from semrel_jax.convert.safetensors_io import CheckpointError, SafetensorsCheckpoint, save_file  # noqa: E402

@pytest.fixture(scope="module")
def llm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_llms")
    return {
        name: hf_fixtures.save_llm(str(root / name), name, max_shard_size="100KB" if name == "llama2" else None)
        for name in LLMS
    }


@pytest.fixture(scope="module")
def vision_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_vision")
    dirs = {name: hf_fixtures.save_vision(str(root / name), name) for name in VISION}
    dirs["clip_two_tower"] = hf_fixtures.save_clip_two_tower(str(root / "clip_two_tower"))
    return dirs


@pytest.mark.parametrize("name", list(LLMS))
def test_llm_logits_match_transformers_fp32(llm_dirs, name):
    report = check.check_llm(llm_dirs[name], seq_len=24)
    assert report["max_abs_logit"] > 0.1  # the comparison is not between two near-zero tensors
    assert report["max_abs_diff"] <= 1e-4, report


@pytest.mark.parametrize("name", ["llama2", "qwen3_qk_norm"])
def test_llm_logits_match_transformers_bf16(llm_dirs, name):
    report = check.check_llm(llm_dirs[name], dtype="bfloat16", seq_len=24)
    assert report["max_abs_diff"] <= 0.05 * report["max_abs_logit"], report
    assert report["argmax_agreement"] >= 0.9, report


def test_sharded_checkpoint_with_index_is_read(llm_dirs):
    files = os.listdir(llm_dirs["llama2"])
    assert "model.safetensors.index.json" in files
    assert sum(f.endswith(".safetensors") for f in files) > 1


def test_rope_scaling_and_sliding_window_change_the_model(llm_dirs):
    """Guards the two features the parity tests above would pass vacuously if they were ignored."""
    model = hf.load_llm(llm_dirs["llama3_rope_scaling"])
    assert model.config.rope_scaling == "llama3"
    mistral = hf.load_llm(llm_dirs["mistral_sliding_window"])
    assert mistral.config.sliding_window == 5
    tokens = np.random.default_rng(1).integers(0, 96, (1, 24))
    import dataclasses

    import jax.numpy as jnp
    from flax import nnx

    for m, field, neutral in ((model, "rope_scaling", "none"), (mistral, "sliding_window", None)):
        graphdef, state = nnx.split(m)
        plain = nnx.merge(graphdef, state)
        plain.config = dataclasses.replace(m.config, **{field: neutral})
        for layer in plain.layers:
            layer.self_attn.config = plain.config
        a, _ = m(jnp.asarray(tokens), valid=jnp.ones((1, 24), bool))
        b, _ = plain(jnp.asarray(tokens), valid=jnp.ones((1, 24), bool))
        assert float(jnp.max(jnp.abs(a - b))) > 1e-3, field


@pytest.mark.parametrize("name", ["llama2", "llama32_tied", "qwen2_qkv_bias", "qwen3_qk_norm"])
def test_export_loads_in_transformers_with_same_logits(llm_dirs, tmp_path, name):
    import jax.numpy as jnp

    model = hf.load_llm(llm_dirs[name])
    # change the weights so the export is not a file copy in disguise
    model.layers[0].mlp.up_proj.kernel[...] = model.layers[0].mlp.up_proj.kernel[...] * 1.5
    out = hf.export_llm(model, str(tmp_path / "export"), like=llm_dirs[name])
    ref = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens = np.random.default_rng(2).integers(0, 96, (2, 12))
    with torch.no_grad():
        expected = ref(torch.from_numpy(tokens)).logits.numpy()
    got, _ = model(jnp.asarray(tokens), valid=jnp.ones(tokens.shape, bool))
    assert np.max(np.abs(np.asarray(got) - expected)) <= 1e-4


@pytest.mark.parametrize("name", ["clip", "siglip", "siglip2", "dinov2", "clip_two_tower"])
def test_vision_hidden_states_match_transformers(vision_dirs, name):
    report = check.check_vision(vision_dirs[name])
    assert len(report["per_layer_max_abs_diff"]) == VISION_COMMON["num_hidden_layers"] + 1
    assert report["max_abs_feature"] > 0.1
    assert report["max_abs_diff"] <= 1e-4, report


def test_convert_cli_check_and_orbax_roundtrip(llm_dirs, tmp_path):
    out = tmp_path / "converted"
    result = subprocess.run(
        [sys.executable, "-m", "semrel_jax.convert", f"--hf_dir={llm_dirs['qwen3_qk_norm']}", "--check", f"--out={out}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("max_abs_diff:")][0]
    assert float(line.split()[1]) <= 1e-4
    import jax

    a = hf.load_llm(llm_dirs["qwen3_qk_norm"])
    b = hf.load_llm(str(out))
    from flax import nnx

    for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------------------------------ bad input


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def _rewrite(directory, edit):
    path = os.path.join(directory, "model.safetensors")
    ckpt = SafetensorsCheckpoint(directory)
    tensors = {k: np.array(ckpt[k]) for k in ckpt}
    del ckpt
    edit(tensors)
    save_file(tensors, path)


def test_missing_tensor_is_named(llm_dirs, tmp_path):
    d = _copy(llm_dirs["qwen3_qk_norm"], tmp_path / "m")
    _rewrite(d, lambda t: t.pop("model.layers.1.mlp.down_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors: \['model.layers.1.mlp.down_proj.weight'\]"):
        hf.load_llm(d)


def test_unexpected_and_misshaped_tensors_are_named(llm_dirs, tmp_path):
    d = _copy(llm_dirs["qwen3_qk_norm"], tmp_path / "u")

    def edit(t):
        t["model.layers.0.extra.weight"] = np.zeros((3,), np.float32)
        t["model.norm.weight"] = np.zeros((7,), np.float32)

    _rewrite(d, edit)
    with pytest.raises(CheckpointError) as e:
        hf.load_llm(d)
    assert "model.layers.0.extra.weight" in str(e.value)
    assert "model.norm.weight: shape (7,)" in str(e.value)


def test_truncated_file_is_reported(llm_dirs, tmp_path):
    d = _copy(llm_dirs["qwen3_qk_norm"], tmp_path / "t")
    path = os.path.join(d, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CheckpointError, match="truncated"):
        hf.load_llm(d)


def test_pickle_checkpoints_are_refused_not_unpickled(tmp_path):
    d = tmp_path / "meta"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(dict(model_type="llama") | LLM_COMMON))
    # a pickle that would run code if it were ever unpickled
    (d / "consolidated.00.pth").write_bytes(b"\x80\x04cos\nsystem\n(S'touch /tmp/pwned'\ntR.")
    with pytest.raises(CheckpointError, match="never unpickled.*safetensors"):
        hf.load_llm(str(d))


def test_unsupported_family_is_named(tmp_path):
    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="'gpt2' is not a supported LLM family"):
        hf.load_llm(str(d))
