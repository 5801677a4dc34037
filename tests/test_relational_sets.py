"""experiments/relational_sets.py: generated relational sets read back through the public llava_json path,
their answers checked against the pixels."""

import importlib.util
import pathlib
import re
import sys

import numpy as np
import pytest

from semrel_jax.config import defaults
from semrel_jax.data import registry

_PATH = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "relational_sets.py"
_spec = importlib.util.spec_from_file_location("relational_sets", _PATH)
relational_sets = sys.modules["relational_sets"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(relational_sets)


def _read(out, variant, num_train=3, num_eval=2, seed=0):
    c = defaults.base_config()
    c.data.update(name="llava_json", **relational_sets.write_set(str(out), variant, num_train, num_eval, seed))
    return registry.build_sources(c)


def _centre(image, colour):
    """(x, y) centroid of the pixels exactly of ``colour``."""
    ys, xs = np.nonzero((image == np.asarray(relational_sets.PALETTE[colour], np.uint8)).all(-1))
    assert len(xs) > 20, f"{colour} object not drawn"
    return xs.mean(), ys.mean()


@pytest.mark.parametrize("variant,size", [("A", 96), ("B", 128)])
def test_read_back_through_llava_json_and_answers_match_the_pixels(tmp_path, variant, size):
    train, evaluation = _read(tmp_path, variant)
    kinds = relational_sets.KINDS
    assert (len(train), len(evaluation)) == (3 * len(kinds), 2 * len(kinds))
    v = relational_sets.VARIANTS[variant]
    checked = 0
    for i in range(len(train)):
        example = train[i]
        image, question, answer = example["image"], example["question"], example["answer"]
        assert example["kind"] == kinds[i % len(kinds)] and image.shape == (size, size, 3)
        corner = image[0, 0]
        assert (corner == 255).all() if variant == "A" else corner[0] == corner[1] == corner[2] < 255
        colours = [c for c in relational_sets.PALETTE if re.search(rf"\b{c}\b", question)]
        drawn = [c for c in relational_sets.PALETTE if (image == relational_sets.PALETTE[c]).all(-1).sum() > 20]
        assert len(drawn) == v.num_objects
        if example["kind"] in ("left_of", "above"):  # the question's colour order is (x, y)
            x, y = sorted(colours, key=question.index)
            axis = 0 if example["kind"] == "left_of" else 1
            assert answer == ("yes" if _centre(image, x)[axis] < _centre(image, y)[axis] else "no")
            checked += 1
        if example["kind"] == "nearest" and variant == "A":
            (x,) = colours
            distance = {c: np.hypot(*np.subtract(_centre(image, c), _centre(image, x))) for c in drawn if c != x}
            assert answer == min(distance, key=distance.get)
            checked += 1
    assert checked == 3 * (3 if variant == "A" else 2)


def test_deterministic_in_the_seed(tmp_path):
    first = [m["answer"] for m in map(_read(tmp_path / "a", "B", 4, 1)[0].metadata, range(24))]
    again = [m["answer"] for m in map(_read(tmp_path / "b", "B", 4, 1)[0].metadata, range(24))]
    other = [m["answer"] for m in map(_read(tmp_path / "c", "B", 4, 1, seed=1)[0].metadata, range(24))]
    assert first == again and first != other
    assert (tmp_path / "a" / "train.json").read_bytes() == (tmp_path / "b" / "train.json").read_bytes()


def test_background_normalisation_maps_any_background_to_zero(tmp_path):
    """normalization='background' (the scratch preset's): empty patches are ~0 on white, black and grey noise
    alike, as 'unit' makes them only on black; the objects keep their colour difference to the background."""
    from semrel_jax.data.preprocess import ImagePreprocessor

    train, _ = _read(tmp_path, "B", 1, 1)
    textured = train[0]["image"]
    white = np.full((96, 96, 3), 255, np.uint8)
    white[40:50, 40:50] = relational_sets.PALETTE["red"]
    black = 255 - white
    prep = ImagePreprocessor(96, "background")
    assert np.abs(prep(white)[:30]).max() == 0 and np.abs(prep(black)[:30]).max() == 0
    assert np.allclose(prep(white)[45, 45], np.subtract(relational_sets.PALETTE["red"], 255) / 255)
    assert np.abs(ImagePreprocessor(128, "background")(textured)).mean() < 0.12  # noise and blotches only
    assert np.abs(ImagePreprocessor(96, "unit")(white)[:30]).min() == 1.0
