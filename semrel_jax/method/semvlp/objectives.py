"""SemVLP's objectives: masked language modelling, masked visual prediction (regression and, where labels
exist, classification), image-text matching, and question answering over an answer vocabulary.

    masks = draw_masks(key, batch, ...)            # which text / visual tokens are masked (in the step, keyed)
    out = model(batch_with_masked_tokens, mode, visual_mask=masks.visual)
    losses = compute_losses(model, batch, out, masks)   # {"mlm": ..., "visual_regression": ..., ...}
    total = sum(weights[k] * losses[k])

The batch (``data/semvlp_scenes.py``) holds, per row: ``tokens``, ``text_valid [B, T]``; the visual input;
``visual_valid [B, N]``; ``matched [B]`` (1: the text describes this image; 0: a sampled negative);
``is_question [B]`` with ``answer [B]``; optionally ``visual_labels [B, N]`` (class of each visual
token, 0 = background). The NLVR2-style fine-tuning task has its own loss (``pair_losses``, no masking).
Masked LM and masked visual losses count only on matched rows (a mismatched
caption says nothing about the image), ITM on caption rows, VQA on question rows (LXMERT's choices).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
LOSSES = ("mlm", "visual_regression", "visual_classification", "itm", "vqa")


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    text_rate: float = 0.15  # BERT: 15% of tokens, of which 80% [MASK], 10% random, 10% kept
    visual_rate: float = 0.15
    mask_token: int = 103  # the tokenizer's [MASK] id
    vocab_size: int = 30522
    special_tokens: tuple[int, ...] = ()  # ids never masked ([CLS], [SEP], [PAD])


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Masks:
    text: Array  # [B, T] bool: the MLM targets
    tokens: Array  # [B, T] int: the input tokens after masking
    visual: Array  # [B, N] bool


def draw_masks(key: Array, batch: dict, c: MaskingConfig) -> Masks:
    """Draws the MLM and masked-visual masks for ``batch`` (BERT's 80/10/10 replacement for text)."""
    k_text, k_kind, k_random, k_visual = jax.random.split(key, 4)
    tokens = batch["tokens"]
    maskable = batch["text_valid"] & ~jnp.isin(tokens, jnp.asarray(c.special_tokens, tokens.dtype))
    text = maskable & jax.random.bernoulli(k_text, c.text_rate, tokens.shape)
    kind = jax.random.uniform(k_kind, tokens.shape)
    random_tokens = jax.random.randint(k_random, tokens.shape, 0, c.vocab_size, tokens.dtype)
    replaced = jnp.where(kind < 0.8, c.mask_token, jnp.where(kind < 0.9, random_tokens, tokens))
    visual = batch["visual_valid"] & jax.random.bernoulli(k_visual, c.visual_rate, batch["visual_valid"].shape)
    return Masks(text=text, tokens=jnp.where(text, replaced, tokens), visual=visual)


def _mean(values: Array, weights: Array) -> Array:
    """Weighted mean; 0 when nothing is weighted (a batch without questions has no VQA loss)."""
    weights = weights.astype(jnp.float32)
    return jnp.sum(values.astype(jnp.float32) * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def compute_losses(model, batch: dict, out: dict, masks: Masks) -> dict[str, Array]:
    """Every objective's loss (a scalar each), from the encoder outputs ``out`` of the masked batch."""
    heads = model.heads
    matched = batch["matched"].astype(bool)
    losses = {}
    mlm_logits = heads.mlm_logits(out["text"])
    mlm = optax.softmax_cross_entropy_with_integer_labels(mlm_logits.astype(jnp.float32), batch["tokens"])
    losses["mlm"] = _mean(mlm, masks.text & matched[:, None])

    visual_weight = masks.visual & matched[:, None]
    targets = jax.lax.stop_gradient(model.visual_targets(batch)).astype(jnp.float32)
    predicted = heads.visual_regression(out["visual"]).astype(jnp.float32)
    losses["visual_regression"] = _mean(jnp.mean(jnp.square(predicted - targets), axis=-1), visual_weight)
    if "visual_labels" in batch:
        logits = heads.visual_classifier(out["visual"]).astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["visual_labels"])
        losses["visual_classification"] = _mean(ce, visual_weight)
    else:
        losses["visual_classification"] = jnp.zeros((), jnp.float32)

    is_question = batch["is_question"].astype(bool)
    itm_logits = heads.itm_logits(out["pooled"], out["alignment"]).astype(jnp.float32)
    itm = optax.softmax_cross_entropy_with_integer_labels(itm_logits, batch["matched"].astype(jnp.int32))
    losses["itm"] = _mean(itm, ~is_question)
    vqa_logits = heads.vqa_logits(out["pooled"]).astype(jnp.float32)
    vqa = optax.softmax_cross_entropy_with_integer_labels(vqa_logits, batch["answer"])
    losses["vqa"] = _mean(vqa, is_question & matched)
    return losses


def pair_losses(model, batch: dict, mode: str, cross: bool) -> dict[str, Array]:
    """The NLVR2-style task's loss: cross-entropy of true/false (``batch["label"] [B]``) over ``encode_pair``."""
    logits = model.heads.pair_logits(model.encode_pair(batch, mode, cross=cross)).astype(jnp.float32)
    return {"nlvr2": jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]))}


def total_loss(losses: dict[str, Array], weights: dict[str, float]) -> Array:
    """``sum(weights[k] * losses[k])`` over the objectives with a non-zero weight."""
    return sum(weights[k] * losses[k] for k in LOSSES if weights.get(k, 0.0))
