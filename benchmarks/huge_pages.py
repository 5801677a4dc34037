"""The train step with and without glibc's huge-page tunable (``semrel_jax/huge_pages.py``), side by side.

    python benchmarks/huge_pages.py --preset=relational --steps=40 --rounds=2

Each round runs the compiled step of ``configs/vqa.py:<preset>`` (built as ``step_throughput.py`` builds it) in
two fresh processes, one with ``GLIBC_TUNABLES=`` (glibc's default malloc: the opt-out) and one with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (what every ``semrel_jax`` command now runs with), alternating which
goes first. Per step, after the warm-up: wall time, the process's user and system CPU time
(``getrusage``) and its minor page faults. Numbers are the same in both (only where memory comes from differs):
the last loss is printed to show it.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
SETTINGS = {"default malloc": "", "glibc.malloc.hugetlb=1": "glibc.malloc.hugetlb=1"}


def child() -> None:
    """Builds the preset's step, runs the warm-up and ``--steps`` timed steps, prints one JSON line."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import step_throughput

    c = step_throughput.get_config(FLAGS.preset)
    bench = step_throughput.build(FLAGS.preset, c)
    bench.run(FLAGS.warmup, record=False)
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    bench.run(FLAGS.steps)
    after, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    n = FLAGS.steps
    print(json.dumps({
        "wall_ms": (t1 - t0) / n * 1e3,
        "user_ms": (after.ru_utime - before.ru_utime) / n * 1e3,
        "sys_ms": (after.ru_stime - before.ru_stime) / n * 1e3,
        "minor_faults": (after.ru_minflt - before.ru_minflt) / n,
        "last_loss": bench.last_loss,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
    }))


def main(argv):
    del argv
    if FLAGS.child:
        return child()
    results = {name: [] for name in SETTINGS}
    for r in range(FLAGS.rounds):
        for name in list(SETTINGS) if r % 2 == 0 else list(SETTINGS)[::-1]:
            env = dict(os.environ, GLIBC_TUNABLES=SETTINGS[name], JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
            cmd = [sys.executable, os.path.abspath(__file__), "--child", f"--preset={FLAGS.preset}",
                   f"--steps={FLAGS.steps}", f"--warmup={FLAGS.warmup}"]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {r} {name}: {results[name][-1]}", flush=True)
    print(f"\nconfigs/vqa.py:{FLAGS.preset}, {FLAGS.steps} steps x {FLAGS.rounds} rounds; median over rounds, per step")
    keys = ("wall_ms", "user_ms", "sys_ms", "minor_faults", "last_loss")
    print(f"{'':<26}" + "".join(f"{k:>14}" for k in keys) + f"{'CPU ms':>14}")
    for name, rows in results.items():
        med = {k: statistics.median(row[k] for row in rows) for k in keys}
        cpu = statistics.median(row["user_ms"] + row["sys_ms"] for row in rows)
        print(f"{name:<26}" + "".join(f"{med[k]:>14.4g}" for k in keys) + f"{cpu:>14.4g}")


if __name__ == "__main__":
    flags.DEFINE_bool("child", False, "Internal: measure in this process.")
    flags.DEFINE_string("preset", "relational", "configs/vqa.py preset.")
    flags.DEFINE_integer("steps", 40, "Timed steps per process.")
    flags.DEFINE_integer("warmup", 5, "Untimed steps after compilation.")
    flags.DEFINE_integer("rounds", 2, "Rounds; each runs both settings, alternating which goes first.")
    app.run(main)
