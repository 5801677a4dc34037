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

Fault tolerance on resume (``train.restore_latest``): an unreadable newest checkpoint (truncated or
missing files) is skipped with a warning and the next older one is tried; the unreadable ones are moved
to ``<checkpoints>.unreadable/`` (never deleted) so the run can save those steps again.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm


class Checkpointer:
    def __init__(
        self, directory: str, *, save_every: int = 1, keep: int = 1, keep_every: int = 0, read_only: bool = False
    ):
        self.directory = os.path.abspath(directory)
        if read_only:  # inspection and export: never saves, never deletes
            options = ocp.CheckpointManagerOptions(read_only=True, create=False)
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
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "config", "frozen")
        )
        self.frozen = None  # set to the frozen parameters to save them with every checkpoint

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def due(self, step: int) -> bool:
        """Whether ``save`` writes ``step`` without ``force``: every ``save_every`` steps and at multiples of ``keep_every``."""
        return step % self.save_every == 0 or bool(self.keep_every and step % self.keep_every == 0)

    def save(self, step: int, state, config_json: str, *, force: bool = False) -> bool:
        """Saves when ``due(step)`` or ``force``; returns whether a save started."""
        force = force or bool(self.keep_every and step % self.keep_every == 0)
        items = dict(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(json.loads(config_json)))
        if self.frozen is not None:
            items["frozen"] = ocp.args.StandardSave(self.frozen)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

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
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
