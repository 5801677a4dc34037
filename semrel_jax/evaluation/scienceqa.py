"""ScienceQA multiple-choice accuracy, overall and by the categories of the LaVIN / MemVP / LLaVA tables.

Categories (the columns of every ScienceQA table since the benchmark paper):

* NAT / SOC / LAN: ``subject`` is "natural science" / "social science" / "language science".
* TXT: the problem has a text context, i.e. ``hint`` is non-empty.
* IMG: the problem has an image context, i.e. ``image`` is set (a file name, not null / "").
* NO: no context at all, neither a hint nor an image.
* G1-6 / G7-12: ``grade`` is one of "grade1".."grade6" / "grade7".."grade12".

TXT and IMG overlap (a problem with both a hint and an image counts in both); NO is disjoint from both.
These are the definitions of the official scorer, lupantech/ScienceQA ``tools/evaluate_acc.py``
(``has_text = bool(hint)``, ``has_image = bool(image)``, ``no_context = not hint and not image``,
grade lists grade1..grade6 / grade7..grade12), which LLaVA, LaVIN and MemVP report.

Answer extraction from generated text follows LLaVA's ``llava/eval/eval_science_qa.py``:

1. newlines become ". ";
2. the stripped text is a bare option letter ("A".."E") -> that letter;
3. the text starts with a letter followed by ". " ("B. dog") -> that letter;
4. the text contains "The answer is X." or, failing that, "The answer is X" (X in A..E) -> X;
5. anything else is unparsed.

An unparsed prediction is counted wrong and in ``num_unparsed``; it is never mapped to an option.
A letter past the problem's last choice (e.g. "D" for a 3-choice problem) is counted wrong and in
``num_invalid_option``. A problem with no prediction is counted wrong and in ``num_missing`` (LLaVA
scores it as the text "FAILED"). Like LLaVA's rule 4, "The answer is Apple" yields "A": the quirk
is kept so numbers stay comparable with published LLaVA-protocol results.

Predictions may also be integers (a choice index, e.g. from ranking choices by likelihood).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping

OPTIONS = ("A", "B", "C", "D", "E")

# Report keys, in the column order of the LaVIN / MemVP tables (average last there).
CATEGORIES = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")

_SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
_LOWER_GRADES = frozenset(f"grade{g}" for g in range(1, 7))
_UPPER_GRADES = frozenset(f"grade{g}" for g in range(7, 13))
_ANSWER_IS_PERIOD = re.compile(r"The answer is ([A-E])\.")
_ANSWER_IS = re.compile(r"The answer is ([A-E])")


def extract_letter(text: str) -> str | None:
    """The option letter a generated answer names, by LLaVA's rules (module docstring); None if none."""
    text = text.replace("\n", ". ")
    if text.strip() in OPTIONS:
        return text.strip()
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    match = _ANSWER_IS_PERIOD.search(text) or _ANSWER_IS.search(text)
    return match.group(1) if match else None


def categories(problem: Mapping) -> list[str]:
    """The ScienceQA categories (of ``CATEGORIES``) one problems.json entry belongs to."""
    cats = []
    subject = _SUBJECTS.get(problem.get("subject"))
    if subject:
        cats.append(subject)
    has_text, has_image = bool(problem.get("hint")), bool(problem.get("image"))
    if has_text:
        cats.append("TXT")
    if has_image:
        cats.append("IMG")
    if not has_text and not has_image:
        cats.append("NO")
    grade = problem.get("grade")
    if grade in _LOWER_GRADES:
        cats.append("G1-6")
    elif grade in _UPPER_GRADES:
        cats.append("G7-12")
    return cats


def accuracy_report(
    predictions: Mapping[str, str | int],
    problems: Mapping[str, Mapping],
    *,
    split: str | None = "test",
    pids: Iterable[str] | None = None,
) -> dict[str, float]:
    """Score ``predictions`` (pid -> generated text / option letter / choice index) on ScienceQA.

    problems: the official ``problems.json`` dict (pid -> problem with ``choices``, ``answer`` index,
    ``hint``, ``image``, ``subject``, ``grade``, ``split``). The evaluated problems are ``pids`` when
    given (e.g. ``pid_splits.json[split]``), else those whose ``split`` field equals ``split``, else
    (``split=None``) all of them. Predictions for other problems are ignored and counted in
    ``num_ignored_predictions``; a pid absent from ``problems`` is an error.

    Returns fractions in [0, 1]: ``accuracy``, ``accuracy/<category>`` (NaN for a category with no
    problem), ``num_examples``, ``num_examples/<category>``, ``num_unparsed``, ``num_invalid_option``,
    ``num_missing`` and ``num_ignored_predictions``.
    """
    unknown = [pid for pid in predictions if pid not in problems]
    if unknown:
        raise ValueError(f"{len(unknown)} predictions for pids not in problems.json, e.g. {unknown[:3]}")
    if pids is not None:
        selected = list(dict.fromkeys(pids))
        missing_problems = [pid for pid in selected if pid not in problems]
        if missing_problems:
            raise ValueError(f"pids not in problems.json, e.g. {missing_problems[:3]}")
    elif split is not None:
        selected = [pid for pid, p in problems.items() if p.get("split") == split]
    else:
        selected = list(problems)
    if not selected:
        raise ValueError(f"No ScienceQA problems to evaluate (split={split!r}, pids={pids!r}).")

    hits: dict[str, list[bool]] = {key: [] for key in ("all",) + CATEGORIES}
    num_unparsed = num_invalid = num_missing = 0
    for pid in selected:
        problem = problems[pid]
        num_choices = len(problem["choices"])
        prediction = predictions.get(pid)
        index = None
        if prediction is None:
            num_missing += 1
        elif isinstance(prediction, numbers.Integral):
            index = int(prediction)
        else:
            letter = extract_letter(prediction)
            if letter is None:
                num_unparsed += 1
            else:
                index = OPTIONS.index(letter)
        if index is not None and not 0 <= index < num_choices:
            num_invalid += 1
            index = None
        hit = index is not None and index == problem["answer"]
        for key in ["all"] + categories(problem):
            hits[key].append(hit)

    selected_set = set(selected)
    report: dict[str, float] = {
        "accuracy": sum(hits["all"]) / len(hits["all"]),
        "num_examples": float(len(selected)),
        "num_unparsed": float(num_unparsed),
        "num_invalid_option": float(num_invalid),
        "num_missing": float(num_missing),
        "num_ignored_predictions": float(sum(pid not in selected_set for pid in predictions)),
    }
    for cat in CATEGORIES:
        group = hits[cat]
        report[f"accuracy/{cat}"] = sum(group) / len(group) if group else math.nan
        report[f"num_examples/{cat}"] = float(len(group))
    return report


def format_table_row(report: Mapping[str, float]) -> str:
    """The report as a LaVIN / MemVP table row, in percent: NAT SOC LAN TXT IMG NO G1-6 G7-12 Avg."""
    header = " | ".join(f"{c:>6}" for c in CATEGORIES + ("Avg",))
    values = [report[f"accuracy/{c}"] for c in CATEGORIES] + [report["accuracy"]]
    row = " | ".join(f"{100 * v:6.2f}" for v in values)
    return f"{header}\n{row}"
