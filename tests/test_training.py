"""The train step learns, NaNs are never applied, main runs end to end (exact resume: test_checkpoint.py; SIGTERM
to a run: test_multiprocess.py)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semrel_jax import recipe
from semrel_jax.data import pipeline
from semrel_jax.training import train_step as train_step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _step_setup(config, tokenizer):
    recipe.prepare_config(config)
    data = recipe.build_data(config)
    featurizer = recipe.build_featurizer(config, tokenizer)
    model = recipe.build_model(config, len(tokenizer))
    setup = recipe.build_train_state(config, model, recipe.single_device_mesh())
    step = recipe.build_step(config, model, setup, recipe.single_device_mesh(), 0, donate=False)
    batch = train_step_lib.device_batch(pipeline.training_dataset(data.train, featurizer.train, 8, 0)[0])
    return step, setup.state, setup.frozen, batch


def test_loss_decreases_and_nonfinite_updates_are_skipped(tiny_config, tokenizer):
    tiny_config.train.update(num_steps=40, warmup_steps=2, learning_rate=3e-3)
    step, state, frozen, batch = _step_setup(tiny_config, tokenizer)
    losses = []
    for _ in range(25):
        state, metrics = step(state, frozen, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses
    assert int(metrics["nonfinite"]) == 0

    before = jax.tree.map(np.asarray, state.params)
    bad = dict(batch, images={"vit": jnp.asarray(batch["images"]["vit"]).at[0, 0, 0, 0].set(jnp.nan)})
    state, metrics = step(state, frozen, bad)
    assert int(metrics["nonfinite"]) == 1 and not np.isfinite(float(metrics["loss"]))
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, state.params))
    assert int(state.step) == 26


def test_main_runs_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    mix = ["--config.data.caption_mix=0.5", "--config.data.max_text_len=34"]  # the demo's scene descriptions mixed in
    cmd = [sys.executable, "-m", "semrel_jax.main", "--config=configs/vqa.py:tiny", f"--workdir={workdir}",
           "--config.eval.num_examples=20", "--config.train.peak_tflops_per_device=0.1", *mix]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    for key in ("accuracy/relational", "accuracy/non_relational", "majority_baseline/relational", "wall_seconds"):
        assert key in results
    assert results["num_examples"] == 20
    assert "relational" in proc.stdout and "majority" in proc.stdout
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir / "tensorboard"))
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["split"] == "train" and np.isfinite(json.loads(lines[0])["loss"])
    first = json.loads(lines[0])  # throughput figures logged while training
    assert first["tokens_per_second"] > 0 and first["tflops_per_second_per_device"] > 0
    assert first["mfu"] == pytest.approx(first["tflops_per_second_per_device"] / 0.1)
    assert len(json.loads((workdir / "predictions.json").read_text())) == 20
    # evaluating the checkpoint afterwards reproduces the run's own evaluation, with heatmaps of 2 examples
    cmd = [sys.executable, "-m", "semrel_jax.evaluate", f"--checkpoint={workdir}", f"--out={tmp_path / 'eval'}",
           "--config=configs/vqa.py:tiny", "--config.eval.num_examples=20", "--explain", "2", *mix]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((tmp_path / "eval" / "results.json").read_text())
    samples = json.loads((tmp_path / "eval" / "explain" / "samples.json").read_text())
    assert [s["figure"] for s in samples] == ["example_0.png", "example_1.png"]
    assert all((tmp_path / "eval" / "explain" / s["figure"]).stat().st_size > 1000 for s in samples)
    assert "example_1.png" in (tmp_path / "eval" / "explain" / "index.html").read_text()
    assert again["wall_seconds"] > 0
    assert {k: v for k, v in again.items() if k.startswith("accuracy")} == {
        k: v for k, v in results.items() if k.startswith("accuracy")
    }


def test_bad_config_fails_before_compiling(tmp_path):
    cmd = [sys.executable, "-m", "semrel_jax.main", "--config=configs/vqa.py:tiny", f"--workdir={tmp_path}",
           "--config.train.batch_size=-3"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "config.train.batch_size: expected a positive integer" in proc.stderr
