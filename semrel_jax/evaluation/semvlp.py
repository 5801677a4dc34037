"""SemVLP evaluation on held-out built-in scenes: VQA accuracy (classifier head), image-text matching accuracy,
and retrieval Recall@1/5/10 both ways (ITM scores over every image x text pair of the gallery, every caption of an
image where the reader has several); NLVR2-style accuracy
on held-out statement/image pairs.

    results = evaluate(model, scenes, mode="single", num_images=50, seed=0, batch_size=50)
    results = evaluate_pairs(model, pairs, mode="single", num_pairs=50, seed=0, batch_size=50)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from semrel_jax.data.semvlp_pairs import PairBatches
from semrel_jax.data.semvlp_records import RecordRows
from semrel_jax.data.semvlp_scenes import SceneBatches
from semrel_jax.evaluation import retrieval


def _predictions(model, batch: dict, mode: str):
    out = model(batch, mode)
    answers = jnp.argmax(model.heads.vqa_logits(out["pooled"]), -1)
    match_score = jax.nn.log_softmax(model.heads.itm_logits(out["pooled"], out["alignment"]).astype(jnp.float32))[:, 1]
    return answers, match_score


def evaluate(model, scenes: SceneBatches | RecordRows, *, mode: str, num_images: int, seed: int,
             batch_size: int) -> dict[str, float]:
    predict = nnx.jit(_predictions, static_argnames="mode")

    def run(rows):
        outputs = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # one shape: one compilation
            answers, scores = predict(model, jax.tree.map(jnp.asarray, scenes.collate(chunk)), mode=mode)
            outputs.append((np.asarray(answers), np.asarray(scores)))
        answers = np.concatenate([a for a, _ in outputs])[: len(rows)]
        return answers, np.concatenate([s for _, s in outputs])[: len(rows)]

    results = {}
    # the scenes have both kinds of row; records (data/semvlp_records.py) the kinds their reader gives
    if getattr(scenes, "questions", True) is not None:
        questions = [scenes.row(seed, i, kind="question") for i in range(num_images)]
        answers, _ = run(questions)
        # a record whose answer is outside the vocabulary (is_question 0) cannot be answered: it counts wrong
        answerable = np.asarray([r["is_question"] for r in questions], bool)
        right = (answers == np.asarray([r["answer"] for r in questions])) & answerable
        results["vqa_accuracy"] = float(np.mean(right))
    if getattr(scenes, "captions", True) is None:
        return results
    captions = [scenes.row(seed, i, kind="caption", matched=i % 2 == 0) for i in range(num_images)]
    _, scores = run(captions)
    results["itm_accuracy"] = float(np.mean((scores > np.log(0.5)) == np.asarray([r["matched"] for r in captions], bool)))
    # every image with every text of the gallery (Flickr30K/COCO records: five captions per image)
    image_rows, texts, image_of = scenes.retrieval(seed, num_images)
    pairs = [dict(row, text=text, matched=int(image_of[t] == i))
             for i, row in enumerate(image_rows) for t, text in enumerate(texts)]
    _, scores = run(pairs)
    results |= retrieval.recall_at_k(scores.reshape(len(image_rows), len(texts)), image_of=image_of)
    results |= {"retrieval_images": len(image_rows), "retrieval_texts": len(texts)}  # the gallery Recall@K ranks
    return results


def _pair_predictions(model, batch: dict, mode: str):
    return jnp.argmax(model.heads.pair_logits(model.encode_pair(batch, mode)), -1)


def evaluate_pairs(model, pairs: PairBatches, *, mode: str, num_pairs: int, seed: int, batch_size: int) -> dict[str, float]:
    """``{"nlvr2_accuracy"}`` over held-out pairs ``0..num_pairs-1`` (balanced: chance is 0.5)."""
    predict = nnx.jit(_pair_predictions, static_argnames="mode")
    rows = [pairs.row(seed, i) for i in range(num_pairs)]
    predicted = []
    for start in range(0, num_pairs, batch_size):
        chunk = rows[start : start + batch_size]
        chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # one shape: one compilation
        predicted.append(np.asarray(predict(model, jax.tree.map(jnp.asarray, pairs.collate(chunk)), mode=mode)))
    correct = np.concatenate(predicted)[:num_pairs] == np.asarray([r["label"] for r in rows])
    return {"nlvr2_accuracy": float(np.mean(correct))}
