"""Which object does a wrong nearest / farthest answer name? Error ranks of a run on a generated relational set.

    python experiments/distance_errors.py WORKDIR [WORKDIR ...] [--variant A] [--seed 0]

Reads each run's ``predictions.json`` (the final evaluation on a set written by experiments/relational_sets.py with
``--variant`` and ``--seed``), redraws the evaluation scenes from the seed, and ranks the object each nearest /
farthest answer names among the named object's others by distance (1: the right answer; 2: the runner-up; ...;
'self': the named object itself; 'absent': no object of that colour). Set B answers with a shape, which several
objects can share: there the rank is that of the best-ranked object with the answered shape. It also gives the
median gap (px) between the right object's distance and the runner-up's, for right and for wrong answers: a
relation learnt but read imprecisely fails where the gap is small; one not learnt fails at any gap.
Results: experiments/LOG.md ("Session 31").
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import relational_sets  # noqa: E402


def answer_rank(scene, subject: int, kind: str, prediction: str, by: str):
    """Rank of the answered object among the subject's others (1 = right), 'self' or 'absent'; and the gap, px."""
    distances = np.linalg.norm((scene.centres - scene.centres[subject]).astype(float), axis=-1)
    others = [k for k in np.argsort(-distances if kind == "farthest" else distances) if k != subject]
    gap = abs(distances[others[1]] - distances[others[0]])
    names = scene.colours if by == "colour" else scene.shapes
    if by == "colour" and prediction == scene.colours[subject]:
        return "self", gap
    ranks = [r for r, k in enumerate(others, 1) if names[k] == prediction]
    return (ranks[0] if ranks else "absent"), gap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+")
    parser.add_argument("--variant", default="A", choices=sorted(relational_sets.VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    v = relational_sets.VARIANTS[args.variant]
    scenes = {}
    for workdir in args.workdirs:
        path = os.path.join(workdir, "predictions.json")
        if not os.path.isfile(path):
            raise SystemExit(f"{path} not found: give the workdir of a finished run (its final evaluation writes it).")
        with open(path) as f:
            predictions = json.load(f)
        for kind in ("nearest", "farthest"):
            ranks, gaps = collections.Counter(), {True: [], False: []}
            for row in predictions:
                if row["kind"] != kind:
                    continue
                i = int(row["id"].split("_")[1])
                if i not in scenes:
                    scenes[i] = relational_sets.draw_example(v, "eval", i, args.seed)[1]
                scene = scenes[i]
                named = [c for c in scene.colours if re.search(rf"\b{c}\b", row["question"])]
                if len(named) != 1:
                    raise ValueError(f"{row['id']}: expected one colour of its scene in {row['question']!r}")
                rank, gap = answer_rank(scene, scene.colours.index(named[0]), kind, row["prediction"].strip(),
                                        v.nearest_answer)
                ranks[rank] += 1
                gaps[rank == 1].append(gap)
            median = {ok: (f"{np.median(g):.1f}" if g else "-") for ok, g in gaps.items()}
            print(f"{workdir} {kind}: ranks {dict(sorted(ranks.items(), key=str))}; "
                  f"median gap right {median[True]} px, wrong {median[False]} px")


if __name__ == "__main__":
    main()
