"""VQA v2 (Goyal et al., CVPR 2017) from the official question / annotation JSON and the COCO images.

Files as released (``from_root`` expects them side by side under ``root``)::

    v2_OpenEnded_mscoco_<split>_questions.json
        {"data_subtype": "train2014", "questions": [{"image_id", "question", "question_id"}, ...], ...}
    v2_mscoco_<split>_annotations.json          (not released for test2015 / test-dev2015)
        {"annotations": [{"question_id", "image_id", "question_type", "answer_type",
                          "multiple_choice_answer", "answers": [{"answer", "answer_confidence", "answer_id"} x10]}]}
    <image_split>/COCO_<image_split>_<12-digit image id>.jpg      (COCO 2014 / 2015 images)

``<split>`` is ``train2014``, ``val2014``, ``test2015`` or ``test-dev2015``; ``<image_split>`` is the
questions file's ``data_subtype``, except that test-dev questions use the ``test2015`` images.

One example per question, in the questions file's order. ``'answer'`` is the annotation's
``multiple_choice_answer`` (the most frequent human answer: the training target); ``'answers'`` the 10
human answers and ``'answer_type'`` (yes/no, number, other) / ``'question_type'`` the official
breakdowns, for the VQA accuracy ``min(#humans agreeing / 3, 1)``. Test splits (no annotations) give
``'answer'``, ``'answers'``, ``'answer_type'`` and ``'question_type'`` None. A train/val split without its
annotations is an error, never a silent unlabeled set. ``family`` / ``kind`` (answer type and question
type) are the grouping keys ``evaluation.vqa.accuracy_report`` breaks accuracy down by.

Prompt formats (the ``'question'`` text):
  ``plain``  the question as written.
  ``llava``  ``{question}\\nAnswer the question using a single word or phrase.`` (LLaVA-1.5's VQAv2 prompt).

Bad data (``on_bad_data``): a record is one question; see ``semrel_jax.data.images``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from semrel_jax import errors, files
from semrel_jax.data import records
from semrel_jax.data.dataset import Dataset
from semrel_jax.data.images import Malformed
from semrel_jax.data.records import RecordSource
from semrel_jax.evaluation import vqa_v2 as vqa_v2_metric

PROMPT_FORMATS: tuple[str, ...] = ("plain", "llava")
SPLITS: tuple[str, ...] = ("train2014", "val2014", "test2015", "test-dev2015")
LLAVA_SUFFIX = "\nAnswer the question using a single word or phrase."


def questions_file(root: str, split: str) -> str:
    return os.path.join(root, f"v2_OpenEnded_mscoco_{split}_questions.json")


def annotations_file(root: str, split: str) -> str:
    return os.path.join(root, f"v2_mscoco_{split}_annotations.json")


def image_split_of(data_subtype: str) -> str:
    return "test2015" if data_subtype == "test-dev2015" else data_subtype


def image_filename(image_split: str, image_id: int) -> str:
    return f"COCO_{image_split}_{image_id:012d}.jpg"


def format_question(question: str, prompt_format: str) -> str:
    if prompt_format == "plain":
        return question
    if prompt_format == "llava":
        return question + LLAVA_SUFFIX
    raise ValueError(f"Unknown VQA v2 prompt format {prompt_format!r}; expected one of {PROMPT_FORMATS}.")


def _load(path: str, what: str) -> dict:
    data = files.read_json(path, f"VQA v2 {what}")
    if not isinstance(data, dict):
        raise errors.DataError(f"{path}: expected a JSON object (the official {what} format).")
    return data


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class VQAv2(RecordSource):
    """Random-access VQA v2 split (a grain ``RandomAccessDataSource``).

    Example: ``image``, ``has_image`` (always 1), ``question`` (formatted), ``answer``, ``index``,
    ``question_id``, ``image_id``, ``answers`` (10 strings), ``answer_type``, ``question_type``,
    ``family``, ``kind``.
    """

    name = "vqa_v2"

    def __init__(
        self,
        questions_path: str,
        image_dir: str,
        annotations_path: str | None = None,
        prompt_format: str = "plain",
        image_split: str | None = None,
        on_bad_data: str = "error",
        verify_images: bool = False,
    ) -> None:
        super().__init__(on_bad_data, verify_images)
        format_question("", prompt_format)
        self.questions_path, self.annotations_path, self.image_dir = questions_path, annotations_path, image_dir
        self.prompt_format = prompt_format
        questions = _load(questions_path, "questions file")
        subtype = questions.get("data_subtype")
        if image_split is None:
            if not isinstance(subtype, str) or not subtype:
                raise ValueError(f"{questions_path!r} has no 'data_subtype'; pass image_split (e.g. 'val2014').")
            image_split = image_split_of(subtype)
        self.image_split = image_split
        if not isinstance(questions.get("questions"), list):
            raise ValueError(f"{questions_path!r}: no 'questions' list.")
        by_qid: dict[int, dict] | None = None
        if annotations_path is not None:
            ann = _load(annotations_path, "annotations file")
            if not isinstance(ann.get("annotations"), list):
                raise ValueError(f"{annotations_path!r}: no 'annotations' list.")
            by_qid = {a["question_id"]: a for a in ann["annotations"] if isinstance(a, dict) and "question_id" in a}
        elif not str(subtype or image_split).startswith("test"):
            raise ValueError(
                f"VQA v2 split {subtype or image_split!r} needs its annotations file (only the test splits have none)."
            )
        self.has_answers = by_qid is not None
        strings: dict[str, str] = {}  # interning: answers repeat massively across 10 x 443k entries

        def intern(s: str) -> str:
            return strings.setdefault(s, s)

        def parse(record_id, q):
            if not isinstance(q, dict):
                raise Malformed("question entry is not an object")
            qid, image_id, text = q.get("question_id"), q.get("image_id"), q.get("question")
            if not _is_int(qid) or not _is_int(image_id) or image_id < 0:
                raise Malformed(f"'question_id' and 'image_id' must be integers, got {qid!r}, {image_id!r}")
            if not isinstance(text, str) or not text.strip():
                raise Malformed(f"'question' must be a non-empty string, got {text!r}")
            labels = None
            if by_qid is not None:
                a = by_qid.get(qid)
                if a is None:
                    raise Malformed("no annotation for this question_id")
                if a.get("image_id") != image_id:
                    raise Malformed(f"annotation image_id {a.get('image_id')!r} != question image_id {image_id}")
                mc, answers = a.get("multiple_choice_answer"), a.get("answers")
                if not isinstance(mc, str) or not mc.strip():
                    raise Malformed(f"'multiple_choice_answer' must be a non-empty string, got {mc!r}")
                if (not isinstance(answers, list) or not answers
                        or not all(isinstance(x, dict) and isinstance(x.get("answer"), str) for x in answers)):
                    raise Malformed("'answers' must be a non-empty list of {'answer': str, ...}")
                kinds = a.get("answer_type"), a.get("question_type")
                if not all(isinstance(k, str) for k in kinds):
                    raise Malformed(f"'answer_type' / 'question_type' must be strings, got {kinds!r}")
                labels = (intern(mc), tuple(intern(x["answer"]) for x in answers), intern(kinds[0]), intern(kinds[1]))
            path = records.path_inside(image_dir, image_filename(image_split, image_id))
            return path, [(qid, image_id, format_question(text, prompt_format), labels)]

        self._admit(
            ((q.get("question_id", f"questions[{i}]") if isinstance(q, dict) else f"questions[{i}]", q)
             for i, q in enumerate(questions["questions"])),
            parse,
        )

    @classmethod
    def from_root(cls, root: str, split: str, image_dir: str | None = None, **kwargs) -> "VQAv2":
        """The official file names under ``root``; images in ``image_dir`` (default ``root/<image_split>``)."""
        if split not in SPLITS:
            raise ValueError(f"Unknown VQA v2 split {split!r}; expected one of {SPLITS}.")
        image_split = image_split_of(split)
        annotations = None if split.startswith("test") else annotations_file(root, split)
        return cls(questions_file(root, split), image_dir or os.path.join(root, image_split), annotations,
                   image_split=image_split, **kwargs)

    def __repr__(self) -> str:
        return (f"VQAv2(questions_path={self.questions_path!r}, image_dir={self.image_dir!r}, "
                f"annotations_path={self.annotations_path!r}, prompt_format={self.prompt_format!r}, "
                f"on_bad_data={self.on_bad_data!r}, len={len(self)})")

    def _fields(self, index: int) -> dict[str, Any]:
        qid, image_id, question, labels = self._entries[index]
        answer, answers, answer_type, question_type = labels if labels is not None else (None, None, None, None)
        return {
            "question": question,
            "answer": answer,
            "index": index,
            "question_id": qid,
            "image_id": image_id,
            "answers": list(answers) if answers is not None else None,
            "answer_type": answer_type,
            "question_type": question_type,
            "family": answer_type,
            "kind": question_type,
        }


# ---------------------------------------------------------------------------------------------- the dataset


def _validate(c: ml_collections.ConfigDict) -> None:
    records.validate(c, "vqa_v2", ("root",))
    errors.one_of(c, "data.vqa_prompt", PROMPT_FORMATS)


def _build(c: ml_collections.ConfigDict) -> tuple[VQAv2, VQAv2]:
    d = c.data
    train_policy, eval_policy = records.policies(d.on_bad_data)
    train, evaluation = DATASET.split_names(d)
    image_dir = d.image_root or None
    return (
        VQAv2.from_root(d.root, train, image_dir, prompt_format=d.vqa_prompt, **train_policy),
        VQAv2.from_root(d.root, evaluation, image_dir, prompt_format=d.vqa_prompt, **eval_policy),
    )


def _record_settings(c: ml_collections.ConfigDict) -> dict:
    return DATASET.split_settings(c.data, vqa_prompt=c.data.vqa_prompt)


def _score(rows: Sequence[dict], train_source, eval_source) -> dict:
    del train_source, eval_source
    if any(r.get("answers") is None for r in rows):
        return {"num_examples": float(len(rows)), "note": "no annotations (test split): predictions only"}
    return vqa_v2_metric.accuracy_report({r["question_id"]: r["prediction"] for r in rows}, rows)


DATASET = Dataset(
    semvlp_rows="questions",
    name="vqa_v2",
    defaults=dict(vqa_prompt="plain"),
    build=_build,
    record_settings=_record_settings,
    score=_score,
    validate=_validate,
    splits=("train2014", "val2014"),
)
