"""Image-text retrieval: Recall@K in both directions from a score matrix."""

from __future__ import annotations

import numpy as np


def recall_at_k(scores: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """``scores [N_images, N_texts]`` with text ``i`` the match of image ``i`` -> ``{"image_to_text_r@k",
    "text_to_image_r@k"}``: the fraction of queries whose match ranks in the top k (ties count against it)."""
    n = scores.shape[0]
    if scores.shape != (n, n):
        raise ValueError(f"expected a square score matrix (text i matches image i), got {scores.shape}.")
    matched = np.diag(scores)
    # rank = how many candidates score at least as high as the match, itself excluded
    image_rank = (scores >= matched[:, None]).sum(1) - 1
    text_rank = (scores >= matched[None, :]).sum(0) - 1
    out = {}
    for k in ks:
        out[f"image_to_text_r@{k}"] = float(np.mean(image_rank < k))
        out[f"text_to_image_r@{k}"] = float(np.mean(text_rank < k))
    return out
