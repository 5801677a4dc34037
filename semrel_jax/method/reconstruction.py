"""Slot reconstruction: an auxiliary objective that keeps what each image region shows in the visual memory.

Trained on question-answer pairs alone, a from-scratch tower forgets what its patches show: at initialisation an
object's shape is as linearly decodable from the memory slot over its centre as from the raw pixels (0.44 against a
majority of 0.27 on relational set A), after 15,000 steps it is at the majority, and without the alignment loss the
colour goes too; only the position survives (experiments/LOG.md, "Session 9"). The answer loss cannot ask for an
attribute before the question's words have learnt to read it, and by then the tower has dropped it. This loss asks
for it from the start and needs no labels: a linear decoder maps every patch slot's visual token ``[d]`` to a
``cells × cells`` thumbnail of the pixels that slot covers (the encoder's own preprocessed input, so ``[-1, 1]``-ish
values on every normalisation), and the mean squared error over slots, cells and channels is the term.

Only patch-grid slots are decoded (``method/vlm.py`` ``SlotGroup``: a class token has no region); pooled grids
(``pool`` > 1) reconstruct their larger regions at the same ``cells`` resolution. Images are resized to
``grid·cells`` pixels a side with area averaging (exact block means when the size divides).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

CELLS = 5  # each slot's region is reconstructed as CELLS x CELLS pixels (3 px blocks of the demo's 15 px patches)


class SlotDecoder(nnx.Module):
    """``[..., d]`` visual tokens -> ``[..., CELLS² · channels]`` region thumbnails (one linear map)."""

    def __init__(self, dim: int, channels: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.proj = nnx.Linear(dim, CELLS * CELLS * channels, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, tokens: Array) -> Array:
        return self.proj(tokens.astype(self.proj.kernel.dtype))


def region_thumbnails(images: Array, grid: int, cells: int = CELLS) -> Array:
    """``[B, H, W, C]`` -> ``[B, grid², cells² · C]``: each cell of the ``grid × grid`` regions, row-major, as the
    mean of its pixels (``grid·cells`` must divide H and W exactly; otherwise an antialiased resize first)."""
    b, h, w, c = images.shape
    side = grid * cells
    x = images.astype(jnp.float32)
    if h % side or w % side:
        x = jax.image.resize(x, (b, side, side, c), method="linear", antialias=True)
        h = w = side
    x = x.reshape(b, side, h // side, side, w // side, c).mean(axis=(2, 4))  # [B, side, side, C]
    x = x.reshape(b, grid, cells, grid, cells, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, grid * grid, cells * cells * c)


def reconstruction_errors(decoder: SlotDecoder, tokens: Array, images: dict[str, Array], groups) -> Array:
    """``[B_img]`` each image's mean squared error of the decoded thumbnails over its patch slots.

    tokens: ``[B_img, N_vis, d]`` the fused visual tokens; images: encoder name -> ``[B_img, H, W, C]`` its
    preprocessed input; groups: ``method/vlm.py`` ``slot_layout`` (which slots hold which encoder's grid).
    """
    total, count = 0.0, 0
    for group in groups:
        slots = tokens[:, group.patch_slots.start : group.patch_slots.stop]
        target = region_thumbnails(images[group.encoder], group.grid)
        total = total + jnp.square(decoder(slots).astype(jnp.float32) - target).sum(axis=(1, 2))
        count += target.shape[1] * target.shape[2]
    return total / count
