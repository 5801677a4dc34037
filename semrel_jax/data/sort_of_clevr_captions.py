"""Sort-of-CLEVR scene descriptions: the offline captioning task (``configs/caption.py``).

The images are exactly the VQA task's (same generator, same seed/split/index). Two kinds of description:

``objects`` lists the six objects in colour order with their shape and quadrant, using the VQA task's
left/top rule:

    "red square top left green circle bottom right blue circle top right ..."

four words per object, no separators: the shortest text that holds every attribute (it is also mixed into
the VQA demo's training, where every token of the longest row costs compute on every row).

``relations`` lists, per object in colour order, the shape of its closest and of its furthest other object
and how many other objects share its shape:

    "red circle square 2 green square square 3 ..."

i.e. the answers to all 18 relational questions of the image in one row, ruled exactly as
``sort_of_clevr.answer`` rules them. Mixed into VQA training it supervises every object's relations per row,
where a question supervises one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections

from semrel_jax import errors
from semrel_jax.data import sort_of_clevr
from semrel_jax.data.dataset import Dataset
from semrel_jax.evaluation import captioning

KINDS = ("objects", "relations")
PROMPTS = {"objects": "describe the image .", "relations": "describe the relations ."}
PROMPT = PROMPTS["objects"]


def describe(scene: sort_of_clevr.Scene) -> str:
    parts = []
    for color, (x, y), shape in zip(sort_of_clevr.COLORS, scene.centers.tolist(), scene.shapes):
        vertical = "top" if y < scene.image_size / 2 else "bottom"
        horizontal = "left" if x < scene.image_size / 2 else "right"
        parts.append(f"{color} {shape} {vertical} {horizontal}")
    return " ".join(parts)


def describe_relations(scene: sort_of_clevr.Scene) -> str:
    return " ".join(
        " ".join([color] + [sort_of_clevr.answer(scene, kind, color) for kind in sort_of_clevr.RELATIONAL_KINDS])
        for color in sort_of_clevr.COLORS
    )


_DESCRIBE = {"objects": describe, "relations": describe_relations}


class SortOfClevrCaptions:
    """Random-access captioning source.

    With ``kinds = (k_0, ..., k_{m-1})``, item ``i`` is image ``i // m`` of the split described as
    ``k_{i % m}`` (default: only ``objects``, item ``i`` = image ``i``).
    """

    def __init__(
        self,
        split: str,
        num_images: int,
        seed: int = 0,
        object_size: int = sort_of_clevr.OBJECT_SIZE,
        kinds: Sequence[str] = ("objects",),
    ):
        kinds = tuple(kinds)
        if not kinds or any(k not in KINDS for k in kinds) or len(set(kinds)) != len(kinds):
            raise ValueError(f"kinds must be distinct names from {KINDS}, got {kinds!r}")
        self._scenes = sort_of_clevr.SortOfClevr(split, num_images, seed, questions_per_image=2, object_size=object_size)
        self.num_images = num_images
        self.kinds = kinds

    def __len__(self) -> int:
        return self.num_images * len(self.kinds)

    def _locate(self, index: int) -> tuple[int, str]:
        image, k = divmod(int(index), len(self.kinds))
        return image, self.kinds[k]

    def metadata(self, index: int) -> dict[str, Any]:
        image, kind = self._locate(index)
        caption = _DESCRIBE[kind](self._scenes.scene(image))
        return {
            "question": PROMPTS[kind],
            "answer": caption,
            "references": [caption],
            "index": int(index),
            "image_id": image,
            "family": "caption",
            "kind": "caption" if kind == "objects" else f"caption_{kind}",
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene = self._scenes.scene(self._locate(index)[0])
        return {**self.metadata(index), "image": sort_of_clevr.render(scene), "has_image": 1}

    def image_groups(self, size: int) -> None:
        return None

    def scoring_data(self) -> dict[str, Any]:
        return {}

    def texts(self) -> Iterator[str]:
        for kind in self.kinds:
            yield PROMPTS[kind]
        words = sort_of_clevr.COLORS + sort_of_clevr.SHAPES + ("top", "bottom", "left", "right")
        if "relations" in self.kinds:
            words += tuple(str(n) for n in range(sort_of_clevr.NUM_OBJECTS))
        yield " ".join(words)


# ---------------------------------------------------------------------------------------------- the dataset


def _validate(c: ml_collections.ConfigDict) -> None:
    sort_of_clevr.validate_images(c)
    kinds = c.data.caption_kinds
    errors.check(
        isinstance(kinds, (tuple, list)) and len(kinds) > 0 and len(set(kinds)) == len(kinds)
        and all(k in KINDS for k in kinds),
        "data.caption_kinds", f"expected distinct names from {KINDS}, got {kinds!r}",
    )


def _build(c: ml_collections.ConfigDict) -> tuple[SortOfClevrCaptions, SortOfClevrCaptions]:
    d = c.data
    train, evaluation = DATASET.split_names(d)
    kw = dict(seed=c.seed, object_size=d.object_size, kinds=tuple(d.caption_kinds))
    return SortOfClevrCaptions(train, d.train_images, **kw), SortOfClevrCaptions(evaluation, d.eval_images, **kw)


def _score(rows: Sequence[dict], train_source, eval_source) -> dict[str, float]:
    # One item per (image, description kind), so the item index is the key (keying by image would let one
    # kind's prediction overwrite the other's).
    del train_source, eval_source
    return captioning.caption_scores({r["index"]: r["prediction"] for r in rows}, {r["index"]: r["references"] for r in rows})


DATASET = Dataset(
    name="sort_of_clevr_captions",
    defaults=dict(train_images=10_000, eval_images=500, object_size=sort_of_clevr.OBJECT_SIZE, caption_kinds=("objects",)),
    build=_build,
    record_settings=lambda c: {**sort_of_clevr.record_settings(c), "caption_kinds": list(c.data.caption_kinds)},
    score=_score,
    validate=_validate,
)
