"""Heatmaps: slot -> patch mapping (one-hot memory through the model), the figure's numbers, the gallery."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from semrel_jax.errors import UserError
from semrel_jax.evaluation import explain, explain_plot
from semrel_jax.method import ica
from semrel_jax.method.ensemble import EncoderSpec, EnsembleConfig
from semrel_jax.method.vlm import VisionLanguageModel, VLMConfig, slot_layout
from semrel_jax.models.llama import LlamaConfig
from semrel_jax.models.vit import ViTConfig

LLM = LlamaConfig(vocab_size=30, dim=16, n_layers=2, n_heads=2, n_kv_heads=1, mlp_dim=24)
VIT = ViTConfig(image_size=20, patch_size=5, width=8, depth=1, heads=1, mlp_dim=8)  # 4x4 patches


def _two_encoder_model():
    """Encoder ``a`` keeps its class token, ``b`` pools 2x2; tap 0 (the patch embeddings) mixes no patches."""
    vision = EnsembleConfig(
        encoders=(EncoderSpec("a", VIT, (0,), drop_cls=False), EncoderSpec("b", VIT, (0,), pool=2)),
        out_dim=LLM.dim, projector_hidden=8, memory_scale=1.0,
    )
    config = VLMConfig(llm=LLM, vision=vision, num_memory_slots=24, ica=ica.ICAConfig(scale=1.0, dropout=0.0))
    return VisionLanguageModel(config, rngs=nnx.Rngs(0))


def _inputs(image: np.ndarray) -> dict:
    images = {name: jnp.asarray(image[None], jnp.float32) for name in ("a", "b")}
    prompt = jnp.asarray([[0, 5, 6, 7]], jnp.int32)
    return dict(images=images, has_image=jnp.ones((1,), jnp.int32), prompt=prompt, prompt_valid=jnp.ones((1, 4), bool))


@pytest.mark.parametrize("row, col", [(0, 0), (1, 3), (3, 2)])
def test_a_one_hot_memory_lights_exactly_its_patch_on_every_encoders_grid(row, col):
    """A bright patch (row, col) changes one memory slot per encoder; its block-0 alpha (text-only queries) lands
    on that patch's cell of each encoder's grid (``b``'s pooled cell), nowhere else."""
    model = _two_encoder_model()
    graphdef, state = nnx.split(model)
    black = np.zeros((20, 20, 3), np.float32)
    lit = black.copy()
    lit[5 * row : 5 * row + 5, 5 * col : 5 * col + 5] = 1.0
    generated = jnp.asarray([[8, 9]], jnp.int32)
    alpha = [explain.captured_readouts(graphdef, (state,), _inputs(x), generated)["alpha"][0, 0, -1] for x in (black, lit)]
    changed = np.abs(np.asarray(alpha[1] - alpha[0])) > 1e-6
    layout = model.slot_layout()
    assert changed.sum() == 2  # one slot of each encoder: no class token, no padding slot
    grids = explain.patch_grids(changed.astype(float), layout)
    expected_a = np.zeros((4, 4))
    expected_a[row, col] = 1
    expected_b = np.zeros((2, 2))
    expected_b[row // 2, col // 2] = 1
    np.testing.assert_array_equal(grids["a"], expected_a)
    np.testing.assert_array_equal(grids["b"], expected_b)


def test_patch_grids_skip_the_class_token_and_follow_the_concatenation():
    layout = slot_layout(_two_encoder_model().config.vision)
    values = np.arange(24.0)  # slot 0: a's class token, 1-16: a's patches, 17-20: b's, 21-23: padding
    grids = explain.patch_grids(values, layout)
    np.testing.assert_array_equal(grids["a"], np.arange(1.0, 17.0).reshape(4, 4))
    np.testing.assert_array_equal(grids["b"], np.arange(17.0, 21.0).reshape(2, 2))


def _explanation(num_blocks=3, tokens=("red", "square")):
    layout = slot_layout(_two_encoder_model().config.vision)
    rng = np.random.default_rng(0)
    alpha = rng.normal(size=(num_blocks, len(tokens), 24))
    mask = rng.uniform(0.5, 1.0, size=(num_blocks, len(tokens), 24))
    return explain.Explanation(
        image=rng.integers(0, 255, size=(20, 20, 3), dtype=np.uint8), question="what colour?", prediction="red square",
        tokens=list(tokens), readouts={"alpha": alpha, "mask": mask}, layout=layout, answer="red", index=7,
    )


def test_the_figure_draws_each_panel_from_the_readouts_over_its_patches():
    expl = _explanation()
    fig = explain_plot.explanation_figure(expl, blocks=(0, -1))
    columns = 1 + 2 * 2  # the image, then blocks (0, 2) x encoders (a, b)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(axes) == columns * 4  # rows: 2 tokens x (alpha, mask)
    for r, (t, name) in enumerate([(0, "alpha"), (0, "mask"), (1, "alpha"), (1, "mask")]):
        for c, (block, encoder) in enumerate([(0, "a"), (0, "b"), (2, "a"), (2, "b")]):
            heatmap = axes[r * columns + c + 1].images[-1]
            expected = explain.patch_grids(expl.readouts[name][block, t], expl.layout)[encoder]
            np.testing.assert_array_equal(heatmap.get_array(), expected)
            assert tuple(heatmap.get_extent()) == (0, 20, 20, 0)  # cell (i, j) covers patch (i, j) of the image
        shared = (0.0, 1.0) if name == "mask" else axes[r * columns + 1].images[-1].get_clim()
        assert axes[r * columns + 2].images[-1].get_clim() == shared  # one colour scale per readout


def test_an_object_token_encoder_is_drawn_on_its_objects_pixels_or_not_at_all_without_them():
    import dataclasses

    expl = _explanation()
    b = expl.layout[1]
    expl.layout = (expl.layout[0], dataclasses.replace(b, grid=0, objects=4))  # encoder b: 4 object tokens
    fig = explain_plot.explanation_figure(expl, blocks=(0,))
    assert len([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]) == 2 * 4  # the image, block 0 x encoder a
    slots = np.full((20, 20), 4)  # slot 4: background
    slots[2:6, 3:9], slots[12:18, 10:14] = 1, 3  # two objects in slots 1 and 3
    expl.object_maps = {"b": slots}
    fig = explain_plot.explanation_figure(expl, blocks=(0,))
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(axes) == 3 * 4  # the image, block 0 x encoders a and b
    drawn = np.ma.filled(axes[2].images[-1].get_array(), np.nan)  # token 0, alpha, encoder b
    alpha = expl.readouts["alpha"][0, 0]
    assert drawn[3, 4] == alpha[b.start + 1] and drawn[15, 11] == alpha[b.start + 3]
    assert np.isnan(drawn[0, 0]) and np.isnan(drawn[slots == 4]).all()
    expl.object_maps = {}  # an objects-only model without its pixels' slots: the image alone
    expl.layout = (dataclasses.replace(expl.layout[0], grid=0), expl.layout[1])
    fig = explain_plot.explanation_figure(expl, blocks=(0,))
    assert len(fig.axes) == 4 and all(len(ax.images) == 1 for ax in fig.axes)  # one image per row, no colour bar


def test_gallery_writes_figures_samples_and_html(tmp_path):
    samples = explain_plot.write_gallery([_explanation(), _explanation(tokens=("no",))], str(tmp_path))
    assert [s["figure"] for s in samples] == ["example_0.png", "example_1.png"]
    for s in samples:
        assert (tmp_path / s["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "samples.json").read_text())[0] == dict(
        index=7, question="what colour?", answer="red", prediction="red square", figure="example_0.png"
    )
    assert 'src="example_1.png"' in (tmp_path / "index.html").read_text()


def test_chosen_blocks():
    assert explain.chosen_blocks(4) == (0, 1, 2, 3)
    assert explain.chosen_blocks(32) == (0, 6, 12, 19, 25, 31)
    assert explain.chosen_blocks(32, (0, -1)) == (0, 31)
    with pytest.raises(UserError, match="blocks \\[4\\] do not exist"):
        explain.chosen_blocks(4, (4,))


def test_long_answers_draw_only_their_first_tokens():
    fig = explain_plot.explanation_figure(_explanation(tokens=("a", "long", "caption")), max_tokens=2)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(axes) == (1 + 3 * 2) * (2 * 2)  # (image + 3 blocks x 2 encoders) x (2 tokens x alpha, M)
    assert "'long'" in axes[2 * 7].get_title() and all("caption" not in ax.get_title() for ax in axes)
