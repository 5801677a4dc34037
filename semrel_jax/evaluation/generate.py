"""Batched greedy decoding with a KV cache, as one jitted function of the model state.

Prompts are LEFT-padded so that every row's next token lands in the same cache slot. The loop runs a
fixed ``max_new_tokens`` (one compilation); text after the first EOS is cut off when decoding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def greedy_generate(graphdef, states: tuple, batch: dict, max_new_tokens: int) -> jax.Array:
    """Returns generated ids ``[B, max_new_tokens]``.

    batch: ``images``, ``has_image``, ``prompt [B, P]`` (left-padded), ``prompt_valid [B, P]``.
    """
    model = nnx.merge(graphdef, *states)
    logits, cache, memory = model.prefill(
        batch["images"], batch["has_image"], batch["prompt"], batch["prompt_valid"], max_new_tokens
    )
    first = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def step(carry, _):
        token, cache = carry
        logits, cache = model.decode_step(token, cache, memory)
        nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return (nxt, cache), nxt

    _, rest = jax.lax.scan(step, (first, cache), None, length=max_new_tokens - 1)
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def decode_texts(tokenizer, ids: np.ndarray) -> list[str]:
    """Detokenizes each row up to (excluding) its first EOS."""
    texts = []
    for row in np.asarray(ids):
        row = row.tolist()
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        texts.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return texts
