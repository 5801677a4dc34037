"""Visual Genome (Krishna et al., IJCV 2017): region descriptions and question-answer pairs, from the release's JSON.

Files as released (v1.2 / v1.4; ``root`` holds the JSON, ``image_root`` the two image folders, default ``root``)::

    region_descriptions.json   [{"id": 1, "regions": [{"region_id", "image_id", "phrase", "x", "y", "width",
                                                        "height"}, ...]}, ...]
    question_answers.json      [{"id": 1, "qas": [{"qa_id", "image_id", "question", "answer",
                                                   "q_objects", "a_objects"}, ...]}, ...]
    <image_root>/VG_100K/<image_id>.jpg, <image_root>/VG_100K_2/<image_id>.jpg    (images.zip, images2.zip)

An image's file is looked up in ``VG_100K`` then ``VG_100K_2`` (the release splits them over two zips
without saying which in these files); in neither: a missing file (named by its ``VG_100K`` path).

Readers (one example per region / per question, in file order; a *record* is one region or one
question, so one bad region leaves its image's others in; an image entry that is not an object with an
integer ``id`` (``image_id`` accepted) is one malformed record):

  :class:`VGRegions`  ``answer`` the phrase, ``box`` ``[x0, y0, x1, y1]`` in pixels, ``question`` the
                      ``prompt`` with the box, ``region_id``, ``image_id``, ``index``.
  :class:`VGQA`       ``question``, ``answer`` (as written: VG answers end in '.'), ``qa_id``,
                      ``image_id``, ``index``, ``family`` / ``kind`` (the question's W-word: what, where,
                      how, who, when, why; 'other').

Splits: Visual Genome releases none. Ours, by image id (deterministic, documented as our choice):
``val`` = images whose id is a multiple of ``VAL_EVERY``, ``train`` = the others, ``all`` = every image.
Registered as ``data.name=visual_genome`` (the QA; exact-match accuracy per W-word beside the training
majority, as for the built-in questions).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ml_collections

from semrel_jax import errors, files
from semrel_jax.data import records
from semrel_jax.data.dataset import Dataset
from semrel_jax.data.images import Malformed
from semrel_jax.data.records import RecordSource
from semrel_jax.evaluation import vqa

SPLITS: tuple[str, ...] = ("train", "val", "all")
VAL_EVERY = 50  # our split: 2% of the images are held out
IMAGE_FOLDERS: tuple[str, ...] = ("VG_100K", "VG_100K_2")
W_WORDS: tuple[str, ...] = ("what", "where", "how", "who", "when", "why")
DEFAULT_REGION_PROMPT = "Describe the region {box}."
REGIONS_FILE, QA_FILE = "region_descriptions.json", "question_answers.json"


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"Unknown Visual Genome split {split!r}; expected one of {SPLITS}.")
    return split


def in_split(image_id: int, split: str) -> bool:
    return check_split(split) == "all" or (image_id % VAL_EVERY == 0) == (split == "val")


def image_path(image_root: str, image_id: int) -> str:
    """The image's file under ``image_root`` (``VG_100K`` or ``VG_100K_2``; the first when in neither)."""
    candidates = [records.path_inside(image_root, folder, f"{image_id}.jpg") for folder in IMAGE_FOLDERS]
    return next((p for p in candidates if os.path.isfile(p)), candidates[0])


def w_word(question: str) -> str:
    first = question.strip().split(maxsplit=1)[0].lower() if question.strip() else ""
    return first if first in W_WORDS else "other"


class _PerImageItems(RecordSource):
    """Base of the two readers: ``[{"id": image_id, <items_key>: [...]}, ...]`` -> one record per item."""

    items_key, item_id_key, what = "", "", ""

    def __init__(self, json_path: str, image_root: str, split: str = "all", on_bad_data: str = "error",
                 verify_images: bool = False) -> None:
        super().__init__(on_bad_data, verify_images)
        check_split(split)
        self.json_path, self.image_root, self.split = json_path, image_root, split
        data = files.read_json(json_path, f"Visual Genome {self.what} file")
        if not isinstance(data, list):
            raise errors.DataError(f"{json_path}: expected a JSON list of image entries (the release's {self.what} format).")
        self._admit(self._items(data, split), self._parser(self._parse_item))

    def _items(self, data: list, split: str) -> Iterator[tuple[Any, Any]]:
        for i, entry in enumerate(data):
            image_id = entry.get("id", entry.get("image_id")) if isinstance(entry, dict) else None
            if not _is_int(image_id) or not isinstance(entry.get(self.items_key), list):
                yield f"images[{i}]", None  # the entry itself is unusable: one malformed record
                continue
            if not in_split(image_id, split):
                continue
            for k, item in enumerate(entry[self.items_key]):
                rid = item.get(self.item_id_key) if isinstance(item, dict) else None
                yield (rid if rid is not None else f"images[{i}].{self.items_key}[{k}]"), (image_id, item)

    def _parser(self, parse_item: Callable[[int, dict], Any]) -> Callable:
        paths: dict[int, str] = {}  # an image's items are many: its two folders are looked at once

        def parse(record_id, raw):
            if raw is None:
                raise Malformed(f"image entry is not an object with an integer 'id' and a '{self.items_key}' list")
            image_id, item = raw
            if not isinstance(item, dict):
                raise Malformed(f"{self.items_key} item is not an object")
            if item.get("image_id", image_id) != image_id:
                raise Malformed(f"item image_id {item.get('image_id')!r} != its entry's id {image_id}")
            entry = (record_id, image_id, parse_item(image_id, item))
            if image_id not in paths:
                paths[image_id] = image_path(self.image_root, image_id)
            return paths[image_id], [entry]

        return parse

    def _parse_item(self, image_id: int, item: dict) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(json_path={self.json_path!r}, image_root={self.image_root!r}, "
                f"split={self.split!r}, on_bad_data={self.on_bad_data!r}, len={len(self)})")


class VGRegions(_PerImageItems):
    """Region descriptions: one example per region (see the module docstring)."""

    name, items_key, item_id_key, what = "visual_genome_regions", "regions", "region_id", "region descriptions"

    def __init__(self, json_path: str, image_root: str, split: str = "all", prompt: str = DEFAULT_REGION_PROMPT,
                 **kwargs) -> None:
        self.prompt = prompt
        super().__init__(json_path, image_root, split, **kwargs)

    def _parse_item(self, image_id: int, item: dict) -> Any:
        phrase, box = item.get("phrase"), [item.get(k) for k in ("x", "y", "width", "height")]
        if not isinstance(phrase, str) or not phrase.strip():
            raise Malformed(f"'phrase' must be a non-empty string, got {phrase!r}")
        if not all(_is_int(v) for v in box) or box[0] < 0 or box[1] < 0 or box[2] <= 0 or box[3] <= 0:
            raise Malformed(f"x, y, width, height must be integers with x, y >= 0 and a positive size, got {box}")
        x, y, w, h = box
        return phrase.strip(), (x, y, x + w, y + h)

    def _fields(self, index: int) -> dict[str, Any]:
        region_id, image_id, (phrase, box) = self._entries[index]
        return {"question": self.prompt.format(box=list(box)), "answer": phrase, "box": list(box),
                "region_id": region_id, "image_id": image_id, "index": index}


class VGQA(_PerImageItems):
    """Question-answer pairs: one example per question (see the module docstring)."""

    name, items_key, item_id_key, what = "visual_genome", "qas", "qa_id", "question answers"

    def _parse_item(self, image_id: int, item: dict) -> Any:
        question, answer = item.get("question"), item.get("answer")
        if not all(isinstance(t, str) and t.strip() for t in (question, answer)):
            raise Malformed(f"'question' and 'answer' must be non-empty strings, got {question!r}, {answer!r}")
        return question.strip(), answer.strip()

    def _fields(self, index: int) -> dict[str, Any]:
        qa_id, image_id, (question, answer) = self._entries[index]
        kind = w_word(question)
        return {"question": question, "answer": answer, "qa_id": qa_id, "image_id": image_id, "index": index,
                "family": kind, "kind": kind}


# ---------------------------------------------------------------------------------------------- the dataset


def _build(c: ml_collections.ConfigDict) -> tuple[VGQA, VGQA]:
    d = c.data
    train_policy, eval_policy = records.policies(d.on_bad_data)
    train, evaluation = DATASET.split_names(d)
    path, image_root = os.path.join(d.root, QA_FILE), d.image_root or d.root
    return VGQA(path, image_root, train, **train_policy), VGQA(path, image_root, evaluation, **eval_policy)


def _validate(c: ml_collections.ConfigDict) -> None:
    records.validate(c, "visual_genome", ("root",))
    DATASET.check_splits(c.data, SPLITS.__contains__, f"Visual Genome splits (ours, by image id) are {SPLITS}")


def _record_settings(c: ml_collections.ConfigDict) -> dict:
    return DATASET.split_settings(c.data, val_every=VAL_EVERY)


def _score(rows: Sequence[dict], train_source, eval_source) -> dict[str, float]:
    del eval_source
    majority = vqa.majority_answers(train_source.metadata(i) for i in range(len(train_source)))
    return vqa.accuracy_report(list(rows), majority)


DATASET = Dataset(
    semvlp_rows="questions",
    name="visual_genome",
    defaults={},
    build=_build,
    record_settings=_record_settings,
    score=_score,
    validate=_validate,
    splits=("train", "val"),
)
