"""The whole path on each official format: read -> batch -> train steps -> generate -> the dataset's metric.

Fixtures are small schema-faithful copies of each format (tests/dataset_fixtures.py), with bad records the
``skip`` policy drops and counts.
"""

import json
import os

import pytest
import vqa  # configs/ is on sys.path (conftest)

import dataset_fixtures
from semrel_jax.data import registry
from semrel_jax.data.images import BadDataError
from semrel_jax.errors import ConfigError
from semrel_jax.training import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return dataset_fixtures.write_all(tmp_path_factory.mktemp("formats"))


def _config(name, data):
    c = vqa.get_config("tiny")
    c.data.update(name=name, prompt_format="raw", on_bad_data="skip", max_text_len=160)
    if name == "scienceqa":
        c.data.update(root=data[name]["root"], scienceqa_format="QCM-A")
    elif name == "vqa_v2":
        c.data.update(root=data[name]["root"], eval_split="train2014")
    else:
        c.data.update(train_file=data[name]["json"], image_root=data[name]["root"])
    c.model.encoders.vit.update(image_size=32, patch_size=8)
    c.train.update(batch_size=2, num_steps=2, warmup_steps=1, checkpoint_every=2)
    c.eval.update(batch_size=2, num_examples=0, max_new_tokens=4)
    return c


EXPECTED_KEYS = {
    "scienceqa": ("accuracy", "accuracy/NAT", "accuracy/IMG", "accuracy/G1-6", "num_unparsed"),
    "vqa_v2": ("accuracy", "accuracy/yes_no", "accuracy/number", "accuracy/other"),
    "coco_captions": ("bleu_4", "cider", "rouge_l"),
    "llava_json": ("accuracy/exact_match",),
}


@pytest.mark.parametrize("name", list(EXPECTED_KEYS))
def test_train_and_evaluate_on_each_format(data, tmp_path, name):
    c = _config(name, data)
    workdir = str(tmp_path / name)
    results = train.train_and_evaluate(c, workdir)
    for key in EXPECTED_KEYS[name]:
        assert key in results, (key, sorted(results))
    with open(os.path.join(workdir, "predictions.json")) as f:
        predictions = json.load(f)
    assert predictions and all("prediction" in p for p in predictions)
    assert len(predictions) == results.get("num_examples", results.get("num_images"))


def test_bad_record_under_the_error_policy_names_it(data):
    c = _config("scienceqa", data)
    c.data.on_bad_data = "error"
    with pytest.raises(BadDataError, match=r"bad record '\d+' \[(malformed_record|missing_file)\]"):
        registry.build_sources(c)


def test_real_datasets_need_their_paths_and_the_raw_format(data):
    c = _config("coco_captions", data)
    c.data.train_file = ""
    with pytest.raises(ConfigError, match="data.train_file"):
        registry.validate(c)
    c.data.prepared_dir = "/a/copy"  # a copy is read without the raw files
    registry.validate(c)
    c = _config("scienceqa", data)
    c.data.prompt_format = "qa"
    with pytest.raises(ConfigError, match="data.prompt_format"):
        registry.validate(c)
