"""NLVR2-style rows from the built-in scenes: a statement, true or false, about a pair of images.

NLVR2 (Suhr et al. 2019) asks whether a sentence holds of two photographs; this is its offline variant over
two Sort-of-CLEVR scenes (left, right). Every scene holds one object of each colour, so the statements are
about shapes and places, e.g.

    "the left image has more circles than the right image"
    "both images contain a red square"
    "the blue object is on the top in the left image but not in the right image"
    "exactly one image contains a green circle"

Each row first draws its label (true with probability 1/2: balanced), then statements about its two scenes
until one has that truth value (the templates make both values common; a row whose draws all miss, which the
test asserts does not happen in practice, raises). Row ``i`` of a split is a pure function of ``(seed, split,
i)``; the two scenes of pair ``i`` are scenes ``2i`` and ``2i + 1`` of ``semvlp_scenes.SceneBatches``'s split.

    pairs = PairBatches(scenes)                     # scenes: a semvlp_scenes.SceneBatches
    batch = pairs.batch(np.arange(8), seed=0)       # see ``collate``
"""

from __future__ import annotations

import numpy as np

from semrel_jax.data import sort_of_clevr
from semrel_jax.data.semvlp_scenes import SceneBatches

TEMPLATES = ("more", "both", "place", "exactly_one")
_MAX_DRAWS = 200


def _count(scene: sort_of_clevr.Scene, shape: str) -> int:
    return sum(s == shape for s in scene.shapes)


def _has(scene: sort_of_clevr.Scene, color: str, shape: str) -> bool:
    return scene.shapes[sort_of_clevr.COLORS.index(color)] == shape


def _on(scene: sort_of_clevr.Scene, color: str, side: str) -> bool:
    x, y = scene.centers[sort_of_clevr.COLORS.index(color)]
    half = scene.image_size / 2
    return {"top": y < half, "bottom": y >= half, "left": x < half, "right": x >= half}[side]


def statement(rng: np.random.Generator, left: sort_of_clevr.Scene, right: sort_of_clevr.Scene) -> tuple[str, bool]:
    """One random statement about the pair and whether it holds."""
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    color = str(rng.choice(sort_of_clevr.COLORS))
    shape = str(rng.choice(sort_of_clevr.SHAPES))
    if template == "more":
        first, second = ("left", "right") if rng.random() < 0.5 else ("right", "left")
        scenes = {"left": left, "right": right}
        truth = _count(scenes[first], shape) > _count(scenes[second], shape)
        return f"the {first} image has more {shape}s than the {second} image", truth
    if template == "both":
        return f"both images contain a {color} {shape}", _has(left, color, shape) and _has(right, color, shape)
    if template == "place":
        side = str(rng.choice(("top", "bottom", "left", "right")))
        return (
            f"the {color} object is on the {side} in the left image but not in the right image",
            _on(left, color, side) and not _on(right, color, side),
        )
    return f"exactly one image contains a {color} {shape}", _has(left, color, shape) != _has(right, color, shape)


def vocabulary() -> list[str]:
    """Every word a statement can use (for the scenes' word-level tokenizer)."""
    words = {"the", "image", "has", "more", "than", "both", "images", "contain", "a", "object", "is", "on", "in",
             "but", "not", "exactly", "one", "contains", "left", "right", "top", "bottom"}
    return sorted(words | set(sort_of_clevr.COLORS) | set(sort_of_clevr.SHAPES) | {f"{s}s" for s in sort_of_clevr.SHAPES})


class PairBatches:
    """Random-access NLVR2-style rows over the split of ``scenes`` (its visual kind and tokenizer)."""

    def __init__(self, scenes: SceneBatches):
        self.scenes = scenes

    def row(self, seed: int, index: int) -> dict:
        rng = np.random.default_rng([seed, self.scenes.split_id, index, 2])
        label = bool(rng.random() < 0.5)
        images = [self.scenes.row(seed, 2 * index + side, kind="caption", matched=True) for side in (0, 1)]
        left, right = (self.scenes.scene(seed, 2 * index + side) for side in (0, 1))
        for _ in range(_MAX_DRAWS):
            text, truth = statement(rng, left, right)
            if truth == label:
                return {"text": text, "label": int(label), "images": images}
        raise RuntimeError(f"no {label} statement found for pair {index} in {_MAX_DRAWS} draws.")

    def collate(self, rows: list[dict]) -> dict[str, np.ndarray]:
        """Rows -> ``tokens, text_valid [B, T]``, ``label [B]`` (1: true), and each visual field of
        ``SceneBatches.collate`` with a pair axis after the batch: e.g. ``regions [B, 2, N, F]``,
        ``visual_valid [B, 2, N]``."""
        flat = self.scenes.collate([dict(image, text=row["text"]) for row in rows for image in row["images"]])
        pair = {k: v.reshape((len(rows), 2) + v.shape[1:]) for k, v in flat.items()
                if k in ("images", "regions", "boxes", "visual_valid")}
        return pair | {
            "tokens": flat["tokens"][::2], "text_valid": flat["text_valid"][::2],
            "label": np.asarray([r["label"] for r in rows], np.int32),
        }

    def batch(self, indices, seed: int) -> dict[str, np.ndarray]:
        return self.collate([self.row(seed, int(i)) for i in indices])
