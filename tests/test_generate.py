"""Sampling and stop strings of the decoder (greedy decoding is tested against full forward passes in test_models)."""

import jax
import jax.numpy as jnp
import numpy as np

from semrel_jax.data import tokenizer as tokenizer_lib
from semrel_jax.evaluation import generate

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
