"""SemVLP batches from the on-disk readers: what ``semvlp_scenes.SceneBatches`` gives the trainer, from real data.

    rows = RecordRows(tokenizer, captions=flickr30k.Flickr30K(json, images, "train"),
                      questions=gqa.GQA.from_root(root, "train_balanced"), answers=answer_vocabulary(questions, 3129))
    batch = rows.batch(np.arange(8), seed=0)        # the keys of ``SceneBatches.collate`` (no visual_labels)
    pairs = PairRows(tokenizer, nlvr2.NLVR2.from_root(root, "train"))
    batch = pairs.batch(np.arange(8), seed=0)       # tokens, text_valid, label [B]; visual inputs [B, 2, ...]

What each reader becomes (LXMERT's pre-training tasks, as the built-in scenes feed them):

* **captions** (``flickr30k``/``coco_captions`` in train mode, ``visual_genome.VGRegions``; the example's
  ``answer`` is its caption or phrase): image-text matching and masked LM. With probability
  ``negative_rate`` the text is the caption of another image (``matched`` 0).
* **questions** (``vqa_v2``, ``gqa``, ``visual_genome``): the VQA head, ``answer`` = the index of the
  normalised answer in ``answers`` (:func:`answer_vocabulary`). A question whose answer is outside the
  vocabulary is kept as matched text (masked LM only: ``is_question`` 0), as LXMERT does.
* **NLVR2** (:class:`PairRows`): the statement with both images, ``label`` 1 when true.

Visual input: ``images [B, S, S, 3]`` in [0, 1] (the image resized to ``image_size``, for the ViT), or
with a ``region_features.RegionFeatures`` store, ``regions [B, M, D]``, ``boxes [B, M, 4]``,
``visual_valid [B, M]`` looked up by ``image_key(example)`` (default its ``image_id`` or ``cocoid``; it also tells two
captions' images apart for the negatives) (NLVR2: ``<pair>-img0`` / ``-img1``, LXMERT's
ids). An image whose features are bad under ``skip`` makes its row the next example's. Real data has no
class per visual token, so there is no ``visual_labels`` and the masked-visual classification loss is 0.

Row ``i`` is a pure function of ``(seed, i)`` (the example ``i mod len``, its kind, its negative), so a
resumed run rebuilds every batch exactly, as with the scenes.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import numpy as np
from transformers import PreTrainedTokenizerBase

from semrel_jax import errors
from semrel_jax.data import nlvr2, region_features
from semrel_jax.data.preprocess import ImagePreprocessor
from semrel_jax.data.source import Source
from semrel_jax.evaluation import vqa

_NEGATIVE_DRAWS = 8  # tries to find a caption of another image (train-mode captions repeat their image)


def rows_kind(name: str) -> str:
    """What registered dataset ``name``'s records become under model.semvlp.data=records (its spec's
    ``semvlp_rows``: captions, questions or pairs); "" when SemVLP does not read it."""
    from semrel_jax.data import registry

    return registry.get(name).semvlp_rows if name in registry.names() else ""


def readable() -> tuple[str, ...]:
    """The registered datasets SemVLP reads."""
    from semrel_jax.data import registry

    return tuple(n for n in registry.names() if registry.get(n).semvlp_rows)


_TEXT_FIELDS = ("question", "answer", "sentence")


def text_words(source: Source) -> list[str]:
    """Every lower-cased word (the word-level tokenizer's split) of ``source``'s questions, answers and
    statements, sorted; no image is read. The vocabulary of a from-scratch run without a pretrained BERT."""
    from tokenizers import pre_tokenizers

    split, words = pre_tokenizers.Whitespace(), set()
    for i in range(len(source)):
        example = source.metadata(i)
        for key in _TEXT_FIELDS:
            if isinstance(example.get(key), str):
                words.update(w for w, _ in split.pre_tokenize_str(example[key].lower()))
    return sorted(words)


def build_rows(kind: str, tokenizer: PreTrainedTokenizerBase, source: Source, *, answers: tuple[str, ...] = (),
               **kwargs):
    """``RecordRows`` over a caption or question ``source``, or ``PairRows`` over NLVR2 (``kind``: ``rows_kind``'s)."""
    if kind == "pairs":
        kwargs = {k: v for k, v in kwargs.items() if k not in ("question_rate", "negative_rate")}
        return PairRows(tokenizer, source, **kwargs)
    if kind == "questions":
        return RecordRows(tokenizer, questions=source, answers=answers, **kwargs)
    return RecordRows(tokenizer, captions=source, **kwargs)


def answer_vocabulary(questions: Source, size: int) -> tuple[str, ...]:
    """The ``size`` most frequent normalised answers of ``questions`` (ties by text; no image is read)."""
    counts = collections.Counter()
    for i in range(len(questions)):
        answer = questions.metadata(i).get("answer")
        if answer:
            counts[vqa.normalize(answer)] += 1
    return tuple(a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size])


def image_id_key(example: dict) -> str:
    """The example's image id: ``image_id`` (VQA v2, GQA, Visual Genome, Flickr30K) or ``cocoid`` (COCO captions)."""
    return str(example["image_id"] if "image_id" in example else example["cocoid"])


class _Visual:
    """An example's visual input: the resized image, or its region features from a store."""

    def __init__(self, image_size: int, patch_size: int, regions: region_features.RegionFeatures | None,
                 max_regions: int):
        self.resize = ImagePreprocessor(image_size, normalization="unit", resample="bilinear", crop=False)
        self.patches = (image_size // patch_size) ** 2
        self.regions, self.max_regions = regions, max_regions

    def __call__(self, image: np.ndarray, key: str) -> dict | None:
        if self.regions is None:
            return {"image": self.resize(image)}
        if key not in self.regions:
            raise errors.DataError(f"no region features for image {key!r} in {self.regions!r}: extract them, or "
                                   "leave the store out to read the images.")
        return self.regions.get(key)  # None: bad under skip

    def collate(self, items: list[dict]) -> dict[str, np.ndarray]:
        """``images [B, S, S, 3]`` + ``visual_valid [B, patches]``, or ``region_features.pad``'s arrays."""
        if self.regions is None:
            return {"images": np.stack([item["image"] for item in items]),
                    "visual_valid": np.ones((len(items), self.patches), bool)}
        return region_features.pad(items, self.max_regions)


class RecordRows:
    """Random-access SemVLP rows over caption and/or question readers (see the module docstring)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, captions: Source | None = None,
                 questions: Source | None = None, answers: tuple[str, ...] = (), image_size: int = 224,
                 patch_size: int = 16, max_text_len: int = 40, question_rate: float = 0.5, negative_rate: float = 0.5,
                 regions: region_features.RegionFeatures | None = None, max_regions: int = 36,
                 image_key: Callable[[dict], str] = image_id_key):
        if captions is None and questions is None:
            raise ValueError("RecordRows needs a caption source, a question source, or both.")
        if questions is not None and not answers:
            raise ValueError("a question source needs its answer vocabulary (answer_vocabulary(questions, size)).")
        self.tokenizer, self.captions, self.questions = tokenizer, captions, questions
        self.answer_index = {a: i for i, a in enumerate(answers)}
        self.max_text_len, self.question_rate, self.negative_rate = max_text_len, question_rate, negative_rate
        self.image_key = image_key
        self.visual = _Visual(image_size, patch_size, regions, max_regions)

    def _kind(self, rng: np.random.Generator) -> str:
        if self.captions is None or self.questions is None:
            return "caption" if self.questions is None else "question"
        return "question" if rng.random() < self.question_rate else "caption"

    def _other_caption(self, rng: np.random.Generator, example: dict) -> str:
        """The caption of an example whose image (``image_key``) differs from ``example``'s; no image is read."""
        source, n = self.captions, len(self.captions)
        for _ in range(_NEGATIVE_DRAWS):
            other = source.metadata(int(rng.integers(n)))
            if self.image_key(other) != self.image_key(example):
                return other["answer"]
        raise ValueError(f"{source!r}: no caption of another image in {_NEGATIVE_DRAWS} draws: too few images.")

    def _example(self, source: Source, index: int) -> tuple[dict, dict]:
        """``(example, visual input)`` of example ``index``; one whose region features are bad: the next one."""
        for step in range(len(source)):
            example = source[(index + step) % len(source)]
            visual = self.visual(example["image"], self.image_key(example))
            if visual is not None:
                return example, visual
        raise errors.DataError(f"{source!r}: no example has usable region features.")

    def row(self, seed: int, index: int, *, kind: str | None = None, matched: bool | None = None) -> dict:
        """Row ``index``: ``text``, ``matched``, ``is_question``, ``answer`` and the visual input; ``kind``
        ('caption' | 'question') and ``matched`` are drawn unless given (``SceneBatches.row``'s interface)."""
        rng = np.random.default_rng([seed, index, 3])
        kind = kind or self._kind(rng)
        example, visual = self._example(self.questions if kind == "question" else self.captions, index)
        if kind == "question":
            answer = self.answer_index.get(vqa.normalize(example["answer"] or ""), -1)
            return visual | {"text": example["question"], "matched": 1, "is_question": int(answer >= 0),
                             "answer": max(answer, 0)}
        matched = bool(rng.random() >= self.negative_rate) if matched is None else matched
        text = example["answer"] if matched else self._other_caption(rng, example)
        return visual | {"text": text, "matched": int(matched), "is_question": 0, "answer": 0}

    def retrieval(self, seed: int, num_images: int) -> tuple[list[dict], list[str], np.ndarray]:
        """Retrieval's gallery: ``(image_rows [N], texts [T], image_of [T])``: the first ``num_images`` distinct
        images of the caption source (by ``image_key``), every text of each (its examples' ``references``: all
        five captions of a Flickr30K/COCO image; else their ``answer``s), and the row of each text's image.

        An image that cannot be read (skipped under ``on_bad_data=skip``) is left out with its texts.
        """
        del seed  # the gallery is the source's order
        if self.captions is None:
            raise ValueError("retrieval needs a caption source.")
        rows, texts, image_of, row_of, unreadable, seen = [], [], [], {}, set(), set()
        for i in range(len(self.captions)):
            meta = self.captions.metadata(i)
            key = self.image_key(meta)
            if key in unreadable:
                continue
            if key not in row_of:
                if len(rows) == num_images:
                    break
                example, visual = self._example(self.captions, i)
                if self.image_key(example) != key:  # this image was skipped: the next example's was read
                    unreadable.add(key)
                    continue
                row_of[key] = len(rows)
                rows.append(visual | {"text": "", "matched": 1, "is_question": 0, "answer": 0})
            for text in meta.get("references") or [meta["answer"]]:
                if (key, text) not in seen:
                    seen.add((key, text))
                    texts.append(text)
                    image_of.append(row_of[key])
        return rows, texts, np.asarray(image_of, np.int64)

    def collate(self, rows: list[dict]) -> dict[str, np.ndarray]:
        """Rows -> ``tokens, text_valid [B, T]``, the visual input, ``matched, is_question, answer [B]``."""
        encoded = self.tokenizer([r["text"] for r in rows], padding="max_length", truncation=True,
                                 max_length=self.max_text_len)
        visual = self.visual.collate(rows)
        return visual | {
            "tokens": np.asarray(encoded["input_ids"], np.int32),
            "text_valid": np.asarray(encoded["attention_mask"], bool),
            **{k: np.asarray([r[k] for r in rows], np.int32) for k in ("matched", "is_question", "answer")},
        }

    def batch(self, indices, seed: int) -> dict[str, np.ndarray]:
        return self.collate([self.row(seed, int(i)) for i in indices])


class PairRows:
    """Random-access NLVR2 rows: a statement, both images, and whether it holds (see the module docstring)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, source: nlvr2.NLVR2, *, image_size: int = 224,
                 patch_size: int = 16, max_text_len: int = 40, regions: region_features.RegionFeatures | None = None,
                 max_regions: int = 36):
        self.source = source
        self.rows = RecordRows(tokenizer, captions=source, image_size=image_size, patch_size=patch_size,
                               max_text_len=max_text_len, regions=regions, max_regions=max_regions)

    def row(self, seed: int, index: int) -> dict:
        """Row ``index`` (``seed`` is unused: NLVR2 rows draw nothing; kept for the batches' common interface)."""
        del seed
        n = len(self.source)
        for step in range(n):
            example = self.source[(index + step) % n]
            images = nlvr2.split_pair(example)
            sides = [self.rows.visual(image, f"{example['pair']}-img{side}") for side, image in enumerate(images)]
            if all(side is not None for side in sides):
                return {"text": example["sentence"], "label": example["label"], "sides": sides}
        raise errors.DataError(f"{self.source!r}: no pair has usable region features.")

    def collate(self, rows: list[dict]) -> dict[str, np.ndarray]:
        """Rows -> ``tokens, text_valid [B, T]``, ``label [B]``, the visual input with a pair axis after the
        batch (``images [B, 2, S, S, 3]`` or ``regions [B, 2, M, D]``, ``boxes``, ``visual_valid [B, 2, ...]``)."""
        flat = self.rows.collate([side | {"text": r["text"], "matched": 1, "is_question": 0, "answer": 0}
                                  for r in rows for side in r["sides"]])
        pair = {k: v.reshape((len(rows), 2) + v.shape[1:]) for k, v in flat.items()
                if k in ("images", "regions", "boxes", "visual_valid")}
        return pair | {"tokens": flat["tokens"][::2], "text_valid": flat["text_valid"][::2],
                       "label": np.asarray([r["label"] for r in rows], np.int32)}

    def batch(self, indices, seed: int) -> dict[str, np.ndarray]:
        return self.collate([self.row(seed, int(i)) for i in indices])
