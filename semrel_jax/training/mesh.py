"""Device mesh and the shardings of the train step.

Axes are ``('data', 'fsdp', 'tensor')``; one axis may be -1 (fill with the remaining devices). The
mesh uses ``AxisType.Auto``: the train step pins the shardings of its inputs and outputs explicitly
(``in_shardings``/``out_shardings``: parameters, optimizer state and batch) and the compiler propagates
the rest, guided by a few logical sharding constraints on the key activations in the model code
(block outputs, q/k, MLP hidden units, logits: ``semrel_jax.models.partitioning.constrain``). Parameters
and activations map logical axes to these mesh axes through one rules table (``partitioning.DEFAULT_RULES``
updated by ``config.mesh.rules``; the batch follows its ``batch`` rule, ``data × fsdp`` by default). One
device is a 1×1×1 mesh and takes the same path.
"""

from __future__ import annotations

import math

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from semrel_jax.models import partitioning

AXES = partitioning.MESH_AXES  # ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the default 'batch' rule


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    shape = [data, fsdp, tensor]
    fixed = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % fixed:
            raise ValueError(f"Mesh {shape}: {num_devices} devices are not divisible by the fixed axes ({fixed}).")
        shape[shape.index(-1)] = num_devices // fixed
    if math.prod(shape) != num_devices:
        raise ValueError(f"Mesh {dict(zip(AXES, shape))} needs {math.prod(shape)} devices, but {num_devices} are present.")
    return tuple(shape)


def create_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> jax.sharding.Mesh:
    shape = mesh_shape(data, fsdp, tensor, jax.device_count())
    return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def batch_sharding(mesh, rules=None) -> NamedSharding:
    """Leading (batch) dimension split over the mesh axes of the ``batch`` rule (data × fsdp by default).

    ``rules``: overrides of the rules table (``config.mesh.rules``); None: those set by
    ``partitioning.axis_rules``, or the defaults.
    """
    table = partitioning.current_rules() if rules is None else partitioning.resolve_rules(rules)
    return NamedSharding(mesh, P(table["batch"] or None))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
