"""SemVLP's train step: one jitted function per mode, chosen on the host by the schedule.

    steps = SemVLPSteps(graphdef, optimizer, weights, masking, cross=True)
    for n in range(start, num_steps):
        state, metrics = steps(state, batch, schedule.mode_at(n, pattern))

Each mode is traced once (``mode`` is a static argument of one ``jax.jit``), so alternating modes never
recompiles. The masking key is ``fold_in(state.rng, state.step)``: a resumed run draws exactly the masks
it would have drawn, and the mode follows from the step number (``method/semvlp/schedule.py``).
"""

from __future__ import annotations

import functools

import jax
import optax
from flax import nnx

from semrel_jax.method.semvlp import objectives
from semrel_jax.training.train_step import TrainState, init_train_state

__all__ = ["SemVLPSteps", "TrainState", "init_train_state"]


TASKS = ("pretrain", "nlvr2")


def _loss_fn(params, graphdef, batch, key, mode, cross, weights, masking, task):
    model = nnx.merge(graphdef, params)
    if task == "nlvr2":  # fine-tuning on statement/image-pair rows: one loss, nothing masked
        losses = objectives.pair_losses(model, batch, mode, cross)
        return losses["nlvr2"], losses
    masks = objectives.draw_masks(key, batch, masking)
    out = model(dict(batch, tokens=masks.tokens), mode, cross=cross, visual_mask=masks.visual)
    losses = objectives.compute_losses(model, batch, out, masks)
    return objectives.total_loss(losses, weights), losses


class SemVLPSteps:
    """``steps(state, batch, mode) -> (state, metrics)``; metrics hold every loss separately and the total.

    ``task``: 'pretrain' (the weighted objectives over scene rows; also VQA/retrieval fine-tuning, by weights)
    or 'nlvr2' (statement/image-pair rows, ``objectives.pair_losses``).
    """

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        optimizer: optax.GradientTransformation,
        weights: dict[str, float],
        masking: objectives.MaskingConfig,
        *,
        cross: bool = True,
        task: str = "pretrain",
    ):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
        self.task = task
        self.graphdef = graphdef
        self.optimizer = optimizer
        self.weights = dict(weights)
        self.masking = masking
        self.cross = cross
        self._jitted = jax.jit(self._step, static_argnames=("mode",), donate_argnums=(0,))

    def _step(self, state: TrainState, batch: dict, mode: str):
        key = jax.random.fold_in(state.rng, state.step)
        loss_fn = functools.partial(
            _loss_fn, graphdef=self.graphdef, batch=batch, key=key, mode=mode,
            cross=self.cross, weights=self.weights, masking=self.masking, task=self.task,
        )
        (total, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {f"loss_{k}": v for k, v in losses.items()} | {"loss": total, "grad_norm": optax.tree.norm(grads)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng), metrics

    def __call__(self, state: TrainState, batch: dict, mode: str):
        return self._jitted(state, batch, mode=mode)

    def lower(self, state, batch: dict, mode: str):
        """The step for ``mode`` lowered on (abstract) ``state`` and ``batch``, for ahead-of-time compilation."""
        return self._jitted.lower(state, batch, mode=mode)

    def compiled_modes(self) -> int:
        """How many traces the jitted step holds (one per mode used so far)."""
        return self._jitted._cache_size()
