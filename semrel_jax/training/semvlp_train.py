"""SemVLP runs (``model.method='semvlp'``): pre-training or fine-tuning on the built-in scenes, then evaluation.

``training/train.py`` hands a SemVLP config here (one line); the rows are the built-in scenes or, with
``model.semvlp.data=records``, ``data.name``'s reader through ``data/semvlp_records.py``. The pieces are the
framework's: the config checks, the mesh and the sharding rules, the optimizer, Orbax checkpoints with their
resume policy, the metric writer, ``results.json``. What differs from the LSRM loop: the model
(``method/semvlp``), the step (one jit per mode, ``training/semvlp_step.py``), the mode schedule, and the
batches (``data/semvlp_scenes.py`` / ``semvlp_records.py``), whose batch ``n`` is a pure function of
``(seed, n)`` so a resumed run sees exactly the batches, masks and modes it would have seen.
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np
from flax import nnx

from semrel_jax import errors, recipe
from semrel_jax.convert import bert_family, hf
from semrel_jax.data import region_features, registry, semvlp_pairs, semvlp_records, semvlp_scenes
from semrel_jax.data import tokenizer as tokenizer_lib
from semrel_jax.evaluation import semvlp as semvlp_eval
from semrel_jax.method.semvlp import objectives, schedule
from semrel_jax.method.semvlp.model import SemVLP, SemVLPConfig
from semrel_jax.models import partitioning
from semrel_jax.models.bert import BertConfig
from semrel_jax.models.vit import ViTConfig
from semrel_jax.training import checkpoint as checkpoint_lib
from semrel_jax.training import cpu_cores
from semrel_jax.training import mesh as mesh_lib
from semrel_jax.training import metric_writers, partition
from semrel_jax.training import sharding as sharding_lib
from semrel_jax.training.semvlp_step import SemVLPSteps, init_train_state


def build_tokenizer(c: ml_collections.ConfigDict, workdir: str, train_source=None):
    """The BERT's WordPiece tokenizer (``model.semvlp.text.hf_dir``), or a word-level one saved in the run: the
    scenes' words, or (records) the lower-cased words of ``train_source``'s texts."""
    if c.model.semvlp.text.hf_dir:
        return tokenizer_lib.load(c.model.semvlp.text.hf_dir)
    path = os.path.join(workdir, "tokenizer")
    if os.path.isdir(path):
        return tokenizer_lib.load(path)
    if train_source is not None:
        tokenizer = semvlp_scenes.word_tokenizer(semvlp_records.text_words(train_source), lowercase=True)
    else:
        tokenizer = semvlp_scenes.word_tokenizer(semvlp_pairs.vocabulary())  # one vocabulary for every task
    if jax.process_index() == 0:
        tokenizer.save_pretrained(path)
    return tokenizer


def model_config(c: ml_collections.ConfigDict, vocab_size: int, *, region_dim: int | None = None,
                 num_answers: int | None = None) -> SemVLPConfig:
    """The model of ``c``; ``region_dim`` and ``num_answers`` default to the built-in scenes'."""
    s, enc = c.model.semvlp, c.model.encoders.vit
    if s.text.hf_dir:
        text = bert_family.bert_config_from_hf(hf.read_config(s.text.hf_dir))
    else:
        text = BertConfig(vocab_size=vocab_size, dim=s.text.dim, n_layers=s.text.n_layers, n_heads=s.text.n_heads,
                          mlp_dim=s.text.mlp_dim, max_positions=s.text.max_positions, remat=c.model.remat)
    vision = None  # regions: the scenes' object crops + boxes (semvlp_scenes.object_regions)
    if s.visual == "patches":
        vision = ViTConfig(
            image_size=enc.image_size, patch_size=enc.patch_size, width=enc.width, depth=enc.depth, heads=enc.heads,
            mlp_dim=enc.mlp_dim, act=enc.act, posemb=enc.posemb, pre_ln=False, class_token=False, patch_bias=True,
            remat=c.model.remat,
        )
    return SemVLPConfig(
        text=text, vision=vision, region_dim=region_dim or semvlp_scenes.region_dim(), cross_layers=s.cross_layers,
        num_answers=num_answers or len(semvlp_scenes.ANSWERS), num_visual_classes=semvlp_scenes.NUM_VISUAL_CLASSES,
        pool=s.pool,
    )


def build_model(c: ml_collections.ConfigDict, tokenizer, **sizes) -> SemVLP:
    """The model (``sizes``: ``model_config``'s ``region_dim`` / ``num_answers``), its BERT pretrained if asked
    (``text.hf_dir`` with ``text.pretrained``)."""
    model = SemVLP(model_config(c, len(tokenizer), **sizes), rngs=nnx.Rngs(c.seed))
    if c.model.semvlp.text.hf_dir and c.model.semvlp.text.pretrained:
        model.load_text_encoder(hf.load_bert(c.model.semvlp.text.hf_dir))
    return model


def _init_from(directory: str, state):
    """``state`` with the parameters of the latest checkpoint of the SemVLP run in ``directory``."""
    source = checkpoint_lib.Checkpointer(os.path.join(directory, "checkpoints"), save_every=1, keep=1)
    try:
        step = source.latest_step()
        if step is None:
            raise checkpoint_lib.CheckpointRestoreError(f"model.semvlp.init_from: no checkpoint in {directory!r}.")
        restored = source.restore(step, state)
    finally:
        source.close()
    return restored.params


def train_and_evaluate(c: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    t0 = time.time()
    recipe.prepare_config(c)
    cores = cpu_cores.confine(c.train.xla_cpu_cores)  # before anything starts JAX's backends
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    mesh = recipe.create_mesh(c)
    with jax.set_mesh(mesh), partitioning.axis_rules(c.mesh.rules):
        return _run(c, workdir, mesh, t0, cores)


class _Records:
    """``model.semvlp.data=records``: ``data.name``'s sources, its region features, its answer vocabulary."""

    def __init__(self, c: ml_collections.ConfigDict):
        s = c.model.semvlp
        self.kind = semvlp_records.rows_kind(c.data.name)
        self.train, self.eval = registry.build_sources(c)
        self.regions = region_features.open_store(s.region_features, c.data.on_bad_data) if s.region_features else None
        self.answers = ()
        if self.kind == "questions":
            self.answers = semvlp_records.answer_vocabulary(self.train, s.num_answers)
            if not self.answers:
                raise errors.DataError(f"{self.train!r}: no question has an answer: no VQA vocabulary to train on.")

    def sizes(self) -> dict:
        """``build_model``'s sizes: the region width of the feature files, the answer vocabulary's size."""
        return {"region_dim": self.regions.feature_dim if self.regions is not None else None,
                "num_answers": len(self.answers) or None}

    def rows(self, c, split: str, tokenizer):
        enc, s = c.model.encoders.vit, c.model.semvlp
        return semvlp_records.build_rows(
            self.kind, tokenizer, self.train if split == "train" else self.eval, answers=self.answers,
            image_size=enc.image_size, patch_size=enc.patch_size, max_text_len=c.data.max_text_len,
            question_rate=s.question_rate, negative_rate=s.negative_rate, regions=self.regions,
        )


def _run(c, workdir, mesh, t0, cores_note=""):
    s, is_main = c.model.semvlp, jax.process_index() == 0
    records = _Records(c) if s.data == "records" else None
    tokenizer = build_tokenizer(c, workdir, records.train if records is not None else None)
    graphdef, params = nnx.split(build_model(c, tokenizer, **(records.sizes() if records else {})), nnx.Param)
    shardings, notes = sharding_lib.param_shardings(params, mesh, c.mesh.rules)
    params = jax.device_put(params, shardings)
    optimizer, _ = recipe.build_optimizer(c)
    state = init_train_state(params, optimizer, c.seed)
    if s.init_from:
        state = init_train_state(_init_from(s.init_from, state), optimizer, c.seed)
    masking = objectives.MaskingConfig(
        text_rate=s.text_mask_rate, visual_rate=s.visual_mask_rate, mask_token=tokenizer.mask_token_id,
        vocab_size=len(tokenizer), special_tokens=tuple(tokenizer.all_special_ids),
    )
    steps = SemVLPSteps(graphdef, optimizer, dict(s.weights), masking, cross=s.cross, task=s.task)
    pattern = schedule.parse_pattern(s.schedule, "model.semvlp.schedule")
    enc = c.model.encoders.vit
    scene_args = dict(image_size=enc.image_size, patch_size=enc.patch_size, max_text_len=c.data.max_text_len,
                      question_rate=s.question_rate, negative_rate=s.negative_rate, visual=s.visual)

    def rows(split):  # scene rows (pre-training, VQA, retrieval) or statement/image-pair rows (NLVR2-style)
        if records is not None:
            return records.rows(c, split, tokenizer)
        scenes = semvlp_scenes.SceneBatches(split, tokenizer, **scene_args)
        return semvlp_pairs.PairBatches(scenes) if s.task == "nlvr2" else scenes

    config_json = c.to_json_best_effort(indent=2)
    checkpointer = checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), save_every=c.train.checkpoint_every, keep=c.train.keep_checkpoints,
        keep_every=c.train.keep_every,
    )
    try:
        state, start, _ = checkpoint_lib.restore_latest(checkpointer, state, c, workdir, is_main)
        if is_main:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(config_json)
        writer = metric_writers.MetricWriter(workdir, total_steps=c.train.num_steps, start_step=start, enabled=is_main)
        writer.log(f"semvlp: {partition.count_params(state.params):,} params, schedule {pattern}, start step {start}")
        if cores_note:
            writer.log(cores_note)
        for note in notes[:10]:
            writer.log(f"sharding: {note}")
        state = _train_loop(c, state, steps, pattern, rows("train"), mesh, start, checkpointer, writer, config_json)
    finally:
        checkpointer.close()
    train_seconds = time.time() - t0
    model = nnx.merge(graphdef, state.params)
    # records: at most the evaluation split's examples (the scenes have as many as asked)
    n_eval = min(s.eval_images, len(records.eval)) if records is not None else s.eval_images
    eval_args = dict(mode=s.eval_mode, seed=c.seed, batch_size=min(c.eval.batch_size, n_eval))
    if s.task == "nlvr2":
        results = semvlp_eval.evaluate_pairs(model, rows("validation"), num_pairs=n_eval, **eval_args)
    else:
        results = semvlp_eval.evaluate(model, rows("validation"), num_images=n_eval, **eval_args)
    results |= {"train_seconds": train_seconds, "wall_seconds": time.time() - t0}
    writer.write_scalars(c.train.num_steps, results, prefix="eval")
    writer.close()
    if is_main:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
        print(json.dumps(results, indent=2, sort_keys=True))
    return results


def _train_loop(c, state, steps, pattern, scenes, mesh, start, checkpointer, writer, config_json):
    batch_sharding, size = mesh_lib.batch_sharding(mesh), c.train.batch_size
    pending = []
    for step in range(start, c.train.num_steps):
        # this host's contiguous share of the global batch (the batch axis is split over hosts in order)
        rows = np.arange(step * size, (step + 1) * size).reshape(jax.process_count(), -1)[jax.process_index()]
        local = scenes.batch(rows, seed=c.seed)
        batch = jax.make_array_from_process_local_data(batch_sharding, local)
        state, metrics = steps(state, batch, schedule.mode_at(step, pattern))
        pending.append(metrics)
        done = step + 1
        if done % c.train.log_every == 0 or done == c.train.num_steps:
            summary = {k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]}
            pending = []
            writer.write_scalars(done, summary)
            writer.progress(done, {"loss": summary["loss"]})
        checkpointer.save(done, state, config_json, force=done == c.train.num_steps)
    return state
