"""``benchmarks/soak_report.py``: the soak benchmark's slope and summary arithmetic on made-up samples (no training)."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import soak_report  # noqa: E402

MIB = 2**20


def test_slope_is_mib_per_1000_steps():
    steps = np.arange(0, 10_001, 500)
    rss = 1000 * MIB + steps * (3 * MIB / 1000)  # 3 MiB per 1,000 steps
    assert soak_report.slope_mib_per_1000_steps(steps, rss) == pytest.approx(3.0)
    assert np.isnan(soak_report.slope_mib_per_1000_steps([5, 5], [1, 2]))


def test_summary_leaves_out_warmup_and_the_final_step():
    steps = np.array([0, 1000, 2000, 3000, 4000, 5000, 6000, 6000, 6000], float)
    # warm-up climbs 100 MiB per 1,000 steps, then flat at 800 MiB with a +-1 MiB wobble; the final evaluation
    # at step 6000 peaks at 900 MiB and must not enter the fit
    rss = np.array([500, 600, 700, 799, 801, 799, 801, 900, 850], float) * MIB
    summary = soak_report.summarize(steps, rss, warmup_steps=3000)
    assert summary["rss_warmup_end_mib"] == pytest.approx(799)
    assert summary["rss_final_mib"] == pytest.approx(850)
    assert summary["rss_max_mib"] == pytest.approx(900)
    assert summary["samples_after_warmup"] == 3  # steps 3000, 4000, 5000
    assert summary["slope_mib_per_1000_steps"] == pytest.approx(0.0, abs=1e-9)
    assert summary["last_step"] == 6000


def test_steps_interpolated_from_metrics_jsonl(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 100, "split": "train", "time": 10.0}, {"step": 150, "split": "eval", "time": 12.0},
            {"step": 200, "split": "train", "time": 20.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    log_times, log_steps = soak_report.train_step_times(str(path))
    assert log_steps.tolist() == [100, 200]  # evaluation rows are not training steps
    steps = soak_report.steps_at(np.array([5.0, 15.0, 25.0]), log_times, log_steps)
    assert steps.tolist() == [0.0, 150.0, 200.0]  # before the first row: 0 (start-up); after the last: the last
