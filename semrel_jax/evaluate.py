"""Evaluate a checkpoint: generate every answer of the eval split and score it with the dataset's metric.

    python -m semrel_jax.evaluate --checkpoint=/tmp/run                       # a training workdir (latest step)
    python -m semrel_jax.evaluate --checkpoint=/tmp/export --out=/tmp/eval    # a `semrel_jax.export` directory
    python -m semrel_jax.evaluate --checkpoint=/tmp/run --config=configs/vqa.py:demo \\
        --config.data.eval_images=2000 --config.eval.batch_size=500           # other data/eval settings
    python -m semrel_jax.evaluate --checkpoint=/tmp/run --explain=8           # + heatmaps of 8 examples

The model is the checkpoint's (its saved config); ``--config`` only supplies the ``data`` and ``eval``
sections (another split, more examples, another batch size). Writes ``predictions.json`` and
``results.json`` to ``--out`` (default ``<checkpoint>/eval``); ``--explain=N`` also ``explain/index.html``, the
image, question, truth, prediction and ICA heatmaps of the first N examples (``semrel_jax.evaluation.explain``).
"""

from __future__ import annotations

import json
import os
import time

from absl import flags
from ml_collections import config_flags

from semrel_jax import cli, errors

config_flags.DEFINE_config_file("config", None, "Optional config whose data/eval sections are used.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A training workdir or a semrel_jax.export directory.")
_STEP = flags.DEFINE_integer("step", -1, "Checkpoint step of a training workdir (-1: the latest).")
_OUT = flags.DEFINE_string("out", "", "Where predictions.json and results.json go (default <checkpoint>/eval).")
_EXPLAIN = flags.DEFINE_integer("explain", 0, "Heatmaps of the first N examples in <out>/explain/ (index.html).")
flags.mark_flags_as_required(["checkpoint"])


def evaluate_checkpoint(
    checkpoint: str, out_dir: str = "", config=None, step: int | None = None, explain: int = 0
) -> dict:
    """Returns the metrics (also written to ``out_dir/results.json``); ``explain = N``: the heatmaps of the
    first N examples too (``out_dir/explain/``)."""
    import jax
    from flax import nnx

    from semrel_jax import config as config_lib, export, recipe
    from semrel_jax.evaluation import loop as eval_loop

    t0 = time.time()
    if not os.path.isdir(checkpoint):
        raise errors.PathError(
            f"--checkpoint={checkpoint}: {'is not a directory' if os.path.exists(checkpoint) else 'does not exist'}; "
            "give a training workdir or a semrel_jax.export directory."
        )
    if config is not None:
        config_lib.validate_eval(config)  # before restoring the model
    if os.path.exists(os.path.join(checkpoint, "export.json")):
        exported = export.load_exported(checkpoint)
        model, c, tokenizer = exported.model, exported.config, exported.tokenizer
    else:
        model, c, tokenizer, _ = export.restore_model(checkpoint, step)
    if config is not None:
        c.data, c.eval = config.data, config.eval
        config_lib.validate(c)
    out_dir = out_dir or os.path.join(checkpoint, "eval")
    os.makedirs(out_dir, exist_ok=True)
    data = recipe.build_data(c)
    featurizer = recipe.build_featurizer(c, tokenizer)
    graphdef, state = nnx.split(model)
    results = eval_loop.evaluate(c, graphdef, (state,), featurizer, tokenizer, data, out_dir, explain=explain)
    results["wall_seconds"] = time.time() - t0  # restore + generation + scoring
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    return results


def main(argv):
    del argv
    from semrel_jax.evaluation import loop as eval_loop

    results = evaluate_checkpoint(
        _CHECKPOINT.value, _OUT.value, flags.FLAGS.config, _STEP.value if _STEP.value >= 0 else None, _EXPLAIN.value
    )
    print(eval_loop.format_results(results))


if __name__ == "__main__":
    cli.run(main)
