"""An object tower's training input tokenized once per image on the host (data/object_cache.py) is the step's own."""

import jax
import numpy as np
import pytest

from semrel_jax import recipe
from semrel_jax.data import pipeline
from semrel_jax.errors import ConfigError
from semrel_jax.models.objects import ObjectTokenizer, ObjectTokens
from semrel_jax.training import train_step as train_step_lib


@pytest.fixture
def objects_config(tiny_config):
    tiny_config.model.encoders.vit.update(tokens="objects", normalization="background", posemb="sincos2d")
    recipe.prepare_config(tiny_config)
    return tiny_config


def test_each_image_is_tokenized_once_into_the_steps_own_tokens(objects_config, tokenizer):
    data = recipe.build_data(objects_config)
    featurizer = recipe.build_featurizer(objects_config, tokenizer)
    cache = featurizer.object_caches["vit"]
    examples = [data.train[i] for i in range(40)]  # 20 questions per image: two images
    rows = [featurizer.train(example) for example in examples]
    assert (cache.misses, cache.hits, len(cache)) == (2, 38, 2)

    pixels = np.stack([featurizer.preprocessors["vit"](example["image"]) for example in examples])
    expected = jax.jit(ObjectTokenizer(objects_config.model.encoders.vit.max_objects))(pixels)  # what the step computes
    got = pipeline.stack(rows)["images"]["vit"]
    assert isinstance(got, ObjectTokens) and expected.valid.sum() == 40 * 6  # Sort-of-CLEVR: six objects an image
    jax.tree.map(np.testing.assert_array_equal, got, jax.device_get(expected))
    # prompts (generation) carry pixels unless asked for the tokens, as the run's evaluation asks
    np.testing.assert_array_equal(featurizer.prompt(examples[0])["images"]["vit"], pixels[0])
    jax.tree.map(np.testing.assert_array_equal, featurizer.prompt(examples[0], object_tokens=True)["images"]["vit"],
                 rows[0]["images"]["vit"])
    assert cache.hits == 39

    full = recipe.build_featurizer(objects_config.copy_and_resolve_references(), tokenizer).object_caches["vit"]
    full.capacity = 1  # past its capacity, an image is tokenized again each time it comes, and still right
    for example in examples[18:22]:
        jax.tree.map(np.testing.assert_array_equal, full(example["image"]), featurizer.train(example)["images"]["vit"])
    assert (full.misses, full.hits, len(full)) == (3, 1, 1)
    blank = full(None)  # a text-only example's blank image has no objects
    assert not blank.valid.any() and not blank.tokens.any()


def test_a_step_on_cached_tokens_equals_a_step_on_pixels(objects_config, tokenizer):
    data = recipe.build_data(objects_config)
    mesh = recipe.single_device_mesh()
    model = recipe.build_model(objects_config, len(tokenizer))
    setup = recipe.build_train_state(objects_config, model, mesh)
    step = recipe.build_step(objects_config, model, setup, mesh, 0, donate=False)

    batches = {}
    for kept in (0, 100):
        objects_config.data.object_token_cache = kept
        featurizer = recipe.build_featurizer(objects_config, tokenizer)
        host = pipeline.training_dataset(data.train, featurizer.train, 8, 0)[0]
        abstract = recipe.abstract_batch(objects_config, mesh)  # what AOT compilation and the FLOP count see
        inputs = {key: host[key] for key in abstract}  # the model's inputs (the batch also has example indices)
        assert jax.tree.structure(abstract) == jax.tree.structure(inputs)
        same = jax.tree.map(lambda a, h: (a.shape, a.dtype) == (h.shape, h.dtype), abstract, inputs)
        assert all(jax.tree.leaves(same))
        batches[kept] = train_step_lib.device_batch(host)
    assert isinstance(batches[100]["images"]["vit"], ObjectTokens)
    assert batches[0]["images"]["vit"].shape == (8, 75, 75, 3)

    on_pixels, on_tokens = (step(setup.state, setup.frozen, batches[kept]) for kept in (0, 100))
    assert float(on_pixels[1]["loss"]) == float(on_tokens[1]["loss"]) > 0
    jax.tree.map(np.testing.assert_array_equal, on_pixels[0].params, on_tokens[0].params)


def test_the_cache_refuses_worker_processes(objects_config):
    objects_config.data.num_workers = 2
    with pytest.raises(ConfigError, match="data.object_token_cache.*num_workers=0"):
        recipe.prepare_config(objects_config)
    objects_config.data.object_token_cache = 0
    recipe.prepare_config(objects_config)
