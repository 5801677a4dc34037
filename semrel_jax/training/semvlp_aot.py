"""SemVLP's train step lowered ahead of time on abstract inputs (``python -m semrel_jax.aot``, ``model.method='semvlp'``).

Nothing is allocated: the model comes from ``nnx.eval_shape``, placed by the config's sharding rules, the
optimizer state is abstract, and the batch is shapes only. The step lowered is the schedule's first mode
(``--config.model.semvlp.schedule=t`` reports the two-stream step). Its visual tokens, for the region path,
are a detector's: ``NUM_REGIONS`` boxes of ``REGION_DIM``-wide features (LXMERT's 36 x 2048 Faster R-CNN
output), not the built-in scenes' six crops; the text is ``data.max_text_len`` tokens.

    lower, analytic_flops = lower_step(c, mesh)     # analytic_flops: per example
    compiled = lower().compile()
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from semrel_jax import recipe
from semrel_jax.convert import bert_family, hf
from semrel_jax.data import semvlp_pairs, semvlp_scenes
from semrel_jax.method.semvlp import objectives, schedule
from semrel_jax.method.semvlp.model import SemVLP
from semrel_jax.models import partitioning
from semrel_jax.models import abstract as abstract_init
from semrel_jax.training import mesh as mesh_lib
from semrel_jax.training import semvlp_train
from semrel_jax.training import sharding as sharding_lib
from semrel_jax.training.semvlp_step import SemVLPSteps, init_train_state

NUM_REGIONS = 36
REGION_DIM = 2048


def _vocab_size(c: ml_collections.ConfigDict) -> int:
    if c.model.semvlp.text.hf_dir:  # only config.json is read: no weights, no tokenizer needed
        return bert_family.bert_config_from_hf(hf.read_config(c.model.semvlp.text.hf_dir)).vocab_size
    return len(semvlp_scenes.word_tokenizer(semvlp_pairs.vocabulary()))


def abstract_batch(c: ml_collections.ConfigDict, model_config, mesh) -> dict:
    """ShapeDtypeStructs of one global pre-training batch, split over the mesh's batch axes."""
    b, t = c.train.batch_size, c.data.max_text_len
    sharding = mesh_lib.batch_sharding(mesh, c.mesh.rules)

    def spec(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    if model_config.vision is None:
        n = NUM_REGIONS
        visual = {"regions": spec((b, n, model_config.region_dim), jnp.float32), "boxes": spec((b, n, 4), jnp.float32)}
    else:
        v = model_config.vision
        n = (v.image_size // v.patch_size) ** 2
        visual = {"images": spec((b, v.image_size, v.image_size, v.channels), jnp.float32)}
    return visual | {
        "tokens": spec((b, t), jnp.int32), "text_valid": spec((b, t), jnp.bool_),
        "visual_valid": spec((b, n), jnp.bool_), "visual_labels": spec((b, n), jnp.int32),
        "matched": spec((b,), jnp.int32), "is_question": spec((b,), jnp.int32), "answer": spec((b,), jnp.int32),
    }


def model_config(c: ml_collections.ConfigDict):
    """The run's SemVLPConfig, with a detector's ``REGION_DIM``-wide features on the region path."""
    config = semvlp_train.model_config(c, _vocab_size(c))
    return dataclasses.replace(config, region_dim=REGION_DIM) if config.vision is None else config


def lower_step(c: ml_collections.ConfigDict, mesh):
    """``(lower, analytic_flops_per_example)``: ``lower()`` lowers the jitted step for ``mesh`` (call it under
    ``jax.set_mesh(mesh)``); the FLOPs are 6 x the tokens of one example x the matmul weights each token passes
    through (the shared layers; in two-stream mode also the K cross-attention blocks)."""
    s = c.model.semvlp
    config = model_config(c)
    graphdef, params = nnx.split(abstract_init.eval_shape(lambda: SemVLP(config, rngs=nnx.Rngs(0))), nnx.Param)
    shardings, _ = sharding_lib.param_shardings(params, mesh, c.mesh.rules)
    params = sharding_lib.with_shardings(params, shardings)
    optimizer, _ = recipe.build_optimizer(c)
    state = jax.eval_shape(lambda p: init_train_state(p, optimizer, c.seed), params)
    replicated = mesh_lib.replicated(mesh)
    state_shardings = dataclasses.replace(
        jax.tree.map(lambda _: replicated, state),
        params=shardings, opt_state=sharding_lib.like_params(state.opt_state, params, shardings, mesh),
    )
    state = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), state, state_shardings)
    masking = objectives.MaskingConfig(text_rate=s.text_mask_rate, visual_rate=s.visual_mask_rate,
                                       vocab_size=config.text.vocab_size)
    steps = SemVLPSteps(graphdef, optimizer, dict(s.weights), masking, cross=s.cross)
    batch = abstract_batch(c, config, mesh)
    mode = schedule.parse_pattern(s.schedule, "model.semvlp.schedule")[0]
    t = config.text
    attention = 4 * t.dim * t.dim  # q, k, v, out
    per_layer = attention + 2 * t.dim * t.mlp_dim  # + the FFN
    tokens = c.data.max_text_len + batch["visual_valid"].shape[1]
    # two-stream: each stream also passes through the top K cross-attention blocks (attention only, no FFN)
    per_token = per_layer * t.n_layers + (attention * s.cross_layers if mode == "two" else 0)
    flops = 6 * tokens * per_token

    def lower():
        with partitioning.axis_rules(c.mesh.rules):
            return steps.lower(state, batch, mode)

    return lower, float(flops)
