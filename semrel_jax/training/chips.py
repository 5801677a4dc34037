"""What one accelerator chip holds and does: the TPU generations' (and the usual NVIDIA GPUs') HBM, peak bf16 FLOP/s and HBM bandwidth,
and the arithmetic that turns a compiled step's per-device figures into "fits?" and a roofline step time.

Figures are Google Cloud's published per-chip specifications (cloud.google.com/tpu/docs/v4, /v5e, /v5p,
/v6e, "system architecture" tables; checked 2026-12). HBM is stated there in "GB" but is 2^30-byte GiB
(libtpu reports 15.75 GiB *available* on a 16 GiB v5e: the runtime keeps a little).

A topology may expose one device per chip (v5e, v5p and v6e: one TensorCore, or v5p's megacore) or one per
TensorCore (v4's 2x2x1 comes back as 8 devices for 4 chips); the per-device share is the chip's figure divided
by the devices on that chip, so the verdicts below are per *device*, as XLA's memory analysis is.
"""

from __future__ import annotations

import dataclasses
import math

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # the topology prefix, e.g. 'v5e'
    device_kind: str  # what jax reports as Device.device_kind
    hbm_gib: float
    peak_bf16_tflops: float  # dense bf16 matmul peak
    hbm_gb_per_s: float  # 1e9 bytes/s


CHIPS = {
    c.name: c
    for c in (
        Chip("v4", "TPU v4", hbm_gib=32, peak_bf16_tflops=275, hbm_gb_per_s=1200),
        Chip("v5e", "TPU v5 lite", hbm_gib=16, peak_bf16_tflops=197, hbm_gb_per_s=819),
        Chip("v5p", "TPU v5", hbm_gib=95, peak_bf16_tflops=459, hbm_gb_per_s=2765),
        Chip("v6e", "TPU v6 lite", hbm_gib=32, peak_bf16_tflops=918, hbm_gb_per_s=1640),
    )
}


# NVIDIA data-center GPUs (datasheets: A100 80GB SXM, H100 SXM, H200 SXM): dense bf16 tensor-core peak (the
# sparsity figures are twice these), HBM and its bandwidth. Matched by a name inside Device.device_kind.
GPUS = {
    c.name: c
    for c in (
        Chip("A100", "NVIDIA A100", hbm_gib=80, peak_bf16_tflops=312, hbm_gb_per_s=2039),
        Chip("H100", "NVIDIA H100", hbm_gib=80, peak_bf16_tflops=989, hbm_gb_per_s=3350),
        Chip("H200", "NVIDIA H200", hbm_gib=141, peak_bf16_tflops=989, hbm_gb_per_s=4800),
    )
}


def gpu_for(device_kind: str) -> Chip | None:
    """The GPU model in a device kind such as 'NVIDIA H100 80GB HBM3' (None: not in the table)."""
    return next((g for g in GPUS.values() if g.name in device_kind), None)


def chip_for(device_kind: str = "", topology: str = "") -> Chip | None:
    """The chip generation of a device kind ('TPU v5 lite') or, failing that, a topology name ('v5e:2x4')."""
    for chip in CHIPS.values():
        if device_kind == chip.device_kind:
            return chip
    return CHIPS.get(topology.split(":", 1)[0])


def chips_in(topology: str) -> int:
    """Chips in a topology name: ``'v5e:2x4'`` -> 8, ``'v4:2x2x1'`` -> 4."""
    return math.prod(int(n) for n in topology.split(":", 1)[1].split("x"))


@dataclasses.dataclass(frozen=True)
class DeviceShare:
    """One device's share of a chip (the whole chip unless the topology exposes its cores separately)."""

    chip: Chip
    devices_per_chip: int = 1

    @property
    def hbm_bytes(self) -> int:
        return int(self.chip.hbm_gib * GIB) // self.devices_per_chip

    @property
    def peak_flops_per_s(self) -> float:
        return self.chip.peak_bf16_tflops * 1e12 / self.devices_per_chip

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.chip.hbm_gb_per_s * 1e9 / self.devices_per_chip


def memory_verdict(peak_bytes: int, share: DeviceShare, min_headroom: float = 0.10) -> dict:
    """Does a per-device peak fit the device's HBM? ``headroom`` is the free fraction (negative: over)."""
    headroom = 1.0 - peak_bytes / share.hbm_bytes
    return {
        "hbm_bytes": share.hbm_bytes,
        "fits": peak_bytes <= share.hbm_bytes,
        "headroom": headroom,
        "fits_with_headroom": headroom >= min_headroom,
    }


def roofline(flops: float, bytes_accessed: float, share: DeviceShare) -> dict:
    """A lower-bound step-time *estimate*: ``max(FLOPs / peak, bytes / HBM bandwidth)`` per device.

    It assumes perfect overlap and ignores collectives, launch overheads and MXU under-use, so a real step
    is slower; it ranks configurations and says whether the step is compute- or memory-bound.
    """
    compute = flops / share.peak_flops_per_s
    memory = bytes_accessed / share.hbm_bytes_per_s
    return {
        "compute_seconds": compute,
        "memory_seconds": memory,
        "step_seconds": max(compute, memory),
        "bound": "compute" if compute >= memory else "memory",
    }
