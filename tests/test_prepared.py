"""Prepared copies (semrel_jax.data.tfds_copy): TFDS array_record, record-for-record equal to the raw sources.

The on-disk fixtures (tests/dataset_fixtures.py) carry bad records under ``on_bad_data='skip'``, so the
copies also hold examples the raw readers replaced at read time.
"""

import os
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import vqa  # configs/ is on sys.path (conftest)

import dataset_fixtures
from semrel_jax.data import pipeline, registry, scienceqa, tfds_copy
from semrel_jax.data.source import Source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("scienceqa", "vqa_v2", "coco_captions", "llava_json", "sort_of_clevr", "sort_of_clevr_captions")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return dataset_fixtures.write_all(tmp_path_factory.mktemp("formats"))


def _config(name, data, prepared_dir=""):
    c = vqa.get_config("tiny")
    c.data.update(name=name, prompt_format="raw", on_bad_data="skip", max_text_len=160, prepared_dir=prepared_dir)
    if name == "scienceqa":
        c.data.update(root=data[name]["root"], captions=data[name]["captions"], scienceqa_format="QCM-A")
    elif name == "vqa_v2":
        c.data.update(root=data[name]["root"], eval_split="train2014")
    elif name in ("coco_captions", "llava_json"):
        c.data.update(train_file=data[name]["json"], image_root=data[name]["root"])
    else:  # the built-in data, a handful of images
        c.data.update(train_images=4, eval_images=2, questions_per_image=4, max_text_len=40)
        c.data.prompt_format = "qa" if name == "sort_of_clevr" else "raw"
    c.model.encoders.vit.update(image_size=32, patch_size=8)
    return c


@pytest.fixture(scope="module")
def out(data, tmp_path_factory):
    """Every dataset prepared once, side by side in one directory."""
    out = str(tmp_path_factory.mktemp("prepared"))
    for name in NAMES:
        registry.prepare(_config(name, data), out, threads=2)
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key, value in a.items():
        if isinstance(value, np.ndarray):
            assert isinstance(b[key], np.ndarray) and b[key].dtype == value.dtype and b[key].flags.writeable, key
            np.testing.assert_array_equal(b[key], value, err_msg=key)
        else:
            assert type(b[key]) is type(value) and b[key] == value, (key, value, b[key])


@pytest.mark.parametrize("name", NAMES)
def test_every_record_reads_back_equal(data, out, name):
    raw = registry.build_sources(_config(name, data))
    copy = registry.build_sources(_config(name, data, prepared_dir=out))
    assert all(isinstance(s, tfds_copy.PreparedSource) for s in copy)
    for r, p in zip(raw, copy):
        assert isinstance(r, Source) and isinstance(p, Source)
        assert len(p) == len(r) > 0
        for i in range(len(r)):
            _assert_same(r[i], p[i])  # images pixel-equal, text and metadata equal, same key order
            _assert_same(r.metadata(i), p.metadata(i))
        assert list(p.texts()) == list(r.texts())
        assert p.scoring_data() == r.scoring_data()
        if name == "scienceqa":
            assert list(p.scoring_data()["problems"]) == list(r.problems) and r.problems
        _assert_same(r[len(r) - 1], pickle.loads(pickle.dumps(p))[len(r) - 1])
        with pytest.raises(IndexError):
            p[len(p)]


def test_metadata_spread_over_several_rows(data, tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_copy, "METADATA_CHUNK", 3)  # 16 train questions -> 6 *_metadata rows
    for name in ("sort_of_clevr", "vqa_v2"):
        c = _config(name, data)
        raw = registry.build_sources(c)
        registry.prepare(c, str(tmp_path), threads=1)
        c.data.prepared_dir = str(tmp_path)
        copy = registry.build_sources(c)
        assert list(copy[0].texts()) == list(raw[0].texts())
        for r, p in zip(raw, copy):
            for i in reversed(range(len(r))):
                _assert_same(r[i], p[i])
                _assert_same(r.metadata(i), p.metadata(i))


def test_images_are_stored_encoded_once_per_distinct_image(data, out):
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(tfds_copy.dataset_dir(out, "vqa_v2"))  # a plain TFDS dataset
    examples, images = builder.as_data_source("train"), builder.as_data_source("train_images")
    assert len(images) < len(examples)  # questions 10 and 11 share image 1
    assert images[0]["image"][:2] == b"\xff\xd8"  # the JPEG file's own bytes
    with open(os.path.join(data["vqa_v2"]["root"], "train2014", "COCO_train2014_000000000001.jpg"), "rb") as f:
        assert images[0]["image"] == f.read()
    clevr = tfds.builder_from_directory(tfds_copy.dataset_dir(out, "sort_of_clevr")).as_data_source("train_images")
    assert len(clevr) == 4 and clevr[0]["image"][:4] == b"\x89PNG"  # generated: lossless PNG
    assert "tensorflow" not in sys.modules  # written and read without TensorFlow


@pytest.mark.parametrize("name", ["scienceqa", "sort_of_clevr"])
def test_the_copy_feeds_the_same_batches(data, out, tmp_path, name):
    from semrel_jax import recipe

    raw_c, copy_c = _config(name, data), _config(name, data, prepared_dir=out)
    recipe.prepare_config(raw_c)
    registry.validate(copy_c)
    raw, copy = registry.build_sources(raw_c), registry.build_sources(copy_c)
    assert registry.vocabulary(copy_c, *copy) == registry.vocabulary(raw_c, *raw)
    tokenizer = recipe.build_tokenizer(raw_c, str(tmp_path), recipe.Data(*raw, None))
    featurizer = recipe.build_featurizer(raw_c, tokenizer)
    batches = [pipeline.training_dataset(s[0], featurizer.train, 4, seed=0)[0] for s in (raw, copy)]
    evals = [next(pipeline.evaluation_batches(s[1], featurizer.prompt, 4)) for s in (raw, copy)]
    for a, b in (batches, evals):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], dict):
                for enc in a[key]:
                    np.testing.assert_array_equal(a[key][enc], b[key][enc])
            else:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("name", ["scienceqa", "vqa_v2", "llava_json", "sort_of_clevr"])
def test_scoring_reads_the_copy_like_the_raw_source(data, out, name):
    reports = []
    for c in (_config(name, data), _config(name, data, prepared_dir=out)):
        train_source, eval_source = registry.build_sources(c)  # ScienceQA problems, Sort-of-CLEVR questions
        rows = [{"index": i, **registry.describe(eval_source, i)} for i in range(len(eval_source))]
        rows = [{**r, "prediction": "The answer is A." if name == "scienceqa" else str(r["answer"])} for r in rows]
        reports.append((rows, registry.score(c, rows, train_source, eval_source)))
    assert reports[1] == reports[0]


def test_grain_worker_processes_read_the_copy(data, out, tmp_path):
    from semrel_jax import recipe

    c = _config("scienceqa", data, prepared_dir=out)
    recipe.prepare_config(c)
    train_source, eval_source = registry.build_sources(c)
    featurizer = recipe.build_featurizer(c, recipe.build_tokenizer(c, str(tmp_path), recipe.Data(train_source, eval_source, None)))
    dataset = pipeline.training_dataset(train_source, featurizer.train, 2, seed=3)
    it = pipeline.iterate(dataset, start_step=1, num_workers=1)
    try:
        for step in (1, 2):
            batch = next(it)
            np.testing.assert_array_equal(np.asarray(batch["tokens"]), dataset[step]["tokens"])
            np.testing.assert_array_equal(np.asarray(batch["images"]["vit"]), dataset[step]["images"]["vit"])
    finally:
        it.close()


def test_preparing_again_is_a_no_op(data, out, monkeypatch):
    directory = tfds_copy.dataset_dir(out, "scienceqa")
    before = {f: os.stat(os.path.join(directory, f)).st_mtime_ns for f in os.listdir(directory)}
    c = _config("scienceqa", data)
    monkeypatch.setattr(scienceqa, "ScienceQA", lambda *a, **k: pytest.fail("a complete copy must not be rebuilt"))
    assert registry.prepare(c, out) == directory
    assert {f: os.stat(os.path.join(directory, f)).st_mtime_ns for f in os.listdir(directory)} == before


def test_incomplete_copies_are_detected_and_prepared_again(data, out, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    c = _config("llava_json", data, prepared_dir=copy)
    directory = tfds_copy.dataset_dir(copy, "llava_json")
    shard = os.path.join(directory, "semrel_prepared-train_images.array_record-00000")
    with open(shard, "r+b") as f:  # an interrupted copy of the directory: a shard cut short
        f.truncate(os.path.getsize(shard) // 2)
    shard_error = r"shard semrel_prepared-train_images\.array_record-00000 .*truncated"
    registry.validate(c)  # pure: the copy is checked when it is opened
    with pytest.raises(tfds_copy.PreparedDataError, match=re.escape(directory) + ".*" + shard_error):
        registry.build_sources(c)
    registry.prepare(c, copy, threads=1)  # detected and redone
    raw, again = registry.build_sources(_config("llava_json", data)), registry.build_sources(c)
    for r, p in zip(raw, again):
        for i in range(len(r)):
            _assert_same(r[i], p[i])

    # an interrupted preparation leaves only its incomplete.* directory, never the final one
    os.remove(os.path.join(directory, "semrel_prepared-eval.array_record-00000"))
    os.rename(directory, os.path.join(os.path.dirname(directory), "incomplete.0123_1.0.0"))
    with pytest.raises(tfds_copy.PreparedDataError, match="no prepared copy there.*interrupted preparation"):
        registry.build_sources(c)
    os.makedirs(directory)  # an empty (or half-written) final directory is not a copy either
    with pytest.raises(tfds_copy.PreparedDataError, match="dataset_info.json is missing"):
        registry.build_sources(c)


def test_missing_directory_or_other_settings_are_clear_errors(data, out, tmp_path):
    missing = str(tmp_path / "nowhere")
    c = _config("scienceqa", data, prepared_dir=missing)
    c.data.root = ""  # a copy is read without the raw files
    registry.validate(c)  # pure: nothing is read until the sources are opened
    no_dir = r"data\.prepared_dir=.*" + re.escape(missing) + ".* does not exist; prepare it first: .*semrel_jax.data.prepare"
    with pytest.raises(tfds_copy.PreparedDataError, match=no_dir):
        registry.build_sources(c)
    c.data.prepared_dir = out
    registry.build_sources(c)
    c.data.scienceqa_format = "CQM-A"  # other questions than the copy holds
    with pytest.raises(tfds_copy.PreparedDataError, match="scienceqa_format: prepared 'QCM-A', config 'CQM-A'"):
        registry.build_sources(c)
    other = _config("scienceqa", data)
    other.data.scienceqa_format = "CQM-A"
    with pytest.raises(tfds_copy.PreparedDataError, match="other data settings.*--overwrite"):
        registry.prepare(other, out)  # never silently replaced


def test_a_copy_of_another_format_is_refused_and_prepared_again(data, out, tmp_path, monkeypatch):
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    c = _config("scienceqa", data, prepared_dir=copy)
    monkeypatch.setattr(tfds_copy, "FORMAT", tfds_copy.FORMAT + 1)  # the copy is of the format before
    with pytest.raises(tfds_copy.PreparedDataError, match=f"not of format {tfds_copy.FORMAT}.*Prepare it"):
        registry.build_sources(c)
    registry.prepare(c, copy, threads=1)
    assert len(registry.build_sources(c)[0]) == len(registry.build_sources(_config("scienceqa", data))[0])


def test_command_line_prepares_what_the_config_names(data, tmp_path):
    target = str(tmp_path / "cli")
    cmd = [sys.executable, "-m", "semrel_jax.data.prepare", "--config=configs/vqa.py:tiny",
           "--config.data.name=scienceqa", f"--config.data.root={data['scienceqa']['root']}",
           "--config.data.on_bad_data=skip", f"--out={target}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"--config.data.prepared_dir={target}" in proc.stdout
    c = _config("scienceqa", data)
    c.data.captions = ""
    raw = registry.build_sources(c)
    c.data.prepared_dir = target
    for r, p in zip(raw, registry.build_sources(c)):
        assert len(p) == len(r)
        _assert_same(r[0], p[0])
