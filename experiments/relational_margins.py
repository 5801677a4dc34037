"""Sort-of-CLEVR "closest" / "furthest" accuracy by distance margin: is the model limited by resolution?

    python experiments/relational_margins.py --workdir=/tmp/long                 # a training run's predictions
    python experiments/relational_margins.py --workdir=/tmp/long --predictions=/tmp/long/eval/predictions.json

The margin of a question is how much closer the answer object is than the runner-up (for "furthest": how much
further), in pixels, from the scene's object centres. A model that compares distances but lacks positional
resolution fails on small margins and succeeds on large ones; a flat profile means it does not compare distances
at all. One cheaper cue is counted beside it: "the shape most of the other five objects have" (what a model that
counts shapes but compares no distances would answer); printed are its accuracy and how often the model's answer
agrees with it. Prints accuracy per margin quartile. The scenes are regenerated from the run's saved config
(``<workdir>/config.json``: seed, split, image count).
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (its config.json).")
_PREDICTIONS = flags.DEFINE_string("predictions", "", "predictions.json ('' = <workdir>/predictions.json).")
flags.mark_flags_as_required(["workdir"])


def margins(scene, color_index: int, kind: str) -> float:
    """Distance gap (px) between the answer object and the runner-up, for kind 'closest' or 'furthest'."""
    d = np.sqrt(((scene.centers - scene.centers[color_index]) ** 2).sum(-1).astype(np.float64))
    d = np.sort(np.delete(d, color_index))
    return float(d[1] - d[0]) if kind == "closest" else float(d[-1] - d[-2])


def main(argv):
    del argv
    import ml_collections

    from semrel_jax.data import registry, sort_of_clevr

    with open(os.path.join(_WORKDIR.value, "config.json")) as f:
        c = ml_collections.ConfigDict(json.load(f))
    if c.data.name != "sort_of_clevr":
        raise ValueError(f"{_WORKDIR.value} is a {c.data.name!r} run, not sort_of_clevr.")
    _, eval_source = registry.build_sources(c)
    with open(_PREDICTIONS.value or os.path.join(_WORKDIR.value, "predictions.json")) as f:
        predictions = json.load(f)
    q_per_image = eval_source.questions_per_image
    print("| kind | margin (px) | questions | accuracy |")
    print("| --- | --- | --- | --- |")
    for kind in ("closest", "furthest"):
        rows, cue_right, agrees = [], [], []
        for p in predictions:
            if p["kind"] != kind:
                continue
            image, k = divmod(p["index"], q_per_image)
            question = eval_source.questions(image)[k]
            if question.text != p["question"]:
                raise ValueError(f"prediction {p['index']} does not match the regenerated question: wrong config?")
            color = sort_of_clevr.COLORS.index(question.color)
            scene = eval_source.scene(image)
            rows.append((margins(scene, color, kind), p["prediction"] == p["answer"]))
            others = [shape for j, shape in enumerate(scene.shapes) if j != color]
            most = max(sorted(set(others)), key=others.count)  # 5 objects, 2 shapes: never a tie
            cue_right.append(most == p["answer"])
            agrees.append(most == p["prediction"])
        gap, correct = np.array(rows).T
        edges = np.quantile(gap, [0, 0.25, 0.5, 0.75, 1])
        for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
            sel = (gap >= lo) & ((gap < hi) if i < 3 else (gap <= hi))
            print(f"| {kind} | {lo:.1f}-{hi:.1f} | {sel.sum()} | {correct[sel].mean():.3f} |")
        print(f"| {kind} | all | {len(gap)} | {correct.mean():.3f} |")
        print(f"| {kind} | cue: most common other shape | {len(gap)} | {np.mean(cue_right):.3f} "
              f"(the model agrees with it on {np.mean(agrees):.3f}) |")


if __name__ == "__main__":
    app.run(main)
