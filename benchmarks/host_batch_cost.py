"""Host CPU time to read and featurize one training batch, for config variants side by side.

    python benchmarks/host_batch_cost.py --compare=objects@data.image_cache_mb=0,objects \\
      --config_overrides=data.name=llava_json,data.prompt_format=raw,data.train_file=D/train.json,\\
    data.eval_file=D/eval.json,data.image_root=D,model.encoders.vit.image_size=128,data.max_text_len=15

Each variant (``configs/vqa.py:<preset>[@key=value...]``, then ``--config_overrides`` for all) builds its training
source and featurizer as ``semrel_jax.main`` does (``recipe.build_data`` / ``build_featurizer``). A warm pass
reads every ``--warm_stride``-th example (the caches fill as in a run's first epoch); then rounds alternate the
variants, each reading ``--batches`` batches of examples at random indices (a shuffled stream) and featurizing them: CPU seconds of this
thread (``RUSAGE_THREAD``) per batch of ``train.batch_size``, median over rounds. The step, grain's own
per-element work and the batch stacking are not counted (``benchmarks/input_pipeline.py``,
``benchmarks/step_throughput.py``).
"""

from __future__ import annotations

import resource
import statistics
import sys
import tempfile

import numpy as np
from absl import app, flags

import step_throughput

_COMPARE = flags.DEFINE_list("compare", ["objects@data.image_cache_mb=0", "objects"], "Variants, side by side.")
_OVERRIDES = flags.DEFINE_list("config_overrides", [], "key=value for every variant.")
_WARM_STRIDE = flags.DEFINE_integer(
    "warm_stride", 1, "The warm pass reads every n-th example (a set whose images have n consecutive questions: n).")
_BATCHES = flags.DEFINE_integer("batches", 20, "Timed batches per variant and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds.")


def thread_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def build(variant: str, tokenizer_dir: str):
    from semrel_jax import recipe

    c = step_throughput.get_config(variant, _OVERRIDES.value)
    recipe.prepare_config(c)
    data = recipe.build_data(c)
    featurizer = recipe.build_featurizer(c, recipe.build_tokenizer(c, tokenizer_dir, data))
    return c, data.train, featurizer


def main(argv):
    del argv
    variants = {}
    for variant in _COMPARE.value:
        with tempfile.TemporaryDirectory() as tmp:
            c, source, featurizer = build(variant, tmp)
        warm = range(0, len(source), _WARM_STRIDE.value)
        start = thread_cpu_seconds()
        for i in warm:
            featurizer.train(source[i])
        print(f"{variant}: warm pass over {len(warm):,} examples, {thread_cpu_seconds() - start:.1f} CPU-s", flush=True)
        variants[variant] = (c.train.batch_size, source, featurizer, [])
    rng = np.random.default_rng(0)
    for _ in range(_ROUNDS.value):
        for batch_size, source, featurizer, times in variants.values():
            indices = rng.integers(0, len(source), (_BATCHES.value, batch_size))
            start = thread_cpu_seconds()
            for batch in indices:
                for i in batch:
                    featurizer.train(source[int(i)])
            times.append((thread_cpu_seconds() - start) / _BATCHES.value)
    print(f"{'variant':60s} {'CPU ms per batch (median of rounds)':>36s}  rounds")
    for variant, (batch_size, _, _, times) in variants.items():
        print(f"{variant:60s} {1e3 * statistics.median(times):36.1f}  "
              f"{', '.join(f'{1e3 * t:.1f}' for t in times)}  (batch {batch_size})")


if __name__ == "__main__":
    sys.argv[0] = "host_batch_cost"
    app.run(main)
