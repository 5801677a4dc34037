"""Streams a safetensors checkpoint into an NNX state's parameters (concrete or abstract), tensor by tensor.

Nothing is materialised whole: each HF tensor is a memory-mapped view, transformed (transpose,
reshape) and placed straight into its target sharding with ``jax.make_array_from_callback``, so each
device copies only its shard and the host holds at most one transformed tensor at a time.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from semrel_jax.convert.families import Path, Row
from semrel_jax.convert.safetensors_io import CheckpointError, SafetensorsCheckpoint


def to_ours(transform: str, a: np.ndarray) -> np.ndarray:
    """HF layout -> ours."""
    if transform == "identity":
        return a
    if transform == "linear":  # torch Linear weight [out, in] -> kernel [in, out]
        return a.T
    if transform == "conv_patch":  # Conv2d weight [width, C, p, p] -> kernel [C·p·p, width]
        return a.reshape(a.shape[0], -1).T
    if transform == "squeeze":  # DINOv2's [1, 1, w] / [1, N, w] parameters
        return a.reshape(a.shape[-2:] if a.ndim == 3 and a.shape[1] > 1 else a.shape[-1:])
    if transform == "linear_patch_ppc":  # Linear over (p, p, C) patches [w, p·p·3] -> kernel over (C, p, p)
        p = math.isqrt(a.shape[1] // 3)
        return a.reshape(a.shape[0], p, p, 3).transpose(0, 3, 1, 2).reshape(a.shape[0], -1).T
    raise ValueError(f"unknown transform {transform!r}")


def to_hf(transform: str, a: np.ndarray, hf_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Ours -> HF layout (the inverse of ``to_ours``; reshapes need the HF shape)."""
    if transform == "identity":
        return a
    if transform == "linear":
        return a.T
    if transform in ("conv_patch", "squeeze"):
        return (a.T if transform == "conv_patch" else a).reshape(hf_shape)
    if transform == "linear_patch_ppc":
        w, p = a.shape[1], math.isqrt(a.shape[0] // 3)
        return a.T.reshape(w, 3, p, p).transpose(0, 2, 3, 1).reshape(w, -1)
    raise ValueError(f"unknown transform {transform!r}")


def _names(names: Sequence[str], limit: int = 12) -> str:
    names = list(names)
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return str(names[:limit]) + more


def _resolve_prefix(rows: Sequence[Row], ckpt: SafetensorsCheckpoint, alternatives: Sequence[str]) -> list[Row]:
    """Checkpoints saved from a wrapper class carry an extra prefix (``dinov2.``, ``model.``): find it."""
    probe = rows[0][1]
    for alt in ("",) + tuple(alternatives):
        if alt + probe in ckpt:
            return [(ours, alt + hf, t) for ours, hf, t in rows]
    return list(rows)


def load_params(
    state: nnx.State,
    rows: Sequence[Row],
    ckpt: SafetensorsCheckpoint,
    *,
    ignored: Sequence[str] = (),
    prefixes: Sequence[str] = (),
    sharding_for: Callable[[Path], jax.sharding.Sharding | None] | None = None,
    allow_unmapped: bool = False,
    post: Callable[[Path, jax.Array], jax.Array] | None = None,
) -> nnx.State:
    """Returns ``state`` with every mapped parameter replaced by its checkpoint tensor.

    Args:
      state: the target ``nnx.State``, abstract (ShapeDtypeStructs from ``nnx.eval_shape``) or concrete:
        it gives shapes and dtypes.
      rows: the family's mapping table.
      ignored: regexes of checkpoint tensors that are deliberately not loaded.
      prefixes: extra name prefixes the checkpoint may carry.
      sharding_for: target sharding per parameter path (None: the default device). Each tensor is
        placed straight into it; no device ever holds more than its shard.
      allow_unmapped: keep parameters no row maps (adapters, LoRA factors) as they are in ``state``
        (abstract ones stay abstract: the caller fills them); otherwise any unmapped parameter is an error.
      post: applied to each loaded array as soon as it is placed, ``post(path, array)`` (e.g. the cast
        of frozen parameters to ``train.frozen_dtype``), so at most one tensor exists in the
        loading dtype at a time.

    Raises:
      CheckpointError naming every missing, unexpected or mis-shaped tensor.
    """
    rows = _resolve_prefix(rows, ckpt, prefixes)
    flat = list(nnx.to_flat_state(state))
    shapes = {path: v.get_value().shape for path, v in flat}
    by_path = {ours: (hf, t) for ours, hf, t in rows}
    unmapped = [path for path in shapes if path not in by_path]
    if unmapped and not allow_unmapped:
        raise CheckpointError(f"parameters with no checkpoint mapping: {_names('/'.join(map(str, p)) for p in unmapped)}")
    problems = []
    missing = [hf for _, hf, _ in rows if hf not in ckpt]
    if missing:
        problems.append(f"missing tensors: {_names(missing)}")
    consumed = {hf for _, hf, _ in rows}
    ignore = [re.compile(p) for p in ignored]
    unexpected = sorted(k for k in ckpt if k not in consumed and not any(r.match(k) for r in ignore))
    if unexpected:
        problems.append(f"unexpected tensors (not used by this model): {_names(unexpected)}")
    for ours, hf, t in rows:
        if ours not in shapes:
            problems.append(f"{hf}: the model has no parameter {'/'.join(map(str, ours))}")
        elif hf in ckpt:
            got = to_ours(t, np.broadcast_to(np.zeros((), np.uint8), ckpt.shape(hf))).shape  # no data touched
            if tuple(got) != tuple(shapes[ours]):
                problems.append(f"{hf}: shape {ckpt.shape(hf)} maps to {tuple(got)}, the model expects {shapes[ours]}")
    if problems:
        raise CheckpointError("checkpoint does not match the model:\n  " + "\n  ".join(problems))

    loaded = []
    for path, variable in flat:
        if path not in by_path:
            loaded.append((path, variable))
            continue
        hf, t = by_path[path]
        target = variable.get_value()
        array = to_ours(t, ckpt[hf])  # a view of the memory map
        sharding = sharding_for(path) if sharding_for else None
        if sharding is None:
            value = jnp.asarray(np.asarray(array).astype(target.dtype))
        else:
            value = jax.make_array_from_callback(
                target.shape, sharding, lambda index, a=array, d=target.dtype: np.asarray(a[index]).astype(d)
            )
        if post is not None:
            value = post(path, value)
        loaded.append((path, variable.replace(value)))
    logging.info("loaded %d tensors from %d in the checkpoint", len(rows), len(ckpt))
    return nnx.from_flat_state(loaded)
