"""Image-text retrieval: Recall@K in both directions from a score matrix, one or several texts per image."""

from __future__ import annotations

import numpy as np


def recall_at_k(scores: np.ndarray, ks: tuple[int, ...] = (1, 5, 10), image_of: np.ndarray | None = None
                ) -> dict[str, float]:
    """``scores [N_images, N_texts]``, ``image_of [N_texts]``: the image each text describes (default: text ``i``
    matches image ``i``, a square matrix) -> ``{"image_to_text_r@k", "text_to_image_r@k"}``.

    The Karpathy-split protocol (Flickr30K, COCO: five captions per image): an image query is right when any of its
    texts ranks in the top k; a text query when its image does. A tie counts against the match.
    """
    n_images, n_texts = scores.shape
    if image_of is None:
        if n_images != n_texts:
            raise ValueError(f"expected a square score matrix (text i matches image i), got {scores.shape}; "
                             "pass image_of for several texts per image.")
        image_of = np.arange(n_texts)
    image_of = np.asarray(image_of)
    if image_of.shape != (n_texts,) or image_of.min(initial=0) < 0 or image_of.max(initial=0) >= n_images:
        raise ValueError(f"image_of must give each of the {n_texts} texts an image in [0, {n_images}).")
    matches = image_of[None, :] == np.arange(n_images)[:, None]  # [N_images, N_texts]
    if not matches.any(1).all():
        raise ValueError(f"images {np.flatnonzero(~matches.any(1)).tolist()} have no text to retrieve.")
    # image -> text: the rank of its best-scored text = how many other images' texts score at least as high
    best = np.where(matches, scores, -np.inf).max(1)
    image_rank = ((scores >= best[:, None]) & ~matches).sum(1)
    # text -> image: how many other images score the text at least as high as its own image does
    own = scores[image_of, np.arange(n_texts)]
    text_rank = (scores >= own[None, :]).sum(0) - 1
    out = {}
    for k in ks:
        out[f"image_to_text_r@{k}"] = float(np.mean(image_rank < k))
        out[f"text_to_image_r@{k}"] = float(np.mean(text_rank < k))
    return out
