"""Does an object token know its neighbours? Linear probes on an object-token tower, before and after its blocks.

    python experiments/neighbour_probe.py WORKDIR [--step N] [--variant A] [--scenes 1200]

For a run with ``model.encoders.vit.tokens=objects`` (issue #19's set-A runs): draws new scenes of a generated
relational set (experiments/relational_sets.py), runs them through the trained tower, and takes each object's token
``[width]`` at every tower depth up to the run's deepest tap (``hidden_states[0]``: the embedding; ``[k]``: after
block k), matched to the object by its centre. Ridge probes (experiments/memory_content_probe.py's, fitted on three
quarters of the objects, scored on the rest) read from it the object's own colour, and the colour of the object
nearest to it and of the one farthest from it: what a nearest / farthest question asks of the named object. If the
blocks put the neighbours into the token, the question becomes a read of one token, as a shape question is.
Results: experiments/LOG.md ("Session 26").
"""

from __future__ import annotations

import argparse
import os
import sys

import jax.numpy as jnp
import numpy as np

from semrel_jax.data import pipeline
from semrel_jax.evaluation.predictor import Predictor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory_content_probe import classification, relational_sets  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--variant", default="A", choices=sorted(relational_sets.VARIANTS))
    parser.add_argument("--scenes", type=int, default=1200)
    args = parser.parse_args()

    predictor = Predictor.load(args.workdir, args.step)
    encoder = predictor.config.model.encoders.vit
    if encoder.tokens != "objects":
        sys.exit(f"{args.workdir}: model.encoders.vit.tokens={encoder.tokens!r}; this probe reads object tokens.")
    vit = predictor.model().vision.encoders["vit"]
    depths = tuple(range(max(encoder.taps) + 1))
    variant = relational_sets.VARIANTS[args.variant]
    rng = np.random.default_rng(123)
    word = variant.wording["shape"].split()[0]  # a prompt the run's tokenizer covers; the tower never reads it
    question = {"question": word, "conversations": [{"from": "human", "value": word}], "has_image": 1}
    tokens = {d: [] for d in depths}
    own, nearest, farthest = [], [], []
    for _ in range(max(args.scenes // 100, 1)):
        scenes = [relational_sets.draw_scene(variant, rng) for _ in range(100)]
        batch = pipeline.stack(
            [predictor.featurizer.prompt(dict(question, image=np.asarray(relational_sets.render(variant, s, rng))))
             for s in scenes]
        )
        images = jnp.asarray(batch["images"]["vit"])
        hidden = [np.asarray(h) for h in vit(images, depths)]  # each [B, 1 + slots, width]
        _, centres, valid = (np.asarray(a) for a in vit.tokenizer(images))  # centres in image widths, minus 0.5
        for b, scene in enumerate(scenes):
            where = scene.centres / variant.size - 0.5  # [objects, 2]
            gap = ((where[:, None] - centres[b][None]) ** 2).sum(-1) + np.where(valid[b], 0.0, np.inf)[None]
            slot = gap.argmin(1)
            if len(set(slot)) < len(slot) or gap.min(1).max() > 0.05**2:
                continue  # an object not found as its own token (touching objects): not probed
            distance = ((scene.centres[:, None] - scene.centres[None]) ** 2).sum(-1).astype(float)
            np.fill_diagonal(distance, np.nan)
            for k in range(len(slot)):
                for d in depths:
                    tokens[d].append(hidden[d][b, 1 + slot[k]])
                own.append(scene.colours[k])
                nearest.append(scene.colours[int(np.nanargmin(distance[k]))])
                farthest.append(scene.colours[int(np.nanargmax(distance[k]))])
    print(f"{args.workdir} (step {args.step or 'latest'}), {len(own)} objects "
          f"of set {args.variant}; held-out accuracy of a linear read (majority)")
    for k, layer in enumerate(vit.layers[: max(depths)], 1):  # what each block's heads prefer, in bias per unit
        if vit.config.distance_bias:
            weights = np.asarray(layer.distance_bias[...]) * vit.config.distance_bias_scale  # [dx, dy, |d|, |d|², heads]
            print(f"  block {k} distance weights per head, on |d|: {[round(float(w), 2) for w in weights[2]]}, "
                  f"on |d|²: {[round(float(w), 2) for w in weights[3]]} (negative: near first)")
        if vit.config.layer_scale:
            scale = np.abs(np.asarray(layer.layer_scale1[...])).mean()
            print(f"  block {k} attention layer scale, mean |gamma|: {scale:.3f}")
    for d in depths:
        row = [f"{name} {acc:.3f} ({majority:.3f})" for name, labels in
               (("own colour", own), ("nearest's colour", nearest), ("farthest's colour", farthest))
               for acc, majority in [classification(tokens[d], labels)]]
        print(f"  {'embedding' if d == 0 else f'after block {d}':14s} " + "  ".join(row))


if __name__ == "__main__":
    main()
