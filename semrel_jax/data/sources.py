"""The training and evaluation sources a config names (``data.name``).

  sort_of_clevr   built-in, generated (the demo)
  sort_of_clevr_captions  the same images with scene descriptions (configs/caption.py)
  scienceqa       official release under data.root; data.scienceqa_format (QCM-A, CQM-A, QCM-LEA, ...)
  vqa_v2          official questions/annotations JSON under data.root, COCO images in data.root/<split>
                  (or data.image_root)
  coco_captions   Karpathy split JSON (data.train_file) + COCO image root (data.image_root)
  llava_json      LLaVA instruction JSON (data.train_file, optional data.eval_file) + data.image_root

Real datasets format their prompts themselves, so they use the ``raw`` prompt format (``data.prompt_format``
'qa' wraps only the built-in data) unless ``chat`` is asked for.

``data.prepared_dir``: read a prepared copy (TFDS array_record, ``python -m semrel_jax.data.prepare``) of the
same sources instead of the raw files; ``record_settings`` are the keys that copy must have been made with.
"""

from __future__ import annotations

import ml_collections

from semrel_jax.data import coco_captions, llava_json, scienceqa, sort_of_clevr, sort_of_clevr_captions, vqa_v2

NAMES = ("sort_of_clevr", "sort_of_clevr_captions", "scienceqa", "vqa_v2", "coco_captions", "llava_json")
EVAL_SPLIT = "test"
# (train, eval) splits when data.train_split / data.eval_split are ''
DEFAULT_SPLITS = {
    "scienceqa": ("train", "test"), "vqa_v2": ("train2014", "val2014"), "coco_captions": ("train", "test"),
}


def split_names(d: ml_collections.ConfigDict) -> tuple[str, str]:
    """The (train, eval) split names of ``data.name``, defaults resolved.

    The generated Sort-of-CLEVR sources train on "train" and evaluate on "test" by default;
    ``data.eval_split='train'`` evaluates on the first ``eval_images`` training images (does the model fit
    what it was trained on, or fail to generalise?).
    """
    train, evaluation = DEFAULT_SPLITS.get(d.name, ("train", EVAL_SPLIT))
    return d.train_split or train, d.eval_split or evaluation


def record_settings(c: ml_collections.ConfigDict) -> dict:
    """The config values that decide which records the two sources hold and what they contain.

    A prepared copy stores them and is only read under the same values. File locations are not among them
    (a copy is read without the raw files); ``scienceqa`` records whether a captions file was used.
    """
    d = c.data
    settings: dict = {"name": d.name}
    if d.name in ("sort_of_clevr", "sort_of_clevr_captions"):
        settings.update(seed=c.seed, train_images=d.train_images, eval_images=d.eval_images, object_size=d.object_size)
        if split_names(d) != ("train", EVAL_SPLIT):  # only when set: copies made before keep their settings
            settings["train_split"], settings["eval_split"] = split_names(d)
        if d.name == "sort_of_clevr":
            settings["questions_per_image"] = d.questions_per_image
        elif caption_kinds(d) != ("objects",):  # only when set, as above
            settings["caption_kinds"] = list(caption_kinds(d))
        return settings
    settings["on_bad_data"] = d.on_bad_data
    if d.name in DEFAULT_SPLITS:
        settings["train_split"], settings["eval_split"] = split_names(d)
    if d.name == "scienceqa":
        settings.update(scienceqa_format=d.scienceqa_format, captions=bool(d.captions))
    elif d.name == "vqa_v2":
        settings["vqa_prompt"] = d.vqa_prompt
    elif d.name == "llava_json":
        settings["separate_eval_file"] = bool(d.eval_file)
    return settings


def build_sources(c: ml_collections.ConfigDict):
    """``(train_source, eval_source)``; every source is random-access, deterministic and picklable."""
    d = c.data
    if d.get("prepared_dir"):  # .get: configs saved before prepared copies existed
        from semrel_jax.data import prepared

        return prepared.open_sources(c)
    if d.name == "sort_of_clevr":
        kw = dict(seed=c.seed, questions_per_image=d.questions_per_image, object_size=d.object_size)
        train, evaluation = split_names(d)
        return (
            sort_of_clevr.SortOfClevr(train, d.train_images, **kw),
            sort_of_clevr.SortOfClevr(evaluation, d.eval_images, **kw),
        )
    if d.name == "sort_of_clevr_captions":
        train, evaluation = split_names(d)
        return (
            sort_of_clevr_captions.SortOfClevrCaptions(train, d.train_images, c.seed, d.object_size, caption_kinds(d)),
            sort_of_clevr_captions.SortOfClevrCaptions(evaluation, d.eval_images, c.seed, d.object_size, caption_kinds(d)),
        )
    policy = dict(on_bad_data=d.on_bad_data)
    # A corrupt eval image must never be replaced by its neighbour (that example would be scored twice).
    eval_policy = dict(on_bad_data=d.on_bad_data, verify_images=d.on_bad_data == "skip")
    if d.name == "scienceqa":
        fmt, captions = d.scienceqa_format, d.captions or None
        train, evaluation = split_names(d)
        return (
            scienceqa.ScienceQA(d.root, train, fmt, captions, **policy),
            scienceqa.ScienceQA(d.root, evaluation, fmt, captions, **eval_policy),
        )
    if d.name == "vqa_v2":
        image_dir = d.image_root or None
        train, evaluation = split_names(d)
        return (
            vqa_v2.VQAv2.from_root(d.root, train, image_dir, prompt_format=d.vqa_prompt, **policy),
            vqa_v2.VQAv2.from_root(d.root, evaluation, image_dir, prompt_format=d.vqa_prompt, **eval_policy),
        )
    if d.name == "coco_captions":
        train, evaluation = split_names(d)
        return (
            coco_captions.KarpathyCOCO(d.train_file, d.image_root, train, "train", **policy),
            coco_captions.KarpathyCOCO(d.train_file, d.image_root, evaluation, "eval", **eval_policy),
        )
    if d.name == "llava_json":
        train = llava_json.LLaVAInstruct(d.train_file, d.image_root, **policy)
        return train, llava_json.LLaVAInstruct(d.eval_file or d.train_file, d.image_root, **eval_policy)
    raise ValueError(f"Unknown data.name {d.name!r}; expected one of {NAMES}.")


def build_mix_source(c: ml_collections.ConfigDict):
    """The training source mixed into ``data.name``'s, or None: ``(source, weight)``.

    ``sort_of_clevr`` with ``data.caption_mix = w > 0``: a fraction w of the training examples are the scene
    descriptions of the same training images (``sort_of_clevr_captions``, of the ``data.caption_kinds``
    kinds, equally often), LLaVA's caption alignment run as a mixture. Evaluation, the eval texts and the majority baselines stay with the questions.
    """
    d = c.data
    weight = d.get("caption_mix", 0.0)
    if d.name != "sort_of_clevr" or not weight:
        return None
    train = split_names(d)[0]
    captions = sort_of_clevr_captions.SortOfClevrCaptions(train, d.train_images, c.seed, d.object_size, caption_kinds(d))
    return captions, weight


def caption_kinds(d) -> tuple[str, ...]:
    """``data.caption_kinds`` (configs saved before it existed: objects only)."""
    return tuple(d.get("caption_kinds", ("objects",)))


def vocabulary(c: ml_collections.ConfigDict, train_source, eval_source, mix_source=None) -> list[str]:
    """Words a closed-vocabulary tokenizer trained for this data (and the mixed-in source) must cover."""
    if c.data.name == "sort_of_clevr" and mix_source is None:
        return sort_of_clevr.vocabulary()
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.Whitespace()  # the word-level tokenizer's own splitting (tokenizer.py)
    words = set()
    for source in (train_source, eval_source, mix_source):
        if isinstance(source, sort_of_clevr.SortOfClevr):  # generated: its whole vocabulary, without a scan
            words.update(sort_of_clevr.vocabulary())
        if source is None or isinstance(source, sort_of_clevr.SortOfClevr):
            continue
        for text in source.texts():
            words.update(word for word, _ in split.pre_tokenize_str(text))
    return sorted(words)
