"""``train_and_evaluate``: the whole run, from config to ``results.json``.

Same code path on one CPU and on a pod: the run is assembled by ``semrel_jax.recipe`` (the step is one
``jax.jit`` with explicit in/out shardings over a mesh, the state donated); data arrive per host and
become global arrays; checkpoints auto-resume (``training/checkpoint.py``: the newest checkpoint that
restores); evaluation is ``semrel_jax.evaluation.loop``.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections

from semrel_jax import recipe
from semrel_jax.data import curriculum as curriculum_lib
from semrel_jax.data import pipeline
from semrel_jax.data.records import RecordSource
from semrel_jax.errors import UserError
from semrel_jax.evaluation import loop as eval_loop
from semrel_jax.models import partitioning
from semrel_jax.training import checkpoint as checkpoint_lib
from semrel_jax.training import cpu_cores, curves
from semrel_jax.training import flops as flops_lib
from semrel_jax.training import mesh as mesh_lib
from semrel_jax.training import metric_writers, partition, preemption, semvlp_train
from semrel_jax.training import sharding as sharding_lib
from semrel_jax.training import train_step as train_step_lib


class NonFiniteLossError(UserError, FloatingPointError):
    """Loss or gradients became NaN/Inf (``train.nonfinite='stop'``); nothing after the last good step is saved."""


def train_and_evaluate(c: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains, checkpoints, evaluates; returns the evaluation metrics (also in ``results.json``)."""
    if c.model.method == "semvlp":  # its own model, step per mode and schedule: training/semvlp_train.py
        return semvlp_train.train_and_evaluate(c, workdir)
    t0 = time.time()
    filled = recipe.prepare_config(c)  # config errors before anything touches the workdir
    cores_note = cpu_cores.confine(c.train.xla_cpu_cores)  # before anything starts JAX's backends
    workdir = checkpoint_lib.prepare_workdir(workdir)  # made and writable (PathError / DiskError naming it)
    is_main = jax.process_index() == 0
    mesh = recipe.create_mesh(c)
    with jax.set_mesh(mesh), partitioning.axis_rules(c.mesh.rules):  # one table for parameters and activations
        return _run(c, workdir, mesh, is_main, t0, filled, cores_note)


def _run(c, workdir, mesh, is_main, t0, filled, cores_note=""):
    replaced = checkpoint_lib.force_restart(c, workdir, is_main) if c.train.force_restart else None
    run = recipe.build(c, workdir, mesh)
    data, featurizer, model = run.data, run.featurizer, run.model
    state, frozen = run.train.state, run.train.frozen

    config_json = c.to_json_best_effort(indent=2)
    checkpointer = checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        save_every=c.train.checkpoint_every,
        keep=c.train.keep_checkpoints,
        keep_every=c.train.keep_every,
    )
    if c.train.checkpoint_frozen:
        checkpointer.frozen = frozen
    try:
        state, start_step, skipped = checkpoint_lib.restore_latest(checkpointer, state, c, workdir, is_main)
    except BaseException:
        checkpointer.close()
        raise
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config_json)

    step_fn = run.step_fn()
    stages = [curriculum_lib.parse(spec) for spec in c.data.curriculum]
    progress = curriculum_lib.Progress.from_json(stages, checkpointer.saved_progress(start_step) if start_step else {})

    def batches_from(step):
        dataset = pipeline.training_dataset(
            data.train, featurizer.train, c.train.batch_size, c.seed, jax.process_index(), jax.process_count(),
            examples_per_image=c.data.examples_per_image, featurize_group=featurizer.train_group, mix=data.mix,
            curriculum=tuple(c.data.curriculum), stage_steps=progress.lengths,
        )
        return pipeline.iterate(dataset, step, c.data.num_workers, c.data.prefetch)

    batches = _Batches(batches_from, start_step)
    end_stages = _StageEnder(c, run, stages, progress, batches, mesh_lib.batch_sharding(mesh)) if stages else None
    writer = metric_writers.MetricWriter(workdir, total_steps=c.train.num_steps, start_step=start_step, enabled=is_main)
    params = state.params
    writer.log(
        f"semrel_jax: {partition.count_params(params) + partition.count_params(frozen):,} params "
        f"({partition.count_params(params):,} trainable), mesh {dict(mesh.shape)}, "
        f"{len(data.train):,} train examples, start step {start_step}"
    )
    for line in filled + run.derived:
        writer.log(f"config: {line}")
    if cores_note:
        writer.log(cores_note)
    if c.data.curriculum:
        writer.log(f"data.curriculum: {', '.join(c.data.curriculum)} (kinds:examples:steps[:loss]), then the full split")
        for i, steps in sorted(progress.ended.items()):
            writer.log(f"data.curriculum: stage {stages[i]} ended on its loss after {steps} steps (from the checkpoint)")
    device_bytes = sharding_lib.per_device_bytes((state, frozen))
    writer.log(
        f"per-device state bytes: max {max(device_bytes.values()):,}, min {min(device_bytes.values()):,} "
        f"over {len(device_bytes)} local devices (parameters, optimizer state, frozen parameters)"
    )
    for note in model.notes[:10]:
        writer.log(f"sharding: {note}")
    if replaced:
        writer.log(f"WARNING: train.force_restart: the previous run's checkpoints and logs are in {replaced}")
    for step, error in skipped:
        writer.log(
            f"WARNING: checkpoint step {step} could not be restored ({type(error).__name__}: "
            f"{checkpoint_lib._short(error)}); moved to {checkpointer.directory}.unreadable/ and resumed from step "
            f"{start_step}"
        )
        writer.write_scalars(start_step, {"unreadable_step": step}, prefix="checkpoint_fallback")

    try:
        with preemption.PreemptionGuard() as guard:
            flops_per_example = flops_lib.count_for_run(c, model.config).training
            def evaluate_during_training(step, state):
                out_dir = os.path.join(workdir, "evals", f"step_{step}")
                _evaluate_and_log(c, run, (state.params, frozen), out_dir, mesh, writer, step, c.train.eval_examples or None)

            state, last_step = _train_loop(
                c, state, frozen, step_fn, batches, mesh_lib.batch_sharding(mesh), start_step, checkpointer, writer,
                config_json, guard, flops_per_example, evaluate_during_training, end_stages,
            )
    finally:
        # Whatever stops the loop (an error, Ctrl-C, a NaN), committed and in-flight saves complete.
        checkpointer.close()
        batches.close()
    if last_step < c.train.num_steps:
        writer.log(f"preempted: checkpoint saved at step {last_step}; rerun the same command to resume")
        writer.close()
        return {"preempted_at_step": float(last_step)}
    train_seconds = time.time() - t0
    writer.log(f"training finished in {train_seconds:.1f}s")
    for name, cache in featurizer.object_caches.items():  # data/object_cache.py
        writer.log(f"object tokens of {name}: {len(cache):,} images kept, {cache.misses:,} tokenized on the host, "
                   f"{cache.hits:,} read from the cache")
    if isinstance(data.train, RecordSource):  # data.image_cache_mb
        images = data.train.image_cache
        writer.log(f"images of the training split: {len(images):,} kept ({images.bytes / 2**20:,.0f} MB of "
                   f"data.image_cache_mb={c.data.image_cache_mb:,}), {images.decoded:,} decoded, {images.hits:,} read "
                   "from the cache")
    if 0 < featurizer.longest < c.data.max_text_len:  # every step computes the padding up to max_text_len
        writer.log(f"text: the longest row was {featurizer.longest} tokens of data.max_text_len={c.data.max_text_len} "
                   "(a smaller data.max_text_len makes every step cheaper)")

    results = _evaluate_and_log(c, run, (state.params, frozen), workdir, mesh, writer, c.train.num_steps)
    results["wall_seconds"] = time.time() - t0
    results["train_seconds"] = train_seconds
    writer.close()
    if is_main:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
        curves.plot_training_curves(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "curves.png"))
        print(eval_loop.format_results(results))
    return results


def _evaluate_and_log(c, run, states, out_dir, mesh, writer, step, num_examples=None) -> dict:
    """Evaluates into ``out_dir`` (predictions, and the heatmaps of ``train.eval_samples`` examples in
    ``out_dir/explain``) and logs the metrics and those samples at ``step``."""
    os.makedirs(out_dir, exist_ok=True)
    results = eval_loop.evaluate(
        c, run.model.graphdef, states, run.featurizer, run.tokenizer, run.data, out_dir, mesh,
        num_examples=num_examples, explain=c.train.eval_samples,
    )
    writer.write_scalars(step, results, prefix="eval")
    gallery = os.path.join(out_dir, "explain")
    if c.train.eval_samples and os.path.exists(os.path.join(gallery, "samples.json")):  # none on multi-process runs
        writer.write_samples(step, gallery)
    return results


def _train_loop(
    c, state, frozen, step_fn, batches, batch_sharding, start_step, checkpointer, writer, config_json, guard,
    flops_per_example=0.0, evaluate=None, end_stages=None,
):
    """Runs steps until ``num_steps`` or a preemption request; returns the state and the last finished step.

    ``evaluate(step, state)`` runs every ``train.eval_every`` steps before the last (which the caller evaluates).
    ``end_stages`` (``_StageEnder``) runs at each logging step and may end the running curriculum stage.
    """
    pending: list[dict] = []
    interval_start, interval_step = time.time(), start_step
    for step in range(start_step, c.train.num_steps):
        local = train_step_lib.device_batch(next(batches))
        batch = jax.make_array_from_process_local_data(batch_sharding, local)
        state, metrics = step_fn(state, frozen, batch)
        pending.append(metrics)
        done = step + 1
        if step == start_step:  # the bar's rate and ETA start after the first step, which includes compilation
            writer.compiled(done, jax.block_until_ready(metrics)["loss"])
        if done % c.train.log_every == 0 or done == c.train.num_steps or checkpointer.due(done):
            # Also at checkpoint steps: the non-finite check runs before anything is saved.
            summary = _summarize(jax.device_get(pending), c.train.nonfinite, done, checkpointer)
            pending = []
            now = time.time()
            summary["examples_per_second"] = (done - interval_step) * c.train.batch_size / max(now - interval_start, 1e-9)
            summary["tokens_per_second"] = summary["examples_per_second"] * c.data.max_text_len  # padded text tokens
            if flops_per_example:  # model FLOPs (training/flops.py), per device, and MFU against the stated peak
                tflops = flops_per_example * summary["examples_per_second"] / jax.device_count() / 1e12
                summary["tflops_per_second_per_device"] = tflops
                if c.train.peak_tflops_per_device:
                    summary["mfu"] = tflops / c.train.peak_tflops_per_device
            if end_stages is not None:
                end_stages(done, interval_step, state, writer)
            interval_start, interval_step = now, done
            writer.write_scalars(done, summary)
            writer.progress(done, {k: summary[k] for k in ("loss", "examples_per_second")})
        stopping = preemption.agreed(guard.requested) and done < c.train.num_steps
        if stopping and pending:
            _summarize(jax.device_get(pending), c.train.nonfinite, done, checkpointer)  # never save a NaN state
        checkpointer.save(done, state, config_json, force=done == c.train.num_steps or stopping,
                          progress=end_stages.progress.to_json() if end_stages else None)
        if stopping:
            return state, done
        if evaluate is not None and c.train.eval_every and done % c.train.eval_every == 0 and done < c.train.num_steps:
            evaluate(done, state)
    return state, c.train.num_steps


def _summarize(metrics: list[dict], policy: str, step: int, checkpointer) -> dict[str, float]:
    """``metrics`` are those of steps ``step - len(metrics) + 1 .. step`` (1-based: step n ends with n done)."""
    bad = sum(int(m["nonfinite"]) for m in metrics)
    if bad and policy == "stop":
        first = step - len(metrics) + 1
        bad_steps = [first + i for i, m in enumerate(metrics) if int(m["nonfinite"])]
        last_good = checkpointer.latest_step()
        raise NonFiniteLossError(
            f"Non-finite loss or gradients at step {', '.join(map(str, bad_steps))} (update not applied, "
            f"nothing saved after it). Last checkpoint: step {last_good}; rerunning resumes from there. "
            "Lower train.learning_rate, or set train.nonfinite='skip' to skip such steps."
        )
    return metric_writers.interval_summary(metrics)


class _StageEnder:
    """Ends the running curriculum stage when the loss on its held-out examples (``curriculum.Subset(held_out=
    batch)``) is below its ``:loss``; ``batches`` then reopen at that step. The held-out batches are built at once,
    so that too few examples fail before training."""

    def __init__(self, c, run, stages, progress, batches, batch_sharding):
        self.run, self.stages, self.progress, self.batches = run, stages, progress, batches
        self.held_out, self.mask_start = {}, recipe.mask_start_step(c, run.data)
        for i, stage in enumerate(stages):
            if stage.until_loss is not None:
                subset = curriculum_lib.Subset(run.data.train, stage, held_out=c.train.batch_size)
                rows = [run.featurizer.train(subset[j]) for j in range(jax.process_index(), len(subset), jax.process_count())]
                local = train_step_lib.device_batch(pipeline.stack(rows))
                self.held_out[i] = jax.make_array_from_process_local_data(batch_sharding, local)
        self.loss_fn = run.held_out_loss_fn() if self.held_out else None

    def __call__(self, step: int, interval_start: int, state, writer) -> None:
        """After ``step`` (logged since ``interval_start``)."""
        i = self.progress.deciding(step, interval_start)
        if i is None:
            return
        mask_enabled = jnp.asarray(0 <= self.mask_start <= step)
        loss = float(self.loss_fn(state.params, self.run.train.frozen, self.held_out[i], mask_enabled))
        writer.write_scalars(step, {"held_out_loss": loss, "stage": i}, prefix="curriculum")
        if loss < self.stages[i].until_loss:
            self.progress.end(i, step)
            writer.log(f"data.curriculum: stage {self.stages[i]} ended on its held-out loss {loss:.4f} at step {step}")
            writer.write_scalars(step, {"stage_ended": i}, prefix="curriculum")
            self.batches.reopen(step)


class _Batches:
    """The training batches from a step on (``open_at(step)``: an iterator); reopened at a later step when the
    schedule changes (a curriculum stage ended on its loss)."""

    def __init__(self, open_at, step: int):
        self._open_at, self._it = open_at, open_at(step)

    def __next__(self):
        return next(self._it)

    def reopen(self, step: int) -> None:
        self.close()
        self._it = self._open_at(step)

    def close(self) -> None:
        # grain's workers and the shared-memory batches still queued are released now (not by a warning at exit)
        getattr(self._it, "close", lambda: None)()
