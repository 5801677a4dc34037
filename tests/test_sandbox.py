"""A dataset file never makes a reader open a file outside its image root (records.path_inside).

Each reader is given records whose image path climbs out with ``..``, is absolute, or goes through a
symlink pointing outside; a real, readable image waits outside so that a leak would succeed. Under
``on_bad_data='error'`` the first such record raises naming it; under ``'skip'`` exactly those records
are left out as malformed and the good one stays.
"""

import json
import os

import pytest

import dataset_fixtures as fx
from semrel_jax import errors
from semrel_jax.data import coco_captions, images, llava_json, records, scienceqa, vqa_v2


@pytest.fixture
def outside(tmp_path):
    """A readable image outside every image root: what a leaking reader would open."""
    path = tmp_path / "secret" / "image.png"
    fx.write_image(str(path), 7)
    return path


def _dump(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def _refused(build, n_bad: int, n_good_examples: int):
    with pytest.raises(images.BadDataError, match="outside the image root|is absolute") as raised:
        build("error")
    assert raised.value.reason == images.MALFORMED_RECORD
    assert isinstance(raised.value, errors.DataError) and raised.value.exit_code == 3
    source = build("skip")
    assert source.skipped[images.MALFORMED_RECORD] == n_bad
    assert len(source) == n_good_examples
    return source


def test_path_inside_joins_and_refuses(tmp_path, outside):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    os.symlink(outside.parent, root / "sub" / "escape")
    os.symlink(root / "sub", root / "inner")  # a symlink that stays inside is fine
    assert records.path_inside(str(root), "sub", "a.png") == os.path.join(str(root), "sub", "a.png")
    assert records.path_inside(str(root), "inner/a.png") == os.path.join(str(root), "inner/a.png")
    assert records.path_inside(str(root), "sub/../sub/a.png").endswith("sub/../sub/a.png")
    for bad in (("../secret/image.png",), (str(outside),), ("sub", "escape", "image.png"), ("sub", "..", "..")):
        with pytest.raises(images.Malformed):
            records.path_inside(str(root), *bad)


def test_llava_image_paths_stay_under_the_root(tmp_path, outside):
    root = tmp_path / "llava"
    fx.write_image(str(root / "coco" / "a.png"), 1)
    os.symlink(outside, root / "coco" / "link.png")
    turn = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A thing."}]
    convs = [{"id": "good", "image": "coco/a.png", "conversations": turn},
             {"id": "dotdot", "image": "../secret/image.png", "conversations": turn},
             {"id": "absolute", "image": str(outside), "conversations": turn},
             {"id": "symlink", "image": "coco/link.png", "conversations": turn}]
    _dump(str(root / "llava.json"), convs)
    source = _refused(lambda policy: llava_json.LLaVAInstruct(str(root / "llava.json"), str(root), on_bad_data=policy), 3, 1)
    assert source.record_id(0) == "good"


def test_coco_file_names_stay_under_the_root(tmp_path, outside):
    root = tmp_path / "coco"
    fx.write_image(str(root / "train2014" / "a.jpg"), 1, fmt="JPEG")
    os.symlink(outside.parent, root / "linked")

    def entry(cocoid, filepath, filename):
        return {"filepath": filepath, "filename": filename, "split": "train", "cocoid": cocoid,
                "sentences": [{"raw": "A thing.", "tokens": ["a", "thing"]}]}

    _dump(str(root / "dataset_coco.json"), {"images": [
        entry(1, "train2014", "a.jpg"), entry(2, "..", "secret/image.png"), entry(3, "linked", "image.png"),
        entry(4, "train2014", str(outside)),
    ]})
    source = _refused(
        lambda policy: coco_captions.KarpathyCOCO(str(root / "dataset_coco.json"), str(root), "train", on_bad_data=policy),
        3, 1,
    )
    assert source.record_id(0) == 1


def test_scienceqa_pids_stay_under_the_images_folder(tmp_path, outside):
    root = tmp_path / "scienceqa"
    fx.write_image(str(root / "images" / "train" / "1" / "image.png"), 1)
    os.symlink(outside.parent, root / "images" / "train" / "3")
    problem = dict(question="Which is it?", choices=["a", "b"], answer=0, hint="", image="image.png", split="train",
                   subject="natural science", grade="grade1", lecture="", solution="")
    pids = ["1", os.path.join("..", "..", "..", "secret"), "3"]
    _dump(str(root / "problems.json"), {pid: problem for pid in pids})
    _dump(str(root / "pid_splits.json"), {"train": pids})
    source = _refused(lambda policy: scienceqa.ScienceQA(str(root), "train", on_bad_data=policy), 2, 1)
    assert source.record_id(0) == "1"


def test_vqa_image_ids_stay_under_the_image_folder(tmp_path, outside):
    root = tmp_path / "vqa"
    fx.write_image(str(root / "train2014" / vqa_v2.image_filename("train2014", 1)), 1, fmt="JPEG")
    os.symlink(outside, root / "train2014" / vqa_v2.image_filename("train2014", 2))  # a symlinked image file
    questions = [{"image_id": i, "question": "What is it?", "question_id": 10 + i} for i in (1, 2)]
    _dump(vqa_v2.questions_file(str(root), "train2014"), {"data_subtype": "train2014", "questions": questions})
    answers = [{"answer": "thing", "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)]
    _dump(vqa_v2.annotations_file(str(root), "train2014"), {"annotations": [
        {"question_id": 10 + i, "image_id": i, "multiple_choice_answer": "thing", "answers": answers,
         "answer_type": "other", "question_type": "what"} for i in (1, 2)
    ]})
    source = _refused(lambda policy: vqa_v2.VQAv2.from_root(str(root), "train2014", on_bad_data=policy), 1, 1)
    assert source.metadata(0)["question_id"] == 11
