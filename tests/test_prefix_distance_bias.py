"""``model.prefix_distance_bias``: the LLM's attention between two image tokens of a prefix injection gets a learned
per-head bias of their centres' offset (the object-token probe's --geometric, inside the VLM's reader)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from semrel_jax import config as config_lib
from semrel_jax.errors import ConfigError
from semrel_jax.method import ica
from semrel_jax.method.ensemble import EncoderSpec, EnsembleConfig
from semrel_jax.method.vlm import VisionLanguageModel, VLMConfig
from semrel_jax.models.llama import Llama
from semrel_jax.models.vit import ViTConfig
from semrel_jax.training import sharding

from toy_vlm import LLM, assert_decoding_matches_training, inputs, vit_config

BIASED = dataclasses.replace(LLM, pair_bias_features=4)


def _model(bias: bool, prompt_attention: str = "causal", vit: ViTConfig | None = None, llm=None) -> VisionLanguageModel:
    """The toy ViT's class token kept: 17 image tokens, CLS first."""
    ens = EnsembleConfig(encoders=(EncoderSpec("vit", vit or vit_config(depth=1), (1,), drop_cls=False),),
                         out_dim=LLM.dim, projector_hidden=8, memory_scale=1.0)
    cfg = VLMConfig(llm=llm or (BIASED if bias else LLM), vision=ens, injection="prefix",
                    ica=ica.ICAConfig(scale=1.0, dropout=0.0), prompt_attention=prompt_attention,
                    prefix_distance_bias=bias)
    return VisionLanguageModel(cfg, rngs=nnx.Rngs(0))


def _randomise_biases(model: VisionLanguageModel, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.llm.layers:
        layer.self_attn.pair_bias[...] = jnp.asarray(rng.normal(size=(4, LLM.n_heads)), jnp.float32)


def _distance_features(centres: np.ndarray) -> np.ndarray:
    d = centres[:, None] - centres[None]
    return 4 * np.concatenate([d, np.hypot(d[..., :1], d[..., 1:]), (d**2).sum(-1, keepdims=True)], -1)


def test_patch_tokens_pair_by_their_patch_centres_and_the_class_token_by_none():
    images, has_image, tokens, valid = inputs(batch=2, t=6)
    model = _model(True)
    features = np.asarray(model.prefix_pair_features(images, rows=2))
    assert features.shape == (2, 17, 17, 4)  # CLS + a 4 x 4 grid
    y, x = np.divmod(np.arange(16), 4)
    want = _distance_features(np.stack([(x + 0.5) / 4, (y + 0.5) / 4], -1))
    np.testing.assert_allclose(features[1, 1:, 1:], want, atol=1e-6)
    assert not features[:, 0].any() and not features[:, :, 0].any()
    assert _model(False).prefix_pair_features(images, rows=2) is None


def test_object_tokens_pair_by_their_objects_centres_and_empty_slots_by_none():
    objects = ViTConfig(image_size=32, patch_size=32, width=16, depth=1, heads=2, mlp_dim=16, tokens="objects",
                        max_objects=4, class_token=False)
    image = np.ones((2, 32, 32, 3), np.float32)  # white; the second image has no objects
    image[0, 4:10, 2:8] = (1.0, 0.0, 0.0)  # its pixels' mean (x, y) = (4.5, 6.5)
    image[0, 20:28, 18:30] = (0.0, 0.0, 1.0)  # (23.5, 23.5), the larger: slot 0
    model = _model(True, vit=objects)
    images = {"vit": jnp.asarray(image)}
    features = np.asarray(model.prefix_pair_features(images, rows=4))  # 2 text rows per image
    _, centres, present = model.vision.encoders["vit"].tokenizer(images["vit"])
    assert np.asarray(present).sum(1).tolist() == [2, 0]
    np.testing.assert_allclose(np.asarray(centres[0, :2]) + 0.5, [[23.5 / 32, 23.5 / 32], [4.5 / 32, 6.5 / 32]], atol=1e-6)
    want = np.zeros((4, 4, 4), np.float32)
    want[:2, :2] = _distance_features(np.asarray(centres[0, :2]))
    np.testing.assert_allclose(features[0], want, atol=1e-6)
    np.testing.assert_array_equal(features[1], features[0])  # row 1 reads image 0
    assert not features[2:].any()


def test_the_bias_starts_at_zero_and_suppresses_the_pairs_it_is_told_to():
    images, has_image, tokens, valid = inputs(batch=2, t=6)
    plain, biased = _model(False), _model(True)
    np.testing.assert_allclose(biased(images, has_image, tokens, valid), plain(images, has_image, tokens, valid),
                               atol=1e-6)  # zero-initialised: the model starts as the one without it
    # one feature marks the pairs to suppress; a large negative weight on it removes them from the softmax
    llm = Llama(dataclasses.replace(BIASED, n_layers=1), rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 8, LLM.dim)), jnp.float32)
    marked = np.zeros((1, 5, 5, 4), np.float32)
    marked[0, 4, 1, 0] = marked[0, 3, 0, 0] = marked[0, 2, 4, 0] = 1.0  # (query, key): 2 -> 4 lies in the future
    weights = np.zeros((4, LLM.n_heads), np.float32)
    weights[0] = -1e4
    llm.layers[0].self_attn.pair_bias[...] = jnp.asarray(weights)
    full_valid = jnp.ones((1, 8), bool)
    _, _, base = llm(valid=full_valid, embeddings=x, capture=True)
    _, _, trace = llm(valid=full_valid, embeddings=x, capture=True, pair_features=jnp.asarray(marked))
    got, base = np.asarray(trace.attention[0, 0]), np.asarray(base.attention[0, 0])
    assert got[4, 1] < 1e-6 and got[3, 0] < 1e-6 and base[4, 1] > 0.01 and base[3, 0] > 0.01
    np.testing.assert_allclose(got[5:], base[5:], atol=1e-6)  # text queries see no bias
    np.testing.assert_allclose(got[:3], base[:3], atol=1e-6)  # nor do image queries with no marked pair
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="pair_bias_features"):
        Llama(LLM, rngs=nnx.Rngs(0))(valid=full_valid, embeddings=x, pair_features=jnp.asarray(marked))


@pytest.mark.parametrize("prompt_attention", ["causal", "bidirectional"])
def test_decoding_computes_the_function_training_fits(prompt_attention):
    images, has_image, tokens, valid = inputs(batch=2, t=7)
    model = _model(True, prompt_attention)
    _randomise_biases(model)
    p = 4
    full = model(images, has_image, tokens, valid, prompt_length=jnp.full((2,), p))
    unbiased = _model(False, prompt_attention)(images, has_image, tokens, valid, prompt_length=jnp.full((2,), p))
    assert np.abs(np.asarray(full - unbiased)).max() > 1e-3  # the bias is in the function
    assert_decoding_matches_training(model, images, has_image, tokens, full, p)


def test_scanned_blocks_compute_the_same_and_the_weights_learn():
    images, has_image, tokens, valid = inputs(batch=2, t=6)
    model = _model(True)
    _randomise_biases(model)
    scanned = _model(True, llm=dataclasses.replace(BIASED, scan_layers=True))
    nnx.update(scanned, nnx.state(model))
    np.testing.assert_allclose(scanned(images, has_image, tokens, valid), model(images, has_image, tokens, valid),
                               atol=1e-5)
    graphdef, state = nnx.split(_model(True))  # from zero weights, as training starts

    def loss(state):
        return jnp.mean(nnx.merge(graphdef, state)(images, has_image, tokens, valid) ** 2)

    grads = jax.jit(jax.grad(loss))(state)
    learnt = [np.abs(np.asarray(grads["llm"]["layers"][i]["self_attn"]["pair_bias"][...])).max() for i in range(3)]
    # the last block's bias moves only the image tokens' outputs, which no later block reads: no gradient there
    assert learnt[0] > 0 and learnt[1] > 0 and learnt[2] == 0
    assert sharding.logical_axes("llm/layers/0/self_attn/pair_bias", 2) == (None, None)


def test_config_turns_it_on_for_a_prefix_injection_only(tiny_config):
    tiny_config.model.update(prefix_distance_bias=True, injection="prefix")
    config_lib.validate(tiny_config)
    assert config_lib.model_config(tiny_config, vocab_size=64).llm.pair_bias_features == 4
    tiny_config.model.injection = "ica"
    with pytest.raises(ConfigError, match="model.prefix_distance_bias.*prefix"):
        config_lib.validate(tiny_config)
    tiny_config.model.update(injection="prefix", attention="splash")
    with pytest.raises(ConfigError, match="model.prefix_distance_bias.*splash"):
        config_lib.validate(tiny_config)


def test_distance_slopes_start_the_last_head_farthest_first_and_the_first_on_itself_then_nearest(tiny_config):
    """``model.prefix_distance_bias_init=s``: every block's heads start with slopes on |d| spread from -s to +s."""
    tiny_config.model.update(prefix_distance_bias=True, injection="prefix", prefix_distance_bias_init=200.0)
    config_lib.validate(tiny_config)
    heads = tiny_config.model.llm.n_heads
    init = np.asarray(config_lib.model_config(tiny_config, vocab_size=64).llm.pair_bias_init)
    expected = np.zeros((4, heads), np.float32)
    expected[2] = np.linspace(-200.0, 200.0, heads)  # on |d| only; dx, dy and |d|^2 start at zero
    np.testing.assert_allclose(init, expected, rtol=1e-6)
    llm = Llama(dataclasses.replace(BIASED, pair_bias_init=tuple(map(tuple, expected[:, :4].tolist()))),
                rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(llm.layers[2].self_attn.pair_bias[...]), expected[:, :4])
    with pytest.raises(ValueError, match="pair_bias_init must be"):  # one weight per feature and head
        dataclasses.replace(BIASED, pair_bias_init=((0.0, 1.0),) * 4)
    centres = np.array([[0.1, 0.1], [0.2, 0.15], [0.5, 0.6], [0.9, 0.8]])
    features = jnp.asarray(_distance_features(centres)[None], jnp.float32)
    bias = np.asarray(llm.layers[0].self_attn._pair_bias(features, 6, 6, jnp.float32))[0, :, :4, :4]  # [heads, 4, 4]
    distance = np.hypot(*(centres[:, None] - centres[None]).transpose(2, 0, 1))
    assert (bias[-1].argmax(-1) == distance.argmax(-1)).all()  # the last head: farthest first
    off_self = np.where(np.eye(4, dtype=bool), -np.inf, bias[0])
    nearest_other = np.where(np.eye(4, dtype=bool), np.inf, distance).argmin(-1)
    assert (bias[0].argmax(-1) == np.arange(4)).all() and (off_self.argmax(-1) == nearest_other).all()
    tiny_config.model.prefix_distance_bias = False
    with pytest.raises(ConfigError, match="model.prefix_distance_bias_init"):
        config_lib.validate(tiny_config)
    tiny_config.model.update(prefix_distance_bias=True, prefix_distance_bias_init=-1.0)
    with pytest.raises(ConfigError, match="model.prefix_distance_bias_init"):
        config_lib.validate(tiny_config)


def test_the_self_feature_lets_the_nearest_first_head_read_the_nearest_other_object(tiny_config):
    """``model.prefix_distance_bias_self``: a fifth pair feature, 1 for a token with itself; with the slopes its
    weight starts scoring the token itself below the farthest one, so the first head reads the nearest other."""
    tiny_config.model.update(prefix_distance_bias=True, injection="prefix", prefix_distance_bias_init=2.0,
                             prefix_distance_bias_self=True)
    config_lib.validate(tiny_config)
    llm_config = config_lib.model_config(tiny_config, vocab_size=64).llm
    heads = llm_config.n_heads
    init = np.asarray(llm_config.pair_bias_init)
    slopes = np.linspace(-2.0, 2.0, heads)
    assert llm_config.pair_bias_features == 5 and init.shape == (5, heads)
    np.testing.assert_allclose(init[2], slopes, rtol=1e-6)
    np.testing.assert_allclose(init[4], -4 * np.sqrt(2) * np.abs(slopes), rtol=1e-6)
    objects = ViTConfig(image_size=32, patch_size=32, width=16, depth=1, heads=2, mlp_dim=16, tokens="objects",
                        max_objects=4, class_token=False)
    image = np.ones((1, 32, 32, 3), np.float32)
    corners = [(2, 2), (2, 26), (26, 26)]  # three 4 x 4 squares of other colours; the fourth slot is empty
    for (y, x), colour in zip(corners, [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]):
        image[0, y:y + 4, x:x + 4] = colour
    ens = EnsembleConfig(encoders=(EncoderSpec("vit", objects, (1,), drop_cls=False),), out_dim=LLM.dim,
                         projector_hidden=8, memory_scale=1.0)
    llm = dataclasses.replace(LLM, pair_bias_features=5, pair_bias_init=tuple(map(tuple, init[:, :LLM.n_heads])))
    model = VisionLanguageModel(VLMConfig(llm=llm, vision=ens, injection="prefix", ica=ica.ICAConfig(scale=1.0),
                                          prefix_distance_bias=True, prefix_distance_bias_self=True), rngs=nnx.Rngs(0))
    features = np.asarray(model.prefix_pair_features({"vit": jnp.asarray(image)}, rows=1))
    assert features.shape == (1, 4, 4, 5)
    np.testing.assert_array_equal(features[0, :, :, 4], np.diag([1.0, 1.0, 1.0, 0.0]))  # not the empty slot
    bias = np.asarray(model.llm.layers[0].self_attn._pair_bias(jnp.asarray(features), 6, 6, jnp.float32))[0, :, :3, :3]
    distance = np.linalg.norm(features[0, :3, :3, :2], axis=-1)
    nearest_other = np.where(np.eye(3, dtype=bool), np.inf, distance).argmin(-1)
    assert (bias[0].argmax(-1) == nearest_other).all()  # the first head: the nearest other object, not itself
    assert (bias[-1].argmin(-1) == np.arange(3)).all()  # the last head: itself last, below the nearest
    with pytest.raises(ValueError, match="pair_bias_features=5"):
        VLMConfig(llm=BIASED, vision=ens, injection="prefix", ica=ica.ICAConfig(scale=1.0), prefix_distance_bias=True,
                  prefix_distance_bias_self=True)
    tiny_config.model.prefix_distance_bias = False
    tiny_config.model.prefix_distance_bias_init = 0.0
    with pytest.raises(ConfigError, match="model.prefix_distance_bias_self"):
        config_lib.validate(tiny_config)
