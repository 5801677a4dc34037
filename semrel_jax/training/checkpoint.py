"""Orbax checkpoints of the train state (trainable params, optimizer state, step, RNG) and the config.

Saves are asynchronous (training continues while the write finishes) and atomic: Orbax writes
``<step>.orbax-checkpoint-tmp`` and renames it to ``<step>`` on commit, so a process killed mid-save
leaves only a temporary directory, which is never listed as a step (and is overwritten when that step
is saved again). Frozen parameters are not saved by default: they are rebuilt from the config (random
init from the seed, or the converted weights the config names); ``train.checkpoint_frozen=True`` also
writes them (item ``frozen``), making each checkpoint self-contained.

Data-iterator state: there is none to save. The training dataset is a ``grain.MapDataset`` indexed by
global step (``dataset[s]`` is step ``s``'s batch, see ``data/pipeline.py``), so the iterator state IS
the saved ``step``; resuming at ``s`` iterates ``dataset[s:]`` and sees exactly the batches an
uninterrupted run sees (tested bitwise in ``tests/test_training.py`` and ``tests/test_checkpoint.py``).

Retention: the newest ``keep`` checkpoints, plus every checkpoint whose step is a multiple of
``keep_every`` (0: none), are kept; Orbax deletes the others after each save.

The resume policy lives here too (``restore_latest``, ``force_restart``, the saved-config check).
Fault tolerance on resume (``restore_latest``): an unreadable newest checkpoint (truncated or
missing files) is skipped with a warning and the next older one is tried; the unreadable ones are moved
to ``<checkpoints>.unreadable/`` (never deleted) so the run can save those steps again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as ocm

from semrel_jax import errors


class CheckpointRestoreError(errors.CheckpointError):
    """Checkpoints exist but none of them restores (the run refuses to silently start from scratch)."""


class IncompatibleCheckpointError(errors.CheckpointError):
    """The workdir's checkpoints were written with another model/data config."""


def prepare_workdir(workdir: str) -> str:
    """Creates ``workdir`` (absolute path returned) and checks it can be written, before any work starts.

    Raises PathError when it is a file or not writable, DiskError when its filesystem is read-only or full.
    """
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise errors.PathError(f"--workdir={workdir} is not a directory (a file is there); give a directory path.")
    probe = os.path.join(workdir, f".write-test-{os.getpid()}")
    try:
        os.makedirs(workdir, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        user = errors.from_os_error(e, f"checking that --workdir={workdir} can be written")
        if user is None:
            raise
        raise user from e
    return workdir


@contextlib.contextmanager
def _absl_warnings_off():
    previous = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        logging.set_verbosity(previous)


class Checkpointer:
    def __init__(
        self, directory: str, *, save_every: int = 1, keep: int = 1, keep_every: int = 0, read_only: bool = False
    ):
        self.directory = os.path.abspath(directory)
        if read_only:  # inspection and export: never saves, never deletes
            # save_interval_steps=0: what Orbax sets for a read-only manager anyway, without its warning
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
        else:
            policies = [ocm.LatestN(n=keep)]
            if keep_every:
                policies.append(ocm.EveryNSteps(interval_steps=keep_every))
            options = ocp.CheckpointManagerOptions(
                save_interval_steps=save_every,
                preservation_policy=ocm.AnyPreservationPolicy(policies),
                enable_async_checkpointing=True,
                create=True,
            )
        self.save_every, self.keep_every = save_every, keep_every
        # A read-only manager logs a warning that it is read-only (what was asked): kept off notebooks' output.
        with _absl_warnings_off() if read_only else contextlib.nullcontext():
            self.manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=("state", "config", "frozen", "progress")
            )
        self.frozen = None  # set to the frozen parameters to save them with every checkpoint
        # which directory this is (device, inode): a save into a vanished or replaced one is refused (Orbax
        # would silently recreate it, losing the run's earlier checkpoints)
        self._identity = None if read_only else _identity(self.directory)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def due(self, step: int) -> bool:
        """Whether ``save`` writes ``step`` without ``force``: every ``save_every`` steps and at multiples of ``keep_every``.

        (Orbax also writes the first step saved into an empty directory, so a bad disk shows at step 1.)
        """
        return step % self.save_every == 0 or bool(self.keep_every and step % self.keep_every == 0)

    def save(self, step: int, state, config_json: str, *, force: bool = False, progress: dict | None = None) -> bool:
        """Saves when ``due(step)`` or ``force``; returns whether a save started.

        ``progress``: JSON of what else a resumed run must know (``curriculum.Progress``: when stages ended).

        A failing disk (full, read-only, I/O error, gone) raises one DiskError naming the last committed step.
        """
        force = force or bool(self.keep_every and step % self.keep_every == 0)
        if not force and not self.manager.should_save(step):  # most steps: ~0.05 ms, not ~0.75 building the args
            return False
        items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(json.loads(config_json)))
        if self.frozen is not None:
            items["frozen"] = ocp.args.StandardSave(self.frozen)
        if progress:
            items["progress"] = ocp.args.JsonSave(progress)
        with self._disk_errors(f"saving checkpoints (at step {step}; a save finishes in the background)"):
            if (force or self.due(step)) and _identity(self.directory) != self._identity:
                raise FileNotFoundError(errno.ENOENT, "the checkpoint directory vanished", self.directory)
            return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    @contextlib.contextmanager
    def _disk_errors(self, doing: str):
        """Turns a failing disk (an errno anywhere in the chain: Orbax and tensorstore wrap them) into one
        DiskError (or PathError) naming the checkpoint directory and the last committed step."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - re-raised unless it is the disk's fault
            code = errors.os_error_code(e)
            cls = errors.errno_class(code)
            if cls is None or isinstance(e, errors.UserError):
                raise
            what = os.strerror(code)
            if self._identity is not None and _identity(self.directory) != self._identity:
                cls, what = errors.DiskError, (
                    "no longer exists (its filesystem was unmounted, or it was deleted)"
                    if not os.path.isdir(self.directory) else "was replaced since the run started (deleted and recreated, "
                    "or another filesystem mounted over it)"
                )
            raise cls(f"{self.directory}: {what}, while {doing}. {self.last_committed()}") from e

    def last_committed(self) -> str:
        """A sentence naming the newest complete checkpoint on disk (what a rerun resumes from)."""
        steps = sorted(int(n) for n in _listdir(self.directory) if n.isdigit())
        if not steps:
            return f"No checkpoint was committed in {self.directory}."
        return (f"The last committed checkpoint, step {steps[-1]} ({os.path.join(self.directory, str(steps[-1]))}), "
                "is intact: free space (or fix the filesystem) and rerun to resume from it.")

    def restore_frozen(self, step: int, abstract_frozen=None):
        """The frozen parameters saved with ``step`` (``train.checkpoint_frozen``)."""
        target = None if abstract_frozen is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_frozen)
        return self.manager.restore(step, args=ocp.args.Composite(frozen=ocp.args.StandardRestore(target))).frozen

    def restore(self, step: int, abstract_state):
        """Restores onto the shardings/dtypes of ``abstract_state`` (a tree of ShapeDtypeStructs or arrays)."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        return restored.state

    def restore_raw(self, step: int):
        """The saved state as plain nested dicts of arrays (no target tree needed; for inspection/export)."""
        return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state

    def saved_config(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config

    def saved_progress(self, step: int) -> dict:
        """The ``progress`` saved with ``step``; {} where there was none (no early-ended stage, or an older run)."""
        if not os.path.isdir(os.path.join(self.directory, str(step), "progress")):
            return {}
        return self.manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore())).progress

    def set_aside(self, steps, reason: str = "unreadable") -> list[str]:
        """Moves the given step directories to ``<directory>.<reason>/`` (never deletes); returns the new paths.

        Call on one process only (shared filesystem), then ``reload`` on every process.
        """
        moved = []
        target_root = f"{self.directory}.{reason}"
        os.makedirs(target_root, exist_ok=True)
        for step in steps:
            source = os.path.join(self.directory, str(step))
            target = os.path.join(target_root, str(step))
            if os.path.exists(target):
                target = f"{target}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9}"
            shutil.move(source, target)
            moved.append(target)
        return moved

    def reload(self) -> None:
        """Re-reads the step list from disk (after directories were moved by ``set_aside``)."""
        self.manager.reload()

    def wait(self) -> None:
        with self._disk_errors("finishing a checkpoint save"):
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:  # gone, or its filesystem fails: either way not the directory the run started with
        return None
    return info.st_dev, info.st_ino


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:  # the filesystem is gone: nothing to name
        return []


# ---------------------------------------------------------------------------------------- resume policy

# Keys that change how the data is read, never what is read (a prepared copy holds the raw records).
READ_ONLY_DATA_KEYS = ("num_workers", "prefetch", "prepared_dir")
RUN_OUTPUTS = ("checkpoints", "checkpoints.unreadable", "metrics.jsonl", "tensorboard", "config.json",
               "results.json", "predictions.json")


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _flatten(tree, prefix: str = "") -> dict:
    flat = {}
    for key, value in (tree or {}).items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_keys(saved: dict, current: ml_collections.ConfigDict) -> list[str]:
    """``'key: old -> new'`` for each ``model`` / ``data`` value that differs (data read options excepted)."""
    current_dict = json.loads(current.to_json_best_effort())
    changes = []
    for section in ("model", "data"):
        old, new = _flatten(saved.get(section), f"{section}."), _flatten(current_dict.get(section), f"{section}.")
        for key in sorted(set(old) | set(new)):
            if section == "data" and key.split(".", 1)[1] in READ_ONLY_DATA_KEYS:
                continue
            if old.get(key, "<absent>") != new.get(key, "<absent>"):
                changes.append(f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}")
    return changes


def check_compatible(saved: dict, current: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises ``IncompatibleCheckpointError`` (naming every changed key) unless the model and data sections agree."""
    changes = changed_keys(saved, current)
    if changes:
        raise IncompatibleCheckpointError(
            f"Checkpoints in {workdir!r} were written with a different config.{changes[0].split('.', 1)[0]} "
            f"({'; '.join(changes)}); refusing to "
            "resume from them. Use a new --workdir (or restore the original config)."
        )


def _newest_readable_config(checkpoint_dir: str) -> dict | None:
    if not os.path.isdir(checkpoint_dir):
        return None
    checkpointer = Checkpointer(checkpoint_dir, read_only=True)
    try:
        for step in reversed(checkpointer.all_steps()):
            try:
                return checkpointer.saved_config(step)
            except Exception:  # unreadable: the next older one decides
                continue
        return None
    finally:
        checkpointer.close()


def force_restart(c: ml_collections.ConfigDict, workdir: str, is_main: bool) -> str | None:
    """``train.force_restart``: moves the previous run's outputs to ``<workdir>/replaced-<time>/`` (never deletes).

    Checkpoints written by this very config (``force_restart=True`` included) are kept and resumed, so
    that rerunning a preempted forced run continues it instead of starting over each time. Returns the
    folder the old outputs went to, or None.
    """
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    if not (os.path.isdir(checkpoint_dir) and os.listdir(checkpoint_dir)):
        return None
    if _newest_readable_config(checkpoint_dir) == json.loads(c.to_json_best_effort()):
        return None
    names = list(RUN_OUTPUTS) + ([] if c.data.tokenizer else ["tokenizer"])  # the workdir's cached tokenizer
    target = os.path.join(workdir, "replaced-" + time.strftime("%Y%m%d-%H%M%S"))
    if is_main:
        while os.path.exists(target):
            target += "+"
        os.makedirs(target)
        for name in names:
            if os.path.exists(os.path.join(workdir, name)):
                os.rename(os.path.join(workdir, name), os.path.join(target, name))
    _sync("semrel_jax_force_restart")
    logging.warning("train.force_restart: moved the previous run's checkpoints and logs to %s", target)
    return target


def restore_latest(checkpointer: Checkpointer, state, c, workdir: str, is_main: bool = True):
    """Restores the newest checkpoint that can be read; returns ``(state, step, skipped)``.

    ``skipped`` lists ``(step, error)`` for newer checkpoints that could not be read (truncated or
    missing files); they are moved to ``checkpoints.unreadable/`` so their steps can be saved again.
    With no checkpoints, returns the given state at step 0. Checkpoints from another model/data config
    raise IncompatibleCheckpointError; checkpoints none of which restores raise CheckpointRestoreError.
    """
    skipped = []
    for step in reversed(checkpointer.all_steps()):
        try:
            saved = checkpointer.saved_config(step)
        except Exception as e:  # noqa: BLE001 - any read failure means: try the next older step
            skipped.append((step, e))
            logging.warning("Checkpoint step %d: its config cannot be read (%s: %s); trying an older one.",
                            step, type(e).__name__, _short(e))
            continue
        check_compatible(saved, c, workdir)
        try:
            restored = checkpointer.restore(step, state)
        except Exception as e:  # noqa: BLE001
            skipped.append((step, e))
            logging.warning("Checkpoint step %d cannot be restored (%s: %s); trying an older one.",
                            step, type(e).__name__, _short(e))
            continue
        if skipped:
            if is_main:
                checkpointer.set_aside([s for s, _ in skipped])
            _sync("semrel_jax_set_aside")
            checkpointer.reload()
        return restored, step, skipped
    if skipped:
        details = "; ".join(f"step {s}: {type(e).__name__}: {_short(e)}" for s, e in skipped)
        raise CheckpointRestoreError(
            f"None of the checkpoints in {checkpointer.directory!r} can be restored ({details}). Refusing to "
            "start from scratch over them: fix or move them, use a new --workdir, or set "
            "train.force_restart=True (moves them aside)."
        )
    return state, 0, []
