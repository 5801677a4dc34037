"""The per-chip report arithmetic of ``semrel_jax.aot``: chip lookup, HBM verdicts and the roofline estimate."""

import pytest

from semrel_jax import aot
from semrel_jax.training import chips


def test_chip_generation_from_device_kind_or_topology():
    assert chips.chip_for("TPU v5 lite").name == "v5e"
    assert chips.chip_for("TPU v5").name == "v5p"  # v5p reports itself as plain 'TPU v5'
    assert chips.chip_for("", "v6e:2x4").name == "v6e"
    assert chips.chip_for("cpu", "") is None
    assert chips.chips_in("v5e:2x4") == 8 and chips.chips_in("v4:2x2x1") == 4


def test_memory_verdict_and_headroom():
    share = chips.DeviceShare(chips.CHIPS["v5e"])
    assert share.hbm_bytes == 16 * 2**30
    # the lsrm_7b at 4 x 512 per chip: 15.72 GiB on a 16 GiB chip fits, but with 1.75 % headroom
    v = chips.memory_verdict(int(15.72 * 2**30), share)
    assert v["fits"] and not v["fits_with_headroom"]
    assert v["headroom"] == pytest.approx(1 - 15.72 / 16)
    assert not chips.memory_verdict(int(24.4 * 2**30), share)["fits"]
    # a v4 topology listing both TensorCores of a chip as devices: each gets half the chip
    assert chips.DeviceShare(chips.CHIPS["v4"], devices_per_chip=2).hbm_bytes == 16 * 2**30


def test_roofline_takes_the_slower_of_compute_and_memory():
    share = chips.DeviceShare(chips.CHIPS["v5e"])  # 197 TFLOP/s, 819 GB/s
    compute_bound = chips.roofline(flops=197e12, bytes_accessed=819e9 / 4, share=share)
    assert compute_bound["step_seconds"] == pytest.approx(1.0) and compute_bound["bound"] == "compute"
    memory_bound = chips.roofline(flops=197e12 / 10, bytes_accessed=2 * 819e9, share=share)
    assert memory_bound["step_seconds"] == pytest.approx(2.0) and memory_bound["bound"] == "memory"


def _raw(**overrides):
    raw = dict(topology="v5e:2x4", platform="tpu", device_kind="TPU v5 lite", num_devices=8,
               mesh={"data": 1, "fsdp": 8, "tensor": 1}, batch_size=32, text_len=512, remat="none",
               compile_seconds=1.0, argument_bytes=2 * 2**30, output_bytes=2 * 2**30, alias_bytes=2 * 2**30,
               temp_bytes=12 * 2**30, xla_flops=58.27e12, xla_bytes_accessed=100e9, analytic_flops=57.18e12)
    return dict(raw, **overrides)


def test_report_derives_peak_fit_and_estimate():
    r = aot.describe(_raw())
    assert r["peak_bytes"] == 14 * 2**30  # arguments + temporaries; the donated outputs alias the arguments
    assert r["chip"]["name"] == "v5e" and r["fits"] and r["headroom"] == pytest.approx(2 / 16)
    e = r["estimate"]
    assert e["bound"] == "compute" and e["step_seconds"] == pytest.approx(58.27 / 197)
    assert e["tokens_per_second_per_device"] == pytest.approx(4 * 512 / (58.27 / 197))
    text = aot.format_report(r)
    assert "per-device peak: 14.00 GiB" in text and "ESTIMATE" in text and "headroom 12.5%" in text


def test_estimate_never_uses_fewer_flops_than_the_model_count():
    # a scanned decoder: XLA's cost analysis counts the loop body once
    r = aot.describe(_raw(xla_flops=8.5e12, analytic_flops=114.36e12, scan_layers=True))
    assert r["estimate"]["compute_seconds"] == pytest.approx(114.36 / 197)
    assert "count the scanned block once" in aot.format_report(r)


def test_report_without_a_known_chip_has_no_verdict():
    r = aot.describe(_raw(topology="", platform="cpu", device_kind="cpu", xla_bytes_accessed=float("nan")))
    assert r["chip"] is None and "fits" not in r and "estimate" not in r
    assert "HBM" not in aot.format_report(r)


def test_gpu_peak_from_device_kind():
    assert chips.gpu_for("NVIDIA H100 80GB HBM3").peak_bf16_tflops == 989
    assert chips.gpu_for("NVIDIA H200").hbm_gib == 141
    assert chips.gpu_for("cpu") is None


def test_a_refused_step_reads_as_not_fitting():
    r = {"topology": "v5e:2x4", "device_kind": "TPU v5 lite", "num_devices": 8, "mesh": {"data": 1, "fsdp": 8, "tensor": 1},
         "compile_seconds": 3.0, "fits": False,
         "refused": "RESOURCE_EXHAUSTED: ... HLO temporaries (24.40G) exceeds available HBM (15.75G)."}
    assert "does NOT fit" in aot.format_report(r) and "24.40G" in aot.format_report(r)
