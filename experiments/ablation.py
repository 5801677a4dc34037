"""LSRM ablation on Sort-of-CLEVR: memvp -> +multilevel -> +SRProj -> +ICA mask (LSRM), and LLaVA; several seeds.

    python experiments/ablation.py --seeds=0,1,2 --num_steps=4000 --eval_examples=2000 --workdir=/tmp/ablation

``--base=objects`` runs the same knobs on the object-token recipe (configs/vqa.py:objects, one token per object,
read as a prefix): there ablation_llava is ``:objects`` itself, the ICA presets read the objects as memory slots
instead, and the two levels are the objects as found in the pixels and after the tower's block.

A preset may carry config overrides after '@', e.g. the release's delayed mask ("shift epoch 14/20": on for the
last quarter of training) as ``ablation_lsrm@model.ica.start=step:3000`` with 4,000 steps.

Each (preset, seed) trains from random init with the base (the demo, caption mixture included, by default) with
one method knob changed per step (semrel_jax/presets.py) and is evaluated on the test split; prints a markdown
table of mean ± std over seeds of relational / non-relational / shape accuracy, the relational kinds' means, and
milliseconds per training step.
"""

from __future__ import annotations

import ast
import json
import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))


def _define_flags() -> None:
    """Called only when run as a script, so that tests can load ``_config`` beside other scripts' flags."""
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
    flags.DEFINE_string("base", "demo", "The configs/vqa.py preset whose method knobs the presets change.")
    flags.DEFINE_integer("num_steps", 4000, "Training steps per run (the demo's 4,000 by default).")
    flags.DEFINE_integer("eval_examples", 2000, "Test questions per run.")
    flags.DEFINE_string("workdir", "/tmp/ablation", "Root of the per-run workdirs.")
    flags.DEFINE_list(
        "presets",
        ["ablation_memvp", "ablation_multilevel", "ablation_srproj", "ablation_lsrm", "ablation_llava"],
        "Model presets of configs/vqa.py, each optionally with '@key=value' overrides.",
    )


def _config(vqa, entry: str, base: str = "demo"):
    """``'ablation_lsrm@model.ica.start=step:3000@...'`` -> that preset on ``base`` with the overrides applied."""
    from semrel_jax import presets as model_presets

    preset, *overrides = entry.split("@")
    c = model_presets.apply(vqa.get_config(base), preset)
    for override in overrides:
        key, equals, text = override.partition("=")
        if not equals:
            raise KeyError(f"{entry!r}: override {override!r} is not key=value")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):  # a plain string such as step:3000
            value = text
        *parents, leaf = key.split(".")
        node = c
        for name in parents:
            node = node.get(name) if hasattr(node, "get") else None
        if node is None or not hasattr(node, "get") or leaf not in node:  # ConfigDict would add a misspelt key
            raise KeyError(f"{entry!r}: the config has no key {key!r}")
        try:
            node[leaf] = value
        except TypeError as error:  # ConfigDict keeps each key's type
            raise KeyError(f"{entry!r}: {key} = {value!r}: {error}") from None
    return c


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    import vqa

    from semrel_jax.data.sort_of_clevr import RELATIONAL_KINDS
    from semrel_jax.training import train

    try:  # every entry checked before the first run trains
        configs = {entry: _config(vqa, entry, FLAGS.base) for entry in FLAGS.presets}
    except (KeyError, ValueError) as error:
        raise app.UsageError(error.args[0]) from None
    rows = []
    for preset in FLAGS.presets:
        runs = []
        for seed in map(int, FLAGS.seeds):
            workdir = os.path.join(FLAGS.workdir, f"{preset.replace('@', '_').replace('=', '_')}_seed{seed}")
            results_path = os.path.join(workdir, "results.json")
            if os.path.exists(results_path):  # finished earlier: reuse
                with open(results_path) as f:
                    results = json.load(f)
            else:
                c = configs[preset]
                c.seed = seed
                c.train.num_steps = FLAGS.num_steps
                c.train.checkpoint_every = FLAGS.num_steps
                c.eval.num_examples = FLAGS.eval_examples
                results = train.train_and_evaluate(c, workdir)
                if "preempted_at_step" in results:  # SIGTERM: the run saved a checkpoint and returned early
                    sys.exit(f"{workdir} was preempted at step {int(results['preempted_at_step'])}; rerun this "
                             "command to resume it (its ms / step then covers only the resumed part).")
            runs.append(results)
        rel = np.array([r["accuracy/relational"] for r in runs])
        non = np.array([r["accuracy/non_relational"] for r in runs])
        shape = np.array([r["accuracy/shape"] for r in runs])  # every relational answer depends on it
        kinds = " / ".join(f"{np.mean([r[f'accuracy/{k}'] for r in runs]):.3f}" for k in RELATIONAL_KINDS)
        sec = np.array([r["train_seconds"] / FLAGS.num_steps for r in runs])
        base = runs[0]
        rows.append(
            f"| {preset} | {rel.mean():.3f} ± {rel.std():.3f} | {non.mean():.3f} ± {non.std():.3f} "
            f"| {shape.mean():.3f} ± {shape.std():.3f} | {kinds} "
            f"| {1000 * sec.mean():.1f} ± {1000 * sec.std():.1f} "
            f"| {base['majority_baseline/relational']:.3f} / {base['majority_baseline/non_relational']:.3f}"
            f" / {base['majority_baseline/shape']:.3f} |"
        )
    print("| preset | relational | non-relational | shape | closest / furthest / count | ms / step "
          "| majority (rel / non-rel / shape) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
