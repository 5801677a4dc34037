"""Low-rank adapters (LoRA) on a linear map: ``x W + b + (alpha / r) · (x A) B``, starting as the plain map."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


class LoRALinear(nnx.Linear):
    """``nnx.Linear`` plus a low-rank update: ``x W + b + (alpha / r) · (x A) B``.

    ``kernel``/``bias`` keep nnx.Linear's paths, so converted checkpoints map unchanged; ``lora_a``
    (``[in, r]``, fan-in normal) and ``lora_b`` (``[r, out]``, zeros) sit beside them, and the layer
    starts as the plain linear map. ``merged_kernel`` folds the update in for export.
    """

    def __init__(self, n_in: int, n_out: int, *, rank: int, alpha: float, rngs: nnx.Rngs, **kwargs):
        super().__init__(n_in, n_out, rngs=rngs, **kwargs)
        pd = kwargs.get("param_dtype", jnp.float32)
        self.lora_a = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (n_in, rank), pd))
        self.lora_b = nnx.Param(jnp.zeros((rank, n_out), pd))
        self.lora_scale = alpha / rank

    def __call__(self, x: Array) -> Array:
        y = super().__call__(x)
        a = self.lora_a[...].astype(y.dtype)
        b = self.lora_b[...].astype(y.dtype)
        return y + self.lora_scale * ((x.astype(y.dtype) @ a) @ b)

    def merged_kernel(self) -> Array:
        return self.kernel[...] + self.lora_scale * (self.lora_a[...] @ self.lora_b[...]).astype(self.kernel.dtype)
