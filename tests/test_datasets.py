"""On-disk dataset readers (ScienceQA, VQA v2, COCO Karpathy captions, LLaVA JSON) and the bad-data policy."""

import json
import os
import pickle

import grain
import numpy as np
import pytest
from PIL import Image
from tokenizers import pre_tokenizers

import dataset_fixtures as fx
from semrel_jax.data import coco_captions, images, llava_json, pipeline, prompts, scienceqa, vqa_v2
from semrel_jax.data import tokenizer as tokenizer_lib
from semrel_jax.data.preprocess import ImagePreprocessor
from semrel_jax.data.source import Source


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    return {
        "scienceqa": fx.write_scienceqa(str(root / "scienceqa")),
        "vqa": fx.write_vqa_v2(str(root / "vqa")),
        "coco": fx.write_coco_karpathy(str(root / "coco")),
        "llava": fx.write_llava(str(root / "llava")),
    }


def _sqa(data, split="train", **kw):
    return scienceqa.ScienceQA(data["scienceqa"]["root"], split, **kw)


def _vqa(data, split="train2014", **kw):
    return vqa_v2.VQAv2.from_root(data["vqa"]["root"], split, **kw)


def _coco(data, split="train", mode="train", **kw):
    return coco_captions.KarpathyCOCO(data["coco"]["json"], data["coco"]["root"], split, mode, **kw)


def _llava(data, **kw):
    return llava_json.LLaVAInstruct(data["llava"]["json"], data["llava"]["root"], **kw)


def _read_all(source):
    return [source[i] for i in range(len(source))]


# ------------------------------------------------------------------ images


def _roundtrip(image: Image.Image, fmt: str, tmp_path) -> np.ndarray:
    path = str(tmp_path / f"img.{fmt.lower()}")
    image.save(path, fmt)
    return images.load_image(path)


@pytest.mark.parametrize("mode", ["RGB", "L", "1", "P", "RGBA", "LA", "I;16", "I", "F"])
def test_load_image_gives_uint8_rgb(mode, tmp_path):
    rgb = fx.image_array(0, 10, 12)
    if mode == "I;16":
        pil = Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))
    elif mode in ("I", "F"):
        pil = Image.fromarray(rgb[..., 0]).convert(mode)
    else:
        pil = Image.fromarray(rgb).convert(mode)
    assert pil.mode == mode
    out = _roundtrip(pil, "TIFF" if mode in ("I", "F") else "PNG", tmp_path)
    assert out.dtype == np.uint8 and out.shape == (10, 12, 3) and out.flags.writeable
    if mode in ("RGB", "RGBA"):
        np.testing.assert_array_equal(out, rgb)  # alpha dropped, colours untouched
    if mode in ("I;16", "I", "F"):
        # 16-bit v*257 -> v; 8-bit-range I/F kept as is; gray replicated over the 3 channels
        np.testing.assert_array_equal(out, np.repeat(rgb[..., :1], 3, axis=-1))
    if mode in ("L", "LA"):
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_load_image_cmyk_jpeg_and_palette_transparency(tmp_path):
    rgb = fx.image_array(1, 16, 16)
    out = _roundtrip(Image.fromarray(rgb).convert("CMYK"), "JPEG", tmp_path)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 8  # lossy, but the colours survive
    pal = Image.fromarray(rgb).convert("P")
    pal.info["transparency"] = 0
    path = str(tmp_path / "t.png")
    pal.save(path, transparency=0)
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    assert images.load_image(path).shape == (16, 16, 3)


def test_read_image_classifies_missing_and_corrupt(tmp_path):
    fx.write_image(str(tmp_path / "bad.jpg"), 0, fmt="JPEG", truncate=True)
    (tmp_path / "text.png").write_text("not an image")
    for name, reason in (("nope.png", images.MISSING_FILE), ("bad.jpg", images.CORRUPT_IMAGE), ("text.png", images.CORRUPT_IMAGE)):
        with pytest.raises(images.UnreadableImage) as e:
            images.read_image(str(tmp_path / name))
        assert e.value.reason == reason


def test_io_errors_are_never_skipped(data, monkeypatch):
    src = _vqa(data, on_bad_data="skip")

    def denied(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(images, "load_image", denied)
    with pytest.raises(PermissionError):
        src[0]
    assert src.skipped["corrupt_image"] == 0 and src.skipped["missing_file"] == 1


def test_bad_data_error_pickles():
    e = images.BadDataError("vqa_v2", 30, "/x/y.jpg", images.MISSING_FILE, "no such file")
    back = pickle.loads(pickle.dumps(e))
    assert str(back) == str(e) and back.record_id == 30 and back.reason == images.MISSING_FILE


def test_unknown_policy_rejected(data):
    with pytest.raises(ValueError, match="on_bad_data"):
        _sqa(data, on_bad_data="ignore")


# ------------------------------------------------------------------ ScienceQA

SQA_Q1_QUESTION = "Which of these states is farthest north?"
SQA_Q1_OPTIONS = "Options: (A) West Virginia (B) Louisiana (C) Arizona (D) Oklahoma"
SQA_Q1_LECTURE = ("Maps have four cardinal directions, or main directions.\\nThose directions are north, south, east, "
                  "and west.")
SQA_Q1_SOLUTION = "To find the answer, look at the compass rose.\\nWest Virginia is farthest north."

SQA_EXPECTED = {
    "QCM-A": (f"Question: {SQA_Q1_QUESTION}\nContext: N/A\n{SQA_Q1_OPTIONS}\nResponse:", "The answer is A."),
    "CQM-A": (f"Context: N/A\nQuestion: {SQA_Q1_QUESTION}\n{SQA_Q1_OPTIONS}\nResponse:", "The answer is A."),
    "QCM-LEA": (f"Question: {SQA_Q1_QUESTION}\nContext: N/A\n{SQA_Q1_OPTIONS}\nResponse:",
                f"{SQA_Q1_LECTURE} {SQA_Q1_SOLUTION} The answer is A."),
    "QCM-EA": (f"Question: {SQA_Q1_QUESTION}\nContext: N/A\n{SQA_Q1_OPTIONS}\nResponse:",
               f"{SQA_Q1_SOLUTION} The answer is A."),
    "QCM-LA": (f"Question: {SQA_Q1_QUESTION}\nContext: N/A\n{SQA_Q1_OPTIONS}\nResponse:",
               f"{SQA_Q1_LECTURE} The answer is A."),
    "QCM-ELA": (f"Question: {SQA_Q1_QUESTION}\nContext: N/A\n{SQA_Q1_OPTIONS}\nResponse:",
                f"{SQA_Q1_SOLUTION} {SQA_Q1_LECTURE} The answer is A."),
    "QM-A": (f"Question: {SQA_Q1_QUESTION}\n{SQA_Q1_OPTIONS}\nResponse:", "The answer is A."),
    "Q-A": (f"Question: {SQA_Q1_QUESTION}\nResponse:", "The answer is A."),
}


@pytest.mark.parametrize("fmt", sorted(SQA_EXPECTED))
def test_scienceqa_prompt_formats_exact(fmt, data):
    ex = _sqa(data, prompt_format=fmt, on_bad_data="skip")[0]
    assert ex["pid"] == "1"
    assert (ex["question"], ex["answer"]) == SQA_EXPECTED[fmt]


def test_scienceqa_caption_joins_the_context(data):
    with_caption = _sqa(data, on_bad_data="skip", captions_path=data["scienceqa"]["captions"])
    assert with_caption.metadata(0)["question"] == (
        f"Question: {SQA_Q1_QUESTION}\nContext: A map of the United States.\n{SQA_Q1_OPTIONS}\nResponse:"
    )
    # the hint-only problem is unchanged (no caption for it); QM carries no context at all
    assert with_caption.metadata(1)["question"] == _sqa(data, on_bad_data="skip").metadata(1)["question"]
    qm = _sqa(data, prompt_format="QM-A", on_bad_data="skip", captions_path=data["scienceqa"]["captions"])
    assert "map of the United States" not in qm.metadata(0)["question"]


def test_scienceqa_examples(data):
    src = _sqa(data, on_bad_data="skip")
    assert len(src) == 4 and [src.record_id(i) for i in range(4)] == ["1", "2", "4", "6"]
    ex = src[0]
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (24, 32, 3) and ex["has_image"] == 1
    np.testing.assert_array_equal(ex["image"], fx.image_array(1))  # PNG is lossless
    assert ex["choices"] == ["West Virginia", "Louisiana", "Arizona", "Oklahoma"]
    assert (ex["answer_index"], ex["label"], ex["subject"], ex["grade"]) == (0, "A", "social science", "grade2")
    assert (ex["has_text"], ex["no_context"], ex["index"]) == (0, 0, 0)
    text_only = src[1]
    assert text_only["image"] is None and text_only["has_image"] == 0
    assert text_only["question"] == (
        "Question: Which word would you find on a dictionary page?\n"
        "Context: The dictionary page has the guide words lake and lift.\nOptions: (A) lamb (B) lion\nResponse:"
    )
    assert text_only["answer"] == "The answer is B." and text_only["has_text"] == 1
    gray = src[3]  # grayscale PNG -> RGB
    assert gray["image"].shape == (24, 32, 3) and (gray["image"][..., 0] == gray["image"][..., 2]).all()
    # val / test / minival read their images from images/<problem split>/
    assert _sqa(data, "val")[0]["pid"] == "10" and _sqa(data, "minival")[0]["image"].shape == (24, 32, 3)
    test = _sqa(data, "test")[0]
    assert test["image"].shape == (24, 32, 3) and test["label"] == "A"  # RGBA -> RGB
    assert list(src.problems) == ["1", "2", "4", "6"] and src.problems["1"] == fx.SCIENCEQA_PROBLEM_1
    assert src.scoring_data() == {"problems": src.problems}  # what the scorer reads (and a copy stores)
    with pytest.raises(ValueError, match="minitrain"):
        _sqa(data, "minitrain")
    with pytest.raises(ValueError, match="prompt format"):
        _sqa(data, prompt_format="QCM-ALE")


# ------------------------------------------------------------------ VQA v2


def test_vqa_v2_answers_and_metadata(data):
    src = _vqa(data, on_bad_data="skip")
    assert [src.metadata(i)["question_id"] for i in range(len(src))] == [10, 11, 20, 40]
    ex = src[0]
    assert (ex["question"], ex["answer"], ex["image_id"]) == ("What color is the bus?", "red", 1)
    assert ex["answers"] == ["red"] * 7 + ["white"] * 2 + ["red and white"]
    assert (ex["answer_type"], ex["question_type"]) == ("other", "what color is the")
    np.testing.assert_array_equal(src[1]["image"], ex["image"])  # two questions, one image
    assert ex["image"].shape == (24, 32, 3) and ex["image"].dtype == np.uint8
    cmyk = src[2]
    assert (cmyk["answer"], cmyk["answer_type"], len(cmyk["answers"])) == ("no", "yes/no", 10)
    assert cmyk["image"].shape == (24, 32, 3)
    llava = _vqa(data, prompt_format="llava", on_bad_data="skip")
    assert llava.metadata(0)["question"] == "What color is the bus?\nAnswer the question using a single word or phrase."


@pytest.mark.parametrize("split", ["test-dev2015", "test2015"])
def test_vqa_v2_test_split_has_no_answers(split, data):
    src = _vqa(data, split)
    assert len(src) == 2 and not src.has_answers
    ex = src[0]
    assert ex["answer"] is None and ex["answers"] is None and ex["answer_type"] is None
    assert ex["image"].shape == (24, 32, 3)  # test-dev questions use the test2015 images
    assert list(src.texts()) == ["What is this?", "Is it sunny?"]


def test_vqa_v2_train_split_needs_annotations(data):
    root = data["vqa"]["root"]
    with pytest.raises(ValueError, match="annotations"):
        vqa_v2.VQAv2(vqa_v2.questions_file(root, "train2014"), os.path.join(root, "train2014"))
    with pytest.raises(FileNotFoundError):
        vqa_v2.VQAv2.from_root(root, "val2014")


# ------------------------------------------------------------------ COCO captions (Karpathy)


@pytest.mark.parametrize(
    "split,mode,include_restval,count",
    [
        # train = train + restval; 103 (missing) and 501 (malformed) are left out, 202 stays (corrupt is read-time)
        ("train", "train", True, 3 + 2 + 2 + 1),
        ("train", "eval", True, 4),
        ("train", "train", False, 3 + 2),
        ("restval", "train", True, 3),
        ("val", "train", True, 2 + 3),
        ("val", "eval", True, 2),
        ("test", "train", True, 2),
        ("test", "eval", True, 1),
    ],
)
def test_karpathy_split_counts(split, mode, include_restval, count, data):
    src = _coco(data, split, mode, include_restval=include_restval, on_bad_data="skip")
    assert len(src) == count


def test_karpathy_examples(data):
    train = _coco(data, "train", "train", on_bad_data="skip")
    rows = [train.metadata(i) for i in range(3)]
    assert [r["answer"] for r in rows] == ["A red bus on a street.", "A bus parked by the curb.", "A large red bus."]
    assert all(r["cocoid"] == 101 and r["question"] == coco_captions.DEFAULT_PROMPT for r in rows)
    assert [r["sentid"] for r in rows] == [0, 1, 2]
    val = _coco(data, "val", "eval", prompt="Caption:")
    ex = val[1]
    assert (ex["cocoid"], ex["question"], ex["answer"]) == (302, "Caption:", "A train.")
    assert ex["references"] == ["A train.", "A train at a station.", "A blue train."]
    assert np.abs(ex["image"].astype(int) - fx.image_array(302)).mean() < 4  # JPEG (q95) of the fixture image
    assert ex["filename"] == "COCO_val2014_000000000302.jpg"


# ------------------------------------------------------------------ LLaVA


def test_llava_turns(data):
    src = _llava(data, on_bad_data="skip")
    assert [(src.record_id(i), src.metadata(i)["turn"]) for i in range(len(src))] == [
        ("a", 0), ("b", 0), ("b", 1), ("c", 0), ("e", 0)
    ]
    a = src[0]
    assert (a["question"], a["answer"], a["has_image"]) == ("What is in the picture?", "A red bus.", 1)
    b0, b1 = src[1], src[2]
    assert b0["question"] == "What color is the car?" and b0["num_turns"] == 2  # trailing placeholder stripped
    assert b1["question"] == "USER: What color is the car?\nASSISTANT: It is blue.\nUSER: Is it moving?"
    assert b1["answer"] == "No, it is parked."
    assert b1["messages"] == [
        {"role": "user", "content": "What color is the car?"},
        {"role": "assistant", "content": "It is blue."},
        {"role": "user", "content": "Is it moving?"},
    ]
    np.testing.assert_array_equal(b0["image"], b1["image"])  # palette PNG -> RGB, shared by both turns
    assert b0["image"].shape == (24, 32, 3)
    c = src[3]
    assert (c["image"], c["has_image"], c["question"], c["answer"]) == (None, 0, "Name a prime number.", "Seven.")
    assert all("<image>" not in t for t in src.texts())


@pytest.mark.parametrize(
    "record,reason",
    [
        ({"id": "x", "conversations": [{"from": "gpt", "value": "Hi"}, {"from": "human", "value": "Hi"}]}, "alternate"),
        ({"id": "x", "conversations": [{"from": "human", "value": "Hi"}]}, "ends with a human"),
        ({"id": "x", "conversations": [{"from": "bot", "value": "Hi"}, {"from": "gpt", "value": "Hi"}]}, "unknown role"),
        ({"id": "x", "image": ["a.jpg", "b.jpg"], "conversations": [{"from": "human", "value": "Hi"},
                                                                    {"from": "gpt", "value": "Hi"}]}, "multi-image"),
        ({"id": "x", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image> <image>"},
                                                         {"from": "gpt", "value": "Hi"}]}, "2 <image> placeholders"),
        ({"id": "x", "image": "a.jpg", "conversations": [{"from": "human", "value": "Hi"},
                                                         {"from": "gpt", "value": "<image>"}]}, "gpt\\) is empty"),
        ({"id": "x"}, "conversations"),
    ],
)
def test_llava_malformed_records(record, reason, tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([record]))
    with pytest.raises(images.BadDataError, match=reason) as e:
        llava_json.LLaVAInstruct(str(path), str(tmp_path))
    assert e.value.record_id == "x" and e.value.reason == images.MALFORMED_RECORD


# ------------------------------------------------------------------ bad-data policy, every reader


def _rewrite(path: str, edit) -> None:
    with open(path) as f:
        obj = json.load(f)
    with open(path, "w") as f:
        json.dump(edit(obj), f)


def _sqa_subset(data, tmp_path, pids, **kw):
    root = data["scienceqa"]["root"]
    sub = tmp_path / "sqa"
    sub.mkdir()
    (sub / "problems.json").write_text(open(os.path.join(root, "problems.json")).read())
    (sub / "pid_splits.json").write_text(json.dumps({"train": pids}))
    (sub / "images").symlink_to(os.path.join(root, "images"))
    return scienceqa.ScienceQA(str(sub), "train", **kw)


def _vqa_subset(data, tmp_path, qids, **kw):
    root = data["vqa"]["root"]
    qfile = tmp_path / "questions.json"
    qfile.write_text(open(vqa_v2.questions_file(root, "train2014")).read())
    _rewrite(str(qfile), lambda o: {**o, "questions": [q for q in o["questions"] if q["question_id"] in qids]})
    return vqa_v2.VQAv2(str(qfile), os.path.join(root, "train2014"), vqa_v2.annotations_file(root, "train2014"), **kw)


def _coco_subset(data, tmp_path, cocoids, **kw):
    jfile = tmp_path / "dataset_coco.json"
    jfile.write_text(open(data["coco"]["json"]).read())
    _rewrite(str(jfile), lambda o: {**o, "images": [e for e in o["images"] if e["cocoid"] in cocoids]})
    return coco_captions.KarpathyCOCO(str(jfile), data["coco"]["root"], "train", **kw)


def _llava_subset(data, tmp_path, ids, **kw):
    jfile = tmp_path / "llava.json"
    jfile.write_text(open(data["llava"]["json"]).read())
    _rewrite(str(jfile), lambda o: [r for r in o if r["id"] in ids])
    return llava_json.LLaVAInstruct(str(jfile), data["llava"]["root"], **kw)


# reader -> (full source builder, subset builder, good ids, missing id, corrupt id, malformed ids, missing path suffix,
#            corrupt path suffix, skip-mode length)
POLICY_CASES = {
    "scienceqa": (_sqa, _sqa_subset, ["1", "2", "6"], "3", "4", ["5", "99"], "train/3/image.png", "train/4/image.png", 4),
    "vqa_v2": (_vqa, _vqa_subset, [10, 11, 20], 30, 40, [50, 60], "COCO_train2014_000000000003.jpg",
               "COCO_train2014_000000000004.jpg", 4),
    "coco_captions": (_coco, _coco_subset, [101, 102, 201], 103, 202, [501], "COCO_train2014_000000000103.jpg",
                      "COCO_val2014_000000000202.jpg", 8),
    "llava_json": (_llava, _llava_subset, ["a", "b", "c"], "d", "e", ["f", "g"], "coco/train2017/d.jpg",
                   "coco/train2017/e.jpg", 5),
}


@pytest.mark.parametrize("reader", sorted(POLICY_CASES))
def test_bad_data_error_names_the_record(reader, data, tmp_path):
    full, subset, good, missing, corrupt, malformed, missing_path, corrupt_path, _ = POLICY_CASES[reader]
    # malformed: refused at construction (the first one in file order)
    with pytest.raises(images.BadDataError) as e:
        full(data)
    assert e.value.record_id == malformed[0] and e.value.reason == images.MALFORMED_RECORD
    assert f"bad record {malformed[0]!r}" in str(e.value) and reader in str(e.value)
    # missing file: refused at construction, with its path
    (tmp_path / "m").mkdir()
    with pytest.raises(images.BadDataError) as e:
        subset(data, tmp_path / "m", good + [missing])
    assert e.value.record_id == missing and e.value.reason == images.MISSING_FILE
    assert str(e.value).endswith("(they are counted and logged).") and missing_path in str(e.value)
    assert f"bad record {missing!r}" in str(e.value) and "image file is missing" in str(e.value)
    # corrupt image: found when read (a truncated file), with its path; the good examples still read
    (tmp_path / "c").mkdir()
    src = subset(data, tmp_path / "c", good + [corrupt])
    bad = [i for i in range(len(src)) if src.record_id(i) == corrupt]
    for i in range(len(src)):
        if i not in bad:
            assert src[i]["index"] == i
    with pytest.raises(images.BadDataError) as e:
        src[bad[0]]
    assert e.value.record_id == corrupt and e.value.reason == images.CORRUPT_IMAGE
    assert corrupt_path in str(e.value) and "truncated" in str(e.value)
    # and at construction with verify_images
    (tmp_path / "v").mkdir()
    with pytest.raises(images.BadDataError, match="truncated"):
        subset(data, tmp_path / "v", good + [corrupt], verify_images=True)


@pytest.mark.parametrize("reader", sorted(POLICY_CASES))
def test_bad_data_skip_counts_are_exact(reader, data):
    full, _, good, missing, corrupt, malformed, _, _, length = POLICY_CASES[reader]
    src = full(data, on_bad_data="skip")
    assert src.skipped == {"missing_file": 1, "corrupt_image": 0, "malformed_record": len(malformed)}
    assert len(src) == length
    ids = {src.record_id(i) for i in range(len(src))}
    assert ids == set(good) | {corrupt}  # corrupt images are only known once read
    examples = _read_all(src) + _read_all(src)  # read twice: the corrupt record is counted once
    assert src.skipped == {"missing_file": 1, "corrupt_image": 1, "malformed_record": len(malformed)}
    assert all(src.record_id(ex["index"]) != corrupt for ex in examples)
    # exact up front with verify_images: the corrupt record never enters the source
    verified = full(data, on_bad_data="skip", verify_images=True)
    assert verified.skipped == {"missing_file": 1, "corrupt_image": 1, "malformed_record": len(malformed)}
    assert {verified.record_id(i) for i in range(len(verified))} == set(good)


@pytest.mark.parametrize("reader", sorted(POLICY_CASES))
def test_corrupt_image_is_replaced_by_the_next_good_example(reader, data):
    full, _, _, _, corrupt, _, _, _, _ = POLICY_CASES[reader]
    src = full(data, on_bad_data="skip")
    bad = [i for i in range(len(src)) if src.record_id(i) == corrupt]
    for i in bad:
        nxt = (bad[-1] + 1) % len(src)
        ex = src[i]
        assert ex["index"] == nxt  # its own index: question/answer/metadata belong to the image served
        fresh = full(data, on_bad_data="skip")[nxt]
        assert {k: v for k, v in ex.items() if k != "image"} == {k: v for k, v in fresh.items() if k != "image"}
        if fresh["image"] is None:
            assert ex["image"] is None
        else:
            np.testing.assert_array_equal(ex["image"], fresh["image"])


@pytest.mark.parametrize("reader", sorted(POLICY_CASES))
def test_sources_are_deterministic_and_picklable(reader, data):
    full = POLICY_CASES[reader][0]
    a, b = full(data, on_bad_data="skip"), full(data, on_bad_data="skip")
    c = pickle.loads(pickle.dumps(a))
    assert len(a) == len(b) == len(c)
    for i in range(len(a)):
        x, y, z = a[i], b[i], c[i]
        for other in (y, z):
            assert x.keys() == other.keys()
            for k in x:
                if isinstance(x[k], np.ndarray):
                    np.testing.assert_array_equal(x[k], other[k])
                else:
                    assert x[k] == other[k], k
        assert x["question"] and isinstance(x["question"], str) and isinstance(x["answer"], str)
        assert x["has_image"] in (0, 1) and (x["image"] is None) == (x["has_image"] == 0)
        assert a.metadata(x["index"])["question"] == x["question"]
    assert isinstance(a, Source) and a.image_groups(2) is None and isinstance(a.scoring_data(), dict)
    with pytest.raises(IndexError):
        a[len(a)]
    with pytest.raises(TypeError):
        a[True]


# ------------------------------------------------------------------ full path into the featurizer


def _words(texts) -> list[str]:
    split = pre_tokenizers.Whitespace()
    return [w for t in texts for w, _ in split.pre_tokenize_str(t)]


def test_examples_go_through_the_featurizer(data):
    sources = [
        _sqa(data, prompt_format="QCM-LEA", on_bad_data="skip", captions_path=data["scienceqa"]["captions"]),
        _sqa(data, prompt_format="CQM-A", on_bad_data="skip"),
        _vqa(data, prompt_format="llava", on_bad_data="skip"),
        _coco(data, on_bad_data="skip"),
        _llava(data, on_bad_data="skip"),
    ]
    words = _words(t for s in sources for t in s.texts()) + prompts.template_words("qa")
    tokenizer = tokenizer_lib.train_word_level(words)
    preprocessors = {"clip": ImagePreprocessor(16, "clip"), "siglip": ImagePreprocessor(8, "siglip", "bilinear")}
    featurizer = pipeline.VQAFeaturizer(tokenizer, preprocessors, max_len=160)
    featurized = text_only = 0
    for src in sources:
        # through grain, as training reads it (corrupt images replaced inside the map)
        ds = grain.MapDataset.source(src).map(featurizer.train)
        for i in range(len(src)):
            f = ds[i]
            if src.metadata(i)["has_image"] == 0:  # text-only: a blank image the model masks out
                assert f["has_image"] == 0 and not f["images"]["clip"].any()
                text_only += 1
                continue
            ex = src[i]
            n_answer = len(tokenizer(prompts.answer_text(ex["answer"]), add_special_tokens=False)["input_ids"])
            assert f["tokens"].shape == (160,) and f["loss_mask"].sum() == n_answer + 1
            assert f["images"]["clip"].shape == (16, 16, 3) and f["images"]["siglip"].shape == (8, 8, 3)
            assert f["has_image"] == 1 and f["index"] == ex["index"]
            decoded = tokenizer.decode(f["tokens"][f["valid"]], skip_special_tokens=True)
            assert "<unk>" not in decoded
            featurized += 1
        prompt = featurizer.prompt(src[0])
        assert prompt["prompt"].shape == (160,)
    assert featurized == 3 + 3 + 4 + 8 + 4
    assert text_only == sum(1 for src in sources for i in range(len(src)) if not src.metadata(i)["has_image"]) > 0


# ------------------------------------------------------------------ the registry and the package's imports


def test_the_registry_lists_every_dataset_module_once_with_consistent_defaults():
    import importlib
    import pkgutil

    import vqa  # configs/ is on sys.path (conftest)

    import semrel_jax.data
    from semrel_jax.data import registry
    from semrel_jax.errors import ConfigError

    declared = {}
    for info in pkgutil.iter_modules(semrel_jax.data.__path__):
        if info.name == "prepare":  # the data.prepare CLI: its absl flags may clash with another CLI's in-process
            continue
        module = importlib.import_module(f"semrel_jax.data.{info.name}")
        if hasattr(module, "DATASET"):
            declared[module.DATASET.name] = module.DATASET
    assert set(declared) == set(registry.names()) == {
        "sort_of_clevr", "sort_of_clevr_captions", "scienceqa", "vqa_v2", "coco_captions", "llava_json",
        "nlvr2", "flickr30k", "visual_genome", "gqa"}
    defaults = registry.all_defaults()
    demo = vqa.get_config("demo").data
    for name, spec in declared.items():
        assert registry.get(name) is spec
        assert spec.prompt_formats and set(spec.prompt_formats) <= {"qa", "raw", "chat"}
        for key, value in spec.defaults.items():
            assert defaults[key] == value, (name, key)  # a shared key has one default
    for key, value in defaults.items():
        assert key in demo, key  # the base config holds every dataset's keys
    assert tuple(demo.caption_kinds) == defaults["caption_kinds"] and demo.caption_mix == defaults["caption_mix"]
    with pytest.raises(ConfigError, match=r"config\.data\.name: expected one of \('sort_of_clevr', .*'nope'"):
        registry.get("nope")


def test_the_generated_sources_give_their_whole_vocabulary_as_texts():
    import ml_collections

    from semrel_jax.data import registry, sort_of_clevr, sort_of_clevr_captions

    train, evaluation = sort_of_clevr.SortOfClevr("train", 2), sort_of_clevr.SortOfClevr("test", 2)
    c = ml_collections.ConfigDict()
    assert registry.vocabulary(c, train, evaluation) == sort_of_clevr.vocabulary()  # what a scan used to give
    captions = sort_of_clevr_captions.SortOfClevrCaptions("train", 2, kinds=("objects", "relations"))
    for source in (train, captions):
        assert isinstance(source, Source) and source.scoring_data() == {}
    assert captions.image_groups(2) is None and train.image_groups(2).shape == (20, 2)
    assert set(registry.vocabulary(c, train, evaluation, captions)) >= {"describe", "relations", "3"}
    q = train.questions(1)[3]
    assert registry.describe(train, 23) == {"question": q.text, "answer": q.answer, "family": q.family, "kind": q.kind}
