"""``train.reconstruction_weight``: the slot-reconstruction objective (method/reconstruction.py) and its place in
the step (training/train_step.py ``AUXILIARY_OBJECTIVES``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import objective_steps
import vqa  # configs/ is on sys.path (conftest)
from flax import nnx

from semrel_jax import config as config_lib
from semrel_jax.config import model as model_config
from semrel_jax.method import reconstruction
from semrel_jax.method.vlm import SlotGroup, VisionLanguageModel


def test_thumbnails_are_the_block_means_of_each_region_row_major():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 12, 12, 3))  # a 2 x 2 grid of 6 px regions, 3 x 3 cells of 2 px
    got = np.asarray(reconstruction.region_thumbnails(jnp.asarray(image, jnp.float32), grid=2, cells=3))
    assert got.shape == (2, 4, 27)
    for b in range(2):
        for gy in range(2):
            for gx in range(2):
                region = image[b, gy * 6 : (gy + 1) * 6, gx * 6 : (gx + 1) * 6]
                cells = region.reshape(3, 2, 3, 2, 3).mean((1, 3))  # [cy, cx, C]
                np.testing.assert_allclose(got[b, gy * 2 + gx], cells.reshape(-1), rtol=1e-5, atol=1e-6)


def test_sizes_the_grid_does_not_divide_are_resized_first():
    image = jnp.full((1, 14, 14, 3), 0.25)  # 14 px, 2 x 2 regions of 5 x 5 cells: 20 px needed
    got = reconstruction.region_thumbnails(image, grid=2, cells=5)
    assert got.shape == (1, 4, 75)
    np.testing.assert_allclose(got, 0.25, rtol=1e-5)


def test_errors_decode_only_patch_slots_of_each_group_against_their_own_encoder():
    rng = np.random.default_rng(1)
    decoder = reconstruction.SlotDecoder(4, 3, rngs=nnx.Rngs(0))
    kernel, bias = np.asarray(decoder.proj.kernel[...]), np.asarray(decoder.proj.bias[...])
    tokens = rng.normal(size=(2, 6, 4)).astype(np.float32)
    # encoder "a": a class token (slot 0, never decoded), then a 2 x 2 grid (slots 1-4); "b": one region (slot 5)
    groups = (SlotGroup("a", (1,), 0, 2, True), SlotGroup("b", (1,), 5, 1, False))
    images = {"a": rng.normal(size=(2, 10, 10, 3)), "b": rng.normal(size=(2, 5, 5, 3))}
    got = reconstruction.reconstruction_errors(decoder, jnp.asarray(tokens), jax.tree.map(jnp.asarray, images), groups)
    for b in range(2):
        squared, count = 0.0, 0
        for slot, (name, gy, gx, px) in zip(
            range(1, 6), [("a", 0, 0, 5), ("a", 0, 1, 5), ("a", 1, 0, 5), ("a", 1, 1, 5), ("b", 0, 0, 5)]
        ):
            region = images[name][b, gy * px : (gy + 1) * px, gx * px : (gx + 1) * px]  # 5 x 5 cells of 1 px
            squared += ((tokens[b, slot] @ kernel + bias - region.reshape(-1)) ** 2).sum()
            count += 75
        np.testing.assert_allclose(got[b], squared / count, rtol=1e-4)


def test_the_decoder_exists_only_when_the_objective_is_on_and_bad_weights_are_refused():
    c = vqa.get_config("tiny")
    vocab = 50
    assert not hasattr(VisionLanguageModel(model_config.model_config(c, vocab), rngs=nnx.Rngs(0)), "slot_decoder")
    c.train.reconstruction_weight = 2.0
    config_lib.validate(c)
    model = VisionLanguageModel(model_config.model_config(c, vocab), rngs=nnx.Rngs(0))
    assert model.slot_decoder.proj.kernel.shape == (c.model.llm.dim, reconstruction.CELLS**2 * 3)
    c.model.injection = "prefix"  # the visual tokens exist either way
    config_lib.validate(c)
    c.train.reconstruction_weight = -1.0
    with pytest.raises(config_lib.ConfigError, match="train.reconstruction_weight"):
        config_lib.validate(c)


def _run(tmp_path, weight: float, steps: int, accumulation: int = 1):
    return objective_steps.run_steps(tmp_path, steps, accumulation, reconstruction_weight=weight)


@pytest.mark.slow
def test_the_step_adds_the_weighted_term_and_the_reconstruction_loss_falls(tmp_path):
    plain = _run(tmp_path / "plain", 0.0, 1)
    trained = _run(tmp_path / "trained", 2.0, 150)
    assert "reconstruction_loss" not in plain[0]
    first = trained[0]
    # the decoder is a parameter of its own: the answer loss at step 0 is the plain run's, plus twice the term
    np.testing.assert_allclose(first["loss"], plain[0]["loss"] + 2.0 * first["reconstruction_loss"], rtol=1e-5)
    curve = [round(m["reconstruction_loss"], 4) for m in trained[::10]]
    assert trained[-1]["reconstruction_loss"] < 0.5 * first["reconstruction_loss"], curve


@pytest.mark.slow
def test_accumulated_micro_batches_add_up_to_the_full_batch_term(tmp_path):
    (whole,) = _run(tmp_path / "whole", 1.0, 1)
    (split,) = _run(tmp_path / "split", 1.0, 1, accumulation=2)
    np.testing.assert_allclose(split["reconstruction_loss"], whole["reconstruction_loss"], rtol=1e-5)
    np.testing.assert_allclose(split["loss"], whole["loss"], rtol=1e-5)


def test_the_forward_reads_visual_tokens_the_caller_computed_as_its_own():
    c = vqa.get_config("tiny")
    c.train.reconstruction_weight = 1.0
    model = VisionLanguageModel(model_config.model_config(c, 50), rngs=nnx.Rngs(0))
    images = {"vit": jax.random.normal(jax.random.key(0), (2, 75, 75, 3))}
    has_image, tokens, valid = jnp.ones(2, bool), jnp.ones((4, 6), jnp.int32), jnp.ones((4, 6), bool)
    visual = model.visual_tokens(images, has_image)
    np.testing.assert_array_equal(model(images, has_image, tokens, valid, visual=visual),
                                  model(images, has_image, tokens, valid))
