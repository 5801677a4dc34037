"""The readers of what SemVLP pre-trains and evaluates on, on schema-faithful fixtures (tests/semvlp_fixtures.py):
NLVR2, Flickr30K (Karpathy), Visual Genome regions and QA, GQA, region features (npz and LXMERT TSV).

Each: the records' contents, the bad-data policy (counts per reason under ``skip``, the record named under
``error``), the image-root sandbox, a damaged file named with line and column, and the registry path
(validate -> build -> score) where the dataset is registered.
"""

import os

import numpy as np
import pytest
import vqa  # configs/ is on sys.path (conftest)

import semvlp_fixtures as fx
from semrel_jax import errors
from semrel_jax.data import flickr30k, gqa, nlvr2, records, region_features, registry, visual_genome
from semrel_jax.data.images import CORRUPT_IMAGE, MALFORMED_RECORD, MISSING_FILE, BadDataError
from semrel_jax.evaluation import captioning


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("semvlp_formats")
    return {
        "nlvr2": fx.write_nlvr2(str(root / "nlvr2")),
        "flickr30k": fx.write_flickr30k(str(root / "flickr30k")),
        "visual_genome": fx.write_visual_genome(str(root / "vg")),
        "gqa": fx.write_gqa(str(root / "gqa")),
        "features": fx.write_region_features(str(root / "features")),
    }


def _config(name: str, **data_keys):
    c = vqa.get_config("tiny")
    c.data.update(name=name, prompt_format="raw", on_bad_data="skip", **data_keys)
    registry.validate(c)
    return c


def _skipped(source) -> dict:
    return {reason: count for reason, count in source.skipped.items() if count}


# ------------------------------------------------------------------ NLVR2


def test_nlvr2_pairs_labels_and_the_bad_data_policy(data):
    root = data["nlvr2"]["root"]
    train = nlvr2.NLVR2.from_root(root, "train", on_bad_data="skip")
    # built: the label 'maybe' and the escaping directory are malformed, the missing right image is missing
    assert _skipped(train) == {MALFORMED_RECORD: 2, MISSING_FILE: 1}
    assert [train.metadata(i)["identifier"] for i in range(len(train))] == ["train-1-0-0", "train-1-0-1", "train-3-0-0"]
    first = train[0]
    assert first["image"].shape == (24, 32 + 28, 3)  # side by side, the shorter one padded at the bottom
    assert not first["image"][20:, 32:].any() and (first["left_size"], first["right_size"]) == ([24, 32], [20, 28])
    left, right = nlvr2.split_pair(first)
    np.testing.assert_array_equal(left, data["nlvr2"]["left"])
    np.testing.assert_array_equal(right, data["nlvr2"]["right"])
    assert {k: first[k] for k in ("sentence", "answer", "label", "pair", "index")} == {
        "sentence": "There are two dogs.", "answer": "true", "label": 1, "pair": "train-1-0", "index": 0}
    assert first["question"] == "There are two dogs." + nlvr2.QUESTION_SUFFIX
    assert train[1]["answer"] == "false" and train[1]["pair"] == "train-1-0"
    # read: the corrupt right image of train-3-0-0 is found now; the next readable example serves its index
    served = train[2]
    assert served["identifier"] == "train-1-0-0" and _skipped(train)[CORRUPT_IMAGE] == 1
    # the eval policy decodes both images of every pair up front instead
    _, eval_policy = records.policies("skip")
    exact = nlvr2.NLVR2.from_root(root, "train", **eval_policy)
    assert len(exact) == 2 and _skipped(exact) == {MALFORMED_RECORD: 2, MISSING_FILE: 1, CORRUPT_IMAGE: 1}


def test_nlvr2_errors_name_the_record_the_escape_and_the_damaged_line(data, tmp_path):
    root = data["nlvr2"]["root"]
    with pytest.raises(BadDataError, match=r"bad record 'train-4-0-0' \[malformed_record\].*'label'"):
        nlvr2.NLVR2.from_root(root, "train")
    lines = open(os.path.join(root, "train.json")).read().splitlines()
    escape = tmp_path / "escape.json"
    escape.write_text(lines[-1] + "\n")
    with pytest.raises(BadDataError, match=r"'train-5-0-0' \[malformed_record\].*outside the image root"):
        nlvr2.NLVR2(str(escape), os.path.join(root, "images", "train"))
    missing = tmp_path / "missing.json"
    missing.write_text(lines[2] + "\n")
    with pytest.raises(BadDataError, match=r"'train-2-1-0' \[missing_file\].*right image .*train-2-1-img1\.png"):
        nlvr2.NLVR2(str(missing), os.path.join(root, "images", "train"))
    damaged = tmp_path / "damaged.json"
    damaged.write_text(lines[0] + "\n" + lines[1][:40] + "\n")
    with pytest.raises(errors.DataError, match=rf"{damaged}: the NLVR2 statements file is not valid JSON .*line 2, column"):
        nlvr2.NLVR2(str(damaged), os.path.join(root, "images", "train"))


def test_nlvr2_through_the_registry_scores_accuracy_and_consistency(data):
    c = _config("nlvr2", root=data["nlvr2"]["root"])
    train, dev = registry.build_sources(c)
    assert (len(train), len(dev)) == (3, 3)
    truth = [dev.metadata(i)["answer"] for i in range(3)]
    assert truth == ["true", "false", "true"]
    # the shared sentence 'dev-10-*-0' is right on one pair only: accuracy 2/3, consistency 1/2
    rows = [{**registry.describe(dev, i), "prediction": p} for i, p in enumerate(["True", "true", "true"])]
    report = registry.score(c, rows, train, dev)
    assert report["accuracy"] == pytest.approx(2 / 3) and report["consistency"] == pytest.approx(0.5)
    assert report["majority_baseline"] == pytest.approx(1 / 3)  # two of the three train statements are false
    c.data.eval_split = "test"
    with pytest.raises(errors.ConfigError, match="data.eval_split"):
        registry.validate(c)


# ------------------------------------------------------------------ Flickr30K


def test_flickr30k_captions_retrieval_texts_and_bad_records(data):
    paths = data["flickr30k"]
    train = flickr30k.Flickr30K(paths["json"], paths["images"], "train", on_bad_data="skip")
    assert _skipped(train) == {MALFORMED_RECORD: 1, MISSING_FILE: 1}  # ../1002.jpg escapes; 1001.jpg is absent
    assert [train[i]["answer"] for i in range(len(train))] == ["Two men play guitar.", "Musicians on a stage."]
    assert train.metadata(0)["image_id"] == "1000" and "cocoid" not in train.metadata(0)
    test = flickr30k.Flickr30K(paths["json"], paths["images"], "test", "eval")
    assert len(test) == 2 and test[0]["references"] == ["A red boat.", "A boat on a lake.", "Someone rows a boat."]
    assert test[1]["image"].shape == (24, 32, 3)
    # Retrieval's gallery: every caption of each image, from either mode (train: one example per caption)
    from semrel_jax.data import semvlp_records, semvlp_scenes

    for source in (test, flickr30k.Flickr30K(paths["json"], paths["images"], "test")):
        rows = semvlp_records.RecordRows(semvlp_scenes.word_tokenizer(), captions=source, image_size=32, patch_size=8)
        images, texts, image_of = rows.retrieval(0, 2)
        assert len(images) == 2 and images[1]["image"].shape == (32, 32, 3)
        assert texts[:1] + texts[3:] == ["A red boat.", "A snowy road.", "Cars in snow."], texts
        assert image_of.tolist() == [0, 0, 0, 1, 1]
    assert rows.retrieval(0, 1)[1] == test[0]["references"]  # one image: its three captions
    with pytest.raises(BadDataError, match=r"bad record '\.\./1002\.jpg' \[malformed_record\].*outside the image root"):
        flickr30k.Flickr30K(paths["json"], paths["images"], "train")
    with pytest.raises(ValueError, match="Unknown Flickr30K split 'restval'"):
        flickr30k.Flickr30K(paths["json"], paths["images"], "restval")


def test_flickr30k_through_the_registry_scores_captions(data, monkeypatch):
    monkeypatch.setattr(captioning, "java_available", lambda: False)  # no METEOR jar (~15 CPU-s) in a unit test
    paths = data["flickr30k"]
    c = _config("flickr30k", train_file=paths["json"], image_root=paths["images"])
    train, test = registry.build_sources(c)
    assert (len(train), len(test)) == (2, 2)
    rows = [{**registry.describe(test, i), "prediction": test[i]["references"][0]} for i in range(2)]
    report = registry.score(c, rows, train, test)
    assert report["bleu_1"] > 0.99 and report["rouge_l"] > 0.99 and report["num_images"] == 2


# ------------------------------------------------------------------ Visual Genome


def test_visual_genome_regions_boxes_splits_and_bad_records(data):
    root = data["visual_genome"]["root"]
    path = os.path.join(root, visual_genome.REGIONS_FILE)
    regions = visual_genome.VGRegions(path, root, "train", on_bad_data="skip")
    # malformed: the width-0 region and the list entry that is not an object; missing: image 3
    assert _skipped(regions) == {MALFORMED_RECORD: 2, MISSING_FILE: 1}
    assert [regions.metadata(i)["region_id"] for i in range(len(regions))] == [11, 21]
    first = regions[0]
    assert {k: first[k] for k in ("answer", "box", "image_id", "question")} == {
        "answer": "a red car", "box": [2, 3, 12, 11], "image_id": 1, "question": "Describe the region [2, 3, 12, 11]."}
    assert regions.image_path(1).endswith(os.path.join("VG_100K_2", "2.jpg"))  # found in the second folder
    val = visual_genome.VGRegions(path, root, "val", on_bad_data="skip")
    assert [val.metadata(i)["region_id"] for i in range(len(val))] == [501]  # id 50: our held-out images
    with pytest.raises(BadDataError, match=r"bad record 12 \[malformed_record\].*positive size"):
        visual_genome.VGRegions(path, root, "train")


def test_visual_genome_qa_through_the_registry(data):
    root = data["visual_genome"]["root"]
    c = _config("visual_genome", root=root)
    train, val = registry.build_sources(c)
    assert _skipped(train) == {MALFORMED_RECORD: 1, MISSING_FILE: 1}
    assert [train.metadata(i)["qa_id"] for i in range(len(train))] == [101, 201, 401]
    assert {k: train[1][k] for k in ("question", "answer", "image_id", "family")} == {
        "question": "Where is the dog?", "answer": "On the grass.", "image_id": 2, "family": "where"}
    assert train[2]["qa_id"] == 101 and _skipped(train)[CORRUPT_IMAGE] == 1  # 401's image is corrupt: 101 serves
    assert len(val) == 1 and val.metadata(0)["family"] == "how"
    rows = [{**registry.describe(val, 0), "prediction": "two"}]  # exact match, case and final '.' aside
    assert registry.score(c, rows, train, val)["accuracy"] == 1.0
    c.data.train_split = "everything"
    with pytest.raises(errors.ConfigError, match="data.train_split"):
        registry.validate(c)


# ------------------------------------------------------------------ GQA


def test_gqa_questions_types_parts_and_bad_records(data):
    root = data["gqa"]["root"]
    train = gqa.GQA.from_root(root, "train_balanced", on_bad_data="skip")
    # malformed: the imageId climbing out of images/ (a file waits there) and the missing question; missing: 999
    assert _skipped(train) == {MALFORMED_RECORD: 2, MISSING_FILE: 1}
    first = train[0]
    assert {k: first[k] for k in ("question_id", "image_id", "answer", "full_answer", "structural", "semantic",
                                  "detailed", "family", "kind")} == {
        "question_id": "0201", "image_id": "2375429", "answer": "no", "full_answer": "The answer is no.",
        "structural": "verify", "semantic": "attr", "detailed": "verifyAttr", "family": "verify", "kind": "attr"}
    assert first["image"].shape == (24, 32, 3) and train.metadata(1)["image_id"] == "n161313"
    with pytest.raises(BadDataError, match=r"bad record '0204' \[malformed_record\].*outside the image root"):
        gqa.GQA.from_root(root, "train_balanced")
    parts = gqa.GQA.from_root(root, "train_all")
    assert [parts.metadata(i)["question_id"] for i in range(len(parts))] == ["0501", "0502"]
    unanswered = gqa.GQA.from_root(root, "submission_all")
    assert unanswered.metadata(0)["answer"] is None and unanswered.metadata(0)["family"] is None
    with pytest.raises(ValueError, match="file prefix"):
        gqa.GQA.from_root(root, "../train_balanced")


def test_gqa_through_the_registry_scores_exact_match(data):
    c = _config("gqa", root=data["gqa"]["root"])
    train, testdev = registry.build_sources(c)
    rows = [{**registry.describe(testdev, i), "prediction": p} for i, p in enumerate(["No", "wood"])]
    report = registry.score(c, rows, train, testdev)
    assert report["accuracy"] == 0.5 and report["accuracy/verify"] == 1.0 and report["accuracy/query"] == 0.0
    c.data.eval_split = "submission_all"
    train, submission = registry.build_sources(c)
    rows = [{**registry.describe(submission, 0), "prediction": "cup"}]
    assert registry.score(c, rows, train, submission)["num_examples"] == 1


@pytest.mark.parametrize("name", ["flickr30k", "visual_genome", "gqa"])
def test_a_damaged_json_file_is_named_with_line_and_column(tmp_path, name):
    path = tmp_path / "damaged.json"
    path.write_text('{"images": [\n  {"filename": "1.jpg",\n')
    build = {
        "flickr30k": lambda: flickr30k.Flickr30K(str(path), str(tmp_path), "train"),
        "visual_genome": lambda: visual_genome.VGQA(str(path), str(tmp_path)),
        "gqa": lambda: gqa.GQA(str(path), str(tmp_path)),
    }[name]
    with pytest.raises(errors.DataError, match=rf"{path}: .* is not valid JSON \(.*: line 3, column 1\)"):
        build()


# ------------------------------------------------------------------ region features


def _expected(arrays, size):
    features, boxes = arrays
    return features, np.clip(boxes / np.tile(np.asarray(size, np.float32), 2), 0, 1)


def test_npz_region_features_normalised_boxes_and_the_policy(data):
    paths, size = data["features"], data["features"]["size"]
    store = region_features.RegionFeatures.from_npz_dir(paths["npz"], on_bad_data="skip")
    assert store.image_ids == ("img1", "img2", "img3", "img4")  # nothing decoded yet
    item = store.get("img1")
    features, boxes = _expected(paths["good"]["img1"], size)
    np.testing.assert_array_equal(item["features"], features)
    np.testing.assert_allclose(item["boxes"], boxes, rtol=1e-6)
    assert item["features"].shape == (3, 2048) and (item["num_boxes"], item["image_w"], item["image_h"]) == (3, 64, 48)
    assert store.get("img2") is None and store.get("img3") is None  # wrong shapes, a NaN: bad under skip
    assert store[3]["image_id"] == "img1"  # img4 (not an npz) is served by the next good record, wrapping
    assert store.skipped == {MISSING_FILE: 0, MALFORMED_RECORD: 3}
    exact = region_features.RegionFeatures.from_npz_dir(paths["npz"], ["img1", "img9", "../outside"],
                                                        on_bad_data="skip", verify=True)
    assert exact.image_ids == ("img1",) and exact.skipped == {MISSING_FILE: 1, MALFORMED_RECORD: 1}
    with pytest.raises(BadDataError, match=r"'img2' \[malformed_record\].*boxes have shape \(2, 4\), expected \[3, 4\]"):
        region_features.RegionFeatures.from_npz_dir(paths["npz"], verify=True)
    with pytest.raises(BadDataError, match=r"'\.\./outside' \[malformed_record\].*outside the image root"):
        region_features.RegionFeatures.from_npz_dir(paths["npz"], ["../outside"])
    with pytest.raises(BadDataError, match=r"'img3' \[malformed_record\].*NaN"):
        region_features.RegionFeatures.from_npz_dir(paths["npz"], ["img3"])[0]


def test_lxmert_tsv_region_features_and_padding(data):
    paths, size = data["features"], data["features"]["size"]
    store = region_features.RegionFeatures.from_tsv(paths["tsv"], on_bad_data="skip")
    assert store.image_ids == ("COCO_1", "COCO_2", "COCO_5") and store.skipped[MALFORMED_RECORD] == 2
    for name in ("COCO_1", "COCO_2"):
        features, boxes = _expected(paths["good"][name], size)
        item = store.get(name)
        np.testing.assert_array_equal(item["features"], features)
        np.testing.assert_allclose(item["boxes"], boxes, rtol=1e-6)
    assert store.get("COCO_2")["boxes"][0, 2] == 1.0  # the half-pixel overhang is clipped
    assert store.get("COCO_5") is None  # the inverted box is found when read
    batch = region_features.pad([store.get("COCO_1"), store.get("COCO_2")], max_regions=3)
    assert batch["regions"].shape == (2, 3, 2048) and batch["boxes"].shape == (2, 3, 4)
    assert batch["visual_valid"].tolist() == [[True, True, False], [True, True, True]]
    assert not batch["regions"][0, 2].any()
    with pytest.raises(BadDataError, match=r"'COCO_3' .*line 3: features is not base64 of <f4 \[2, 2048\]"):
        region_features.RegionFeatures.from_tsv(paths["tsv"])
    lines = open(paths["tsv"]).read().splitlines(keepends=True)
    strict = region_features.RegionFeatures.from_tsv(_write(paths["tsv"] + ".two", lines[0] + lines[4]))
    assert strict.get("COCO_1")["num_boxes"] == 2
    with pytest.raises(BadDataError, match=r"'COCO_5' \[malformed_record\].*inverted"):
        strict.get("COCO_5")


def _write(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


# ------------------------------------------------------------------ prepared copies of the registered ones


def _data_keys(name: str, data: dict) -> dict:
    if name == "flickr30k":
        return dict(train_file=data[name]["json"], image_root=data[name]["images"])
    return dict(root=data[name]["root"])


@pytest.mark.parametrize("name", ["nlvr2", "flickr30k", "visual_genome", "gqa"])
def test_a_prepared_copy_reads_back_the_same_examples(data, tmp_path, name):
    c = _config(name, **_data_keys(name, data))
    raw = registry.build_sources(c)
    registry.prepare(c, str(tmp_path), threads=1)
    c.data.prepared_dir = str(tmp_path)
    copy = registry.build_sources(c)
    for r, p in zip(raw, copy):
        assert len(p) == len(r) > 0
        for i in range(len(r)):
            a, b = r[i], p[i]
            assert list(a) == list(b) and all(a[k] == b[k] for k in a if k != "image")
            np.testing.assert_array_equal(a["image"], b["image"])
            assert r.metadata(i) == p.metadata(i)
    if name == "nlvr2":  # the pair comes back exactly from the copy too
        left, right = nlvr2.split_pair(copy[0][0])
        np.testing.assert_array_equal(left, data["nlvr2"]["left"])
        np.testing.assert_array_equal(right, data["nlvr2"]["right"])


# ------------------------------------------------------------------ SemVLP batches from the readers


def test_semvlp_rows_from_captions_and_questions(data):
    from semrel_jax.data import semvlp_records, semvlp_scenes

    root = data["visual_genome"]["root"]
    captions = visual_genome.VGRegions(os.path.join(root, visual_genome.REGIONS_FILE), root, "train", on_bad_data="skip")
    questions = gqa.GQA.from_root(data["gqa"]["root"], "train_balanced", on_bad_data="skip")
    answers = semvlp_records.answer_vocabulary(questions, 1)
    assert answers == ("cup",)  # 'no' and 'cup' once each: ties by text
    rows = semvlp_records.RecordRows(semvlp_scenes.word_tokenizer(), captions=captions, questions=questions,
                                     answers=answers, image_size=32, patch_size=8, max_text_len=12)
    batch = rows.batch(np.arange(16), seed=0)
    assert batch["images"].shape == (16, 32, 32, 3) and batch["visual_valid"].shape == (16, 16)
    assert 0 <= batch["images"].min() and batch["images"].max() <= 1 and batch["tokens"].shape == (16, 12)
    texts = [rows.row(0, i)["text"] for i in range(16)]
    phrases = {"a red car": 1, "a dog on grass": 2}
    for i, text in enumerate(texts):
        row = rows.row(0, i)
        if text in phrases:  # a caption: matched iff the phrase is of this row's image (example i mod 2)
            assert row["matched"] == int(phrases[text] == (1, 2)[i % 2]) and row["is_question"] == 0
        else:  # a question: only 'cup' is in the vocabulary
            assert text == questions.metadata(i % 2)["question"]
            assert (row["is_question"], row["answer"]) == ((0, 0) if i % 2 == 0 else (1, 0))
    assert {rows.row(0, i)["matched"] for i in range(16) if texts[i] in phrases} == {0, 1}  # positives, negatives
    assert 0 < sum(text in phrases for text in texts) < 16  # and questions
    again = rows.batch(np.arange(16), seed=0)
    assert all(np.array_equal(batch[k], again[k]) for k in batch)  # a pure function of (seed, index)
    # SceneBatches' evaluation interface: a kind or match forced, and the retrieval gallery
    assert rows.row(0, 1, kind="question")["text"] == "What is on the table?"
    assert rows.row(0, 0, kind="caption", matched=True)["text"] == "a red car"
    images, texts, image_of = rows.retrieval(0, 5)  # the source has two images, one phrase each
    assert len(images) == 2 and texts == ["a red car", "a dog on grass"] and image_of.tolist() == [0, 1]


def test_semvlp_rows_with_region_features_and_nlvr2_pairs(data):
    from semrel_jax.data import semvlp_records, semvlp_scenes
    from semrel_jax.data.preprocess import ImagePreprocessor

    tokenizer = semvlp_scenes.word_tokenizer()
    questions = gqa.GQA.from_root(data["gqa"]["root"], "train_balanced", on_bad_data="skip")
    store = region_features.RegionFeatures.from_tsv(data["features"]["tsv"], on_bad_data="skip")
    names = {"2375429": "COCO_1", "n161313": "COCO_2"}
    rows = semvlp_records.RecordRows(tokenizer, questions=questions, answers=("no", "cup"), regions=store,
                                     max_regions=3, image_key=lambda example: names[example["image_id"]])
    batch = rows.batch([0, 1], seed=0)
    assert batch["regions"].shape == (2, 3, 2048) and batch["boxes"].shape == (2, 3, 4)
    assert batch["visual_valid"].tolist() == [[True, True, False], [True, True, True]]
    np.testing.assert_array_equal(batch["regions"][1], store.get("COCO_2")["features"])
    assert batch["is_question"].tolist() == [1, 1] and batch["answer"].tolist() == [0, 1]

    pairs = semvlp_records.PairRows(tokenizer, nlvr2.NLVR2.from_root(data["nlvr2"]["root"], "train", on_bad_data="skip"),
                                    image_size=16, patch_size=8)
    batch = pairs.batch([0, 1], seed=0)
    assert batch["images"].shape == (2, 2, 16, 16, 3) and batch["visual_valid"].shape == (2, 2, 4)
    assert batch["label"].tolist() == [1, 0] and batch["tokens"].shape == (2, 40)
    resize = ImagePreprocessor(16, normalization="unit", resample="bilinear", crop=False)
    np.testing.assert_allclose(batch["images"][0, 1], resize(data["nlvr2"]["right"]))


@pytest.mark.slow  # compiles a tiny SemVLP twice (~10-30 s on the shared 2-core box)
def test_reader_batches_train_the_semvlp_objectives(data):
    """The batches from the readers go through the SemVLP model and its losses as the scenes' do (no visual
    labels: the masked-visual classification loss is 0), with images and with region features."""
    import jax
    from flax import nnx

    from semrel_jax.data import semvlp_records, semvlp_scenes
    from semrel_jax.method.semvlp import objectives
    from semrel_jax.method.semvlp.model import SemVLP, SemVLPConfig
    from semrel_jax.models.bert import BertConfig
    from semrel_jax.models.vit import ViTConfig

    tokenizer = semvlp_scenes.word_tokenizer()
    questions = gqa.GQA.from_root(data["gqa"]["root"], "train_balanced", on_bad_data="skip")
    root = data["visual_genome"]["root"]
    captions = visual_genome.VGRegions(os.path.join(root, visual_genome.REGIONS_FILE), root, "train", on_bad_data="skip")
    store = region_features.RegionFeatures.from_tsv(data["features"]["tsv"], on_bad_data="skip")
    names = {"2375429": "COCO_1", "n161313": "COCO_2", "1": "COCO_1", "2": "COCO_2"}
    bert = BertConfig(vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=4, mlp_dim=64, max_positions=32)
    vit = ViTConfig(image_size=32, patch_size=8, width=32, depth=1, heads=4, mlp_dim=64, act="gelu",
                    class_token=False, pre_ln=False, patch_bias=True)
    masking = objectives.MaskingConfig(mask_token=tokenizer.mask_token_id, vocab_size=len(tokenizer),
                                       special_tokens=tuple(tokenizer.all_special_ids))
    for vision, regions in ((vit, None), (None, store)):
        rows = semvlp_records.RecordRows(tokenizer, captions=captions, questions=questions, answers=("no", "cup"),
                                         image_size=32, patch_size=8, max_text_len=16, regions=regions,
                                         max_regions=4, image_key=lambda example: names[str(example["image_id"])])
        batch = jax.tree.map(jax.numpy.asarray, rows.batch(np.arange(8), seed=0))
        model = SemVLP(SemVLPConfig(text=bert, vision=vision, region_dim=2048, cross_layers=1, num_answers=2),
                       rngs=nnx.Rngs(0))

        @nnx.jit
        def losses(model, batch, key):
            masks = objectives.draw_masks(key, batch, masking)
            out = model(dict(batch, tokens=masks.tokens), "two", visual_mask=masks.visual)
            return objectives.compute_losses(model, batch, out, masks)

        values = {k: float(v) for k, v in losses(model, batch, jax.random.key(0)).items()}
        assert values["visual_classification"] == 0.0, values
        assert all(np.isfinite(v) and v > 0 for k, v in values.items() if k != "visual_classification"), values


@pytest.mark.slow  # a tiny SemVLP run through train_and_evaluate (one mode, 2 steps): ~30 CPU-s
def test_semvlp_trains_from_a_reader_through_main(data, tmp_path):
    """``model.semvlp.data=records``: Flickr30K captions with npz region features of width 16 (the model's
    region_dim follows the files, not the 2048 default) train the ITM and masked objectives and score ITM and
    retrieval; nothing to answer, so no VQA accuracy. Every logged loss is finite."""
    import json

    import pretrain

    from semrel_jax.training import train

    features = tmp_path / "features"
    features.mkdir()
    for seed, image in enumerate(("3000", "3001")):
        values, boxes = fx.region_arrays(seed, 3)
        np.savez(features / f"{image}.npz", features=values[:, :16], boxes=boxes, image_w=64, image_h=48)
    flickr = data["flickr30k"]
    c = pretrain.get_config("tiny")
    c.data.update(name="flickr30k", prompt_format="raw", on_bad_data="skip", train_file=flickr["json"],
                  image_root=flickr["images"], train_split="test", eval_split="test")
    c.model.semvlp.update(data="records", schedule="s", region_features=str(features), visual="regions")
    c.train.update(num_steps=2, log_every=1)
    results = train.train_and_evaluate(c, str(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == results
    assert 0.0 <= results["itm_accuracy"] <= 1.0 and "image_to_text_r@1" in results and "vqa_accuracy" not in results
    assert (results["retrieval_images"], results["retrieval_texts"]) == (2, 5)  # every caption of the two test images
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = {k: v for row in logged for k, v in row.items() if k.startswith("loss")}
    assert losses["loss_itm"] > 0 and losses["loss_mlm"] > 0 and all(np.isfinite(list(losses.values()))), logged
    c.model.semvlp.region_features = str(tmp_path / "nothing")
    with pytest.raises(errors.PathError, match="nothing"):
        train.train_and_evaluate(c, str(tmp_path / "bad"))
