"""SemVLP pre-training and fine-tuning batches from the built-in Sort-of-CLEVR scenes (offline, procedural).

Each row pairs a scene's image with one text: its description (``sort_of_clevr_captions.describe``; with
probability ``negative_rate`` another scene's description, the image-text matching negative) or one of its
questions (with the answer's index in ``ANSWERS``). The visual tokens are one of two kinds (``visual``):

* ``"regions"``: one token per object, as a detector would give them (the paper's and LXMERT's input): the
  object's ``(2·object_size+1)²`` RGB crop flattened (``region_dim``) and its box ``[x0, y0, x1, y1]`` in
  [0, 1], in a per-row shuffled order (so a token's index says nothing about its colour);
* ``"patches"``: the image itself, for the ViT; its patches are the visual tokens.

The scenes know every object, so each visual token also gets a class label, ``1 + 2·colour + shape``: the
region's object, or the object covering most of a patch's pixels (0 for background) — the masked-visual
classification target.

    scenes = SceneBatches("train", tokenizer, image_size=75, patch_size=15, max_text_len=40)
    batch = scenes.batch(np.arange(8), seed=0)     # a dict of NumPy arrays, see ``batch``

Everything about row ``i`` of a split is a pure function of ``(seed, split, i)``, so any batch can be
rebuilt exactly after a restart.
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from semrel_jax.data import sort_of_clevr
from semrel_jax.data.sort_of_clevr_captions import describe

ANSWERS: tuple[str, ...] = tuple(sorted({a for answers in sort_of_clevr.answer_space().values() for a in answers}))
NUM_VISUAL_CLASSES = 1 + len(sort_of_clevr.COLORS) * len(sort_of_clevr.SHAPES)
VISUAL_KINDS = ("regions", "patches")
BERT_SPECIAL_TOKENS = {
    "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"
}


def word_tokenizer(extra_words: tuple[str, ...] | list[str] = (), *,
                   lowercase: bool = False) -> PreTrainedTokenizerFast:
    """A BERT-style word-level tokenizer over every word of the scenes' texts ([CLS] text [SEP]) and
    ``extra_words`` (e.g. ``semvlp_pairs.vocabulary()``, or a reader's words), for runs without a pretrained
    BERT (its WordPiece tokenizer covers these words too); ``lowercase``: texts are lower-cased first."""
    words = set(sort_of_clevr.vocabulary()) | set(describe_all_words()) | set(extra_words)
    vocab = {tok: i for i, tok in enumerate(BERT_SPECIAL_TOKENS.values())}
    for word in sorted(words):
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    if lowercase:
        backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="[SEP]", **BERT_SPECIAL_TOKENS)


def describe_all_words() -> list[str]:
    """Every word a description can use."""
    places = ["top", "bottom", "left", "right"]
    return list(sort_of_clevr.COLORS) + list(sort_of_clevr.SHAPES) + places


def patch_labels(scene: sort_of_clevr.Scene, patch_size: int) -> np.ndarray:
    """``[grid²]`` int: ``1 + 2·colour + shape`` of the object with most pixels in each patch, 0 if none."""
    image = sort_of_clevr.render(scene)
    size, grid = scene.image_size, scene.image_size // patch_size
    label_map = np.zeros((size, size), np.int64)
    for index, color in enumerate(sort_of_clevr.COLORS):
        shape = sort_of_clevr.SHAPES.index(scene.shapes[index])
        label_map[np.all(image == sort_of_clevr.COLOR_RGB[color], axis=-1)] = 1 + 2 * index + shape
    cells = label_map[: grid * patch_size, : grid * patch_size].reshape(grid, patch_size, grid, patch_size)
    cells = cells.transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    counts = np.stack([(cells == k).sum(-1) for k in range(NUM_VISUAL_CLASSES)], axis=-1)
    counts[:, 0] = np.where(counts[:, 1:].sum(-1) > 0, 0, counts[:, 0])  # any object pixel beats background
    return counts.argmax(-1)


def region_dim(object_size: int = sort_of_clevr.OBJECT_SIZE) -> int:
    """Width of one region token's features: the object's RGB crop, flattened."""
    return (2 * object_size + 1) ** 2 * 3


def object_regions(scene: sort_of_clevr.Scene, image: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, ...]:
    """The scene's objects as detector-style regions, in ``order`` (a permutation of the objects):
    ``features [6, region_dim]`` (crops of ``image [H, W, 3]`` in [0, 1]), ``boxes [6, 4]`` in [0, 1],
    ``labels [6]`` (``1 + 2·colour + shape``)."""
    s, size = scene.object_size, scene.image_size
    features, boxes, labels = [], [], []
    for index in order:
        x, y = scene.centers[index]
        features.append(image[y - s : y + s + 1, x - s : x + s + 1].reshape(-1))
        boxes.append(np.asarray([x - s, y - s, x + s + 1, y + s + 1], np.float32) / size)
        labels.append(1 + 2 * int(index) + sort_of_clevr.SHAPES.index(scene.shapes[index]))
    return np.stack(features), np.stack(boxes), np.asarray(labels, np.int64)


class SceneBatches:
    """Random-access SemVLP rows over one split of the procedural scenes."""

    def __init__(
        self,
        split: str,
        tokenizer: PreTrainedTokenizerBase,
        *,
        image_size: int = sort_of_clevr.IMAGE_SIZE,
        patch_size: int = 15,
        max_text_len: int = 40,
        question_rate: float = 0.5,
        negative_rate: float = 0.5,
        visual: str = "patches",
    ):
        if visual not in VISUAL_KINDS:
            raise ValueError(f"visual must be one of {VISUAL_KINDS}, got {visual!r}.")
        self.visual = visual
        self.split_id = sort_of_clevr.split_id(split)
        self.tokenizer = tokenizer
        self.image_size, self.patch_size, self.max_text_len = image_size, patch_size, max_text_len
        self.question_rate, self.negative_rate = question_rate, negative_rate

    def scene(self, seed: int, index: int) -> sort_of_clevr.Scene:
        return sort_of_clevr.generate_scene(np.random.default_rng([seed, self.split_id, index]), self.image_size)

    def row(self, seed: int, index: int, *, kind: str | None = None, matched: bool | None = None) -> dict:
        """One row's raw fields; ``kind`` ('caption' | 'question') and ``matched`` are drawn unless given."""
        rng = np.random.default_rng([seed, self.split_id, index, 1])
        scene = self.scene(seed, index)
        kind = kind or ("question" if rng.random() < self.question_rate else "caption")
        answer = 0
        if kind == "question":
            q = sort_of_clevr.make_question(
                scene, str(rng.choice(sort_of_clevr.NON_RELATIONAL_KINDS + sort_of_clevr.RELATIONAL_KINDS)),
                str(rng.choice(sort_of_clevr.COLORS)),
            )
            text, answer, matched = q.text, ANSWERS.index(q.answer), True
        else:
            matched = bool(rng.random() >= self.negative_rate) if matched is None else matched
            other = index if matched else int(rng.integers(1 << 30)) + 1_000_000_000
            text = describe(self.scene(seed, other))
        image = sort_of_clevr.render(scene).astype(np.float32) / 255.0
        row = {"text": text, "matched": int(matched), "is_question": int(kind == "question"), "answer": answer}
        if self.visual == "patches":
            return row | {"image": image, "visual_labels": patch_labels(scene, self.patch_size)}
        regions, boxes, labels = object_regions(scene, image, rng.permutation(sort_of_clevr.NUM_OBJECTS))
        return row | {"regions": regions, "boxes": boxes, "visual_labels": labels}

    def retrieval(self, seed: int, num_images: int) -> tuple[list[dict], list[str], np.ndarray]:
        """Retrieval's gallery: ``(image_rows [N], texts [N], image_of [N])``: scenes ``0..N-1`` and their
        descriptions, one per image (``RecordRows.retrieval``'s interface)."""
        rows = [self.row(seed, i, kind="caption", matched=True) for i in range(num_images)]
        return rows, [r["text"] for r in rows], np.arange(num_images)

    def collate(self, rows: list[dict]) -> dict[str, np.ndarray]:
        """Rows -> ``tokens, text_valid [B, T]``, ``images [B, H, W, 3]`` (patches) or ``regions [B, 6, region_dim]``
        + ``boxes [B, 6, 4]`` (regions), ``visual_valid, visual_labels [B, N]``, ``matched, is_question, answer [B]``."""
        encoded = self.tokenizer(
            [r["text"] for r in rows], padding="max_length", truncation=True, max_length=self.max_text_len
        )
        labels = np.stack([r["visual_labels"] for r in rows])
        if self.visual == "patches":
            visual = {"images": np.stack([r["image"] for r in rows])}
        else:
            visual = {"regions": np.stack([r["regions"] for r in rows]), "boxes": np.stack([r["boxes"] for r in rows])}
        return visual | {
            "tokens": np.asarray(encoded["input_ids"], np.int32),
            "text_valid": np.asarray(encoded["attention_mask"], bool),
            "visual_valid": np.ones(labels.shape, bool),
            "visual_labels": labels.astype(np.int32),
            "matched": np.asarray([r["matched"] for r in rows], np.int32),
            "is_question": np.asarray([r["is_question"] for r in rows], np.int32),
            "answer": np.asarray([r["answer"] for r in rows], np.int32),
        }

    def batch(self, indices, seed: int, **row_kwargs) -> dict[str, np.ndarray]:
        return self.collate([self.row(seed, int(i), **row_kwargs) for i in indices])
