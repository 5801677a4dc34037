"""The arithmetic of ``benchmarks/soak.py``'s report, apart from the run so that it can be tested without training.

A sample is ``(seconds since start, rss_bytes)``; the training step of each sample is interpolated from the
``(time, step)`` rows the run writes to ``<workdir>/metrics.jsonl``.
"""

from __future__ import annotations

import json

import numpy as np

MIB = 2**20


def train_step_times(metrics_jsonl: str) -> tuple[np.ndarray, np.ndarray]:
    """(wall times [n], steps [n]) of the training rows of a run's metrics.jsonl, in order."""
    times, steps = [], []
    with open(metrics_jsonl) as f:
        for line in f:
            row = json.loads(line)
            if row.get("split") == "train":
                times.append(row["time"])
                steps.append(row["step"])
    return np.asarray(times, float), np.asarray(steps, float)


def steps_at(sample_times: np.ndarray, log_times: np.ndarray, log_steps: np.ndarray) -> np.ndarray:
    """The training step at each sample time [n], linear between logged steps; before the first log row the step
    is 0 (compilation, start-up) and after the last one it stays at the last step (final evaluation, exit)."""
    if len(log_times) == 0:
        return np.zeros(len(sample_times))
    return np.interp(sample_times, log_times, log_steps, left=0.0)


def slope_mib_per_1000_steps(steps: np.ndarray, rss_bytes: np.ndarray) -> float:
    """Least-squares slope of RSS over steps, in MiB per 1,000 steps (nan with fewer than 2 distinct steps)."""
    steps, rss = np.asarray(steps, float), np.asarray(rss_bytes, float)
    if len(np.unique(steps)) < 2:
        return float("nan")
    slope, _ = np.polyfit(steps, rss, 1)  # bytes per step
    return float(slope * 1000 / MIB)


def summarize(steps: np.ndarray, rss_bytes: np.ndarray, warmup_steps: int) -> dict[str, float]:
    """RSS at the end of warm-up (first sample at or after ``warmup_steps``), final and max RSS (MiB), and the
    slope of RSS over steps after warm-up, only over samples taken while steps advance (the last step's samples,
    the final evaluation and exit, would otherwise weigh on the fit at a single x)."""
    steps, rss = np.asarray(steps, float), np.asarray(rss_bytes, float)
    after = steps >= warmup_steps
    training = after & (steps < steps.max()) if after.any() else after
    out = {
        "warmup_steps": warmup_steps,
        "last_step": float(steps.max()) if len(steps) else 0.0,
        "rss_warmup_end_mib": float(rss[after][0] / MIB) if after.any() else float("nan"),
        "rss_final_mib": float(rss[-1] / MIB) if len(rss) else float("nan"),
        "rss_max_mib": float(rss.max() / MIB) if len(rss) else float("nan"),
        "slope_mib_per_1000_steps": slope_mib_per_1000_steps(steps[training], rss[training]),
        "samples_after_warmup": int(training.sum()),
    }
    return out
