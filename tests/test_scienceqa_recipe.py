"""configs/scienceqa.py and configs/coco.py: the release's recipe in steps, captions for evaluation only, the
ICA mask switching on at the shift epoch inside training, and a dry run on tiny HF models that learns."""

import dataclasses

import coco  # configs/ is on sys.path (conftest)
import numpy as np
import pytest
import scienceqa

import dataset_fixtures
import scienceqa_dry_run
from semrel_jax import config as config_lib
from semrel_jax import recipe
from semrel_jax.data import registry
from semrel_jax.errors import ConfigError
from semrel_jax.training import optimizer

RELEASE_TRAIN_PROBLEMS = 12_726  # ScienceQA's train split


@pytest.mark.parametrize("preset", scienceqa.PRESETS)
def test_every_recipe_preset_validates_with_paths_only(preset):
    from semrel_jax.config import defaults

    schema = defaults.schema_keys(config_lib.base_config())
    c = scienceqa.get_config(preset)
    c.data.root = "/data/ScienceQA"
    config_lib.validate(c)
    c2 = coco.get_config(preset)
    c2.data.update(train_file="/data/coco/dataset_coco.json", image_root="/data/coco")
    config_lib.validate(c2)
    for config in (c, c2):  # no key the schema lacks
        assert {k for k in defaults.schema_keys(config) if not k.startswith("model.encoders.")} <= schema


def test_release_schedule_in_steps():
    c = scienceqa.get_config("lsrm_7b")
    epoch = optimizer.steps_per_epoch(RELEASE_TRAIN_PROBLEMS, c.train.batch_size)
    lines = optimizer.derive_schedule(c.train, epoch)
    # the release on 8 GPUs x 4: floor(ceil(12,726 / 8) / 4) = 397 iterations per epoch
    assert epoch == 397 and (c.train.num_steps, c.train.warmup_steps) == (7_940, 794)
    assert c.train.learning_rate == pytest.approx(9e-3 * 32 / 256) and len(lines) == 2
    assert "num_steps=7940" in lines[1] and "397 steps per epoch" in lines[1]
    # the mask switches on at the first step of epoch 15, inside the 7,940 steps
    assert config_lib.parse_start(c.model.ica.start, epoch) == 15 * 397 < c.train.num_steps
    schedule = optimizer.learning_rate_schedule(optimizer.peak_learning_rate(c.train), 794, 7_940)
    # util/lr_sched.py: lr * epoch / warmup, then lr * (1 + cos(pi * (epoch - 2) / 18)) / 2
    for step in (0, 397, 794, 3_000, 7_939):
        e = step / 397
        expected = 1.125e-3 * (e / 2 if e < 2 else 0.5 * (1 + np.cos(np.pi * (e - 2) / 18)))
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-10)
    assert optimizer.derive_schedule(c.train, epoch) == lines  # idempotent: a saved config derives the same


def test_epoch_keys_are_validated():
    c = scienceqa.get_config("lsrm_7b")
    c.data.root = "/data"
    c.train.warmup_epochs = 20.0
    with pytest.raises(ConfigError, match="train.warmup_epochs"):
        config_lib.validate(c)
    c.train.update(epochs=0.0, warmup_epochs=1.0)
    with pytest.raises(ConfigError, match="train.warmup_epochs"):
        config_lib.validate(c)
    c.train.update(warmup_epochs=0.0, base_learning_rate=-1.0)
    with pytest.raises(ConfigError, match="train.base_learning_rate"):
        config_lib.validate(c)


def test_captions_join_the_context_in_evaluation_only(tmp_path):
    data = dataset_fixtures.write_scienceqa(str(tmp_path))
    c = scienceqa.get_config("lsrm_7b")
    c.data.update(root=data["root"], eval_split="train", on_bad_data="skip")  # problem 1 has a caption
    train_source, eval_source = registry.build_sources(c)
    caption = "A map of the United States."
    assert caption not in train_source[0]["question"] and train_source[0]["pid"] == "1"
    assert f"Context: {caption}\n" in eval_source[0]["question"]


def _tiny_recipe(tmp_path, num_train):
    """configs/scienceqa.py:lsrm_7b with tiny random HF directories: only paths and sizes overridden."""
    assets = scienceqa_dry_run.write_assets(str(tmp_path), num_train=num_train, num_test=8, pretrain_steps=0)
    return assets, _config(assets)


def _config(assets):
    c = scienceqa.get_config("lsrm_7b")
    c.update_from_flattened_dict(scienceqa_dry_run.overrides(assets))
    return c


@pytest.mark.slow  # writes HF directories and compiles a step: ~30 s on an idle 2-core machine
def test_mask_is_off_before_the_shift_epoch_and_on_from_it(tmp_path):
    assets, c = _tiny_recipe(tmp_path, num_train=64)  # 48 problems with an image + 16 text-only: 2 steps / epoch
    run = recipe.build(c, str(tmp_path / "run"))
    assert (c.train.num_steps, c.train.warmup_steps) == (40, 4)
    shift = recipe.mask_start_step(c, run.data)
    assert shift == 30  # the first step of epoch 15 of 20
    step = run.step_fn(donate=False)
    batch = next(iter(_batches(run)))
    state = run.train.state

    def mask_and_loss(at):
        _, metrics = step(dataclasses.replace(state, step=np.int32(at)), run.train.frozen, batch)
        return float(metrics["ica_mask"]), float(metrics["loss"])

    (off0, loss0), (off29, loss29), (on30, loss30), (on39, loss39) = map(mask_and_loss, (0, shift - 1, shift, 39))
    assert (off0, off29, on30, on39) == (0.0, 0.0, 1.0, 1.0)
    # the same parameters, batch and dropout: only the mask differs, and it changes the function
    assert loss0 == loss29 and loss30 == loss39 and abs(loss30 - loss0) > 1e-6


def _batches(run):
    from semrel_jax.data import pipeline
    from semrel_jax.training import train_step

    dataset = pipeline.training_dataset(run.data.train, run.featurizer.train, run.config.train.batch_size, 0)
    for s in range(len(dataset)):
        yield train_step.device_batch(dataset[s])
