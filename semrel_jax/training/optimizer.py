"""AdamW with linear warm-up then cosine decay to zero; no weight decay on biases, norms or 1-D params.

Gradients are clipped to a global norm of ``train.grad_clip`` first; ``grad_clip=0`` means no clipping
(the release's ``clip_grad=None``), not a clip to norm 0.
"""

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
    adamw = optax.adamw(schedule, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay, mask=decay_mask)
    if t.grad_clip == 0:
        return adamw
    return optax.chain(optax.clip_by_global_norm(t.grad_clip), adamw)
