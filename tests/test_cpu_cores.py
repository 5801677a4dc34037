"""``train.xla_cpu_cores``: XLA's CPU pool on fewer cores, the input pipeline on all (training/cpu_cores.py)."""

import json
import os
import subprocess
import sys

import pytest

from semrel_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# In a fresh process (XLA sizes its pool when the backends start): confine, then a matmul large enough for XLA to
# split across its pool; prints the message, the process's CPU time over the matmul's wall time, the affinity a
# thread started afterwards gets, and what a second call says.
CHILD = """
import json, os, resource, sys, threading, time
from semrel_jax.training import cpu_cores
message = cpu_cores.confine(int(sys.argv[1]))
import jax, jax.numpy as jnp
x = jnp.ones((1024, 1024), jnp.float32)
matmul = jax.jit(lambda a: (a @ a @ a @ a).sum())
matmul(x).block_until_ready()
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
wall0, cpu0 = time.perf_counter(), cpu()
for _ in range(10):
    matmul(x).block_until_ready()
ratio = (cpu() - cpu0) / (time.perf_counter() - wall0)
later = {}
thread = threading.Thread(target=lambda: later.update(cores=sorted(os.sched_getaffinity(0))))
thread.start(), thread.join()
print(json.dumps({"message": message, "cpu_per_wall": ratio, "later_thread": later["cores"],
                  "again": cpu_cores.confine(1)}))
"""


def _child(cores: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(cores)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity") else True,
                    reason="needs a process allowed on two or more cores")
def test_xla_runs_on_one_core_while_later_threads_may_use_every_core():
    allowed = sorted(os.sched_getaffinity(0))
    confined = _child(1)
    assert confined["message"] == f"train.xla_cpu_cores=1: XLA's CPU pool on cores [{allowed[0]}] of {allowed}"
    # one core's worth of CPU time at most while XLA multiplies (two cores' worth when XLA has both, idle machine)
    assert confined["cpu_per_wall"] < 1.2, confined
    assert confined["later_thread"] == allowed  # the input pipeline's threads are not confined
    assert confined["again"].startswith("WARNING: train.xla_cpu_cores=1 not applied: JAX's backends were started")
    assert _child(0)["message"] == ""


def test_a_negative_core_count_is_refused(tiny_config):
    from semrel_jax import recipe

    tiny_config.train.xla_cpu_cores = -1
    with pytest.raises(ConfigError, match="train.xla_cpu_cores"):
        recipe.prepare_config(tiny_config)
