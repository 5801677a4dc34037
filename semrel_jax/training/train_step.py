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

from semrel_jax.method import alignment, reconstruction, vlm
from semrel_jax.training import chunked_loss

Array = jax.Array
MODEL_INPUTS = ("images", "has_image", "tokens", "targets", "loss_mask", "valid")
TEXT_INPUTS = ("tokens", "targets", "loss_mask", "valid")


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
    accumulation_steps: int = 1,
    loss_chunk: int = 0,
    auxiliary_weights: dict[str, float] | None = None,
) -> tuple[TrainState, dict[str, Array]]:
    """One optimisation step. ``mask_start_step`` < 0 never enables the ICA inheritance mask.

    ``accumulation_steps`` > 1 splits the batch into that many micro-batches, run one after another
    (``lax.scan``, so activations of one micro-batch at a time) with their gradients summed before the
    single optimizer update. With dropout off the result equals the full-batch step; with dropout each
    micro-batch draws its own mask.

    ``loss_chunk`` > 0 computes the cross-entropy that many text positions at a time from the model's hidden
    states (training/chunked_loss.py): the whole batch's float32 logits are never held; the loss is the same.

    ``auxiliary_weights`` (objective name -> weight; ``AUXILIARY_OBJECTIVES`` lists them) adds each weight > 0
    times its term to the answer loss; ``loss`` is then the sum and ``<name>_loss`` the unweighted term. The
    terms read the same visual tokens as the answers (the towers run once per micro-batch).
    """
    auxiliary = {name: w for name, w in (auxiliary_weights or {}).items() if w}
    unknown = sorted(set(auxiliary) - set(AUXILIARY_OBJECTIVES))
    if unknown:
        raise ValueError(f"Unknown auxiliary objective(s) {unknown}; known: {sorted(AUXILIARY_OBJECTIVES)}.")
    rng, dropout_key = jax.random.split(state.rng)
    mask_enabled = (state.step >= mask_start_step) if mask_start_step >= 0 else jnp.asarray(False)
    # Normalise by the answer tokens of the WHOLE batch, so accumulated micro-batch gradients sum to
    # exactly the full-batch gradient whatever the split.
    total_weight = jnp.maximum(batch["loss_mask"].sum(), 1.0)
    # each term's normaliser over the WHOLE batch (as total_weight for the answers)
    normalisers = {name: AUXILIARY_OBJECTIVES[name].normaliser(batch) for name in auxiliary}

    def loss_fn(params, micro, key):
        model = nnx.merge(graphdef, params, frozen)
        # Grouped batches (data.examples_per_image = G) carry text as [B_img, G, T]: rows of one image.
        micro = {k: v.reshape(-1, v.shape[-1]) if k in TEXT_INPUTS else v for k, v in micro.items()}
        # [B_img, N_vis, d], computed here once: the answers and the auxiliary objectives read the same tokens
        visual = model.visual_tokens(micro["images"], micro["has_image"], key)
        outputs = model(
            micro["images"],
            micro["has_image"],
            micro["tokens"],
            micro["valid"],
            mask_enabled=mask_enabled,
            dropout_key=key,
            head=not loss_chunk,
            visual=visual,
            prompt_length=vlm.prompt_lengths(micro["loss_mask"]),  # read only by a bidirectional prompt
        )
        losses, correct = _token_losses(model, outputs, micro["targets"], loss_chunk)
        loss = (losses * micro["loss_mask"]).sum() / total_weight
        aux = {"token_accuracy": (correct * micro["loss_mask"]).sum() / total_weight}
        for name, weight in auxiliary.items():
            aux[f"{name}_loss"] = AUXILIARY_OBJECTIVES[name].term(model, micro, visual, mask_enabled) / normalisers[name]
            loss = loss + weight * aux[f"{name}_loss"]
        return loss, aux

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accumulation_steps == 1:
        (loss, aux), grads = grad_fn(state.params, batch, dropout_key)
    else:
        # Micro-batch j takes rows j, j+k, j+2k, ...: every device keeps contributing its share of each
        # micro-batch (a contiguous split would leave devices idle).
        micro_batches = jax.tree.map(
            lambda x: x.reshape(x.shape[0] // accumulation_steps, accumulation_steps, *x.shape[1:]).swapaxes(0, 1),
            batch,
        )

        def accumulate(carry, xs):
            micro, index = xs
            (loss, aux), grads = grad_fn(state.params, micro, jax.random.fold_in(dropout_key, index))
            return jax.tree.map(jnp.add, carry, (loss, aux, grads)), None

        aux_zeros = {"token_accuracy": jnp.zeros(())} | {f"{name}_loss": jnp.zeros(()) for name in auxiliary}
        zeros = (jnp.zeros(()), aux_zeros, jax.tree.map(jnp.zeros_like, state.params))
        (loss, aux, grads), _ = jax.lax.scan(
            accumulate, zeros, (micro_batches, jnp.arange(accumulation_steps))
        )
    metrics = {"loss": loss, **aux, "answer_tokens": batch["loss_mask"].sum()}
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
        # Keep the previous parameters and moments; the step counter still advances so the
        # data stream moves past the offending batch.
        keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
        params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    metrics.update(grad_norm=grad_norm, learning_rate=schedule(state.step), nonfinite=1 - finite.astype(jnp.int32),
                   ica_mask=mask_enabled.astype(jnp.float32))  # 1 from model.ica.start on: the logs show the switch
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
    return new_state, metrics


def _token_losses(model, outputs, targets, loss_chunk: int) -> tuple[Array, Array]:
    """Per-token cross-entropy and correctness ``[B, T]`` from the model's logits (or, ``loss_chunk`` > 0, its hidden
    states, a chunk of positions at a time)."""
    if loss_chunk:
        return chunked_loss.chunked_token_losses(outputs, model.llm.logits, targets, loss_chunk)
    return optax.softmax_cross_entropy_with_integer_labels(outputs, targets), jnp.argmax(outputs, -1) == targets


def held_out_loss(params, frozen, batch: dict[str, Any], mask_enabled: Array, *, graphdef, loss_chunk: int = 0) -> Array:
    """The mean answer-token loss of ``batch`` (text ``[B, T]``), read without dropout and without an update."""
    model = nnx.merge(graphdef, params, frozen)
    outputs = model(batch["images"], batch["has_image"], batch["tokens"], batch["valid"], mask_enabled=mask_enabled,
                    head=not loss_chunk, prompt_length=vlm.prompt_lengths(batch["loss_mask"]))
    losses, _ = _token_losses(model, outputs, batch["targets"], loss_chunk)
    return (losses * batch["loss_mask"]).sum() / jnp.maximum(batch["loss_mask"].sum(), 1.0)


@dataclasses.dataclass(frozen=True)
class AuxiliaryObjective:
    """An objective added to the answer loss. ``term(model, micro, visual, mask_enabled)``: the micro-batch's
    summed loss (a scalar) from its images' visual tokens ``visual`` [B_img, N_vis, d]; ``normaliser(batch)``: what
    the whole batch's sum is divided by (so accumulated micro-batches add up to the full-batch term)."""

    term: Any
    normaliser: Any


def _alignment_term(model, micro, visual, mask_enabled):
    keys = model.memory_of(visual, mask_enabled).keys
    weights = alignment.prompt_token_weights(micro["valid"], micro["loss_mask"], micro["has_image"])
    return (alignment.token_image_alignment_losses(model.llm.embed(micro["tokens"]), keys) * weights).sum()


def _prompt_tokens(batch):
    flat = {k: batch[k].reshape(-1, batch[k].shape[-1]) for k in ("valid", "loss_mask")}
    return jnp.maximum(alignment.prompt_token_weights(flat["valid"], flat["loss_mask"], batch["has_image"]).sum(), 1.0)


def _reconstruction_term(model, micro, visual, mask_enabled):
    errors = reconstruction.reconstruction_errors(model.slot_decoder, visual, micro["images"], model.slot_layout())
    return (errors * micro["has_image"]).sum()


# name -> objective; train.<name>_weight is its weight (configs/defaults.py), <name>_loss its logged term
AUXILIARY_OBJECTIVES = {
    # each prompt word picks its own image by its best-matching memory key (method/alignment.py); per prompt token
    "alignment": AuxiliaryObjective(_alignment_term, _prompt_tokens),
    # each patch slot's token decodes to its region's pixels (method/reconstruction.py); per image
    "reconstruction": AuxiliaryObjective(
        _reconstruction_term, lambda batch: jnp.maximum(batch["has_image"].astype(jnp.float32).sum(), 1.0)
    ),
}


def device_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """The arrays the step consumes (drops bookkeeping such as dataset indices)."""
    return {k: batch[k] for k in MODEL_INPUTS}
