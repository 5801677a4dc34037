"""``train.loss_chunk``: the cross-entropy a slice of the sequence at a time gives the whole-batch loss, token
accuracy and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import vqa  # configs/ is on sys.path (conftest)

from semrel_jax import config as config_lib
from semrel_jax import recipe
from semrel_jax.data import pipeline
from semrel_jax.training import chunked_loss
from semrel_jax.training import train_step as ts


def test_chunked_losses_and_their_gradients_equal_the_whole_logits():
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(2, 7, 5)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(5, 11)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 11, size=(2, 7)), jnp.int32)
    token_weights = jnp.asarray(rng.uniform(size=(2, 7)), jnp.float32)

    def whole(hidden, weights):
        losses = optax.softmax_cross_entropy_with_integer_labels(hidden @ weights, targets)
        return (losses * token_weights).sum(), jnp.argmax(hidden @ weights, -1) == targets

    def chunked(hidden, weights):  # 7 positions in chunks of 3: the last chunk is padded
        losses, correct = chunked_loss.chunked_token_losses(hidden, lambda h: h @ weights, targets, chunk=3)
        return (losses * token_weights).sum(), correct

    (loss, correct), grads = jax.value_and_grad(whole, argnums=(0, 1), has_aux=True)(hidden, weights)
    (chunked_value, chunked_correct), chunked_grads = jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True)(hidden, weights)
    assert float(loss) > 1.0
    np.testing.assert_allclose(float(chunked_value), float(loss), rtol=1e-6)
    np.testing.assert_array_equal(chunked_correct, correct)
    for a, b in zip(chunked_grads, grads):
        assert float(jnp.abs(b).max()) > 1e-3
        np.testing.assert_allclose(a, b, atol=1e-6)


def _train_two_steps(loss_chunk: int, tmp_path):
    c = vqa.get_config("tiny")
    c.model.ica.dropout = 0.0
    c.train.loss_chunk = loss_chunk
    # plain SGD: the updated parameters compare the gradients themselves
    run = recipe.build(c, str(tmp_path), recipe.single_device_mesh(), optimizer=optax.sgd(0.5))
    batch = ts.device_batch(pipeline.stack([run.featurizer.train(run.data.train[i]) for i in range(4)]))
    metrics_seen = []
    with jax.set_mesh(run.mesh):
        state, step = run.train.state, run.step_fn(0, donate=False)
        for _ in range(2):
            state, metrics = step(state, run.train.frozen, batch)
            metrics_seen.append((float(metrics["loss"]), float(metrics["token_accuracy"])))
    return batch["tokens"].shape[-1], metrics_seen, [np.asarray(x) for x in jax.tree.leaves(state.params)]


@pytest.mark.slow
def test_the_chunked_train_step_equals_the_plain_one(tmp_path):
    text_len, plain_metrics, plain_params = _train_two_steps(0, tmp_path / "plain")
    chunk = 6
    assert text_len % chunk  # a padded last chunk is covered
    _, metrics, params = _train_two_steps(chunk, tmp_path / "chunked")
    assert plain_metrics[1][0] < plain_metrics[0][0]  # the step trains
    np.testing.assert_allclose(metrics, plain_metrics, rtol=1e-6)
    for a, b in zip(params, plain_params):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_negative_chunk_is_a_config_error():
    c = vqa.get_config("tiny")
    c.train.loss_chunk = -1
    with pytest.raises(config_lib.ConfigError, match="train.loss_chunk"):
        config_lib.validate(c)
