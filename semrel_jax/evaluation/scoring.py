"""Scores generated answers with each dataset's official metric (``data.name`` picks it).

``rows`` are the evaluated examples: ``{"index", "prediction"}`` plus the example's metadata (what
``source.metadata(index)`` gives, or the Sort-of-CLEVR question). Every report is a flat dict with
``accuracy*`` (or caption metric) keys and ``num_examples``.
"""

from __future__ import annotations

from collections.abc import Sequence

from semrel_jax.evaluation import captioning, scienceqa, vqa, vqa_v2


def describe(eval_source, index: int) -> dict:
    """The metadata written next to a prediction (and used for scoring)."""
    if hasattr(eval_source, "metadata"):
        meta = dict(eval_source.metadata(index))
        meta.pop("image", None)
        return meta
    image_index, q = divmod(int(index), eval_source.questions_per_image)
    question = eval_source.questions(image_index)[q]
    return {"question": question.text, "answer": question.answer, "family": question.family, "kind": question.kind}


def score(name: str, rows: Sequence[dict], train_source, eval_source) -> dict[str, float]:
    if name == "sort_of_clevr":
        train_answers = (
            {"kind": q.kind, "answer": q.answer}
            for i in range(train_source.num_images)
            for q in train_source.questions(i)
        )
        return vqa.accuracy_report(rows, vqa.majority_answers(train_answers))
    if name == "scienceqa":
        predictions = {r["pid"]: r["prediction"] for r in rows}
        return scienceqa.accuracy_report(predictions, eval_source.problems, split=None, pids=list(predictions))
    if name == "vqa_v2":
        if any(r.get("answers") is None for r in rows):
            return {"num_examples": float(len(rows)), "note": "no annotations (test split): predictions only"}
        return vqa_v2.accuracy_report({r["question_id"]: r["prediction"] for r in rows}, rows)
    if name in ("coco_captions", "sort_of_clevr_captions"):
        # Sort-of-CLEVR captions: one item per (image, description kind), so the item index is the key
        # (keying by image would let one kind's prediction overwrite the other's).
        key = "cocoid" if name == "coco_captions" else "index"
        return captioning.caption_scores({r[key]: r["prediction"] for r in rows}, {r[key]: r["references"] for r in rows})
    if name == "llava_json":
        # Free-form answers have no official metric; exact match (case/space-insensitive) as a sanity number.
        hits = [r["prediction"].strip().lower() == str(r["answer"]).strip().lower() for r in rows]
        return {"accuracy/exact_match": sum(hits) / max(len(hits), 1), "num_examples": float(len(rows))}
    raise ValueError(f"No scorer for data.name={name!r}.")
