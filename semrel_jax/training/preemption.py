"""Graceful preemption: SIGTERM (TPU maintenance events, SLURM, Kubernetes) ends the run after the current step.

The handler only records the request; the train loop checks it between steps, saves a checkpoint of the
step it just finished and returns, so the process exits 0 and the next start resumes from that step.
(Single-controller semantics: on multi-host jobs every host receives the signal from the scheduler.)
"""

from __future__ import annotations

import signal
import threading


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
