"""How much a trained llava_json model's answer depends on the image: the same question asked about its own image
and about another evaluation image, the next-token distributions compared.

    python experiments/image_dependence_probe.py WORKDIR [NUM_QUESTIONS]

Prints, per question kind, the mean total-variation distance between the answer distributions (0: the image is
ignored; 1: disjoint answers) and how often the argmax answer changes; then how the visual memory's variance splits
(:func:`memory_variance`). The training run's own config says where its evaluation split is. Results:
experiments/LOG.md, "Relational sets in LLaVA JSON".
"""

from __future__ import annotations

import collections
import sys

import jax
import jax.numpy as jnp
import numpy as np

from semrel_jax import recipe
from semrel_jax.data import pipeline
from semrel_jax.evaluation.predictor import Predictor


def main(workdir: str, num_questions: int = 120) -> None:
    predictor = Predictor.load(workdir)
    model, c = predictor.model(), predictor.config
    evaluation = recipe.build_data(c).eval
    rng = np.random.default_rng(0)
    questions = rng.choice(len(evaluation), min(num_questions, len(evaluation)), replace=False)
    by_kind = collections.defaultdict(list)
    for i in questions:
        example, other = evaluation[int(i)], evaluation[int(rng.integers(len(evaluation)))]
        rows = [predictor.featurizer.prompt(example), predictor.featurizer.prompt({**example, "image": other["image"]})]
        batch = jax.tree.map(jnp.asarray, pipeline.stack(rows))
        logits = model(batch["images"], batch["has_image"], batch["prompt"], batch["prompt_valid"])[:, -1]
        p = np.asarray(jax.nn.softmax(logits, -1))
        by_kind[example["kind"]].append((0.5 * np.abs(p[0] - p[1]).sum(), p[0].argmax() != p[1].argmax()))
    for kind, values in sorted(by_kind.items()):
        tv, changed = np.mean(values, axis=0)
        print(f"{kind:10s} n={len(values):3d} mean TV distance {tv:.4f}  argmax answer changes {changed:.2f}")


def memory_variance(workdir: str, num_images: int = 32) -> dict[str, float]:
    """Fractions of the visual memory values' variance ``[images, slots, d]`` that are shared by every slot
    of every image, per slot (position), and image-specific (as docs/research.md §1 measured at init)."""
    predictor = Predictor.load(workdir)
    model = predictor.model()
    evaluation = recipe.build_data(predictor.config).eval
    step = max(len(evaluation) // num_images, 1)
    rows = [predictor.featurizer.prompt(evaluation[i]) for i in range(0, step * num_images, step)]
    batch = jax.tree.map(jnp.asarray, pipeline.stack(rows))
    values = np.asarray(model.memory(batch["images"], batch["has_image"]).values)
    total = ((values - values.mean((0, 1))) ** 2).mean()
    per_slot = ((values.mean(0) - values.mean((0, 1))) ** 2).mean()
    specific = ((values - values.mean(0)) ** 2).mean()
    shared = (values.mean((0, 1)) ** 2).mean()
    return {"shared (mean vector)^2 / total": shared / (shared + total), "per slot": per_slot / total,
            "image-specific": specific / total, "image-specific std": float(np.sqrt(specific))}


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
    print({k: round(float(v), 4) for k, v in memory_variance(sys.argv[1]).items()})
