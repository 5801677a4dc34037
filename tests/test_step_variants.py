"""Gradient accumulation and rematerialisation change memory, not the math: same step results."""

import jax
import numpy as np
import optax
import pytest
import vqa  # configs/ is on sys.path (conftest)

from semrel_jax import recipe
from semrel_jax.data import pipeline
from semrel_jax.training import train_step as ts


def _build(c, tmp_path):
    # plain SGD: parameters move linearly in the gradient, so they compare gradients (Adam's normalisation
    # would turn round-off in near-zero gradients into full-size updates)
    return recipe.build(c, str(tmp_path), recipe.single_device_mesh(), optimizer=optax.sgd(0.5))


def _run_steps(c, tmp_path, steps=2):
    run = _build(c, tmp_path)
    source = run.data.train
    batch = ts.device_batch(pipeline.stack([run.featurizer.train(source[i * 3]) for i in range(8)]))
    with jax.set_mesh(run.mesh):
        state, fz = run.train.state, run.train.frozen
        step = run.step_fn(0, donate=False)
        losses = []
        for _ in range(steps):
            state, metrics = step(state, fz, batch)
            losses.append(float(metrics["loss"]))
    return losses, [np.asarray(x) for x in jax.tree.leaves(state.params)]


def _config(**train_overrides):
    c = vqa.get_config("tiny")
    c.model.ica.dropout = 0.0  # dropout masks depend on how the batch is split
    c.train.update(**train_overrides)
    return c


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _run_steps(_config(), tmp_path_factory.mktemp("ref"))


@pytest.mark.parametrize("k", [2, 4])
def test_gradient_accumulation_equals_the_full_batch_step(reference, tmp_path, k):
    losses, params = _run_steps(_config(grad_accum_steps=k), tmp_path)
    np.testing.assert_allclose(losses, reference[0], rtol=1e-5)
    for a, b in zip(params, reference[1]):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_rematerialisation_policies_give_the_same_step(reference, tmp_path, policy):
    c = _config()
    c.model.remat = policy
    if policy == "full":  # with frozen parameters (not differentiated) inside the rematerialised blocks
        c.train.frozen = (r"^vision/encoders/vit/layers/0/(fc1|q_proj)/", r"^llm/layers/1/mlp/")
        plain = _config()
        plain.train.frozen = c.train.frozen
        reference = _run_steps(plain, tmp_path / "plain")
    losses, params = _run_steps(c, tmp_path)
    np.testing.assert_allclose(losses, reference[0], rtol=1e-6)
    for a, b in zip(params, reference[1]):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_accumulation_must_divide_the_batch():
    from semrel_jax import config as config_lib

    c = _config(grad_accum_steps=3)
    with pytest.raises(config_lib.ConfigError, match="train.grad_accum_steps"):
        config_lib.validate(c)


def _vision_leaves(params):
    leaves = [np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(params) if "encoders" in jax.tree_util.keystr(path)]
    assert leaves
    return leaves


def _grouped_vs_repeated(c, tmp_path, group):
    """One step on G questions per image (vision run once per image) and on the same rows with every image
    repeated per row: the same loss and the same parameter update."""
    run = _build(c, tmp_path)
    source, featurizer = run.data.train, run.featurizer
    groups = source.image_groups(group)[[0, 3]]  # two images, G questions each
    grouped = ts.device_batch(pipeline.stack([featurizer.train_group([source[int(i)] for i in g]) for g in groups]))
    flat = ts.device_batch(pipeline.stack([featurizer.train(source[int(i)]) for i in groups.reshape(-1)]))
    results = []
    with jax.set_mesh(run.mesh):
        step = run.step_fn(0, donate=False)
        for batch in (grouped, flat):
            state, fz = run.train.state, run.train.frozen
            before = _vision_leaves(state.params)
            state, metrics = step(state, fz, batch)
            # the shared image's gradient reaches the vision tower (summed over its rows)
            assert any(not np.allclose(a, b) for a, b in zip(_vision_leaves(state.params), before))
            results.append((float(metrics["loss"]), [np.asarray(x) for x in jax.tree.leaves(state.params)]))
    return grouped, flat, results


@pytest.mark.parametrize("injection", ["ica", "prefix"])
def test_questions_sharing_an_image_give_the_step_of_repeated_images(tmp_path, injection):
    c = _config()
    c.model.injection = injection
    grouped, flat, ((loss_g, params_g), (loss_f, params_f)) = _grouped_vs_repeated(c, tmp_path, group=4)
    assert grouped["images"]["vit"].shape[0] == 2 and grouped["tokens"].shape[:2] == (2, 4)
    assert flat["images"]["vit"].shape[0] == 8
    np.testing.assert_allclose(loss_g, loss_f, rtol=1e-6)
    assert not np.isclose(loss_g, 0.0)
    for a, b in zip(params_g, params_f):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_grouped_batches_need_a_batch_the_groups_divide():
    from semrel_jax import config as config_lib

    c = _config()
    c.data.examples_per_image = 3  # does not divide the 20 (tiny: questions_per_image) questions
    c.data.questions_per_image = 20
    with pytest.raises(config_lib.ConfigError, match="data.examples_per_image"):
        config_lib.validate(c)
    c.data.examples_per_image = 5
    c.train.batch_size = 8
    with pytest.raises(config_lib.ConfigError, match="multiple of examples_per_image"):
        config_lib.validate(c)
    c.train.batch_size = 10
    config_lib.validate(c)
    c.data.name, c.data.prompt_format, c.data.root = "scienceqa", "raw", "/nonexistent"
    with pytest.raises(config_lib.ConfigError, match="sort_of_clevr"):
        config_lib.validate(c)


@pytest.mark.parametrize("loss_chunk", [0, 4])
def test_held_out_loss_is_the_steps_loss_before_its_update(tmp_path, loss_chunk):
    """What ends a curriculum stage (``recipe.build_held_out_loss``) reads a batch as the step does, without dropout."""
    run = _build(_config(loss_chunk=loss_chunk), tmp_path)
    batch = ts.device_batch(pipeline.stack([run.featurizer.train(run.data.train[i * 3]) for i in range(8)]))
    with jax.set_mesh(run.mesh):
        held_out = run.held_out_loss_fn()(run.train.state.params, run.train.frozen, batch, np.asarray(True))
        _, metrics = run.step_fn(0, donate=False)(run.train.state, run.train.frozen, batch)
    assert 1.0 < float(held_out) < 10.0
    np.testing.assert_allclose(float(held_out), float(metrics["loss"]), rtol=1e-5)
