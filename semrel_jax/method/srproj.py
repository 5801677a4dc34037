"""Semantic Relationship Projector (SRProj, the "grouping projection" of LSRM).

    SRProj(X) = (Λ · SiLU(X W1 + b1)) W2 + b2,   Λ = diag(λ_1..λ_dh), learnable, initialised to 1

The ``d_h`` bottleneck units act as semantic groups and Λ learns which groups to emphasise.
With ``learnable_diagonal=False`` it is MemVP's plain two-layer projector (no Λ parameter at all,
so parameter counts match that baseline exactly). W1, W2 are xavier-uniform, biases zero (release).
``zero_init_output=True`` starts W2 at zero instead: the projector then outputs nothing at step 0, which
is what a model trained from random init needs (see configs/vqa.py:demo); a pretrained LLM does not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


class SRProj(nnx.Module):
    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        *,
        learnable_diagonal: bool = True,
        zero_init_output: bool = False,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        init = nnx.initializers.xavier_uniform()
        kw = dict(dtype=dtype, param_dtype=param_dtype, kernel_init=init, rngs=rngs)
        self.fc1 = nnx.Linear(in_dim, hidden_dim, **kw)
        if zero_init_output:
            kw["kernel_init"] = nnx.initializers.zeros_init()
        self.fc2 = nnx.Linear(hidden_dim, out_dim, **kw)
        self.diagonal = nnx.Param(jnp.ones((hidden_dim,), param_dtype)) if learnable_diagonal else None

    def __call__(self, x: Array) -> Array:
        """``[B, N, in_dim]`` -> ``[B, N, out_dim]``."""
        h = jax.nn.silu(self.fc1(x))
        if self.diagonal is not None:
            h = h * self.diagonal[...].astype(h.dtype)
        return self.fc2(h)
