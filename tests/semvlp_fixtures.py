"""Writers of small, schema-faithful fixtures of what SemVLP pre-trains and evaluates on (real image files):
NLVR2, Flickr30K (Karpathy), Visual Genome, GQA, and region features (npz per image, LXMERT TSV).

Each writer lays a directory out as the release does and returns what it wrote (which records are good,
missing, corrupt or malformed), so tests can assert exact counts. Images come from
``dataset_fixtures.write_image`` (PNG: lossless, so tests compare pixels exactly).
"""

from __future__ import annotations

import base64
import json
import os

import numpy as np

from dataset_fixtures import image_array, write_image

FEATURE_DIM = 2048


def _dump(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


# ---------------------------------------------------------------- NLVR2

def write_nlvr2(root: str) -> dict:
    """``root/{train,dev}.json`` (JSON lines) and ``root/images/train/<directory>/``, ``root/images/dev/``.

    train: train-1-0-0 and train-1-0-1 (one pair, folder 3; left 24x32, right 20x28), train-2-1-0 (right
    image missing), train-3-0-0 (right image corrupt), train-4-0-0 (malformed: label 'maybe'),
    train-5-0-0 (malformed: its directory climbs out of the image root). dev: dev-10-0-0, dev-10-1-0 (the
    same sentence on two pairs), dev-11-0-1.
    """
    def line(identifier, sentence, label, directory=None):
        out = {"validation": {}, "sentence": sentence, "left_url": "https://example/left.jpg", "writer": "w1",
               "label": label, "right_url": "https://example/right.jpg", "synset": "dog", "query": "dogs",
               "identifier": identifier, "extra_validations": {}}
        return out if directory is None else {**out, "directory": directory}

    train = [line("train-1-0-0", "There are two dogs.", "True", 3),
             line("train-1-0-1", "Both images show snow.", "False", 3),
             line("train-2-1-0", "A cat sits on a mat.", "True", 5),
             line("train-3-0-0", "One bird flies.", "False", 7),
             line("train-4-0-0", "Two cars.", "maybe", 7),
             line("train-5-0-0", "An escape.", "True", "../../..")]
    dev = [line("dev-10-0-0", "Each image has a tree.", "True"), line("dev-10-1-0", "Each image has a tree.", "False"),
           line("dev-11-0-1", "No image shows water.", "True")]
    for name, lines in (("train", train), ("dev", dev)):
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, f"{name}.json"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(x) + "\n" for x in lines)
    train_dir = os.path.join(root, "images", "train")
    write_image(os.path.join(train_dir, "3", "train-1-0-img0.png"), 10)
    write_image(os.path.join(train_dir, "3", "train-1-0-img1.png"), 11, height=20, width=28)
    write_image(os.path.join(train_dir, "5", "train-2-1-img0.png"), 20)
    write_image(os.path.join(train_dir, "7", "train-3-0-img0.png"), 30)
    write_image(os.path.join(train_dir, "7", "train-3-0-img1.png"), 31, truncate=True)
    for seed, stem in enumerate(("dev-10-0", "dev-10-1", "dev-11-0")):
        for side in (0, 1):
            write_image(os.path.join(root, "images", "dev", f"{stem}-img{side}.png"), 100 + 2 * seed + side)
    return {"root": root, "left": image_array(10), "right": image_array(11, height=20, width=28),
            "good": ["train-1-0-0", "train-1-0-1"], "missing": ["train-2-1-0"], "corrupt": ["train-3-0-0"],
            "malformed": ["train-4-0-0", "train-5-0-0"]}


# ---------------------------------------------------------------- Flickr30K, Karpathy split

def write_flickr30k(root: str) -> dict:
    """``root/dataset_flickr30k.json`` and images in ``root/flickr30k-images``.

    (filename: split, #captions): 1000.jpg train 2, 1001.jpg train 1 (image missing), 1002 train
    (malformed: its filename climbs out of the image root), 2000.jpg val 2, 3000.jpg test 3, 3001.jpg test 2.
    """
    spec = [("1000.jpg", "train", ["Two men play guitar.", "Musicians on a stage."]),
            ("1001.jpg", "train", ["A dog runs."]),
            ("../1002.jpg", "train", ["A cat."]),
            ("2000.jpg", "val", ["A girl jumps.", "A child in the air."]),
            ("3000.jpg", "test", ["A red boat.", "A boat on a lake.", "  Someone rows a boat.\n"]),
            ("3001.jpg", "test", ["A snowy road.", "Cars in snow."])]
    images, sentid = [], 0
    for imgid, (filename, split, captions) in enumerate(spec):
        sentences = []
        for raw in captions:
            sentences.append({"tokens": raw.lower().strip(" .\n").split(), "raw": raw, "imgid": imgid, "sentid": sentid})
            sentid += 1
        images.append({"sentids": [s["sentid"] for s in sentences], "imgid": imgid, "sentences": sentences,
                       "split": split, "filename": filename})
        if filename not in ("1001.jpg", "../1002.jpg"):
            write_image(os.path.join(root, "flickr30k-images", filename), 300 + imgid, fmt="JPEG")
    _dump(os.path.join(root, "dataset_flickr30k.json"), {"images": images, "dataset": "flickr30k"})
    return {"json": os.path.join(root, "dataset_flickr30k.json"), "images": os.path.join(root, "flickr30k-images")}


# ---------------------------------------------------------------- Visual Genome

def write_visual_genome(root: str) -> dict:
    """``root/region_descriptions.json``, ``root/question_answers.json``, ``root/VG_100K{,_2}/<id>.jpg``.

    Images: 1 (VG_100K), 2 (VG_100K_2), 3 (missing), 4 (corrupt), 50 (VG_100K; our ``val`` split).
    Regions: 11, 21, 501 good; 12 (malformed: width 0); 31 (image missing); entry 2 of the list is not an
    object (malformed). QAs: 101, 201, 5001 good; 102 (malformed: empty question); 301 (image missing);
    401 (image corrupt).
    """
    def region(rid, image_id, phrase, x, y, w, h):
        return {"region_id": rid, "width": w, "height": h, "image_id": image_id, "phrase": phrase, "y": y, "x": x}

    def qa(qid, image_id, question, answer):
        return {"a_objects": [], "question": question, "image_id": image_id, "qa_id": qid, "answer": answer,
                "q_objects": []}

    _dump(os.path.join(root, "region_descriptions.json"), [
        {"regions": [region(11, 1, "a red car ", 2, 3, 10, 8), region(12, 1, "nothing", 0, 0, 0, 5)], "id": 1},
        {"regions": [region(21, 2, "a dog on grass", 4, 1, 6, 6)], "id": 2},
        "not an entry",
        {"regions": [region(31, 3, "a lamp", 1, 1, 2, 2)], "id": 3},
        {"regions": [region(501, 50, "two cats", 0, 0, 5, 5)], "id": 50},
    ])
    _dump(os.path.join(root, "question_answers.json"), [
        {"id": 1, "qas": [qa(101, 1, "What color is the car?", "Red."), qa(102, 1, "", "Blue.")]},
        {"id": 2, "qas": [qa(201, 2, "Where is the dog?", "On the grass.")]},
        {"id": 3, "qas": [qa(301, 3, "Who is there?", "A man.")]},
        {"id": 4, "qas": [qa(401, 4, "Why is it dark?", "Night.")]},
        {"id": 50, "qas": [qa(5001, 50, "How many cats?", "Two.")]},
    ])
    write_image(os.path.join(root, "VG_100K", "1.jpg"), 401, fmt="JPEG")
    write_image(os.path.join(root, "VG_100K_2", "2.jpg"), 402, fmt="JPEG")
    write_image(os.path.join(root, "VG_100K", "4.jpg"), 404, fmt="JPEG", truncate=True)
    write_image(os.path.join(root, "VG_100K", "50.jpg"), 450, fmt="JPEG")
    return {"root": root}


# ---------------------------------------------------------------- GQA

def _gqa_question(image_id, question, answer=None, structural="query", semantic="attr", detailed="queryAttr"):
    out = {"semantic": [], "entailed": [], "equivalent": [], "question": question, "imageId": image_id,
           "isBalanced": True, "groups": {"global": None, "local": "10q-obj"}, "semanticStr": "select: cup"}
    if answer is not None:
        out |= {"answer": answer, "fullAnswer": f"The answer is {answer}.", "annotations": {},
                "types": {"structural": structural, "semantic": semantic, "detailed": detailed}}
    return out


def write_gqa(root: str) -> dict:
    """``root/{train_balanced,testdev_balanced,submission_all}_questions.json``, ``root/train_all_questions/``
    (two parts) and ``root/images/<imageId>.jpg``.

    train_balanced (qid: imageId): 0201: 2375429 (verify/attr, 'no'), 0202: n161313 (query/rel, 'cup'),
    0203: 999 (image missing), 0204: '../outside' (malformed: leaves the image root), 0205: (malformed: no
    question). testdev_balanced: 0301, 0302 on 2375429. submission_all: 0401 (no answer). train_all: parts
    0 and 1 with 0501, 0502.
    """
    questions = {
        "0201": _gqa_question("2375429", "Is the cup red?", "no", "verify", "attr", "verifyAttr"),
        "0202": _gqa_question("n161313", "What is on the table?", "cup", "query", "rel", "relS"),
        "0203": _gqa_question("999", "What color is the sky?", "blue"),
        "0204": _gqa_question("../outside", "Is it day?", "yes", "verify", "global", "verifyGlobal"),
        "0205": {**_gqa_question("2375429", "", "red"), "question": None},
    }
    _dump(os.path.join(root, "train_balanced_questions.json"), questions)
    _dump(os.path.join(root, "testdev_balanced_questions.json"), {
        "0301": _gqa_question("2375429", "Is the cup red?", "no", "verify", "attr", "verifyAttr"),
        "0302": _gqa_question("2375429", "What is the cup made of?", "glass", "query", "attr", "queryAttr"),
    })
    _dump(os.path.join(root, "submission_all_questions.json"), {"0401": _gqa_question("n161313", "What is this?")})
    for part, qid in enumerate(("0501", "0502")):
        _dump(os.path.join(root, "train_all_questions", f"train_all_questions_{part}.json"),
              {qid: _gqa_question("2375429", f"Question {part}?", "yes", "verify", "obj", "exist")})
    write_image(os.path.join(root, "images", "2375429.jpg"), 501, fmt="JPEG")
    write_image(os.path.join(root, "images", "n161313.jpg"), 502, fmt="JPEG")
    with open(os.path.join(root, "outside.jpg"), "wb") as f:  # exists, but outside the image root
        f.write(b"not read")
    return {"root": root}


# ---------------------------------------------------------------- region features

def region_arrays(seed: int, n: int, width: int = 64, height: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """``(features float32 [n, FEATURE_DIM], boxes float32 [n, 4] pixels inside the image)``."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n, FEATURE_DIM)).astype(np.float32)
    x0, y0 = rng.uniform(0, width / 2, n), rng.uniform(0, height / 2, n)
    boxes = np.stack([x0, y0, x0 + rng.uniform(1, width / 2, n), y0 + rng.uniform(1, height / 2, n)], -1)
    return features, boxes.astype(np.float32)


def tsv_line(image_id: str, height: int, width: int, features: np.ndarray, boxes: np.ndarray) -> str:
    """One LXMERT TSV line (the fields of ``region_features.FIELDS``)."""
    n = len(boxes)

    def b64(array, dtype):
        return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode()

    fields = [image_id, str(height), str(width), b64(np.arange(n), "<i8"), b64(np.full(n, 0.9), "<f4"),
              b64(np.zeros(n), "<i8"), b64(np.full(n, 0.5), "<f4"), str(n), b64(boxes, "<f4"), b64(features, "<f4")]
    return "\t".join(fields) + "\n"


def write_region_features(root: str) -> dict:
    """``root/npz/<id>.npz`` and ``root/features.tsv`` (images 64 wide, 48 high).

    npz: img1 (3 regions), img2 (malformed: 3 features, 2 boxes), img3 (malformed: a NaN feature),
    img4 (malformed: not an npz). TSV: COCO_1 (2 regions), COCO_2 (3 regions, one box overhangs by 0.5 px),
    COCO_3 (malformed at indexing: features of width 1024), COCO_4 (malformed at indexing: 9 fields),
    COCO_5 (malformed when read: an inverted box).
    """
    npz_dir = os.path.join(root, "npz")
    os.makedirs(npz_dir, exist_ok=True)
    good = {}
    features, boxes = region_arrays(1, 3)
    good["img1"] = (features, boxes)
    np.savez(os.path.join(npz_dir, "img1.npz"), features=features, boxes=boxes, image_w=64, image_h=48)
    np.savez(os.path.join(npz_dir, "img2.npz"), features=features, boxes=boxes[:2], image_w=64, image_h=48)
    nan = features.copy()
    nan[1, 7] = np.nan
    np.savez(os.path.join(npz_dir, "img3.npz"), features=nan, boxes=boxes, image_w=64, image_h=48)
    with open(os.path.join(npz_dir, "img4.npz"), "wb") as f:
        f.write(b"PK\x03\x04 truncated")
    lines = []
    for name, seed, n in (("COCO_1", 11, 2), ("COCO_2", 12, 3)):
        features, boxes = region_arrays(seed, n)
        if name == "COCO_2":
            boxes[0, 2] = 64.5
        good[name] = (features, boxes)
        lines.append(tsv_line(name, 48, 64, features, boxes))
    features, boxes = region_arrays(13, 2)
    lines.append(tsv_line("COCO_3", 48, 64, features[:, :1024], boxes))
    lines.append("\t".join(tsv_line("COCO_4", 48, 64, features, boxes).split("\t")[:9]) + "\n")
    inverted = boxes.copy()
    inverted[1, [0, 2]] = inverted[1, [2, 0]]
    lines.append(tsv_line("COCO_5", 48, 64, features, inverted))
    with open(os.path.join(root, "features.tsv"), "w") as f:
        f.writelines(lines)
    return {"npz": npz_dir, "tsv": os.path.join(root, "features.tsv"), "good": good, "size": (64, 48)}
