"""XLA's CPU thread pool on fewer cores than the process may use: ``train.xla_cpu_cores``.

On CPU, XLA runs a step's operations on a pool of one thread per core of the process's affinity mask, and an
idle pool thread spins before it sleeps. A small model's step has little to run in parallel, so much of a second
core's time goes to spinning: on the 2-vCPU development VM (AMD EPYC, family 25 model 1)
``configs/vqa.py:relational``'s compiled step took 40.5 ms and 77.6 ms of CPU time with the pool on both cores,
55.1 ms and 59.1 ms of CPU time with it on one (benchmarks/RESULTS.md, "XLA's CPU pool"). One core is the
choice for a CPU-time budget or for several runs at once (each given its own cores, e.g. with ``taskset``: the
pool takes the *first* cores of the process's mask); for one run's wall time, every core (the default).

XLA has no option for the pool's size: it sizes the pool from the affinity mask of the thread that starts
JAX's backends. :func:`confine` narrows the calling thread's mask to the first ``cores`` cores, starts the
backends, and widens it again, so threads started later (the input pipeline's prefetch threads) run anywhere.
Only where XLA's threads run changes (the benchmark's losses are equal). Where the backends were already
started (a notebook that used JAX before ``train_and_evaluate``), the pool cannot be resized and the run says so.
"""

from __future__ import annotations

import os

import jax


def confine(cores: int) -> str:
    """Starts JAX's backends with XLA's CPU pool on the first ``cores`` cores (0: all, nothing done).

    Returns what it did, for the run's log ('' for 0); "WARNING: ..." where it could not."""
    if cores <= 0:
        return ""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not allowed:
        return f"WARNING: train.xla_cpu_cores={cores} not applied: this system has no CPU affinity masks"
    if cores >= len(allowed):
        return f"train.xla_cpu_cores={cores}: XLA's CPU pool on all {len(allowed)} cores this process may use"
    from jax._src import xla_bridge  # private, only read: there is no public way to ask

    if xla_bridge.backends_are_initialized():
        return (f"WARNING: train.xla_cpu_cores={cores} not applied: JAX's backends were started before the run "
                "(XLA sizes its CPU pool then); start the run in a fresh process")
    os.sched_setaffinity(0, allowed[:cores])
    try:
        jax.devices()  # starts the backends; XLA's CPU pool threads inherit the narrowed mask
    finally:
        os.sched_setaffinity(0, allowed)
    return f"train.xla_cpu_cores={cores}: XLA's CPU pool on cores {allowed[:cores]} of {allowed}"
