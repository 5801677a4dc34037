"""Which parameters train: path-pattern filters that split a model into trainable and frozen state.

Paths are '/'-joined, e.g. ``llm/layers/3/mlp/up_proj/kernel`` or ``vision/projectors/vit_layer12/diagonal``.
A parameter trains when it matches any ``trainable`` regex (``re.search``) and no ``frozen`` regex.
Frozen parameters get no optimizer state and may be stored in a lower precision.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def path_string(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def trainable_filter(trainable: Sequence[str], frozen: Sequence[str] = ()):
    """An NNX filter ``(path, value) -> bool`` selecting trainable parameters."""
    train_res = [re.compile(p) for p in trainable]
    frozen_res = [re.compile(p) for p in frozen]

    def is_trainable(path, value) -> bool:
        if not isinstance(value, nnx.Param):
            return False
        name = path_string(path)
        return any(r.search(name) for r in train_res) and not any(r.search(name) for r in frozen_res)

    return is_trainable


def split_trainable(model: nnx.Module, trainable: Sequence[str], frozen: Sequence[str] = (), frozen_dtype=None):
    """Returns ``(graphdef, trainable_state, frozen_state)``; merge back with ``nnx.merge(g, t, f)``."""
    graphdef, train_state, frozen_state = nnx.split(model, trainable_filter(trainable, frozen), ...)
    if not jax.tree.leaves(train_state):
        raise ValueError(f"No parameter matches train.trainable={tuple(trainable)} minus train.frozen={tuple(frozen)}.")
    if frozen_dtype is not None:
        dtype = jnp.dtype(frozen_dtype)

        def cast(x):
            if not jnp.issubdtype(x.dtype, jnp.floating):
                return x
            if isinstance(x, jax.ShapeDtypeStruct):  # abstract models (inspection, AOT compilation)
                return jax.ShapeDtypeStruct(x.shape, dtype, sharding=getattr(x, "sharding", None))
            return x.astype(dtype)

        frozen_state = jax.tree.map(cast, frozen_state)
    return graphdef, train_state, frozen_state


def count_params(state) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(state))
