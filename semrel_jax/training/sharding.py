"""Parameter shardings: parameter path -> logical axes (here) -> mesh axes (the one rules table).

Every parameter gets logical axis names from the first path rule of ``LOGICAL_AXES`` whose regex matches
its '/'-joined path and whose length is its rank; a parameter that is deliberately never sharded (norm
scales, biases, small vectors and adapters) matches ``REPLICATED`` instead. Any other parameter is an
error naming its path (``UnmatchedParameterError``): a new module must say how it shards.

The logical names are mapped to mesh axes by the same table the activations use
(``semrel_jax.models.partitioning``: ``DEFAULT_RULES`` updated by ``config.mesh.rules``). The defaults
give FSDP over ``fsdp`` for every large weight (frozen towers and trainable parts alike: the ``embed``
dimension) and tensor parallelism over ``tensor`` for attention heads, MLP hidden units and the
vocabulary. A dimension that the mesh axis does not divide stays unsharded (and is reported in the
notes), never an error at compile time.

    rules = rules_from_config(c)                          # {"embed": ("fsdp",), "heads": ("tensor",), ...}
    shardings, notes = param_shardings(params, mesh, rules)  # a tree of NamedSharding like params

``semrel_jax.training.model_init.create_model_state`` builds the model directly into these shardings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from semrel_jax.models import partitioning
from semrel_jax.models.partitioning import resolve_rules
from semrel_jax.training import partition

# (regex over the '/'-joined path, logical axes of the array's dimensions); first match of the right rank wins.
LOGICAL_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"embed_tokens/embedding$", ("vocab", "embed")),
    (r"lm_head/kernel$", ("embed", "vocab")),
    (r"self_attn/q_proj/kernel$", ("embed", "heads")),
    (r"self_attn/(k|v)_proj/kernel$", ("embed", "kv_heads")),
    (r"self_attn/q_proj/bias$", ("heads",)),
    (r"self_attn/(k|v)_proj/bias$", ("kv_heads",)),
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
    # BERT (models/bert.py) and SemVLP (method/semvlp): embeddings, attention blocks (shared and cross), heads
    (r"word_embeddings/embedding$", ("vocab", "embed")),
    (r"(position|token_type)_embeddings/embedding$", (None, "embed")),
    (r"attention(/\d+)?/(q|k|v)_proj/kernel$", ("embed", "heads")),
    (r"attention(/\d+)?/out_proj/kernel$", ("heads", "embed")),
    (r"(visual|box)_projection/kernel$", (None, "embed")),
    (r"heads/mlm_bias$", ("vocab",)),
    (r"heads/(vqa|pair)_hidden/kernel$", ("embed", "mlp")),  # pair: [2·embed, 2·embed] (NLVR2-style head)
    (r"heads/(vqa|pair)_out/kernel$", ("mlp", None)),
    (r"(pooler|heads/(mlm_transform|visual_regression|visual_classifier|itm))/kernel$", ("embed", None)),
    # LSRM memory and projectors
    (r"memory_(key|value)_embedding$", (None, "embed")),
    (r"projectors/.*/kernel$", ("embed", None)),
    (r"slot_decoder/proj/kernel$", ("embed", None)),  # [d, cells² · channels] (method/reconstruction.py)
)

# Parameters that are replicated on purpose (checked after LOGICAL_AXES): vectors and small tables.
REPLICATED: tuple[str, ...] = (
    r"/bias$",  # every bias LOGICAL_AXES does not shard (ViT, projectors, o_proj, patch embedding)
    r"norm\d?/(weight|scale)$",  # RMSNorm / LayerNorm scales (LLM, q/k norms, ViT pre/post/block norms)
    r"/layer_scale[12]$",  # DINOv2 layer scale [width]
    r"(^|/)class_embedding$",  # [width]
    r"/diagonal$",  # SRProj's learnable diagonal [hidden]
    r"^modality_embedding$",  # [2, d]
    r"/relative_bias$",  # [(2·grid - 1)², heads]
    r"/distance_bias$",  # [4, heads]
    r"self_attn/pair_bias$",  # [pair_bias_features, heads] (LLM; model.prefix_distance_bias)
    r"/adapter/fc[12]/kernel$",  # bottleneck adapters [width, r] / [r, width], r ~ 12
)


class UnmatchedParameterError(ValueError):
    """A parameter whose path matches neither ``LOGICAL_AXES`` nor ``REPLICATED``."""


def rules_from_config(c) -> dict[str, tuple[str, ...]]:
    """The resolved rules table of a config (``DEFAULT_RULES`` updated by ``c.mesh.rules``)."""
    return resolve_rules(c.mesh.rules)


def logical_axes(path: str, ndim: int) -> tuple[str | None, ...]:
    """The logical axes of the parameter at ``path`` (rank ``ndim``); raises UnmatchedParameterError."""
    for pattern, axes in LOGICAL_AXES:
        if re.search(pattern, path) and len(axes) == ndim:
            return axes
    if any(re.search(pattern, path) for pattern in REPLICATED):
        return (None,) * ndim
    raise UnmatchedParameterError(_unmatched_message([(path, ndim)]))


def _unmatched_message(unmatched: list[tuple[str, int]]) -> str:
    names = ", ".join(f"{path} (rank {ndim})" for path, ndim in unmatched[:20])
    more = f" and {len(unmatched) - 20} more" if len(unmatched) > 20 else ""
    return (
        f"No sharding rule for parameter(s) {names}{more}. Add a (path regex, logical axes) rule to "
        "LOGICAL_AXES in semrel_jax/training/sharding.py, or list the path in REPLICATED there if it is "
        "small enough to be replicated on every device."
    )


def param_spec(
    path: str, shape: tuple[int, ...], mesh, rules: Mapping | None = None
) -> tuple[P, list[str]]:
    """The PartitionSpec of one parameter, and notes on dimensions left unsharded for divisibility.

    ``rules``: overrides of ``DEFAULT_RULES`` (or a resolved table); None: the defaults.
    """
    spec, notes = partitioning.logical_to_spec(
        logical_axes(path, len(shape)), shape, dict(mesh.shape), resolve_rules(rules)
    )
    return spec, [f"{path}: {note}" for note in notes]


def param_shardings(tree, mesh, rules: Mapping | None = None):
    """``(shardings, notes)``: a NamedSharding for every leaf of an nnx.State (or any pytree of arrays /
    ShapeDtypeStructs), and the notes on dimensions left unsharded.

    Raises UnmatchedParameterError naming every parameter that no rule covers.
    """
    rules = resolve_rules(rules)
    notes: list[str] = []
    unmatched: list[tuple[str, int]] = []

    def one(path, leaf):
        name = partition.path_string(path).removesuffix("/.value")  # nnx Variables flatten to '<path>/.value'
        try:
            spec, why = param_spec(name, tuple(leaf.shape), mesh, rules)
        except UnmatchedParameterError:
            unmatched.append((name, len(leaf.shape)))
            return NamedSharding(mesh, P())
        notes.extend(why)
        return NamedSharding(mesh, spec)

    shardings = jax.tree_util.tree_map_with_path(one, tree)
    if unmatched:
        raise UnmatchedParameterError(_unmatched_message(unmatched))
    return shardings, notes


def with_shardings(tree, shardings):
    """``tree``'s leaves as ``jax.ShapeDtypeStruct`` carrying ``shardings`` (abstract arrays for AOT)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def sharded_bytes(tree, shardings=None) -> int:
    """Bytes one device holds of ``tree`` when every leaf is laid out by its sharding (the largest shard
    of each leaf; ``shardings`` default to the leaves' own ``.sharding``). Nothing is read."""
    leaves = jax.tree.leaves(tree)
    shards = jax.tree.leaves(shardings) if shardings is not None else [leaf.sharding for leaf in leaves]
    return sum(
        math.prod(s.shard_shape(tuple(x.shape))) * np.dtype(x.dtype).itemsize for x, s in zip(leaves, shards)
    )


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
