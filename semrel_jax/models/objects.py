"""Object tokens: an image cut into its objects by background subtraction, without learning or labels.

For scenes of separate flat-coloured objects on a background (Sort-of-CLEVR, CLEVR-like generated sets):

* the background is the per-channel median colour of every fourth pixel in each direction (a sort of 1/16 of
  the pixels, which dominated the cost; a background is most of any such sample), and a pixel is foreground where some channel
  differs from it by more than ``threshold`` (pixels in [0, 1]: 'unit' or 'background' normalisation; the
  test is invariant to the latter's shift);
* each 4-connected foreground component is an object; the ``max_objects`` largest (ties: the one whose first
  pixel comes first in raster order, as ``scipy.ndimage.label`` numbers them) with at least ``min_pixels``
  pixels become tokens, largest first;
* a token is ``[mean colour minus background (C), centre x, y (2), box width, height (2), thumb x thumb mask
  (thumb²)]``: centres in image widths minus 0.5 (pixel indices / size), box sizes in image widths, and the
  mask thumbnail the fraction of each of the box's thumb x thumb cells the object covers (0 for a cell of
  no pixel, when the box is narrower than ``thumb``).

Everything is array code (connected components by min-label propagation with pointer jumping in a
``while_loop``), so it runs inside the jitted step on any backend; nothing here has parameters.
``experiments/object_token_probe.py`` is the numpy/scipy original this was measured with (its thumbnail is a
bilinear resize; the rest is the same definition).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
BACKGROUND_STRIDE = 4


class ObjectTokens(NamedTuple):
    """What the tokenizer finds in images: ``tokens [B, K, F]``, ``centres [B, K, 2]`` (x, y in image widths minus
    0.5) and ``valid [B, K]`` (False: no object in that slot; its token and centre are zero). It has no parameters,
    so a training batch may carry it in place of an object tower's pixels (``data/object_cache.py``)."""

    tokens: Array
    centres: Array
    valid: Array


@dataclasses.dataclass(frozen=True)
class ObjectTokenizer:
    max_objects: int = 8
    threshold: float = 0.25  # largest channel difference from the background colour, pixels in [0, 1]
    min_pixels: int = 4
    thumb: int = 9

    def feature_dim(self, channels: int) -> int:
        return channels + 4 + self.thumb**2

    def __call__(self, images: Array) -> ObjectTokens:
        """``images [B, H, W, C]`` -> their ``ObjectTokens``."""
        return ObjectTokens(*jax.vmap(self._one)(jax.lax.stop_gradient(images.astype(jnp.float32))))

    def slot_map(self, images: Array) -> Array:
        """``images [B, H, W, C]`` -> ``[B, H, W]`` int32: the token slot each pixel's object went to, ``max_objects``
        for the background and for objects left out (too small, or beyond the largest ``max_objects``)."""
        h, w = images.shape[1:3]
        *_, slots = jax.vmap(self._segment)(jax.lax.stop_gradient(images.astype(jnp.float32)))
        return slots.reshape(-1, h, w).astype(jnp.int32)

    def _segment(self, image: Array) -> tuple[Array, Array, Array, Array]:
        """``image [H, W, C]`` -> its background colour ``[C]``, the object areas ``[K]`` and validity ``[K]`` of
        the token slots, and each pixel's slot ``[H·W]`` (K: none)."""
        h, w, channels = image.shape
        n, k = h * w, self.max_objects
        background = jnp.median(image[::BACKGROUND_STRIDE, ::BACKGROUND_STRIDE].reshape(-1, channels), axis=0)
        foreground = (jnp.abs(image - background).max(-1) > self.threshold).reshape(n)
        labels = connected_components(foreground.reshape(h, w)).reshape(n)  # n: background

        areas = jax.ops.segment_sum(foreground.astype(jnp.int32), labels, num_segments=n + 1)[:n]
        chosen = _largest(areas, k)  # component labels, largest first, ties to the smaller label
        valid = areas[chosen] >= self.min_pixels
        slot_of_label = jnp.full(n + 1, k).at[chosen].set(jnp.where(valid, jnp.arange(k), k))
        return background, areas[chosen], valid, slot_of_label[labels]

    def _one(self, image: Array) -> tuple[Array, Array, Array]:
        h, w, channels = image.shape
        n, k, t = h * w, self.max_objects, self.thumb
        background, areas, valid, slot = self._segment(image)

        ys, xs = jnp.divmod(jnp.arange(n), w)
        count = jnp.maximum(areas, 1).astype(jnp.float32)
        sums = jax.ops.segment_sum(
            jnp.concatenate([image.reshape(n, channels), jnp.stack([xs, ys], -1).astype(jnp.float32)], -1),
            slot, num_segments=k + 1)[:k]
        colour = sums[:, :channels] / count[:, None]
        centre = sums[:, channels:] / count[:, None] / jnp.asarray([w, h], jnp.float32)
        x0 = jax.ops.segment_min(xs, slot, num_segments=k + 1)[:k]
        y0 = jax.ops.segment_min(ys, slot, num_segments=k + 1)[:k]
        box_w = jnp.maximum(jax.ops.segment_max(xs, slot, num_segments=k + 1)[:k] - x0 + 1, 1)
        box_h = jnp.maximum(jax.ops.segment_max(ys, slot, num_segments=k + 1)[:k] - y0 + 1, 1)

        # the thumbnail: pixels of each object per cell, over the box's pixels per cell
        safe = jnp.minimum(slot, k - 1)
        cell_x = (xs - x0[safe]) * t // box_w[safe]
        cell_y = (ys - y0[safe]) * t // box_h[safe]
        cell = jnp.where(slot < k, slot * t * t + cell_y * t + cell_x, k * t * t)
        covered = jax.ops.segment_sum(jnp.ones(n), cell, num_segments=k * t * t + 1)[:-1].reshape(k, t, t)
        columns = _cell_sizes(box_w, t, w)  # [k, t]
        rows = _cell_sizes(box_h, t, h)
        cells = rows[:, :, None] * columns[:, None, :]
        thumbnail = covered / jnp.maximum(cells, 1.0)

        boxes = jnp.stack([box_w / w, box_h / h], -1).astype(jnp.float32)
        tokens = jnp.concatenate([colour - background, centre - 0.5, boxes, thumbnail.reshape(k, t * t)], -1)
        tokens = jnp.where(valid[:, None], tokens, 0.0)
        return tokens, jnp.where(valid[:, None], centre - 0.5, 0.0), valid


def _largest(values: Array, k: int) -> Array:
    """Indices of the ``k`` largest of ``values [n]`` (int, >= 0), largest first, ties to the smaller index: k
    argmaxes, which on CPU cost a tenth of ``lax.top_k`` or a sort of all n."""
    chosen = []
    for _ in range(k):
        index = jnp.argmax(values)  # the first of equal maxima
        chosen.append(index)
        values = values.at[index].set(-1)
    return jnp.stack(chosen)


def _cell_sizes(extent: Array, cells: int, limit: int) -> Array:
    """``extent [K]`` pixels split into ``cells`` cells as ``i * cells // extent`` does -> pixels per cell
    ``[K, cells]``."""
    i = jnp.arange(limit)
    index = i[None, :] * cells // extent[:, None]  # [K, limit]
    inside = i[None, :] < extent[:, None]
    return (jax.nn.one_hot(index, cells) * inside[..., None]).sum(1)


def connected_components(mask: Array) -> Array:
    """``mask [H, W]`` bool -> ``[H, W]`` int labels: each 4-connected component of True pixels gets the
    raster index of its first pixel, False pixels get ``H·W``."""
    h, w = mask.shape
    none = h * w
    start = jnp.where(mask, jnp.arange(none).reshape(h, w), none)

    def step(labels):
        padded = jnp.pad(labels, 1, constant_values=none)
        neighbours = jnp.minimum(jnp.minimum(padded[:-2, 1:-1], padded[2:, 1:-1]),
                                 jnp.minimum(padded[1:-1, :-2], padded[1:-1, 2:]))
        labels = jnp.minimum(labels, neighbours)
        # pointer jumping: a label is a pixel of the same component, and that pixel's label is no larger
        flat = jnp.concatenate([labels.reshape(-1), jnp.asarray([none])])
        return jnp.where(mask, jnp.minimum(labels, flat[labels]), none)

    def body(carry):
        labels, _ = carry
        new = step(labels)
        return new, jnp.any(new != labels)

    labels, _ = jax.lax.while_loop(lambda carry: carry[1], body, (start, jnp.asarray(True)))
    return labels


def pairwise_distance_features(positions):
    """``positions [..., N, 2]`` (x, y in image widths) -> ``[..., N, N, 4]``: 4 x (dx, dy, |d|, |d|²) from
    token j to token i (the x 4 brings them to order one). NumPy in, NumPy out (a patch grid's constant table);
    a jax array in, a jax array out."""
    xp = np if isinstance(positions, np.ndarray) else jnp
    d = positions[..., :, None, :] - positions[..., None, :, :]
    squared = (d**2).sum(-1)
    return 4.0 * xp.concatenate([d, xp.sqrt(squared)[..., None], squared[..., None]], -1)
