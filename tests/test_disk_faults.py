"""Disk and I/O faults end in one clear error, never a hang, and never cost a committed checkpoint.

A full disk and a read-only filesystem are real tmpfs mounts where the test may mount (root); elsewhere
they are simulated at the same boundary (the error tensorstore raises under Orbax, ``EROFS`` from the OS).
"""

import errno
import os
import shutil
import subprocess
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from semrel_jax import cli, errors
from semrel_jax.data import tokenizer as tokenizer_lib
from semrel_jax.training import checkpoint as checkpoint_lib

CONFIG_JSON = '{"model": {}, "data": {}}'


@pytest.fixture
def small_fs(tmp_path):
    """``mount(size, read_only)`` -> a directory on a fresh tmpfs of that many bytes, or None without permission."""
    mounted = []

    def mount(size: int, read_only: bool = False):
        target = tmp_path / f"fs{len(mounted)}"
        target.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
        if done.returncode != 0:
            return None
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], check=False)


def _state(n: int, seed: int):
    """Random float32 values (incompressible: Orbax's writer compresses)."""
    return {"w": jax.numpy.asarray(np.random.default_rng(seed).standard_normal(n, dtype=np.float32))}


def _within(seconds: float, fn):
    """Runs ``fn`` in a thread; fails the test when it has not returned in time (a hang)."""
    outcome = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds}s: a hang"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def test_disk_full_during_save(tmp_path, small_fs, monkeypatch, capsys):
    root = small_fs(1 << 20)  # 1 MiB: step 1 (4 KB) fits, step 2 (4 MB) does not
    directory = str((root or tmp_path) / "run" / "checkpoints")
    checkpointer = checkpoint_lib.Checkpointer(directory, keep=3)
    first = _state(1000, 0)
    checkpointer.save(1, first, CONFIG_JSON)
    checkpointer.wait()
    if root is None:  # what tensorstore raises, through Orbax, on ENOSPC
        def full(*args, **kwargs):
            raise ValueError(f"RESOURCE_EXHAUSTED: Error writing \"w/0.0\" at local file \"{directory}/2\": "
                             "No space left on device [os_error_code='28']")
        monkeypatch.setattr(checkpointer.manager, "save", full)

    def save_second():
        checkpointer.save(2, _state(1 << 20, 1), CONFIG_JSON)
        checkpointer.wait()

    with pytest.raises(errors.DiskError) as raised:
        _within(120, save_second)
    message = str(raised.value)
    assert "No space left on device" in message and directory in message
    assert f"step 1 ({os.path.join(directory, '1')})" in message  # the last committed checkpoint, named
    assert cli.call(lambda argv: _within(120, save_second), []) == errors.DiskError.exit_code
    assert capsys.readouterr().err.strip().count("\n") == 0  # one line
    if root is not None:  # a real failed save is reported again on close (what a run's `finally` does)
        with pytest.raises(errors.DiskError):
            checkpointer.close()
    else:
        checkpointer.close()

    reader = checkpoint_lib.Checkpointer(directory, read_only=True)
    assert reader.all_steps() == [1]
    restored = reader.restore(1, jax.tree.map(ocp.utils.to_shape_dtype_struct, first))
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(first["w"]))
    reader.close()


def test_read_only_workdir(tmp_path, small_fs, monkeypatch):
    root = small_fs(1 << 16, read_only=True)
    if root is None:
        real_makedirs = os.makedirs

        def read_only(path, *args, **kwargs):
            if str(path).startswith(str(tmp_path / "ro")):
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real_makedirs(path, *args, **kwargs)

        monkeypatch.setattr(os, "makedirs", read_only)
        root = tmp_path / "ro"
    with pytest.raises(errors.DiskError, match=r"run.*Read-only file system.*can be written"):
        checkpoint_lib.prepare_workdir(str(root / "run"))


def test_workdir_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(errors.PathError, match="is not a directory"):
        checkpoint_lib.prepare_workdir(str(tmp_path / "file"))


def test_workdir_vanishing_mid_run(tmp_path):
    workdir = tmp_path / "run"
    checkpointer = checkpoint_lib.Checkpointer(str(workdir / "checkpoints"), keep=3)
    checkpointer.save(1, _state(100, 0), CONFIG_JSON)
    checkpointer.wait()
    shutil.rmtree(workdir)  # as an unmounted filesystem looks from here
    start = time.time()
    with pytest.raises(errors.DiskError, match="no longer exists"):
        _within(60, lambda: checkpointer.save(2, _state(100, 1), CONFIG_JSON))
    assert time.time() - start < 60
    assert not (workdir / "checkpoints" / "2").exists()  # not silently recreated
    checkpointer.close()


def test_corrupted_tokenizer_of_a_resumed_workdir(tmp_path):
    path = str(tmp_path / "run" / "tokenizer")
    words = ["red", "green", "circle", "square"]
    tokenizer_lib.load_or_train(path, words)
    with open(os.path.join(path, "tokenizer.json"), "r+") as f:
        f.truncate(40)  # a half-written file
    with pytest.raises(errors.DataError, match=r"tokenizer.*cannot be loaded.*tokenizer\.json") as raised:
        tokenizer_lib.load_or_train(path, words)  # what resuming the run does
    assert raised.value.exit_code == 3
    shutil.rmtree(path)  # the fix the message gives: the same ids again
    assert tokenizer_lib.load_or_train(path, words).get_vocab() == tokenizer_lib.train_word_level(words).get_vocab()
