"""grain input pipelines: example -> model features, shuffled/sharded/batched datasets.

Training data is a ``grain.MapDataset`` that is indexable by step: batch ``s`` of the infinite,
per-epoch reshuffled stream is ``dataset[s]``. Resuming at step ``s`` is ``dataset[s:]`` — exact and
O(1), with no iterator state to save. Each host reads only its shard (``source[i::n]``).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import grain
import jax
import numpy as np

from semrel_jax.data import curriculum as curriculum_lib
from semrel_jax.data import prompts
from semrel_jax.data.object_cache import ObjectTokenCache
from semrel_jax.data.preprocess import ImagePreprocessor
from semrel_jax.data.source import Source


class SpecialIds(NamedTuple):
    bos: int | None
    eos: int
    pad: int
    unk: int | None


@dataclasses.dataclass
class VQAFeaturizer:
    """Turns a raw VQA example (``image`` uint8, ``question``, ``answer``) into arrays.

    Training features (right-padded to ``max_len``): ``tokens``, ``targets`` (next token),
    ``loss_mask`` (1 on targets that belong to the answer or its EOS), ``valid``.
    Generation features: ``prompt`` / ``prompt_valid`` LEFT-padded to ``max_len`` so every row's
    next token is at the same slot; a non-empty ``answer_prefix`` follows the prompt, tokenized as the
    start of a training answer (``answer_prefix_ids``). Images: ``images[encoder]`` float32, per-encoder
    preprocessed; with ``object_tokens`` (training features: always), an encoder in ``object_caches`` gets its
    ``ObjectTokens`` instead (``data/object_cache.py``).
    """

    tokenizer: Any
    preprocessors: Mapping[str, ImagePreprocessor]
    max_len: int
    prompt_format: str = "qa"
    answer_prefix: str = ""
    object_caches: Mapping[str, ObjectTokenCache] = dataclasses.field(default_factory=dict)

    def _images(self, example, object_tokens: bool = False) -> dict[str, Any]:
        image = example.get("image")  # None: text-only example, a blank image the model masks out (has_image=0)
        images = {}
        for name, prep in self.preprocessors.items():
            if object_tokens and name in self.object_caches:
                images[name] = self.object_caches[name](image)
            else:
                images[name] = np.zeros((prep.size, prep.size, 3), np.float32) if image is None else prep(image)
        has_image = 0 if image is None else int(example.get("has_image", 1))
        return {
            "images": images,
            "has_image": np.int32(has_image),
            "index": np.int64(example.get("index", -1)),
        }

    # Token ids of recent texts: templated data repeats few texts (Sort-of-CLEVR has 36 questions), and the
    # tokenizer call is most of the featurisation time. Bounded, so unique texts (real data) cost nothing.
    _CACHE_SIZE = 4096
    _ids_cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)
    # The longest row featurized in this process (grain workers keep their own): the run logs it against
    # max_text_len, whose padding every step computes. Updated under a lock: the prefetch threads share it.
    longest: int = dataclasses.field(default=0, init=False, compare=False)
    _longest_lock: Any = dataclasses.field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        # grain workers start empty (small pickles); a lock does not pickle
        return {**self.__dict__, "_ids_cache": {}, "_longest_lock": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _longest_lock=threading.Lock())

    @functools.cached_property
    def special_ids(self) -> SpecialIds:
        """The tokenizer's special token ids, read once: transformers looks each one up anew (~45 us an example)."""
        t = self.tokenizer
        return SpecialIds(bos=t.bos_token_id, eos=t.eos_token_id, pad=t.pad_token_id, unk=t.unk_token_id)

    def _encode(self, text: str, example) -> tuple[int, ...]:
        ids = self._ids_cache.get(text)
        if ids is None:
            ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(self._ids_cache) < self._CACHE_SIZE:
                self._ids_cache[text] = ids
        unk = self.special_ids.unk
        if unk is not None and unk in ids:
            # An unknown token silently erases part of the question or answer: refuse it.
            raise ValueError(
                f"Example {example.get('index', '?')}: the tokenizer maps part of {text!r} to "
                f"{self.tokenizer.unk_token!r}; use a tokenizer that covers this data."
            )
        return ids

    def _prompt_ids(self, example) -> list[int]:
        text = prompts.vqa_prompt(example["question"], self.prompt_format, self.tokenizer)
        bos = self.special_ids.bos
        # chat templates write their own BOS; tokenizers without one (Qwen) start directly
        prefix = [bos] if bos is not None and self.prompt_format != "chat" else []
        return prefix + list(self._encode(text, example))

    def _check_length(self, n: int, example) -> None:
        if n > self.longest:
            with self._longest_lock:
                self.longest = max(self.longest, n)
        if n > self.max_len:
            raise ValueError(
                f"Example {example.get('index', '?')} needs {n} tokens but data.max_text_len={self.max_len}: "
                "raise max_text_len (no silent truncation of prompts or answers)."
            )

    def train(self, example) -> dict[str, Any]:
        return {**self._images(example, object_tokens=True), **self._train_text(example)}

    def train_group(self, examples: list) -> dict[str, Any]:
        """Examples that share one image -> its image features once, text features stacked ``[G, T]``."""
        first = examples[0]
        for example in examples[1:]:
            same = (
                example["image_index"] == first["image_index"]
                if "image_index" in first and "image_index" in example
                else np.array_equal(example.get("image"), first.get("image"))
            )
            if not same:
                raise ValueError(
                    f"Examples {first.get('index', '?')} and {example.get('index', '?')} are grouped but do not share an image."
                )
        texts = [self._train_text(example) for example in examples]
        stacked = {key: np.stack([t[key] for t in texts]) for key in texts[0]}
        return {**self._images(first, object_tokens=True), **stacked}

    def _train_text(self, example) -> dict[str, Any]:
        prompt = self._prompt_ids(example)
        answer = list(self._encode(prompts.answer_text(example["answer"], self.prompt_format), example))
        ids = prompt + answer + [self.special_ids.eos]
        n = len(ids) - 1
        self._check_length(n, example)
        pad = self.max_len - n
        tokens = np.asarray(ids[:-1] + [self.special_ids.pad] * pad, np.int32)
        targets = np.asarray(ids[1:] + [self.special_ids.pad] * pad, np.int32)
        loss_mask = np.zeros(self.max_len, np.float32)
        loss_mask[len(prompt) - 1 : n] = 1.0  # positions whose NEXT token is an answer token or EOS
        valid = np.arange(self.max_len) < n
        return {"tokens": tokens, "targets": targets, "loss_mask": loss_mask, "valid": valid}

    def pixels(self, example) -> dict[str, Any]:
        """The example's image preprocessed for each encoder (never object tokens)."""
        return self._images(example)["images"]

    def answer_prefix_ids(self) -> list[int]:
        """``answer_prefix`` as the first tokens of an answer (the same text the training answers start with)."""
        if not self.answer_prefix:
            return []
        return list(self._encode(prompts.answer_text(self.answer_prefix, self.prompt_format), {"index": "answer_prefix"}))

    def prompt(self, example, object_tokens: bool = False) -> dict[str, Any]:
        ids = self._prompt_ids(example) + self.answer_prefix_ids()
        self._check_length(len(ids), example)
        pad = self.max_len - len(ids)
        return {
            **self._images(example, object_tokens),
            "prompt": np.asarray([self.special_ids.pad] * pad + ids, np.int32),
            "prompt_valid": np.arange(self.max_len) >= pad,
        }


@dataclasses.dataclass(frozen=True)
class ImageGroups:
    """Random access to groups of examples that share one image: item ``i`` is the list of examples
    ``groups[i]`` (``[num_groups, G]`` indices from ``source.image_groups(G)``)."""

    source: Any
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> list:
        return [self.source[int(i)] for i in self.groups[int(index)]]


def image_groups(source: Source, examples_per_image: int) -> ImageGroups:
    """``source``'s examples in groups of ``examples_per_image`` sharing one image (``Source.image_groups``)."""
    groups = source.image_groups(examples_per_image)
    if groups is None:
        raise ValueError(
            f"data.examples_per_image={examples_per_image} needs a source whose examples share images; "
            f"{type(source).__name__} does not group its examples by image (use 1)."
        )
    return ImageGroups(source, np.asarray(groups))


def training_dataset(
    source: Source,
    featurize,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    examples_per_image: int = 1,
    featurize_group=None,
    mix: tuple[Source, float] | None = None,
    curriculum: tuple[str, ...] = (),
    stage_steps: tuple[int, ...] | None = None,
) -> grain.MapDataset:
    """Infinite stream of per-host batches, reshuffled every epoch; ``ds[step]`` is step's batch.

    ``examples_per_image = G > 1``: a batch holds ``batch_size / G`` images, each with G of its examples
    (``featurize_group``), so the vision tower runs once per image: images ``[B/G, ...]``, text ``[B/G, G, T]``.
    Groups, not examples, are shuffled and sharded over hosts.

    ``mix = (other_source, weight)``: a ``weight`` fraction of the examples comes from ``other_source``
    (each stream shuffled and repeated on its own, then interleaved by weight: still indexable by step).

    ``curriculum``: stages ``kinds:examples:steps`` that come first, each from a small subset of some question
    kinds (``data/curriculum.py``); stage i's stream is seeded ``seed + 2 + i``. ``stage_steps``: how many steps
    each stage lasts (``curriculum.Progress.lengths``: fewer than its ``steps`` where its loss ended it).
    """
    if batch_size % (process_count * examples_per_image):
        raise ValueError(
            f"Global batch {batch_size} is not divisible by {process_count} processes x "
            f"data.examples_per_image={examples_per_image}."
        )
    if examples_per_image > 1:
        if mix is not None:
            raise ValueError("data.examples_per_image > 1 cannot be combined with a data mixture.")
        source, featurize = image_groups(source, examples_per_image), featurize_group
    per_host = batch_size // process_count // examples_per_image

    def stream(src, stream_seed):
        ds = grain.MapDataset.source(src)[process_index::process_count]
        if len(ds) < per_host:
            raise ValueError(f"Training split has {len(ds)} items per host, fewer than one batch ({per_host}).")
        return ds.shuffle(seed=stream_seed).repeat(None)

    ds = stream(source, seed)
    if mix is not None:
        other, weight = mix
        if not 0.0 < weight < 1.0:
            raise ValueError(f"The mixture weight must be in (0, 1), got {weight}.")
        ds = grain.MapDataset.mix([ds, stream(other, seed + 1)], [1.0 - weight, weight])
    batches = ds.map(featurize).batch(per_host, drop_remainder=True)
    if not curriculum:
        return batches
    if examples_per_image > 1 or mix is not None:
        raise ValueError("data.curriculum draws single examples from one source: it cannot be combined with "
                         "data.examples_per_image > 1 or a data mixture (data.caption_mix).")
    parsed = [curriculum_lib.parse(spec) for spec in curriculum]
    stages = []
    for i, (stage, steps) in enumerate(zip(parsed, stage_steps or [stage.steps for stage in parsed], strict=True)):
        subset = stream(curriculum_lib.Subset(source, stage), seed + 2 + i)
        stages.append((subset.map(featurize).batch(per_host, drop_remainder=True), steps))
    return curriculum_lib.staged(stages, batches)


def iterate(dataset: grain.MapDataset, start_step: int, num_workers: int = 0, prefetch: int = 2) -> Iterator:
    """Iterates batches from ``start_step`` on, with optional worker processes."""
    it = dataset[start_step:].to_iter_dataset(grain.ReadOptions(num_threads=max(prefetch, 1), prefetch_buffer_size=prefetch))
    if num_workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it)


def evaluation_batches(source: Source, featurize, batch_size: int, num_examples: int | None = None) -> Iterator[dict]:
    """Batches over the first ``num_examples`` of ``source`` in order; the last one is padded.

    Padded rows repeat the last example and carry ``example_valid=False`` so metrics skip them,
    and every batch has one shape (one compilation).
    """
    n = len(source) if not num_examples else min(num_examples, len(source))
    ds = grain.MapDataset.source(source)[:n].map(featurize)
    for start in range(0, n, batch_size):
        rows = [ds[i] for i in range(start, min(start + batch_size, n))]
        valid = [True] * len(rows) + [False] * (batch_size - len(rows))
        rows += [rows[-1]] * (batch_size - len(rows))
        batch = stack(rows)
        batch["example_valid"] = np.asarray(valid)
        yield batch


def stack(rows: list[dict]) -> dict:
    """Featurized rows (nested dicts of arrays, ``ObjectTokens``) -> one batch: every array stacked on a new leading
    axis."""
    return jax.tree.map(lambda *arrays: np.stack(arrays), *rows)


