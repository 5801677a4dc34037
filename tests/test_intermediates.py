"""The model's intermediates on request: ICA alpha / inherited mask M per block, prefix attention over the image
tokens, the slot layout; and the switch costs nothing when off (the traced computation is the plain one)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from semrel_jax.method import ica
from semrel_jax.method.ensemble import EncoderSpec, EnsembleConfig
from semrel_jax.method.vlm import slot_layout
from semrel_jax.models import attention as attention_lib
from semrel_jax.models import layers
from semrel_jax.models.llama import attention_probabilities
from semrel_jax.models.vit import ViTConfig

import toy_vlm

LLM = toy_vlm.LLM
VIT = toy_vlm.vit_config(depth=2)
DELTA, LAM = 0.3, 0.5


def _vlm(injection="ica", slots=20):
    return toy_vlm.vlm(VIT, (1, 2), injection, slots if injection == "ica" else 0, delta=DELTA, lam=LAM, dropout=0.0)


_inputs = toy_vlm.inputs


def _reference_alpha_and_mask(model, images, has_image, tokens, valid):
    """The decoder re-run block by block from its public submodules, with the LSRM rule written out in NumPy."""
    memory = model.memory(images, has_image, True)
    keys, values = np.asarray(memory.keys), np.asarray(memory.values)
    b, t = tokens.shape
    positions = layers.positions_from_mask(valid)
    causal = attention_lib.Mask(jnp.broadcast_to(jnp.arange(t), (b, t)), valid)
    x = model.llm.embed(tokens)
    mask = np.ones((b, t, keys.shape[1]))
    alphas, masks = [], []
    for layer in model.llm.layers:
        attn, _, _ = layer.self_attn(layer.input_layernorm(x), positions, causal)
        h = x + attn
        u = layer.post_attention_layernorm(h)
        scores = np.einsum("btd,bnd->btn", np.asarray(u, np.float64), keys)
        alpha = scores / (1.0 + np.exp(-scores))
        threshold = np.sort(alpha, axis=-1)[..., math.floor(DELTA * keys.shape[1])][..., None]
        mask = mask * np.where(alpha < threshold, LAM, 1.0)
        x = h + layer.mlp(u) + jnp.asarray(np.einsum("btn,bnd->btd", mask * alpha, values), jnp.float32)
        alphas.append(alpha)
        masks.append(mask)
    return np.stack(alphas), np.stack(masks)


def test_captured_alpha_and_mask_equal_the_lsrm_rule_block_by_block():
    model = _vlm()
    inputs = _inputs()
    logits, captured = model(*inputs, capture=True)
    alpha, mask = _reference_alpha_and_mask(model, *inputs)
    assert captured.alpha.shape == captured.mask.shape == (LLM.n_layers, 2, 6, 20)
    np.testing.assert_allclose(captured.alpha, alpha, atol=1e-5)
    np.testing.assert_allclose(captured.mask, mask, atol=1e-6)
    assert float(mask.min()) == LAM**LLM.n_layers  # some pair stayed low in every block: inherited, not reset
    np.testing.assert_allclose(logits, model(*inputs), atol=1e-6)  # capturing changes nothing computed


def test_capture_off_traces_exactly_the_plain_forward():
    """The switch is static: off, the traced program equals the decoder run with the plain ICA side branch."""
    model = _vlm()
    graphdef, state = nnx.split(model)
    inputs = _inputs()

    def switched(state, images, has_image, tokens, valid):
        return nnx.merge(graphdef, state)(images, has_image, tokens, valid)

    def plain(state, images, has_image, tokens, valid):
        m = nnx.merge(graphdef, state)
        side = ica.InheritableCrossAttention(m.memory(images, has_image, True), m.config.ica)
        return m.llm(tokens, valid=valid, side=side, side_state=side.initial_mask(tokens.shape[1]))[0]

    def capturing(state, images, has_image, tokens, valid):
        return nnx.merge(graphdef, state)(images, has_image, tokens, valid, capture=True)

    def lowered(fn):  # the StableHLO program, without the module's name (the function's)
        return jax.jit(fn).lower(state, *inputs).as_text(debug_info=False).split("\n", 1)[1]

    assert lowered(switched) == lowered(plain)
    assert lowered(capturing) != lowered(plain)  # the comparison can tell programs apart


def test_prefix_capture_returns_attention_over_the_image_tokens():
    model = _vlm("prefix")
    inputs = _inputs()
    logits, captured = model(*inputs, capture=True)
    n_vis = model.config.vision.num_tokens
    assert captured.alpha is None and captured.image_attention.shape == (LLM.n_layers, 2, 6, n_vis)
    weights = np.asarray(captured.image_attention)
    assert (weights >= 0).all() and (weights.sum(-1) <= 1 + 1e-5).all()
    # the first text token sees only the image tokens and itself: its image share is 1 minus its self weight
    assert (weights[..., 0, :].sum(-1) > 0.5).all()
    np.testing.assert_allclose(logits, model(*inputs), atol=1e-6)


def test_attention_probabilities_are_the_weights_dot_product_attention_applies():
    rng = np.random.default_rng(1)
    b, t, h, d = 2, 5, 4, 8
    q = jnp.asarray(rng.normal(size=(b, t, h, d)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, t, 1, d)), jnp.float32)  # one kv head shared by all heads (GQA)
    v = jnp.asarray(rng.normal(size=(b, t, 1, d)), jnp.float32)
    valid = jnp.asarray([[True] * t, [False, False] + [True] * (t - 2)])
    mask = layers.causal_mask(jnp.broadcast_to(jnp.arange(t), (b, t)), valid)
    probabilities = attention_probabilities(q, k, mask)
    expected = jax.nn.dot_product_attention(q, k, v, mask=mask).mean(axis=2)  # mean over heads of P_h V
    np.testing.assert_allclose(jnp.einsum("bts,bsd->btd", probabilities, v[:, :, 0]), expected, atol=1e-5)


@pytest.mark.parametrize("drop_cls", [True, False])
def test_slot_layout_follows_the_encoder_concatenation(drop_cls):
    small = ViTConfig(image_size=20, patch_size=5, width=8, depth=1, heads=1, mlp_dim=8)
    vision = EnsembleConfig(
        encoders=(EncoderSpec("a", small, (1,), drop_cls=drop_cls), EncoderSpec("b", small, (0, 1), pool=2)), out_dim=8
    )
    a, b = slot_layout(vision)
    assert (a.encoder, a.start, a.grid, a.class_token) == ("a", 0, 4, not drop_cls)
    assert list(a.patch_slots) == list(range(int(not drop_cls), 16 + int(not drop_cls)))
    assert (b.encoder, b.taps, b.start, b.grid) == ("b", (0, 1), 16 + int(not drop_cls), 2)
    assert list(b.patch_slots) == list(range(b.start, b.start + 4))
    assert b.start + 4 == vision.num_tokens
