"""Writers of small, schema-faithful fixtures of the official dataset formats (real PNG/JPEG files).

Each writer lays out a directory exactly as the release does and returns a dict describing what it
wrote (which records are good, missing, corrupt or malformed), so tests can assert exact counts.
Images are deterministic (numpy ``default_rng(seed)``); a *corrupt* image is a valid file cut to half
its bytes (Pillow raises "image file is truncated" when decoding it).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image


def image_array(seed: int, height: int = 24, width: int = 32) -> np.ndarray:
    """A smooth seed-dependent colour ramp (JPEG keeps it within a few levels) with a little noise."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 216, 3)
    ramp = np.linspace(-32, 32, width)[None, :, None] * rng.choice([-1, 1], 3) + np.linspace(-8, 8, height)[:, None, None]
    noise = rng.integers(-2, 3, (height, width, 3))
    return np.clip(base + ramp + noise, 0, 255).astype(np.uint8)


def write_image(path: str, seed: int, fmt: str = "PNG", mode: str = "RGB", truncate: bool = False, **kw) -> None:
    """Writes an image file; ``truncate`` keeps only the first half of its bytes."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(image_array(seed, **kw))
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    data = buffer.getvalue()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2] if truncate else data)


def _dump(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


# ---------------------------------------------------------------- ScienceQA

SCIENCEQA_PROBLEM_1 = {
    "question": "Which of these states is farthest north?",
    "choices": ["West Virginia", "Louisiana", "Arizona", "Oklahoma"],
    "answer": 0,
    "hint": "",
    "image": "image.png",
    "task": "closed choice",
    "grade": "grade2",
    "subject": "social science",
    "topic": "geography",
    "category": "Geography",
    "skill": "Read a map: cardinal directions",
    "lecture": "Maps have four cardinal directions, or main directions.\nThose directions are north, south, east, and west.",
    "solution": "To find the answer, look at the compass rose.\nWest Virginia is farthest north.",
    "split": "train",
}


def _problem(**overrides) -> dict:
    base = {
        "question": "Which word would you find on a dictionary page?",
        "choices": ["lamb", "lion"],
        "answer": 1,
        "hint": "",
        "image": None,
        "task": "closed choice",
        "grade": "grade8",
        "subject": "language science",
        "topic": "reference-skills",
        "category": "Use guide words",
        "skill": "Use guide words",
        "lecture": "Guide words appear on each page of a dictionary.",
        "solution": "Put the words in alphabetical order.",
        "split": "train",
    }
    base.update(overrides)
    return base


def write_scienceqa(root: str) -> dict:
    """problems.json, pid_splits.json, captions.json, images/<split>/<pid>/image.png.

    train: 1 (image, no hint; captioned), 2 (text-only, with hint), 3 (image missing), 4 (corrupt image),
    5 (malformed: answer index out of range), 6 (grayscale image), 99 (listed but absent from problems.json:
    malformed). val: 10. test: 20 (RGBA image). minival: 10.
    """
    problems = {
        "1": SCIENCEQA_PROBLEM_1,
        "2": _problem(hint="The dictionary page has the guide words lake and lift."),
        "3": _problem(image="image.png", subject="natural science", grade="grade5", category="Weather and climate"),
        "4": _problem(image="image.png", subject="natural science", grade="grade5", category="Weather and climate"),
        "5": _problem(answer=2),
        "6": _problem(image="image.png", subject="natural science", question="Which animal is a mammal?",
                      choices=["frog", "cat", "trout"], answer=1, grade="grade3", category="Classification"),
        "10": _problem(image="image.png", split="val", subject="natural science", question="What is the capital of Utah?",
                       choices=["Salt Lake City", "Denver"], answer=0, hint="Look at the map.", grade="grade4"),
        "20": _problem(image="image.png", split="test", question="Is the sky blue?", choices=["yes", "no"], answer=0,
                       grade="grade1", subject="natural science"),
    }
    _dump(os.path.join(root, "problems.json"), problems)
    _dump(os.path.join(root, "pid_splits.json"),
          {"train": ["1", "2", "3", "4", "5", "6", "99"], "val": ["10"], "test": ["20"], "minival": ["10"]})
    _dump(os.path.join(root, "captions.json"), {"model": "fixture", "captions": {"1": "A map of the United States."}})
    images = os.path.join(root, "images")
    write_image(os.path.join(images, "train", "1", "image.png"), 1)
    write_image(os.path.join(images, "train", "4", "image.png"), 4, truncate=True)
    write_image(os.path.join(images, "train", "6", "image.png"), 6, mode="L")
    write_image(os.path.join(images, "val", "10", "image.png"), 10)
    write_image(os.path.join(images, "test", "20", "image.png"), 20, mode="RGBA")
    return {
        "root": root,
        "captions": os.path.join(root, "captions.json"),
        "train_good": ["1", "2", "6"],
        "missing": ["3"],
        "corrupt": ["4"],
        "malformed": ["5", "99"],
    }


# ---------------------------------------------------------------- VQA v2

def _vqa_answers(answers: list[str]) -> list[dict]:
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]


def write_vqa_v2(root: str) -> dict:
    """Official file names under ``root``; images in ``root/train2014`` and ``root/test2015``.

    train2014 questions (question_id: image_id): 10:1, 11:1, 20:2 (CMYK JPEG), 30:3 (image missing),
    40:4 (corrupt JPEG), 50:1 (malformed: no annotation), 60:1 (malformed: empty question).
    test-dev2015 / test2015: 1000:7, 1001:7 with no annotations.
    """
    info = {"description": "fixture", "version": "2.0"}
    qs = [
        {"image_id": 1, "question": "What color is the bus?", "question_id": 10},
        {"image_id": 1, "question": "How many people are there?", "question_id": 11},
        {"image_id": 2, "question": "Is it raining?", "question_id": 20},
        {"image_id": 3, "question": "What is on the table?", "question_id": 30},
        {"image_id": 4, "question": "Is this a cat?", "question_id": 40},
        {"image_id": 1, "question": "Where is the bus going?", "question_id": 50},
        {"image_id": 1, "question": "", "question_id": 60},
    ]
    anns = [
        (10, 1, "what color is the", "other", "red", ["red"] * 7 + ["white"] * 2 + ["red and white"]),
        (11, 1, "how many", "number", "2", ["2"] * 6 + ["3"] * 3 + ["two"]),
        (20, 2, "is it", "yes/no", "no", ["no"] * 9 + ["yes"]),
        (30, 3, "what is on the", "other", "plate", ["plate"] * 10),
        (40, 4, "is this a", "yes/no", "yes", ["yes"] * 10),
        (60, 1, "what", "other", "bus", ["bus"] * 10),
    ]
    annotations = [
        {"question_type": qt, "multiple_choice_answer": mc, "answers": _vqa_answers(a), "image_id": im,
         "answer_type": at, "question_id": qid}
        for qid, im, qt, at, mc, a in anns
    ]
    base = {"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": {"name": "fixture"}}
    _dump(os.path.join(root, "v2_OpenEnded_mscoco_train2014_questions.json"), {**base, "data_subtype": "train2014", "questions": qs})
    _dump(os.path.join(root, "v2_mscoco_train2014_annotations.json"),
          {"info": info, "license": base["license"], "data_subtype": "train2014", "annotations": annotations})
    test_qs = [{"image_id": 7, "question": "What is this?", "question_id": 1000},
               {"image_id": 7, "question": "Is it sunny?", "question_id": 1001}]
    for split in ("test-dev2015", "test2015"):
        _dump(os.path.join(root, f"v2_OpenEnded_mscoco_{split}_questions.json"), {**base, "data_subtype": split, "questions": test_qs})
    write_image(os.path.join(root, "train2014", "COCO_train2014_000000000001.jpg"), 101, fmt="JPEG")
    write_image(os.path.join(root, "train2014", "COCO_train2014_000000000002.jpg"), 102, fmt="JPEG", mode="CMYK")
    write_image(os.path.join(root, "train2014", "COCO_train2014_000000000004.jpg"), 104, fmt="JPEG", truncate=True)
    write_image(os.path.join(root, "test2015", "COCO_test2015_000000000007.jpg"), 107, fmt="JPEG")
    return {"root": root, "good": [10, 11, 20], "missing": [30], "corrupt": [40], "malformed": [50, 60],
            "answers": {a[0]: a for a in anns}}


# ---------------------------------------------------------------- COCO captions, Karpathy split

def write_coco_karpathy(root: str) -> dict:
    """``root/dataset_coco.json`` and images under ``root/train2014``, ``root/val2014``.

    Entries (cocoid: split, #captions): 101: train 3, 102: train 2, 103: train 2 (image missing),
    201: restval 2, 202: restval 1 (corrupt image), 301: val 2, 302: val 3, 401: test 2,
    501: train (malformed: no sentences).
    """
    spec = [
        (101, "train2014", "train", ["A red bus on a street.", "A bus parked by the curb.", "  A large red bus.\n"]),
        (102, "train2014", "train", ["Two cats sleeping.", "Cats on a bed."]),
        (103, "train2014", "train", ["A dog.", "A brown dog."]),
        (201, "val2014", "restval", ["A plate of food.", "Food on a plate."]),
        (202, "val2014", "restval", ["A man surfing."]),
        (301, "val2014", "val", ["A kitchen.", "A white kitchen."]),
        (302, "val2014", "val", ["A train.", "A train at a station.", "A blue train."]),
        (401, "val2014", "test", ["A clock tower.", "A tall clock."]),
        (501, "train2014", "train", []),
    ]
    images, sentid = [], 0
    for imgid, (cocoid, folder, split, caps) in enumerate(spec):
        sentences = []
        for raw in caps:
            sentences.append({"tokens": raw.lower().strip(" .\n").split(), "raw": raw, "imgid": imgid, "sentid": sentid})
            sentid += 1
        images.append({
            "filepath": folder, "sentids": [s["sentid"] for s in sentences], "filename": f"COCO_{folder}_{cocoid:012d}.jpg",
            "imgid": imgid, "split": split, "sentences": sentences, "cocoid": cocoid,
        })
        if cocoid not in (103, 501):
            write_image(os.path.join(root, folder, f"COCO_{folder}_{cocoid:012d}.jpg"), cocoid, fmt="JPEG", truncate=cocoid == 202)
    _dump(os.path.join(root, "dataset_coco.json"), {"images": images, "dataset": "coco"})
    return {"json": os.path.join(root, "dataset_coco.json"), "root": root}


# ---------------------------------------------------------------- LLaVA instruction JSON

def write_llava(root: str) -> dict:
    """``root/llava.json`` and images under ``root/coco/train2017``.

    Records: a (single turn, image), b (two turns, image), c (text-only, one turn), d (image missing),
    e (corrupt image), f (malformed: two human turns in a row), g (malformed: placeholder without image).
    """
    records = [
        {"id": "a", "image": "coco/train2017/a.jpg",
         "conversations": [{"from": "human", "value": "<image>\nWhat is in the picture?"},
                           {"from": "gpt", "value": "A red bus."}]},
        {"id": "b", "image": "coco/train2017/b.png",
         "conversations": [{"from": "human", "value": "What color is the car?\n<image>"},
                           {"from": "gpt", "value": "It is blue."},
                           {"from": "human", "value": "Is it moving?"},
                           {"from": "gpt", "value": "No, it is parked."}]},
        {"id": "c", "conversations": [{"from": "human", "value": "Name a prime number."},
                                      {"from": "gpt", "value": "Seven."}]},
        {"id": "d", "image": "coco/train2017/d.jpg",
         "conversations": [{"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "A dog."}]},
        {"id": "e", "image": "coco/train2017/e.jpg",
         "conversations": [{"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "A cat."}]},
        {"id": "f", "image": "coco/train2017/a.jpg",
         "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "human", "value": "Hello?"}]},
        {"id": "g", "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A box."}]},
    ]
    _dump(os.path.join(root, "llava.json"), records)
    write_image(os.path.join(root, "coco", "train2017", "a.jpg"), 201, fmt="JPEG")
    write_image(os.path.join(root, "coco", "train2017", "b.png"), 202, fmt="PNG", mode="P")
    write_image(os.path.join(root, "coco", "train2017", "e.jpg"), 205, fmt="JPEG", truncate=True)
    return {"json": os.path.join(root, "llava.json"), "root": root}


def write_all(root) -> dict:
    """Every official format under ``root``: data.name -> what its writer returns."""
    root = str(root)
    return {
        "scienceqa": write_scienceqa(os.path.join(root, "scienceqa")),
        "vqa_v2": write_vqa_v2(os.path.join(root, "vqa_v2")),
        "coco_captions": write_coco_karpathy(os.path.join(root, "coco")),
        "llava_json": write_llava(os.path.join(root, "llava")),
    }


# ---------------------------------------------------------------- ScienceQA-shaped data that needs the image

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 50, 220)}


def write_scienceqa_colours(root: str, num_train: int = 320, num_test: int = 96, seed: int = 0, size: int = 32) -> dict:
    """A ScienceQA release (problems.json, pid_splits.json, captions.json, images/<split>/<pid>/image.png)
    whose answers depend on the image, for dry runs of the ScienceQA recipe on tiny models.

    Three problems in four show a noisy square of one colour and ask "Which color is the square?" with the
    options always ``(A) red (B) green (C) blue``: only the image tells the answer (chance 1/3). The rest are
    text-only (``image`` null; with or without a hint) with a fixed answer, so every breakdown category has
    problems. Captions (evaluation context, as the release uses them) say nothing about the colour.
    Subjects and grades cycle so NAT / SOC / LAN and G1-6 / G7-12 are all present. ``num_val = num_test``.
    """
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    subjects = ("natural science", "social science", "language science")
    problems, splits, captions = {}, {"train": [], "val": [], "test": []}, {}
    counts = {"train": num_train, "val": num_test, "test": num_test}
    pid = 0
    for split, count in counts.items():
        for i in range(count):
            pid += 1
            key = str(pid)
            with_image = i % 4 != 3
            common = dict(task="closed choice", grade=f"grade{1 + i % 12}", subject=subjects[i % 3], topic="colours",
                          category="Colours", skill="Identify colours", lecture="Colours have names.", split=split)
            if with_image:
                colour = int(rng.integers(len(names)))
                problems[key] = dict(common, question="Which color is the square?", choices=names, answer=colour,
                                     hint="", image="image.png", solution=f"The square is {names[colour]}.")
                pixels = np.clip(np.asarray(COLOURS[names[colour]]) + rng.integers(-25, 26, (size, size, 3)), 0, 255)
                path = os.path.join(root, "images", split, key, "image.png")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                Image.fromarray(pixels.astype(np.uint8)).save(path)
                captions[key] = "A picture of a square."
            else:
                problems[key] = dict(common, question="Is this question about words?", choices=["yes", "no"], answer=0,
                                     hint="It is about words." if i % 8 == 3 else "", image=None, solution="It is.")
            splits[split].append(key)
    _dump(os.path.join(root, "problems.json"), problems)
    _dump(os.path.join(root, "pid_splits.json"), splits)
    _dump(os.path.join(root, "captions.json"), {"captions": captions})
    words = sorted({w for p in problems.values() for w in (p["question"] + " " + " ".join(p["choices"])).split()})
    return {"root": root, "counts": counts, "words": words}
