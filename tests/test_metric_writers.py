"""The logged values of a training interval (``metric_writers.interval_summary``)."""

import time

import numpy as np

from semrel_jax.training import metric_writers


def _steps(n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        {"loss": np.float32(rng.uniform(0, 3)), "token_accuracy": np.float32(rng.uniform()),
         "answer_tokens": np.float32(rng.integers(1, 5)), "grad_norm": np.float32(rng.uniform(0, 10)),
         "learning_rate": np.float32(1e-3 * (i + 1) / n), "nonfinite": np.int32(i % 7 == 3),
         "alignment_loss": np.float32(rng.uniform())}
        for i in range(n)
    ]


def test_an_interval_is_the_mean_of_its_steps_with_the_last_learning_rate_and_the_count_of_bad_steps():
    steps = _steps(250)
    summary = metric_writers.interval_summary(steps)
    for name in ("loss", "token_accuracy", "answer_tokens", "grad_norm", "alignment_loss"):
        np.testing.assert_allclose(summary[name], np.mean([s[name] for s in steps]), rtol=1e-6)
    assert summary["learning_rate"] == np.float32(1e-3)
    assert summary["nonfinite_steps"] == 36  # steps 3, 10, ..., 248
    assert set(summary) == {"loss", "token_accuracy", "answer_tokens", "grad_norm", "learning_rate",
                            "nonfinite_steps", "alignment_loss"}


def test_an_interval_of_one_step_is_that_step():
    (step,) = _steps(1, seed=1)
    summary = metric_writers.interval_summary([step])
    assert summary["loss"] == step["loss"] and summary["learning_rate"] == step["learning_rate"]


def test_summarizing_costs_little_per_step():
    # merging one collection per step cost ~8 ms a step (eager JAX operations): 8 s for these 1,000 steps
    steps = _steps(1000)
    metric_writers.interval_summary(steps[:10])  # first-call tracing and caches
    start = time.process_time()
    metric_writers.interval_summary(steps)
    assert time.process_time() - start < 1.0
