"""NLVR2 (Suhr, Zhou et al., ACL 2019): a statement, true or false about a pair of photographs.

Layout implemented (the ``lil-lab/nlvr`` repository's ``nlvr2/data`` files and the image zips as unpacked)::

    <root>/train.json, dev.json, test1.json, test2.json      one JSON object per line:
        {"identifier": "train-10171-0-0", "sentence": "...", "label": "True" | "False",
         "left_url": ..., "right_url": ..., "directory": 42 (train only), "writer": ..., "synset": ..., ...}
    <image_root>/train/<directory>/train-10171-0-img0.png    train images sit in 100 numbered folders
    <image_root>/dev/dev-850-0-img0.png                       dev / test images are flat
                   .../<stem>-img1.png                        the right image

``image_root`` defaults to ``<root>/images``. Some ``.png`` files of the release are JPEGs: images are decoded by
their content, not their extension. ``<stem>`` is the identifier without its last ``-<n>``
(the sentence number): ``train-10171-0-3`` and ``train-10171-0-0`` share the pair ``train-10171-0``.
A train line without ``directory`` (or a dev/test line with one) is read from wherever its field says.

One example per line, in file order: ``image`` (uint8), the two images side by side (``side_by_side``: the
shorter one zero-padded at the bottom; what a model that takes one image reads), ``left_size`` /
``right_size`` (``[H, W]`` each: :func:`split_pair` gives the two images back exactly, e.g. for a model
that encodes each image with the statement; a prepared copy keeps all three), ``question`` (the
sentence plus ``QUESTION_SUFFIX``), ``answer`` ('true' | 'false'),
``sentence``, ``label`` (1 | 0), ``identifier``, ``pair`` (the stem), ``index``, and ``family`` / ``kind``
(``nlvr2`` / ``statement``) for ``evaluation.vqa.accuracy_report``. The score adds NLVR2's consistency:
the fraction of sentences (``<split>-<set>-*-<n>``) right on every pair they were written for.

Bad data (``on_bad_data``): a record is one line. Its two images are checked like one (a missing or
corrupt right image makes the record bad, with the right image's path in the detail); a line that is
not JSON is a :class:`errors.DataError` naming the file, line and column.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from semrel_jax import errors, files
from semrel_jax.data import records
from semrel_jax.data.dataset import Dataset
from semrel_jax.data.images import CORRUPT_IMAGE, BadDataError, Malformed, UnreadableImage, read_image
from semrel_jax.data.records import RecordSource
from semrel_jax.evaluation import vqa

SPLITS: tuple[str, ...] = ("train", "dev", "test1", "test2")
LABELS = {"True": 1, "False": 0}
QUESTION_SUFFIX = "\nIs this statement true or false about the left and right images?"


def read_jsonl(path: str, what: str) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed object)`` for every non-blank line; DataError naming file, line and column."""
    files.require_file(path, what)
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise errors.DataError(
                    f"{path}: the {what} is not valid JSON ({e.msg}: line {number}, column {e.colno}); "
                    "the file is truncated or damaged: copy or download it again."
                ) from None


def pair_stem(identifier: str) -> str:
    """``train-10171-0-3`` -> ``train-10171-0`` (the image pair's file stem)."""
    stem, _, sentence = identifier.rpartition("-")
    if not stem or not sentence.isdigit():
        raise Malformed(f"identifier {identifier!r} is not '<split>-<set>-<pair>-<sentence>'")
    return stem


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``[max(h_l, h_r), w_l + w_r, 3]`` uint8: the two images next to each other, zero-padded at the bottom."""
    height = max(left.shape[0], right.shape[0])
    out = np.zeros((height, left.shape[1] + right.shape[1], 3), np.uint8)
    out[: left.shape[0], : left.shape[1]] = left
    out[: right.shape[0], left.shape[1] :] = right
    return out


def split_pair(example: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(left, right)`` uint8 ``[H, W, 3]`` back from an example's side-by-side ``image`` (exact: no resampling)."""
    (left_h, left_w), (right_h, right_w) = example["left_size"], example["right_size"]
    image = example["image"]
    return image[:left_h, :left_w], image[:right_h, left_w : left_w + right_w]


class NLVR2(RecordSource):
    """Random-access NLVR2 split (a grain ``RandomAccessDataSource``); fields: see the module docstring."""

    name = "nlvr2"

    def __init__(self, json_path: str, image_dir: str, on_bad_data: str = "error", verify_images: bool = False) -> None:
        super().__init__(on_bad_data, verify_images)
        self.json_path, self.image_dir = json_path, image_dir
        self._right_of: dict[str, str] = {}  # left image path -> right image path

        def parse(record_id, line):
            if not isinstance(line, dict):
                raise Malformed("line is not a JSON object")
            identifier, sentence, label = line.get("identifier"), line.get("sentence"), line.get("label")
            if not isinstance(identifier, str) or not isinstance(sentence, str) or not sentence.strip():
                raise Malformed(f"'identifier' / 'sentence' missing or not strings: {identifier!r}, {sentence!r}")
            if label not in LABELS:
                raise Malformed(f"'label' must be 'True' or 'False', got {label!r}")
            stem = pair_stem(identifier)
            folder = line.get("directory")
            if folder is not None and not (isinstance(folder, int | str) and str(folder).strip()):
                raise Malformed(f"'directory' must be a folder number, got {folder!r}")
            parts = (str(folder),) if folder is not None else ()
            left = records.path_inside(image_dir, *parts, f"{stem}-img0.png")
            self._right_of[left] = records.path_inside(image_dir, *parts, f"{stem}-img1.png")
            return left, [(identifier, sentence.strip(), LABELS[label], stem)]

        lines = read_jsonl(json_path, "NLVR2 statements file")
        self._admit(((_line_id(n, line), line) for n, line in lines), parse)

    @classmethod
    def from_root(cls, root: str, split: str, image_root: str | None = None, **kwargs) -> "NLVR2":
        """``<root>/<split>.json``; images under ``<image_root or root/images>/<split>``."""
        if split not in SPLITS:
            raise ValueError(f"Unknown NLVR2 split {split!r}; expected one of {SPLITS}.")
        image_root = image_root or os.path.join(root, "images")
        return cls(os.path.join(root, f"{split}.json"), os.path.join(image_root, split), **kwargs)

    def __repr__(self) -> str:
        return (f"NLVR2(json_path={self.json_path!r}, image_dir={self.image_dir!r}, on_bad_data={self.on_bad_data!r}, "
                f"len={len(self)})")

    def _check_file(self, path: str) -> tuple[str, str] | None:
        """Both images of the pair (``path`` is the left one), like one file."""
        problem = super()._check_file(path)
        if problem is None:
            right = self._right_of[path]
            problem = super()._check_file(right)
            problem = problem and (problem[0], f"right image {right}: {problem[1]}")
        return problem

    def _fields(self, index: int) -> dict[str, Any]:
        identifier, sentence, label, stem = self._entries[index]
        return {
            "question": sentence + QUESTION_SUFFIX,
            "answer": "true" if label else "false",
            "sentence": sentence,
            "label": label,
            "identifier": identifier,
            "pair": stem,
            "index": index,
            "family": "nlvr2",
            "kind": "statement",
        }

    def right_image_path(self, index: int) -> str:
        return self._right_of[self.image_path(index)]

    def __getitem__(self, index: Any) -> dict[str, Any]:
        """The base reads the left image under the policy; the right one is read here under the same policy
        (a pair whose right image does not decode is served by the next readable example, like a left one)."""
        first = i = self._check_index(index)
        for _ in range(len(self)):
            example = super().__getitem__(i)
            j = example["index"]
            right_path = self.right_image_path(j)
            try:
                right = read_image(right_path)
            except UnreadableImage as e:
                if self.on_bad_data == "error":
                    raise BadDataError(self.name, self.record_id(j), right_path, e.reason, e.detail) from e
                self._bad_records.add(self.record_id(j))
                self.skipped[e.reason] += 1
                logging.warning("%s: record %r has an unreadable right image (%s: %s; path %s); index %d is served by "
                                "the next readable example", self.name, self.record_id(j), e.reason, e.detail, right_path, j)
                i = (j + 1) % len(self)
                continue
            left = example.pop("image")
            return {**example, "image": side_by_side(left, right), "left_size": list(left.shape[:2]),
                    "right_size": list(right.shape[:2])}
        raise BadDataError(self.name, self.record_id(first), self.image_path(first), CORRUPT_IMAGE,
                           "no example of the source has a readable image pair")


def _line_id(number: int, line: Any) -> Any:
    if isinstance(line, dict) and isinstance(line.get("identifier"), str):
        return line["identifier"]
    return f"line {number}"


def consistency(rows: Sequence[dict]) -> float:
    """The fraction of sentences right on every pair they appear with (NLVR2's second metric): a sentence is
    ``<split>-<set>-<n>`` of its identifiers ``<split>-<set>-<pair>-<n>``."""
    right: dict[tuple, bool] = collections.defaultdict(lambda: True)
    for r in rows:
        parts = r["identifier"].split("-")
        key = (*parts[:-2], parts[-1])
        right[key] &= vqa.normalize(r["prediction"]) == vqa.normalize(r["answer"])
    return sum(right.values()) / max(len(right), 1)


# ---------------------------------------------------------------------------------------------- the dataset


def _build(c: ml_collections.ConfigDict) -> tuple[NLVR2, NLVR2]:
    d = c.data
    train_policy, eval_policy = records.policies(d.on_bad_data)
    train, evaluation = DATASET.split_names(d)
    image_root = d.image_root or None
    return (NLVR2.from_root(d.root, train, image_root, **train_policy),
            NLVR2.from_root(d.root, evaluation, image_root, **eval_policy))


def _validate(c: ml_collections.ConfigDict) -> None:
    records.validate(c, "nlvr2", ("root",))
    DATASET.check_splits(c.data, SPLITS.__contains__, f"NLVR2 splits are {SPLITS}")


def _record_settings(c: ml_collections.ConfigDict) -> dict:
    return DATASET.split_settings(c.data)


def _score(rows: Sequence[dict], train_source, eval_source) -> dict[str, float]:
    """Accuracy (true/false exact match) beside the training majority, and consistency."""
    del eval_source
    majority = vqa.majority_answers(train_source.metadata(i) for i in range(len(train_source)))
    return {**vqa.accuracy_report(list(rows), majority), "consistency": consistency(rows)}


DATASET = Dataset(
    semvlp_rows="pairs",
    name="nlvr2",
    defaults={},
    build=_build,
    record_settings=_record_settings,
    score=_score,
    validate=_validate,
    splits=("train", "dev"),
)
