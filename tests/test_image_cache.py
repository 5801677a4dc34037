"""``data.image_cache_mb``: an on-disk training split decodes each image once while the cache has room."""

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from semrel_jax import recipe
from semrel_jax.config import defaults
from semrel_jax.data import records


def _llava_set(tmp_path, n_images=3, questions_per_image=2, size=16):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(tmp_path / f"im{i}.png")
        for q in range(questions_per_image):
            rows.append({"id": f"{i}_{q}", "image": f"im{i}.png", "conversations": [
                {"from": "human", "value": f"<image>\nquestion {q}?"}, {"from": "gpt", "value": "yes"}]})
    (tmp_path / "train.json").write_text(json.dumps(rows))
    c = defaults.base_config()
    c.data.update(name="llava_json", train_file=str(tmp_path / "train.json"), eval_file=str(tmp_path / "train.json"),
                  image_root=str(tmp_path))
    return c


@pytest.fixture
def decodes(monkeypatch):
    paths = []
    real = records.read_image

    def counting(path):
        paths.append(path)
        return real(path)

    monkeypatch.setattr(records, "read_image", counting)
    return paths


def test_each_image_is_decoded_once_and_served_as_a_fresh_array(tmp_path, decodes):
    c = _llava_set(tmp_path)
    train = recipe.build_data(c).train
    assert train.image_cache.max_bytes == c.data.image_cache_mb << 20 == 2048 << 20  # the default
    first = [train[i]["image"] for i in range(len(train))]
    again = [train[i]["image"] for i in reversed(range(len(train)))][::-1]
    assert len(decodes) == 3 and len(set(decodes)) == 3
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first[0], first[1])  # two questions about im0
    again[0][:] = 0  # a caller's array is its own
    np.testing.assert_array_equal(train[0]["image"], first[1])
    cache = train.image_cache
    assert (len(cache), cache.decoded, cache.hits, cache.bytes) == (3, 3, 10, 3 * 16 * 16 * 3)
    copy = pickle.loads(pickle.dumps(train))  # a grain worker's copy: the same size, empty
    assert (len(copy.image_cache), copy.image_cache.max_bytes) == (0, 2048 << 20)
    np.testing.assert_array_equal(copy[5]["image"], first[5])


def test_past_its_size_images_are_decoded_each_time_and_zero_keeps_none(tmp_path, decodes):
    c = _llava_set(tmp_path)
    train = recipe.build_data(c).train
    train.cache_images(int(1.5 * 16 * 16 * 3))  # room for one image
    for _ in range(2):
        for i in range(len(train)):
            train[i]
    assert len(train.image_cache) == 1 and len(decodes) == 1 + 2 * 4  # im0 kept; im1, im2: every time
    c.data.image_cache_mb = 0
    decodes.clear()
    train = recipe.build_data(c).train
    for i in range(len(train)):
        train[i]
    assert len(train.image_cache) == 0 and len(decodes) == 6


def test_a_negative_size_is_refused(tmp_path):
    from semrel_jax.errors import ConfigError

    c = _llava_set(tmp_path)
    c.data.image_cache_mb = -1
    with pytest.raises(ConfigError, match="data.image_cache_mb"):
        recipe.prepare_config(c)


def test_threads_that_meet_one_image_at_once_keep_it_once(tmp_path):
    import threading

    c = _llava_set(tmp_path, n_images=8)
    train = recipe.build_data(c).train
    barrier = threading.Barrier(4)

    def read_all():
        barrier.wait()
        for i in range(len(train)):
            train[i]

    threads = [threading.Thread(target=read_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cache = train.image_cache
    assert len(cache) == 8 and cache.bytes == 8 * 16 * 16 * 3
