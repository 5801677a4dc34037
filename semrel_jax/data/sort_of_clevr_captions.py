"""Sort-of-CLEVR scene descriptions: the offline captioning task (``configs/caption.py``).

The images are exactly the VQA task's (same generator, same seed/split/index); the caption lists the six
objects in colour order with their shape and quadrant, using the VQA task's left/top rule:

    "red square top left green circle bottom right blue circle top right ..."

four words per object, no separators: the shortest text that holds every attribute (it is also mixed into
the VQA demo's training, where every token of the longest row costs compute on every row).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from semrel_jax.data import sort_of_clevr

PROMPT = "describe the image ."


def describe(scene: sort_of_clevr.Scene) -> str:
    parts = []
    for color, (x, y), shape in zip(sort_of_clevr.COLORS, scene.centers.tolist(), scene.shapes):
        vertical = "top" if y < scene.image_size / 2 else "bottom"
        horizontal = "left" if x < scene.image_size / 2 else "right"
        parts.append(f"{color} {shape} {vertical} {horizontal}")
    return " ".join(parts)


class SortOfClevrCaptions:
    """Random-access captioning source: item ``i`` is image ``i`` of the split with its description."""

    def __init__(self, split: str, num_images: int, seed: int = 0, object_size: int = sort_of_clevr.OBJECT_SIZE):
        self._scenes = sort_of_clevr.SortOfClevr(split, num_images, seed, questions_per_image=2, object_size=object_size)
        self.num_images = num_images

    def __len__(self) -> int:
        return self.num_images

    def metadata(self, index: int) -> dict[str, Any]:
        caption = describe(self._scenes.scene(int(index)))
        return {
            "question": PROMPT,
            "answer": caption,
            "references": [caption],
            "index": int(index),
            "image_id": int(index),
            "family": "caption",
            "kind": "caption",
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self._scenes.scene(int(index))
        return {**self.metadata(index), "image": sort_of_clevr.render(scene), "has_image": 1}

    def texts(self) -> Iterator[str]:
        yield PROMPT
        yield from (" ".join(sort_of_clevr.COLORS + sort_of_clevr.SHAPES + ("top", "bottom", "left", "right")),)
