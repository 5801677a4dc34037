"""Multi-host: how ``distributed.initialize`` decides, and a real two-process run on localhost.

The two-process test starts ``python -m semrel_jax.main`` twice with ``SEMREL_COORDINATOR_ADDRESS``/
``SEMREL_NUM_PROCESSES``/``SEMREL_PROCESS_ID`` (one CPU device each, so the mesh is ``data=2`` across
processes and every step is a cross-process collective over gloo), preempts one of them with SIGTERM (both
must stop at the same step, saved, and exit 0), then reruns both with more steps on the same workdir: they must resume
from the saved step, and only process 0 may write metrics.
"""

import json
import re
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import CHEAP_CODEGEN  # the suite's XLA flags (tests/conftest.py)

from semrel_jax.training import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- 1. The decision, as a pure function of the environment ---------------------------------------

EXPLICIT = {"SEMREL_COORDINATOR_ADDRESS": "10.0.0.1:1234", "SEMREL_NUM_PROCESSES": "4", "SEMREL_PROCESS_ID": "2"}
SLURM = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
         "SLURM_LOCALID": "0", "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}


def test_explicit_variables_pass_through_with_detection_off():
    d = distributed.decide(EXPLICIT)
    assert d.mode == "explicit"
    assert d.kwargs == dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2,
                            cluster_detection_method="deactivate")
    d = distributed.decide(dict(EXPLICIT, SEMREL_LOCAL_DEVICE_IDS="0, 1,2,3"))
    assert d.kwargs["local_device_ids"] == [0, 1, 2, 3]
    # Explicit variables win over a detected cluster (e.g. ssh launches from inside a SLURM allocation).
    assert distributed.decide(dict(SLURM, **EXPLICIT)).mode == "explicit"


@pytest.mark.parametrize("env, message", [
    ({"SEMREL_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "missing"),
    (dict(EXPLICIT, SEMREL_COORDINATOR_ADDRESS="10.0.0.1"), "host:port"),
    (dict(EXPLICIT, SEMREL_PROCESS_ID="4"), "must be in"),
    (dict(EXPLICIT, SEMREL_NUM_PROCESSES="two"), "integer"),
    (dict(EXPLICIT, SEMREL_LOCAL_DEVICE_IDS="0,0"), "distinct"),
    (dict(EXPLICIT, SEMREL_LOCAL_DEVICE_IDS="gpu0"), "comma-separated"),
    ({"SEMREL_DISTRIBUTED": "yes"}, "SEMREL_DISTRIBUTED"),
])
def test_explicit_variables_are_validated(env, message):
    with pytest.raises(distributed.DistributedConfigError, match=message):
        distributed.decide(env)


def test_slurm_step_with_several_tasks_uses_jax_auto_detection():
    d = distributed.decide(SLURM)
    assert d.mode == "auto" and "coordinator_address" not in d.kwargs
    assert "local_device_ids" not in d.kwargs  # GPU count unknown: JAX's default, with a warning in the reason
    assert "only local device 0" in d.reason
    # One task per node drives all of the node's GPUs (JAX alone would give each task one GPU).
    assert distributed.decide(dict(SLURM, SLURM_GPUS_ON_NODE="8")).kwargs["local_device_ids"] == list(range(8))
    assert distributed.decide(dict(SLURM, CUDA_VISIBLE_DEVICES="4,5")).kwargs["local_device_ids"] == [0, 1]
    assert distributed.decide(dict(SLURM, SEMREL_LOCAL_DEVICE_IDS="1,3")).kwargs["local_device_ids"] == [1, 3]
    # One task per GPU: JAX's own one-device-per-task default.
    per_gpu = dict(SLURM, SLURM_NTASKS="16", SLURM_STEP_TASKS_PER_NODE="8(x2)", SLURM_GPUS_ON_NODE="8")
    assert distributed.decide(per_gpu).mode == "auto" and distributed.decide(per_gpu).kwargs == {}


def test_slurm_single_task_or_batch_script_is_single_process():
    assert distributed.decide(dict(SLURM, SLURM_NTASKS="1")).mode == "single"
    batch_script = {k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"}  # python run without srun
    d = distributed.decide(batch_script)
    assert d.mode == "single" and "srun" in d.reason


def test_open_mpi_and_tpu_slices_use_jax_auto_detection():
    ompi = {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911", "OMPI_COMM_WORLD_SIZE": "4",
            "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_SIZE": "1", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert distributed.decide(ompi).mode == "auto"
    assert distributed.decide(ompi).kwargs == {"local_device_ids": [0, 1]}
    assert distributed.decide(dict(ompi, OMPI_COMM_WORLD_SIZE="1")).mode == "single"

    assert distributed.decide({"TPU_WORKER_HOSTNAMES": "t-w-0,t-w-1,t-w-2,t-w-3", "TPU_WORKER_ID": "1"}).mode == "auto"
    assert distributed.decide({"TPU_WORKER_HOSTNAMES": "t-w-0", "TPU_WORKER_ID": "0"}).mode == "single"
    assert distributed.decide({"MEGASCALE_NUM_SLICES": "2"}).mode == "auto"
    assert distributed.decide({}, tpu_processes=4).mode == "auto"  # GCE TPU VM, worker list from metadata
    assert distributed.decide({}, tpu_processes=1).mode == "single"  # v4-8 etc.: one host
    assert distributed.decide({}, tpu_processes=4).kwargs == {}  # never restrict TPU devices


def test_gce_tpu_vm_process_count_from_metadata(monkeypatch):
    from jax._src import cloud_tpu_init

    metadata = {"worker-network-endpoints": "t-w-0:uid0:10.0.0.2,t-w-1:uid1:10.0.0.3",
                "tpu-env": "ACCELERATOR_TYPE: 'v5litepod-16'\nMEGASCALE_NUM_SLICES: '2'\n"}
    monkeypatch.setattr(distributed, "_metadata", lambda key, timeout: metadata[key])
    monkeypatch.delenv("TPU_SKIP_MDS_QUERY", raising=False)
    monkeypatch.setattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False)
    assert distributed._gce_tpu_processes() is None  # not a TPU VM: no metadata query
    monkeypatch.setattr(cloud_tpu_init, "running_in_cloud_tpu_vm", True)
    assert distributed._gce_tpu_processes() == 4  # 2 workers x 2 slices
    metadata["tpu-env"] = "ACCELERATOR_TYPE: 'v4-8'\n"
    metadata["worker-network-endpoints"] = "t-w-0:uid0:10.0.0.2"
    assert distributed._gce_tpu_processes() == 1


def test_switch_and_default():
    assert distributed.decide({}).mode == "single"
    assert distributed.decide(dict(SLURM, SEMREL_DISTRIBUTED="off")).mode == "single"
    assert distributed.decide(dict(EXPLICIT, SEMREL_DISTRIBUTED="off")).mode == "single"
    assert distributed.decide({"SEMREL_DISTRIBUTED": "auto"}).mode == "auto"


def test_initialize_calls_jax_once_with_the_decision(monkeypatch):
    import jax

    calls = []
    monkeypatch.setattr(distributed, "_decision", None)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    first = distributed.initialize(EXPLICIT)
    assert first.mode == "explicit" and calls == [first.kwargs]
    assert distributed.initialize(EXPLICIT) is first and len(calls) == 1  # idempotent

    monkeypatch.setattr(distributed, "_decision", None)
    assert distributed.initialize({}).mode == "single" and len(calls) == 1  # nothing to start
    monkeypatch.setattr(distributed, "_decision", None)


# --- 2. Two real processes on localhost -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two(workdir, num_steps, logs, tag, cache, sigterm_process_0_after_logs=None):
    port = _free_port()
    cmd = [sys.executable, "-m", "semrel_jax.main", "--config=configs/vqa.py:tiny", f"--workdir={workdir}",
           f"--config.train.num_steps={num_steps}", "--config.train.checkpoint_every=100000",
           "--config.eval.num_examples=4", "--config.eval.batch_size=4", "--config.model.llm.n_layers=1"]
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SEMREL_", "XLA_FLAGS", "JAX_", "SLURM_", "OMPI_", "TPU_"))}
    procs = []
    for pid in range(2):
        env = dict(base, JAX_PLATFORMS="cpu", SEMREL_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   SEMREL_NUM_PROCESSES="2", SEMREL_PROCESS_ID=str(pid),
                   JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
                   # Compile time dominates on CPU; cheaper LLVM passes (no device-count flags).
                   XLA_FLAGS=CHEAP_CODEGEN)
        log = open(logs / f"{tag}-p{pid}.log", "w")
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    deadline = time.time() + 300  # generous: a loaded 2-core machine takes a minute to the first step
    if sigterm_process_0_after_logs is not None:
        # preemption that reaches one host only (schedulers signal hosts independently), once training is under way
        metrics = workdir / "metrics.jsonl"
        while time.time() < deadline and procs[0][0].poll() is None and not (
                metrics.exists() and metrics.read_text().count("\n") >= sigterm_process_0_after_logs):
            time.sleep(0.2)
        procs[0][0].send_signal(signal.SIGTERM)
    try:
        for proc, _ in procs:
            proc.wait(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    outputs = [(logs / f"{tag}-p{pid}.log").read_text() for pid in range(2)]
    for pid, (proc, _) in enumerate(procs):
        assert proc.returncode == 0, f"{tag}: process {pid} exited {proc.returncode}:\n{outputs[pid][-4000:]}"
    return outputs


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _steps_on_disk(workdir):
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    return sorted(int(n) for n in names if n.isdigit())


def test_two_processes_train_stop_together_on_sigterm_to_one_and_resume(tmp_path):
    """One scenario, two rounds of two processes (each round is ~a minute of compiling on 2 cores)."""
    workdir, logs = tmp_path / "run", tmp_path / "logs"
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_cache"))  # the suite's (conftest)
    logs.mkdir()
    # Round 1. No tokenizer is cached beforehand: process 0 trains it, the other waits and loads it. A SIGTERM that
    # reaches process 0 only (schedulers signal hosts independently) stops both at the same step, saved, exit 0 --
    # although checkpoint_every alone would not save before step 100000.
    out0, out1 = _run_two(workdir, 400, logs, "preempted", cache, sigterm_process_0_after_logs=2)
    for pid, out in enumerate((out0, out1)):
        assert f"distributed: explicit (process {pid} of 2" in out, out[-3000:]
    assert "mesh {'data': 2, 'fsdp': 1, 'tensor': 1}" in out0, out0[-3000:]  # one device per process, both in the mesh
    assert "over 1 local devices" in out0 and "start step 0" in out0
    assert "preempted: checkpoint saved at step" in out0, out0[-3000:]
    stopped = int(re.search(r"preempted: checkpoint saved at step (\d+)", out0).group(1))
    # both agreed, the save committed (step 1: Orbax saves a run's first step; checkpoint_every never came due)
    assert 1 < stopped < 400 and _steps_on_disk(workdir) == [1, stopped]
    assert "start step" not in out1  # process 1 prints and writes nothing
    first = _records(workdir)
    assert {r["split"] for r in first} == {"train"} and first[-1]["step"] <= stopped
    assert not (workdir / "results.json").exists()

    # Round 2: both resume from the saved step and finish; process 0 alone appends metrics and evaluates.
    out0, out1 = _run_two(workdir, stopped + 2, logs, "resumed", cache)
    assert f"start step {stopped}" in out0, out0[-3000:]
    assert "start step" not in out1 and "examples:" not in out1
    assert max(_steps_on_disk(workdir)) == stopped + 2
    records = _records(workdir)
    assert records[:len(first)] == first  # appended, never rewritten
    assert [r["split"] for r in records[len(first):]][-1] == "eval" and records[-1]["step"] == stopped + 2
    assert json.loads((workdir / "results.json").read_text())["num_examples"] == 4
    # Exactly one metrics file: nothing per process anywhere in the workdir.
    assert [p.relative_to(workdir) for p in workdir.rglob("metrics*.jsonl")] == [type(workdir)("metrics.jsonl")]
    assert len(list((workdir / "tensorboard").iterdir())) == 2  # one event file per run, from process 0 only
