"""LLaVA-style instruction data: a JSON list of conversations, with images under an image root.

File (LLaVA-Instruct-150K, LLaVA-1.5 mix665k, LCS-558K and the many sets in that format)::

    [{"id": "000000033471", "image": "coco/train2017/000000033471.jpg",     # "image" optional
      "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                        {"from": "gpt", "value": "The bus is white and red."},
                        {"from": "human", "value": "What feature can be seen on the back of the bus?"},
                        {"from": "gpt", "value": "An advertisement."}]}, ...]

The image is ``image_root/<image>``. Roles: ``human`` (or ``user``) and ``gpt`` (or ``assistant``); a
conversation must alternate human, gpt, human, gpt, ... and end with a gpt turn.

**One example per (human, gpt) turn pair**, in file order then turn order; every pair is a training
target, and the earlier pairs of the conversation are its context:

* pair 1: ``'question'`` is the first human message;
* pair k > 1: ``'question'`` is the earlier pairs, each as ``USER: {human}\\nASSISTANT: {gpt}\\n``, followed
  by ``USER: {human_k}``; e.g. for pair 2: ``USER: {h1}\\nASSISTANT: {g1}\\nUSER: {h2}``;
* ``'answer'`` is ``gpt_k``; ``'messages'`` is the same history as ``[{"role": "user" | "assistant",
  "content": ...}, ...]`` ending with the user turn ``h_k`` (for chat templates).

The ``<image>`` placeholder is removed from the text as LLaVA's ``preprocess_multimodal`` does
(``value.replace("<image>", "").strip()``); the image itself is the example's ``'image'`` for every pair
of the conversation (``'has_image'`` 1), or None for conversations without ``"image"`` (``'has_image'`` 0).

Also in each example: ``index``, ``id`` (the record's; ``records[<position>]`` when it has none),
``turn`` (0-based pair number), ``num_turns`` and ``kind``: the record's optional ``"kind"`` (or, when it
has none, ``"type"``) field, a string naming the question kind (``"count"``, ``"left_of"``, ...), else None.
Evaluation reports exact match per kind next to that kind's majority answer (see :func:`_score`).

Malformed records (bad-data policy: see ``semrel_jax.data.images``; a record is one conversation): no
``conversations`` list; a turn that is not ``{"from", "value": str}``; unknown role; human/gpt not
alternating or not ending with gpt; an empty gpt message; a ``<image>`` placeholder in a record without
``"image"``; more than one placeholder; ``"image"`` not a single path (multi-image records are not
supported).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections

from semrel_jax import errors, files
from semrel_jax.data import records
from semrel_jax.data.dataset import Dataset
from semrel_jax.data.images import Malformed
from semrel_jax.data.records import RecordSource

IMAGE_TOKEN = "<image>"
USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")


def render_question(history: list[tuple[str, str]], human: str) -> str:
    """The ``'question'`` text of a pair: earlier (human, gpt) pairs as USER/ASSISTANT lines, then ``human``."""
    if not history:
        return human
    lines = "".join(f"USER: {h}\nASSISTANT: {g}\n" for h, g in history)
    return f"{lines}USER: {human}"


class LLaVAInstruct(RecordSource):
    """Random-access LLaVA-style instruction data (a grain ``RandomAccessDataSource``)."""

    name = "llava_json"

    def __init__(self, json_path: str, image_root: str, on_bad_data: str = "error", verify_images: bool = False) -> None:
        super().__init__(on_bad_data, verify_images)
        self.json_path, self.image_root = json_path, image_root
        conversations = files.read_json(json_path, "LLaVA instruction file")
        if not isinstance(conversations, list):
            raise errors.DataError(
                f"{json_path}: expected a JSON list of conversations, got a {type(conversations).__name__}."
            )

        def record_id(i: int, r: Any) -> Any:
            if isinstance(r, dict) and r.get("id") is not None:
                return r["id"]
            return f"records[{i}]"

        def parse(rid, r):
            if not isinstance(r, dict):
                raise Malformed("record is not an object")
            image = r.get("image")
            if image is not None and (not isinstance(image, str) or not image):
                raise Malformed(f"'image' must be one relative path, got {image!r} (multi-image records are not supported)")
            turns = r.get("conversations")
            if not isinstance(turns, list) or not turns:
                raise Malformed("'conversations' missing or empty")
            texts, placeholders = [], 0
            for k, t in enumerate(turns):
                if not isinstance(t, dict) or not isinstance(t.get("value"), str) or not isinstance(t.get("from"), str):
                    raise Malformed(f"turn {k} is not {{'from': str, 'value': str}}: {t!r}")
                role = t["from"]
                expected = USER_ROLES if k % 2 == 0 else ASSISTANT_ROLES
                if role not in USER_ROLES + ASSISTANT_ROLES:
                    raise Malformed(f"turn {k} has unknown role {role!r}; expected one of {USER_ROLES + ASSISTANT_ROLES}")
                if role not in expected:
                    raise Malformed(f"turn {k} is from {role!r}; turns must alternate human, gpt, human, gpt, ...")
                placeholders += t["value"].count(IMAGE_TOKEN)
                text = t["value"].replace(IMAGE_TOKEN, "").strip()
                if k % 2 == 1 and not text:
                    raise Malformed(f"turn {k} (gpt) is empty")
                texts.append(text)
            if len(turns) % 2:
                raise Malformed("the conversation ends with a human turn (no gpt answer to train on)")
            if placeholders and image is None:
                raise Malformed(f"{IMAGE_TOKEN} placeholder in a record without an 'image'")
            if placeholders > 1:
                raise Malformed(f"{placeholders} {IMAGE_TOKEN} placeholders; one image per conversation is supported")
            kind = r.get("kind", r.get("type"))
            if kind is not None and not (isinstance(kind, str) and kind):
                raise Malformed(f"'kind'/'type' must be a non-empty string naming the question kind, got {kind!r}")
            pairs = list(zip(texts[0::2], texts[1::2]))
            entries = [(rid, k, len(pairs), pairs[:k], h, g, kind) for k, (h, g) in enumerate(pairs)]
            return (records.path_inside(image_root, image) if image is not None else None), entries

        self._admit(((record_id(i, r), r) for i, r in enumerate(conversations)), parse)

    def __repr__(self) -> str:
        return (f"LLaVAInstruct(json_path={self.json_path!r}, image_root={self.image_root!r}, "
                f"on_bad_data={self.on_bad_data!r}, len={len(self)})")

    def _fields(self, index: int) -> dict[str, Any]:
        rid, turn, num_turns, history, human, gpt, kind = self._entries[index]
        messages = []
        for h, g in history:
            messages += [{"role": "user", "content": h}, {"role": "assistant", "content": g}]
        messages.append({"role": "user", "content": human})
        return {
            "question": render_question(history, human),
            "answer": gpt,
            "messages": messages,
            "index": index,
            "id": rid,
            "turn": turn,
            "num_turns": num_turns,
            "kind": kind,
        }


# ---------------------------------------------------------------------------------------------- the dataset


def _validate(c: ml_collections.ConfigDict) -> None:
    for key in ("data.train_split", "data.eval_split"):  # its splits are files, not names
        errors.check(not errors.get(c, key), key, "llava_json reads data.train_file / data.eval_file; leave the split names ''")
    records.validate(c, "llava_json", ("train_file", "image_root"))


def _build(c: ml_collections.ConfigDict) -> tuple[LLaVAInstruct, LLaVAInstruct]:
    d = c.data
    train_policy, eval_policy = records.policies(d.on_bad_data)
    return (LLaVAInstruct(d.train_file, d.image_root, **train_policy),
            LLaVAInstruct(d.eval_file or d.train_file, d.image_root, **eval_policy))


ALL_KINDS = "exact_match"  # the overall group's metric name (the key this scorer has always reported)


def _answer_key(text: Any) -> str:
    """The exact-match comparison: case- and surrounding-space-insensitive."""
    return str(text).strip().lower()


def _majority(answers: Iterable[tuple[str | None, str]]) -> dict[str, str]:
    """``kind -> most frequent answer key`` over ``(kind, answer)`` pairs, plus ``ALL_KINDS -> the most
    frequent answer overall``; ties go to the alphabetically first answer, so the baseline is deterministic."""
    counts: dict[Any, collections.Counter] = collections.defaultdict(collections.Counter)
    for kind, answer in answers:
        counts[ALL_KINDS][_answer_key(answer)] += 1
        if kind is not None:
            counts[kind][_answer_key(answer)] += 1
    return {kind: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for kind, c in counts.items()}


def _score(rows: Sequence[dict], train_source, eval_source) -> dict[str, float]:
    """Exact match (case/space-insensitive; free-form answers have no official metric) overall and per
    question ``kind``, each next to the majority baseline: it answers a row of a kind with the answer most
    frequent among the TRAINING examples of that kind, a row without a kind with the most frequent training
    answer overall (the best a model can do from the question kind alone).

    Keys: ``accuracy/exact_match``, ``majority_baseline/exact_match``, ``accuracy/<kind>`` and
    ``majority_baseline/<kind>`` for every kind among the rows (rows without a kind count only overall),
    ``num_examples``.
    """
    del eval_source
    # metadata never reads an image; .get: prepared copies made before kinds existed have no 'kind'
    train = (train_source.metadata(i) for i in range(len(train_source)))
    majority = _majority((m.get("kind"), m["answer"]) for m in train)
    groups: dict[str, list[tuple[bool, bool]]] = collections.defaultdict(list)
    for r in rows:
        truth = _answer_key(r["answer"])
        kind = ALL_KINDS if r.get("kind") is None else r["kind"]
        hits = (_answer_key(r["prediction"]) == truth, majority.get(kind) == truth)
        for group in {ALL_KINDS, kind}:
            groups[group].append(hits)
    report = {"accuracy/exact_match": 0.0, "majority_baseline/exact_match": 0.0, "num_examples": float(len(rows))}
    for kind, hits in groups.items():
        report[f"accuracy/{kind}"] = sum(h for h, _ in hits) / len(hits)
        report[f"majority_baseline/{kind}"] = sum(b for _, b in hits) / len(hits)
    return report


DATASET = Dataset(
    name="llava_json",
    defaults={},
    build=_build,
    record_settings=lambda c: dict(on_bad_data=c.data.on_bad_data, separate_eval_file=bool(c.data.eval_file)),
    score=_score,
    validate=_validate,
)
