"""AdamW with linear warm-up then cosine decay to zero; no weight decay on biases, norms or 1-D params."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup_steps, decay_steps=total_steps, end_value=0.0
    )


def decay_mask(params):
    """True for matrices (kernels, embeddings, slot embeddings); False for vectors (biases, norm scales, Λ)."""
    return jax.tree.map(lambda x: x.ndim > 1, params)


def make_optimizer(train_config) -> optax.GradientTransformation:
    t = train_config
    schedule = learning_rate_schedule(t.learning_rate, t.warmup_steps, t.num_steps)
    return optax.chain(
        optax.clip_by_global_norm(t.grad_clip),
        optax.adamw(schedule, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay, mask=decay_mask),
    )
