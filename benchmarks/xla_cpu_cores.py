"""XLA's CPU pool on every core against fewer (``train.xla_cpu_cores``), side by side: step time and CPU time.

    python benchmarks/xla_cpu_cores.py --preset=relational --cores=0,1

XLA sizes its pool once per process, so each setting is its own ``benchmarks/step_throughput.py`` process (the
preset built and compiled as training does, stepped on real batches); ``--rounds`` rounds alternate the settings,
so that load from other processes hits both alike. Printed per setting: the median over rounds of the median
step time and of the CPU time per step (user + system, every thread), and their ratios to the first setting.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

from absl import app, flags

FLAGS = flags.FLAGS
HERE = os.path.dirname(os.path.abspath(__file__))


def measure(preset: str, cores: int, steps: int, overrides: list[str]) -> dict[str, float]:
    """One step_throughput process: its table's ``step_ms_median`` and ``cpu_ms_per_step``."""
    command = [sys.executable, os.path.join(HERE, "step_throughput.py"), f"--presets={preset}", f"--steps={steps}",
               f"--xla_cpu_cores={cores}", *(["--config_overrides=" + ",".join(overrides)] if overrides else [])]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "not applied" in out:  # the setting under test must be the one measured
        raise RuntimeError(out.splitlines()[0])
    rows = dict(line.split(None, 1) for line in out.splitlines() if line.strip() and len(line.split()) == 2)
    return {key: float(rows[key]) for key in ("step_ms_median", "cpu_ms_per_step", "final_loss")}


def main(argv):
    del argv
    settings = [int(n) for n in FLAGS.cores]
    runs = {n: [] for n in settings}
    for r in range(FLAGS.rounds):
        for n in settings if r % 2 == 0 else settings[::-1]:
            runs[n].append(measure(FLAGS.preset, n, FLAGS.steps, FLAGS.config_overrides))
            print(f"round {r}, xla_cpu_cores={n}: {runs[n][-1]}", flush=True)
    print(f"\n{FLAGS.preset}, {FLAGS.rounds} rounds x {FLAGS.steps} steps per setting, {os.cpu_count()} CPUs")
    print("| train.xla_cpu_cores | step (median) | CPU time per step | step ratio | CPU ratio | last loss |")
    print("| --- | --- | --- | --- | --- | --- |")
    median = {n: {k: statistics.median(m[k] for m in runs[n]) for k in runs[n][0]} for n in settings}
    base = median[settings[0]]
    for n in settings:
        m = median[n]
        step_ratio = m["step_ms_median"] / base["step_ms_median"]
        cpu_ratio = m["cpu_ms_per_step"] / base["cpu_ms_per_step"]
        print(f"| {n or 'every core'} | {m['step_ms_median']:.1f} ms | {m['cpu_ms_per_step']:.1f} ms | "
              f"x{step_ratio:.2f} | x{cpu_ratio:.2f} | {m['final_loss']:.4f} |")


if __name__ == "__main__":
    flags.DEFINE_string("preset", "relational", "configs/vqa.py preset (overrides after '@' as in step_throughput).")
    flags.DEFINE_list("cores", ["0", "1"], "train.xla_cpu_cores settings to compare (0: every core).")
    flags.DEFINE_integer("steps", 100, "Timed steps per process.")
    flags.DEFINE_integer("rounds", 2, "Rounds; each runs every setting once, in alternating order.")
    flags.DEFINE_list("config_overrides", [], "key=value pairs for the preset, e.g. data.max_text_len=34.")
    app.run(main)
