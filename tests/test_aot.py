"""Ahead-of-time compilation for a target mesh: per-device memory before any hardware is committed."""

import functools
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


@functools.cache  # its absl flags may be defined once per process
def _sweep_module():
    spec = importlib.util.spec_from_file_location("tpu_sweep", os.path.join(ROOT, "benchmarks", "tpu_sweep.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("start, limit", [(4, 13), (4, 4), (8, 3), (4, 1000), (4, 0)])
def test_sweep_finds_the_largest_fitting_batch_with_few_compiles(start, limit):
    tried = []

    def try_batch(b):  # a step that fits up to `limit` examples per chip
        tried.append(b)
        return {"fits_with_headroom": b <= limit, "batch": b}

    best, report = _sweep_module().largest_fitting_batch(try_batch, start=start, largest=256)
    assert best == min(limit, 256)
    assert report == ({"fits_with_headroom": True, "batch": best} if best else None)
    assert len(set(tried)) <= 12  # doubling then bisection, not a scan of every size
