"""VQA accuracy report and majority baseline, checked against hand counts."""

import pytest

from semrel_jax.evaluation import vqa


def test_majority_answers_break_ties_deterministically():
    records = [{"kind": "shape", "answer": a} for a in ["circle", "square", "square", "circle"]]
    records += [{"kind": "count", "answer": a} for a in ["2", "2", "3"]]
    assert vqa.majority_answers(records) == {"shape": "circle", "count": "2"}


def test_accuracy_report_by_family_and_kind():
    records = [
        {"family": "relational", "kind": "count", "answer": "2", "prediction": "2"},
        {"family": "relational", "kind": "count", "answer": "3", "prediction": "2"},
        {"family": "relational", "kind": "closest", "answer": "circle", "prediction": " Circle."},
        {"family": "non_relational", "kind": "shape", "answer": "square", "prediction": "circle"},
    ]
    report = vqa.accuracy_report(records, {"count": "2", "closest": "square", "shape": "square"})
    assert report["accuracy"] == pytest.approx(2 / 4)
    assert report["accuracy/relational"] == pytest.approx(2 / 3)
    assert report["accuracy/non_relational"] == 0.0
    assert report["accuracy/count"] == pytest.approx(1 / 2)
    assert report["majority_baseline/relational"] == pytest.approx(1 / 3)
    assert report["majority_baseline/shape"] == 1.0
    assert report["num_examples"] == 4
    with pytest.raises(ValueError, match="empty"):
        vqa.accuracy_report([], {})
