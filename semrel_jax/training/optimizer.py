"""AdamW with linear warm-up then cosine decay to zero; no weight decay on biases, norms or 1-D params.

``train.decay_fraction < 1`` holds the peak rate after warm-up and decays over that last fraction of the
steps only (warmup-stable-decay): on a from-scratch run whose later kinds are still rising, the release's
cosine has already taken the rate to a few per cent of its peak (experiments/LOG.md, session 29).

The schedule can be written in the release's units (``train.epochs``, ``train.warmup_epochs``,
``train.base_learning_rate``); ``derive_schedule`` turns them into steps and an absolute rate once the
training split's size is known, and says what it derived.

Gradients are clipped to a global norm of ``train.grad_clip`` first; ``grad_clip=0`` means no clipping
(the release's ``clip_grad=None``), not a clip to norm 0.
"""

from __future__ import annotations

import jax
import optax

from semrel_jax.errors import ConfigError

# The release (MAE / LaVIN lineage) scales its base rate by the global batch over this reference batch.
REFERENCE_BATCH = 256


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int, decay_fraction: float = 1.0
                           ) -> optax.Schedule:
    """0 -> ``peak`` linearly over ``warmup_steps``, then a half cosine to 0 at ``total_steps``.

    Per step, exactly the release's per-iteration ``util/lr_sched.py`` (epoch = step / steps_per_epoch).
    ``decay_fraction < 1``: the rate stays at ``peak`` until the cosine's last ``decay_fraction`` of the
    steps after warm-up, and the half cosine runs over those steps only.
    """
    if decay_fraction == 1.0:
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=peak, warmup_steps=warmup_steps, decay_steps=total_steps, end_value=0.0
        )
    decay_steps = max(1, round(decay_fraction * (total_steps - warmup_steps)))
    decay_start = total_steps - decay_steps
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup_steps), optax.constant_schedule(peak),
         optax.cosine_decay_schedule(peak, decay_steps)],
        boundaries=[warmup_steps, decay_start],
    )


def schedule_for(train_config) -> optax.Schedule:
    """The learning-rate schedule ``train_config`` asks for."""
    t = train_config
    return learning_rate_schedule(peak_learning_rate(t), t.warmup_steps, t.num_steps, t.decay_fraction)


def peak_learning_rate(train_config) -> float:
    """``base_learning_rate · batch_size / 256`` when a base rate is set (the release's ``blr``), else ``learning_rate``."""
    t = train_config
    return t.base_learning_rate * t.batch_size / REFERENCE_BATCH if t.base_learning_rate > 0 else t.learning_rate


def steps_per_epoch(num_examples: int, batch_size: int, share: float = 1.0) -> int:
    """Full batches per pass over ``num_examples`` (the release's DataLoader drops the last partial batch).

    ``share``: the fraction of each batch drawn from this split (the rest is a mixed-in source).
    """
    return int(num_examples // (batch_size * share))


def derive_schedule(train_config, epoch_steps: int) -> list[str]:
    """Fills ``num_steps`` / ``warmup_steps`` from ``epochs`` / ``warmup_epochs`` and ``learning_rate`` from
    ``base_learning_rate``, in place; returns one line per derived key (empty when nothing is derived).

    Idempotent: a saved, already derived config derives the same values again.
    """
    t, lines = train_config, []
    if t.base_learning_rate > 0:
        t.learning_rate = peak_learning_rate(t)
        lines.append(f"config.train.learning_rate={t.learning_rate:.6g} = base_learning_rate {t.base_learning_rate:g} "
                     f"x batch_size {t.batch_size} / {REFERENCE_BATCH}")
    if t.epochs > 0:
        if epoch_steps < 1:
            raise ConfigError(f"config.train.epochs: an epoch of the training split is less than one batch of "
                              f"{t.batch_size}; lower train.batch_size or set train.num_steps instead")
        t.num_steps = max(1, round(t.epochs * epoch_steps))
        t.warmup_steps = round(t.warmup_epochs * epoch_steps)
        lines.append(f"config.train.num_steps={t.num_steps}, warmup_steps={t.warmup_steps} from train.epochs="
                     f"{t.epochs:g}, warmup_epochs={t.warmup_epochs:g} at {epoch_steps} steps per epoch")
    return lines


def decay_mask(params):
    """True for matrices (kernels, embeddings, slot embeddings); False for vectors (biases, norm scales, Λ)."""
    return jax.tree.map(lambda x: x.ndim > 1, params)


def make_optimizer(train_config) -> optax.GradientTransformation:
    t = train_config
    adamw = optax.adamw(schedule_for(t), b1=t.b1, b2=t.b2, weight_decay=t.weight_decay, mask=decay_mask)
    if t.grad_clip == 0:
        return adamw
    return optax.chain(optax.clip_by_global_norm(t.grad_clip), adamw)
