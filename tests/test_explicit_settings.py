"""Explicit settings win: a checkpoint's config.json never overwrites what the user set (what it fills is
logged), ``train.grad_clip=0`` means no clipping, and the knobs that guard this are validated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semrel_jax import config as config_lib
from semrel_jax.training import optimizer

import hf_fixtures
import vqa


def _first_update(grad_clip: float, grads):
    c = vqa.get_config("tiny")
    c.train.update(grad_clip=grad_clip, warmup_steps=0, learning_rate=1e-2, weight_decay=0.0)
    params = jax.tree.map(jnp.ones_like, grads)
    tx = optimizer.make_optimizer(c.train)
    return tx.update(grads, tx.init(params), params)[0]


def test_grad_clip_zero_means_no_clipping():
    grads = {"w": jnp.array([[3.0, -4.0]]), "b": jnp.array([1e-3])}  # global norm ~5
    unclipped = _first_update(0.0, grads)
    # AdamW's first step on the raw gradients: -lr * g / (|g| + eps) per coordinate, none of them zeroed
    expected = jax.tree.map(lambda g: -1e-2 * g / (jnp.abs(g) + 1e-8), grads)
    for got, want in zip(jax.tree.leaves(unclipped), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4)
    # a positive grad_clip still clips: the tiny coordinate's step shrinks relative to eps once g is scaled by 1e-6
    clipped = _first_update(5e-6, grads)
    assert float(jnp.abs(clipped["b"])[0]) < 0.5 * float(jnp.abs(unclipped["b"])[0])


def test_decay_fraction_holds_the_peak_then_decays_over_the_last_fraction():
    peak, warmup, total = 1e-3, 200, 14_000
    release = optimizer.learning_rate_schedule(peak, warmup, total)
    held = optimizer.learning_rate_schedule(peak, warmup, total, decay_fraction=0.25)
    decay_start = total - round(0.25 * (total - warmup))  # 10,550
    for step in (0, 100, 200):  # the same warm-up
        assert float(held(step)) == pytest.approx(float(release(step)), abs=1e-12)
    for step in (200, 5_000, decay_start):  # the peak, held
        assert float(held(step)) == pytest.approx(peak, rel=1e-6)
    for step in (decay_start + 1_000, total - 1):  # the half cosine over the last 3,450 steps
        expected = peak * 0.5 * (1 + np.cos(np.pi * (step - decay_start) / (total - decay_start)))
        assert float(held(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9)
    assert float(held(total)) == pytest.approx(0.0, abs=1e-12)
    assert float(release(10_000)) < 0.25 * peak  # what the release's cosine has left by then
    c = vqa.get_config("tiny")
    c.train.decay_fraction = 0.25
    c.train.num_steps = total
    c.train.warmup_steps = warmup
    assert float(optimizer.schedule_for(c.train)(decay_start)) == pytest.approx(c.train.learning_rate, rel=1e-6)


@pytest.mark.parametrize(
    "key, value",
    [("train.grad_clip", -1.0), ("train.decay_fraction", 0.0), ("train.decay_fraction", 1.5), ("train.weight_decay", -0.1), ("train.b2", 1.0),
     ("model.encoders.vit.adapter_dropout", 1.0)],
)
def test_knobs_are_validated_naming_the_key(tiny_config, key, value):
    node = tiny_config
    *parents, leaf = key.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(config_lib.ConfigError, match=key.replace(".", r"\.")):
        config_lib.validate(tiny_config)


def test_a_checkpoint_config_never_overwrites_the_presets_preprocessing(tmp_path):
    """lsrm_7b sets the release's preprocessing (ImageNet stats, squash); a CLIP hf_dir (whose processor
    is CLIP stats + centre crop) keeps it, and each line of what the directory did fill is logged."""
    clip = hf_fixtures.save_vision(str(tmp_path / "clip"), "clip", num_hidden_layers=6)
    c = vqa.get_config("lsrm_7b")
    c.model.encoders.clip.update(hf_dir=clip, taps=(4, 5))
    filled = config_lib.prepare(c)
    e = c.model.encoders.clip
    assert (e.normalization, e.resample, e.crop, e.resize) == ("imagenet", "bicubic", False, 0)
    assert (e.width, e.depth, e.image_size) == (48, 6, 32)
    (line,) = filled
    assert line.startswith("config.model.encoders.clip: ") and "width=48 (was 1024)" in line and line.endswith(clip)
    assert "normalization" not in line and "crop" not in line
    # unset keys are what the directory's processor fills, and that is said
    e.update(normalization=None, crop=None)
    assert config_lib.resolve(c) == ["config.model.encoders.clip: normalization='clip', crop=True from clip's image processor"]
