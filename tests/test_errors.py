"""The error surface of every command (semrel_jax/cli.py) and the files it names when they fail.

In-process through ``cli.call`` / ``cli.flag_error_message``; one subprocess (slow) checks the real
``python -m semrel_jax.main`` path for the flag mistakes users make most.
"""

import errno
import json
import os
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

import dataset_fixtures as fx
from semrel_jax import cli, errors, files
from semrel_jax.data import images, llava_json
from semrel_jax.training import checkpoint as checkpoint_lib
from semrel_jax.training import metric_writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _raise(e):
    def main(argv):
        raise e
    return main


@pytest.mark.parametrize("raised, code", [
    (errors.ConfigError("config.train.batch_size: expected a positive integer, got 0"), 2),
    (images.BadDataError("llava_json", "a", "/d/a.png", images.CORRUPT_IMAGE, "truncated"), 3),
    (errors.MissingFileError("LLaVA instruction file not found at '/d/x.json'."), 4),
    (checkpoint_lib.IncompatibleCheckpointError("Checkpoints in '/w' were written with a different config"), 5),
    (OSError(errno.ENOSPC, "No space left on device", "/w/checkpoints"), 6),
    (PermissionError(errno.EACCES, "Permission denied", "/w/metrics.jsonl"), 4),
])
def test_user_errors_are_one_line_with_their_exit_code(raised, code, capsys):
    assert cli.call(_raise(raised), ["prog"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert (getattr(raised, "filename", None) or str(raised)) in err


def test_a_data_error_from_a_worker_is_found_in_the_chain(capsys):
    """grain re-raises a worker's exception as the cause of its own; the user still gets the one line."""
    bad = images.BadDataError("vqa_v2", 40, "/d/COCO_4.jpg", images.CORRUPT_IMAGE, "image file is truncated")
    try:
        try:
            raise bad
        except images.BadDataError as e:
            raise RuntimeError("Grain worker process 0 failed") from e
    except RuntimeError as wrapped:
        assert cli.call(_raise(wrapped), ["prog"]) == 3
    assert capsys.readouterr().err == f"error: {bad}\n"


def test_bugs_keep_their_traceback_and_verbosity_shows_it_for_user_errors(monkeypatch, capsys):
    with pytest.raises(ZeroDivisionError):
        cli.call(_raise(ZeroDivisionError("a bug")), ["prog"])
    with pytest.raises(OSError):  # an errno that says nothing about the user's paths is a bug
        cli.call(_raise(OSError(errno.EBADF, "Bad file descriptor")), ["prog"])
    monkeypatch.setattr(cli, "_verbose", lambda: True)
    assert cli.call(_raise(errors.DataError("/d/x.json: not valid JSON")), ["prog"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("error: /d/x.json: not valid JSON\n")


def test_did_you_mean_reaches_the_user_intact():
    c = ml_collections.ConfigDict({"train": {"num_steps": 1, "batch_size": 2}})
    with pytest.raises(AttributeError) as raised:
        c.train.num_stepz  # noqa: B018 - what ml_collections does for --config.train.num_stepz=5
    message = cli.flag_error_message(raised.value, ["prog", "--config=c.py", "--config.train.num_stepz=5"])
    assert message == ("--config.train.num_stepz: the config has no key 'num_stepz'. "
                       'Did you mean "num_steps" instead of "num_stepz"?')


def test_json_errors_name_the_file_line_and_column(tmp_path):
    path = tmp_path / "llava.json"
    path.write_text('[{"id": "a",\n  "image": "coco/a.jpg", "conversations": [{"from": "hum')  # cut mid-file
    with pytest.raises(errors.DataError) as raised:
        llava_json.LLaVAInstruct(str(path), str(tmp_path))
    assert str(raised.value).startswith(f"{path}: the LLaVA instruction file is not valid JSON (Unterminated string")
    assert "line 2, column 53" in str(raised.value)  # where the cut string starts
    with pytest.raises(FileNotFoundError, match="LLaVA instruction file not found"):  # and a PathError (exit 4)
        files.read_json(str(tmp_path / "absent.json"), "LLaVA instruction file")


def test_a_refused_resume_names_every_changed_key():
    c = ml_collections.ConfigDict({"model": {"dim": 64, "depth": 2}, "data": {"name": "vqa", "num_workers": 0}})
    saved = json.loads(c.to_json())
    c.model.dim, c.data.name, c.data.num_workers = 128, "scienceqa", 4  # num_workers: how, not what, is read
    with pytest.raises(checkpoint_lib.IncompatibleCheckpointError) as raised:
        checkpoint_lib.check_compatible(saved, c, "/w")
    assert "model.dim: 64 -> 128" in str(raised.value) and "data.name: 'vqa' -> 'scienceqa'" in str(raised.value)
    assert "num_workers" not in str(raised.value) and raised.value.exit_code == 5


def test_progress_bar_shows_this_intervals_loss_and_an_eta_without_compilation(tmp_path, monkeypatch, capsys):
    clock = [1000.0]
    monkeypatch.setattr(metric_writers.time, "monotonic", lambda: clock[0])
    writer = metric_writers.MetricWriter(str(tmp_path), total_steps=101)
    clock[0] += 60.0  # the first step: 60 s of compilation
    writer.compiled(1, np.float32(9.0))
    assert writer.eta_seconds(1) is None
    clock[0] += 10.0  # then 10 steps in 10 s: 1 s per step, 90 steps left
    writer.progress(11, {"loss": np.float32(2.5)})
    assert writer.eta_seconds(11) == pytest.approx(90.0)
    writer._bar.refresh()
    shown = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "loss=2.5" in shown and "eta=01:30" in shown, shown
    writer.close()


@pytest.mark.slow
def test_main_command_line_mistakes(tmp_path):
    """The real command: a mistyped key, a bad value, an unknown preset, a file as workdir, the space flag form."""
    (tmp_path / "file").write_text("")
    cases = [
        (["--config.train.num_stepz=5"], 2, 'Did you mean "num_steps" instead of "num_stepz"?'),
        (["--config.train.num_steps=abc"], 2, "--config.train.num_steps=abc: invalid literal for int()"),
        (["--config", "configs/vqa.py:tinyy"], 2, "Unknown preset 'tinyy'"),
        (["--workdir", str(tmp_path / "file")], 4, "is not a directory"),
    ]
    for extra, code, message in cases:
        cmd = [sys.executable, "-m", "semrel_jax.main", "--config=configs/vqa.py:tiny", f"--workdir={tmp_path / 'w'}", *extra]
        start = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == code, proc.stderr[-2000:]
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr[-2000:]
        assert time.time() - start < 60


@pytest.mark.slow
def test_a_bad_record_in_a_grain_worker_is_one_line(tmp_path, capsys):
    """A truncated image read in a grain worker process reaches the user as the record's one line (exit 3)."""
    from semrel_jax.data import pipeline

    fx.write_image(str(tmp_path / "a.png"), 1, truncate=True)
    turn = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A thing."}]
    (tmp_path / "llava.json").write_text(json.dumps([{"id": "broken", "image": "a.png", "conversations": turn}]))
    source = llava_json.LLaVAInstruct(str(tmp_path / "llava.json"), str(tmp_path))
    import grain

    def main(argv):
        it = pipeline.iterate(grain.MapDataset.source(source), 0, num_workers=1)
        try:
            next(it)
        finally:
            it.close()

    assert cli.call(main, ["prog"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: llava_json: bad record 'broken' [corrupt_image]") and err.count("\n") == 1, err


def test_a_tuple_override_given_twice_is_one_line_not_a_silent_join(tmp_path):
    """ml_collections joins a tuple key's repeated values ((0,) then (1,) parse as (0, 1)); a scalar keeps the last."""
    import types
    import vqa
    parsed = {"config": types.SimpleNamespace(value=vqa.get_config("tiny"))}
    taps, steps = "--config.model.encoders.vit.taps", "--config.train.num_steps"
    argv = ["main", "--config=c.py", f"{taps}=(0,)", f"{steps}=5", f"{taps}", "(1,)", f"{steps}=7", "--config.seed=1"]
    assert cli.joined_overrides(argv, parsed) == [taps]  # given twice, in both forms; the scalar is left alone
    assert cli.joined_overrides(argv[:3] + argv[-2:], parsed) == []
    cmd = [sys.executable, "-m", "semrel_jax.main", "--config=configs/vqa.py:tiny", f"--workdir={tmp_path}",
           f"{taps}=(0,)", f"{taps}=(1,)"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {taps} given more than once"), proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "checkpoints").exists()


def test_flags_are_found_in_both_forms_before_parsing():
    """What aot reads before JAX starts (the simulated device count) and what error messages quote."""
    assert cli.flag_value(["aot", "--config=c.py", "--num_devices", "8"], "num_devices") == "8"
    assert cli.flag_value(["aot", "--num_devices=4", "--num_devices=8"], "num_devices") == "8"  # the last wins
    assert cli.flag_value(["aot", "--num_devices_x=3"], "num_devices") is None
    assert cli._config_flag(["main", "--config", "configs/vqa.py:tinyy"]) == "--config=configs/vqa.py:tinyy"
