"""Batched decoding with a KV cache (greedy or temperature / top-p sampling), one jitted function of the state.

Prompts are LEFT-padded so that every row's next token lands in the same cache slot. The loop runs a
fixed ``max_new_tokens`` (one compilation); text after the first EOS is cut off when decoding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def sample_logits(logits: jax.Array, key: jax.Array | None, temperature: float = 0.0, top_p: float = 1.0) -> jax.Array:
    """Next tokens ``[B]`` from logits ``[B, V]``: greedy when ``temperature == 0``, else nucleus sampling.

    top_p keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (the most
    likely token always stays), renormalised.
    """
    if temperature == 0.0 or key is None:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability mass of the strictly more likely tokens
        sorted_logits = jnp.where(before < top_p, sorted_logits, -jnp.inf)
        logits = jnp.full_like(logits, -jnp.inf).at[jnp.arange(logits.shape[0])[:, None], order].set(sorted_logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_p"))
def generate(
    graphdef, states: tuple, batch: dict, max_new_tokens: int, key=None, temperature: float = 0.0, top_p: float = 1.0
) -> jax.Array:
    """Returns generated ids ``[B, max_new_tokens]`` (greedy, or sampled with ``key``).

    batch: ``images``, ``has_image``, ``prompt [B, P]`` (left-padded), ``prompt_valid [B, P]``.
    """
    model = nnx.merge(graphdef, *states)
    logits, cache, memory = model.prefill(
        batch["images"], batch["has_image"], batch["prompt"], batch["prompt_valid"], max_new_tokens
    )
    keys = [None] * max_new_tokens if key is None else list(jax.random.split(key, max_new_tokens))
    first = sample_logits(logits, keys[0], temperature, top_p)

    def step(carry, step_key):
        token, cache = carry
        logits, cache = model.decode_step(token, cache, memory)
        nxt = sample_logits(logits, step_key, temperature, top_p)
        return (nxt, cache), nxt

    step_keys = None if key is None else jnp.stack(keys[1:]) if max_new_tokens > 1 else None
    _, rest = jax.lax.scan(step, (first, cache), step_keys, length=max_new_tokens - 1)
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def greedy_generate(graphdef, states: tuple, batch: dict, max_new_tokens: int) -> jax.Array:
    return generate(graphdef, states, batch, max_new_tokens)


def decode_texts(tokenizer, ids: np.ndarray, stop_strings: tuple[str, ...] = ()) -> list[str]:
    """Detokenizes each row up to (excluding) its first EOS, then cuts at the first stop string."""
    texts = []
    for row in np.asarray(ids):
        row = row.tolist()
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        text = tokenizer.decode(row, skip_special_tokens=True)
        for stop in stop_strings:
            if stop and stop in text:
                text = text[: text.index(stop)]
        texts.append(text.strip())
    return texts
