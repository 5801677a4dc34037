"""Relational VQA sets unlike Sort-of-CLEVR, written in the official LLaVA instruction layout.

Sort-of-CLEVR (``semrel_jax/data/sort_of_clevr.py``) is 75 x 75 on black, six objects (one per colour),
squares and circles. The variants here change everything a from-scratch recipe could overfit to:

=========  =======  ========================  =======  ========================================  =========
variant    size     background                objects  shapes                                    wording
=========  =======  ========================  =======  ========================================  =========
A          96 x 96  white                     5        triangle, square, circle, cross           set A
B          128x128  grey noise texture        7        triangle, square, circle, cross, diamond  set B
=========  =======  ========================  =======  ========================================  =========

Every object has a colour of its own (the question names it by colour); objects never overlap. One
record per question, ``kind`` naming the question kind; every image gets one question of each kind:

* ``shape``     attribute: the shape of the X object;
* ``left_of``   relative position: is X left of Y (yes/no; centres at least ``MARGIN`` px apart in x);
* ``above``     relative position: is X above Y (yes/no; same margin in y);
* ``nearest``   the object nearest to X (A: its colour; B: its shape); unique by ``MARGIN`` px;
* ``farthest``  the object farthest from X (as ``nearest``);
* ``count``     how many objects have a given shape (0 .. objects).

Output (``--out DIR``): ``DIR/images/<split>_<i>.png``, ``DIR/train.json``, ``DIR/eval.json``, each a list
of ``{"id", "image", "kind", "conversations": [{"from": "human", "value": "<image>\\n<question>"},
{"from": "gpt", "value": <answer>}]}``. Read back with::

    python -m semrel_jax.main --config=configs/vqa.py:objects --config.data.name=llava_json \\
        --config.data.train_file=DIR/train.json --config.data.eval_file=DIR/eval.json --config.data.image_root=DIR

Usage: ``python experiments/relational_sets.py --out DIR --variant A --train 2000 --eval 200 --seed 0``
(``--train`` / ``--eval``: images; each gives ``len(KINDS)`` records). Deterministic in the seed: image
``i`` of a split is drawn from ``numpy.random.default_rng([seed, split, i])``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import numpy as np
from PIL import Image, ImageDraw

KINDS = ("shape", "left_of", "above", "nearest", "farthest", "count")
MARGIN = 4  # px: position and distance comparisons closer than this are redrawn (no ambiguous answer)
PALETTE = {  # saturated, never grey, so no background pixel (grey or white) shares an object's colour
    "red": (220, 20, 20), "green": (20, 170, 40), "blue": (30, 60, 230), "orange": (250, 140, 0),
    "purple": (140, 40, 190), "cyan": (0, 190, 210), "brown": (130, 70, 20), "pink": (240, 90, 190),
}
SPLITS = {"train": 0, "eval": 1}


@dataclasses.dataclass(frozen=True)
class Variant:
    """How one set's scenes look and how its questions are worded (``{x}``, ``{y}``: colours; ``{shape}``)."""

    size: int
    background: str  # 'white' | 'grey_noise'
    num_objects: int
    radius: int  # half the side of an object's bounding box, px
    shapes: tuple[str, ...]
    nearest_answer: str  # 'colour' | 'shape': what the nearest / farthest questions ask for
    wording: dict[str, str]


VARIANTS = {
    "A": Variant(
        size=96, background="white", num_objects=5, radius=7, shapes=("triangle", "square", "circle", "cross"),
        nearest_answer="colour",
        wording={
            "shape": "What shape is the {x} object?",
            "left_of": "Is the {x} object to the left of the {y} object?",
            "above": "Is the {x} object above the {y} object?",
            "nearest": "What color is the object nearest to the {x} object?",
            "farthest": "What color is the object farthest from the {x} object?",
            "count": "How many {shape}s are there?",
        }),
    "B": Variant(
        size=128, background="grey_noise", num_objects=7, radius=8,
        shapes=("triangle", "square", "circle", "cross", "diamond"), nearest_answer="shape",
        wording={
            "shape": "Which form does the {x} item have?",
            "left_of": "Does the {x} item lie further left than the {y} item?",
            "above": "Is the {x} item placed higher than the {y} item?",
            "nearest": "Name the shape of the item closest to the {x} item.",
            "farthest": "Name the shape of the item most distant from the {x} item.",
            "count": "Count the {shape}s in the picture.",
        }),
}


@dataclasses.dataclass(frozen=True)
class Scene:
    """Objects by colour: ``centres[k]`` is ``(x, y)`` (x the column) of ``colours[k]``, shape ``shapes[k]``."""

    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    centres: np.ndarray  # int [num_objects, 2]


def draw_scene(v: Variant, rng: np.random.Generator) -> Scene:
    """Non-overlapping objects (bounding boxes >= 2 px apart) fully inside the image."""
    colours = tuple(rng.choice(list(PALETTE), v.num_objects, replace=False))
    shapes = tuple(rng.choice(v.shapes, v.num_objects))
    while True:
        centres = rng.integers(v.radius + 1, v.size - v.radius - 1, size=(v.num_objects, 2))
        gaps = np.abs(centres[:, None] - centres[None]).max(-1) + np.eye(v.num_objects, dtype=int) * v.size
        if gaps.min() >= 2 * v.radius + 2:
            return Scene(colours, shapes, centres)


def render(v: Variant, scene: Scene, rng: np.random.Generator) -> Image.Image:
    """uint8 RGB; objects drawn without anti-aliasing, so each object's pixels are exactly its colour."""
    if v.background == "white":
        image = Image.new("RGB", (v.size, v.size), (255, 255, 255))
    else:  # a grey texture: coarse blotches plus pixel noise, always r = g = b
        coarse = rng.integers(110, 190, size=(v.size // 16, v.size // 16), dtype=np.uint8)
        grey = np.asarray(Image.fromarray(coarse).resize((v.size, v.size), Image.BILINEAR), np.int16)
        grey = np.clip(grey + rng.integers(-12, 13, size=grey.shape), 0, 255).astype(np.uint8)
        image = Image.fromarray(np.repeat(grey[..., None], 3, axis=-1))
    pen = ImageDraw.Draw(image)
    r = v.radius
    for colour, shape, (x, y) in zip(scene.colours, scene.shapes, scene.centres.tolist()):
        fill = PALETTE[colour]
        if shape == "square":
            pen.rectangle((x - r, y - r, x + r, y + r), fill=fill)
        elif shape == "circle":
            pen.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif shape == "triangle":
            pen.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
        elif shape == "diamond":
            pen.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
        elif shape == "cross":
            arm = max(r // 3, 1)
            pen.rectangle((x - r, y - arm, x + r, y + arm), fill=fill)
            pen.rectangle((x - arm, y - r, x + arm, y + r), fill=fill)
        else:
            raise ValueError(f"unknown shape {shape!r}")
    return image


def _pair(scene: Scene, axis: int, rng: np.random.Generator) -> tuple[int, int] | None:
    """Two objects whose centres differ by >= MARGIN along ``axis`` (0: x, 1: y); None if no pair does."""
    n = len(scene.colours)
    pairs = [(a, b) for a in range(n) for b in range(n)
             if a != b and abs(int(scene.centres[a, axis]) - int(scene.centres[b, axis])) >= MARGIN]
    return pairs[rng.integers(len(pairs))] if pairs else None


def _extreme(scene: Scene, subject: int, farthest: bool) -> int | None:
    """The object nearest to (farthest from) ``subject``; None when the runner-up is within MARGIN px."""
    distances = np.linalg.norm((scene.centres - scene.centres[subject]).astype(float), axis=-1)
    distances[subject] = np.nan
    order = [k for k in np.argsort(-distances if farthest else distances) if k != subject]
    if abs(distances[order[0]] - distances[order[1]]) < MARGIN:
        return None
    return int(order[0])


def questions(v: Variant, scene: Scene, rng: np.random.Generator) -> list[tuple[str, str, str]] | None:
    """``(kind, question, answer)`` for every kind, or None when the scene has no unambiguous one of some kind."""
    n = len(scene.colours)
    subject = int(rng.integers(n))
    x = scene.colours[subject]
    out = [("shape", v.wording["shape"].format(x=x), scene.shapes[subject])]
    for kind, axis in (("left_of", 0), ("above", 1)):
        pair = _pair(scene, axis, rng)
        if pair is None:
            return None
        a, b = pair
        answer = "yes" if scene.centres[a, axis] < scene.centres[b, axis] else "no"
        out.append((kind, v.wording[kind].format(x=scene.colours[a], y=scene.colours[b]), answer))
    for kind in ("nearest", "farthest"):
        other = _extreme(scene, subject, kind == "farthest")
        if other is None:
            return None
        answer = scene.colours[other] if v.nearest_answer == "colour" else scene.shapes[other]
        out.append((kind, v.wording[kind].format(x=x), answer))
    shape = v.shapes[int(rng.integers(len(v.shapes)))]
    out.append(("count", v.wording["count"].format(shape=shape), str(scene.shapes.count(shape))))
    return out


def draw_example(v: Variant, split: str, i: int, seed: int):
    """Image ``i`` of ``split``: ``(rng, scene, questions)``, the rng left where rendering goes on from."""
    rng = np.random.default_rng([seed, SPLITS[split], i])
    while True:  # redraw the scene until every kind has an unambiguous question
        scene = draw_scene(v, rng)
        asked = questions(v, scene, rng)
        if asked is not None:
            return rng, scene, asked


def write_split(out: str, v: Variant, split: str, num_images: int, seed: int) -> list[dict]:
    """Renders ``num_images`` scenes into ``out/images`` and returns their LLaVA records (not yet written)."""
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    records = []
    for i in range(num_images):
        rng, scene, asked = draw_example(v, split, i, seed)
        image = f"images/{split}_{i:06d}.png"
        render(v, scene, rng).save(os.path.join(out, image))
        for kind, question, answer in asked:
            records.append({"id": f"{split}_{i:06d}_{kind}", "image": image, "kind": kind, "conversations": [
                {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]})
    return records


def write_set(out: str, variant: str, num_train: int, num_eval: int, seed: int) -> dict[str, str]:
    """The whole set under ``out``; returns the ``data.*`` config values that read it."""
    v = VARIANTS[variant]
    paths = {}
    for split, count in (("train", num_train), ("eval", num_eval)):
        records = write_split(out, v, split, count, seed)
        paths[split] = os.path.join(out, f"{split}.json")
        with open(paths[split], "w") as f:
            json.dump(records, f, indent=0)
    return {"train_file": paths["train"], "eval_file": paths["eval"], "image_root": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory (images/, train.json, eval.json)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="A")
    parser.add_argument("--train", type=int, default=2000, help="training images (x %d questions each)" % len(KINDS))
    parser.add_argument("--eval", type=int, default=200, help="evaluation images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = write_set(args.out, args.variant, args.train, args.eval, args.seed)
    print(" ".join(f"--config.data.{k}={v}" for k, v in data.items()))


if __name__ == "__main__":
    main()
