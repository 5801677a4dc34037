"""Graceful preemption: SIGTERM (TPU maintenance events, SLURM, Kubernetes) ends the run after the current step.

The handler only records the request; the train loop checks it between steps, saves a checkpoint of the
step it just finished and returns, so the process exits 0 and the next start resumes from that step.
On multi-host jobs the hosts may receive the signal at different steps; ``agreed`` makes the decision
collective (any host asked -> all stop after the same step), otherwise one host would wait in its final
save while the others wait in the next step's collectives.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class PreemptionGuard:
    """Context manager turning SIGTERM into a flag (restores the previous handler on exit)."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self.signals = signals
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        self.requested = True

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def agreed(requested: bool) -> bool:
    """Whether any process asked to stop; the same answer on every process (a tiny all-gather per call)."""
    if jax.process_count() == 1:
        return requested
    from jax.experimental import multihost_utils

    return bool(np.max(multihost_utils.process_allgather(np.int32(requested))) > 0)
