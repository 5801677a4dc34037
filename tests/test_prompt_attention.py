"""``model.prompt_attention='bidirectional'``: the image and the prompt read each other both ways, the answer
stays causal (a prefix-LM), and decoding computes exactly the function training fits."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from semrel_jax import config as config_lib
from semrel_jax.errors import ConfigError
from semrel_jax.method import ica
from semrel_jax.method.ensemble import EncoderSpec, EnsembleConfig
from semrel_jax.method.vlm import VisionLanguageModel, VLMConfig, prompt_lengths
from semrel_jax.models import attention, layers

from toy_vlm import LLM, assert_decoding_matches_training, inputs, vit_config


def _model(injection: str, prompt_attention: str) -> VisionLanguageModel:
    ens = EnsembleConfig(encoders=(EncoderSpec("vit", vit_config(depth=2), (2,)),), out_dim=LLM.dim,
                         projector_hidden=8, memory_scale=1.0)
    cfg = VLMConfig(llm=LLM, vision=ens, injection=injection, ica=ica.ICAConfig(scale=1.0, dropout=0.0),
                    prompt_attention=prompt_attention)
    return VisionLanguageModel(cfg, rngs=nnx.Rngs(0))


def test_mask_with_a_prefix_is_the_prefix_lm_rule():
    key_valid = jnp.asarray([[True, True, True, True, True, False], [False, True, True, True, True, True]])
    query_slots = jnp.broadcast_to(jnp.arange(6), (2, 6))
    prefix_end = jnp.asarray([3, 5])
    got = np.asarray(layers.causal_mask(query_slots, key_valid, None, prefix_end))[:, 0]
    for b in range(2):
        for i in range(6):
            for j in range(6):
                want = (j <= i or j < int(prefix_end[b])) and (bool(key_valid[b, j]) or i == j)
                assert got[b, i, j] == want, (b, i, j)
    causal = np.asarray(layers.causal_mask(query_slots, key_valid))[:, 0]
    assert np.array_equal(got[:, :, 5:], causal[:, :, 5:]) and not np.array_equal(got, causal)


def test_prompt_lengths_end_at_the_first_target_position():
    loss_mask = jnp.asarray([[0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0], [0, 1, 0, 1, 1, 0]])
    assert prompt_lengths(loss_mask).tolist() == [3, 6, 6, 2]


@pytest.mark.parametrize("injection", ["prefix", "ica"])
def test_the_prompt_reads_both_ways_and_never_sees_the_answer(injection):
    images, has_image, tokens, valid = inputs(batch=2, t=7)
    prompt = jnp.asarray([4, 3])  # row 0: positions 0-3 are the prompt, row 1: 0-2
    model = _model(injection, "bidirectional")
    base = model(images, has_image, tokens, valid, prompt_length=prompt)
    # another answer token (position 5 in both rows): no prompt position moves
    answer_changed = model(images, has_image, tokens.at[:, 5].set(7), valid, prompt_length=prompt)
    np.testing.assert_array_equal(np.asarray(answer_changed[0, :4]), np.asarray(base[0, :4]))
    np.testing.assert_array_equal(np.asarray(answer_changed[1, :3]), np.asarray(base[1, :3]))
    assert not np.allclose(answer_changed[:, 5], base[:, 5])
    # another last prompt token (row 0, position 3): the first position sees it under bidirectional reading only
    last_changed = tokens.at[0, 3].set(9)
    moved = model(images, has_image, last_changed, valid, prompt_length=prompt)
    assert np.abs(np.asarray(moved[0, 0] - base[0, 0])).max() > 1e-4
    causal = _model(injection, "causal")
    np.testing.assert_array_equal(np.asarray(causal(images, has_image, last_changed, valid)[0, :3]),
                                  np.asarray(causal(images, has_image, tokens, valid)[0, :3]))
    with pytest.raises(ValueError, match="prompt_length"):
        model(images, has_image, tokens, valid)


@pytest.mark.parametrize("injection", ["prefix", "ica"])
def test_decoding_computes_the_function_training_fits(injection):
    """Teacher-forced logits of ``prompt + answer`` (the training pass) equal prefill + decode_step logits."""
    images, has_image, tokens, valid = inputs(batch=2, t=7)
    model = _model(injection, "bidirectional")
    p = 4
    full = model(images, has_image, tokens, valid, prompt_length=jnp.full((2,), p))
    last = assert_decoding_matches_training(model, images, has_image, tokens, full, p)
    # and the causal model's training pass would not match this prefill: the check above can fail
    causal_full = _model(injection, "causal")(images, has_image, tokens, valid)
    assert np.abs(np.asarray(causal_full[:, p - 1] - last)).max() > 1e-4


def test_config_key_is_validated_and_refused_with_splash(tiny_config):
    tiny_config.model.prompt_attention = "both"
    with pytest.raises(ConfigError, match="model.prompt_attention"):
        config_lib.validate(tiny_config)
    tiny_config.model.update(prompt_attention="bidirectional", attention="splash")
    with pytest.raises(ConfigError, match="model.prompt_attention.*splash"):
        config_lib.validate(tiny_config)
    mask = attention.Mask(jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), bool), None, jnp.asarray([2]))
    with pytest.raises(ValueError, match="splash kernel runs causal attention only"):
        attention.attend(*(jnp.zeros((1, 2, 2, 4)),) * 3, mask, "splash")
