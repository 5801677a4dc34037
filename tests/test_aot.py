"""Ahead-of-time compilation for a target mesh: per-device memory before any hardware is committed."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _aot(*overrides):
    result = subprocess.run(
        [sys.executable, "-m", "semrel_jax.aot", "--config=configs/vqa.py:tiny", "--num_devices=8", *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {k: int(v.replace(",", "")) for k, v in re.findall(r"per-device (\w+): .*\(([\d,]+) bytes\)", result.stdout)}


def test_fsdp_holds_a_fraction_of_the_state_per_device():
    replicated = _aot("--config.mesh.data=8", "--config.mesh.fsdp=1")
    fsdp = _aot("--config.mesh.data=1", "--config.mesh.fsdp=8")
    assert set(fsdp) == {"argument", "output", "alias", "temp", "peak"}
    # parameters + Adam moments dominate the arguments; FSDP over 8 devices keeps ~1/8 of them
    assert fsdp["argument"] < 0.35 * replicated["argument"]
    assert fsdp["peak"] < replicated["peak"]


def _tpu_report(*overrides):
    result = subprocess.run(
        [sys.executable, "-m", "semrel_jax.aot", "--config=configs/vqa.py:tiny", "--topology=v5e:2x4", "--json",
         "--config.mesh.data=1", "--config.mesh.fsdp=8", "--config.model.attention=splash", *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout[result.stdout.index("{"):])


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu (pip install -e '.[tpu]')")
def test_compiles_for_a_tpu_topology_with_splash_attention_and_reports_per_chip():
    r = _tpu_report()
    assert r["platform"] == "tpu" and r["num_devices"] == 8 and r["chip"]["name"] == "v5e"
    assert r["hbm_bytes"] == 16 * 2**30 and r["fits_with_headroom"]
    assert 0 < r["peak_bytes"] < 2**30
    # the TPU compiler's count covers every matmul we count, plus elementwise work
    assert r["xla_flops"] >= 0.9 * r["analytic_flops"] > 0
    assert r["estimate"]["step_seconds"] > 0 and r["compile_seconds"] > 0
