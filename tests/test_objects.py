"""Object tokens (models/objects.py) against a scipy reference of their definition, and the tower that reads them."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image, ImageDraw
from scipy import ndimage

from semrel_jax.models.objects import ObjectTokenizer, connected_components
from semrel_jax.models.vit import ViT, ViTConfig, sincos2d_at, sincos2d_position_embedding

THUMB = 9


def _scene(background: str, seed: int, size: int = 64) -> np.ndarray:
    """``[64, 64, 3]`` in [0, 1]: six coloured shapes, two touching rectangles and a 2-pixel speck, on white or grey
    noise."""
    rng = np.random.default_rng(seed)
    if background == "white":
        image = Image.new("RGB", (size, size), (255, 255, 255))
    else:
        grey = rng.integers(120, 180, size=(size, size)).astype(np.uint8)
        image = Image.fromarray(np.stack([grey] * 3, -1))
    draw = ImageDraw.Draw(image)
    colours = [(230, 30, 30), (30, 160, 40), (30, 60, 220), (240, 200, 0), (150, 30, 200), (0, 180, 200)]
    for i, colour in enumerate(colours):  # a 3 x 2 layout with jitter: no two shapes touch
        x, y = 4 + 20 * (i % 3) + int(rng.integers(0, 4)), 4 + 18 * (i // 3) + int(rng.integers(0, 4))
        r = int(rng.integers(3, 7))
        if i % 3 == 0:
            draw.ellipse([x, y, x + 2 * r, y + 2 * r], fill=colour)
        elif i % 3 == 1:
            draw.rectangle([x, y, x + 2 * r, y + r], fill=colour)
        else:
            draw.polygon([(x, y + 2 * r), (x + r, y), (x + 2 * r, y + 2 * r)], fill=colour)
    draw.rectangle([1, 1, 2, 1], fill=(200, 0, 0))  # 2 pixels: below min_pixels
    draw.rectangle([40, 50, 47, 55], fill=(0, 0, 120))  # two touching rectangles: one object
    draw.rectangle([48, 52, 52, 58], fill=(0, 0, 120))
    return np.asarray(image, np.float32) / 255


def _reference(image: np.ndarray, max_objects: int, threshold=0.25, min_pixels=4):
    """The documented definition, with scipy's labelling and numpy loops."""
    h, w, c = image.shape
    background = np.median(image[::4, ::4].reshape(-1, c), 0)
    labels, count = ndimage.label(np.abs(image - background).max(-1) > threshold)
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    tokens = np.zeros((max_objects, c + 4 + THUMB * THUMB), np.float32)
    valid = np.zeros(max_objects, bool)
    for slot, index in enumerate(np.argsort(-areas, kind="stable")[:max_objects]):
        if areas[index] < min_pixels:
            continue
        ys, xs = np.nonzero(labels == index + 1)
        x0, y0 = xs.min(), ys.min()
        bw, bh = xs.max() - x0 + 1, ys.max() - y0 + 1
        thumb = np.zeros((THUMB, THUMB))
        box_cells = np.zeros((THUMB, THUMB))
        for y in range(y0, y0 + bh):
            for x in range(x0, x0 + bw):
                cell = ((y - y0) * THUMB // bh, (x - x0) * THUMB // bw)
                box_cells[cell] += 1
                thumb[cell] += labels[y, x] == index + 1
        tokens[slot, :c] = image[ys, xs].mean(0) - background
        tokens[slot, c:c + 4] = [xs.mean() / w - 0.5, ys.mean() / h - 0.5, bw / w, bh / h]
        tokens[slot, c + 4:] = (thumb / np.maximum(box_cells, 1)).ravel()
        valid[slot] = True
    return tokens, valid


def test_connected_components_label_each_component_by_its_first_pixel():
    mask = np.random.default_rng(0).random((30, 41)) > 0.55
    labels = np.asarray(jax.jit(connected_components)(jnp.asarray(mask)))
    reference, count = ndimage.label(mask)
    assert (labels[~mask] == mask.size).all()
    for i in range(1, count + 1):
        component = np.flatnonzero(reference.ravel() == i)
        assert (labels.ravel()[component] == component[0]).all()  # one label per component: its first pixel
    assert len(np.unique(labels[mask])) == count


@pytest.mark.parametrize("background", ["white", "grey_noise"])
def test_object_tokens_match_the_reference_definition(background):
    images = np.stack([_scene(background, seed) for seed in range(3)])
    tokenizer = ObjectTokenizer(max_objects=6)  # fewer slots than objects: the largest are kept
    tokens, centres, valid = jax.jit(tokenizer)(jnp.asarray(images))
    assert tokens.shape == (3, 6, tokenizer.feature_dim(3)) and valid.dtype == jnp.bool_
    for image, got_tokens, got_centres, got_valid in zip(images, tokens, centres, valid):
        want_tokens, want_valid = _reference(image, 6)
        np.testing.assert_array_equal(got_valid, want_valid)
        np.testing.assert_allclose(got_tokens, want_tokens, atol=1e-5)
        np.testing.assert_allclose(got_centres, want_tokens[:, 3:5], atol=1e-6)
    # with room for every object the speck is still left out and the touching rectangles are one object
    _, want_valid = _reference(images[0], 12)
    np.testing.assert_array_equal(jax.jit(ObjectTokenizer(max_objects=12))(jnp.asarray(images[:1]))[2][0], want_valid)
    assert want_valid.sum() == 7  # 6 shapes + the joined rectangles, not the speck


def test_the_slot_map_puts_each_token_on_its_objects_pixels():
    """Each valid slot's pixels are its object's: their mean is the token's centre and their count matches the
    reference area; the speck, the objects beyond max_objects and the background map to slot max_objects."""
    images = np.stack([_scene("white", 0), _scene("grey_noise", 1)])
    tokenizer = ObjectTokenizer(max_objects=6)
    _, centres, valid = jax.jit(tokenizer)(jnp.asarray(images))
    slots = np.asarray(jax.jit(tokenizer.slot_map)(jnp.asarray(images)))
    assert slots.shape == (2, 64, 64) and slots.dtype == np.int32
    for image_slots, image_centres, image_valid in zip(slots, np.asarray(centres), np.asarray(valid)):
        assert set(np.unique(image_slots)) == set(np.flatnonzero(image_valid)) | {6}
        for slot in np.flatnonzero(image_valid):
            ys, xs = np.nonzero(image_slots == slot)
            np.testing.assert_allclose([xs.mean() / 64 - 0.5, ys.mean() / 64 - 0.5], image_centres[slot], atol=1e-5)
        assert image_slots[1, 1] == 6 and image_slots[0, 0] == 6  # the speck; the background
    areas = [(slots[0] == slot).sum() for slot in range(6)]
    assert areas == sorted(areas, reverse=True) and min(areas) >= tokenizer.min_pixels  # largest first


def test_object_tokens_are_the_same_for_background_normalised_pixels():
    image = _scene("grey_noise", 4)
    shifted = image - np.median(image.reshape(-1, 3), 0)  # preprocess 'background' (all pixels)
    tokenizer = jax.jit(ObjectTokenizer())
    for got, want in zip(tokenizer(jnp.asarray(shifted[None])), tokenizer(jnp.asarray(image[None]))):
        np.testing.assert_allclose(got, want, atol=1e-5)  # float rounding of the shift


OBJECTS = ViTConfig(image_size=64, patch_size=64, width=24, depth=2, heads=4, mlp_dim=48, tokens="objects",
                    max_objects=8, distance_bias=True)


def test_object_tower_masks_empty_slots_and_biases_attention_by_object_distance():
    images = jnp.asarray(np.stack([_scene("white", 7), np.ones((64, 64, 3), np.float32)]))  # the second: no objects
    vit = ViT(OBJECTS, rngs=nnx.Rngs(0))
    objects, centres, valid = vit.tokenizer(images)
    assert valid[0].sum() == 7 and not valid[1].any()
    (hidden,) = vit(images, (2,))
    assert hidden.shape == (2, 1 + 8, 24)
    slots = jnp.concatenate([jnp.ones((2, 1), bool), valid], 1)
    assert (np.asarray(hidden)[~np.asarray(slots)] == 0).all()  # empty slots come out as zeros
    assert np.isfinite(np.asarray(hidden)).all()  # an image without objects: the class token attends itself
    # an empty slot is attended by no token: changing what it holds changes nothing
    x = vit.patch_embedding(objects)
    x = jnp.concatenate([jnp.broadcast_to(vit.class_embedding[...], (2, 1, 24)), x], 1)
    x = vit.pre_layrnorm(x)
    layer = vit.layers[0]
    out = layer(x, None, centres, slots)
    noisy = jnp.where(slots[..., None], x, 5.0)
    np.testing.assert_allclose(layer(noisy, None, centres, slots)[slots], out[slots], atol=1e-5)
    # the distance bias of objects i, j is 4 (dx, dy, |d|, |d|^2) @ weights from their centres; class token none
    weights = np.random.default_rng(3).normal(size=(4, 4)).astype(np.float32)
    layer.distance_bias[...] = jnp.asarray(weights)
    c = np.asarray(centres[0])
    d = c[:, None] - c[None]
    features = 4 * np.concatenate([d, np.hypot(d[..., :1], d[..., 1:]), (d**2).sum(-1, keepdims=True)], -1)
    expected = np.zeros((4, 9, 9), np.float32)
    expected[:, 1:, 1:] = np.moveaxis(features @ weights, -1, 0)
    np.testing.assert_allclose(layer._bias(9, jnp.float32, centres)[0], expected, atol=1e-5)
    # distance_bias_scale multiplies it (the bias's learning-rate multiplier under Adam)
    layer.config = dataclasses.replace(layer.config, distance_bias_scale=10.0)
    np.testing.assert_allclose(layer._bias(9, jnp.float32, centres)[0], 10 * expected, atol=1e-4)
    layer.config = OBJECTS
    with pytest.raises(ValueError, match="distance_bias_scale"):
        dataclasses.replace(OBJECTS, distance_bias=False, distance_bias_scale=10.0)
    # the scanned tower computes the same
    scanned = ViT(dataclasses.replace(OBJECTS, scan_layers=True), rngs=nnx.Rngs(0))
    nnx.update(scanned, nnx.state(vit))
    np.testing.assert_allclose(scanned(images, (1, 2))[1], vit(images, (1, 2))[1], atol=1e-5)


def _copying_attention(vit, images):
    """``vit``'s first block with only its attention branch, copying what each token reads (values and output the
    identity, no MLP), and that block's inputs: ``(layer, x [B, 1 + slots, 24], centres, valid, slots)``."""
    objects, centres, valid = vit.tokenizer(images)
    batch = images.shape[0]
    slots = jnp.concatenate([jnp.ones((batch, 1), bool), valid], 1)
    x = vit.pre_layrnorm(jnp.concatenate([jnp.broadcast_to(vit.class_embedding[...], (batch, 1, 24)),
                                          vit.patch_embedding(objects)], 1))
    layer = vit.layers[0]
    for proj in (layer.q_proj, layer.k_proj, layer.fc2):
        proj.kernel[...] = jnp.zeros_like(proj.kernel[...])
        proj.bias[...] = jnp.zeros_like(proj.bias[...])
    for proj in (layer.v_proj, layer.out_proj):
        proj.kernel[...] = jnp.eye(24)
        proj.bias[...] = jnp.zeros_like(proj.bias[...])
    return layer, x, centres, valid, slots


def test_attend_others_reads_the_other_objects_and_a_near_head_the_nearest_other():
    images = jnp.asarray(np.stack([_scene("white", 7), np.ones((64, 64, 3), np.float32)]))  # the second: no objects
    layer, x, centres, valid, slots = _copying_attention(
        ViT(dataclasses.replace(OBJECTS, attend="others"), rngs=nnx.Rngs(0)), images)
    normed = np.asarray(layer.layer_norm1(x))
    keys = np.asarray(slots)
    read = np.asarray(layer(x, None, centres, slots) - x)
    # equal logits: each object reads the mean of the other objects (not itself, not the class token), the class
    # token the mean of all; a token with no other (the class token of an image without objects) reads all it may
    for i in range(1, 9):
        others = keys[0] & (np.arange(9) != i) & (np.arange(9) > 0)
        np.testing.assert_allclose(read[0, i], normed[0, others].mean(0), atol=1e-5)
    np.testing.assert_allclose(read[0, 0], normed[0, keys[0]].mean(0), atol=1e-5)
    np.testing.assert_allclose(read[1, 0], normed[1, 0], atol=1e-5)
    assert np.isfinite(read).all()
    # a head that prefers near objects (a large negative weight on |d|^2) reads the nearest *other* object
    layer.distance_bias[...] = jnp.zeros((4, 4)).at[3].set(-400.0)
    read = np.asarray(layer(x, None, centres, slots) - x)
    c = np.asarray(centres[0])
    distance = ((c[:, None] - c[None]) ** 2).sum(-1) + np.where(np.asarray(valid[0]), 0, np.inf)[None]
    np.fill_diagonal(distance, np.inf)
    for i in np.flatnonzero(np.asarray(valid[0])):
        np.testing.assert_allclose(read[0, 1 + i], normed[0, 1 + distance[i].argmin()], atol=1e-3)
    # attending to itself, the same head reads the object itself
    # attending to all, the same head reads the object itself and the class token (both at bias 0)
    layer.config = dataclasses.replace(layer.config, attend="all")
    read = np.asarray(layer(x, None, centres, slots) - x)
    for i in np.flatnonzero(np.asarray(valid[0])):
        np.testing.assert_allclose(read[0, 1 + i], (normed[0, 1 + i] + normed[0, 0]) / 2, atol=1e-3)


def test_distance_bias_init_starts_the_first_head_on_the_nearest_other_and_the_last_on_the_farthest():
    images = jnp.asarray(_scene("white", 7)[None])
    assert (np.asarray(ViT(OBJECTS, rngs=nnx.Rngs(0)).layers[0].distance_bias[...]) == 0).all()  # the default
    config = dataclasses.replace(OBJECTS, attend="others", distance_bias_init=200.0, distance_bias_scale=4.0)
    vit = ViT(config, rngs=nnx.Rngs(0))
    layer = vit.layers[0]
    # slopes -200, -66.7, 66.7, 200 on |d| (before the scale), nothing on dx, dy, |d|^2
    expected = np.zeros((4, 4), np.float32)
    expected[2] = np.array([-200.0, -200.0 / 3, 200.0 / 3, 200.0]) / 4.0
    np.testing.assert_allclose(np.asarray(layer.distance_bias[...]), expected, rtol=1e-6)
    layer, x, centres, valid, slots = _copying_attention(vit, images)
    normed = np.asarray(layer.layer_norm1(x))
    read = np.asarray(layer(x, None, centres, slots) - x)  # head h writes channels 6h..6h+5
    c = np.asarray(centres[0])
    distance = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1))
    present = np.flatnonzero(np.asarray(valid[0]))
    for i in present:
        others = present[present != i]
        nearest, farthest = others[distance[i, others].argmin()], others[distance[i, others].argmax()]
        assert nearest != farthest
        np.testing.assert_allclose(read[0, 1 + i, :6], normed[0, 1 + nearest, :6], atol=1e-3)
        np.testing.assert_allclose(read[0, 1 + i, 18:], normed[0, 1 + farthest, 18:], atol=1e-3)


def test_sincos2d_object_tokens_add_the_embedding_of_their_centre_in_patch_units():
    images = jnp.asarray(np.stack([_scene("white", 7), np.ones((64, 64, 3), np.float32)]))
    config = dataclasses.replace(OBJECTS, pre_ln=False, patch_size=16)  # hidden_states[0]: the embedding itself
    plain = ViT(config, rngs=nnx.Rngs(0))
    placed = ViT(dataclasses.replace(config, posemb="sincos2d"), rngs=nnx.Rngs(0))  # the same parameters
    _, centres, valid = plain.tokenizer(images)
    difference = np.asarray(placed(images, (0,))[0] - plain(images, (0,))[0])  # [2, 1 + 8, 24]
    assert (difference[:, 0] == 0).all() and (difference[1] == 0).all()  # class token, an image without objects
    pixels = (np.asarray(centres[0]) + 0.5) * 64 / 16  # in patch_size units
    omega = 10_000.0 ** (-np.arange(6) / 6)
    x, y = pixels[:, :1] * omega, pixels[:, 1:] * omega
    expected = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], -1) * np.asarray(valid[0])[:, None]
    np.testing.assert_allclose(difference[0, 1:], expected, atol=1e-5)
    assert int(valid[0].sum()) == 7 and (difference[0, 1:][~np.asarray(valid[0])] == 0).all()
    # one dot product compares positions: an embedding is closest to itself, farther for a farther point
    here = sincos2d_at(jnp.asarray([[30.0, 20.0]]), 64)
    there = sincos2d_at(jnp.asarray([[30.0 + d, 20.0] for d in (0, 2, 8, 40)]), 64)
    similarity = np.asarray(there @ here[0])
    assert similarity[0] == pytest.approx(32.0) and (np.diff(similarity) < 0).all()
    # the patch grid's table is the same function at integer positions
    grid = sincos2d_position_embedding(3, 8)
    np.testing.assert_allclose(grid[1 + 3 * 2 + 1], sincos2d_at(jnp.asarray([1.0, 2.0]), 8), atol=1e-6)


def test_object_tokens_refuse_a_patch_table():
    with pytest.raises(ValueError, match="object tokens have none"):
        dataclasses.replace(OBJECTS, relative_position_bias=True)


def test_a_vlm_reads_object_tokens_beside_patches_and_learns_through_them():
    from semrel_jax.evaluation import explain
    from semrel_jax.method import ica
    from semrel_jax.method.ensemble import EncoderSpec, EnsembleConfig
    from semrel_jax.method.vlm import VisionLanguageModel, VLMConfig, slot_layout
    from semrel_jax.models.llama import LlamaConfig

    llm = LlamaConfig(vocab_size=30, dim=16, n_layers=2, n_heads=2, n_kv_heads=1, mlp_dim=24)
    patches = ViTConfig(image_size=64, patch_size=16, width=8, depth=1, heads=1, mlp_dim=8)
    vision = EnsembleConfig(encoders=(EncoderSpec("p", patches, (1,)), EncoderSpec("o", OBJECTS, (1, 2))),
                            out_dim=16, projector_hidden=8, memory_scale=1.0)
    assert vision.num_tokens == 16 + 8
    config = VLMConfig(llm=llm, vision=vision, num_memory_slots=24, ica=ica.ICAConfig(scale=1.0, dropout=0.0))
    model = VisionLanguageModel(config, rngs=nnx.Rngs(0))
    scenes = np.stack([_scene("white", 1), _scene("grey_noise", 2)])
    images = {name: jnp.asarray(scenes) for name in ("p", "o")}
    tokens = jnp.asarray([[1, 5, 6, 7], [1, 8, 9, 7]], jnp.int32)
    valid = jnp.ones((2, 4), bool)
    graphdef, state = nnx.split(model)

    def loss(state):
        logits = nnx.merge(graphdef, state)(images, jnp.ones((2,), jnp.int32), tokens, valid)
        return jnp.mean(logits.astype(jnp.float32) ** 2)

    grads = jax.jit(jax.grad(loss))(state)
    embedding = grads["vision"]["encoders"]["o"]["patch_embedding"]["kernel"][...]
    assert np.isfinite(embedding).all() and np.abs(embedding).max() > 0  # the answer's gradient reaches the objects
    layout = slot_layout(vision)
    assert [(g.encoder, g.start, g.grid) for g in layout] == [("p", 0, 4), ("o", 16, 0)]
    assert list(explain.patch_grids(np.arange(24.0), layout)) == ["p"]  # objects: no grid to draw on
    # ... but their pixels: each object's pixels carry its slot's value, the rest NaN (drawn transparent)
    maps = explain.object_slot_maps(graphdef, (state,), images)
    assert list(maps) == ["o"]
    np.testing.assert_array_equal(maps["o"], ObjectTokenizer(8).slot_map(images["o"]))
    drawn = explain.slot_maps(np.arange(24.0), layout, {"o": np.asarray(maps["o"][0])})
    assert drawn["p"].shape == (4, 4) and drawn["o"].shape == (64, 64)
    on_object = np.asarray(maps["o"][0]) < 8
    np.testing.assert_array_equal(drawn["o"][on_object], 16 + np.asarray(maps["o"][0])[on_object])
    assert np.isnan(drawn["o"][~on_object]).all() and on_object.any()
