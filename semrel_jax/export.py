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

from semrel_jax.data import tokenizer as tokenizer_lib
from semrel_jax.training import checkpoint as checkpoint_lib
from semrel_jax.training import optimizer as optimizer_lib, train, train_step as train_step_lib


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
            raise FileNotFoundError(f"No checkpoint in {checkpointer.directory!r}.")
        c = ml_collections.ConfigDict(checkpointer.saved_config(step))
        tokenizer = train.build_tokenizer(c, workdir)
        graphdef, params, frozen = train.build_split_model(c, len(tokenizer))
        optimizer = optimizer_lib.make_optimizer(c.train)
        abstract_state = jax.eval_shape(lambda p: train_step_lib.init_train_state(p, optimizer, c.seed), params)
        state = checkpointer.restore(step, _abstract(abstract_state, sharding))
    finally:
        checkpointer.close()
    frozen = jax.device_put(frozen, sharding)
    return nnx.merge(graphdef, state.params, frozen), c, tokenizer, step


def export_params(workdir: str, out_dir: str, step: int | None = None) -> str:
    """Writes the params-only export of ``workdir``'s checkpoint (latest by default) to ``out_dir``."""
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(os.path.join(out_dir, "params")):
        raise FileExistsError(f"{out_dir!r} already holds an export; choose another --out.")
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


@dataclasses.dataclass
class Exported:
    model: Any  # VisionLanguageModel
    config: ml_collections.ConfigDict
    tokenizer: Any
    step: int


def load_exported(out_dir: str, sharding: jax.sharding.Sharding | None = None) -> Exported:
    out_dir = os.path.abspath(out_dir)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with open(os.path.join(out_dir, "config.json")) as f:
        c = ml_collections.ConfigDict(json.load(f))
    with open(os.path.join(out_dir, "export.json")) as f:
        step = json.load(f)["step"]
    tokenizer = tokenizer_lib.load(os.path.join(out_dir, "tokenizer"))
    # The structure and dtypes exactly as training built them (frozen params in train.frozen_dtype).
    graphdef, params, frozen = train.build_split_model(c, len(tokenizer), abstract=True)
    graphdef, abstract_state = nnx.split(nnx.merge(graphdef, params, frozen))
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore(os.path.join(out_dir, "params"), _abstract(abstract_state, sharding))
    return Exported(nnx.merge(graphdef, state), c, tokenizer, step)


def load_params(out_dir: str, sharding: jax.sharding.Sharding | None = None):
    """The exported model, ready for ``model(images, has_image, tokens, valid)`` or ``generate``."""
    return load_exported(out_dir, sharding).model


def main(argv):
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"Unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    out = export_params(FLAGS.workdir, FLAGS.out, FLAGS.step if FLAGS.step >= 0 else None)
    print(f"exported to {out}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("workdir", None, "Training run directory (with checkpoints/).")
    flags.DEFINE_string("out", None, "Output directory for the params-only export.")
    flags.DEFINE_integer("step", -1, "Checkpoint step to export (-1: the latest).")
    flags.mark_flags_as_required(["workdir", "out"])
    app.run(main)
