"""Parameter shardings from rules: parameter path -> logical axes -> mesh axes.

Every parameter gets logical axis names from the first matching path rule (``LOGICAL_AXES``), and the
config's ``mesh.rules`` map each logical name to a mesh axis (or to nothing: replicated), MaxText
style. The defaults give FSDP over ``fsdp`` for every large weight (frozen towers and trainable parts
alike: the ``embed`` dimension) and tensor parallelism over ``tensor`` for attention heads, MLP hidden
units and the vocabulary. A dimension that the mesh axis does not divide stays unsharded (and is
reported), never an error at compile time.

    rules = {"embed": "fsdp", "mlp": "tensor", "heads": "tensor", "vocab": "tensor"}
    shardings = param_shardings(params, mesh, rules)     # a tree of NamedSharding like params
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from semrel_jax.training import partition

# (regex over the '/'-joined path, logical axes of the array's dimensions); first match wins.
LOGICAL_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"embed_tokens/embedding$", ("vocab", "embed")),
    (r"lm_head/kernel$", ("embed", "vocab")),
    (r"self_attn/(q|k|v)_proj/kernel$", ("embed", "heads")),
    (r"self_attn/(q|k|v)_proj/bias$", ("heads",)),
    (r"self_attn/o_proj/kernel$", ("heads", "embed")),
    (r"mlp/(gate|up)_proj/kernel$", ("embed", "mlp")),
    (r"mlp/down_proj/kernel$", ("mlp", "embed")),
    (r"/lora_a$", ("embed", None)),
    (r"/lora_b$", (None, "embed")),
    # vision towers (HF CLIP names)
    (r"layers/\d+/(q|k|v)_proj/kernel$", ("embed", "heads")),
    (r"layers/\d+/out_proj/kernel$", ("heads", "embed")),
    (r"layers/\d+/fc1/kernel$", ("embed", "mlp")),
    (r"layers/\d+/fc2/kernel$", ("mlp", "embed")),
    (r"patch_embedding/kernel$", (None, "embed")),
    (r"position_embedding$", (None, "embed")),
    # LSRM memory and projectors
    (r"memory_(key|value)_embedding$", (None, "embed")),
    (r"projectors/.*/kernel$", ("embed", None)),
)

DEFAULT_RULES = {"embed": "fsdp", "heads": "tensor", "mlp": "tensor", "vocab": "tensor"}


def logical_axes(path: str, ndim: int) -> tuple[str | None, ...]:
    for pattern, axes in LOGICAL_AXES:
        if re.search(pattern, path) and len(axes) == ndim:
            return axes
    return (None,) * ndim


def param_spec(path: str, shape: tuple[int, ...], mesh, rules: Mapping[str, str | None]) -> tuple[P, list[str]]:
    """The PartitionSpec of one parameter, and notes on dimensions left unsharded for divisibility."""
    spec, notes, used = [], [], set()
    for dim, name in zip(shape, logical_axes(path, len(shape))):
        axis = rules.get(name) if name else None
        if not axis or axis in used or mesh.shape[axis] == 1:
            spec.append(None)
            continue
        if dim % mesh.shape[axis]:
            notes.append(f"{path}: dim {dim} ({name}) not divisible by mesh.{axis}={mesh.shape[axis]}; replicated")
            spec.append(None)
            continue
        spec.append(axis)
        used.add(axis)
    return P(*spec), notes


def param_shardings(tree, mesh, rules: Mapping[str, str | None] = DEFAULT_RULES):
    """NamedShardings for every leaf of an nnx.State (or any pytree of arrays / ShapeDtypeStructs)."""
    notes: list[str] = []

    def one(path, leaf):
        name = partition.path_string(path).removesuffix("/.value")  # nnx Variables flatten to '<path>/.value'
        spec, why = param_spec(name, tuple(leaf.shape), mesh, rules)
        notes.extend(why)
        return NamedSharding(mesh, spec)

    shardings = jax.tree_util.tree_map_with_path(one, tree)
    return shardings, notes


def per_device_bytes(tree) -> dict[str, int]:
    """Bytes each device holds of ``tree`` (sharded arrays count their shard only)."""
    totals: dict[str, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            key = str(shard.device)
            totals[key] = totals.get(key, 0) + int(np.prod(shard.data.shape)) * shard.data.dtype.itemsize
    return totals


def like_params(opt_state, params, param_sharding_tree, mesh):
    """Shardings of optimizer state: moments shaped like the params follow them; the rest is replicated.

    optax states (adamw's ``mu``/``nu``) contain subtrees with the params' structure; those are matched
    by structure, anything else (counts, schedules) is replicated.
    """
    params_def = jax.tree.structure(params)
    replicated = NamedSharding(mesh, P())

    def walk(node):
        try:
            if jax.tree.structure(node) == params_def:
                return param_sharding_tree
        except Exception:  # noqa: BLE001 - not a tree of the params' shape
            pass
        if isinstance(node, tuple) and hasattr(node, "_fields"):  # NamedTuple optimizer states
            return type(node)(*(walk(child) for child in node))
        if isinstance(node, (tuple, list)):
            return type(node)(walk(child) for child in node)
        return jax.tree.map(lambda _: replicated, node)

    return walk(opt_state)
