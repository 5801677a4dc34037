"""eval.image_control: every question answered again about another example's image, the scores reported beside
the model's (a model that reads the image must score lower there; one that ignores it scores the same)."""

import json

import numpy as np
import pytest
from PIL import Image

from semrel_jax import recipe
from semrel_jax.config import defaults
from semrel_jax.evaluation import loop


def _bright_dark_set(tmp_path, n=8):
    """``n`` one-question records ("Bright or dark?"), the first half of the images white, the second black."""
    records = []
    for i in range(n):
        bright = i < n // 2
        Image.new("RGB", (16, 16), (255, 255, 255) if bright else (0, 0, 0)).save(tmp_path / f"{i}.png")
        records.append({"id": f"r{i}", "image": f"{i}.png", "kind": "brightness", "conversations": [
            {"from": "human", "value": "<image>\nBright or dark?"},
            {"from": "gpt", "value": "bright" if bright else "dark"}]})
    (tmp_path / "set.json").write_text(json.dumps(records))
    c = defaults.base_config()
    c.data.update(name="llava_json", train_file=str(tmp_path / "set.json"), image_root=str(tmp_path), prompt_format="raw")
    c.model.encoders.vit.update(image_size=15, patch_size=15)
    c.eval.update(batch_size=3, image_control=True)  # batches that straddle the two halves of the split
    recipe.prepare_config(c)
    return c


def _answering(reads_image: bool, tokenizer):
    """A stand-in for generation: "bright" when the row's image is (or, ignoring it, always) bright."""
    bright, dark = (tokenizer.convert_tokens_to_ids(w) for w in ("bright", "dark"))

    def generate_ids(c, graphdef, states, inputs, eos_id, key_offset=0):
        mean = np.asarray(inputs["images"]["vit"]).mean((1, 2, 3))
        answer = np.where(mean > 0.5, bright, dark) if reads_image else np.full(len(mean), bright)
        return np.stack([answer, np.full(len(mean), eos_id)], axis=1)

    return generate_ids


@pytest.mark.parametrize("reads_image,accuracy,control", [(True, 1.0, 0.0), (False, 0.5, 0.5)])
def test_the_image_control_scores_the_other_images_answers(tmp_path, monkeypatch, reads_image, accuracy, control):
    c = _bright_dark_set(tmp_path)
    data = recipe.build_data(c)
    tokenizer = recipe.build_tokenizer(c, str(tmp_path), data)
    monkeypatch.setattr(loop, "generate_ids", _answering(reads_image, tokenizer))
    results = loop.evaluate(c, None, (), recipe.build_featurizer(c, tokenizer), tokenizer, data, str(tmp_path))
    assert results["accuracy/exact_match"] == results["accuracy/brightness"] == accuracy
    assert results["image_control/accuracy/exact_match"] == results["image_control/accuracy/brightness"] == control
    assert "image_control/majority_baseline/exact_match" not in results
    # predictions.json holds the model's own answers, not the control's
    saved = json.loads((tmp_path / "predictions.json").read_text())
    assert [p["prediction"] for p in saved] == (["bright"] * 4 + ["dark"] * 4 if reads_image else ["bright"] * 8)
    table = loop.format_results(results)
    assert "other image" in table and f"{control:.3f}" in table.splitlines()[2]


def test_other_images_pairs_each_example_with_the_one_half_the_split_away(tmp_path):
    c = _bright_dark_set(tmp_path, n=5)
    evaluation = recipe.build_data(c).eval
    other = loop.OtherImages(evaluation)
    assert len(other) == 5
    for i in range(5):
        assert other[i]["answer"] == evaluation[i]["answer"]
        np.testing.assert_array_equal(other[i]["image"], evaluation[(i + 2) % 5]["image"])



def test_other_images_of_a_source_without_has_image_are_images(tmp_path):
    """Sort-of-CLEVR's examples carry no has_image field (the featurizer reads it as 1): the control keeps them
    image examples (the scratch preset's default data crashed at its evaluation before)."""
    c = defaults.base_config()
    c.data.update(name="sort_of_clevr", train_images=2, eval_images=2)
    evaluation = recipe.build_data(c).eval
    assert "has_image" not in evaluation[0]
    other = loop.OtherImages(evaluation)
    n = len(evaluation)
    assert other[0]["has_image"] == 1 and other[0]["question"] == evaluation[0]["question"]
    np.testing.assert_array_equal(other[0]["image"], evaluation[n // 2]["image"])
