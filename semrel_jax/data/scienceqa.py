"""ScienceQA (Lu et al., NeurIPS 2022) from its official release, with the LaVIN / MemVP prompt formats.

Files (the release as downloaded, under ``root``)::

    problems.json      {pid: {question, choices, answer (int), hint, image ("image.png" | null), task, grade,
                              subject, topic, category, skill, lecture, solution, split}}
    pid_splits.json    {"train": [pid, ...], "val": [...], "test": [...], "minival": [...], ...}
    images/<split>/<pid>/image.png       (<split> is the problem's own "split" field: train | val | test)
    captions.json      optional, {"captions": {pid: caption}} (pass ``captions_path``; in a config
                       ``data.captions``, and ``data.captions_for`` = both | eval | train)

Any key of ``pid_splits.json`` is a split (``minival``, ``trainval``, ... too). Problems whose ``image`` is
null are text-only examples: ``'image'`` None, ``'has_image'`` 0 (about half of ScienceQA).

Prompt formats (``prompt_format="<INPUT>-<OUTPUT>"``), as MemVP's ``util/base_prompt.py``
``create_training_example`` builds them (LaVIN's convention: the prompt ends with ``Response:``):

  INPUT (the ``'question'`` text; the parts are joined with newlines, then ``Response:``)
    ``QCM``  ``Question: {question}\\nContext: {context}\\nOptions: {options}\\nResponse:``
    ``CQM``  ``Context: {context}\\nQuestion: {question}\\nOptions: {options}\\nResponse:``
    ``QM``   ``Question: {question}\\nOptions: {options}\\nResponse:``
    ``Q``    ``Question: {question}\\nResponse:``
  OUTPUT (the ``'answer'`` text)
    ``A``    ``The answer is {letter}.``
    ``LA``   ``{lecture} The answer is {letter}.``
    ``EA``   ``{solution} The answer is {letter}.``
    ``LEA``  ``{lecture} {solution} The answer is {letter}.``
    ``ELA``  ``{solution} {lecture} The answer is {letter}.``

  so e.g. ``QCM-A`` (MemVP's and LaVIN's ScienceQA setting), ``CQM-A``, ``QCM-LEA`` and ``QCM-EA``.

* ``{options}``: ``(A) first (B) second ...``, letters A-E (ScienceQA has 2-5 choices; more is malformed).
* ``{context}``: the hint, followed by the image caption when ``captions_path`` is given (joined with one
  space, stripped); ``N/A`` when both are empty. Only formats with a ``C`` carry the context (and hence
  the caption).
* ``{lecture}`` / ``{solution}``: newlines written as the two characters ``\\n``, exactly as the reference
  code does (``get_lecture_text``/``get_solution_text``).
* As in the reference, each text then has every double space replaced by one space (one pass of
  ``str.replace("  ", " ")``) and is stripped.

The answer-first formats with ``BECAUSE:`` (``AL``, ``AE``, ``ALE``, ``AEL``) are not offered: upstream
they swap lecture and solution (``AL`` writes the solution) and never strip an empty ``BECAUSE:``.

Evaluation: each example carries ``pid``, ``choices``, ``answer_index``, ``label`` (the answer letter) and
the breakdown fields of the ScienceQA paper (``subject``, ``grade``, ``has_text`` = the hint is non-empty,
``has_image``, ``no_context``; also ``topic``, ``category``, ``skill``). ``source.problems`` maps the pid
of every example kept to its official problems.json entry, the input of the official-protocol scorer
``semrel_jax.evaluation.scienceqa.accuracy_report(predictions_by_pid, source.problems,
pids=source.problems)``. ``family`` and ``kind`` (subject and category) are the grouping keys
``evaluation.vqa.accuracy_report`` breaks accuracy down by.
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
from semrel_jax.evaluation import scienceqa as scienceqa_metric

OPTIONS: tuple[str, ...] = ("A", "B", "C", "D", "E")
INPUT_FORMATS: tuple[str, ...] = ("QCM", "CQM", "QM", "Q")
OUTPUT_FORMATS: tuple[str, ...] = ("A", "LA", "EA", "LEA", "ELA")
PROMPT_FORMATS: tuple[str, ...] = tuple(f"{i}-{o}" for i in INPUT_FORMATS for o in OUTPUT_FORMATS)

_STR_FIELDS = ("question", "hint", "lecture", "solution", "subject", "grade", "topic", "category", "skill", "task")


def check_prompt_format(prompt_format: str) -> tuple[str, str]:
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"Unknown ScienceQA prompt format {prompt_format!r}; expected one of {PROMPT_FORMATS}.")
    inp, out = prompt_format.split("-")
    return inp, out


def _clean(text: str) -> str:
    return text.replace("  ", " ").strip()


def context_text(hint: str, caption: str = "") -> str:
    return " ".join([hint, caption]).strip() or "N/A"


def choices_text(choices: list[str]) -> str:
    return " ".join(f"({OPTIONS[i]}) {c}" for i, c in enumerate(choices))


def build_prompt(problem: dict, prompt_format: str, caption: str = "") -> tuple[str, str]:
    """(question text, answer text) of one problem (a problems.json value) in ``prompt_format``."""
    inp, out = check_prompt_format(prompt_format)
    question = problem["question"]
    context = context_text(problem.get("hint") or "", caption)
    options = choices_text(problem["choices"])
    letter = OPTIONS[problem["answer"]]
    lecture = (problem.get("lecture") or "").replace("\n", "\\n")
    solution = (problem.get("solution") or "").replace("\n", "\\n")
    parts = {
        "QCM": [f"Question: {question}", f"Context: {context}", f"Options: {options}"],
        "CQM": [f"Context: {context}", f"Question: {question}", f"Options: {options}"],
        "QM": [f"Question: {question}", f"Options: {options}"],
        "Q": [f"Question: {question}"],
    }[inp]
    text = "\n".join(parts) + "\nResponse:"
    answer = f"The answer is {letter}."
    answer = {
        "A": answer,
        "LA": f"{lecture} {answer}",
        "EA": f"{solution} {answer}",
        "LEA": f"{lecture} {solution} {answer}",
        "ELA": f"{solution} {lecture} {answer}",
    }[out]
    return _clean(text), _clean(answer)


def _load_json(path: str, what: str) -> Any:
    return files.read_json(path, f"ScienceQA {what}")


class ScienceQA(RecordSource):
    """Random-access ScienceQA split (a grain ``RandomAccessDataSource``); one example per problem.

    Example: ``image`` (uint8 [H, W, 3] or None), ``has_image``, ``question`` (the formatted prompt),
    ``answer`` (the formatted target), ``index``, ``pid``, ``choices``, ``answer_index``, ``label``,
    ``subject``, ``grade``, ``topic``, ``category``, ``skill``, ``has_text``, ``no_context``, ``family``,
    ``kind``. Order: the order of ``pid_splits.json[split]``. Bad data: see ``semrel_jax.data.images``.
    """

    name = "scienceqa"

    def __init__(
        self,
        root: str,
        split: str,
        prompt_format: str = "QCM-A",
        captions_path: str | None = None,
        on_bad_data: str = "error",
        verify_images: bool = False,
    ) -> None:
        super().__init__(on_bad_data, verify_images)
        check_prompt_format(prompt_format)
        self.root, self.split, self.prompt_format, self.captions_path = root, split, prompt_format, captions_path
        problems = _load_json(os.path.join(root, "problems.json"), "problems.json")
        splits = _load_json(os.path.join(root, "pid_splits.json"), "pid_splits.json")
        if split not in splits:
            raise ValueError(f"ScienceQA split {split!r} is not in pid_splits.json; it has {sorted(splits)}.")
        captions: dict[str, str] = {}
        if captions_path:
            captions = _load_json(captions_path, "captions file")
            if not isinstance(captions, dict) or not isinstance(captions.get("captions"), dict):
                raise ValueError(f"{captions_path!r}: expected {{'captions': {{pid: caption}}}}.")
            captions = captions["captions"]

        def parse(pid, _):
            p = problems.get(pid)
            if not isinstance(p, dict):
                raise Malformed("pid listed in pid_splits.json but absent from problems.json" if p is None else "problem is not an object")
            for key in _STR_FIELDS:
                if not isinstance(p.get(key, ""), str) or (key == "question" and not p.get(key)):
                    raise Malformed(f"field {key!r} missing or not a string")
            choices, answer = p.get("choices"), p.get("answer")
            if not isinstance(choices, list) or not 2 <= len(choices) <= len(OPTIONS) or not all(isinstance(c, str) for c in choices):
                raise Malformed(f"'choices' must be a list of 2-{len(OPTIONS)} strings, got {choices!r}")
            if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
                raise Malformed(f"'answer' must index 'choices' (0..{len(choices) - 1}), got {answer!r}")
            image = p.get("image")
            if image is not None and (not isinstance(image, str) or not image):
                raise Malformed(f"'image' must be a file name or null, got {image!r}")
            caption = captions.get(pid, "") if captions else ""
            if not isinstance(caption, str):
                raise Malformed(f"caption is not a string: {caption!r}")
            question, answer_text = build_prompt(p, prompt_format, caption)
            images = os.path.join(root, "images")
            path = records.path_inside(images, p.get("split") or split, pid, image) if image else None
            hint = p.get("hint") or ""
            entry = (pid, question, answer_text, tuple(choices), answer, p.get("subject", ""), p.get("grade", ""),
                     p.get("topic", ""), p.get("category", ""), p.get("skill", ""), bool(hint))
            return path, [entry]

        pids = splits[split]
        if not isinstance(pids, list):
            raise ValueError(f"pid_splits.json[{split!r}] is not a list.")
        self._admit(((str(pid), None) for pid in pids), parse)
        # pid -> official problems.json entry, for every problem kept (in order; what scorers take)
        self.problems: dict[str, dict] = {pid: problems[pid] for pid in dict.fromkeys(self._record_ids)}

    def scoring_data(self) -> dict[str, Any]:
        """``{"problems": {pid: problems.json entry}}`` for every problem kept, in order (the scorer's input)."""
        return {"problems": self.problems}

    def __repr__(self) -> str:
        return (f"ScienceQA(root={self.root!r}, split={self.split!r}, prompt_format={self.prompt_format!r}, "
                f"captions_path={self.captions_path!r}, on_bad_data={self.on_bad_data!r}, len={len(self)})")

    def _fields(self, index: int) -> dict[str, Any]:
        pid, question, answer, choices, answer_index, subject, grade, topic, category, skill, has_text = self._entries[index]
        has_image = self._paths[index] is not None
        return {
            "question": question,
            "answer": answer,
            "index": index,
            "pid": pid,
            "choices": list(choices),
            "answer_index": answer_index,
            "label": OPTIONS[answer_index],
            "subject": subject,
            "grade": grade,
            "topic": topic,
            "category": category,
            "skill": skill,
            "has_text": int(has_text),
            "no_context": int(not has_text and not has_image),
            "family": subject,
            "kind": category,
        }


# ---------------------------------------------------------------------------------------------- the dataset


CAPTIONS_FOR: tuple[str, ...] = ("both", "eval", "train")


def _validate(c: ml_collections.ConfigDict) -> None:
    records.validate(c, "scienceqa", ("root",))
    errors.one_of(c, "data.scienceqa_format", PROMPT_FORMATS)
    errors.one_of(c, "data.captions_for", CAPTIONS_FOR)


def captions_paths(d: ml_collections.ConfigDict) -> tuple[str | None, str | None]:
    """The captions file of the (train, eval) sources: ``data.captions`` (relative to ``data.root``), each
    side only when ``data.captions_for`` names it (the release: evaluation only)."""
    path = os.path.join(d.root, d.captions) if d.captions else None
    return (path if d.captions_for in ("both", "train") else None, path if d.captions_for in ("both", "eval") else None)


def _build(c: ml_collections.ConfigDict) -> tuple[ScienceQA, ScienceQA]:
    d = c.data
    train_policy, eval_policy = records.policies(d.on_bad_data)
    train, evaluation = DATASET.split_names(d)
    fmt, (train_captions, eval_captions) = d.scienceqa_format, captions_paths(d)
    return (ScienceQA(d.root, train, fmt, train_captions, **train_policy),
            ScienceQA(d.root, evaluation, fmt, eval_captions, **eval_policy))


def _record_settings(c: ml_collections.ConfigDict) -> dict:
    d = c.data
    return DATASET.split_settings(d, scienceqa_format=d.scienceqa_format,
                                  captions=bool(d.captions),  # whether a captions file was used
                                  captions_for=d.captions_for)


def _score(rows: Sequence[dict], train_source, eval_source) -> dict[str, float]:
    del train_source
    predictions = {r["pid"]: r["prediction"] for r in rows}
    problems = eval_source.scoring_data()["problems"]
    return scienceqa_metric.accuracy_report(predictions, problems, split=None, pids=list(predictions))


DATASET = Dataset(
    name="scienceqa",
    # captions: a captions.json ({"captions": {pid: text}}; a relative path is under data.root) whose caption
    # joins each problem's context; captions_for: the sources that use it ('eval' is the release's protocol)
    defaults=dict(scienceqa_format="QCM-A", captions="", captions_for="both"),
    build=_build,
    record_settings=_record_settings,
    score=_score,
    validate=_validate,
)
