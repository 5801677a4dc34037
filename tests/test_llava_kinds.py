"""llava_json evaluation per question kind (the records' optional ``kind``/``type`` field), each kind next to
the majority answer of its TRAINING examples."""

import json

import pytest

from semrel_jax.config import defaults
from semrel_jax.data import images, registry


def _record(i, question, answer, **extra):
    return {"id": f"r{i}", **extra,
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


def _config(tmp_path, train, eval_records):
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "eval.json").write_text(json.dumps(eval_records))
    c = defaults.base_config()
    c.data.update(name="llava_json", train_file=str(tmp_path / "train.json"), eval_file=str(tmp_path / "eval.json"),
                  image_root=str(tmp_path))
    return c


TRAIN = [
    # count: "2" x3, "1" x1 -> majority "2";  left_of: "yes" x2, "no" x2 -> tie, alphabetically first "no"
    *(_record(i, "How many?", a, kind="count") for i, a in enumerate(["2", "2", "2", "1"])),
    *(_record(10 + i, "Is it left?", a, type="left_of") for i, a in enumerate(["Yes", "yes", "No", "no"])),
    _record(20, "Say hi", "2"),  # no kind: counts only overall, where "2" (4 of 9) is the majority
]
EVAL = [
    _record(0, "How many?", "2", kind="count"), _record(1, "How many?", "3", kind="count"),
    _record(2, "Is it left?", "no", type="left_of"), _record(3, "Is it left?", "yes", type="left_of"),
    _record(4, "Is it left?", "yes", type="left_of"), _record(5, "Say hi", "Hello"),
]


def test_exact_match_per_kind_beside_the_train_majority(tmp_path):
    c = _config(tmp_path, TRAIN, EVAL)
    train, evaluation = registry.build_sources(c)
    assert [evaluation.metadata(i)["kind"] for i in range(len(evaluation))] == ["count"] * 2 + ["left_of"] * 3 + [None]
    predictions = ["2", "2", " NO", "yes", "no", "hello"]  # count 1/2, left_of 2/3, the kind-less one right
    rows = [{"index": i, "prediction": p, **registry.describe(evaluation, i)} for i, p in enumerate(predictions)]
    report = registry.score(c, rows, train, evaluation)
    assert report == pytest.approx({
        "num_examples": 6.0,
        # the baseline answers each row with its kind's majority, the kind-less row with the overall one ("2")
        "accuracy/exact_match": 4 / 6, "majority_baseline/exact_match": 2 / 6,
        "accuracy/count": 1 / 2, "majority_baseline/count": 1 / 2,  # "2"
        "accuracy/left_of": 2 / 3, "majority_baseline/left_of": 1 / 3,  # "no"
    })


def test_without_kinds_only_the_overall_numbers(tmp_path):
    train = [_record(i, "Q?", a) for i, a in enumerate(["a", "b", "b"])]
    c = _config(tmp_path, train, train)
    train_source, evaluation = registry.build_sources(c)
    rows = [{"index": i, "prediction": "b", **registry.describe(evaluation, i)} for i in range(3)]
    assert registry.score(c, rows, train_source, evaluation) == pytest.approx(
        {"num_examples": 3.0, "accuracy/exact_match": 2 / 3, "majority_baseline/exact_match": 2 / 3})


@pytest.mark.parametrize("kind", [3, "", ["count"]])
def test_a_kind_that_is_not_a_name_is_a_malformed_record(tmp_path, kind):
    c = _config(tmp_path, [_record(0, "Q?", "a", kind=kind)], [])
    with pytest.raises(images.BadDataError, match="kind") as e:
        registry.build_sources(c)
    assert e.value.record_id == "r0" and e.value.reason == images.MALFORMED_RECORD
