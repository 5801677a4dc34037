"""The vision-language model: encoder ensemble + decoder LLM, with two ways to inject vision.

``injection='ica'`` (LSRM, MemVP): the fused visual tokens become ``N_mem`` memory slots
``X_v [B, N_mem, d]`` read by the inheritable cross-attention in every block; the text sequence stays
text-only. ``K = X_v + P_k`` and ``V = X_v + P_v`` use slot embeddings shared by all blocks
(``P_k ~ N(0, 0.02²)``, ``P_v = 0``), which is what reproduces the release's parameter counts.

``injection='prefix'`` (LLaVA): the fused visual tokens are prepended to the text embeddings and no
ICA runs. Both are presets of this one module.

Several text rows may share one image (``data.examples_per_image``: all questions of an image in one
batch, the vision tower run once): with ``B_img`` images and ``B = G · B_img`` text rows, row ``r`` reads
image ``r // G``; the visual tokens are computed once per image and repeated, and the backward pass sums
the gradients of all ``G`` rows into the image's one forward.

A learned modality embedding ``[2, d]`` (release: "2×d_llm") is added to every visual slot/token,
indexed by ``has_image``; for samples without an image the visual features are zeroed first, so the
LLM sees only the "no image" embedding. The release creates and counts this parameter but never adds
it (``adapter_modality_embedding`` is unused in its ``forward`` and ``generate``):
``add_modality_embedding=False`` reproduces that (the parameter exists, receives no gradient, and a
sample without an image sees an all-zero memory plus the slot embeddings).

In training (a ``dropout_key``) the key drives the ICA dropout in the LLM as is and the towers' adapter
dropout as ``fold_in(dropout_key, VISION_DROPOUT_STREAM)``.

What the model looks at can be read out of a teacher-forced pass with ``capture=True`` (a static Python
argument; off, the traced computation is the plain one): the ICA weights ``alpha`` and inherited masks ``M`` of
every block (``ica``), or every block's attention over the image tokens (``prefix``), as ``Intermediates``;
``slot_layout`` says which slots hold which encoder's patch grid.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from semrel_jax.method import ica
from semrel_jax.method.ensemble import EncoderEnsemble, EnsembleConfig
from semrel_jax.method.reconstruction import SlotDecoder
from semrel_jax.models.llama import KVCache, Llama, LlamaConfig
from semrel_jax.models.objects import pairwise_distance_features
from semrel_jax.models.vit import DISTANCE_FEATURES

Array = jax.Array
VISION_DROPOUT_STREAM = 1  # fold_in index of the vision towers' dropout key


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    llm: LlamaConfig
    vision: EnsembleConfig
    injection: str = "ica"  # 'ica' | 'prefix'
    num_memory_slots: int = 0  # N_mem (ica only); 0: exactly the number of fused visual tokens
    ica: ica.ICAConfig = ica.ICAConfig()
    modality_embedding: bool = True  # the [2, d] parameter exists
    add_modality_embedding: bool = True  # ... and is added to the visual tokens (False: the release, unused)
    slot_key_init_std: float = 0.02  # P_k ~ N(0, std²) (release)
    slot_value_init_std: float = 0.0  # P_v = 0 (release); > 0 gives values slot identity from step 0
    # a linear decoder from each patch slot's visual token to its region's pixels (method/reconstruction.py),
    # created for the slot-reconstruction objective (train.reconstruction_weight > 0); the forward never uses it
    slot_decoder: bool = False
    # 'causal': the LLM reads image and prompt left to right; 'bidirectional': the image tokens (prefix
    # injection) and the prompt attend to each other both ways, the answer causally (PaliGemma's prefix-LM)
    prompt_attention: str = "causal"
    # prefix injection: each LLM block's attention between two image tokens gets a learned per-head bias of their
    # centres' offset (dx, dy, |d|, |d|²: models/objects.pairwise_distance_features); needs
    # llm.pair_bias_features == 4. The object-token probe's --geometric (experiments/LOG.md, session 12).
    prefix_distance_bias: bool = False
    # a fifth feature, 1 for a token with itself (llm.pair_bias_features == 5): a head can read the others only
    prefix_distance_bias_self: bool = False

    @property
    def memory_slots(self) -> int:
        return self.num_memory_slots or self.vision.num_tokens

    @property
    def num_prefix_tokens(self) -> int:
        return self.vision.num_tokens if self.injection == "prefix" else 0

    def __post_init__(self):
        if self.injection not in ("ica", "prefix"):
            raise ValueError(f"injection must be 'ica' or 'prefix', got {self.injection!r}.")
        if self.prompt_attention not in ("causal", "bidirectional"):
            raise ValueError(f"prompt_attention must be 'causal' or 'bidirectional', got {self.prompt_attention!r}.")
        features = DISTANCE_FEATURES + self.prefix_distance_bias_self
        if self.prefix_distance_bias and (self.injection != "prefix" or self.llm.pair_bias_features != features):
            raise ValueError(f"prefix_distance_bias needs injection='prefix' and llm.pair_bias_features={features}.")
        if self.prefix_distance_bias_self and not self.prefix_distance_bias:
            raise ValueError("prefix_distance_bias_self is a feature of prefix_distance_bias.")
        if self.vision.out_dim != self.llm.dim:
            raise ValueError(f"Projector output {self.vision.out_dim} must equal the LLM width {self.llm.dim}.")
        if self.injection == "ica" and self.memory_slots < self.vision.num_tokens:
            raise ValueError(
                f"num_memory_slots={self.num_memory_slots} is smaller than the {self.vision.num_tokens} fused "
                "visual tokens; raise it (or set 0 for exactly that many)."
            )


@dataclasses.dataclass(frozen=True)
class SlotGroup:
    """The visual slots of one encoder: ``start`` is its first slot; an optional class token comes first, then
    its (pooled) patch grid ``grid × grid`` row-major, or (``grid`` 0) its ``objects`` object tokens, largest
    object first (``models/objects.py``). All its taps are fused into these same slots."""

    encoder: str
    taps: tuple[int, ...]
    start: int
    grid: int
    class_token: bool
    objects: int = 0

    @property
    def object_slots(self) -> range:
        first = self.start + int(self.class_token)
        return range(first, first + self.objects)

    @property
    def patch_slots(self) -> range:
        first = self.start + int(self.class_token)
        return range(first, first + self.grid * self.grid)


def slot_layout(vision: EnsembleConfig) -> tuple[SlotGroup, ...]:
    """Which visual slot (memory slot with ``ica``, image token with ``prefix``) holds which encoder's patch;
    the encoders are concatenated in config order (``method/ensemble.py``), padding slots come after them."""
    groups, start = [], 0
    for spec in vision.encoders:
        class_token = bool(spec.vit.class_token and not spec.drop_cls)
        objects = spec.vit.max_objects if spec.vit.tokens == "objects" else 0
        grid = 0 if objects else spec.grid // spec.pool
        groups.append(SlotGroup(spec.name, tuple(spec.taps), start, grid, class_token, objects))
        start += spec.num_tokens
    return tuple(groups)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Intermediates:
    """Per-block readouts of a ``capture=True`` pass (text positions ``T``; the other injection's fields None).

    alpha: ``[L, B, T, N_mem]`` ICA weights SiLU(u Kᵀ) of every block, before the mask (``ica``).
    mask: ``[L, B, T, N_mem]`` the inherited mask M after every block (``ica``).
    image_attention: ``[L, B, T, N_vis]`` every block's self-attention (mean over heads) from the text
      positions to the image tokens (``prefix``).
    """

    alpha: Array | None = None
    mask: Array | None = None
    image_attention: Array | None = None


def share_images(x: Array, rows: int) -> Array:
    """``[B_img, ...]`` per-image values -> ``[rows, ...]``, each repeated for its ``rows // B_img`` text rows."""
    if x.shape[0] == rows:
        return x
    if rows % x.shape[0]:
        raise ValueError(f"{rows} text rows cannot share {x.shape[0]} images evenly (rows r uses image r // G).")
    return jnp.repeat(x, rows // x.shape[0], axis=0)


def prompt_lengths(loss_mask: Array) -> Array:
    """``[B]`` how many leading text positions hold the prompt, from the loss mask ``[B, T]``.

    Position ``t`` is a target position when token ``t + 1`` is an answer token, so the first target position
    holds the prompt's last token: the prompt is the positions up to and including it (a row without targets
    is all prompt). Later turns of a conversation count as answer: only the first prompt is read both ways.
    """
    targets = loss_mask > 0
    return jnp.where(targets.any(-1), jnp.argmax(targets, -1) + 1, loss_mask.shape[-1]).astype(jnp.int32)


def share_memory(memory: ica.Memory, rows: int) -> ica.Memory:
    return dataclasses.replace(memory, keys=share_images(memory.keys, rows), values=share_images(memory.values, rows))


class VisionLanguageModel(nnx.Module):
    def __init__(self, config: VLMConfig, *, rngs: nnx.Rngs):
        self.config = config
        d = config.llm.dim
        pd = jnp.dtype(config.llm.param_dtype)
        self.vision = EncoderEnsemble(config.vision, rngs=rngs)
        self.llm = Llama(config.llm, rngs=rngs)
        if config.injection == "ica":
            n = config.memory_slots
            self.memory_key_embedding = nnx.Param(config.slot_key_init_std * jax.random.normal(rngs.params(), (n, d), pd))
            self.memory_value_embedding = nnx.Param(
                config.slot_value_init_std * jax.random.normal(rngs.params(), (n, d), pd)
            )
        if config.slot_decoder:
            self.slot_decoder = SlotDecoder(d, config.vision.encoders[0].vit.channels, param_dtype=pd, rngs=rngs)
        if config.modality_embedding:
            self.modality_embedding = nnx.Param(jnp.zeros((2, d), pd))

    def visual_tokens(self, images: dict[str, Array], has_image: Array, dropout_key: Array | None = None) -> Array:
        """Fused visual tokens ``[B, N_vis, d]`` with the modality embedding added (when configured so)."""
        vision_key = None if dropout_key is None else jax.random.fold_in(dropout_key, VISION_DROPOUT_STREAM)
        tokens = self.vision(images, vision_key)
        tokens = tokens * has_image[:, None, None].astype(tokens.dtype)
        if self.config.modality_embedding and self.config.add_modality_embedding:
            tokens = tokens + self.modality_embedding[...][has_image.astype(jnp.int32)][:, None, :].astype(tokens.dtype)
        return tokens

    def memory(
        self,
        images: dict[str, Array],
        has_image: Array,
        mask_enabled: Array | bool = True,
        dropout_key: Array | None = None,
    ) -> ica.Memory:
        """``X_v`` zero-padded to ``N_mem`` slots, with the shared slot embeddings added."""
        return self.memory_of(self.visual_tokens(images, has_image, dropout_key), mask_enabled)

    def memory_of(self, tokens: Array, mask_enabled: Array | bool = True) -> ica.Memory:
        """The memory of visual tokens ``[B, N_vis, d]`` (``visual_tokens``' output) computed once elsewhere."""
        pad = self.config.memory_slots - tokens.shape[1]
        # Padded slots carry no visual feature; after adding P_k/P_v they are learned "null" slots.
        x_v = jnp.pad(tokens, ((0, 0), (0, pad), (0, 0)))
        return ica.Memory(
            keys=x_v + self.memory_key_embedding[...].astype(x_v.dtype),
            values=x_v + self.memory_value_embedding[...].astype(x_v.dtype),
            mask_enabled=jnp.asarray(mask_enabled, bool),
        )

    def prefix_pair_features(self, images: dict[str, Array], rows: int) -> Array | None:
        """``[rows, N_vis, N_vis, 4]`` distance features of the image tokens' centres (+ 1 for a token with itself
        with ``prefix_distance_bias_self``: ``[..., 5]``), zero for a pair with a class token or an empty object
        slot; None without ``prefix_distance_bias``."""
        if not self.config.prefix_distance_bias:
            return None
        positions, valid = self.vision.token_positions(images)
        features = pairwise_distance_features(positions)
        if self.config.prefix_distance_bias_self:
            itself = jnp.broadcast_to(jnp.eye(positions.shape[1], dtype=features.dtype), features.shape[:-1])
            features = jnp.concatenate([features, itself[..., None]], -1)
        features = features * (valid[:, :, None] & valid[:, None, :])[..., None]
        return share_images(features, rows)

    def _prefixed(self, visual: Array, tokens: Array, valid: Array):
        """The visual tokens ``[B_img, N_vis, d]`` prepended to the text embeddings of ``tokens`` ``[B, T]``."""
        prefix = share_images(visual, tokens.shape[0])
        embeddings = jnp.concatenate([prefix.astype(jnp.dtype(self.config.llm.dtype)), self.llm.embed(tokens)], 1)
        valid = jnp.concatenate([jnp.ones(prefix.shape[:2], bool), valid], axis=1)
        return embeddings, valid

    def slot_layout(self) -> tuple[SlotGroup, ...]:
        return slot_layout(self.config.vision)

    def _read_memory(self, memory: ica.Memory, tokens: Array, valid: Array, capture: bool = False, **llm_kwargs):
        """Runs the LLM on text tokens ``[B, T]`` with ICA over ``memory`` as every block's side branch.

        The inheritance mask starts from ones ``[B, T, N_mem]`` and is carried block to block by the LLM.
        Returns ``(logits, cache)``, plus the LLM's ``DecoderTrace`` with ``capture``.
        """
        side = ica.InheritableCrossAttention(memory, self.config.ica, capture)
        state = side.initial_state(tokens.shape[1])
        return self.llm(tokens, valid=valid, side=side, side_state=state, capture=capture, **llm_kwargs)

    def __call__(
        self,
        images: dict[str, Array],
        has_image: Array,
        tokens: Array,
        valid: Array,
        *,
        mask_enabled: Array | bool = True,
        dropout_key: Array | None = None,
        capture: bool = False,
        head: bool = True,
        visual: Array | None = None,
        prompt_length: Array | None = None,
    ) -> Array | tuple[Array, Intermediates]:
        """Teacher-forced logits ``[B, T, vocab]`` for the text tokens ``[B, T]``.

        ``capture`` (static): return ``(logits, Intermediates)``; off, only the logits and nothing extra traced.
        ``head`` (static): False returns the LLM's final-normed hidden states ``[B, T, d]`` instead of logits
        (``self.llm.logits`` maps them; a chunked loss applies it a slice at a time).
        ``visual``: ``visual_tokens(images, has_image, dropout_key)`` when the caller has already computed them
        (the train step, whose auxiliary objectives read them too: the towers run once); ``images`` is then read only
        for the image tokens' centres (``prefix_distance_bias``).
        ``prompt_length``: ``[B]`` the prompt's text positions (``prompt_lengths(loss_mask)``); needed with
        ``prompt_attention='bidirectional'``, unused with 'causal'.
        """
        if visual is None:
            visual = self.visual_tokens(images, has_image, dropout_key)
        p = self.config.num_prefix_tokens
        prefix_length = None
        if self.config.prompt_attention == "bidirectional":
            if prompt_length is None:
                raise ValueError("prompt_attention='bidirectional' needs each row's prompt_length "
                                 "(method/vlm.prompt_lengths(loss_mask)).")
            prefix_length = p + prompt_length
        if self.config.injection == "prefix":
            embeddings, full_valid = self._prefixed(visual, tokens, valid)
            run = dict(valid=full_valid, embeddings=embeddings, prefix_length=prefix_length,
                       pair_features=self.prefix_pair_features(images, tokens.shape[0]))
            if not capture:
                logits, _ = self.llm(**run, head=head)
                return logits[:, p:]
            logits, _, trace = self.llm(**run, capture=True)
            return logits[:, p:], Intermediates(image_attention=trace.attention[:, :, p:, :p])
        memory = share_memory(self.memory_of(visual, mask_enabled), tokens.shape[0])
        run = dict(dropout_key=dropout_key, prefix_length=prefix_length)
        if not capture:
            logits, _ = self._read_memory(memory, tokens, valid, head=head, **run)
            return logits
        logits, _, trace = self._read_memory(memory, tokens, valid, capture=True, **run)
        alpha = jnp.stack([weights.alpha for weights in trace.side_states])
        mask = jnp.stack([weights.mask for weights in trace.side_states])
        return logits, Intermediates(alpha=alpha, mask=mask)

    def prefill(
        self, images: dict[str, Array], has_image: Array, tokens: Array, valid: Array, max_new_tokens: int
    ) -> tuple[Array, KVCache, ica.Memory | None]:
        """Encodes the image and a LEFT-padded prompt ``[B, T]``; returns the last logits ``[B, vocab]``.

        Decoding with ICA always applies the inheritance mask (inference semantics), recomputed
        from ones for every new token, which is exactly what a full forward pass would give it.
        """
        batch, t = tokens.shape
        p = self.config.num_prefix_tokens
        cache = KVCache.empty(self.config.llm, batch, p + t + max_new_tokens)
        # the whole prompt is the bidirectional prefix; the tokens decoded after it attend causally
        prefix_length = jnp.full((batch,), p + t, jnp.int32) if self.config.prompt_attention == "bidirectional" else None
        if self.config.injection == "prefix":
            embeddings, full_valid = self._prefixed(self.visual_tokens(images, has_image), tokens, valid)
            logits, cache = self.llm(valid=full_valid, embeddings=embeddings, cache=cache, prefix_length=prefix_length,
                                     pair_features=self.prefix_pair_features(images, batch))
            return logits[:, -1], cache, None
        memory = share_memory(self.memory(images, has_image, True), batch)
        logits, cache = self._read_memory(memory, tokens, valid, cache=cache, prefix_length=prefix_length)
        return logits[:, -1], cache, memory

    def decode_step(self, token: Array, cache: KVCache, memory: ica.Memory | None) -> tuple[Array, KVCache]:
        """One new token per row ``[B]`` -> next logits ``[B, vocab]``."""
        tokens, valid = token[:, None], jnp.ones((token.shape[0], 1), bool)
        if memory is None:  # prefix injection: the image already sits in the KV cache
            logits, cache = self.llm(tokens, valid=valid, cache=cache)
        else:
            logits, cache = self._read_memory(memory, tokens, valid, cache=cache)
        return logits[:, -1], cache
