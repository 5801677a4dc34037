"""The datasets by ``data.name``, and everything that depends on which one a config names.

  sort_of_clevr           built-in, generated (the demo); mixes in its scene descriptions (data.caption_mix)
  sort_of_clevr_captions  the same images with scene descriptions (configs/caption.py)
  scienceqa               official release under data.root; data.scienceqa_format (QCM-A, CQM-A, QCM-LEA, ...)
  vqa_v2                  official questions/annotations JSON under data.root, COCO images in data.root/<split>
                          (or data.image_root)
  coco_captions           Karpathy split JSON (data.train_file) + COCO image root (data.image_root)
  llava_json              LLaVA instruction JSON (data.train_file, optional data.eval_file) + data.image_root
  nlvr2                   NLVR2 JSON lines under data.root, image pairs in data.root/images/<split> (or data.image_root)
  flickr30k               Karpathy split JSON (data.train_file) + Flickr30K image folder (data.image_root)
  visual_genome           VG question_answers.json under data.root, VG_100K{,_2} under data.root (or data.image_root)
  gqa                     GQA <split>_questions.json under data.root, images in data.root/images (or data.image_root)

Adding a dataset: one module declaring ``DATASET = Dataset(...)`` (``semrel_jax.data.dataset``) whose sources
are :class:`semrel_jax.data.source.Source`, and one line in ``_DATASETS``.

``data.prepared_dir``: :func:`build_sources` reads a prepared copy (``semrel_jax.data.tfds_copy``, made by
``python -m semrel_jax.data.prepare``) of the same sources instead of the raw files; it must have been made
with the same :func:`record_settings`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections

from semrel_jax import errors
from semrel_jax.data import (
    coco_captions, flickr30k, gqa, llava_json, nlvr2, scienceqa, sort_of_clevr, sort_of_clevr_captions, tfds_copy,
    visual_genome, vqa_v2,
)
from semrel_jax.data.dataset import Dataset
from semrel_jax.data.source import Source

_DATASETS: dict[str, Dataset] = {
    spec.name: spec
    for spec in (
        sort_of_clevr.DATASET,
        sort_of_clevr_captions.DATASET,
        scienceqa.DATASET,
        vqa_v2.DATASET,
        coco_captions.DATASET,
        llava_json.DATASET,
        nlvr2.DATASET,
        flickr30k.DATASET,
        visual_genome.DATASET,
        gqa.DATASET,
    )
}


def names() -> tuple[str, ...]:
    return tuple(_DATASETS)


def get(name: str) -> Dataset:
    """The spec of ``data.name`` ``name``; ConfigError naming the registered ones when there is none."""
    errors.check(name in _DATASETS, "data.name", f"expected one of {names()}, got {name!r}")
    return _DATASETS[name]


def all_defaults() -> dict[str, Any]:
    """The dataset-specific ``config.data`` keys of every dataset with their defaults (what the base config
    adds to its generic data keys). A key two datasets share has one default."""
    out: dict[str, Any] = {}
    for spec in _DATASETS.values():
        for key, value in spec.defaults.items():
            assert out.get(key, value) == value, f"data.{key}: datasets disagree on its default"
            out[key] = value
    return out


def validate(c: ml_collections.ConfigDict) -> None:
    """The data checks that depend on ``data.name`` (pure: no file is read), then the dataset's own (and
    those of the dataset it mixes in, whose keys it reads). ConfigError names the key."""
    d = c.data
    errors.one_of(c, "data.name", names())
    spec = get(d.name)
    errors.check(d.prompt_format in spec.prompt_formats, "data.prompt_format",
                 f"{d.name} takes {spec.prompt_formats} (real datasets format their own prompts), got {d.prompt_format!r}")
    errors.positive_int(c, "data.examples_per_image")
    group = d.examples_per_image
    if group > 1:
        grouping = tuple(name for name, other in _DATASETS.items() if other.groups_by_image)
        errors.check(spec.groups_by_image and not d.prepared_dir, "data.examples_per_image",
                     f"grouping examples by image is implemented for the raw {grouping} sources, not {d.name!r}"
                     + (" read from a prepared copy" if spec.groups_by_image else ""))
        errors.check(
            c.train.batch_size % (group * c.train.grad_accum_steps) == 0, "data.examples_per_image",
            f"train.batch_size={c.train.batch_size} must be a multiple of examples_per_image x grad_accum_steps "
            f"({group} x {c.train.grad_accum_steps})",
        )
    spec.validate(c)
    if spec.mix is not None:
        get(spec.mix[0]).validate(c)


def record_settings(c: ml_collections.ConfigDict) -> dict:
    """The config values that decide which records the two sources hold and what they contain (a prepared
    copy stores them and is only read under the same values)."""
    return {"name": c.data.name, **get(c.data.name).record_settings(c)}


def build_sources(c: ml_collections.ConfigDict) -> tuple[Source, Source]:
    """``(train_source, eval_source)``: the prepared copy under ``data.prepared_dir`` when set (checked
    here: ``tfds_copy.PreparedDataError`` says what is missing or different), else the raw data."""
    spec = get(c.data.name)
    if c.data.prepared_dir:
        return tfds_copy.open_sources(c.data.prepared_dir, c.data.name, record_settings(c))
    return spec.build(c)


def prepare(c: ml_collections.ConfigDict, out: str, *, overwrite: bool = False, threads: int = 0,
            examples_per_shard: int = 10_000) -> str:
    """Prepares the raw sources ``c`` names as a copy under ``out`` (``tfds_copy.prepare``); returns its directory."""
    spec, d = get(c.data.name), c.data
    provenance = {k: d[k] for k in ("root", "image_root", "train_file", "eval_file", "captions")}
    return tfds_copy.prepare(out, d.name, record_settings(c), lambda: spec.build(c), provenance=provenance,
                             overwrite=overwrite, threads=threads, examples_per_shard=examples_per_shard)


def mix_source(c: ml_collections.ConfigDict) -> tuple[Source, float] | None:
    """``(source, weight)``: the training source mixed into ``data.name``'s (the mixed-in dataset's raw
    training source under the same config), a ``weight`` fraction of the training examples; None for none.
    Evaluation, the eval texts and the majority baselines stay with ``data.name``'s own sources."""
    spec = get(c.data.name)
    if spec.mix is None:
        return None
    name, weight = spec.mix
    w = weight(c)
    return (get(name).build(c)[0], w) if w else None


def vocabulary(c: ml_collections.ConfigDict, train_source: Source, eval_source: Source,
               mix_source: Source | None = None) -> list[str]:
    """The sorted words a closed-vocabulary tokenizer trained for these sources must cover (``c`` names them;
    the words come from the sources' ``texts()`` alone)."""
    del c
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.Whitespace()  # the word-level tokenizer's own splitting (tokenizer.py)
    words = set()
    for source in (train_source, eval_source, mix_source):
        for text in source.texts() if source is not None else ():
            words.update(word for word, _ in split.pre_tokenize_str(text))
    return sorted(words)


def describe(source: Source, index: int) -> dict:
    """What is written next to example ``index``'s prediction (and scored): its metadata."""
    return source.metadata(int(index))


def score(c: ml_collections.ConfigDict, rows: Sequence[dict], train_source: Source, eval_source: Source) -> dict:
    """The official metric of ``data.name`` over ``rows`` (``{"index", "prediction"}`` plus the example's
    :func:`describe`); a flat dict with ``accuracy*`` (or caption metric) keys and ``num_examples``."""
    return get(c.data.name).score(rows, train_source, eval_source)
