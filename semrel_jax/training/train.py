"""``train_and_evaluate``: the whole run, from config to ``results.json``.

Same code path on one CPU and on a pod: the step is one ``jax.jit`` with explicit in/out shardings
over a mesh, buffers donated; data arrive per host and become global arrays; checkpoints auto-resume
(from the newest checkpoint that restores; see ``restore_latest``).
"""

from __future__ import annotations

import functools
import json
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from semrel_jax import config as config_lib
from semrel_jax.convert import pretrained
from semrel_jax.data import pipeline, prompts, tokenizer as tokenizer_lib
from semrel_jax.data import sources as sources_lib
from semrel_jax.data.preprocess import ImagePreprocessor
from semrel_jax.evaluation import generate, scoring
from semrel_jax.method.vlm import VisionLanguageModel
from semrel_jax.training import checkpoint as checkpoint_lib
from semrel_jax.training import flops as flops_lib
from semrel_jax.training import mesh as mesh_lib
from semrel_jax.training import sharding as sharding_lib
from semrel_jax.training import metric_writers, optimizer as optimizer_lib, partition, preemption
from semrel_jax.training import train_step as train_step_lib

class NonFiniteLossError(FloatingPointError):
    pass


class CheckpointRestoreError(RuntimeError):
    """Checkpoints exist but none of them restores (the run refuses to silently start from scratch)."""


def build_sources(c: ml_collections.ConfigDict):
    return sources_lib.build_sources(c)


def build_tokenizer(c: ml_collections.ConfigDict, workdir: str, train_source=None, eval_source=None):
    """``data.tokenizer`` (a HF directory), or a word-level one trained over the data and cached in the workdir.

    With several processes only process 0 may create the cached tokenizer (others would read it
    half-written); everyone loads it after a barrier.
    """
    path = c.data.tokenizer or os.path.join(workdir, "tokenizer")
    if train_source is None:
        train_source, eval_source = build_sources(c)
    mix = sources_lib.build_mix_source(c)
    words = sources_lib.vocabulary(c, train_source, eval_source, mix and mix[0])
    words += prompts.template_words(c.data.prompt_format)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if jax.process_index() == 0:
            tokenizer_lib.load_or_train(path, words)
        multihost_utils.sync_global_devices("semrel_jax_tokenizer")
    return tokenizer_lib.load_or_train(path, words)


def build_featurizer(c: ml_collections.ConfigDict, tokenizer) -> pipeline.VQAFeaturizer:
    preprocessors = {
        name: ImagePreprocessor(e.image_size, e.normalization, e.resample, e.crop, e.resize)
        for name, e in c.model.encoders.items()
    }
    return pipeline.VQAFeaturizer(tokenizer, preprocessors, c.data.max_text_len, c.data.prompt_format)


def build_model(c: ml_collections.ConfigDict, vocab_size: int) -> VisionLanguageModel:
    """The model from random init, with the converted weights of every ``hf_dir`` the config names."""
    model = VisionLanguageModel(config_lib.model_config(c, vocab_size), rngs=nnx.Rngs(params=c.seed))
    pretrained.load_pretrained(model, c)
    return model


def build_split_model(c: ml_collections.ConfigDict, vocab_size: int, abstract: bool = False):
    """``(graphdef, trainable, frozen)`` exactly as training builds them (frozen ones in ``train.frozen_dtype``).

    Checkpoints hold only the trainable part; anything that rebuilds the full model from a checkpoint
    (``semrel_jax.export``) goes through here. ``abstract``: ShapeDtypeStructs instead of arrays (no
    initialisation, no weight files read).
    """
    if abstract:
        model_config = config_lib.model_config(c, vocab_size)
        model = nnx.eval_shape(lambda: VisionLanguageModel(model_config, rngs=nnx.Rngs(params=c.seed)))
    else:
        model = build_model(c, vocab_size)
    return partition.split_trainable(model, c.train.trainable, c.train.frozen, c.train.frozen_dtype)


def validate_checkpoint_keys(c: ml_collections.ConfigDict) -> None:
    keep_every = c.train.get("keep_every", 0)
    if not (isinstance(keep_every, int) and not isinstance(keep_every, bool) and keep_every >= 0):
        raise config_lib.ConfigError(f"config.train.keep_every: expected a non-negative integer, got {keep_every!r}")
    force = c.train.get("force_restart", False)
    if not isinstance(force, bool):
        raise config_lib.ConfigError(f"config.train.force_restart: expected True or False, got {force!r}")


# Keys added after checkpoints already existed, with the value that reproduces the older behaviour: a
# checkpoint whose saved config lacks one resumes under that value.
ADDED_DATA_KEYS = {"prepared_dir": "", "examples_per_image": 1, "caption_mix": 0.0, "caption_kinds": ["objects"]}
ADDED_ENCODER_KEYS = {"pool": 1, "relative_position_bias": False}
# Keys that change how the data is read, never what is read (a prepared copy holds the raw records).
READ_ONLY_DATA_KEYS = ("num_workers", "prefetch", "prepared_dir")


def _comparable(config: dict) -> dict:
    config = json.loads(json.dumps({k: config.get(k) for k in ("model", "data")}))
    data = {**ADDED_DATA_KEYS, **(config["data"] or {})}
    config["data"] = {k: v for k, v in data.items() if k not in READ_ONLY_DATA_KEYS}
    for encoder in ((config["model"] or {}).get("encoders") or {}).values():
        for key, value in ADDED_ENCODER_KEYS.items():
            encoder.setdefault(key, value)
    return config


def _check_compatible(saved: dict, current: ml_collections.ConfigDict, workdir: str) -> None:
    saved, current_dict = _comparable(saved), _comparable(json.loads(current.to_json_best_effort()))
    for section in ("model", "data"):
        if saved.get(section) != current_dict.get(section):
            raise ValueError(
                f"Checkpoints in {workdir!r} were written with a different config.{section}; refusing to resume "
                "from them. Use a new --workdir (or restore the original config)."
            )


def train_and_evaluate(c: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains, checkpoints, evaluates; returns the evaluation metrics (also in ``results.json``)."""
    config_lib.validate(c)
    validate_checkpoint_keys(c)
    workdir = os.path.abspath(workdir)
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    mesh = mesh_lib.create_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
    with jax.set_mesh(mesh):
        return _run(c, workdir, mesh, is_main)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _newest_readable_config(checkpoint_dir: str) -> dict | None:
    if not os.path.isdir(checkpoint_dir):
        return None
    checkpointer = checkpoint_lib.Checkpointer(checkpoint_dir, read_only=True)
    try:
        for step in reversed(checkpointer.all_steps()):
            try:
                return checkpointer.saved_config(step)
            except Exception:  # unreadable: the next older one decides
                continue
        return None
    finally:
        checkpointer.close()


RUN_OUTPUTS = ("checkpoints", "checkpoints.unreadable", "metrics.jsonl", "tensorboard", "config.json",
               "results.json", "predictions.json")


def force_restart(c: ml_collections.ConfigDict, workdir: str, is_main: bool) -> str | None:
    """``train.force_restart``: moves the previous run's outputs to ``<workdir>/replaced-<time>/`` (never deletes).

    Checkpoints written by this very config (``force_restart=True`` included) are kept and resumed, so
    that rerunning a preempted forced run continues it instead of starting over each time. Returns the
    folder the old outputs went to, or None.
    """
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    if not (os.path.isdir(checkpoint_dir) and os.listdir(checkpoint_dir)):
        return None
    if _newest_readable_config(checkpoint_dir) == json.loads(c.to_json_best_effort()):
        return None
    names = list(RUN_OUTPUTS) + ([] if c.data.tokenizer else ["tokenizer"])  # the workdir's cached tokenizer
    target = os.path.join(workdir, "replaced-" + time.strftime("%Y%m%d-%H%M%S"))
    if is_main:
        while os.path.exists(target):
            target += "+"
        os.makedirs(target)
        for name in names:
            if os.path.exists(os.path.join(workdir, name)):
                os.rename(os.path.join(workdir, name), os.path.join(target, name))
    _sync("semrel_jax_force_restart")
    logging.warning("train.force_restart: moved the previous run's checkpoints and logs to %s", target)
    return target


def restore_latest(checkpointer: checkpoint_lib.Checkpointer, state, c, workdir: str, is_main: bool = True):
    """Restores the newest checkpoint that can be read; returns ``(state, step, skipped)``.

    ``skipped`` lists ``(step, error)`` for newer checkpoints that could not be read (truncated or
    missing files); they are moved to ``checkpoints.unreadable/`` so their steps can be saved again.
    With no checkpoints, returns the given state at step 0. Checkpoints from another model/data config
    raise ValueError; checkpoints none of which restores raise CheckpointRestoreError.
    """
    skipped = []
    for step in reversed(checkpointer.all_steps()):
        try:
            saved = checkpointer.saved_config(step)
        except Exception as e:  # noqa: BLE001 - any read failure means: try the next older step
            skipped.append((step, e))
            logging.warning("Checkpoint step %d: its config cannot be read (%s: %s); trying an older one.",
                            step, type(e).__name__, _short(e))
            continue
        _check_compatible(saved, c, workdir)
        try:
            restored = checkpointer.restore(step, state)
        except Exception as e:  # noqa: BLE001
            skipped.append((step, e))
            logging.warning("Checkpoint step %d cannot be restored (%s: %s); trying an older one.",
                            step, type(e).__name__, _short(e))
            continue
        if skipped:
            if is_main:
                checkpointer.set_aside([s for s, _ in skipped])
            _sync("semrel_jax_set_aside")
            checkpointer.reload()
        return restored, step, skipped
    if skipped:
        details = "; ".join(f"step {s}: {type(e).__name__}: {_short(e)}" for s, e in skipped)
        raise CheckpointRestoreError(
            f"None of the checkpoints in {checkpointer.directory!r} can be restored ({details}). Refusing to "
            "start from scratch over them: fix or move them, use a new --workdir, or set "
            "train.force_restart=True (moves them aside)."
        )
    return state, 0, []


def _short(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."


def state_shardings(c, mesh, params, frozen, optimizer):
    """The config's sharding rules applied to the train state and the frozen parameters (arrays or abstract).

    Returns ``(abstract_state, state_sharding, frozen_sharding, notes)``.
    """
    rules = dict(c.mesh.get("rules", sharding_lib.DEFAULT_RULES))
    param_sharding, notes = sharding_lib.param_shardings(params, mesh, rules)
    frozen_sharding, frozen_notes = sharding_lib.param_shardings(frozen, mesh, rules)
    abstract = jax.eval_shape(lambda p: train_step_lib.init_train_state(p, optimizer, c.seed), params)
    replicated = mesh_lib.replicated(mesh)
    state_sharding = train_step_lib.TrainState(
        step=replicated,
        params=param_sharding,
        opt_state=sharding_lib.like_params(abstract.opt_state, params, param_sharding, mesh),
        rng=replicated,
    )
    return abstract, state_sharding, frozen_sharding, notes + frozen_notes


def shard_state(c, mesh, params, frozen, optimizer):
    """Places the train state and frozen parameters on ``mesh`` by the config's sharding rules.

    Returns ``(state, frozen, state_sharding, frozen_sharding, notes)``; the shardings are what the
    jitted step pins as its in/out shardings.
    """
    _, state_sharding, frozen_sharding, notes = state_shardings(c, mesh, params, frozen, optimizer)
    # Initialised straight into the shardings: the optimizer state never exists unsharded.
    init = jax.jit(lambda p: train_step_lib.init_train_state(p, optimizer, c.seed), out_shardings=state_sharding)
    state = init(jax.device_put(params, state_sharding.params))
    frozen = jax.device_put(frozen, frozen_sharding)
    return state, frozen, state_sharding, frozen_sharding, notes


def make_step_fn(
    graphdef, optimizer, schedule, mask_start: int, mesh, state_sharding, frozen_sharding, donate=True, accumulation_steps=1
):
    """The train step, compiled once with explicit in/out shardings (and the state donated)."""
    return jax.jit(
        functools.partial(
            train_step_lib.train_step,
            graphdef=graphdef,
            optimizer=optimizer,
            schedule=schedule,
            mask_start_step=mask_start,
            skip_nonfinite=True,  # never commit a NaN update; the caller's policy decides whether to go on
            accumulation_steps=accumulation_steps,
        ),
        in_shardings=(state_sharding, frozen_sharding, mesh_lib.batch_sharding(mesh)),
        out_shardings=(state_sharding, mesh_lib.replicated(mesh)),
        donate_argnums=(0,) if donate else (),
    )


def _check_batch_fits_mesh(c, mesh) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    rows = c.train.batch_size // c.data.get("examples_per_image", 1)  # the leading (sharded) batch dimension
    if rows % shards:
        raise config_lib.ConfigError(
            f"config.train.batch_size: {c.train.batch_size} examples are {rows} rows of the batch (images, with "
            f"data.examples_per_image={c.data.get('examples_per_image', 1)}), not divisible by the "
            f"{shards} data x fsdp shards of the mesh"
        )


def _run(c, workdir, mesh, is_main):
    t0 = time.time()
    _check_batch_fits_mesh(c, mesh)
    replaced = force_restart(c, workdir, is_main) if c.train.get("force_restart", False) else None
    train_source, eval_source = build_sources(c)
    tokenizer = build_tokenizer(c, workdir, train_source, eval_source)
    featurizer = build_featurizer(c, tokenizer)
    graphdef, params, frozen = build_split_model(c, len(tokenizer))
    optimizer = optimizer_lib.make_optimizer(c.train)
    schedule = optimizer_lib.learning_rate_schedule(c.train.learning_rate, c.train.warmup_steps, c.train.num_steps)
    state, frozen, state_sharding, frozen_sharding, sharding_notes = shard_state(c, mesh, params, frozen, optimizer)
    replicated, batch_sharding = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)

    config_json = c.to_json_best_effort(indent=2)
    checkpointer = checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        save_every=c.train.checkpoint_every,
        keep=c.train.keep_checkpoints,
        keep_every=c.train.get("keep_every", 0),
    )
    if c.train.checkpoint_frozen:
        checkpointer.frozen = frozen
    try:
        state, start_step, skipped = restore_latest(checkpointer, state, c, workdir, is_main)
    except BaseException:
        checkpointer.close()
        raise
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config_json)

    mix = sources_lib.build_mix_source(c)
    # an epoch of data.name: under a mixture only (1 - weight) of every batch comes from it
    steps_per_epoch = len(train_source) / (c.train.batch_size * (1.0 - (mix[1] if mix else 0.0)))
    mask_start = config_lib.parse_start(c.model.ica.start, steps_per_epoch)
    step_fn = make_step_fn(
        graphdef, optimizer, schedule, mask_start, mesh, state_sharding, frozen_sharding,
        accumulation_steps=c.train.grad_accum_steps,
    )
    dataset = pipeline.training_dataset(
        train_source, featurizer.train, c.train.batch_size, c.seed, jax.process_index(), jax.process_count(),
        examples_per_image=c.data.get("examples_per_image", 1), featurize_group=featurizer.train_group,
        mix=mix,
    )
    batches = pipeline.iterate(dataset, start_step, c.data.num_workers, c.data.prefetch)
    writer = metric_writers.MetricWriter(workdir, total_steps=c.train.num_steps, start_step=start_step, enabled=is_main)
    writer.log(
        f"semrel_jax: {partition.count_params(params) + partition.count_params(frozen):,} params "
        f"({partition.count_params(params):,} trainable), mesh {dict(mesh.shape)}, "
        f"{len(train_source):,} train examples, start step {start_step}"
    )
    device_bytes = sharding_lib.per_device_bytes((state, frozen))
    writer.log(
        f"per-device state bytes: max {max(device_bytes.values()):,}, min {min(device_bytes.values()):,} "
        f"over {len(device_bytes)} local devices (parameters, optimizer state, frozen parameters)"
    )
    for note in sharding_notes[:10]:
        writer.log(f"sharding: {note}")
    if replaced:
        writer.log(f"WARNING: train.force_restart: the previous run's checkpoints and logs are in {replaced}")
    for step, error in skipped:
        writer.log(
            f"WARNING: checkpoint step {step} could not be restored ({type(error).__name__}: {_short(error)}); "
            f"moved to {checkpointer.directory}.unreadable/ and resumed from step {start_step}"
        )
        writer.write_scalars(start_step, {"unreadable_step": step}, prefix="checkpoint_fallback")

    try:
        with preemption.PreemptionGuard() as guard:
            flops_per_example = flops_lib.count_for_run(c, len(tokenizer)).training
            state, last_step = _train_loop(
                c, state, frozen, step_fn, batches, batch_sharding, start_step, checkpointer, writer, config_json, guard,
                flops_per_example,
            )
    finally:
        # Whatever stops the loop (an error, Ctrl-C, a NaN), committed and in-flight saves complete.
        checkpointer.close()
    if last_step < c.train.num_steps:
        writer.log(f"preempted: checkpoint saved at step {last_step}; rerun the same command to resume")
        writer.close()
        return {"preempted_at_step": float(last_step)}
    train_seconds = time.time() - t0
    writer.log(f"training finished in {train_seconds:.1f}s")

    results = evaluate(
        c, graphdef, (state.params, frozen), featurizer, tokenizer, train_source, eval_source, workdir, mesh
    )
    results["wall_seconds"] = time.time() - t0
    results["train_seconds"] = train_seconds
    writer.write_scalars(c.train.num_steps, results, prefix="eval")
    writer.close()
    if is_main:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
        print(format_results(results))
    return results


def _train_loop(
    c, state, frozen, step_fn, batches, batch_sharding, start_step, checkpointer, writer, config_json, guard,
    flops_per_example=0.0,
):
    """Runs steps until ``num_steps`` or a preemption request; returns the state and the last finished step."""
    pending: list[dict] = []
    interval_start, interval_step = time.time(), start_step
    for step in range(start_step, c.train.num_steps):
        local = train_step_lib.device_batch(next(batches))
        batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(batch_sharding, x), local)
        state, metrics = step_fn(state, frozen, batch)
        pending.append(metrics)
        done = step + 1
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
            interval_start, interval_step = now, done
            writer.write_scalars(done, summary)
            writer.progress(done, {k: summary[k] for k in ("loss", "examples_per_second")})
        stopping = preemption.agreed(guard.requested) and done < c.train.num_steps
        if stopping and pending:
            _summarize(jax.device_get(pending), c.train.nonfinite, done, checkpointer)  # never save a NaN state
        checkpointer.save(done, state, config_json, force=done == c.train.num_steps or stopping)
        if stopping:
            return state, done
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
    summary = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0] if k != "nonfinite"}
    summary["nonfinite_steps"] = float(bad)
    return summary


def _global_eval_batch(inputs: dict, mesh) -> dict:
    """Every host holds the same evaluation batch: each contributes its slice to one global array."""
    count, index = jax.process_count(), jax.process_index()
    local = jax.tree.map(lambda x: x[index * len(x) // count : (index + 1) * len(x) // count], inputs)
    sharding = mesh_lib.batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def _fetch(ids) -> np.ndarray:
    if jax.process_count() == 1:
        return np.asarray(ids)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(ids, tiled=True))


def evaluate(c, graphdef, states, featurizer, tokenizer, train_source, eval_source, workdir, mesh=None) -> dict:
    """Generates every eval answer and scores it with the dataset's metric.

    With ``mesh`` (the training path) each batch is split over the batch axes of all devices of all hosts
    (the batch size rounded up to a multiple of them; padding rows are dropped), and the generated ids
    are gathered back on every host.
    """
    config_lib.validate_eval(c)
    temperature, top_p = float(c.eval.temperature), float(c.eval.top_p)
    # .get: configs saved before beam search existed have neither key.
    num_beams, length_penalty = int(c.eval.get("num_beams", 1)), float(c.eval.get("length_penalty", 1.0))
    predictions = []
    n = c.eval.num_examples or len(eval_source)
    batch_size = c.eval.batch_size
    if mesh is not None:
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        batch_size = -(-batch_size // shards) * shards
    for batch in pipeline.evaluation_batches(eval_source, featurizer.prompt, batch_size, n):
        inputs = {k: batch[k] for k in ("images", "has_image", "prompt", "prompt_valid")}
        if mesh is not None:
            inputs = _global_eval_batch(inputs, mesh)
        if num_beams > 1:
            ids = generate.beam_search(
                graphdef, states, inputs, c.eval.max_new_tokens, num_beams, length_penalty, eos_id=tokenizer.eos_token_id
            )
        else:
            key = jax.random.fold_in(jax.random.PRNGKey(c.seed), len(predictions)) if temperature > 0 else None
            ids = generate.generate(graphdef, states, inputs, c.eval.max_new_tokens, key, temperature, top_p)
        ids = _fetch(ids)
        texts = generate.decode_texts(tokenizer, ids, tuple(c.eval.stop_strings))
        for index, keep, text in zip(batch["index"], batch["example_valid"], texts):
            if keep:
                predictions.append({"index": int(index), **scoring.describe(eval_source, int(index)), "prediction": text})
    results = scoring.score(c.data.name, predictions, train_source, eval_source)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "predictions.json"), "w") as f:
            json.dump(predictions, f, indent=1, default=str)
    return results


def format_results(results: dict) -> str:
    """The console table: every metric, beside the majority baseline where the dataset has one."""
    skip = ("num_", "majority_baseline", "wall_seconds", "train_seconds", "preempted")
    lines = ["", f"{'metric':<28}{'model':>10}{'majority':>10}"]
    for key in sorted(k for k, v in results.items() if not isinstance(v, str) and not k.startswith(skip)):
        is_accuracy = key.startswith("accuracy")
        name = (key.replace("accuracy", "").lstrip("/") or "all") if is_accuracy else key
        base = results.get(key.replace("accuracy", "majority_baseline")) if is_accuracy else None
        lines.append(f"{name:<28}{results[key]:>10.3f}" + (f"{base:>10.3f}" if base is not None else f"{'-':>10}"))
    lines += [f"{k}: {v}" for k, v in results.items() if isinstance(v, str)]
    n = results.get("num_examples", results.get("num_images", 0))
    lines.append(f"examples: {int(n)}, wall: {results.get('wall_seconds', 0):.0f}s")
    return "\n".join(lines)
