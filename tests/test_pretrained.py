"""Pretrained weights through the config: model.llm.hf_dir and model.encoders.<name>.hf_dir."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_fixtures  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import vqa  # noqa: E402 (configs/ is on sys.path, see conftest)

from semrel_jax import config as config_lib, recipe  # noqa: E402
from semrel_jax.data import prompts, sort_of_clevr  # noqa: E402
from semrel_jax.convert import hf  # noqa: E402
from semrel_jax.training import train  # noqa: E402


@pytest.fixture(scope="module")
def pretrained_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    llm = hf_fixtures.save_llm(str(root / "llm"), "llama32_tied", vocab_size=300)
    words = sort_of_clevr.vocabulary() + prompts.template_words("qa")
    hf_fixtures.save_bpe_tokenizer(llm, words)  # the LLM's own tokenizer, as HF directories ship it
    clip = hf_fixtures.save_clip_two_tower(str(root / "clip"))
    converted = hf.convert_to_orbax(llm, str(root / "llm_converted"))
    return {"llm": llm, "clip": clip, "llm_converted": converted}


def _config(dirs, llm_key="llm"):
    c = vqa.get_config("tiny")
    c.model.llm.hf_dir = dirs[llm_key]
    c.model.encoders.vit.hf_dir = dirs["clip"]
    c.model.encoders.vit.taps = (1, 3)
    c.model.encoders.vit.normalization = "clip"
    c.model.projector.hidden = 16
    return c


def test_config_takes_the_checkpoint_architecture(pretrained_dirs):
    c = _config(pretrained_dirs)
    config_lib.prepare(c)
    assert (c.model.llm.dim, c.model.llm.n_layers, c.model.llm.vocab_size, c.model.llm.tie_embeddings) == (64, 2, 300, True)
    e = c.model.encoders.vit
    assert (e.image_size, e.patch_size, e.width, e.depth) == (32, 8, 48, 3)
    mc = config_lib.model_config(c, vocab_size=50)
    assert mc.llm.dim == 64 and mc.vision.encoders[0].vit.pre_ln and mc.vision.encoders[0].vit.adapter_dim == 4


def test_taps_beyond_the_checkpoint_depth_are_named(pretrained_dirs):
    c = _config(pretrained_dirs)
    c.model.encoders.vit.taps = (1, 7)
    with pytest.raises(config_lib.ConfigError, match=r"model.encoders.vit.taps"):
        config_lib.prepare(c)


@pytest.mark.parametrize("llm_key", ["llm", "llm_converted"])
def test_built_model_holds_the_pretrained_weights(pretrained_dirs, llm_key):
    c = _config(pretrained_dirs, llm_key)
    config_lib.prepare(c)
    model = recipe.build_module(c, vocab_size=50)
    # LLM: same logits as transformers
    ref = transformers.AutoModelForCausalLM.from_pretrained(pretrained_dirs["llm"], dtype=torch.float32).eval()
    tokens = np.random.default_rng(0).integers(0, 300, (2, 10))
    with torch.no_grad():
        expected = ref(torch.from_numpy(tokens)).logits.numpy()
    got, _ = model.llm(jnp.asarray(tokens), valid=jnp.ones(tokens.shape, bool))
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4)
    # vision tower: same hidden states as transformers' CLIP vision part; the adapters are still ours (zero up-proj)
    clip = transformers.CLIPVisionModel.from_pretrained(pretrained_dirs["clip"], dtype=torch.float32).eval()
    pixels = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        hidden = clip(torch.from_numpy(pixels), output_hidden_states=True).hidden_states
    vit = model.vision.encoders["vit"]
    ours = vit(jnp.asarray(pixels.transpose(0, 2, 3, 1)), (1, 3))
    np.testing.assert_allclose(np.asarray(ours[0]), hidden[1].numpy(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(ours[1]), hidden[3].numpy(), atol=1e-4)
    assert float(jnp.abs(vit.layers[0].adapter.fc2.kernel[...]).max()) == 0.0


def test_main_trains_lora_and_projectors_on_pretrained_weights(pretrained_dirs, tmp_path):
    from semrel_jax.training import checkpoint as checkpoint_lib

    c = _config(pretrained_dirs)
    c.model.llm.lora_rank = 2
    c.train.trainable = (r"/lora_[ab]$", r"^vision/projectors/", r"^memory_(key|value)_embedding$")
    c.data.tokenizer = pretrained_dirs["llm"]  # the LLM's own byte-level BPE with its BOS/EOS
    c.data.max_text_len = 64  # subword tokens: longer than the word-level demo tokenizer
    c.train.num_steps = 4
    c.train.checkpoint_every = 4
    workdir = str(tmp_path / "run")
    results = train.train_and_evaluate(c, workdir)
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=4, keep=1)
    saved = ckpt.restore_raw(4)["params"]
    ckpt.close()
    lora_b = saved["llm"]["layers"]["0"]["self_attn"]["q_proj"]["lora_b"]["value"]
    assert np.abs(np.asarray(lora_b)).max() > 0  # trained away from its zero init
    assert "kernel" not in saved["llm"]["layers"]["0"]["self_attn"]["q_proj"]  # the base weight stays frozen
    assert "encoders" not in saved["vision"]
    tokenizer = recipe.load_tokenizer(c, workdir)
    assert tokenizer.bos_token == "<|begin_of_text|>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    featurizer = recipe.build_featurizer(c, tokenizer)
    source = recipe.build_data(c).train
    example = featurizer.train(source[0])
    assert example["tokens"][0] == tokenizer.bos_token_id
    n = int(example["valid"].sum())
    assert example["targets"][n - 1] == tokenizer.eos_token_id
    assert tokenizer.decode(example["tokens"][1:n]).startswith("question: " + source[0]["question"])

    # adapter export: trained tensors as safetensors + config, and the LoRA-merged LLM for transformers
    from semrel_jax import export

    out = export.export_adapters(workdir, str(tmp_path / "adapters"))
    with open(os.path.join(out, "adapter_config.json")) as f:
        names = json.load(f)["tensors"]
    assert names and all(("lora_" in n) or n.startswith(("vision/projectors/", "memory_")) for n in names)
    trained, *_ = export.restore_model(workdir)
    fresh = export.apply_adapters(recipe.build_module(c, len(tokenizer)), out)
    batch = featurizer.train(source[5])
    args = (
        {"vit": jnp.asarray(batch["images"]["vit"])[None]},
        jnp.ones((1,), jnp.int32),
        jnp.asarray(batch["tokens"])[None],
        jnp.asarray(batch["valid"])[None],
    )
    np.testing.assert_allclose(np.asarray(fresh(*args)), np.asarray(trained(*args)), atol=1e-5)
    merged = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(out, "llm_merged"), dtype=torch.float32)
    ids = np.asarray(batch["tokens"])[None, :n]
    with torch.no_grad():
        expected = merged.eval()(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    got, _ = trained.llm(jnp.asarray(ids), valid=jnp.ones(ids.shape, bool))
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4)
    assert results["num_examples"] == c.eval.num_examples
    with open(os.path.join(workdir, "results.json")) as f:
        assert 0.0 <= json.load(f)["accuracy/relational"] <= 1.0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    assert losses and all(np.isfinite(losses))


def test_lora_starts_as_the_base_model_and_merges_into_the_export(pretrained_dirs, tmp_path):
    from semrel_jax import summary

    c = _config(pretrained_dirs)
    c.model.llm.update(lora_rank=4, lora_alpha=8.0, lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    c.train.trainable = (r"/lora_[ab]$",)
    config_lib.prepare(c)
    model = recipe.build_module(c, vocab_size=50)
    # trainable = r·(in + out) for each of the 7 projections in each of the 2 layers (dims 64/112, 4/2 heads of 16)
    per_layer = 4 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 112) * 2 + (112 + 64))
    assert summary.param_counts(model, c.train.trainable)[1] == 2 * per_layer

    ref = transformers.AutoModelForCausalLM.from_pretrained(pretrained_dirs["llm"], dtype=torch.float32).eval()
    tokens = np.random.default_rng(0).integers(0, 300, (2, 10))
    with torch.no_grad():
        base = ref(torch.from_numpy(tokens)).logits.numpy()
    got, _ = model.llm(jnp.asarray(tokens), valid=jnp.ones(tokens.shape, bool))
    np.testing.assert_allclose(np.asarray(got), base, atol=1e-4)  # B = 0: LoRA starts as a no-op

    rng = np.random.default_rng(1)
    for layer in model.llm.layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.v_proj, layer.mlp.down_proj):
            proj.lora_b[...] = jnp.asarray(0.1 * rng.standard_normal(proj.lora_b[...].shape), jnp.float32)
    tuned, _ = model.llm(jnp.asarray(tokens), valid=jnp.ones(tokens.shape, bool))
    assert np.max(np.abs(np.asarray(tuned) - base)) > 1e-2
    out = hf.export_llm(model.llm, str(tmp_path / "merged"), like=pretrained_dirs["llm"])
    merged = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = merged(torch.from_numpy(tokens)).logits.numpy()
    np.testing.assert_allclose(np.asarray(tuned), expected, atol=1e-4)


LLAMA3_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def test_chat_prompt_format_uses_the_tokenizers_template(pretrained_dirs, tmp_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(pretrained_dirs["llm"])
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tokenizer.eos_token = "<|eot_id|>"  # instruct checkpoints end a turn with EOT
    tokenizer.chat_template = LLAMA3_STYLE_TEMPLATE
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    c = _config(pretrained_dirs)
    c.data.update(tokenizer=str(tmp_path / "tok"), prompt_format="chat", max_text_len=96)
    config_lib.prepare(c)
    data = recipe.build_data(c)
    tok = recipe.build_tokenizer(c, str(tmp_path), data)
    featurizer = recipe.build_featurizer(c, tok)
    example = data.train[3]
    features = featurizer.train(example)
    n = int(features["valid"].sum())
    text = tok.decode(features["tokens"][:n])
    assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + example["question"])
    assert text.count("<|begin_of_text|>") == 1  # the template's BOS, not one more from the featurizer
    answer_ids = features["targets"][features["loss_mask"] > 0]
    assert tok.decode(answer_ids) == example["answer"] + "<|eot_id|>"
    prompt = featurizer.prompt(example)
    prompt_text = tok.decode(prompt["prompt"][prompt["prompt_valid"]])
    assert prompt_text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_chat_format_without_a_tokenizer_is_a_config_error(pretrained_dirs):
    c = _config(pretrained_dirs)
    c.data.prompt_format = "chat"
    with pytest.raises(config_lib.ConfigError, match="data.prompt_format"):
        config_lib.prepare(c)
