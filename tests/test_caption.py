"""The offline captioning task: descriptions follow the scene, and configs/caption.py runs end to end."""

import json
import os
import subprocess
import sys

import numpy as np

from semrel_jax.data import sort_of_clevr
from semrel_jax.data.sort_of_clevr_captions import SortOfClevrCaptions, describe

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
    from semrel_jax.training.train import format_results

    table = format_results({"cider": 1.234, "accuracy": 0.6, "majority_baseline": 0.4, "num_examples": 3.0})
    assert "cider                            1.234         -" in table
    assert "all                              0.600     0.400" in table
