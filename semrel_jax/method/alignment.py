"""Token-image alignment: an auxiliary objective that teaches a question's words to find their image region.

Trained on question-answer pairs alone, a from-scratch model learns the answers' priors but its colour words
never read the slots of the object they name (experiments/LOG.md, "Relational sets in LLaVA JSON"): the answer
loss alone gives that binding too weak a signal. This loss asks for it directly and needs no labels, only the
prompt's own words. Every prompt token's input embedding ``e_t`` scores every image ``b`` of the batch by its best
match among that image's memory keys,

    s(t, b) = logsumexp_n(e_t · k_{b,n}) / sqrt(d)        # k: [N_mem, d], ICA's keys X_v + P_k

and a cross-entropy over the batch's images asks each token to pick its own image (InfoNCE with the batch's other
images as negatives). A word that occurs in its own image (a colour present there) can only win by raising
its match with the slots that show it; a function word present in every question cannot win and is pushed
towards no preference. Rows without an image (``has_image`` False) ask nothing.

Cost: one ``[R, T, B_img, N_mem]`` score tensor per step (R text rows, T tokens), small at the from-scratch
sizes this is meant for; with gradient accumulation the negatives are the micro-batch's images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def prompt_token_weights(valid: Array, loss_mask: Array, has_image: Array) -> Array:
    """``[R, T]`` float32: 1 on the prompt's tokens (valid and not a target position) of rows with an image.

    ``has_image`` is ``[B_img]``; text rows ``r`` belong to image ``r // (R // B_img)`` (grouped batches).
    """
    rows = valid.shape[0]
    image_of_row = jnp.arange(rows) // (rows // has_image.shape[0])
    prompt = valid & (loss_mask == 0)
    return (prompt & has_image[image_of_row][:, None]).astype(jnp.float32)


def token_image_alignment_losses(embeddings: Array, keys: Array) -> Array:
    """Per-token InfoNCE losses ``[R, T]``.

    embeddings: ``[R, T, d]`` the text tokens' input embeddings.
    keys: ``[B_img, N_mem, d]`` each image's memory keys; row ``r`` belongs to image ``r // (R // B_img)``.
    """
    rows, images, d = embeddings.shape[0], keys.shape[0], embeddings.shape[-1]
    scores = jnp.einsum("rtd,bnd->rtbn", embeddings.astype(jnp.float32), keys.astype(jnp.float32))
    per_image = jax.nn.logsumexp(scores, axis=-1) / jnp.sqrt(jnp.float32(d))  # [R, T, B_img]
    own_image = jnp.broadcast_to((jnp.arange(rows) // (rows // images))[:, None], per_image.shape[:2])
    return optax.softmax_cross_entropy_with_integer_labels(per_image, own_image)
