"""Compile-only sweep: per TPU generation and model preset, the largest per-chip batch (× 512 text tokens) whose
train step fits the chip's HBM with >= 10 % headroom, and its roofline step time and tokens/s per chip.

    python benchmarks/tpu_sweep.py --chips=v5e --presets=lsrm_7b,llava_7b,lsrm_13b      # needs libtpu ([tpu] extra)
    python benchmarks/tpu_sweep.py --chips=v5e,v5p,v6e --remats=full,dots --log=/tmp/sweep.jsonl

Every candidate is one ``python -m semrel_jax.aot --topology=... --json`` subprocess (the TPU compiler's own
buffer assignment decides "fits"; nothing runs), compiled one at a time. The per-chip batch doubles from
``--start`` until a step no longer fits with headroom, then bisects between the last fit and the first miss:
about log2(batch) + a few compiles per (chip, preset, remat). ``model.scan_layers`` is on, so each compile
hands the compiler one block per stack. Each compile's report is appended to ``--log`` and read back on the
next run, so an interrupted sweep resumes where it stopped.

The step-time estimate is ``semrel_jax.aot``'s roofline (model FLOPs at the chip's peak, or HBM traffic at its
bandwidth, whichever is longer): a lower bound that leaves out collectives and the recomputed forward of remat.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from semrel_jax.training import chips  # noqa: E402

TOPOLOGIES = {"v5e": "v5e:2x4", "v5p": "v5p:2x2x1", "v6e": "v6e:2x4"}  # v5e-8, v5p-8 (4 chips), v6e-8
PRESETS = ("lsrm_llama3.2_1b", "lsrm_7b", "lsrm_13b", "memvp_7b", "llava_7b")

_CHIPS = flags.DEFINE_list("chips", ["v5e"], f"Chip generations, of {tuple(TOPOLOGIES)}.")
_PRESETS = flags.DEFINE_list("presets", list(PRESETS), "Model presets of configs/vqa.py.")
_REMATS = flags.DEFINE_list("remats", ["full"], "model.remat policies to try (the best fit per preset is kept).")
_TEXT_LEN = flags.DEFINE_integer("text_len", 512, "Text tokens per example (data.max_text_len).")
_START = flags.DEFINE_integer("start", 4, "Per-chip batch the doubling starts from.")
_MAX = flags.DEFINE_integer("max_batch", 256, "Largest per-chip batch tried.")
_LOSS_CHUNK = flags.DEFINE_integer("loss_chunk", 128, "train.loss_chunk (0: whole-batch logits).")
_LOG = flags.DEFINE_string("log", "/tmp/tpu_sweep.jsonl", "Every compile's report, one JSON line each (resume).")
_TIMEOUT = flags.DEFINE_integer("timeout", 3600, "Seconds one compile may take.")


def _key(chip: str, preset: str, remat: str, per_chip: int, text_len: int, loss_chunk: int) -> str:
    return f"{chip}/{preset}/remat={remat}/b={per_chip}/t={text_len}/chunk={loss_chunk}"


def _load_log(path: str) -> dict[str, dict]:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {r["key"]: r for r in map(json.loads, f) if "key" in r}


def compile_step(chip: str, preset: str, remat: str, per_chip: int, text_len: int, loss_chunk: int, log: dict) -> dict:
    """The aot report of one candidate (from the log when it was compiled before)."""
    key = _key(chip, preset, remat, per_chip, text_len, loss_chunk)
    if key in log:
        return log[key]
    topology = TOPOLOGIES[chip]
    devices = chips.chips_in(topology)  # one device per chip on these generations
    command = [
        sys.executable, "-m", "semrel_jax.aot", f"--config=configs/vqa.py:{preset}", f"--topology={topology}", "--json",
        "--config.mesh.data=1", f"--config.mesh.fsdp={devices}", f"--config.train.batch_size={per_chip * devices}",
        f"--config.data.max_text_len={text_len}", "--config.model.scan_layers=True", f"--config.model.remat={remat}",
        f"--config.train.loss_chunk={loss_chunk}",
    ]
    print(f"compiling {key} ...", flush=True)
    result = subprocess.run(["nice", "-n", "19", *command], cwd=ROOT, capture_output=True, text=True, timeout=_TIMEOUT.value)
    if result.returncode:
        report = {"fits": False, "error": result.stderr.strip().splitlines()[-1][:300]}
    else:
        report = json.loads(result.stdout[result.stdout.index("{"):])
    report.update(key=key, command=" ".join(command))
    with open(_LOG.value, "a") as f:
        f.write(json.dumps(report) + "\n")
    log[key] = report
    print(f"  -> {'fits' if report.get('fits_with_headroom') else 'no'} "
          f"(peak {report.get('peak_bytes', float('nan')) / 2**30:.2f} GiB, {report.get('compile_seconds', 0):.0f} s)",
          flush=True)
    return report


def largest_fitting_batch(try_batch, start: int, largest: int) -> tuple[int, dict | None]:
    """Doubling from ``start``, then bisection: the largest per-chip batch ``b`` with ``try_batch(b)`` fitting
    with headroom (0 and None if even 1 does not). ``try_batch(b)`` returns an aot report."""
    fits = lambda b: bool(try_batch(b).get("fits_with_headroom"))  # noqa: E731
    low, high = 0, None  # low fits (0: nothing known to), high does not
    b = start
    while b <= largest:
        if fits(b):
            low, b = b, 2 * b
        else:
            high = b
            break
    if low == 0 and high is not None:  # the start did not fit: halve down to a fit
        while high > 1:
            b = high // 2
            if fits(b):
                low = b
                break
            high = b
    if high is None:
        high = largest + 1
    while high - low > 1 and low > 0:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low, (try_batch(low) if low else None)


def sweep_row(chip: str, preset: str, log: dict) -> dict:
    """The best (most tokens/s per chip, then the larger batch) fitting configuration over ``--remats``."""
    best = {"chip": chip, "preset": preset, "per_chip": 0}
    for remat in _REMATS.value:
        per_chip, report = largest_fitting_batch(
            lambda b: compile_step(chip, preset, remat, b, _TEXT_LEN.value, _LOSS_CHUNK.value, log), _START.value, _MAX.value)
        if report is None:
            continue
        tokens = report["estimate"]["tokens_per_second_per_device"]
        if per_chip and tokens * per_chip > best.get("tokens_per_s", 0) * best["per_chip"]:
            best = dict(chip=chip, preset=preset, per_chip=per_chip, remat=remat, mesh=report["mesh"],
                        peak_gib=report["peak_bytes"] / 2**30, headroom=report["headroom"],
                        step_s=report["estimate"]["step_seconds"], tokens_per_s=tokens,
                        compile_s=report["compile_seconds"], command=report["command"])
    return best


def format_table(rows: list[dict]) -> str:
    lines = ["| chip | preset | largest batch/chip × tokens | remat | peak (headroom) | est. step | est. tokens/s/chip |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if not r["per_chip"]:
            lines.append(f"| {r['chip']} | {r['preset']} | does not fit (batch 1) | | | | |")
            continue
        lines.append(f"| {r['chip']} | {r['preset']} | {r['per_chip']} × {_TEXT_LEN.value} | {r['remat']} | "
                     f"{r['peak_gib']:.2f} GiB ({100 * r['headroom']:.0f} %) | {1e3 * r['step_s']:.0f} ms | "
                     f"{r['tokens_per_s']:,.0f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    unknown = set(_CHIPS.value) - set(TOPOLOGIES)
    if unknown:
        raise app.UsageError(f"--chips: {sorted(unknown)} unknown; choose from {tuple(TOPOLOGIES)}")
    log = _load_log(_LOG.value)
    rows = [sweep_row(chip, preset, log) for chip in _CHIPS.value for preset in _PRESETS.value]
    print(format_table(rows))


if __name__ == "__main__":
    app.run(main)
