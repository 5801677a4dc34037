"""Commands restart once with glibc's huge-page tunable (semrel_jax/huge_pages.py), and it cuts page faults."""

import os
import subprocess
import sys

import pytest

from semrel_jax import huge_pages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocates, touches and frees a 64 MiB buffer five times (as XLA does a step's temporaries) after restarting
# like a command; prints the tunable it ran with and the minor page faults per buffer.
CHILD = """
import ctypes, os, resource
from semrel_jax import huge_pages
huge_pages.reexec_with_huge_pages()
libc = ctypes.CDLL(None)  # glibc's malloc itself: numpy advises huge pages for its own large arrays
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    buffer = libc.malloc(64 << 20)
    ctypes.memset(buffer, 1, 64 << 20)
    libc.free(buffer)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
print(os.environ.get("GLIBC_TUNABLES", "<unset>") or "<empty>", int(faults))
"""


def _child(**env_changes):
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.parametrize("environ, version, mode, expected", [
    ({}, (2, 36), "madvise", True),
    ({}, (2, 34), "madvise", False),  # glibc without the tunable
    ({}, None, "madvise", False),  # not glibc
    ({}, (2, 36), None, False),  # no THP
    ({}, (2, 36), "always", False),  # the kernel already backs large mappings with huge pages
    ({}, (2, 36), "never", False),
    ({"GLIBC_TUNABLES": ""}, (2, 36), "madvise", False),  # the user's setting, even empty, is kept
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (2, 36), "madvise", False),
])
def test_the_restart_happens_only_where_it_helps_and_never_over_the_users_setting(environ, version, mode, expected):
    assert huge_pages.wanted(environ, version, mode) is expected


def test_the_thp_mode_is_read_from_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert huge_pages.huge_page_mode(str(path)) == "madvise"
    assert huge_pages.huge_page_mode(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not huge_pages.wanted_here(),
                    reason="this machine gets no restart (glibc < 2.35 or THP not madvise)")
def test_a_command_restarts_with_the_tunable_and_faults_far_fewer_pages():
    tunable, faults = _child()
    assert tunable == huge_pages.TUNABLE
    opted_out, faults_without = _child(GLIBC_TUNABLES="")
    assert opted_out == "<empty>"
    assert faults_without > 15_000  # 64 MiB in 4-KiB pages: 16,384 faults per buffer
    assert faults < faults_without / 10
