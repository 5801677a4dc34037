"""Multilevel vision-encoder ensemble: encoders × taps -> one SRProj each -> fused visual tokens.

Fusion rule (documented choice for encoders with different token counts):
  * the levels (taps) of ONE encoder share its token grid, so they are fused element-wise
    (``sum`` or ``mean``), as in the paper (``½·[SRProj_m(X_mid) + SRProj_f(X_final)]``) and the
    release (sum);
  * different encoders are concatenated along the token axis, so each keeps its own grid
    (CLIP 16×16 next to DINOv2 37×37 needs no resampling and loses nothing);
  * the result is scaled by ``memory_scale`` (release: 0.01).
An encoder's ``pool = k > 1`` average-pools its patch grid k×k before projection (a fine patch grid for the
tower, k² fewer memory slots for the LLM); the release uses no pooling.
The caller pads the result to ``N_mem`` slots.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from semrel_jax.method.srproj import SRProj
from semrel_jax.models.vit import ViT, ViTConfig

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """One vision encoder of the ensemble and the hidden states it contributes."""

    name: str
    vit: ViTConfig
    taps: tuple[int, ...]  # HF hidden_states indices (0 = embeddings, i = output of block i)
    post_ln: bool = True  # apply the tower's post-LN to every tapped map (release: yes)
    drop_cls: bool = True
    pool: int = 1  # k×k average pooling of the patch grid before projection

    @property
    def grid(self) -> int:
        return self.vit.image_size // self.vit.patch_size

    @property
    def num_tokens(self) -> int:
        return self.vit.num_patches // self.pool**2 + int(self.vit.class_token and not self.drop_cls)

    def __post_init__(self):
        if self.vit.tokens == "objects" and self.pool != 1:
            raise ValueError(f"Encoder {self.name!r}: object tokens have no patch grid to pool (pool={self.pool}).")
        if self.pool < 1 or self.grid % self.pool:
            raise ValueError(f"Encoder {self.name!r}: pool={self.pool} must divide its {self.grid}x{self.grid} patch grid.")
        if self.pool > 1 and self.vit.class_token and not self.drop_cls:
            raise ValueError(f"Encoder {self.name!r}: pooling the patch grid needs drop_cls=True.")


@dataclasses.dataclass(frozen=True)
class EnsembleConfig:
    encoders: tuple[EncoderSpec, ...]
    out_dim: int
    projector_hidden: int = 64
    learnable_diagonal: bool = True
    zero_init_output: bool = False
    fusion: str = "sum"  # 'sum' | 'mean' over the levels of one encoder
    memory_scale: float = 0.01
    dtype: str = "float32"
    param_dtype: str = "float32"

    @property
    def num_tokens(self) -> int:
        return sum(e.num_tokens for e in self.encoders)

    def __post_init__(self):
        if not self.encoders:
            raise ValueError("The ensemble needs at least one encoder.")
        if self.fusion not in ("sum", "mean"):
            raise ValueError(f"fusion must be 'sum' or 'mean', got {self.fusion!r}.")
        names = [e.name for e in self.encoders]
        if len(set(names)) != len(names):
            raise ValueError(f"Encoder names must be unique, got {names}.")
        for e in self.encoders:
            if not e.taps:
                raise ValueError(f"Encoder {e.name!r} has no taps.")


def pool_grid(tokens: Array, grid: int, k: int) -> Array:
    """``[B, grid², w]`` row-major patch tokens -> ``[B, (grid/k)², w]`` k×k means."""
    b, _, w = tokens.shape
    g = grid // k
    return tokens.reshape(b, g, k, g, k, w).mean(axis=(2, 4)).reshape(b, g * g, w)


def projector_name(encoder: str, tap: int) -> str:
    return f"{encoder}_layer{tap}"


class EncoderEnsemble(nnx.Module):
    def __init__(self, config: EnsembleConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoders = nnx.Dict({e.name: ViT(e.vit, rngs=rngs) for e in config.encoders})
        self.projectors = nnx.Dict(
            {
                projector_name(e.name, tap): SRProj(
                    e.vit.width,
                    config.projector_hidden,
                    config.out_dim,
                    learnable_diagonal=config.learnable_diagonal,
                    zero_init_output=config.zero_init_output,
                    dtype=jnp.dtype(config.dtype),
                    param_dtype=jnp.dtype(config.param_dtype),
                    rngs=rngs,
                )
                for e in config.encoders
                for tap in e.taps
            }
        )

    def __call__(self, images: dict[str, Array], dropout_key: Array | None = None) -> Array:
        """images: encoder name -> ``[B, H, W, C]`` (each preprocessed for its encoder; an object tower's may be its
        ``ObjectTokens``, ``models/objects.py``); ``dropout_key``: the towers' adapter dropout (None:
        deterministic), ``fold_in(dropout_key, e)`` for the e-th encoder.

        Returns ``[B, sum_e N_e, out_dim]`` fused visual tokens, already scaled.
        """
        missing = [e.name for e in self.config.encoders if e.name not in images]
        if missing:
            raise KeyError(f"No images for encoder(s) {missing}; got {sorted(images)}.")
        per_encoder = []
        for index, spec in enumerate(self.config.encoders):
            vit = self.encoders[spec.name]
            key = None if dropout_key is None else jax.random.fold_in(dropout_key, index)
            levels = vit(images[spec.name], spec.taps, key)
            fused = None
            for tap, hidden in zip(spec.taps, levels):
                if spec.post_ln:
                    hidden = vit.post_layernorm(hidden)
                if spec.drop_cls and spec.vit.class_token:
                    hidden = hidden[:, 1:]
                if spec.pool > 1:
                    hidden = pool_grid(hidden, spec.grid, spec.pool)
                projected = self.projectors[projector_name(spec.name, tap)](hidden)
                fused = projected if fused is None else fused + projected
            if self.config.fusion == "mean":
                fused = fused / len(spec.taps)
            per_encoder.append(fused)
        tokens = jnp.concatenate(per_encoder, axis=1) if len(per_encoder) > 1 else per_encoder[0]
        return self.config.memory_scale * tokens

    def token_positions(self, images: dict[str, Array]) -> tuple[Array, Array]:
        """Where each fused visual token sits in its image: ``positions [B, N_vis, 2]`` (x, y in image widths)
        and ``valid [B, N_vis]`` (False for a class token and an empty object slot, whose position is 0).

        A patch token sits at its (pooled) patch's centre; an object token at its object's centre
        (``models/objects.py``: recomputed from the image, the tokenizer has no parameters, or the batch's own).
        """
        positions, valid = [], []
        for spec in self.config.encoders:
            image = images[spec.name]
            if spec.vit.tokens == "objects":
                _, where, present = self.encoders[spec.name].objects(image)
                where = jnp.where(present[..., None], where + 0.5, 0.0)  # the tokenizer's centres are minus 0.5
            else:
                grid = spec.grid // spec.pool
                y, x = np.divmod(np.arange(grid * grid), grid)
                centres = np.stack([(x + 0.5) / grid, (y + 0.5) / grid], -1).astype(np.float32)
                where = jnp.broadcast_to(jnp.asarray(centres), (image.shape[0], grid * grid, 2))
                present = jnp.ones(where.shape[:2], bool)
            if spec.vit.class_token and not spec.drop_cls:
                where = jnp.pad(where, ((0, 0), (1, 0), (0, 0)))
                present = jnp.pad(present, ((0, 0), (1, 0)))
            positions.append(where.astype(jnp.float32))
            valid.append(present)
        return jnp.concatenate(positions, 1), jnp.concatenate(valid, 1)
