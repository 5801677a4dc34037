"""Sampling, stop strings and beam search of the decoder (greedy decoding is tested against full forward passes
in test_models; beam search here against an exhaustive search scored by full forward passes)."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from semrel_jax import config as config_lib
from semrel_jax.data import tokenizer as tokenizer_lib
from semrel_jax.evaluation import generate
from semrel_jax.method import ica
from semrel_jax.method.ensemble import EncoderSpec, EnsembleConfig
from semrel_jax.method.vlm import VisionLanguageModel, VLMConfig
from semrel_jax.models.llama import KVCache, LlamaConfig
from semrel_jax.models.vit import ViTConfig

PROBS = np.array([0.4, 0.3, 0.2, 0.1])


def _draws(temperature, top_p, n=20_000):
    logits = jnp.log(jnp.asarray(np.tile(PROBS, (n, 1)), jnp.float32))
    tokens = generate.sample_logits(logits, jax.random.PRNGKey(0), temperature, top_p)
    return np.bincount(np.asarray(tokens), minlength=4) / n


def test_greedy_is_argmax_and_tiny_top_p_keeps_only_the_top_token():
    logits = jnp.log(jnp.asarray(np.tile(PROBS, (64, 1)), jnp.float32))
    assert (np.asarray(generate.sample_logits(logits, None)) == 0).all()
    assert (np.asarray(generate.sample_logits(logits, jax.random.PRNGKey(1), 1.0, 1e-6)) == 0).all()


def test_temperature_one_samples_the_distribution():
    np.testing.assert_allclose(_draws(1.0, 1.0), PROBS, atol=0.015)


def test_top_p_keeps_the_nucleus_renormalised():
    # mass before each token: 0, 0.4, 0.7, 0.9 -> with top_p 0.5 tokens 0 and 1 stay
    np.testing.assert_allclose(_draws(1.0, 0.5), [0.4 / 0.7, 0.3 / 0.7, 0, 0], atol=0.015)


def test_low_temperature_sharpens():
    assert _draws(0.25, 1.0)[0] > 0.7


def test_decode_cuts_at_eos_then_stop_strings():
    tok = tokenizer_lib.train_word_level(["the", "answer", "is", "red", "blue", "."])
    ids = tok("red . blue", add_special_tokens=False)["input_ids"] + [tok.eos_token_id] + tok("is", add_special_tokens=False)["input_ids"]
    assert generate.decode_texts(tok, np.asarray([ids])) == ["red . blue"]
    assert generate.decode_texts(tok, np.asarray([ids]), (".",)) == ["red"]


# ---------------------------------------------------------------- beam search

V, EOS = 6, 1  # a tiny vocabulary so that every continuation can be scored; 0 pads prompts
LLM = LlamaConfig(vocab_size=V, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=48)
VIT = ViTConfig(image_size=20, patch_size=5, width=24, depth=2, heads=3, mlp_dim=32)
PROMPTS = ([2, 3, 4, 5, 2], [5, 3], [4, 4, 2, 5])  # different lengths: left-padded in one batch


@functools.lru_cache(maxsize=None)
def _model(injection):
    vit = (EncoderSpec("vit", VIT, (1, 2)),)
    ens = EnsembleConfig(encoders=vit, out_dim=LLM.dim, projector_hidden=8, memory_scale=0.1)
    cfg = VLMConfig(
        llm=LLM, vision=ens, injection=injection, num_memory_slots=20 if injection == "ica" else 0,
        ica=ica.ICAConfig(scale=1.0, dropout=0.0),
    )
    graphdef, state = nnx.split(VisionLanguageModel(cfg, rngs=nnx.Rngs(0)))
    return graphdef, (state,)


def _batch(prompts, seed=0):
    """Left-padded prompts with one random image each."""
    width = max(map(len, prompts))
    prompt = np.zeros((len(prompts), width), np.int32)
    valid = np.zeros((len(prompts), width), bool)
    for i, p in enumerate(prompts):
        prompt[i, width - len(p) :], valid[i, width - len(p) :] = p, True
    images = np.random.default_rng(seed).normal(size=(len(prompts), 20, 20, 3)).astype(np.float32)
    return {"images": {"vit": jnp.asarray(images)}, "has_image": jnp.ones((len(prompts),), jnp.int32),
            "prompt": jnp.asarray(prompt), "prompt_valid": jnp.asarray(valid)}


def _row(batch, i):
    """Row ``i`` alone, without its left padding."""
    keep = np.asarray(batch["prompt_valid"][i])
    return {"images": {"vit": batch["images"]["vit"][i : i + 1]}, "has_image": batch["has_image"][i : i + 1],
            "prompt": batch["prompt"][i : i + 1, keep], "prompt_valid": batch["prompt_valid"][i : i + 1, keep]}


def _pad_after_eos(ids):
    ids = np.array(ids)
    after = np.cumsum(ids == EOS, axis=1) - (ids == EOS) > 0
    ids[after] = EOS
    return ids


@functools.partial(jax.jit, static_argnames="graphdef")
def _forward(graphdef, states, images, tokens):
    model = nnx.merge(graphdef, *states)
    n = tokens.shape[0]
    return model(images, jnp.ones((n,), jnp.int32), tokens, jnp.ones(tokens.shape, bool))


def _exhaustive(graphdef, states, batch, i, length):
    """Every continuation of row ``i``'s prompt, teacher-forced through the full forward pass.

    Returns the continuations ``[V**length, length]`` (EOS after EOS), their log-probabilities up to and
    including the first EOS, and their lengths in the same count (the EOS included).
    """
    row = _row(batch, i)
    conts = np.array(list(itertools.product(range(V), repeat=length)), np.int32)
    n, prompt = len(conts), np.asarray(row["prompt"][0])
    tokens = np.concatenate([np.tile(prompt, (n, 1)), conts], axis=1)
    images = {"vit": jnp.repeat(row["images"]["vit"], n, axis=0)}
    logits = _forward(graphdef, states, images, jnp.asarray(tokens))[:, len(prompt) - 1 : -1]
    token_lp = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits, -1)), conts[..., None], -1)[..., 0]
    counted = (np.cumsum(conts == EOS, axis=1) - (conts == EOS)) == 0  # up to and including the first EOS
    return _pad_after_eos(conts), (token_lp * counted).sum(1), counted.sum(1)


@pytest.mark.parametrize("injection", ["ica", "prefix"])
def test_one_beam_is_greedy_and_rows_are_independent(injection):
    graphdef, states = _model(injection)
    batch = _batch(PROMPTS)
    greedy = _pad_after_eos(generate.generate(graphdef, states, batch, 6))
    np.testing.assert_array_equal(generate.beam_search(graphdef, states, batch, 6, 1, eos_id=EOS), greedy)
    # Three beams on the left-padded batch: the most padded row gives what it gives alone, unpadded.
    ids, log_prob, score = generate.beam_search_with_scores(graphdef, states, batch, 6, 3, 1.0, eos_id=EOS)
    assert (np.asarray(ids) != greedy).any()  # the beams found something greedy did not
    alone = generate.beam_search_with_scores(graphdef, states, _row(batch, 1), 6, 3, 1.0, eos_id=EOS)
    np.testing.assert_array_equal(ids[1], alone[0][0])
    np.testing.assert_allclose([log_prob[1], score[1]], [alone[1][0], alone[2][0]], atol=1e-5)


@pytest.mark.parametrize("injection", ["ica", "prefix"])
def test_beam_search_is_exact_with_enough_beams(injection):
    """Against every continuation scored by the full forward pass (left-padded batch of two prompts)."""
    graphdef, states = _model(injection)
    length = 3
    batch = _batch(PROMPTS[:2], seed=1)
    # Enough beams to keep every distinct hypothesis (EOS at step l, or none) alive to the end, so the
    # search is exact whatever the penalty (the penalty is traced: one compilation for all three).
    beams = sum((V - 1) ** l for l in range(length)) + (V - 1) ** length
    reference = [_exhaustive(graphdef, states, batch, i, length) for i in range(2)]
    chosen = {}
    for penalty in (0.0, 1.0, 2.0):
        ids, log_prob, score = generate.beam_search_with_scores(
            graphdef, states, batch, length, beams, penalty, eos_id=EOS
        )
        for i, (conts, lp, lengths) in enumerate(reference):
            scores = lp / lengths.astype(np.float64) ** penalty
            best = int(np.argmax(scores))
            others = scores[(conts != conts[best]).any(1)]
            assert scores[best] - others.max() > 1e-3  # no near tie: the expected answer is well defined
            np.testing.assert_array_equal(ids[i], conts[best], err_msg=f"penalty {penalty}, row {i}")
            np.testing.assert_allclose(log_prob[i], lp[best], atol=1e-4)
            np.testing.assert_allclose(score[i], scores[best], atol=1e-4)
        chosen[penalty] = np.asarray(ids)
    assert (chosen[0.0] == EOS).any()  # some answer ends early ...
    assert (chosen[0.0] != chosen[2.0]).any()  # ... and the penalty changes some choice


class _MarkovLM(nnx.Module):
    """Next-token probabilities that depend only on the last token, behind prefill / decode_step."""

    def __init__(self, probs):
        self.log_probs = nnx.Param(jnp.log(jnp.asarray(probs, jnp.float32)))

    def prefill(self, images, has_image, tokens, valid, max_new_tokens):
        b = tokens.shape[0]
        cache = KVCache.empty(LLM, b, tokens.shape[1] + max_new_tokens)
        memory = ica.Memory(jnp.zeros((b, 2, 4)), jnp.zeros((b, 2, 4)), jnp.asarray(True))
        return self.log_probs[...][tokens[:, -1]], cache, memory

    def decode_step(self, token, cache, memory):
        # The memory was repeated per beam on its batch axis; the scalar flag stays a scalar.
        assert memory.keys.shape[0] == token.shape[0] and memory.mask_enabled.shape == ()
        return self.log_probs[...][token], cache


def test_finished_beams_are_padded_with_eos_and_length_penalty_picks_the_longer_answer():
    # tokens: 0 (start), 1 = EOS, 2 = "a", 3 = "b"
    probs = [
        [0.001, 0.5, 0.399, 0.1],  # after the prompt 0: EOS at once, or "a"
        [0.001, 0.1, 0.6, 0.299],  # after EOS (must be ignored: a finished beam adds exactly 0)
        [0.001, 0.9, 0.05, 0.049],  # after "a": almost surely EOS
        [0.001, 0.05, 0.15, 0.799],  # after "b": "b" again
    ]
    graphdef, state = nnx.split(_MarkovLM(probs))
    batch = {"images": {}, "has_image": jnp.ones((2,), jnp.int32), "prompt": jnp.asarray([[0], [3]], jnp.int32),
             "prompt_valid": jnp.ones((2, 1), bool)}
    # Row 0 (2 beams): "" (EOS first, length 1) vs "a" EOS (length 2), both finished after step 1.
    short, long = np.log(0.5), np.log(0.399) + np.log(0.9)
    # Row 1: "b b b" never ends; its length is all 3 generated tokens.
    bbb = 3 * np.log(0.799)
    for penalty, row0, lp0, length0 in ((0.0, [1, 1, 1], short, 1), (1.0, [2, 1, 1], long, 2), (2.0, [2, 1, 1], long, 2)):
        ids, log_prob, score = generate.beam_search_with_scores(graphdef, (state,), batch, 3, 2, penalty, eos_id=1)
        np.testing.assert_array_equal(ids, [row0, [3, 3, 3]])
        np.testing.assert_allclose(log_prob, [lp0, bbb], rtol=1e-6)
        np.testing.assert_allclose(score, [lp0 / length0**penalty, bbb / 3**penalty], rtol=1e-6)
    # One beam is greedy: EOS first, whatever the penalty.
    ids = generate.beam_search(graphdef, (state,), batch, 3, 1, 2.0, eos_id=1)
    np.testing.assert_array_equal(ids, [[1, 1, 1], [3, 3, 3]])


def test_length_penalized_score():
    log_prob, length = jnp.asarray([-2.0, -3.0]), jnp.asarray([1, 2])
    np.testing.assert_allclose(generate.length_penalized_score(log_prob, length, 0.0), [-2.0, -3.0])
    np.testing.assert_allclose(generate.length_penalized_score(log_prob, length, 1.0), [-2.0, -1.5])
    np.testing.assert_allclose(generate.length_penalized_score(log_prob, length, 2.0), [-2.0, -0.75])


def test_beam_config_defaults_and_validation(tiny_config):
    import caption

    for c in (tiny_config, caption.get_config("tiny")):
        assert c.eval.num_beams == 1 and c.eval.length_penalty == 1.0
    tiny_config.eval.num_beams = 4
    tiny_config.eval.length_penalty = 0.6
    config_lib.validate_eval(tiny_config)
    tiny_config.eval.temperature = 0.7
    with pytest.raises(config_lib.ConfigError, match="config.eval.num_beams: beam search .* cannot sample"):
        config_lib.validate(tiny_config)
    tiny_config.eval.temperature = 0.0
    tiny_config.eval.num_beams = 0
    with pytest.raises(config_lib.ConfigError, match="config.eval.num_beams: expected a positive integer"):
        config_lib.validate_eval(tiny_config)
    tiny_config.eval.num_beams = 2
    tiny_config.eval.length_penalty = float("nan")
    with pytest.raises(config_lib.ConfigError, match="config.eval.length_penalty"):
        config_lib.validate_eval(tiny_config)
