"""Throughput of the Sort-of-CLEVR grain input pipeline alone, against what the demo train step consumes.

    python benchmarks/input_pipeline.py                          # demo config, workers 0 and 2
    python benchmarks/input_pipeline.py --workers=0,1,2 --batches=60 --rounds=2
    python benchmarks/input_pipeline.py --workers=0 --warm       # steady state: every scene drawn once before

All in one process, the phases alternating round by round:

  pipeline[W]  ``pipeline.training_dataset`` (generate the scene, draw it, resize/normalise, tokenize, batch)
               iterated exactly as training iterates it (``pipeline.iterate(dataset, step, W, prefetch)``: grain
               read threads = prefetch, W worker processes with ``mp_prefetch``); the first ``--skip`` batches
               (worker start-up, buffers filling) are not timed, then ``--batches`` batches are; examples/s.
  step         the demo train step alone on batches already on the device (``benchmarks/step_throughput.py``:
               the same build as ``semrel_jax.main``), median step -> examples/s it consumes.
  train_loop[W]  the two together as the training loop (``training/train.py``) runs them: next batch from the pipeline with W
               workers, ``make_array_from_process_local_data``, step, without blocking per step (async
               dispatch overlaps the step with the next batch's preparation), timed over ``--batches`` steps.

Headroom = pipeline[W] examples/s / step examples/s (the issue asks for >= 2x). On a machine with few cores the
pipeline and the step compete for the same cores, so train_loop[W] / step is the number that says whether
training is input-bound there.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_PRESET = flags.DEFINE_string("preset", "demo", "configs/vqa.py preset.")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "grain worker-process counts to measure.")
_BATCHES = flags.DEFINE_integer("batches", 40, "Timed batches per phase and round.")
_SKIP = flags.DEFINE_integer("skip", 5, "Untimed batches at the start of every pipeline iterator.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Rounds over all phases.")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps of the step-only phase per round.")
_WARM = flags.DEFINE_bool(
    "warm", False, "Draw every training scene once before timing (the source's scene cache as it is after the "
    "first visit of each image; a demo run visits each image ~14 times). Workers keep their own caches, so this "
    "affects workers=0 only.")


def pipeline_rate(dataset, workers: int, prefetch: int, batch_size: int, skip: int, n: int, start: int) -> float:
    from semrel_jax.data import pipeline

    it = pipeline.iterate(dataset, start, workers, prefetch)
    for _ in range(skip):
        next(it)
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    dt = time.perf_counter() - t0
    del it
    return n * batch_size / dt


def loop_rate(bench, dataset, workers: int, prefetch: int, skip: int, n: int, start: int) -> float:
    """Examples/s of pipeline + step together, as the training loop (``training/train.py``) runs them."""
    import jax

    from semrel_jax.data import pipeline
    from semrel_jax.training import mesh as mesh_lib, train_step as train_step_lib

    sharding = mesh_lib.batch_sharding(mesh_lib.create_mesh(1, 1, 1))
    it = pipeline.iterate(dataset, start, workers, prefetch)

    def step():
        local = train_step_lib.device_batch(next(it))
        batch = jax.make_array_from_process_local_data(sharding, local)
        bench.state, metrics = bench.step(bench.state, bench.frozen, batch)
        return metrics

    for _ in range(skip):
        metrics = step()
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    pending = [step() for _ in range(n)]
    jax.block_until_ready(pending)
    dt = time.perf_counter() - t0
    it.close()  # stops grain's worker processes
    return n * bench.config.train.batch_size / dt


def main(argv):
    del argv
    import jax

    import step_throughput
    from semrel_jax.data import pipeline
    from semrel_jax import recipe

    c = step_throughput.get_config(_PRESET.value)
    workers = [int(w) for w in _WORKERS.value]
    print(f"jax {jax.__version__}; preset {_PRESET.value}, batch {c.train.batch_size}, prefetch {c.data.prefetch}; "
          f"{step_throughput.machine_load()}")
    bench = step_throughput.build(_PRESET.value, c)
    bench.run(3, record=False)
    data = recipe.build_data(c)
    train_source = data.train
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = recipe.build_tokenizer(c, tmp, data)
    featurizer = recipe.build_featurizer(c, tokenizer)
    dataset = pipeline.training_dataset(train_source, featurizer.train, c.train.batch_size, c.seed)
    if _WARM.value:
        t0 = time.perf_counter()
        for i in range(train_source.num_images):
            train_source.scene(i)
        print(f"scene cache warmed: {train_source.num_images} images in {time.perf_counter() - t0:.1f}s")
    rates: dict[str, list[float]] = {}
    start = 0
    for r in range(_ROUNDS.value):
        for w in workers:
            rates.setdefault(f"pipeline[{w}]", []).append(
                pipeline_rate(dataset, w, c.data.prefetch, c.train.batch_size, _SKIP.value, _BATCHES.value, start))
            start += _SKIP.value + _BATCHES.value  # fresh batches each phase (no cache effects)
        bench.times = []
        bench.run(_STEPS.value)
        rates.setdefault("step", []).append(c.train.batch_size / statistics.median(bench.times))
        for w in workers:
            rates.setdefault(f"train_loop[{w}]", []).append(
                loop_rate(bench, dataset, w, c.data.prefetch, _SKIP.value, _BATCHES.value, start))
            start += _SKIP.value + _BATCHES.value
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()) + " examples/s")
    step = statistics.median(rates["step"])
    print(f"\n{'phase':<16}{'examples/s (median of rounds)':>32}{'/ step':>10}")
    for key, values in rates.items():
        value = statistics.median(values)
        print(f"{key:<16}{value:>32.0f}{value / step:>9.2f}x")
    print(f"\n{step_throughput.machine_load()}")


if __name__ == "__main__":
    app.run(main)
