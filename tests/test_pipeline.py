"""Tokenizer, featurization, grain datasets and evaluation batching."""

import numpy as np
import pytest

from semrel_jax.data import pipeline, sort_of_clevr, tokenizer as tokenizer_lib
from semrel_jax.data.preprocess import NORMALIZATION, ImagePreprocessor


def _featurizer(tokenizer, max_len=24):
    return pipeline.VQAFeaturizer(tokenizer, {"vit": ImagePreprocessor(75)}, max_len)


def test_tokenizer_covers_vocabulary_and_is_cached(tmp_path, tokenizer):
    ids = tokenizer("how many other objects have the same shape as the gray object ?", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == "how many other objects have the same shape as the gray object ?"
    path = str(tmp_path / "tok")
    first = tokenizer_lib.load_or_train(path, sort_of_clevr.vocabulary())
    again = tokenizer_lib.load_or_train(path, sort_of_clevr.vocabulary())
    assert first.get_vocab() == again.get_vocab()
    with pytest.raises(ValueError, match="lacks words"):
        tokenizer_lib.load_or_train(path, ["zebra"])
    with pytest.raises(FileNotFoundError):
        tokenizer_lib.load(str(tmp_path / "missing"))


def test_train_features_put_loss_on_answer_tokens_only(tokenizer):
    example = {"image": np.zeros((75, 75, 3), np.uint8), "question": "what is the shape of the red object?",
               "answer": "circle", "index": 3}
    f = _featurizer(tokenizer).train(example)
    n = int(f["valid"].sum())
    np.testing.assert_array_equal(f["targets"][: n - 1], f["tokens"][1:n])
    answer_targets = f["targets"][f["loss_mask"] == 1]
    assert answer_targets.tolist() == [tokenizer.convert_tokens_to_ids("circle"), tokenizer.eos_token_id]
    assert f["tokens"][0] == tokenizer.bos_token_id and f["loss_mask"].sum() == 2
    assert f["images"]["vit"].dtype == np.float32 and f["images"]["vit"].shape == (75, 75, 3)
    mean, std = NORMALIZATION["clip"]
    np.testing.assert_allclose(f["images"]["vit"][0, 0], -np.asarray(mean) / np.asarray(std), rtol=1e-6)


def test_prompt_features_are_left_padded_and_too_long_fails(tokenizer):
    example = {"image": np.zeros((75, 75, 3), np.uint8), "question": "is the red object on the left or the right?",
               "answer": "left", "index": 0}
    f = _featurizer(tokenizer).prompt(example)
    assert f["prompt_valid"][-1] and not f["prompt_valid"][0]
    assert tokenizer.decode(f["prompt"][f["prompt_valid"]].tolist(), skip_special_tokens=True).endswith("answer :")
    with pytest.raises(ValueError, match="max_text_len"):
        _featurizer(tokenizer, max_len=8).train(example)


def test_the_featurizer_keeps_the_longest_row_across_threads_and_pickles(tokenizer):
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    data = sort_of_clevr.SortOfClevr("train", num_images=5, seed=0)
    featurizer = _featurizer(tokenizer, max_len=34)
    with ThreadPoolExecutor(4) as pool:
        rows = list(pool.map(featurizer.train, [data[i] for i in range(len(data))]))
    assert featurizer.longest == max(int(row["valid"].sum()) for row in rows) == 19  # Sort-of-CLEVR's longest
    copy = pickle.loads(pickle.dumps(featurizer))  # as grain sends it to a worker: its own count, a working lock
    assert copy.longest == 19 and copy.train(data[0])["tokens"].shape == (34,)


def test_preprocessor_resizes_and_rejects_bad_images():
    out = ImagePreprocessor(32)(np.full((75, 100, 3), 255, np.uint8))
    assert out.shape == (32, 32, 3)
    with pytest.raises(ValueError, match="uint8 RGB"):
        ImagePreprocessor(32)(np.zeros((75, 75), np.uint8))
    with pytest.raises(ValueError, match="Unknown normalization"):
        ImagePreprocessor(32, normalization="nope")


def test_training_dataset_is_indexable_by_step_and_reshuffles(tokenizer):
    source = sort_of_clevr.SortOfClevr("train", 4, questions_per_image=4)  # 16 examples
    ds = pipeline.training_dataset(source, _featurizer(tokenizer).train, batch_size=4, seed=1)
    epoch0 = np.concatenate([ds[i]["index"] for i in range(4)])
    epoch1 = np.concatenate([ds[i]["index"] for i in range(4, 8)])
    assert sorted(epoch0) == sorted(epoch1) == list(range(16))
    assert list(epoch0) != list(epoch1)
    # Resuming at step 5 yields exactly the batches an uninterrupted run sees at steps 5, 6.
    resumed = pipeline.iterate(ds, start_step=5)
    for step in (5, 6):
        np.testing.assert_array_equal(next(resumed)["tokens"], ds[step]["tokens"])
    # Two hosts read disjoint halves.
    h0 = pipeline.training_dataset(source, _featurizer(tokenizer).train, 4, 1, 0, 2)
    h1 = pipeline.training_dataset(source, _featurizer(tokenizer).train, 4, 1, 1, 2)
    seen0 = {int(i) for s in range(4) for i in h0[s]["index"]}
    seen1 = {int(i) for s in range(4) for i in h1[s]["index"]}
    assert not seen0 & seen1 and len(seen0 | seen1) == 16


def test_curriculum_stages_draw_their_kinds_subsets_then_the_full_stream_and_resume_exactly(tokenizer):
    from semrel_jax.errors import UserError

    source = sort_of_clevr.SortOfClevr("train", 20, questions_per_image=6)  # 120 examples
    kinds = [source.metadata(i)["kind"] for i in range(len(source))]
    closest = [i for i, k in enumerate(kinds) if k == "closest"][:4]
    relations = [i for i, k in enumerate(kinds) if k in ("horizontal", "vertical")][:6]
    featurize = _featurizer(tokenizer).train
    ds = pipeline.training_dataset(source, featurize, batch_size=2, seed=3,
                                   curriculum=("closest:4:3", "horizontal+vertical:6:4"))
    plain = pipeline.training_dataset(source, featurize, batch_size=2, seed=3)
    drawn = [sorted(int(i) for i in ds[s]["index"]) for s in range(7)]
    assert set(sum(drawn[:2], [])) == set(closest)  # the first 4 closest questions (2 steps = one epoch of them)
    assert set(sum(drawn[:3], [])) <= set(closest)
    assert set(sum(drawn[3:7], [])) <= set(relations) and len(set(sum(drawn[3:6], []))) == 6
    for step in range(7, 10):  # then the stream without a curriculum, from its start
        np.testing.assert_array_equal(ds[step]["index"], plain[step - 7]["index"])
    resumed = pipeline.iterate(ds, start_step=2)  # inside the first stage
    for step in range(2, 9):
        np.testing.assert_array_equal(next(resumed)["tokens"], ds[step]["tokens"])
    with pytest.raises(UserError, match=r"has \d+ examples of kinds \['count'\], fewer than 500; its kinds are"):
        pipeline.training_dataset(source, featurize, batch_size=2, seed=3, curriculum=("count:500:3",))


def test_a_stage_ends_on_its_loss_only_at_a_logging_step_wholly_inside_it(tokenizer):
    from semrel_jax.data import curriculum
    from semrel_jax.errors import UserError

    stages = [curriculum.parse(s) for s in ("shape:10:100:0.05", "left_of:10:50", "above:10:100:0.1")]
    assert str(stages[0]) == "shape:10:100:0.05" and stages[1].until_loss is None
    progress = curriculum.Progress(stages)
    assert progress.deciding(20, 0) == 0
    progress.end(0, 40)
    assert progress.lengths == (40, 50, 100)
    assert progress.deciding(60, 40) is None  # the fixed-length stage 1 (steps 40-90)
    assert progress.deciding(100, 80) is None  # stage 2 began at step 90: the interval straddles it
    assert progress.deciding(120, 100) == 2
    progress.end(2, 120)
    assert progress.lengths == (40, 50, 30) and progress.deciding(140, 120) is None  # the full stream
    assert curriculum.Progress.from_json(stages, progress.to_json()).lengths == (40, 50, 30)
    assert curriculum.Progress.from_json(stages, {}).lengths == (100, 50, 100)  # a run saved before any ended

    source = sort_of_clevr.SortOfClevr("train", 20, questions_per_image=6)  # 120 examples
    vertical = [i for i in range(len(source)) if source.metadata(i)["kind"] == "vertical"]
    stage = curriculum.parse("vertical:5:10:0.1")
    assert curriculum.Subset(source, stage).indices == vertical[:5]
    assert curriculum.Subset(source, stage, held_out=4).indices == vertical[5:9]  # never in the stage's subset
    with pytest.raises(UserError, match=r"fewer than 5 \+ 500 held out \(its loss ends the stage\)"):
        curriculum.Subset(source, stage, held_out=500)


def test_grouped_batches_hold_each_image_once_with_its_questions(tokenizer):
    source = sort_of_clevr.SortOfClevr("train", 6, questions_per_image=4)  # 24 examples, 6 images
    featurizer = _featurizer(tokenizer)
    ds = pipeline.training_dataset(
        source, featurizer.train, batch_size=8, seed=1, examples_per_image=4, featurize_group=featurizer.train_group
    )
    batch = ds[0]
    assert batch["images"]["vit"].shape == (2, 75, 75, 3)
    assert batch["tokens"].shape == (2, 4, 24) and batch["loss_mask"].shape == (2, 4, 24)
    for row in range(2):
        image_index = int(batch["index"][row]) // 4
        examples = [source[image_index * 4 + q] for q in range(4)]
        np.testing.assert_array_equal(batch["images"]["vit"][row], featurizer.train(examples[0])["images"]["vit"])
        for q, example in enumerate(examples):
            np.testing.assert_array_equal(batch["tokens"][row, q], featurizer.train(example)["tokens"])
    # An epoch is 3 steps of 2 images: every image once; two hosts split the images.
    images = sorted(int(i) // 4 for step in range(3) for i in ds[step]["index"])
    assert images == list(range(6))
    hosts = [
        pipeline.training_dataset(source, featurizer.train, 8, 1, h, 2, examples_per_image=4, featurize_group=featurizer.train_group)
        for h in (0, 1)
    ]
    seen = [{int(i) // 4 for step in range(3) for i in host[step]["index"]} for host in hosts]
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 6
    with pytest.raises(ValueError, match="do not share an image"):
        featurizer.train_group([source[0], source[4]])
    with pytest.raises(ValueError, match="divide"):
        source.image_groups(3)


def test_caption_mixture_draws_its_weight_and_resumes_exactly(tmp_path):
    import vqa  # configs/ is on sys.path (conftest)

    from semrel_jax import config as config_lib, recipe
    from semrel_jax.data import registry
    from semrel_jax.errors import ConfigError

    c = vqa.get_config("tiny")
    c.data.update(caption_mix=0.25, max_text_len=34)
    config_lib.prepare(c)
    registry.validate(c)
    train_source, eval_source = registry.build_sources(c)
    captions, weight = registry.mix_source(c)
    assert weight == 0.25 and len(captions) == c.data.train_images
    tokenizer = recipe.build_tokenizer(c, str(tmp_path), recipe.Data(train_source, eval_source, (captions, weight)))
    featurizer = recipe.build_featurizer(c, tokenizer)
    ds = pipeline.training_dataset(train_source, featurizer.train, 8, 0, mix=(captions, weight))
    rows = [ds[step] for step in range(40)]
    prompt = tokenizer("describe", add_special_tokens=False)["input_ids"][0]
    is_caption = np.concatenate([(r["tokens"] == prompt).any(-1) for r in rows])
    assert 0.18 < is_caption.mean() < 0.32  # 320 rows at weight 0.25
    # caption rows carry the whole description (24 words + EOS) in the loss
    row = next(r for r in rows if (r["tokens"] == prompt).any())
    i = int(np.argmax((row["tokens"] == prompt).any(-1)))
    assert row["loss_mask"][i].sum() == 25
    resumed = pipeline.iterate(ds, start_step=7)
    np.testing.assert_array_equal(next(resumed)["tokens"], rows[7]["tokens"])
    # the tokenizer covers both; other datasets ignore the key
    words = registry.vocabulary(c, train_source, eval_source, captions)
    assert {"closest", "describe", "square"} <= set(words)
    c.data.name = "sort_of_clevr_captions"
    assert registry.mix_source(c) is None
    c.data.name = "sort_of_clevr"
    for bad in (1.0, -0.1):
        c.data.caption_mix = bad
        with pytest.raises(ConfigError, match="data.caption_mix"):
            registry.validate(c)
    c.data.caption_mix = 0.25
    c.data.caption_kinds = ("objects", "relations")
    registry.validate(c)
    captions, _ = registry.mix_source(c)
    assert len(captions) == 2 * c.data.train_images and captions[1]["question"] == "describe the relations ."
    assert "caption_kinds" not in registry.record_settings(c)  # the mixed-in source is never a prepared copy
    c.data.name = "sort_of_clevr_captions"
    assert registry.record_settings(c)["caption_kinds"] == ["objects", "relations"]
    c.data.name = "sort_of_clevr"
    for bad in ((), ("objects", "shapes")):
        c.data.caption_kinds = bad
        with pytest.raises(ConfigError, match="data.caption_kinds"):
            registry.validate(c)


def test_evaluation_batches_pad_the_last_batch(tokenizer):
    source = sort_of_clevr.SortOfClevr("test", 1, questions_per_image=10)
    batches = list(pipeline.evaluation_batches(source, _featurizer(tokenizer).prompt, batch_size=4))
    assert [b["prompt"].shape[0] for b in batches] == [4, 4, 4]
    assert [int(b["example_valid"].sum()) for b in batches] == [4, 4, 2]
    assert [int(i) for b in batches for i, v in zip(b["index"], b["example_valid"]) if v] == list(range(10))


def test_unknown_tokens_are_refused(tokenizer):
    example = {"image": np.zeros((75, 75, 3), np.uint8), "question": "what is the shape of the red object?",
               "answer": "zebra", "index": 11}
    with pytest.raises(ValueError, match="Example 11: the tokenizer maps part of"):
        _featurizer(tokenizer).train(example)


def test_preprocessing_matches_the_hf_image_processors():
    transformers = pytest.importorskip("transformers")
    rng = np.random.default_rng(0)
    cases = [
        (transformers.CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
         ImagePreprocessor(224, "clip", "bicubic")),
        (transformers.SiglipImageProcessorPil(size={"height": 224, "width": 224}),
         ImagePreprocessor(224, "siglip", "bicubic", crop=False)),
        (transformers.BitImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                           image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
         ImagePreprocessor(224, "imagenet", "bicubic", resize=256)),  # DINOv2's processor
    ]
    for hf_processor, ours in cases:
        for h, w in [(300, 451), (480, 640), (224, 224), (250, 199), (500, 333)]:
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            expected = hf_processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
            np.testing.assert_allclose(ours(image), expected, atol=1e-5, err_msg=f"{type(hf_processor).__name__} {h}x{w}")
