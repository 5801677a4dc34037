"""Exact-match VQA accuracy, broken down by question family and kind, beside a majority baseline.

The baseline predicts, for each question kind, the answer most frequent in the TRAINING split: the
best a model can do from the question type alone, which is what "above the majority baseline" must
beat (for Sort-of-CLEVR it is ~50-60% on most kinds).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable


def normalize(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


def majority_answers(records: Iterable[dict]) -> dict[str, str]:
    """kind -> most frequent answer among ``records`` (dicts with 'kind' and 'answer')."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in records:
        counts[r["kind"]][normalize(r["answer"])] += 1
    # Ties are broken by the answer text so the baseline is deterministic.
    return {kind: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for kind, c in counts.items()}


def accuracy_report(records: list[dict], majority: dict[str, str]) -> dict[str, float]:
    """records: dicts with 'family', 'kind', 'answer', 'prediction'.

    Returns flat metrics: ``accuracy``, ``accuracy/<family>``, ``accuracy/<kind>``, the same keys
    under ``majority_baseline/``, and ``num_examples``.
    """
    if not records:
        raise ValueError("No evaluation records: the evaluation split is empty.")
    groups: dict[str, list[tuple[bool, bool]]] = collections.defaultdict(list)
    for r in records:
        truth = normalize(r["answer"])
        hit = normalize(r["prediction"]) == truth
        baseline_hit = majority.get(r["kind"]) == truth
        for key in ("all", r["family"], r["kind"]):
            groups[key].append((hit, baseline_hit))
    report: dict[str, float] = {"num_examples": float(len(records))}
    for key, hits in sorted(groups.items()):
        suffix = "" if key == "all" else f"/{key}"
        report[f"accuracy{suffix}"] = sum(h for h, _ in hits) / len(hits)
        report[f"majority_baseline{suffix}"] = sum(b for _, b in hits) / len(hits)
    return report
