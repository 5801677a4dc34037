"""Long-run soak: host memory and shared memory of a long demo run with evaluation and checkpointing.

    python benchmarks/soak.py                                   # demo, 20,000 steps, 2 grain workers
    python benchmarks/soak.py --steps=100 --preset=tiny --warmup_steps=20 --every=25   # smoke run (~1 min)
    python benchmarks/soak.py --report_only --out=/tmp/soak     # the report again from a finished run's files

Runs ``python -m semrel_jax.main --config=configs/vqa.py:<preset>`` (the normal training entry) in a subprocess
with ``train.eval_every`` and ``train.checkpoint_every`` = ``--every`` (evaluations bounded by
``train.eval_examples``) and ``data.num_workers`` = ``--workers``, and every ``--sample_seconds`` records

  rss    the RSS of the training process plus all its descendants (grain worker processes), from /proc;
         pages shared between the parent and the forked workers count once per process, so this is an upper
         bound on the host memory the run holds, and what matters here is its slope;
  shm    the number and total size of the entries in /dev/shm.

to ``<out>/rss.csv``. The training step of each sample is interpolated from ``<out>/run/metrics.jsonl``. At the end
``<out>/report.json`` (and stdout) holds: RSS at the end of warm-up, final and max RSS, the least-squares slope of
RSS over steps after warm-up (MiB per 1,000 steps, benchmarks/soak_report.py), the /dev/shm entries present after
the run that were not there before it, and whether the run's stderr has the interpreter's
``resource_tracker: There appear to be N leaked shared_memory objects`` warning (multiprocessing's resource
tracker prints it at exit for SharedMemory segments a process created and never unlinked; grain's
``mp_prefetch`` workers pass batches to the parent through such segments).

Warm-up: the Sort-of-CLEVR source caches every drawn scene (``SortOfClevr._SCENE_CACHE_SIZE``, up to 50,000
images; the demo has 10,000) and each worker process holds its own cache, so RSS rises until every training image
has been drawn once: an epoch of the demo is 10,000 images x 20 questions / 32 = 6,250 steps; the default
``--warmup_steps`` is past it.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import soak_report  # noqa: E402  (benchmarks/ is not a package)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PRESET = flags.DEFINE_string("preset", "demo", "configs/vqa.py preset.")
_STEPS = flags.DEFINE_integer("steps", 20_000, "Training steps.")
_EVERY = flags.DEFINE_integer("every", 500, "Evaluate and checkpoint every this many steps.")
_EVAL_EXAMPLES = flags.DEFINE_integer("eval_examples", 200, "Examples per evaluation during training.")
_WORKERS = flags.DEFINE_integer("workers", 2, "grain worker processes (data.num_workers).")
_WARMUP = flags.DEFINE_integer("warmup_steps", 7_000, "Steps left out of the slope fit (see the docstring).")
_SAMPLE_SECONDS = flags.DEFINE_float("sample_seconds", 5.0, "Seconds between RSS samples.")
_OUT = flags.DEFINE_string("out", "/tmp/soak", "Output directory (the run's workdir is <out>/run).")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only recompute the report from <out>'s files.")

SHM = "/dev/shm"
LEAK_WARNING = "leaked shared_memory objects"


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process, from /proc/<pid>/stat (the field after the command's closing paren;
    /proc/<pid>/task/*/children needs a kernel option this VM lacks)."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:  # exited between listing and reading
                continue
            parents[int(name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return parents


def tree_rss_bytes(pid: int) -> tuple[int, int]:
    """(RSS of ``pid`` plus all its descendants in bytes, number of processes), from /proc."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    page = os.sysconf("SC_PAGE_SIZE")
    total, count, todo = 0, 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * page  # resident pages
            count += 1
        except OSError:
            continue
        todo += children.get(p, [])
    return total, count


def shm_entries() -> dict[str, int]:
    """Name -> size in bytes of every entry in /dev/shm."""
    out = {}
    for name in sorted(os.listdir(SHM)) if os.path.isdir(SHM) else []:
        try:
            out[name] = os.path.getsize(os.path.join(SHM, name))
        except OSError:
            pass
    return out


def run_and_sample(out: str) -> dict:
    workdir = os.path.join(out, "run")
    command = [sys.executable, "-m", "semrel_jax.main", f"--config=configs/vqa.py:{_PRESET.value}",
               f"--workdir={workdir}", f"--config.train.num_steps={_STEPS.value}",
               f"--config.train.eval_every={_EVERY.value}", f"--config.train.checkpoint_every={_EVERY.value}",
               f"--config.train.eval_examples={_EVAL_EXAMPLES.value}", f"--config.data.num_workers={_WORKERS.value}"]
    shm_before = shm_entries()
    t0 = time.time()
    with open(os.path.join(out, "train.log"), "w") as log, open(os.path.join(out, "rss.csv"), "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["time", "rss_bytes", "processes", "shm_entries", "shm_bytes"])
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            rss, processes = tree_rss_bytes(proc.pid)
            shm = shm_entries()
            rows.writerow([f"{time.time():.3f}", rss, processes, len(shm), sum(shm.values())])
            f.flush()
            try:
                proc.wait(timeout=_SAMPLE_SECONDS.value)
            except subprocess.TimeoutExpired:
                pass
    shm_after = shm_entries()
    return {"command": " ".join(command[1:]), "returncode": proc.returncode, "wall_seconds": time.time() - t0,
            "shm_before": shm_before, "shm_after": shm_after}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def report(out: str, run: dict) -> dict:
    times, rss = [], []
    with open(os.path.join(out, "rss.csv")) as f:
        for row in csv.DictReader(f):
            times.append(float(row["time"]))
            rss.append(int(row["rss_bytes"]))
    log_times, log_steps = soak_report.train_step_times(os.path.join(out, "run", "metrics.jsonl"))
    steps = soak_report.steps_at(soak_report.np.asarray(times), log_times, log_steps)
    summary = soak_report.summarize(steps, rss, _WARMUP.value)
    with open(os.path.join(out, "train.log")) as f:
        leak_lines = [line.strip() for line in f if LEAK_WARNING in line]
    left = {k: v for k, v in run["shm_after"].items() if k not in run["shm_before"]}
    return {**summary, "shm_left_after_run": left, "leak_warnings": leak_lines,
            **{k: run[k] for k in ("command", "returncode", "wall_seconds")}, "machine": _cpu_model(),
            "cpus": os.cpu_count(), "samples": len(times)}


def main(argv):
    del argv
    out = _OUT.value
    os.makedirs(out, exist_ok=True)
    run_file = os.path.join(out, "run.json")
    if _REPORT_ONLY.value:
        with open(run_file) as f:
            run = json.load(f)
    else:
        run = run_and_sample(out)
        with open(run_file, "w") as f:
            json.dump(run, f, indent=1)
    result = report(out, run)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    if run["returncode"] != 0:
        sys.exit(f"training exited with {run['returncode']}; see {os.path.join(out, 'train.log')}")


if __name__ == "__main__":
    app.run(main)
