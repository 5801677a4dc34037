"""Orbax checkpoints of the train state (trainable params, optimizer state, step, RNG) and the config.

Saves are asynchronous (training continues while the write finishes) and atomic (Orbax writes to a
temporary directory and renames it on commit). Frozen parameters are not saved: they are rebuilt from
the config (random init from the seed, or the converted weights the config names).
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str, *, save_every: int, keep: int):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=save_every, max_to_keep=keep, enable_async_checkpointing=True, create=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "config"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, config_json: str, *, force: bool = False) -> bool:
        return self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(json.loads(config_json))
            ),
            force=force,
        )

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

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
