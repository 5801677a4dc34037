"""SemVLP: one shared BERT encoder run in single-stream or two-stream mode, with a pluggable cross-attention.

    model = SemVLP(SemVLPConfig(text=bert_config, vision=vit_config, cross_layers=2), rngs=nnx.Rngs(0))
    out = model(inputs, mode="single")          # text and visual tokens concatenated, encoded jointly
    out = model(inputs, mode="two")             # each stream alone through the same layers, cross-attention on top

Every self-attention and FFN weight is the BERT's and serves both modes (the paper's claim). What the
paper leaves open, chosen here (our design, configurable):

* **Cross-attention** (two-stream only): in the top ``cross_layers`` (K) layers, between the shared
  self-attention and the shared FFN, each stream attends to the other stream's self-attention output
  through a post-LN attention block with its own weights. One block per layer serves both directions (as
  LXMERT's cross-modality layer does). ``cross=False`` switches it off for a step: the top layers then run
  plain, and the two streams never meet.
* **Visual tokens**: patch features of a ViT (``models/vit.py``, trained with the rest) or pre-extracted
  region features ``[N, region_dim]``; either way ``norm(proj(features) + box_proj(boxes) + type[1])``,
  boxes ``[x0, y0, x1, y1]`` in [0, 1] (for patches: the patch's cell in the grid). Masked visual tokens
  are zeroed at the input: masked patches are blacked out in the pixels before the ViT, so nothing of
  them leaks through its attention; masked regions get a zero feature vector.
* **Pooled output** (``pool``; ITM, VQA and the pair head read it): BERT's pooler (dense + tanh) over the
  mean of every valid text and visual token (``'mean'``, the default), or over the text's first token
  (``'cls'``, BERT's and LXMERT's choice). Measured: from scratch the [CLS] state barely varies across rows
  (at init its per-row std is 0.0013 against 0.35 for the next token: its attention averages the whole sequence),
  so the heads reading it get almost no row-dependent input: the pair head cannot fit 8 rows in 30 steps
  over it, and does over the mean (``tests/test_semvlp_tasks.py``).
* **ITM head**: a linear layer over ``[pooled; alignment]``, ``alignment`` = mean(text) * mean(visual) feature
  by feature. Random negatives leave the text's and the image's own distributions unchanged, so only their
  interaction tells a match; at init the pooled vector is near-additive in the two and ITM sat at chance,
  while the product carries the match from the first step (``docs/semvlp.md``, ``experiments/LOG.md``).
* **Pairs** (NLVR2-style, ``encode_pair``): the statement with each image encoded separately by the same
  encoder, the two pooled vectors concatenated and classified by an MLP (LXMERT's and UNITER's head).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from semrel_jax.models.bert import Bert, BertAttention, BertConfig, key_mask
from semrel_jax.models.vit import ViT, ViTConfig

Array = jax.Array
MODES = ("single", "two")
POOLS = ("mean", "cls")
VISUAL_FIELDS = ("images", "regions", "boxes", "visual_valid")  # the inputs with a visual-token/pixel axis


@dataclasses.dataclass(frozen=True)
class SemVLPConfig:
    text: BertConfig
    vision: ViTConfig | None = None  # patch features from this tower; None: region features from disk
    region_dim: int = 2048  # the width of region features (vision=None)
    cross_layers: int = 2  # K: cross-attention in the top K layers (two-stream mode), 0 < K <= n_layers
    num_answers: int = 1  # the VQA classifier's answer vocabulary
    num_visual_classes: int = 1  # classes of masked visual tokens (0 = background), where labels exist
    pool: str = "mean"  # the pooled output: 'mean' of the valid text + visual tokens | 'cls' (the text's first token)

    def __post_init__(self):
        if not 0 < self.cross_layers <= self.text.n_layers:
            raise ValueError(f"cross_layers={self.cross_layers} must be in 1..{self.text.n_layers} (the BERT's layers).")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}.")

    @property
    def visual_dim(self) -> int:
        """Width of one visual token's input features."""
        return self.vision.width if self.vision is not None else self.region_dim

    @property
    def target_dim(self) -> int:
        """Width of the masked-visual regression target: a pixel patch (C·p·p) or a region feature."""
        if self.vision is None:
            return self.region_dim
        return self.vision.channels * self.vision.patch_size**2


def patch_boxes(grid: int) -> np.ndarray:
    """``[grid², 4]`` boxes ``[x0, y0, x1, y1]`` in [0, 1] of the patches, row-major."""
    y, x = np.divmod(np.arange(grid * grid), grid)
    return np.stack([x, y, x + 1, y + 1], axis=-1).astype(np.float32) / grid


def _masked_mean(x: Array, valid: Array) -> Array:
    """``[B, L, D]``, ``[B, L]`` -> ``[B, D]``: the mean over the valid positions (0 when none)."""
    weight = valid.astype(x.dtype)[..., None]
    return jnp.sum(x * weight, axis=1) / jnp.maximum(jnp.sum(weight, axis=1), 1.0)


def alignment(text: Array, text_valid: Array, visual: Array, visual_valid: Array) -> Array:
    """``[B, D]``: the mean text state times the mean visual state, feature by feature."""
    return _masked_mean(text, text_valid) * _masked_mean(visual, visual_valid)


class Heads(nnx.Module):
    """The pre-training and downstream heads over the encoder's outputs."""

    def __init__(self, c: SemVLPConfig, word_embeddings: nnx.Embed, *, rngs: nnx.Rngs):
        d, dt, pd = c.text.dim, jnp.dtype(c.text.dtype), jnp.dtype(c.text.param_dtype)

        def linear(n_in, n_out):
            return nnx.Linear(n_in, n_out, dtype=dt, param_dtype=pd, rngs=rngs)

        def norm(n):
            return nnx.LayerNorm(n, epsilon=c.text.norm_eps, dtype=dt, param_dtype=pd, rngs=rngs)

        # MLM as BERT's prediction head: transform, then the word embeddings transposed plus a bias
        self.mlm_transform = linear(d, d)
        self.mlm_norm = norm(d)
        self.mlm_bias = nnx.Param(jnp.zeros((c.text.vocab_size,), pd))
        self.word_embeddings = word_embeddings  # shared with the BERT (tied), not a copy
        self.visual_regression = linear(d, c.target_dim)
        self.visual_classifier = linear(d, c.num_visual_classes)
        # ITM over [pooled; mean(text) * mean(visual)] (see itm_logits)
        self.itm = linear(2 * d, 2)
        # VQA as LXMERT's answer head: d -> 2d -> GELU -> LN -> answers
        self.vqa_hidden = linear(d, 2 * d)
        self.vqa_norm = norm(2 * d)
        self.vqa_out = linear(2 * d, c.num_answers)
        # NLVR2-style pairs, as UNITER's head: [pooled_left; pooled_right] 2d -> 2d -> GELU -> LN -> true/false
        self.pair_hidden = linear(2 * d, 2 * d)
        self.pair_norm = norm(2 * d)
        self.pair_out = linear(2 * d, 2)

    def mlm_logits(self, text: Array) -> Array:
        """``[B, T, D]`` -> ``[B, T, vocab]``."""
        h = self.mlm_norm(jax.nn.gelu(self.mlm_transform(text), approximate=False))
        return self.word_embeddings.attend(h) + self.mlm_bias[...].astype(h.dtype)

    def itm_logits(self, pooled: Array, alignment: Array) -> Array:
        """``pooled, alignment [B, D]`` -> ``[B, 2]`` (mismatched, matched)."""
        return self.itm(jnp.concatenate([pooled, alignment], axis=-1))

    def vqa_logits(self, pooled: Array) -> Array:
        """``[B, D]`` -> ``[B, num_answers]``."""
        return self.vqa_out(self.vqa_norm(jax.nn.gelu(self.vqa_hidden(pooled), approximate=False)))

    def pair_logits(self, pooled_pair: Array) -> Array:
        """``[B, 2D]`` -> ``[B, 2]`` (false, true)."""
        return self.pair_out(self.pair_norm(jax.nn.gelu(self.pair_hidden(pooled_pair), approximate=False)))


class SemVLP(nnx.Module):
    def __init__(self, config: SemVLPConfig, *, rngs: nnx.Rngs):
        self.config = config
        t = config.text
        dt, pd = jnp.dtype(t.dtype), jnp.dtype(t.param_dtype)
        self.bert = Bert(t, rngs=rngs)
        self.vision = ViT(config.vision, rngs=rngs) if config.vision is not None else None
        self.visual_projection = nnx.Linear(config.visual_dim, t.dim, dtype=dt, param_dtype=pd, rngs=rngs)
        self.box_projection = nnx.Linear(4, t.dim, dtype=dt, param_dtype=pd, rngs=rngs)
        self.visual_norm = nnx.LayerNorm(t.dim, epsilon=t.norm_eps, dtype=dt, param_dtype=pd, rngs=rngs)
        self.cross_attention = nnx.List([BertAttention(t, rngs=rngs) for _ in range(config.cross_layers)])
        self.heads = Heads(config, self.bert.embeddings.word_embeddings, rngs=rngs)

    def load_text_encoder(self, bert: Bert) -> None:
        """Starts the shared encoder from a pretrained BERT (e.g. ``convert.hf.load_bert(hf_dir)``), in place.

        The MLM head's decoder is tied to the word embeddings, so it starts pretrained too; the visual
        projections, cross-attention and the other heads keep their initialisation.
        """
        if bert.config.vocab_size != self.config.text.vocab_size or bert.config.dim != self.config.text.dim:
            raise ValueError(
                f"pretrained BERT (vocab {bert.config.vocab_size}, dim {bert.config.dim}) does not fit this model's "
                f"text config (vocab {self.config.text.vocab_size}, dim {self.config.text.dim}): build the config from it."
            )
        nnx.update(self.bert, nnx.state(bert, nnx.Param))

    # ------------------------------------------------------------------------------------ visual side

    def visual_inputs(self, inputs: dict, visual_mask: Array) -> tuple[Array, Array]:
        """``(features [B, N, visual_dim], boxes [B, N, 4])`` with the masked tokens zeroed at the input.

        inputs: ``images [B, H, W, C]`` (patch path) or ``regions [B, N, region_dim]`` + ``boxes [B, N, 4]``;
        visual_mask: ``[B, N]`` True where a visual token is masked.
        """
        if self.vision is None:
            return jnp.where(visual_mask[..., None], 0.0, inputs["regions"]), inputs["boxes"]
        vc = self.config.vision
        grid = vc.image_size // vc.patch_size
        # black out masked patches in the pixels (the ViT then never sees them)
        pixel_mask = visual_mask.reshape(-1, grid, 1, grid, 1, 1)
        images = inputs["images"].reshape(-1, grid, vc.patch_size, grid, vc.patch_size, vc.channels)
        images = jnp.where(pixel_mask, 0.0, images).reshape(inputs["images"].shape)
        features = self.vision(images, (vc.depth,))[0]
        features = features[:, 1:] if vc.class_token else features
        boxes = jnp.broadcast_to(jnp.asarray(patch_boxes(grid)), features.shape[:2] + (4,))
        return features, boxes

    def visual_targets(self, inputs: dict) -> Array:
        """The regression target of every visual token: ``[B, N, target_dim]`` (pixel patches or region features)."""
        if self.vision is None:
            return inputs["regions"]
        return self.vision.patchify(inputs["images"])

    def embed_visual(self, inputs: dict, visual_mask: Array) -> Array:
        """``[B, N, D]`` visual token embeddings (token type 1)."""
        features, boxes = self.visual_inputs(inputs, visual_mask)
        x = self.visual_projection(features) + self.box_projection(boxes.astype(features.dtype))
        kind = self.bert.embeddings.token_type_embeddings(jnp.ones(x.shape[:2], jnp.int32))
        return self.visual_norm(x + kind)

    # ------------------------------------------------------------------------------------ the two modes

    def encode_single(self, text: Array, text_valid: Array, visual: Array, visual_valid: Array) -> tuple[Array, Array]:
        """One sequence ``[text; visual]`` through every shared layer."""
        x = jnp.concatenate([text, visual], axis=1)
        mask = key_mask(jnp.concatenate([text_valid, visual_valid], axis=1))
        for i in range(self.config.text.n_layers):
            x = self.bert.run_layer(i, x, mask)
        return x[:, : text.shape[1]], x[:, text.shape[1] :]

    def encode_two(
        self, text: Array, text_valid: Array, visual: Array, visual_valid: Array, cross: bool
    ) -> tuple[Array, Array]:
        """Each stream through the same shared layers; in the top K, cross-attention between them (if ``cross``)."""
        n_layers, k = self.config.text.n_layers, self.config.cross_layers
        text_mask, visual_mask = key_mask(text_valid), key_mask(visual_valid)
        for i in range(n_layers):
            if not cross or i < n_layers - k:
                text, visual = self.bert.run_layer(i, text, text_mask), self.bert.run_layer(i, visual, visual_mask)
                continue
            layer, block = self.bert.layers[i], self.cross_attention[i - (n_layers - k)]
            text_self, visual_self = layer.attention(text, text_mask), layer.attention(visual, visual_mask)
            text = layer.feed_forward(block(text_self, visual_mask, context=visual_self))
            visual = layer.feed_forward(block(visual_self, text_mask, context=text_self))
        return text, visual

    def __call__(self, inputs: dict, mode: str, *, cross: bool = True, visual_mask: Array | None = None) -> dict:
        """Encodes a batch in ``mode`` ('single' | 'two').

        inputs: ``tokens, text_valid [B, T]`` (token 0 is [CLS]), ``visual_valid [B, N]`` and the visual input
        (``images`` or ``regions`` + ``boxes``, see ``visual_inputs``); visual_mask: ``[B, N]`` (default none).
        Returns ``text [B, T, D]``, ``visual [B, N, D]``, ``pooled [B, D]``, ``alignment [B, D]`` (ITM's second input).
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        visual_valid = inputs["visual_valid"]
        visual_mask = jnp.zeros_like(visual_valid) if visual_mask is None else visual_mask
        text = self.bert.embed_text(inputs["tokens"])
        visual = self.embed_visual(inputs, visual_mask)
        if mode == "single":
            text, visual = self.encode_single(text, inputs["text_valid"], visual, visual_valid)
        else:
            text, visual = self.encode_two(text, inputs["text_valid"], visual, visual_valid, cross)
        return {"text": text, "visual": visual, "pooled": self.pool(text, inputs["text_valid"], visual, visual_valid),
                "alignment": alignment(text, inputs["text_valid"], visual, visual_valid)}

    def pool(self, text: Array, text_valid: Array, visual: Array, visual_valid: Array) -> Array:
        """``[B, D]``: BERT's pooler (dense + tanh) over [CLS] or over the mean of the valid tokens (``config.pool``)."""
        if self.config.pool == "cls":
            return self.bert.pool(text)
        x = jnp.concatenate([text, visual], axis=1)
        weight = jnp.concatenate([text_valid, visual_valid], axis=1).astype(x.dtype)[..., None]
        mean = jnp.sum(x * weight, axis=1) / jnp.maximum(jnp.sum(weight, axis=1), 1.0)
        return jnp.tanh(self.bert.pooler(mean))

    def encode_pair(self, inputs: dict, mode: str, *, cross: bool = True) -> Array:
        """One statement about two images -> ``[B, 2D]``: the pooled output of (statement, left image) and of
        (statement, right image), concatenated.

        inputs: ``tokens, text_valid [B, T]`` and the visual fields with a pair axis, ``[B, 2, ...]``
        (``images [B, 2, H, W, C]`` or ``regions [B, 2, N, F]`` + ``boxes [B, 2, N, 4]``; ``visual_valid [B, 2, N]``).
        """
        b = inputs["tokens"].shape[0]
        # row 2i is (statement i, left image i), row 2i + 1 (statement i, right image i)
        flat = {k: v.reshape((2 * b,) + v.shape[2:]) if k in VISUAL_FIELDS else jnp.repeat(v, 2, axis=0)
                for k, v in inputs.items() if k in VISUAL_FIELDS + ("tokens", "text_valid")}
        return self(flat, mode, cross=cross)["pooled"].reshape(b, -1)
