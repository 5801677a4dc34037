"""Host buffers on transparent huge pages: every command runs with glibc's ``glibc.malloc.hugetlb=1``.

XLA's CPU runtime allocates a step's temporaries afresh at every execution (one block of ~79 MiB for
``configs/vqa.py:relational``), and glibc serves a block that large with a new ``mmap``: each step faults in
~20,000 4-KiB pages, and a fifth of a CPU training run's CPU time went to the kernel faulting them in
(``benchmarks/RESULTS.md``, "Host memory"). With the tunable glibc advises huge pages for such blocks
(``madvise``), and the faults drop to a few hundred a step. Numbers are unchanged: only where memory comes from.

glibc reads its tunables once, when a process starts, so :func:`reexec_with_huge_pages` restarts the command
(``exec``: same process id, arguments, environment and working directory) with ``GLIBC_TUNABLES`` set, once, when

* the system is Linux with glibc >= 2.35 (the first with the tunable),
* transparent huge pages are in ``madvise`` mode (the usual default; in ``always`` the kernel already uses them,
  in ``never`` nothing can), and
* ``GLIBC_TUNABLES`` is not set: whatever the user set, even empty, is kept, so ``GLIBC_TUNABLES= python -m
  semrel_jax.main ...`` runs without it.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the running glibc, or None (not Linux, or another C library such as musl)."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, ValueError, OSError):  # no confstr on this platform, or an unexpected answer
        return None


def huge_page_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'), None where unknown."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def wanted(environ, version: tuple[int, int] | None, mode: str | None) -> bool:
    """Whether a process with this environment, glibc version and THP mode should restart with :data:`TUNABLE`
    (the conditions in the module docstring)."""
    return "GLIBC_TUNABLES" not in environ and version is not None and version >= (2, 35) and mode == "madvise"


def wanted_here() -> bool:
    """:func:`wanted` for this process."""
    return wanted(os.environ, glibc_version(), huge_page_mode())


def reexec_with_huge_pages() -> None:
    """Replaces this process by the same command with ``GLIBC_TUNABLES`` set, where :func:`wanted`; otherwise,
    or if the restart fails, returns and the command runs as it is."""
    if not wanted_here():
        return
    env = dict(os.environ, GLIBC_TUNABLES=TUNABLE)
    sys.stdout.flush(), sys.stderr.flush()  # exec drops what Python has not written yet
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:
        return
