"""Token cross-entropy computed a slice of the sequence at a time, never holding the whole batch's logits.

The plain loss asks the model for logits ``[B, T, V]`` in float32: at 8 × 512 tokens per device and a 32k
vocabulary that is 0.5 GiB, plus the same again for its gradient, and more for 128k-vocabulary models. Here the
model stops at its final-normed hidden states ``[B, T, d]`` (compute dtype) and the output projection runs
inside a ``lax.scan`` over sequence chunks of ``chunk`` positions: each chunk's logits ``[B, chunk, V]`` are
made in the compute dtype, turned into a float32 log-softmax, reduced to per-token losses, and dropped. The
chunk body is rematerialised (``jax.checkpoint``), so the backward pass recomputes one chunk's logits at a time
instead of saving every chunk's: the peak is one chunk's logits, not the batch's. The result is the plain
loss to float rounding (tests/test_chunked_loss.py checks loss and gradients).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def chunked_token_losses(
    hidden: Array, head: Callable[[Array], Array], targets: Array, chunk: int
) -> tuple[Array, Array]:
    """Per-token cross-entropy and whether the argmax is the target, without the full logits.

    hidden: ``[B, T, d]`` the decoder's final-normed states; head: ``[B, c, d] -> [B, c, V]`` logits (the
    model's output projection); targets: ``[B, T]`` int ids. ``T`` need not be a multiple of ``chunk``: the
    tail is padded and the padding's values dropped. Returns ``(losses [B, T] float32, correct [B, T] bool)``.
    """
    b, t, d = hidden.shape
    n_chunks = -(-t // chunk)
    pad = n_chunks * chunk - t
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    # [n_chunks, B, chunk, ...]: the scan runs over the leading axis
    hidden_chunks = hidden.reshape(b, n_chunks, chunk, d).swapaxes(0, 1)
    target_chunks = targets.reshape(b, n_chunks, chunk).swapaxes(0, 1)

    @jax.checkpoint  # keep only the chunk's hidden states for the backward pass, recompute its logits
    def one_chunk(h, y):
        logits = head(h).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y), jnp.argmax(logits, -1) == y

    def body(_, xs):
        return None, one_chunk(*xs)

    _, (losses, correct) = jax.lax.scan(body, None, (hidden_chunks, target_chunks))
    unchunk = lambda x: x.swapaxes(0, 1).reshape(b, n_chunks * chunk)[:, :t]  # noqa: E731
    return unchunk(losses), unchunk(correct)
