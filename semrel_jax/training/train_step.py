"""The train state and the pure train step that ``jax.jit`` compiles once.

The model is split once into ``graphdef`` (static structure), trainable state and frozen state; the
step merges them inside the trace, so per step there is no Python-side graph work.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

Array = jax.Array
MODEL_INPUTS = ("images", "has_image", "tokens", "targets", "loss_mask", "valid")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: Array  # int32 scalar
    params: Any  # trainable nnx.State
    opt_state: Any
    rng: Array  # raw uint32 PRNG key (checkpointable as a plain array)


def init_train_state(params, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=jax.random.PRNGKey(seed),
    )


def answer_loss(logits: Array, targets: Array, loss_mask: Array) -> tuple[Array, dict[str, Array]]:
    """Mean cross-entropy over answer tokens only. logits ``[B, T, V]``; targets, mask ``[B, T]``."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    weight = jnp.maximum(loss_mask.sum(), 1.0)
    loss = (losses * loss_mask).sum() / weight
    correct = (jnp.argmax(logits, -1) == targets) * loss_mask
    return loss, {"loss": loss, "token_accuracy": correct.sum() / weight, "answer_tokens": loss_mask.sum()}


def train_step(
    state: TrainState,
    frozen: Any,
    batch: dict[str, Any],
    *,
    graphdef,
    optimizer: optax.GradientTransformation,
    schedule,
    mask_start_step: int,
    skip_nonfinite: bool,
) -> tuple[TrainState, dict[str, Array]]:
    """One optimisation step. ``mask_start_step`` < 0 never enables the ICA inheritance mask."""
    rng, dropout_key = jax.random.split(state.rng)
    mask_enabled = (state.step >= mask_start_step) if mask_start_step >= 0 else jnp.asarray(False)

    def loss_fn(params):
        model = nnx.merge(graphdef, params, frozen)
        logits = model(
            batch["images"],
            batch["has_image"],
            batch["tokens"],
            batch["valid"],
            mask_enabled=mask_enabled,
            dropout_key=dropout_key,
        )
        return answer_loss(logits, batch["targets"], batch["loss_mask"])

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
        # Keep the previous parameters and moments; the step counter still advances so the
        # data stream moves past the offending batch.
        keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
        params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    metrics.update(grad_norm=grad_norm, learning_rate=schedule(state.step), nonfinite=1 - finite.astype(jnp.int32))
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
    return new_state, metrics


def device_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """The arrays the step consumes (drops bookkeeping such as dataset indices)."""
    return {k: batch[k] for k in MODEL_INPUTS}
