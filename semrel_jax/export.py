"""Params-only export of a training run, for inference: ``python -m semrel_jax.export --workdir=RUN --out=DIR``.

Training checkpoints hold the trainable parameters, the optimizer state, the step and the RNG, and
rely on the config to rebuild the frozen parameters. An export holds what a model needs to run and
nothing else, self-contained:

  DIR/params/      Orbax checkpoint of the full model state (trainable merged with the rebuilt frozen
                   parameters, in the dtypes the trained model used them in: train.frozen_dtype)
  DIR/config.json  the run's config (as saved in the checkpoint)
  DIR/tokenizer/   the tokenizer
  DIR/export.json  where it came from (workdir, step)

``load_params(DIR)`` returns a ready ``VisionLanguageModel``; ``load_exported(DIR)`` also the config and
tokenizer.

``--format=adapters`` writes only what training changed, for sharing next to the base weights:

  DIR/adapters.safetensors   the trainable parameters (SRProjs, memory slots, vision adapters, LoRA, ...),
                             named by their '/'-joined paths
  DIR/adapter_config.json    the run's config and the tensor names; base weights are the config's hf_dir's
  DIR/llm_merged/            when the LLM came from a HF directory and trained weights (LoRA or full) changed
                             it: the merged LLM as a HF directory that ``transformers`` loads

``apply_adapters(model, DIR)`` loads the adapters into a model built from the same config.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from semrel_jax import config as config_lib, errors, files, recipe
from semrel_jax.data import tokenizer as tokenizer_lib
from semrel_jax.training import checkpoint as checkpoint_lib


def _abstract(tree, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def restore_model(workdir: str, step: int | None = None, sharding: jax.sharding.Sharding | None = None):
    """The model of a training run's checkpoint (latest by default): ``(model, config, tokenizer, step)``."""
    workdir = os.path.abspath(workdir)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise errors.CheckpointError(
                f"{checkpointer.directory}: no checkpoint; give the --workdir of a training run that saved one."
            )
        c = config_lib.from_saved(checkpointer.saved_config(step), f"{checkpointer.directory}/{step}")
        tokenizer = recipe.load_tokenizer(c, workdir)
        model = recipe.build_model(c, len(tokenizer))
        abstract_state = recipe.build_train_state(c, model, recipe.single_device_mesh(), abstract=True).state
        state = checkpointer.restore(step, _abstract(abstract_state, sharding))
    finally:
        checkpointer.close()
    frozen = jax.device_put(model.frozen, sharding)
    return nnx.merge(model.graphdef, state.params, frozen), c, tokenizer, step


def export_params(workdir: str, out_dir: str, step: int | None = None) -> str:
    """Writes the params-only export of ``workdir``'s checkpoint (latest by default) to ``out_dir``."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(os.path.join(out_dir, "params")):
        raise errors.PathError(f"--out={out_dir} already holds an export; choose another --out.")
    model, c, tokenizer, step = restore_model(workdir, step)
    _, state = nnx.split(model)
    os.makedirs(out_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.join(out_dir, "params"), state)
    if jax.process_index() == 0:
        tokenizer.save_pretrained(os.path.join(out_dir, "tokenizer"))
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            f.write(c.to_json_best_effort(indent=2))
        with open(os.path.join(out_dir, "export.json"), "w") as f:
            json.dump({"workdir": os.path.abspath(workdir), "step": int(step)}, f, indent=2)
    return out_dir


def _trainable_tensors(model, c) -> dict[str, Any]:
    import numpy as np

    from semrel_jax.training import partition

    _, trainable, _ = partition.split_trainable(model, c.train.trainable, c.train.frozen)
    return {
        "/".join(str(k) for k in path): np.asarray(jax.device_get(v.get_value()))
        for path, v in nnx.to_flat_state(trainable)
    }


def export_adapters(workdir: str, out_dir: str, step: int | None = None) -> str:
    """Writes the trained parameters as safetensors + config (and the merged LLM when one is converted)."""
    from semrel_jax.convert import hf
    from semrel_jax.convert.safetensors_io import save_file

    out_dir = os.path.abspath(out_dir)
    if os.path.exists(os.path.join(out_dir, "adapters.safetensors")):
        raise errors.PathError(f"--out={out_dir} already holds an adapter export; choose another --out.")
    model, c, tokenizer, step = restore_model(workdir, step)
    tensors = _trainable_tensors(model, c)
    if jax.process_index() != 0:
        return out_dir
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "adapters.safetensors"), {"format": "semrel_jax", "step": str(step)})
    llm_changed = any(name.startswith("llm/") for name in tensors)
    if c.model.llm.hf_dir and llm_changed:
        hf.export_llm(model.llm, os.path.join(out_dir, "llm_merged"), like=c.model.llm.hf_dir)
    tokenizer.save_pretrained(os.path.join(out_dir, "tokenizer"))
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        config = json.loads(c.to_json_best_effort())
        json.dump({"config": config, "tensors": sorted(tensors), "step": int(step)}, f, indent=2)
    return out_dir


def apply_adapters(model, adapter_dir: str):
    """Loads ``adapters.safetensors`` into ``model`` (built from the same config); names must match exactly."""
    import jax.numpy as jnp

    from semrel_jax.convert.safetensors_io import CheckpointError, SafetensorsCheckpoint

    ckpt = SafetensorsCheckpoint(adapter_dir)
    flat = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    by_name = {"/".join(str(k) for k in path): (path, v) for path, v in flat}
    unknown = sorted(set(ckpt) - set(by_name))
    if unknown:
        raise CheckpointError(f"{adapter_dir}: adapter tensors the model does not have: {unknown[:10]}")
    updates = []
    for name in ckpt:
        path, variable = by_name[name]
        value = ckpt[name]
        if tuple(value.shape) != tuple(variable.get_value().shape):
            raise CheckpointError(f"{adapter_dir}: {name} has shape {value.shape}, the model {variable.get_value().shape}")
        updates.append((path, variable.replace(jnp.asarray(value, variable.get_value().dtype))))
    nnx.update(model, nnx.from_flat_state(updates))
    return model


@dataclasses.dataclass
class Exported:
    model: Any  # VisionLanguageModel
    config: ml_collections.ConfigDict
    tokenizer: Any
    step: int


def load_exported(out_dir: str, sharding: jax.sharding.Sharding | None = None) -> Exported:
    out_dir = os.path.abspath(out_dir)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    config_path = os.path.join(out_dir, "config.json")
    c = config_lib.from_saved(files.read_json(config_path, "export's config.json", errors.CheckpointError), config_path)
    step = files.read_json(os.path.join(out_dir, "export.json"), "export.json", errors.CheckpointError)["step"]
    tokenizer = tokenizer_lib.load(os.path.join(out_dir, "tokenizer"))
    # The structure and dtypes exactly as training built them (frozen params in train.frozen_dtype).
    model = recipe.build_model(c, len(tokenizer), abstract=True)
    graphdef, abstract_state = nnx.split(nnx.merge(model.graphdef, model.params, model.frozen))
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(os.path.join(out_dir, "params"), _abstract(abstract_state, sharding))
    return Exported(nnx.merge(graphdef, state), c, tokenizer, step)


def load_params(out_dir: str, sharding: jax.sharding.Sharding | None = None):
    """The exported model, ready for ``model(images, has_image, tokens, valid)`` or ``generate``."""
    return load_exported(out_dir, sharding).model


def main(argv):
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    export = export_adapters if FLAGS.format == "adapters" else export_params
    out = export(FLAGS.workdir, FLAGS.out, FLAGS.step if FLAGS.step >= 0 else None)
    print(f"exported to {out}")


if __name__ == "__main__":
    from absl import flags

    from semrel_jax import cli

    flags.DEFINE_string("workdir", None, "Training run directory (with checkpoints/).")
    flags.DEFINE_string("out", None, "Output directory for the params-only export.")
    flags.DEFINE_integer("step", -1, "Checkpoint step to export (-1: the latest).")
    flags.DEFINE_enum("format", "params", ["params", "adapters"], "Full parameters, or only the trained ones.")
    flags.mark_flags_as_required(["workdir", "out"])
    cli.run(main)
