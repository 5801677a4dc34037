"""Batched decoding with a KV cache, one jitted function of the state: ``generate`` (greedy or temperature /
top-p sampling) and ``beam_search``.

Prompts are LEFT-padded so that every row's next token lands in the same cache slot. The loop runs a
fixed ``max_new_tokens`` (one compilation); text after the first EOS is cut off when decoding.

``beam_search`` prefills each prompt once, then decodes ``B * num_beams`` rows with ``model.decode_step``
(so ICA's per-token inheritance mask is exactly the one greedy decoding uses). Each step keeps the
``num_beams`` best of the ``num_beams * V`` continuations of every example by summed log-probability and
reorders the KV cache rows by beam parent. A beam that emitted EOS is finished: it only continues with
EOS at zero added log-probability. The returned beam maximises the Hugging Face style score
``sum_logprob / length ** length_penalty`` (``length`` counts the generated tokens including the EOS).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from semrel_jax.models.llama import KVCache


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


def length_penalized_score(log_prob: jax.Array, length: jax.Array, length_penalty: float | jax.Array) -> jax.Array:
    """Hugging Face's beam score ``log_prob / length ** length_penalty`` (0: raw sum; > 0 favours longer text)."""
    return log_prob / length.astype(jnp.float32) ** length_penalty


def _take_beams(x: jax.Array, parents: jax.Array, axis: int) -> jax.Array:
    """Row ``b * K + parents[b, k]`` for every ``(b, k)`` of ``x``'s ``B * K`` rows on ``axis``.

    Gathers within each example (``take_along_axis`` over ``[B, K]``), so a batch-sharded cache stays local.
    """
    b, k = parents.shape
    grouped = x.reshape(x.shape[:axis] + (b, k) + x.shape[axis + 1 :])
    index = parents.reshape((1,) * axis + (b, k) + (1,) * (grouped.ndim - axis - 2))
    return jnp.take_along_axis(grouped, index, axis=axis + 1).reshape(x.shape)


def _cache_rows(cache: KVCache, fn) -> KVCache:
    """``fn(leaf, batch_axis)`` on every per-row field of the cache; the shared write index stays."""
    return KVCache(
        keys=fn(cache.keys, 1),  # [L, B, S, n_kv, hd]
        values=fn(cache.values, 1),
        valid=fn(cache.valid, 0),  # [B, S]
        lengths=fn(cache.lengths, 0),  # [B] (the next RoPE position)
        index=cache.index,
    )


def _repeat_rows(tree, batch: int, num_beams: int):
    """Each example's row repeated ``num_beams`` times (rows ``b * K + k``) in every leaf with a batch axis."""

    def repeat(x):
        if x.ndim == 0:  # e.g. Memory.mask_enabled, shared by the batch
            return x
        if x.shape[0] != batch:
            raise ValueError(f"Expected a leading batch axis of {batch}, got shape {x.shape}.")
        return jnp.repeat(x, num_beams, axis=0)

    return jax.tree.map(repeat, tree)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "num_beams", "eos_id"))
def beam_search_with_scores(
    graphdef, states: tuple, batch: dict, max_new_tokens: int, num_beams: int, length_penalty=1.0, *, eos_id: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Beam search; returns the best beam's ids ``[B, max_new_tokens]`` (EOS after EOS), its summed
    log-probability ``[B]`` (up to and including its EOS) and its length-penalised score ``[B]``.

    ``length_penalty`` is traced (changing it does not recompile). See the module docstring.
    """
    model = nnx.merge(graphdef, *states)
    logits, cache, memory = model.prefill(
        batch["images"], batch["has_image"], batch["prompt"], batch["prompt_valid"], max_new_tokens
    )
    b, vocab = logits.shape
    k = num_beams
    cache = _cache_rows(cache, lambda x, axis: jnp.repeat(x, k, axis=axis))  # rows b * K + k
    memory = _repeat_rows(memory, b, k)
    # Only beam 0 is live at first, so the first step's K survivors are K different tokens.
    beams = dict(
        tokens=jnp.full((b, k, max_new_tokens), eos_id, jnp.int32),
        log_prob=jnp.full((b, k), -jnp.inf, jnp.float32).at[:, 0].set(0.0),
        finished=jnp.zeros((b, k), bool),
        length=jnp.zeros((b, k), jnp.int32),
    )
    eos_only = jnp.full((vocab,), -jnp.inf, jnp.float32).at[eos_id].set(0.0)

    def select(beams, logits, t):
        """Top K of the K * V continuations by summed log-prob; returns the new beams and their parents."""
        log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, vocab)
        log_p = jnp.where(beams["finished"][..., None], eos_only, log_p)
        top, flat = jax.lax.top_k((beams["log_prob"][..., None] + log_p).reshape(b, k * vocab), k)
        parents, token = flat // vocab, (flat % vocab).astype(jnp.int32)

        def follow(x):
            return jnp.take_along_axis(x, parents.reshape(parents.shape + (1,) * (x.ndim - 2)), axis=1)

        was_finished = follow(beams["finished"])
        return dict(
            tokens=jax.lax.dynamic_update_slice_in_dim(follow(beams["tokens"]), token[..., None], t, axis=2),
            log_prob=top,
            finished=was_finished | (token == eos_id),
            length=follow(beams["length"]) + (~was_finished).astype(jnp.int32),
        ), parents

    beams, parents = select(beams, jnp.repeat(logits, k, axis=0), 0)

    def step(carry, t):
        beams, parents, cache = carry
        cache = _cache_rows(cache, lambda x, axis: _take_beams(x, parents, axis))
        token = jax.lax.dynamic_index_in_dim(beams["tokens"], t - 1, axis=2, keepdims=False).reshape(b * k)
        logits, cache = model.decode_step(token, cache, memory)
        beams, parents = select(beams, logits, t)
        return (beams, parents, cache), None

    (beams, _, _), _ = jax.lax.scan(step, (beams, parents, cache), jnp.arange(1, max_new_tokens))
    score = length_penalized_score(beams["log_prob"], beams["length"], length_penalty)
    best = jnp.argmax(score, axis=1)[:, None]
    ids = jnp.take_along_axis(beams["tokens"], best[..., None], axis=1)[:, 0]
    return ids, jnp.take_along_axis(beams["log_prob"], best, 1)[:, 0], jnp.take_along_axis(score, best, 1)[:, 0]


def beam_search(
    graphdef, states: tuple, batch: dict, max_new_tokens: int, num_beams: int, length_penalty=1.0, *, eos_id: int
) -> jax.Array:
    """The best beam's ids ``[B, max_new_tokens]``, padded with EOS after its EOS (``beam_search_with_scores``)."""
    return beam_search_with_scores(
        graphdef, states, batch, max_new_tokens, num_beams, length_penalty, eos_id=eos_id
    )[0]


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
