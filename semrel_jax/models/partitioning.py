"""The one table of logical-axis rules, for parameters and activations alike (MaxText style).

Arrays name their dimensions by *logical* axes (``batch``, ``embed``, ``heads``, ``kv_heads``, ``mlp``,
``vocab``, or None for "never sharded"); the rules map each logical name to mesh axes of the
``('data', 'fsdp', 'tensor')`` mesh, ``''`` (or ``()``) meaning replicated:

    DEFAULT_RULES = {"batch": ("data", "fsdp"), "embed": "fsdp", "heads": "tensor", "kv_heads": "tensor",
                     "mlp": "tensor", "vocab": "tensor"}

``config.mesh.rules`` overrides entries of this table (``resolve_rules``); ``kv_heads`` follows ``heads``
unless it is given itself, so ``--config.mesh.rules.heads=''`` replicates the q/k/v projections *and*
the q/k activations. Parameters get their logical axes by path (``semrel_jax.training.sharding``);
activations by the model code, through ``constrain(x, axes)``, which reads the rules that the caller
set around tracing:

    with jax.set_mesh(mesh), partitioning.axis_rules(config.mesh.rules):
        step = jax.jit(...)   # traced here: constrain() uses these rules

Without ``axis_rules`` the defaults apply; without a mesh ``constrain`` is a no-op. The rules are read
at trace time: a function already traced (and cached by ``jax.jit``) under other rules keeps them.

One function, ``logical_to_spec``, turns logical axes into a ``PartitionSpec`` for both: a mesh axis of
size 1, one not in the mesh, or one that an earlier dimension already uses is dropped; a dimension the
remaining mesh axes do not divide stays unsharded (reported for parameters, never a compile error).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping, Sequence

import jax
from jax.sharding import PartitionSpec

Array = jax.Array
MeshAxes = tuple[str, ...]

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis or axes ('' or () = replicated)
DEFAULT_RULES: dict[str, str | tuple[str, ...]] = {
    "batch": ("data", "fsdp"),  # the leading dimension of inputs and activations
    "embed": "fsdp",  # the model width of weights (FSDP); activations keep it whole
    "heads": "tensor",  # attention heads (q, and o_proj's input)
    "kv_heads": "tensor",  # key/value heads (grouped-query attention); follows 'heads' unless given
    "mlp": "tensor",  # MLP hidden units
    "vocab": "tensor",  # vocabulary (embedding rows, logits)
}

# A logical axis the overrides do not name shards like its parent, when the overrides name the parent.
FOLLOWS = {"kv_heads": "heads"}


def _mesh_axes(name: str, value) -> MeshAxes:
    if value is None or value == "":
        return ()
    axes = (value,) if isinstance(value, str) else tuple(value)
    for axis in axes:
        if axis not in MESH_AXES:
            raise ValueError(f"mesh.rules.{name}: unknown mesh axis {axis!r}; expected '' or one of {MESH_AXES}")
    return tuple(a for a in axes if a)


def resolve_rules(overrides: Mapping[str, str | Sequence[str] | None] | None = None) -> dict[str, MeshAxes]:
    """The full table: ``DEFAULT_RULES`` updated by ``overrides`` (e.g. ``config.mesh.rules``), values as tuples.

    Raises ValueError for an unknown logical name or mesh axis.
    """
    if hasattr(overrides, "to_dict"):  # an ml_collections.ConfigDict (config.mesh.rules)
        overrides = overrides.to_dict()
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(DEFAULT_RULES))
    if unknown:
        raise ValueError(f"mesh.rules: unknown logical axes {unknown}; known: {tuple(DEFAULT_RULES)}")
    rules = {name: _mesh_axes(name, value) for name, value in DEFAULT_RULES.items()}
    for name, parent in FOLLOWS.items():
        if name not in overrides and parent in overrides:
            rules[name] = _mesh_axes(parent, overrides[parent])
    rules.update({name: _mesh_axes(name, value) for name, value in overrides.items()})
    return rules


_RULES: contextvars.ContextVar[dict[str, MeshAxes] | None] = contextvars.ContextVar("semrel_jax_axis_rules", default=None)


@contextlib.contextmanager
def axis_rules(rules: Mapping[str, str | Sequence[str] | None] | None) -> Iterator[dict[str, MeshAxes]]:
    """Sets the rules ``constrain`` (and anything else reading ``current_rules``) uses inside the block.

    ``rules``: overrides of ``DEFAULT_RULES`` (``config.mesh.rules``), resolved with ``resolve_rules``.
    """
    token = _RULES.set(resolve_rules(rules))
    try:
        yield _RULES.get()
    finally:
        _RULES.reset(token)


def current_rules() -> dict[str, MeshAxes]:
    """The rules set by the innermost ``axis_rules``, or the defaults."""
    rules = _RULES.get()
    return rules if rules is not None else resolve_rules()


def logical_to_spec(
    axes: Sequence[str | None],
    shape: Sequence[int],
    mesh_shape: Mapping[str, int],
    rules: Mapping[str, MeshAxes] | None = None,
) -> tuple[PartitionSpec, list[str]]:
    """The ``PartitionSpec`` of an array whose dimensions have logical ``axes``; and why dimensions stayed whole.

    ``rules``: resolved rules (default: ``current_rules()``). Mesh axes of size 1, absent from the mesh or
    already used by an earlier dimension are dropped; a dimension that the product of the remaining axes
    does not divide is left unsharded, with a note (``"dim 10 (heads) not divisible by mesh.tensor=4"``).
    """
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {tuple(axes)} do not match the array's shape {tuple(shape)}")
    rules = current_rules() if rules is None else rules
    spec, notes, used = [], [], set()
    for dim, name in zip(shape, axes):
        mesh_axes = tuple(
            a for a in (rules.get(name, ()) if name else ()) if mesh_shape.get(a, 1) > 1 and a not in used
        )
        if not mesh_axes:
            spec.append(None)
            continue
        total = math.prod(mesh_shape[a] for a in mesh_axes)
        if dim % total:
            notes.append(f"dim {dim} ({name}) not divisible by mesh.{'×'.join(mesh_axes)}={total}; replicated")
            spec.append(None)
            continue
        used.update(mesh_axes)
        spec.append(mesh_axes if len(mesh_axes) > 1 else mesh_axes[0])
    return PartitionSpec(*spec), notes


def constrain(x: Array, axes: Sequence[str | None]) -> Array:
    """Pins ``x``'s sharding by logical axis names when a mesh is set (``jax.set_mesh``); a no-op otherwise.

    The mesh axes come from ``current_rules()`` (the same table as the parameters'); a mesh axis that does
    not divide the dimension (or is already used) is left out, so the same model code runs on any mesh.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec, _ = logical_to_spec(axes, x.shape, dict(mesh.shape))
    return jax.lax.with_sharding_constraint(x, spec)
