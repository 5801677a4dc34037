"""Tests for the Sort-of-CLEVR generator.

Answers are re-derived here with plain Python from the object coordinates, and
the coordinates themselves are recovered from the rendered pixels, so the
questions are checked against the picture rather than against the generator's
own code paths.
"""

from __future__ import annotations

import collections
import math
import pickle

import numpy as np
import pytest

from semrel_jax.data import sort_of_clevr as soc

S = 5
W = 75


def _circle_area(s: int) -> int:
    return sum(1 for dx in range(-s, s + 1) for dy in range(-s, s + 1) if dx * dx + dy * dy <= s * s)


def _scenes(n: int, seed: int = 123):
    for i in range(n):
        yield soc.generate_scene(np.random.default_rng([seed, i]))


def _reference_answer(centers, shapes, kind, color, image_size=W):
    """Independent re-derivation of the answer with plain loops."""
    i = list(soc.COLORS).index(color)
    x, y = centers[i]
    if kind == "shape":
        return shapes[i]
    if kind == "horizontal":
        return "left" if 2 * x < image_size else "right"
    if kind == "vertical":
        return "top" if 2 * y < image_size else "bottom"
    if kind in ("closest", "furthest"):
        dists = [(math.dist(centers[i], centers[j]), j) for j in range(len(centers)) if j != i]
        dists.sort()
        if kind == "closest":
            assert dists[0][0] < dists[1][0] - 1e-9, "tie in closest"
            return shapes[dists[0][1]]
        assert dists[-1][0] > dists[-2][0] + 1e-9, "tie in furthest"
        return shapes[dists[-1][1]]
    if kind == "count":
        n = 0
        for j in range(len(shapes)):
            if j != i and shapes[j] == shapes[i]:
                n += 1
        return str(n)
    raise AssertionError(kind)


def _recover_from_pixels(img):
    """Colour -> (centre (x, y), shape) found from the image alone."""
    out = {}
    square_area, circle_area = (2 * S) ** 2, _circle_area(S)
    for color in soc.COLORS:
        mask = np.all(img == np.array(soc.COLOR_RGB[color], np.uint8), axis=-1)
        ys, xs = np.nonzero(mask)
        count = int(mask.sum())
        if count == square_area:
            shape = "square"
            # Square spans [c-s, c+s): width 2s, centre = (min + max + 1) / 2.
            cx, cy = (xs.min() + xs.max() + 1) // 2, (ys.min() + ys.max() + 1) // 2
            assert xs.max() - xs.min() + 1 == 2 * S
        elif count == circle_area:
            shape = "circle"
            # Circle spans [c-s, c+s]: centre = (min + max) / 2.
            cx, cy = (xs.min() + xs.max()) // 2, (ys.min() + ys.max()) // 2
            assert xs.max() - xs.min() == 2 * S
        else:
            raise AssertionError(f"{color}: unexpected pixel count {count}")
        out[color] = ((int(cx), int(cy)), shape)
    return out


# ---------------------------------------------------------------- determinism


def test_determinism_same_key():
    a = soc.SortOfClevr("train", num_images=5, seed=7)
    b = soc.SortOfClevr("train", num_images=5, seed=7)
    for idx in [0, 1, 19, 20, 57, 99]:
        ea, eb = a[idx], b[idx]
        assert ea["image"].tobytes() == eb["image"].tobytes()
        assert {k: v for k, v in ea.items() if k != "image"} == {
            k: v for k, v in eb.items() if k != "image"
        }
    for i in range(5):
        assert a.questions(i) == b.questions(i)
        np.testing.assert_array_equal(a.scene(i).centers, b.scene(i).centers)


def test_random_access_order_independent():
    a = soc.SortOfClevr("validation", num_images=10, seed=3)
    b = soc.SortOfClevr("validation", num_images=10, seed=3)
    forward = [a[i] for i in range(len(a))]
    for i in reversed(range(len(b))):
        e = b[i]
        assert e["image"].tobytes() == forward[i]["image"].tobytes()
        assert e["question"] == forward[i]["question"]
        assert e["answer"] == forward[i]["answer"]


def test_each_image_is_rendered_once_within_the_cache_budget(monkeypatch):
    rendered = collections.Counter()
    real_render = soc.render

    def counting_render(scene):
        rendered[scene.centers.tobytes()] += 1
        return real_render(scene)

    monkeypatch.setattr(soc, "render", counting_render)
    ds = soc.SortOfClevr("train", num_images=100, seed=0)
    order = np.random.default_rng(0).permutation(len(ds))  # a shuffled stream: an image's questions far apart
    first = {int(i): ds[int(i)]["image"] for i in order}
    assert sum(rendered.values()) == 100 and max(rendered.values()) == 1
    for i in order[:50]:  # the cached image is the image, and a fresh writable copy
        again = ds[int(i)]["image"]
        np.testing.assert_array_equal(again, first[int(i)])
        again[0, 0] = 255 - again[0, 0]
        np.testing.assert_array_equal(ds[int(i)]["image"], first[int(i)])
    # past the budget (here 50 images), the oldest images are dropped and rendered again when met
    monkeypatch.setattr(soc.SortOfClevr, "_IMAGE_CACHE_BYTES", 50 * first[0].nbytes)
    small = soc.SortOfClevr("train", num_images=100, seed=0)
    rendered.clear()
    for i in order:
        small[int(i)]
    assert len(small._cache) == 50 and sum(rendered.values()) > 100


def test_different_split_and_seed_differ():
    train = soc.SortOfClevr("train", num_images=5, seed=0)
    test = soc.SortOfClevr("test", num_images=5, seed=0)
    other_seed = soc.SortOfClevr("train", num_images=5, seed=1)
    for i in range(5):
        assert not np.array_equal(train.scene(i).centers, test.scene(i).centers)
        assert not np.array_equal(train.scene(i).centers, other_seed.scene(i).centers)
    # Different images of the same split also differ.
    assert not np.array_equal(train.scene(0).centers, train.scene(1).centers)


def test_pickle_roundtrip_and_numpy_index():
    ds = soc.SortOfClevr("train", num_images=3, seed=5)
    _ = ds[0]  # populate the cache before pickling
    ds2 = pickle.loads(pickle.dumps(ds))
    assert len(ds2) == len(ds)
    for idx in [np.int64(0), np.int32(21), np.uint8(59)]:
        e1, e2 = ds[idx], ds2[int(idx)]
        assert e1["image"].tobytes() == e2["image"].tobytes()
        assert e1["question"] == e2["question"] and e1["answer"] == e2["answer"]
        assert e1["index"] == int(idx) and isinstance(e1["index"], int)


def test_getitem_fields():
    ds = soc.SortOfClevr("train", num_images=2, questions_per_image=4)
    assert len(ds) == 8
    e = ds[5]
    assert set(e) == {"image", "question", "answer", "family", "kind", "image_index", "index"}
    assert e["image"].dtype == np.uint8 and e["image"].shape == (W, W, 3)
    assert e["image_index"] == 1 and e["index"] == 5
    q = ds.questions(1)[1]
    assert (e["question"], e["answer"], e["family"], e["kind"]) == (q.text, q.answer, q.family, q.kind)
    # Mutating a returned image must not corrupt later reads.
    e["image"][:] = 7
    assert ds[5]["image"].tobytes() != e["image"].tobytes()


# ------------------------------------------------------------------ rendering


def test_rendering_matches_scene():
    circle_area = _circle_area(S)
    for scene in _scenes(200):
        img = soc.render(scene)
        assert img.dtype == np.uint8 and img.shape == (W, W, 3)
        covered = np.zeros((W, W), dtype=int)
        for color, (x, y), shape in zip(soc.COLORS, scene.centers.tolist(), scene.shapes):
            rgb = np.array(soc.COLOR_RGB[color], np.uint8)
            mask = np.all(img == rgb, axis=-1)
            # Fully inside the image.
            assert S <= x and x + S <= W - 1 and S <= y and y + S <= W - 1
            if shape == "square":
                assert mask[y - S : y + S, x - S : x + S].all()
                assert mask.sum() == (2 * S) ** 2
            else:
                assert mask[y, x]
                for cy, cx in [(y - S, x - S), (y - S, x + S - 1), (y + S - 1, x - S), (y + S - 1, x + S - 1)]:
                    assert not mask[cy, cx]
                assert mask.sum() == circle_area
            covered += mask
        assert covered.max() == 1  # no pixel claimed by two colours
        assert (img[covered == 0] == 0).all()  # black elsewhere


def test_objects_keep_gap():
    for scene in _scenes(200, seed=9):
        c = scene.centers.tolist()
        for i in range(6):
            for j in range(i + 1, 6):
                # Closed boxes [c-s, c+s] separated by >= 1 empty pixel.
                assert abs(c[i][0] - c[j][0]) >= 2 * S + 2 or abs(c[i][1] - c[j][1]) >= 2 * S + 2


def test_centres_recovered_from_pixels_and_answers_consistent():
    ds = soc.SortOfClevr("train", num_images=60, seed=11)
    for img_idx in range(ds.num_images):
        e = ds[img_idx * ds.questions_per_image]
        scene = ds.scene(img_idx)
        rec = _recover_from_pixels(e["image"])
        centers = [rec[c][0] for c in soc.COLORS]
        shapes = [rec[c][1] for c in soc.COLORS]
        assert centers == [tuple(p) for p in scene.centers.tolist()]
        assert tuple(shapes) == scene.shapes
        # Every question answered from the pixels alone.
        for q in ds.questions(img_idx):
            assert q.answer == _reference_answer(centers, shapes, q.kind, q.color), q


# -------------------------------------------------------------------- answers


def test_answers_match_reference_every_kind():
    kinds = soc.NON_RELATIONAL_KINDS + soc.RELATIONAL_KINDS
    for scene in _scenes(300, seed=5):
        centers = [tuple(p) for p in scene.centers.tolist()]
        for kind in kinds:
            for color in soc.COLORS:
                ref = _reference_answer(centers, list(scene.shapes), kind, color)
                assert soc.answer(scene, kind, color) == ref
                q = soc.make_question(scene, kind, color)
                assert q.answer == ref and q.kind == kind and q.color == color
                assert q.family == ("relational" if kind in soc.RELATIONAL_KINDS else "non_relational")


def test_question_text():
    assert soc.question_text("shape", "red") == "what is the shape of the red object?"
    assert soc.question_text("horizontal", "gray") == "is the gray object on the left or the right?"
    assert soc.question_text("vertical", "blue") == "is the blue object on the top or the bottom?"
    assert (
        soc.question_text("closest", "green")
        == "what is the shape of the object closest to the green object?"
    )
    assert (
        soc.question_text("furthest", "orange")
        == "what is the shape of the object furthest from the orange object?"
    )
    assert (
        soc.question_text("count", "yellow")
        == "how many other objects have the same shape as the yellow object?"
    )
    with pytest.raises(ValueError, match="kind"):
        soc.question_text("size", "red")
    with pytest.raises(ValueError, match="color"):
        soc.question_text("shape", "purple")


def test_handcrafted_scene():
    # red at origin-ish; distances from red strictly ordered.
    centers = np.array([[10, 10], [30, 10], [10, 40], [60, 60], [40, 25], [62, 12]])
    shapes = ("square", "circle", "square", "circle", "circle", "square")
    scene = soc.Scene(centers=centers, shapes=shapes, image_size=W, object_size=S)
    assert soc.answer(scene, "closest", "red") == "circle"  # green at 20
    assert soc.answer(scene, "furthest", "red") == "circle"  # orange at ~70.7
    assert soc.answer(scene, "count", "red") == "2"
    assert soc.answer(scene, "count", "green") == "2"
    assert soc.answer(scene, "horizontal", "red") == "left"
    assert soc.answer(scene, "horizontal", "orange") == "right"
    assert soc.answer(scene, "vertical", "blue") == "bottom"
    assert soc.answer(scene, "vertical", "yellow") == "top"


# --------------------------------------------------------------- question mix


def test_question_mix_and_vocabulary():
    ds = soc.SortOfClevr("train", num_images=100, seed=2)
    qpi = ds.questions_per_image
    space = soc.answer_space()
    vocab = set(soc.vocabulary())
    assert soc.vocabulary() == sorted(vocab)
    kinds_seen, colors_seen = set(), set()
    for i in range(ds.num_images):
        qs = ds.questions(i)
        assert len(qs) == qpi
        assert [q.family for q in qs] == ["non_relational"] * (qpi // 2) + ["relational"] * (qpi // 2)
        for q in qs:
            assert q.text.endswith("?") and q.text == q.text.lower()
            assert q.answer in space[q.kind]
            assert set(q.text.replace("?", " ?").split()) <= vocab
            assert q.answer in vocab and len(q.answer.split()) == 1
            kinds_seen.add(q.kind)
            colors_seen.add(q.color)
    assert kinds_seen == set(soc.NON_RELATIONAL_KINDS + soc.RELATIONAL_KINDS)
    assert colors_seen == set(soc.COLORS)
    assert "?" in vocab and all(c in vocab for c in soc.COLORS)
    # Dataset items mirror questions().
    e = ds[3 * qpi + 15]
    q = ds.questions(3)[15]
    assert (e["question"], e["answer"], e["family"], e["kind"]) == (q.text, q.answer, q.family, q.kind)


def test_answer_space():
    space = soc.answer_space()
    assert set(space) == set(soc.NON_RELATIONAL_KINDS + soc.RELATIONAL_KINDS)
    assert space["count"] == ("0", "1", "2", "3", "4", "5")
    assert set(space["shape"]) == {"square", "circle"}


def test_answer_distribution_sanity():
    ds = soc.SortOfClevr("train", num_images=100, seed=0)  # 2000 questions
    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for i in range(ds.num_images):
        for q in ds.questions(i):
            by_kind[q.kind][q.answer] += 1
    for kind in ("shape", "horizontal", "vertical"):
        counts = by_kind[kind]
        total = sum(counts.values())
        assert total > 200
        for a in soc.answer_space()[kind]:
            assert 0.35 <= counts[a] / total <= 0.65, (kind, counts)
    for kind in ("closest", "furthest"):
        counts = by_kind[kind]
        total = sum(counts.values())
        for a in soc.SHAPES:
            assert 0.25 <= counts[a] / total <= 0.75, (kind, counts)
    # Count ~ Binomial(5, 1/2): middle values dominate, extremes are rare.
    count = by_kind["count"]
    total = sum(count.values())
    assert (count["2"] + count["3"]) / total > 0.45
    assert (count["0"] + count["5"]) / total < 0.15


# ------------------------------------------------------------------ bad input


def test_bad_split():
    with pytest.raises(ValueError, match="train"):
        soc.SortOfClevr("dev", num_images=1)


def test_index_out_of_range():
    ds = soc.SortOfClevr("train", num_images=2, questions_per_image=4)
    for bad in [-1, 8, 100, np.int64(8)]:
        with pytest.raises(IndexError):
            ds[bad]
    with pytest.raises(IndexError):
        ds.scene(2)
    with pytest.raises(IndexError):
        ds.questions(-1)
    with pytest.raises(TypeError):
        ds[1.5]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_images=0),
        dict(num_images=1, questions_per_image=0),
        dict(num_images=1, questions_per_image=3),
        dict(num_images=1, seed=-1),
        dict(num_images=1, image_size=20),
        dict(num_images=1, object_size=0),
        dict(num_images=1, object_size=20),
    ],
)
def test_bad_constructor_args(kwargs):
    with pytest.raises(ValueError):
        soc.SortOfClevr("train", **kwargs)


def test_bad_answer_args():
    scene = next(_scenes(1))
    with pytest.raises(ValueError):
        soc.answer(scene, "size", "red")
    with pytest.raises(ValueError):
        soc.answer(scene, "shape", "purple")


def test_other_sizes():
    ds = soc.SortOfClevr("train", num_images=3, image_size=128, object_size=8, questions_per_image=2)
    e = ds[5]
    assert e["image"].shape == (128, 128, 3)
    small = soc.SortOfClevr("train", num_images=3, image_size=40, object_size=3)
    assert small[0]["image"].shape == (40, 40, 3)
