"""GQA (Hudson & Manning, CVPR 2019): compositional questions on Visual Genome images, from the release's JSON.

Files as released (``questions1.2.zip`` and ``images.zip`` unpacked; ``root`` holds the questions)::

    <root>/<split>_questions.json        {"<question id>": {"imageId": "2375429", "question": "...",
                                            "answer": "no", "fullAnswer": "No, the cup is red.",
                                            "isBalanced": true, "types": {"structural": "verify",
                                            "semantic": "attr", "detailed": "verifyAttr"}, ...}, ...}
    <root>/<split>_questions/*.json      a split released in parts (train_all): read in part-number order
    <image_root>/<imageId>.jpg           (``image_root`` defaults to ``<root>/images``)

``<split>`` is the file's prefix: ``train_balanced``, ``val_balanced``, ``testdev_balanced``, ``train_all``,
``val_all``, ``testdev_all``, ``test_balanced``, ``challenge_balanced``, ``submission_all``, ... The test,
challenge and submission files carry no answers: their examples have ``answer``, ``full_answer`` and the
types None (and score as predictions only).

One example per question, in the file's order: ``question``, ``answer``, ``full_answer``, ``question_id``,
``image_id`` (strings, as in the files), ``structural``, ``semantic``, ``detailed`` (the question types),
``index``, and ``family`` / ``kind`` = structural / semantic type (GQA's breakdowns) for
``evaluation.vqa.accuracy_report``: GQA's accuracy is exact match. Bad data (``on_bad_data``): a record is
one question; see ``semrel_jax.data.images``.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from typing import Any

import ml_collections

from semrel_jax import errors, files
from semrel_jax.data import records
from semrel_jax.data.dataset import Dataset
from semrel_jax.data.images import Malformed
from semrel_jax.data.records import RecordSource
from semrel_jax.evaluation import vqa

SPLIT_NAME = re.compile(r"^[A-Za-z0-9]+(_[A-Za-z0-9]+)*$")  # a file prefix, never a path
TYPE_KEYS: tuple[str, ...] = ("structural", "semantic", "detailed")


def _numbers_as_numbers(path: str) -> list:
    """Sort key: ``..._2.json`` before ``..._10.json``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def question_files(root: str, split: str) -> list[str]:
    """``<root>/<split>_questions.json``, or the parts in ``<root>/<split>_questions/`` (part-number order)."""
    if not SPLIT_NAME.match(split):
        raise ValueError(f"GQA split {split!r} must be a file prefix such as 'train_balanced'.")
    single = os.path.join(root, f"{split}_questions.json")
    parts = sorted(glob.glob(os.path.join(root, f"{split}_questions", "*.json")), key=_numbers_as_numbers)
    return parts if parts and not os.path.exists(single) else [single]


def _optional_str(entry: dict, key: str) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise Malformed(f"{key!r} must be a string, got {value!r}")
    return value


class GQA(RecordSource):
    """Random-access GQA split (a grain ``RandomAccessDataSource``); fields: see the module docstring."""

    name = "gqa"

    def __init__(self, question_paths: Sequence[str] | str, image_dir: str, on_bad_data: str = "error",
                 verify_images: bool = False) -> None:
        super().__init__(on_bad_data, verify_images)
        self.question_paths = [question_paths] if isinstance(question_paths, str) else list(question_paths)
        self.image_dir = image_dir
        strings: dict[str, str] = {}  # interning: answers and types repeat across a million questions

        def intern(s: str | None) -> str | None:
            return s if s is None else strings.setdefault(s, s)

        def parse(qid, entry):
            if not isinstance(entry, dict):
                raise Malformed("question entry is not an object")
            image_id, question = entry.get("imageId"), entry.get("question")
            if not isinstance(image_id, str) or not image_id or not isinstance(question, str) or not question.strip():
                raise Malformed(f"'imageId' and 'question' must be non-empty strings, got {image_id!r}, {question!r}")
            answer, full_answer = _optional_str(entry, "answer"), _optional_str(entry, "fullAnswer")
            types = entry.get("types")
            if answer is not None:
                kinds = tuple(types.get(k) for k in TYPE_KEYS) if isinstance(types, dict) else ()
                if not answer.strip() or not (kinds and all(isinstance(k, str) and k for k in kinds)):
                    raise Malformed(f"an answered question needs a non-empty 'answer' and 'types' {TYPE_KEYS} "
                                    f"strings, got {answer!r}, {types!r}")
                kinds = tuple(intern(k) for k in kinds)
            else:
                kinds = (None, None, None)
            path = records.path_inside(image_dir, f"{image_id}.jpg")
            return path, [(qid, image_id, question.strip(), intern(answer), full_answer, kinds)]

        for path in self.question_paths:
            data = files.read_json(path, "GQA questions file")
            if not isinstance(data, dict):
                raise errors.DataError(f"{path}: expected a JSON object of question id -> question (the release's format).")
            self._admit(data.items(), parse)

    @classmethod
    def from_root(cls, root: str, split: str, image_dir: str | None = None, **kwargs) -> "GQA":
        """The release's file names under ``root``; images in ``image_dir`` (default ``root/images``)."""
        return cls(question_files(root, split), image_dir or os.path.join(root, "images"), **kwargs)

    def __repr__(self) -> str:
        return (f"GQA(question_paths={self.question_paths!r}, image_dir={self.image_dir!r}, "
                f"on_bad_data={self.on_bad_data!r}, len={len(self)})")

    def _fields(self, index: int) -> dict[str, Any]:
        qid, image_id, question, answer, full_answer, (structural, semantic, detailed) = self._entries[index]
        return {
            "question": question, "answer": answer, "full_answer": full_answer, "question_id": qid,
            "image_id": image_id, "structural": structural, "semantic": semantic, "detailed": detailed,
            "index": index, "family": structural, "kind": semantic,
        }


# ---------------------------------------------------------------------------------------------- the dataset


def _build(c: ml_collections.ConfigDict) -> tuple[GQA, GQA]:
    d = c.data
    train_policy, eval_policy = records.policies(d.on_bad_data)
    train, evaluation = DATASET.split_names(d)
    image_dir = d.image_root or None
    return (GQA.from_root(d.root, train, image_dir, **train_policy),
            GQA.from_root(d.root, evaluation, image_dir, **eval_policy))


def _validate(c: ml_collections.ConfigDict) -> None:
    records.validate(c, "gqa", ("root",))
    DATASET.check_splits(c.data, lambda split: bool(SPLIT_NAME.match(split)),
                         "a GQA questions file prefix such as 'train_balanced'")


def _record_settings(c: ml_collections.ConfigDict) -> dict:
    return DATASET.split_settings(c.data)


def _score(rows: Sequence[dict], train_source, eval_source) -> dict:
    del eval_source
    if any(r.get("answer") is None for r in rows):
        return {"num_examples": float(len(rows)), "note": "no answers in this split: predictions only"}
    answered = (train_source.metadata(i) for i in range(len(train_source)))
    majority = vqa.majority_answers(m for m in answered if m["answer"] is not None)
    return vqa.accuracy_report(list(rows), majority)


DATASET = Dataset(
    semvlp_rows="questions",
    name="gqa",
    defaults={},
    build=_build,
    record_settings=_record_settings,
    score=_score,
    validate=_validate,
    splits=("train_balanced", "testdev_balanced"),
)
