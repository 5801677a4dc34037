"""Shapes and numerics of the networks: ViT taps, Llama + KV cache, SRProj, ICA against a NumPy reference."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from semrel_jax.method import ica
from semrel_jax.method.ensemble import EncoderEnsemble, EncoderSpec, EnsembleConfig
from semrel_jax.method.srproj import SRProj
from semrel_jax.models.llama import Llama, LlamaConfig
from semrel_jax.models.layers import activation
from semrel_jax.models.vit import ViT, ViTConfig

import toy_vlm

LLM = toy_vlm.LLM
VIT = toy_vlm.vit_config(adapter_dim=4)


def _vlm(injection="ica", slots=20, **ica_kw):
    return toy_vlm.vlm(VIT, (1, 3), injection, slots, **ica_kw)


_inputs = toy_vlm.inputs


def test_vit_taps_shapes_and_skipped_blocks():
    vit = ViT(VIT, rngs=nnx.Rngs(0))
    images = jnp.ones((2, 20, 20, 3))
    h0, h2 = vit(images, (0, 2))
    assert h0.shape == h2.shape == (2, 1 + 16, 24)
    # Tap 2 must not depend on block 3 (blocks past the deepest tap never run).
    (h2_alone,) = vit(images, (2,))
    np.testing.assert_array_equal(h2, h2_alone)
    with pytest.raises(ValueError, match="out of range"):
        vit(images, (4,))
    with pytest.raises(ValueError, match="expects images"):
        vit(jnp.ones((2, 21, 21, 3)), (1,))


def test_vit_adapter_starts_as_identity():
    vit = ViT(VIT, rngs=nnx.Rngs(0))
    images = jnp.asarray(np.random.default_rng(1).normal(size=(1, 20, 20, 3)), jnp.float32)
    with_adapter = vit(images, (3,))[0]
    adapters = [layer.adapter for layer in vit.layers]
    for layer in vit.layers:
        layer.adapter = None
    np.testing.assert_allclose(with_adapter, vit(images, (3,))[0], atol=1e-6)
    # Once the up-projection is non-zero the adapter changes the features.
    for layer, adapter in zip(vit.layers, adapters):
        adapter.fc2.kernel[...] = jnp.full_like(adapter.fc2.kernel[...], 0.1)
        layer.adapter = adapter
    assert np.abs(vit(images, (3,))[0] - with_adapter).max() > 1e-3


def test_layer_scale_zero_makes_every_block_start_as_the_identity_and_then_learn():
    config = dataclasses.replace(VIT, adapter_dim=0, layer_scale=True, layer_scale_init=0.0)
    vit = ViT(config, rngs=nnx.Rngs(0))
    images = jnp.asarray(np.random.default_rng(1).normal(size=(2, 20, 20, 3)), jnp.float32)
    h0, h1, h3 = vit(images, (0, 1, 3))
    np.testing.assert_array_equal(h1, h0)
    np.testing.assert_array_equal(h3, h0)
    # the same tower without scales: the blocks change the tokens, so the identity above is the scales' doing
    plain = ViT(dataclasses.replace(config, layer_scale=False, layer_scale_init=None), rngs=nnx.Rngs(0))
    assert np.abs(plain(images, (1,))[0] - h0).max() > 0.1
    # the scales get a gradient from the first step (the branches they scale are not zero), the blocks' own
    # weights none until a scale moves
    graphdef, params = nnx.split(vit, nnx.Param)

    def loss(p):
        return (nnx.merge(graphdef, p)(images, (1,))[0] ** 3).sum()

    grads = jax.grad(loss)(params)
    assert np.abs(np.asarray(grads["layers"][0]["layer_scale1"][...])).max() > 1e-3
    assert np.abs(np.asarray(grads["layers"][0]["layer_scale2"][...])).max() > 1e-3
    assert np.abs(np.asarray(grads["layers"][0]["fc1"]["kernel"][...])).max() == 0.0


def _pairwise_bias(heads: int, grid: int, bias_of) -> np.ndarray:
    """``[heads, 1 + grid², 1 + grid²]``: ``bias_of(yi, xi, yj, xj) -> [heads]`` between patches i and j of a
    row-major grid; zero for the class token (slot 0)."""
    n = 1 + grid * grid
    expected = np.zeros((heads, n, n), np.float32)
    for i in range(grid * grid):
        for j in range(grid * grid):
            expected[:, 1 + i, 1 + j] = bias_of(*divmod(i, grid), *divmod(j, grid))
    return expected


def test_relative_position_bias_adds_the_offset_table_to_attention_logits():
    config = dataclasses.replace(VIT, relative_position_bias=True, adapter_dim=0)
    vit = ViT(config, rngs=nnx.Rngs(0))
    images = jnp.asarray(np.random.default_rng(2).normal(size=(2, 20, 20, 3)), jnp.float32)
    plain = vit(images, (3,))[0]
    # zero-initialised: the same function as the tower without the bias
    without = ViT(dataclasses.replace(config, relative_position_bias=False), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(plain, without(images, (3,))[0], atol=1e-6)
    layer = vit.layers[0]
    table = np.random.default_rng(3).normal(size=layer.relative_bias[...].shape).astype(np.float32)
    layer.relative_bias[...] = jnp.asarray(table)
    # reference: the bias of patches i=(yi, xi), j=(yj, xj) is table[(yi-yj+3)*7 + (xi-xj+3)], class token none
    grid, n = 4, 17
    expected = _pairwise_bias(config.heads, grid,
                              lambda yi, xi, yj, xj: table[(yi - yj + grid - 1) * (2 * grid - 1) + (xi - xj + grid - 1)])
    np.testing.assert_array_equal(layer._bias(n, jnp.float32)[0], expected)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, n, 24)), jnp.float32)
    y = layer.layer_norm1(x)
    q, k, v = (proj(y).reshape(2, n, 3, 8) for proj in (layer.q_proj, layer.k_proj, layer.v_proj))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8) + expected[None]
    attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v).reshape(2, n, 24)
    x1 = x + layer.out_proj(attn)
    reference = x1 + layer.fc2(activation(config.act)(layer.fc1(layer.layer_norm2(x1))))
    np.testing.assert_allclose(layer(x), reference, atol=2e-5)
    assert np.abs(vit(images, (3,))[0] - plain).max() > 1e-3


def test_distance_bias_is_a_learned_linear_function_of_patch_offset_and_distance():
    config = dataclasses.replace(VIT, distance_bias=True, adapter_dim=0)
    vit = ViT(config, rngs=nnx.Rngs(0))
    images = jnp.asarray(np.random.default_rng(2).normal(size=(2, 20, 20, 3)), jnp.float32)
    plain = vit(images, (3,))[0]
    # zero-initialised: the same function as the tower without it
    without = ViT(dataclasses.replace(config, distance_bias=False), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(plain, without(images, (3,))[0], atol=1e-6)
    layer = vit.layers[0]
    weights = np.random.default_rng(3).normal(size=(4, config.heads)).astype(np.float32)
    layer.distance_bias[...] = jnp.asarray(weights)
    # reference: patches i=(yi, xi), j=(yj, xj) of a 4x4 grid, offsets in image widths, times 4; class token none
    grid, n = 4, 17

    def distance_bias(yi, xi, yj, xj):
        dx, dy = (xi - xj) / grid, (yi - yj) / grid
        return 4 * np.array([dx, dy, np.hypot(dx, dy), dx * dx + dy * dy]) @ weights

    expected = _pairwise_bias(config.heads, grid, distance_bias)
    np.testing.assert_allclose(layer._bias(n, jnp.float32)[0], expected, atol=1e-5)
    # it adds to the offset table when both are on
    both = ViT(dataclasses.replace(config, relative_position_bias=True), rngs=nnx.Rngs(0))
    both.layers[0].distance_bias[...] = jnp.asarray(weights)
    table = np.random.default_rng(5).normal(size=both.layers[0].relative_bias[...].shape).astype(np.float32)
    both.layers[0].relative_bias[...] = jnp.asarray(table)
    table_only = dataclasses.replace(config, distance_bias=False, relative_position_bias=True)
    reference = ViT(table_only, rngs=nnx.Rngs(0))
    reference.layers[0].relative_bias[...] = jnp.asarray(table)
    np.testing.assert_allclose(both.layers[0]._bias(n, jnp.float32), reference.layers[0]._bias(n, jnp.float32) + expected[None],
                               atol=1e-5)
    assert np.abs(vit(images, (3,))[0] - plain).max() > 1e-3
    # the scanned tower (model.scan_layers) carries both biases through its scan
    scanned = ViT(dataclasses.replace(config, relative_position_bias=True, scan_layers=True), rngs=nnx.Rngs(0))
    nnx.update(scanned, nnx.state(both))
    np.testing.assert_allclose(scanned(images, (2, 3))[1], both(images, (2, 3))[1], atol=1e-5)


def test_patchify_matches_conv_layout():
    vit = ViT(VIT, rngs=nnx.Rngs(0))
    images = jnp.arange(2 * 20 * 20 * 3, dtype=jnp.float32).reshape(2, 20, 20, 3)
    patches = vit.patchify(images)
    # Patch (row 1, col 2) of image 1, channel 0, pixel (0, 0) of the patch.
    np.testing.assert_array_equal(patches[1, 1 * 4 + 2, 0], images[1, 5, 10, 0])
    np.testing.assert_array_equal(patches[1, 1 * 4 + 2, 25 + 5 * 2 + 3], images[1, 7, 13, 1])


def test_srproj_diagonal_and_memvp_variant():
    proj = SRProj(6, 4, 5, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 6)), jnp.float32)
    base = proj(x)
    proj.diagonal[...] = jnp.array([1.0, 0.0, 1.0, 1.0])
    h = jax.nn.silu(proj.fc1(x)) * jnp.array([1.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(proj(x), proj.fc2(h), atol=1e-6)
    assert not np.allclose(proj(x), base)
    plain = SRProj(6, 4, 5, learnable_diagonal=False, rngs=nnx.Rngs(0))
    assert plain.diagonal is None
    n_params = sum(v.size for v in jax.tree.leaves(nnx.state(plain, nnx.Param)))
    assert n_params == 6 * 4 + 4 + 4 * 5 + 5


def _numpy_ica(queries_per_layer, keys, values, delta, lam):
    """Plain NumPy reference of the LSRM rule, one row at a time, for a stack of blocks."""
    n_mem = keys.shape[0]
    mask = np.ones((queries_per_layer[0].shape[0], n_mem))
    outs = []
    for q in queries_per_layer:
        alpha = q @ keys.T
        alpha = alpha / (1.0 + np.exp(-alpha))  # SiLU
        for row in range(alpha.shape[0]):
            thr = np.sort(alpha[row])[math.floor(delta * n_mem)]
            for j in range(n_mem):
                if alpha[row, j] < thr:
                    mask[row, j] *= lam
        outs.append((mask * alpha) @ values)
    return outs, mask


def test_ica_matches_numpy_reference_over_blocks():
    rng = np.random.default_rng(0)
    t, n_mem, d = 5, 10, 8
    keys, values = rng.normal(size=(n_mem, d)), rng.normal(size=(n_mem, d))
    queries = [rng.normal(size=(t, d)) for _ in range(4)]
    cfg = ica.ICAConfig(scale=1.0, delta=0.3, lam=0.85, dropout=0.0)
    memory = ica.Memory(jnp.asarray(keys[None], jnp.float32), jnp.asarray(values[None], jnp.float32), jnp.asarray(True))
    mask = jnp.ones((1, t, n_mem))
    expected, expected_mask = _numpy_ica(queries, keys, values, 0.3, 0.85)
    for q, want in zip(queries, expected):
        out, mask = ica.inheritable_cross_attention(jnp.asarray(q[None], jnp.float32), memory, mask, cfg)
        np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mask[0], expected_mask, rtol=1e-6)
    # Exactly floor(0.3 * 10) = 3 entries per row are decayed in each block.
    assert mask.min() < 1.0


def test_ica_mask_is_lambda_power_k_for_persistently_low_pairs():
    # Slot 0 scores lowest for every token in every block; slot 1 is low only in the first block.
    n_mem, d, blocks = 10, 4, 5
    keys = np.zeros((n_mem, d))
    keys[:, 0] = np.linspace(1.0, 2.0, n_mem)
    keys[0, 0] = -5.0
    cfg = ica.ICAConfig(scale=1.0, delta=0.1, lam=0.5, dropout=0.0)
    memory = ica.Memory(jnp.asarray(keys[None], jnp.float32), jnp.zeros((1, n_mem, d)), jnp.asarray(True))
    mask = jnp.ones((1, 2, n_mem))
    for _ in range(blocks):
        _, mask = ica.inheritable_cross_attention(jnp.ones((1, 2, d)), memory, mask, cfg)
    np.testing.assert_allclose(mask[0, :, 0], 0.5**blocks)
    np.testing.assert_allclose(mask[0, :, 1:], 1.0)


def test_ica_threshold_uses_unmasked_alpha_of_each_block():
    # delta=0.25 with 4 slots: threshold = 2nd smallest alpha, so exactly the lowest slot decays.
    cfg = ica.ICAConfig(scale=1.0, delta=0.25, lam=0.5, dropout=0.0)

    def block(key_values, mask):
        memory = ica.Memory(jnp.asarray(key_values, jnp.float32)[None, :, None], jnp.zeros((1, 4, 1)), jnp.asarray(True))
        return ica.inheritable_cross_attention(jnp.ones((1, 1, 1)), memory, mask, cfg)[1]

    mask = block([1.0, 2.0, 3.0, 4.0], jnp.ones((1, 1, 4)))
    np.testing.assert_allclose(mask[0, 0], [0.5, 1.0, 1.0, 1.0])
    # Block 2's raw alpha ranks slot 3 lowest and slot 0 second; after masking slot 0 would be lowest.
    mask = block([1.2, 3.0, 2.0, 1.0], mask)
    np.testing.assert_allclose(mask[0, 0], [0.5, 1.0, 1.0, 0.5])  # a masked-alpha rule would give [0.25, 1, 1, 1]


def test_ica_delta_zero_or_lambda_one_is_plain_memory_attention_and_mask_changes_output():
    images, has_image, tokens, valid = _inputs()
    outs = {}
    for name, kw in {"lsrm": dict(delta=0.3, lam=0.85), "delta0": dict(delta=0.0, lam=0.85), "lam1": dict(delta=0.3, lam=1.0)}.items():
        model = _vlm(dropout=0.0, **kw)
        outs[name] = model(images, has_image, tokens, valid)
        outs[name + "_off"] = model(images, has_image, tokens, valid, mask_enabled=False)
    np.testing.assert_allclose(outs["delta0"], outs["lam1"], atol=1e-6)
    np.testing.assert_allclose(outs["lsrm_off"], outs["delta0"], atol=1e-6)
    assert np.abs(outs["lsrm"] - outs["delta0"]).max() > 1e-4


@pytest.mark.parametrize("injection", ["ica", "prefix"])
def test_vlm_shapes_and_kv_cache_decoding_equals_full_forward(injection):
    model = _vlm(injection, slots=20 if injection == "ica" else 0, dropout=0.0)
    images, has_image, tokens, valid = _inputs(t=7)
    full = model(images, has_image, tokens, valid)
    assert full.shape == (2, 7, LLM.vocab_size)
    # Row 1 is left-padded by two: its logits must equal an unpadded run of the same tokens.
    prompt = tokens[:, :5].at[1, :2].set(0)
    prompt_valid = valid[:, :5].at[1, :2].set(False)
    last, cache, memory = model.prefill(images, has_image, prompt, prompt_valid, max_new_tokens=3)
    np.testing.assert_allclose(last[0], full[0, 4], atol=1e-5)
    short = model({"vit": images["vit"][1:]}, has_image[1:], tokens[1:, 2:7], valid[1:, 2:7])
    np.testing.assert_allclose(last[1], short[0, 2], atol=1e-5)
    step_logits, cache = model.decode_step(tokens[:, 5], cache, memory)
    np.testing.assert_allclose(step_logits[0], full[0, 5], atol=1e-5)
    np.testing.assert_allclose(step_logits[1], short[0, 3], atol=1e-5)
    assert int(cache.index) == model.config.num_prefix_tokens + 6


def test_no_image_sees_only_the_modality_embedding():
    model = _vlm(dropout=0.0)
    images, _, tokens, valid = _inputs()
    no_image = jnp.zeros((2,), jnp.int32)
    a = model(images, no_image, tokens, valid)
    b = model({"vit": images["vit"] * 0 + 3.0}, no_image, tokens, valid)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_ensemble_concatenates_encoders_and_fuses_levels():
    small = ViTConfig(image_size=10, patch_size=5, width=16, depth=2, heads=2, mlp_dim=16)
    cfg = EnsembleConfig(
        encoders=(EncoderSpec("a", VIT, (1, 3)), EncoderSpec("b", small, (2,))), out_dim=12, fusion="mean", memory_scale=0.5
    )
    ens = EncoderEnsemble(cfg, rngs=nnx.Rngs(0))
    out = ens({"a": jnp.ones((2, 20, 20, 3)), "b": jnp.ones((2, 10, 10, 3))})
    assert out.shape == (2, 16 + 4, 12) and cfg.num_tokens == 20
    assert sorted(ens.projectors.keys()) == ["a_layer1", "a_layer3", "b_layer2"]
    with pytest.raises(KeyError, match="No images for encoder"):
        ens({"a": jnp.ones((2, 20, 20, 3))})


def test_llama_rejects_bad_head_config():
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        LlamaConfig(vocab_size=10, dim=32, n_layers=1, n_heads=4, n_kv_heads=3, mlp_dim=8)


def test_llama_gqa_logits_are_finite_and_causal():
    model = Llama(LLM, rngs=nnx.Rngs(0))
    _, _, tokens, valid = _inputs(t=6)
    logits, _ = model(tokens, valid=valid)
    changed, _ = model(tokens.at[:, 4].set(7), valid=valid)
    np.testing.assert_allclose(logits[:, :4], changed[:, :4], atol=1e-6)  # the future does not leak back
    assert np.isfinite(np.asarray(logits)).all()


def test_llama_side_branch_runs_beside_the_ffn_and_carries_its_state_block_to_block():
    model = Llama(LLM, rngs=nnx.Rngs(0))
    _, _, tokens, valid = _inputs(t=6)
    plain, _ = model(tokens, valid=valid)
    seen = []

    def side(scale):
        def branch(u, state, key):
            seen.append((u.shape, int(state), key))
            return scale * jnp.ones_like(u), state + 1
        return branch

    key = jax.random.key(7)
    silent, _ = model(tokens, valid=valid, side=side(0.0), side_state=jnp.asarray(0), dropout_key=key)
    np.testing.assert_array_equal(silent, plain)  # a zero branch leaves the decoder unchanged
    assert [shape for shape, _, _ in seen] == [(2, 6, LLM.dim)] * LLM.n_layers
    assert [state for _, state, _ in seen] == list(range(LLM.n_layers))  # block i gets block i-1's state
    for i, (_, _, block_key) in enumerate(seen):
        np.testing.assert_array_equal(jax.random.key_data(block_key), jax.random.key_data(jax.random.fold_in(key, i)))
    shifted, _ = model(tokens, valid=valid, side=side(0.5), side_state=jnp.asarray(0))
    assert np.abs(shifted - plain).max() > 1e-3


def test_pooled_patch_grid_is_the_mean_of_each_window():
    from semrel_jax.method.ensemble import EncoderSpec, pool_grid

    x = np.random.default_rng(0).normal(size=(2, 36, 5)).astype(np.float32)  # 6x6 grid
    pooled = np.asarray(pool_grid(jnp.asarray(x), 6, 3))
    grid = x.reshape(2, 6, 6, 5)
    expected = np.stack([grid[:, i * 3 : i * 3 + 3, j * 3 : j * 3 + 3].mean((1, 2)) for i in range(2) for j in range(2)], 1)
    np.testing.assert_allclose(pooled, expected, rtol=1e-6)
    vit = ViTConfig(image_size=30, patch_size=5, width=8, depth=1, heads=2, mlp_dim=16)
    assert EncoderSpec("v", vit, taps=(1,), pool=3).num_tokens == 4
    with pytest.raises(ValueError, match="must divide"):
        EncoderSpec("v", vit, taps=(1,), pool=4)
    with pytest.raises(ValueError, match="drop_cls"):
        EncoderSpec("v", vit, taps=(1,), pool=2, drop_cls=False)


def test_abstract_init_gives_nnx_eval_shapes_and_restores_jax():
    from jax._src.interpreters import partial_eval

    from semrel_jax.models import abstract

    original = partial_eval.DynamicJaxprTracer._origin_msg
    ours = nnx.state(abstract.eval_shape(lambda: _vlm()), nnx.Param)
    plain = nnx.state(nnx.eval_shape(lambda: _vlm()), nnx.Param)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), ours) == jax.tree.map(lambda x: (x.shape, x.dtype), plain)
    assert partial_eval.DynamicJaxprTracer._origin_msg is original
