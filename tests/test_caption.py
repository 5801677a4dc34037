"""The offline captioning task: descriptions follow the scene, and configs/caption.py runs end to end."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from semrel_jax.data import sort_of_clevr
from semrel_jax.data.sort_of_clevr_captions import SortOfClevrCaptions, describe, describe_relations

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_description_matches_the_scene_and_the_vqa_answers():
    captions = SortOfClevrCaptions("train", 20)
    vqa = sort_of_clevr.SortOfClevr("train", 20)
    for i in range(20):
        example = captions[i]
        np.testing.assert_array_equal(example["image"], sort_of_clevr.render(vqa.scene(i)))  # the same images
        words = example["answer"].split()
        parts = [" ".join(words[i : i + 4]) for i in range(0, len(words), 4)]
        assert len(words) == 4 * len(sort_of_clevr.COLORS)
        assert [p.split()[0] for p in parts] == list(sort_of_clevr.COLORS)
        for q in vqa.questions(i):  # every non-relational VQA answer can be read off the caption
            color_part = parts[sort_of_clevr.COLORS.index(q.color)].split()
            if q.kind == "shape":
                assert color_part[1] == q.answer
            elif q.kind == "horizontal":
                assert color_part[3] == q.answer
            elif q.kind == "vertical":
                assert color_part[2] == q.answer
    assert describe(vqa.scene(0)) == captions[0]["answer"]


def test_relations_description_holds_every_relational_answer():
    captions = SortOfClevrCaptions("train", 30, kinds=("objects", "relations"))
    vqa = sort_of_clevr.SortOfClevr("train", 30)
    assert len(captions) == 60
    checked = 0
    for image in range(30):
        objects, relations = captions[2 * image], captions[2 * image + 1]
        assert objects["answer"] == describe(vqa.scene(image)) and objects["question"] == "describe the image ."
        assert relations["question"] == "describe the relations ." and relations["kind"] == "caption_relations"
        assert relations["image_id"] == objects["image_id"] == image
        np.testing.assert_array_equal(relations["image"], sort_of_clevr.render(vqa.scene(image)))
        words = relations["answer"].split()
        assert len(words) == 4 * len(sort_of_clevr.COLORS)
        rows = {words[k]: words[k + 1 : k + 4] for k in range(0, len(words), 4)}
        assert list(rows) == list(sort_of_clevr.COLORS)
        for q in vqa.questions(image):
            if q.family == "relational":
                assert rows[q.color][sort_of_clevr.RELATIONAL_KINDS.index(q.kind)] == q.answer
                checked += 1
    assert checked == 300
    # a hand-made scene: red at the origin, green near it, blue far away, the rest in between
    centers = np.array([[10, 10], [22, 10], [64, 64], [10, 40], [40, 10], [40, 40]])
    scene = sort_of_clevr.Scene(centers, ("square", "circle", "circle", "square", "square", "circle"), 75, 5)
    assert describe_relations(scene).split()[:4] == ["red", "circle", "circle", "2"]
    # scored per item, not per image: a right relations row and a wrong objects row of one image both count
    from semrel_jax.data import registry

    c = ml_collections.ConfigDict({"data": {"name": "sort_of_clevr_captions"}})
    rows = [{**registry.describe(captions, i), "prediction": captions[i]["answer"] if i % 2 else "red"} for i in range(4)]
    perfect = registry.score(c, rows[1::2], None, captions)
    mixed = registry.score(c, rows, None, captions)
    assert perfect["num_images"] == 2 and mixed["num_images"] == 4
    assert mixed["bleu_1"] < perfect["bleu_1"]
    for bad in ((), ("objects", "objects"), ("positions",)):
        with pytest.raises(ValueError, match="kinds"):
            SortOfClevrCaptions("train", 2, kinds=bad)


def test_caption_config_trains_and_reports_caption_metrics(tmp_path):
    cmd = [sys.executable, "-m", "semrel_jax.main", "--config=configs/caption.py:tiny", f"--workdir={tmp_path}",
           "--config.eval.num_examples=8", "--config.eval.max_new_tokens=8"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("bleu_1", "bleu_4", "rouge_l", "cider"):
        assert 0.0 <= results[key] <= 10.0
    assert results["num_images"] == 8


def test_result_table_shows_baselines_only_for_accuracies():
    from semrel_jax.evaluation.loop import format_results

    table = format_results({"cider": 1.234, "accuracy": 0.6, "majority_baseline": 0.4, "num_examples": 3.0})
    assert "cider                            1.234         -" in table
    assert "all                              0.600     0.400" in table
