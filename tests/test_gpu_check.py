"""``benchmarks/gpu_check.sh --dry``: the GPU check's loop runs end to end (tiny preset, CPU) and prints its figures."""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_check_dry_run_prints_throughput_and_mfu():
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry"], cwd=ROOT, capture_output=True, text=True,
                            timeout=900, env=dict(os.environ, RUN_TIMEOUT="800"))
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "failed or ran out of time" not in out, out[-3000:]
    assert "=== tiny, batch 8 x 20 tokens, model.attention=xla" in out
    tokens_per_s = float(next(line.split()[1] for line in out.splitlines() if line.startswith("text_tokens_per_s")))
    mfu = float(next(line.split()[1] for line in out.splitlines() if line.startswith("mfu")))
    assert tokens_per_s > 0 and 0 < mfu < 1.5
