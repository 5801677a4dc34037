"""What the visual memory still holds about each object: linear probes on a trained (or freshly initialised) model.

    python experiments/memory_content_probe.py WORKDIR [--init] [--variant A]

Draws 1,200 new scenes of a generated relational set (experiments/relational_sets.py), runs them through the
model's vision side, and for every object takes the memory value of the slot whose patch holds the object's centre
``[d]``. Ridge-regression probes fitted on three quarters of the objects and scored on the rest: the object's shape
and colour (classification accuracy against the majority class) and its centre's x and y (R² of a linear fit).
The same probes on the raw pixels of that patch are the reference: what a tower that kept everything would give a
linear read. ``--init``: the same architecture with fresh parameters (what the tower knows before training).
Needs a run whose ``model.encoders`` is one ``vit`` with no pooling and no class token in the memory (the
``scratch`` preset's). Results: experiments/LOG.md ("Session 9").
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from semrel_jax.config import model as model_config
from semrel_jax.data import pipeline
from semrel_jax.evaluation.predictor import Predictor
from semrel_jax.method.vlm import VisionLanguageModel

_SETS = pathlib.Path(__file__).resolve().parent / "relational_sets.py"
_spec = importlib.util.spec_from_file_location("relational_sets", _SETS)
relational_sets = sys.modules["relational_sets"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(relational_sets)

RIDGE = 10.0


def _standardised(features) -> np.ndarray:
    f = np.asarray(features, np.float64)
    f = (f - f.mean(0)) / (f.std(0) + 1e-6)
    return np.concatenate([f, np.ones((len(f), 1))], 1)


def _fit(features: np.ndarray, targets: np.ndarray, train: int) -> np.ndarray:
    a = features[:train]
    return np.linalg.solve(a.T @ a + RIDGE * np.eye(a.shape[1]), a.T @ targets[:train])


def classification(features, labels) -> tuple[float, float]:
    """(held-out accuracy, majority share of the held-out labels)."""
    f = _standardised(features)
    classes = sorted(set(labels))
    onehot = np.eye(len(classes))[[classes.index(label) for label in labels]]
    train = int(len(f) * 0.75)
    predicted = (f[train:] @ _fit(f, onehot, train)).argmax(1)
    return float((predicted == onehot[train:].argmax(1)).mean()), float(onehot[train:].mean(0).max())


def regression(features, targets) -> float:
    """Held-out R² of a linear fit."""
    f, t = _standardised(features), np.asarray(targets, np.float64)
    train = int(len(f) * 0.75)
    residual = f[train:] @ _fit(f, t, train) - t[train:]
    return float(1.0 - (residual**2).mean() / t[train:].var())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--init", action="store_true", help="fresh parameters of the same architecture")
    parser.add_argument("--variant", default="A", choices=sorted(relational_sets.VARIANTS))
    parser.add_argument("--scenes", type=int, default=1200)
    args = parser.parse_args()

    predictor = Predictor.load(args.workdir)
    model = predictor.model()
    if args.init:
        model = VisionLanguageModel(model_config.model_config(predictor.config, len(predictor.tokenizer)), rngs=nnx.Rngs(1))
    vit = predictor.config.model.encoders.vit
    grid, patch = vit.image_size // vit.patch_size, vit.patch_size
    variant = relational_sets.VARIANTS[args.variant]
    rng = np.random.default_rng(123)
    question = {"question": "What", "conversations": [{"from": "human", "value": "What"}], "has_image": 1}  # any in-vocabulary prompt
    memory, pixels, shapes, colours, xs, ys = [], [], [], [], [], []
    for _ in range(args.scenes // 100):
        scenes = [relational_sets.draw_scene(variant, rng) for _ in range(100)]
        batch = pipeline.stack(
            [predictor.featurizer.prompt(dict(question, image=np.asarray(relational_sets.render(variant, s, rng))))
             for s in scenes]
        )
        images = jax.tree.map(jnp.asarray, batch["images"])
        values = np.asarray(model.memory(images, jnp.asarray(batch["has_image"]), True, None).values)  # [B, N, d]
        inputs = np.asarray(images["vit"])  # [B, H, W, C], as the tower sees them
        for b, scene in enumerate(scenes):
            for k, (x, y) in enumerate(scene.centres * vit.image_size / variant.size):
                gx, gy = min(int(x // patch), grid - 1), min(int(y // patch), grid - 1)
                memory.append(values[b, gy * grid + gx])
                pixels.append(inputs[b, gy * patch : (gy + 1) * patch, gx * patch : (gx + 1) * patch].reshape(-1))
                shapes.append(scene.shapes[k])
                colours.append(scene.colours[k])
                xs.append(x / vit.image_size)
                ys.append(y / vit.image_size)
    print(f"{args.workdir} ({'fresh parameters' if args.init else 'trained'}), {len(memory)} objects of set {args.variant}")
    for name, features in (("memory value", memory), ("raw patch pixels", pixels)):
        shape, shape_majority = classification(features, shapes)
        colour, colour_majority = classification(features, colours)
        print(f"  {name:16s} shape {shape:.3f} (majority {shape_majority:.3f})  colour {colour:.3f} "
              f"(majority {colour_majority:.3f})  x R² {regression(features, xs):.3f}  y R² {regression(features, ys):.3f}")


if __name__ == "__main__":
    main()
