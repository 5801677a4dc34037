"""The model created already sharded: no device ever holds the whole model.

    state = create_model_state(c, vocab_size, mesh)          # ModelState: graphdef, params, frozen, shardings
    spec = create_model_state(c, vocab_size, mesh, abstract=True)   # ShapeDtypeStructs with shardings (AOT)

Steps: the model is built abstractly (``nnx.eval_shape``) and split into trainable and frozen parameters
(``train.trainable`` / ``train.frozen``, ``semrel_jax.training.partition``); every parameter gets its
sharding from the rules (``semrel_jax.training.sharding``); the random initialisation runs as one jit
whose ``out_shardings`` are those shardings (trainable parameters in ``param_dtype``, frozen ones cast
to ``train.frozen_dtype`` inside it), so each device computes and keeps only its shards; then the
converted Hugging Face weights the config names are streamed in tensor by tensor, each placed onto its
own sharding (and cast if frozen) as it is read. Parameters a checkpoint fills are left out of the
random initialisation altogether.

On a one-device mesh the model is simply initialised eagerly on that device (fast: JAX caches the
per-operation executables across models). On several devices, the initial values are bitwise those of the eager ``VisionLanguageModel(config, rngs=nnx.Rngs(params=
seed))`` (what ``training/train.py`` ``build_split_model`` builds): jitting the initialiser as it is
would not give them, because XLA simplifies across operations that eager execution runs one at a time
(``0.02 * normal(...)`` becomes ``0.0283 * erfinv(...)``: same distribution, different last bits). So the
traced initialiser is replayed equation by equation inside the jit with every floating-point value
passed between equations (and every floating-point constant) behind ``lax.optimization_barrier``: each
equation is compiled as it would be on its own, as in eager mode, while the program still runs as one
sharded jit (threefry random bits do not depend on the sharding).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax import lax
from jax.extend import core as jax_core

from semrel_jax import config as config_lib
from semrel_jax.convert import pretrained
from semrel_jax.method.vlm import VisionLanguageModel
from semrel_jax.models import abstract as abstract_init
from semrel_jax.training import partition, sharding as sharding_lib


@dataclasses.dataclass
class ModelState:
    """A model split for training, placed on a mesh (or abstract: ShapeDtypeStructs carrying shardings)."""

    config: Any  # the typed VLMConfig the model was built from
    graphdef: Any  # nnx.GraphDef: nnx.merge(graphdef, params, frozen) is the model
    params: nnx.State  # trainable parameters, in param_dtype
    frozen: nnx.State  # the rest, floating ones in train.frozen_dtype
    param_shardings: Any  # NamedShardings, a tree like params (what the train step pins)
    frozen_shardings: Any  # NamedShardings, a tree like frozen
    notes: list[str]  # dimensions left unsharded (divisibility) and the pretrained sources loaded


def create_model_state(
    c: ml_collections.ConfigDict, vocab_size: int, mesh: jax.sharding.Mesh, *, abstract: bool = False
) -> ModelState:
    """The config's model, initialised (and its pretrained weights loaded) straight into its shardings on ``mesh``.

    ``abstract``: ShapeDtypeStructs carrying their shardings instead of arrays; nothing is allocated and no
    weight file is read. Raises ``sharding.UnmatchedParameterError`` if a parameter has no sharding rule.
    """
    model_config = config_lib.model_config(c, vocab_size)

    def build():
        return VisionLanguageModel(model_config, rngs=nnx.Rngs(params=c.seed))

    abstract_model = abstract_init.eval_shape(build)
    graphdef, params, frozen = partition.split_trainable(
        abstract_model, c.train.trainable, c.train.frozen, c.train.frozen_dtype
    )
    rules = sharding_lib.rules_from_config(c)
    param_shardings, notes = sharding_lib.param_shardings(params, mesh, rules)
    frozen_shardings, frozen_notes = sharding_lib.param_shardings(frozen, mesh, rules)
    notes = notes + frozen_notes
    if abstract:
        return ModelState(
            model_config,
            graphdef,
            sharding_lib.with_shardings(params, param_shardings),
            sharding_lib.with_shardings(frozen, frozen_shardings),
            param_shardings,
            frozen_shardings,
            notes,
        )

    # Per path: the final abstract value (dtype after the frozen cast) and its sharding.
    targets: dict[tuple, tuple[jax.ShapeDtypeStruct, jax.sharding.Sharding]] = {}
    frozen_paths = set()
    for state, shardings, is_frozen in ((params, param_shardings, False), (frozen, frozen_shardings, True)):
        for (path, variable), (_, sharding) in zip(nnx.to_flat_state(state), nnx.to_flat_state(shardings)):
            targets[tuple(path)] = (variable.get_value(), _unwrap(sharding))
            if is_frozen:
                frozen_paths.add(tuple(path))

    def finish(path, x):
        """The frozen cast, exactly ``partition.split_trainable``'s."""
        dtype = targets[path][0].dtype
        return x.astype(dtype) if path in frozen_paths and jnp.issubdtype(x.dtype, jnp.floating) else x

    loaded_paths = pretrained.pretrained_paths(abstract_model, c)
    order = [tuple(path) for path, _ in nnx.to_flat_state(nnx.state(abstract_model))]
    wanted = [i for i, path in enumerate(order) if path not in loaded_paths]

    def init_values():
        return [v.get_value() for _, v in nnx.to_flat_state(nnx.state(build()))]

    if mesh.size == 1:
        # One device holds everything anyway: the eager init, whose per-operation executables JAX caches
        # across models (the replayed jit below is compiled anew for every model: ~8 s for the tiny config).
        device = mesh.devices.flat[0]
        with jax.default_device(device):
            eager = init_values()
        values = {order[i]: jax.device_put(finish(order[i], eager[i]), targets[order[i]][1]) for i in wanted}
    else:
        closed = jax.make_jaxpr(init_values)()

        def initialise():
            values = replay_like_eager(closed, wanted)
            return [finish(order[i], x) for i, x in zip(wanted, values)]

        init = jax.jit(initialise, out_shardings=[targets[order[i]][1] for i in wanted])
        values = dict(zip((order[i] for i in wanted), init()))
    arrays, lines = pretrained.load_pretrained_arrays(
        abstract_model, c, sharding_for=lambda path: targets[tuple(path)][1], post=finish
    )
    values.update(arrays)

    def fill(state):
        return nnx.from_flat_state([(p, v.replace(values[tuple(p)])) for p, v in nnx.to_flat_state(state)])

    return ModelState(
        model_config, graphdef, fill(params), fill(frozen), param_shardings, frozen_shardings,
        notes + [f"pretrained: {line}" for line in lines],
    )


def _unwrap(x):
    return x.get_value() if isinstance(x, nnx.Variable) else x


def _is_float(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.floating)


def replay_like_eager(closed: jax.extend.core.ClosedJaxpr, outputs: list[int]) -> list[jax.Array]:
    """Evaluates ``closed``'s outputs ``outputs`` (indices) equation by equation, with every floating-point
    value between equations and every floating-point constant behind ``lax.optimization_barrier``.

    Called under ``jax.jit``, each equation compiles as if alone (as eager execution runs it), so XLA
    cannot fold constants or reassociate across equations and the values are bitwise the eager ones.
    Equations none of the requested outputs need are skipped (the traced initialiser draws its random
    numbers from explicit keys and counters, so skipping changes no other value).
    """
    jaxpr = closed.jaxpr
    needed = {v for i in outputs for v in [jaxpr.outvars[i]] if isinstance(v, jax_core.Var)}
    live = []
    for eqn in reversed(jaxpr.eqns):
        if eqn.effects or any(v in needed for v in eqn.outvars):
            live.append(eqn)
            needed.update(v for v in eqn.invars if isinstance(v, jax_core.Var))
    live.reverse()

    def opaque(x):
        return lax.optimization_barrier(x) if _is_float(x.dtype) else x

    env = {v: opaque(c) for v, c in zip(jaxpr.constvars, closed.consts)}

    def read(v):
        if isinstance(v, jax_core.Literal):
            return opaque(jnp.asarray(v.val, v.aval.dtype)) if _is_float(v.aval.dtype) else v.val
        return env[v]

    for eqn in live:
        with eqn.ctx.manager:  # as jax.core.eval_jaxpr binds an equation
            outs = eqn.primitive.bind(*map(read, eqn.invars), **eqn.primitive.get_bind_params(eqn.params))
        outs = outs if eqn.primitive.multiple_results else [outs]
        for v, x in zip(eqn.outvars, outs):
            env[v] = opaque(x)
    return [read(jaxpr.outvars[i]) for i in outputs]
