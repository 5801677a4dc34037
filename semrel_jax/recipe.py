"""The one place a run is assembled from its config: data → tokenizer → featurizer → sharded model → step.

Training (``training/train.py``), ``evaluate``, ``export``, ``aot``, the benchmarks and the tests all build
through here; nothing else wires these parts together.

    filled = recipe.prepare_config(c)                     # resolve + validate (pure); log `filled`
    data = recipe.build_data(c)                           # sources, built once
    tokenizer = recipe.build_tokenizer(c, workdir, data)
    featurizer = recipe.build_featurizer(c, tokenizer)
    model = recipe.build_model(c, len(tokenizer), mesh)  # created already sharded
    train = recipe.build_train_state(c, model, mesh)      # optimizer state initialised into its shardings
    step = recipe.build_step(c, model, train, mesh, mask_start)
    # recipe.build(c, workdir) does all of it (and derive_schedule: train.epochs -> steps) in one call
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import ml_collections
import optax

from semrel_jax import config as config_lib
from semrel_jax.data import pipeline, prompts, tokenizer as tokenizer_lib
from semrel_jax.data import registry
from semrel_jax.data.object_cache import ObjectTokenCache
from semrel_jax.data.preprocess import ImagePreprocessor
from semrel_jax.data.records import RecordSource
from semrel_jax.models import partitioning
from semrel_jax.models.objects import ObjectTokenizer, ObjectTokens
from semrel_jax.training import mesh as mesh_lib
from semrel_jax.training import model_init
from semrel_jax.training import optimizer as optimizer_lib
from semrel_jax.training import sharding as sharding_lib
from semrel_jax.training import train_step as train_step_lib

ModelState = model_init.ModelState


def prepare_config(c: ml_collections.ConfigDict) -> list[str]:
    """Resolves (``hf_dir`` architectures, unset preprocessing) and validates ``c`` in place; returns what was filled."""
    return config_lib.prepare(c)


def single_device_mesh(device=None) -> jax.sharding.Mesh:
    """A 1 x 1 x 1 mesh (notebooks, tests, export)."""
    device = device or jax.devices()[0]
    return jax.make_mesh((1, 1, 1), mesh_lib.AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=[device])


def create_mesh(c: ml_collections.ConfigDict, devices=None) -> jax.sharding.Mesh:
    """The config's ``data x fsdp x tensor`` mesh over ``devices`` (default: all), batch checked against it."""
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_lib.mesh_shape(c.mesh.data, c.mesh.fsdp, c.mesh.tensor, len(devices))
    config_lib.check_batch_fits_mesh(c, dict(zip(mesh_lib.AXES, shape)))
    config_lib.check_attention_runs_on(c, devices[0].platform)
    return jax.make_mesh(shape, mesh_lib.AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(shape), devices=devices)


# ------------------------------------------------------------------------------------------------ data


@dataclasses.dataclass(frozen=True)
class Data:
    """The sources of a run: ``train`` and ``eval`` of ``data.name``, and the training mixture (or None)."""

    train: Any
    eval: Any
    mix: tuple[Any, float] | None

    @property
    def steps_per_epoch_divisor(self) -> float:
        """The fraction of every batch that comes from ``train`` (the rest is the mixed-in source)."""
        return 1.0 - (self.mix[1] if self.mix else 0.0)


def build_data(c: ml_collections.ConfigDict) -> Data:
    train, evaluation = registry.build_sources(c)
    if isinstance(train, RecordSource):  # the on-disk readers decode files; generated sets keep their own images
        train.cache_images(c.data.image_cache_mb << 20)
    return Data(train, evaluation, registry.mix_source(c))


def build_tokenizer(c: ml_collections.ConfigDict, workdir: str, data: Data | None = None):
    """``data.tokenizer`` (a HF directory), or a word-level one trained over the data and cached in the workdir.

    With several processes only process 0 may create the cached tokenizer (others would read it
    half-written); everyone loads it after a barrier.
    """
    path = c.data.tokenizer or os.path.join(workdir, "tokenizer")
    data = data or build_data(c)
    # also for a cached or given tokenizer: load_or_train checks that it covers this data's words
    words = registry.vocabulary(c, data.train, data.eval, data.mix and data.mix[0])
    words += prompts.template_words(c.data.prompt_format)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if jax.process_index() == 0:
            tokenizer_lib.load_or_train(path, words)
        multihost_utils.sync_global_devices("semrel_jax_tokenizer")
    return tokenizer_lib.load_or_train(path, words)


def load_tokenizer(c: ml_collections.ConfigDict, workdir: str):
    """The tokenizer a finished run used: ``data.tokenizer``, or the one it trained into ``<workdir>/tokenizer``."""
    path = c.data.tokenizer or os.path.join(workdir, "tokenizer")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No tokenizer at {path!r} (the run's data.tokenizer, or <workdir>/tokenizer).")
    return tokenizer_lib.load(path)


def tokenizer_vocab_size(c: ml_collections.ConfigDict) -> int:
    """The size of the tokenizer a run of ``c`` would use, without writing it anywhere."""
    data = build_data(c)
    words = registry.vocabulary(c, data.train, data.eval, data.mix and data.mix[0])
    words += prompts.template_words(c.data.prompt_format)
    if c.data.tokenizer:
        return len(tokenizer_lib.load_or_train(c.data.tokenizer, words))
    return len(tokenizer_lib.train_word_level(words))


def build_featurizer(c: ml_collections.ConfigDict, tokenizer) -> pipeline.VQAFeaturizer:
    preprocessors = {
        name: ImagePreprocessor(e.image_size, e.normalization, e.resample, e.crop, e.resize)
        for name, e in c.model.encoders.items()
    }
    caches = {name: ObjectTokenCache(preprocessors[name], ObjectTokenizer(e.max_objects), c.data.object_token_cache)
              for name, e in object_towers(c).items()}
    return pipeline.VQAFeaturizer(tokenizer, preprocessors, c.data.max_text_len, c.data.prompt_format,
                                  c.eval.answer_prefix, caches)


def object_towers(c: ml_collections.ConfigDict) -> dict:
    """The encoders whose training batches carry ``ObjectTokens`` in place of pixels (``data.object_token_cache``)."""
    if not c.data.object_token_cache:
        return {}
    return {name: e for name, e in c.model.encoders.items() if e.tokens == "objects"}


# ----------------------------------------------------------------------------------------------- model


def build_model(c: ml_collections.ConfigDict, vocab_size: int, mesh=None, *, abstract: bool = False) -> ModelState:
    """The model split into trainable and frozen state, created already sharded over ``mesh`` (default: one device).

    ``abstract``: ShapeDtypeStructs carrying their shardings (AOT compilation, inspection); nothing allocated
    and no weight file read.
    """
    mesh = mesh if mesh is not None else single_device_mesh()
    return model_init.create_model_state(c, vocab_size, mesh, abstract=abstract)


def build_module(c: ml_collections.ConfigDict, vocab_size: int, mesh=None):
    """The model as one NNX module (``VisionLanguageModel``) with the run's weights, for notebooks and tests."""
    from flax import nnx

    model = build_model(c, vocab_size, mesh)
    return nnx.merge(model.graphdef, model.params, model.frozen)


# ------------------------------------------------------------------------------------------ train state


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """The optimizer, the learning-rate schedule, the train state and the shardings the step pins."""

    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    state: Any  # train_step.TrainState (arrays, or ShapeDtypeStructs when abstract)
    state_sharding: Any
    frozen: Any
    frozen_sharding: Any


def build_optimizer(c: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    return optimizer_lib.make_optimizer(c.train), optimizer_lib.schedule_for(c.train)


def build_train_state(
    c: ml_collections.ConfigDict, model: ModelState, mesh, *, abstract: bool = False,
    optimizer: optax.GradientTransformation | None = None,
) -> TrainSetup:
    """The train state initialised straight into its shardings: the optimizer state never exists unsharded.

    ``optimizer``: another optimizer than the config's AdamW (tests compare gradients through plain SGD).
    """
    default, schedule = build_optimizer(c)
    optimizer = optimizer or default
    init = functools.partial(train_step_lib.init_train_state, optimizer=optimizer, seed=c.seed)
    abstract_state = jax.eval_shape(init, model.params)
    replicated = mesh_lib.replicated(mesh)
    state_sharding = train_step_lib.TrainState(
        step=replicated,
        params=model.param_shardings,
        opt_state=sharding_lib.like_params(abstract_state.opt_state, model.params, model.param_shardings, mesh),
        rng=replicated,
    )
    if abstract:
        state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, state_sharding)
    else:
        state = jax.jit(init, out_shardings=state_sharding)(model.params)
    return TrainSetup(optimizer, schedule, state, state_sharding, model.frozen, model.frozen_shardings)


def build_step(
    c: ml_collections.ConfigDict, model: ModelState, train: TrainSetup, mesh, mask_start: int, *, donate: bool = True
):
    """The train step, compiled once with explicit in/out shardings (the state donated).

    ``mask_start``: the first step with the ICA inheritance mask on (-1: never; ``mask_start_step``).
    The step is traced under the config's ``mesh.rules``, so activations shard by the same table as parameters.
    """
    step = functools.partial(
        train_step_lib.train_step,
        graphdef=model.graphdef,
        optimizer=train.optimizer,
        schedule=train.schedule,
        mask_start_step=mask_start,
        skip_nonfinite=True,  # never commit a NaN update; the caller's policy decides whether to go on
        accumulation_steps=c.train.grad_accum_steps,
        loss_chunk=c.train.loss_chunk,
        auxiliary_weights={name: c.train[f"{name}_weight"] for name in train_step_lib.AUXILIARY_OBJECTIVES},
    )

    def traced_under_the_rules(state, frozen, batch):
        with partitioning.axis_rules(c.mesh.rules):
            return step(state, frozen, batch)

    return jax.jit(
        traced_under_the_rules,
        in_shardings=(train.state_sharding, train.frozen_sharding, mesh_lib.batch_sharding(mesh, c.mesh.rules)),
        out_shardings=(train.state_sharding, mesh_lib.replicated(mesh)),
        donate_argnums=(0,) if donate else (),
    )


def build_held_out_loss(c: ml_collections.ConfigDict, model: ModelState, train: TrainSetup, mesh):
    """``fn(params, frozen, batch, mask_enabled)``: a batch's mean answer loss, jitted, nothing updated or donated
    (``train_step.held_out_loss``; a curriculum stage that ends on its held-out loss reads it)."""
    loss = functools.partial(train_step_lib.held_out_loss, graphdef=model.graphdef, loss_chunk=c.train.loss_chunk)

    def traced_under_the_rules(params, frozen, batch, mask_enabled):
        with partitioning.axis_rules(c.mesh.rules):
            return loss(params, frozen, batch, mask_enabled)

    return jax.jit(
        traced_under_the_rules,
        in_shardings=(train.state_sharding.params, train.frozen_sharding, mesh_lib.batch_sharding(mesh, c.mesh.rules),
                      mesh_lib.replicated(mesh)),
        out_shardings=mesh_lib.replicated(mesh),
    )


def steps_per_epoch(c: ml_collections.ConfigDict, data: Data) -> int:
    """Full batches per epoch of ``data.train``: ``len(train) // (batch · its share of the batch)``, as the release
    counts them (its loader drops the last partial batch). ``train.epochs`` and ``model.ica.start=epoch:N`` use it."""
    return optimizer_lib.steps_per_epoch(len(data.train), c.train.batch_size, data.steps_per_epoch_divisor)


def derive_schedule(c: ml_collections.ConfigDict, data: Data) -> list[str]:
    """``train.epochs`` / ``warmup_epochs`` / ``base_learning_rate`` -> steps and a rate, in place; what was derived."""
    return optimizer_lib.derive_schedule(c.train, steps_per_epoch(c, data))


def mask_start_step(c: ml_collections.ConfigDict, data: Data) -> int:
    """``model.ica.start`` in steps (``epoch:N`` is the first step of epoch N, ``steps_per_epoch``)."""
    return config_lib.parse_start(c.model.ica.start, steps_per_epoch(c, data))


def abstract_batch(c: ml_collections.ConfigDict, mesh) -> dict:
    """ShapeDtypeStructs of one global training batch (``examples_per_image = G > 1``: images ``[B/G]``, text ``[B/G, G, T]``)."""
    group = c.data.examples_per_image
    b, t = c.train.batch_size // group, c.data.max_text_len
    text = (b, group, t) if group > 1 else (b, t)
    sharding = mesh_lib.batch_sharding(mesh, c.mesh.rules)

    def sds(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    objects = object_towers(c)

    def vision_input(name, e):
        if name not in objects:
            return sds((b, e.image_size, e.image_size, 3), "float32")
        k, f = e.max_objects, ObjectTokenizer(e.max_objects).feature_dim(3)
        return ObjectTokens(sds((b, k, f), "float32"), sds((b, k, 2), "float32"), sds((b, k), "bool"))

    return {
        "images": {n: vision_input(n, e) for n, e in c.model.encoders.items()},
        "has_image": sds((b,), "int32"),
        "tokens": sds(text, "int32"),
        "targets": sds(text, "int32"),
        "loss_mask": sds(text, "float32"),
        "valid": sds(text, "bool"),
    }


# ------------------------------------------------------------------------------------------- the whole run


@dataclasses.dataclass
class Run:
    """Everything a training run builds from its config, each part built once."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    data: Data
    tokenizer: Any
    featurizer: pipeline.VQAFeaturizer
    model: ModelState
    train: TrainSetup
    derived: list[str] = dataclasses.field(default_factory=list)  # what derive_schedule filled (logged by the run)

    def step_fn(self, mask_start: int | None = None, *, donate: bool = True):
        """The jitted train step; ``mask_start`` defaults to the config's ``model.ica.start``."""
        if mask_start is None:
            mask_start = mask_start_step(self.config, self.data)
        return build_step(self.config, self.model, self.train, self.mesh, mask_start, donate=donate)

    def held_out_loss_fn(self):
        return build_held_out_loss(self.config, self.model, self.train, self.mesh)


def build(c: ml_collections.ConfigDict, workdir: str, mesh=None, *, optimizer=None) -> Run:
    """Prepares ``c`` (resolve + validate; a no-op when done) and builds the run on ``mesh`` (default: the config's)."""
    prepare_config(c)
    mesh = mesh if mesh is not None else create_mesh(c)
    data = build_data(c)
    derived = derive_schedule(c, data)  # before the optimizer: its schedule reads the derived steps
    tokenizer = build_tokenizer(c, workdir, data)
    featurizer = build_featurizer(c, tokenizer)
    model = build_model(c, len(tokenizer), mesh)
    train = build_train_state(c, model, mesh, optimizer=optimizer)
    return Run(c, mesh, data, tokenizer, featurizer, model, train, derived)
