"""XLA's CPU thread pool on fewer cores than the process may use: ``train.xla_cpu_cores``.

On CPU, XLA runs a step's operations on a pool of one thread per core of the process's affinity mask, and an
idle pool thread spins before it sleeps. A small model's step has little to run in parallel, so the second
core mostly spins: on the 2-vCPU development VM (AMD EPYC, family 25 model 1) ``configs/vqa.py:relational``'s
compiled step took 59 ms with the pool on both cores (103 ms of CPU time) and 60 ms with it on one (65 ms of
CPU time), the other core left to Python's dispatch and the input pipeline (benchmarks/RESULTS.md, "XLA's CPU
pool"). The default's larger step does use both (75 ms against 100 ms on one), so the default is every core.

XLA has no option for the pool's size: it sizes the pool from the affinity mask of the thread that starts
JAX's backends. :func:`confine` narrows the calling thread's mask to the first ``cores`` cores, starts the
backends, and widens it again, so threads started later (the input pipeline's prefetch threads) run anywhere.
Numbers are unchanged: only where XLA's threads run. Where the backends were already started (a notebook that
used JAX before ``train_and_evaluate``), the pool cannot be resized and the run says so.
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
