"""Checkpoint retention, exact resume after SIGKILL, fallback past unreadable checkpoints, force_restart,
params-only export, the NaN 'stop' policy, and resume data order."""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semrel_jax import config as config_lib, errors, recipe
from semrel_jax.data import pipeline
from semrel_jax.training import checkpoint as checkpoint_lib
from semrel_jax.training import train, train_step as train_step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FROZEN = (r"vit/layers/\d+/(fc1|fc2|q_proj)/",)  # some frozen params, stored in bfloat16


def _base_config():
    import vqa

    c = vqa.get_config("tiny")
    c.train.update(checkpoint_every=1, keep_checkpoints=3, frozen=FROZEN, frozen_dtype="bfloat16")
    c.eval.num_examples = 8
    return c


def _steps_on_disk(workdir):
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    return sorted(int(n) for n in names if n.isdigit())


def _checkpointer(workdir):
    return checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)


def _restore_params(workdir, step):
    ckpt = _checkpointer(workdir)
    try:
        return ckpt.restore_raw(step)["params"]
    finally:
        ckpt.close()


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished tiny run (6 steps, a checkpoint every step, 3 kept); tests work on copies of it."""
    workdir = str(tmp_path_factory.mktemp("base") / "run")
    train.train_and_evaluate(_base_config(), workdir)
    assert _steps_on_disk(workdir) == [4, 5, 6]
    return workdir


def _copy(base, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(base, workdir)
    return workdir


# --- 1. retention ---------------------------------------------------------------------------------


def test_keep_last_n_plus_every_k_in_a_training_run(tmp_path):
    c = _base_config()
    # Only host-side settings change: the base run's programs (num_steps shapes the schedule, so it stays).
    c.train.update(keep_checkpoints=2, keep_every=4)
    train.train_and_evaluate(c, str(tmp_path))
    assert _steps_on_disk(str(tmp_path)) == [4, 5, 6]  # last two (5, 6) plus multiples of 4 (4)


def test_keep_every_steps_are_saved_even_off_the_save_interval(tmp_path):
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path), save_every=5, keep=1, keep_every=3)
    state = {"w": jnp.zeros(3)}
    saved = [s for s in range(1, 11) if ckpt.save(s, {"w": state["w"] + s}, "{}")]
    ckpt.close()
    assert saved == [1, 3, 5, 6, 9, 10]  # Orbax always saves the first step it sees
    assert sorted(int(n) for n in os.listdir(tmp_path) if n.isdigit()) == [3, 6, 9, 10]


def test_checkpoint_keys_are_validated(tiny_config):
    tiny_config.train.keep_every = -1
    with pytest.raises(config_lib.ConfigError, match="config.train.keep_every"):
        config_lib.validate(tiny_config)
    tiny_config.train.keep_every = 0
    config_lib.validate(tiny_config)


# --- 2. SIGKILL and resume -----------------------------------------------------------------------


def _interrupted_at_step_5(monkeypatch, run):
    """Calls ``run()`` with the data dying (a simulated preemption) when asked for step 5's batch, and expects that."""
    real_iterate = pipeline.iterate

    def dies_at_step_5(dataset, start_step, *args):
        for i, batch in enumerate(real_iterate(dataset, start_step, *args)):
            if start_step + i == 5:
                raise KeyboardInterrupt("simulated preemption")
            yield batch

    monkeypatch.setattr(pipeline, "iterate", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(pipeline, "iterate", real_iterate)


def test_a_run_that_dies_between_checkpoints_resumes_from_the_last_and_equals_the_uninterrupted(
        base_run, tmp_path, monkeypatch):
    """In-process: the loop dies fetching step 6's batch; the rerun resumes from step 3 (checkpoint_every=3) and
    ends bitwise on the uninterrupted base run's parameters. Only host-side settings differ: the base run's programs."""
    c = _base_config()
    c.train.checkpoint_every = 3
    workdir = str(tmp_path / "split")
    _interrupted_at_step_5(monkeypatch, lambda: train.train_and_evaluate(c, workdir))
    assert _steps_on_disk(workdir) == [1, 3]  # 5 steps done, the last save at 3 (Orbax saves a run's first step)
    train.train_and_evaluate(c, workdir)

    jax.tree.map(np.testing.assert_array_equal, _restore_params(base_run, 6), _restore_params(workdir, 6))
    steps = [json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl")) if '"train"' in l]
    assert steps == [2, 3, 4, 4, 6], steps  # step 4 is logged again: the run resumed from step 3


def test_sigkill_then_rerun_equals_uninterrupted_run(tmp_path):
    num_steps = 10
    env = dict(os.environ)  # the suite's compilation cache (conftest): the three runs compile the step once

    def cmd(workdir):
        return [sys.executable, "-m", "semrel_jax.main", "--config=configs/vqa.py:tiny", f"--workdir={workdir}",
                f"--config.train.num_steps={num_steps}", "--config.train.checkpoint_every=1",
                "--config.eval.num_examples=8"]

    full, killed = tmp_path / "full", tmp_path / "killed"
    # The uninterrupted reference runs in this process (the same program as the command's: same config, same XLA
    # flags, the same compilation cache); the killed run and its rerun are real processes.
    import vqa

    c = vqa.get_config("tiny")
    c.train.update(num_steps=num_steps, checkpoint_every=1)
    c.eval.num_examples = 8
    train.train_and_evaluate(c, str(full))

    proc = subprocess.Popen(cmd(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (killed / "checkpoints").is_dir() and any(s > 2 for s in _steps_on_disk(str(killed))):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "results.json").exists()
    before = _steps_on_disk(str(killed))
    assert 2 < max(before) < num_steps, before

    rerun = subprocess.run(cmd(killed), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    start = int((rerun.stdout + rerun.stderr).split("start step ")[1].split()[0])
    assert start == max(before), (start, before)

    a, b = _restore_params(str(full), num_steps), _restore_params(str(killed), num_steps)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert json.loads((full / "results.json").read_text())["accuracy"] == \
        json.loads((killed / "results.json").read_text())["accuracy"]


# --- 3. unreadable checkpoints, incompatible configs, force_restart ------------------------------


def _truncate_arrays(step_dir):
    files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True) if os.path.isfile(f)]
    assert files
    for f in files:
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)


def _fallback_records(workdir):
    lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
    return [json.loads(l) for l in lines if '"checkpoint_fallback"' in l]


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(base_run, tmp_path, capsys):
    workdir = _copy(base_run, tmp_path)
    _truncate_arrays(os.path.join(workdir, "checkpoints", "6"))
    train.train_and_evaluate(_base_config(), workdir)  # the same 6-step run, rerun

    out = capsys.readouterr()
    assert "start step 5" in out.out + out.err
    assert "checkpoint step 6 could not be restored" in out.out + out.err
    assert [(r["step"], r["unreadable_step"]) for r in _fallback_records(workdir)] == [(5, 6)]
    assert os.listdir(os.path.join(workdir, "checkpoints.unreadable")) == ["6"]  # set aside, not deleted
    assert _steps_on_disk(workdir) == [4, 5, 6]  # step 6 saved again, from the resumed run: the original's values
    jax.tree.map(np.testing.assert_array_equal, _restore_params(base_run, 6), _restore_params(workdir, 6))
    assert os.path.exists(os.path.join(workdir, "results.json"))


def test_uncommitted_tmp_dir_is_ignored(base_run, tmp_path, capsys):
    workdir = _copy(base_run, tmp_path)
    ckpts = os.path.join(workdir, "checkpoints")
    # A save killed before its commit: Orbax's temporary name, partial content.
    os.rename(os.path.join(ckpts, "6"), os.path.join(ckpts, "6.orbax-checkpoint-tmp"))
    _truncate_arrays(os.path.join(ckpts, "6.orbax-checkpoint-tmp"))
    os.remove(os.path.join(ckpts, "6.orbax-checkpoint-tmp", "commit_success.txt"))
    train.train_and_evaluate(_base_config(), workdir)  # the same 6-step run, restarted

    out = capsys.readouterr()
    assert "start step 5" in out.out + out.err
    assert _fallback_records(workdir) == []  # never a checkpoint, so nothing to warn about
    assert _steps_on_disk(workdir) == [4, 5, 6]
    assert not os.path.exists(os.path.join(ckpts, "6.orbax-checkpoint-tmp"))  # replaced by the new save
    # Resuming from 5 and redoing step 6 reproduces the original step 6 bitwise.
    a, b = _restore_params(base_run, 6), _restore_params(workdir, 6)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_no_restorable_checkpoint_fails_instead_of_starting_over(base_run, tmp_path):
    workdir = _copy(base_run, tmp_path)
    for step in (4, 5, 6):
        _truncate_arrays(os.path.join(workdir, "checkpoints", str(step)))
    with pytest.raises(checkpoint_lib.CheckpointRestoreError, match=r"step 6: .*step 5: .*step 4: .*force_restart"):
        train.train_and_evaluate(_base_config(), workdir)
    assert _steps_on_disk(workdir) == [4, 5, 6]  # nothing moved or deleted
    assert not os.path.exists(os.path.join(workdir, "checkpoints.unreadable"))


def test_incompatible_config_fails_and_force_restart_moves_old_run_aside(base_run, tmp_path, capsys):
    workdir = _copy(base_run, tmp_path)
    c = _base_config()
    c.model.llm.dim = 48
    with pytest.raises(ValueError, match="different config.model"):
        train.train_and_evaluate(c, workdir)
    assert _steps_on_disk(workdir) == [4, 5, 6]

    c.train.force_restart = True
    c.train.num_steps = 4
    train.train_and_evaluate(c, workdir)
    out = capsys.readouterr()
    assert "start step 0" in out.out + out.err
    replaced = glob.glob(os.path.join(workdir, "replaced-*"))
    assert len(replaced) == 1
    old = replaced[0]
    assert sorted(int(n) for n in os.listdir(os.path.join(old, "checkpoints")) if n.isdigit()) == [4, 5, 6]
    for name in ("metrics.jsonl", "results.json", "config.json", "tokenizer"):
        assert os.path.exists(os.path.join(old, name)), name
    jax.tree.map(np.testing.assert_array_equal, _restore_params(base_run, 6), _restore_params(old, 6))
    assert _steps_on_disk(workdir) == [2, 3, 4]
    assert json.loads(open(os.path.join(workdir, "config.json")).read())["model"]["llm"]["dim"] == 48

    # Rerunning the identical forced command (say after a preemption) resumes instead of starting over.
    train.train_and_evaluate(c, workdir)
    out = capsys.readouterr()
    assert "start step 4" in out.out + out.err
    assert len(glob.glob(os.path.join(workdir, "replaced-*"))) == 1


# --- 4. params-only export -----------------------------------------------------------------------


def test_export_loads_a_model_with_the_training_paths_logits(base_run, tmp_path):
    from semrel_jax import export
    from flax import nnx

    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "semrel_jax.export", f"--workdir={base_run}", f"--out={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "export.json").read_text())["step"] == 6
    assert not glob.glob(str(out / "params" / "**" / "*opt*"), recursive=True)
    exported = export.load_exported(str(out))

    # The training path: rebuild the split model, restore the train state, merge (as _run/evaluate do).
    run = recipe.build(_base_config(), base_run, recipe.single_device_mesh())
    ckpt = _checkpointer(base_run)
    state = ckpt.restore(6, run.train.state)
    ckpt.close()
    trained = nnx.merge(run.model.graphdef, state.params, run.train.frozen)

    featurizer = recipe.build_featurizer(run.config, exported.tokenizer)
    batch = train_step_lib.device_batch(pipeline.training_dataset(run.data.train, featurizer.train, 8, 0)[0])
    inputs = (batch["images"], batch["has_image"], batch["tokens"], batch["valid"])
    forward = nnx.jit(lambda model, *x: model(*x))  # one program for both (eager would compile each operation)
    expected = np.asarray(forward(trained, *inputs))
    got = np.asarray(forward(exported.model, *inputs))
    np.testing.assert_array_equal(got, expected)

    # Frozen params come back in the dtype training used them in; trainable ones are the trained values.
    exported_state = nnx.state(exported.model)
    q = exported_state["vision"]["encoders"]["vit"]["layers"][0]["q_proj"]["kernel"]
    assert q.dtype == jnp.bfloat16
    k = exported_state["vision"]["encoders"]["vit"]["layers"][0]["k_proj"]["kernel"]
    np.testing.assert_array_equal(
        np.asarray(k[...]), np.asarray(state.params["vision"]["encoders"]["vit"]["layers"][0]["k_proj"]["kernel"][...])
    )
    with pytest.raises(errors.PathError, match="already holds an export"):
        export.export_params(base_run, str(out))


# --- 5. NaN policy 'stop' ------------------------------------------------------------------------


def test_nonfinite_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    c = _base_config()
    c.train.update(log_every=100, nonfinite="stop", keep_checkpoints=10)  # the base run's 6 steps: its programs
    real_iterate = pipeline.iterate

    def nan_at_step_5(dataset, start_step, *args):
        for i, batch in enumerate(real_iterate(dataset, start_step, *args)):
            if start_step + i + 1 == 5:  # the batch of step 5 (which ends with 5 steps done)
                batch = dict(batch, images={"vit": np.full_like(batch["images"]["vit"], np.nan)})
            yield batch

    monkeypatch.setattr(pipeline, "iterate", nan_at_step_5)
    with pytest.raises(train.NonFiniteLossError, match=r"at step 5 .*Last checkpoint: step 4"):
        train.train_and_evaluate(c, str(tmp_path))
    assert _steps_on_disk(str(tmp_path)) == [1, 2, 3, 4]
    params = _restore_params(str(tmp_path), 4)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    assert not os.path.exists(tmp_path / "results.json")


# --- 6. data order on resume ---------------------------------------------------------------------


def test_batches_after_resume_are_the_uninterrupted_runs_batches(tiny_config, tokenizer):
    """The grain iterator's state is the step: resuming at s yields exactly batch s of a fresh run.

    (End to end, the bitwise-resume tests above and in test_training.py cover this too.)
    """
    tiny_config.data.train_images = 2  # 40 examples: 5 batches per epoch
    recipe.prepare_config(tiny_config)
    source = recipe.build_data(tiny_config).train
    featurizer = recipe.build_featurizer(tiny_config, tokenizer)
    dataset = pipeline.training_dataset(source, featurizer.train, 8, 0)
    fresh = pipeline.iterate(dataset, 0)
    uninterrupted = [next(fresh) for _ in range(len(source) // 8 + 3)]  # crosses an epoch boundary
    for start in (4, len(source) // 8 + 1):
        resumed = pipeline.iterate(dataset, start)
        for step in range(start, start + 2):
            jax.tree.map(np.testing.assert_array_equal, next(resumed), uninterrupted[step])


def test_a_stage_ended_on_its_loss_is_the_shorter_stage_and_resumes_on_the_same_schedule(tmp_path, monkeypatch,
                                                                                          capsys):
    """A stage with ':loss' above any held-out loss ends at the first logging step (2 of at most 4): the run equals, bitwise,
    one whose stage lasts 2 steps. Killed at step 5 and rerun, it resumes from step 3 with the stage's end read
    from the checkpoint (resumed with the 4-step stage, steps 3-4 would draw stage batches and differ)."""
    def config(stage):
        c = _base_config()
        c.train.checkpoint_every = 3
        c.data.curriculum = (stage,)
        return c

    fixed, ended = str(tmp_path / "fixed"), str(tmp_path / "ended")
    train.train_and_evaluate(config("horizontal+vertical:16:2"), fixed)
    _interrupted_at_step_5(monkeypatch, lambda: train.train_and_evaluate(config("horizontal+vertical:16:4:1000"), ended))
    assert re.search(r"stage horizontal\+vertical:16:4:1000 ended on its held-out loss [\d.]+ at step 2",
                     capsys.readouterr().out)
    ckpt = _checkpointer(ended)
    try:
        assert ckpt.saved_progress(3) == {"curriculum_ended": {"0": 2}}
        assert ckpt.saved_progress(1) == {"curriculum_ended": {}}  # saved before the stage ended
    finally:
        ckpt.close()
    train.train_and_evaluate(config("horizontal+vertical:16:4:1000"), ended)

    jax.tree.map(np.testing.assert_array_equal, _restore_params(fixed, 6), _restore_params(ended, 6))
    assert "ended on its loss after 2 steps (from the checkpoint)" in capsys.readouterr().out
    logged = [json.loads(line) for line in open(os.path.join(ended, "metrics.jsonl"))]
    assert [(r["step"], r["stage_ended"]) for r in logged if "stage_ended" in r] == [(2, 0)]
    held_out = [r["held_out_loss"] for r in logged if "held_out_loss" in r]
    assert len(held_out) == 1 and 1.0 < held_out[0] < 10.0  # an untrained model's loss, read once (at step 2)


def test_checkpoint_frozen_makes_checkpoints_self_contained(tmp_path):
    c = _base_config()
    c.train.update(checkpoint_every=3, checkpoint_frozen=True)  # the base run's 6 steps: its programs
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(c, workdir)
    ckpt = _checkpointer(workdir)
    try:
        saved = ckpt.restore_frozen(3)
        params = ckpt.restore_raw(3)["params"]
    finally:
        ckpt.close()
    recipe.prepare_config(c)
    frozen = recipe.build_model(c, len(recipe.load_tokenizer(c, workdir))).frozen
    expected = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(frozen)[0]}
    got = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(saved)[0]}
    assert len(got) == len(expected) > 0
    for (ka, a), (kb, b) in zip(sorted(expected.items()), sorted(got.items())):
        assert a.dtype == b.dtype and np.array_equal(a.astype(np.float32), b.astype(np.float32)), (ka, kb)
    trainable = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert trainable and not trainable & set(got)  # "state" still holds only the trainable parameters


def test_runs_saved_by_another_version_are_refused_and_changed_keys_named(tiny_config):
    recipe.prepare_config(tiny_config)
    saved = json.loads(tiny_config.to_json_best_effort())
    checkpoint_lib.check_compatible(saved, tiny_config, "w")
    tiny_config.data.num_workers = 2  # how data is read, not what: still resumes
    checkpoint_lib.check_compatible(saved, tiny_config, "w")
    tiny_config.data.caption_mix = 0.5
    with pytest.raises(ValueError, match=r"different config.data \(data.caption_mix: 0.0 -> 0.5\)"):
        checkpoint_lib.check_compatible(saved, tiny_config, "w")
    del saved["data"]["examples_per_image"]  # a config.json written before this key existed
    with pytest.raises(config_lib.ConfigError, match=r"missing keys \['data.examples_per_image'\]"):
        config_lib.from_saved(saved, "w/config.json")
