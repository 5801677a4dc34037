"""``train.alignment_weight``: the token-image alignment objective (method/alignment.py) and its place in the step."""

import jax.numpy as jnp
import numpy as np
import pytest
import objective_steps
import vqa  # configs/ is on sys.path (conftest)

from semrel_jax import config as config_lib
from semrel_jax.method import alignment


def _reference_losses(embeddings, keys):
    """The objective written out with NumPy loops: row r's image is r // (R // B)."""
    rows, t, d = embeddings.shape
    images = keys.shape[0]
    out = np.zeros((rows, t))
    for r in range(rows):
        for i in range(t):
            scores = [np.log(np.exp(keys[b] @ embeddings[r, i]).sum()) / np.sqrt(d) for b in range(images)]
            scores = np.asarray(scores)
            log_softmax = scores - np.log(np.exp(scores - scores.max()).sum()) - scores.max()
            out[r, i] = -log_softmax[r // (rows // images)]
    return out


def test_the_loss_equals_a_direct_computation_with_grouped_rows():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(6, 4, 8))  # 3 images, 2 text rows each
    keys = rng.normal(size=(3, 5, 8))
    got = alignment.token_image_alignment_losses(jnp.asarray(embeddings, jnp.float32), jnp.asarray(keys, jnp.float32))
    assert got.shape == (6, 4)
    np.testing.assert_allclose(got, _reference_losses(embeddings, keys), rtol=1e-5)


def test_a_word_present_only_in_its_own_image_wins_and_a_word_in_every_image_cannot():
    d = 16
    basis = np.eye(d) * 8.0
    # image 0 holds "red" (basis 0), image 1 "blue" (basis 1); both hold "background" (basis 2)
    keys = np.stack([basis[[0, 2, 3]], basis[[1, 2, 4]]])
    embeddings = np.stack([basis[[0, 2]], basis[[1, 2]]])  # each row: its colour word, then the shared word
    losses = np.asarray(alignment.token_image_alignment_losses(jnp.asarray(embeddings), jnp.asarray(keys)))
    assert losses[0, 0] < 0.05 and losses[1, 0] < 0.05  # the colour word picks its own image
    np.testing.assert_allclose(losses[:, 1], np.log(2), rtol=1e-3)  # the shared word cannot: chance, ln 2


def test_prompt_token_weights_cover_the_prompt_of_rows_with_an_image():
    valid = jnp.asarray([[1, 1, 1, 1, 0]] * 4, bool)
    loss_mask = jnp.asarray([[0, 0, 1, 1, 0]] * 4, jnp.float32)  # positions 2, 3 predict the answer
    has_image = jnp.asarray([1, 0])  # rows 0, 1 share image 0; rows 2, 3 have none
    weights = np.asarray(alignment.prompt_token_weights(valid, loss_mask, has_image))
    np.testing.assert_array_equal(weights, [[1, 1, 0, 0, 0]] * 2 + [[0, 0, 0, 0, 0]] * 2)


def test_it_needs_the_ica_memory():
    c = vqa.get_config("tiny")
    c.train.alignment_weight = 1.0
    config_lib.validate(c)
    c.model.injection = "prefix"
    with pytest.raises(config_lib.ConfigError, match="train.alignment_weight"):
        config_lib.validate(c)
    c.train.alignment_weight = -0.5
    with pytest.raises(config_lib.ConfigError, match="train.alignment_weight"):
        config_lib.validate(c)


def _run(tmp_path, weight: float, steps: int, accumulation: int = 1):
    return objective_steps.run_steps(tmp_path, steps, accumulation, alignment_weight=weight)


@pytest.mark.slow
def test_the_step_adds_the_weighted_term_and_the_alignment_loss_falls(tmp_path):
    plain = _run(tmp_path / "plain", 0.0, 1)
    aligned = _run(tmp_path / "aligned", 0.5, 200)
    assert "alignment_loss" not in plain[0]
    first = aligned[0]
    # same initial parameters and batch: the total is the answer loss plus half the alignment term
    np.testing.assert_allclose(first["loss"], plain[0]["loss"] + 0.5 * first["alignment_loss"], rtol=1e-5)
    assert abs(first["alignment_loss"] - np.log(8)) < 0.05  # 8 images: starts at chance
    curve = [round(m["alignment_loss"], 3) for m in aligned[::10]]
    # ~1 word in 6 of a prompt can tell its scene from the others: 2.08 -> 1.88 on this machine (1.83 at a plateau)
    assert aligned[-1]["alignment_loss"] < first["alignment_loss"] - 0.12, curve


@pytest.mark.slow
def test_with_accumulation_each_micro_batch_scores_its_own_images(tmp_path):
    (metrics,) = _run(tmp_path, 1.0, 1, accumulation=2)
    # two micro-batches of 4 images, each term normalised by the whole batch's prompt tokens: chance is ln 4
    assert abs(metrics["alignment_loss"] - np.log(4)) < 0.05
