"""Starting the multi-controller runtime: one Python process per host, all running the same program.

``initialize()`` is called first thing in ``main`` (before anything touches a device) and picks one of:

``explicit``  ``SEMREL_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``SEMREL_NUM_PROCESSES`` and
              ``SEMREL_PROCESS_ID`` are set (``launch/ssh_multi_node.sh``, the two-process test, any
              launcher of your own): ``jax.distributed.initialize(coordinator_address, num_processes,
              process_id, local_device_ids)`` with JAX's cluster detection switched off, so these values
              are used as given. Optional ``SEMREL_LOCAL_DEVICE_IDS=0,1,...`` restricts the GPUs this
              process drives (default: all local devices).
``auto``      a cluster JAX detects by itself, with more than one process: a TPU pod slice with more than
              one worker (GKE's ``TPU_WORKER_HOSTNAMES``/``TPU_PROCESS_ADDRESSES``, multislice
              ``MEGASCALE_NUM_SLICES``, or on a GCE TPU VM the metadata server's worker list), a SLURM job
              step with ``SLURM_NTASKS`` > 1 (launched with ``srun``), or Open MPI (``mpirun``, world size
              > 1): ``jax.distributed.initialize()`` with no coordinator arguments (JAX's own detection).
              Under SLURM/Open MPI JAX would restrict each process to ONE GPU (the one matching its local
              rank); when this process is the only task on its node it gets all the node's GPUs instead
              (``SLURM_GPUS_ON_NODE`` or ``CUDA_VISIBLE_DEVICES``; ``SEMREL_LOCAL_DEVICE_IDS`` overrides).
``single``    anything else: one process, nothing to start.

``SEMREL_DISTRIBUTED=off`` forces ``single``; ``SEMREL_DISTRIBUTED=auto`` forces ``auto`` (for clusters
JAX knows but this module does not look for, e.g. Kubernetes jobs or ``mpi4py``).

CPU-only multi-process runs (the tests) need cross-process CPU collectives; JAX >= 0.5 defaults
``jax_cpu_collectives_implementation`` to ``gloo``; where it is unset it is set to ``gloo`` here.
"""

from __future__ import annotations

import dataclasses
import os
import urllib.request
from collections.abc import Mapping

from absl import logging

_EXPLICIT = ("SEMREL_COORDINATOR_ADDRESS", "SEMREL_NUM_PROCESSES", "SEMREL_PROCESS_ID")
# What JAX's SLURM detection reads (jax/_src/clusters/slurm_cluster.py); srun sets them in each task.
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


@dataclasses.dataclass(frozen=True)
class Decision:
    mode: str  # 'explicit' | 'auto' | 'single' | 'external' (jax.distributed already started by the caller)
    reason: str
    kwargs: dict = dataclasses.field(default_factory=dict)  # for jax.distributed.initialize

    def describe(self) -> str:
        text = f"distributed: {self.mode} ({self.reason})"
        if self.mode in ("explicit", "auto"):
            text += f"; jax.distributed.initialize({', '.join(f'{k}={v!r}' for k, v in self.kwargs.items())})"
        return text


class DistributedConfigError(ValueError):
    pass


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise DistributedConfigError(f"{name}={env[name]!r}: expected an integer") from None


def _device_ids(text: str, name: str = "SEMREL_LOCAL_DEVICE_IDS") -> list[int]:
    try:
        ids = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise DistributedConfigError(f"{name}={text!r}: expected comma-separated integers such as 0,1,2,3") from None
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
        raise DistributedConfigError(f"{name}={text!r}: expected distinct non-negative integers")
    return ids


def _count(text: str | None) -> int:
    return len([x for x in (text or "").split(",") if x.strip()])


def _tasks_on_this_node(env: Mapping[str, str]) -> int | None:
    """SLURM_STEP_TASKS_PER_NODE is like '2', '1(x4)' or '2(x3),1'; the same count on every node -> that count."""
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if not spec:
        return None
    counts = {part.split("(")[0] for part in spec.split(",")}
    return int(counts.pop()) if len(counts) == 1 and next(iter(counts)).isdigit() else None


def _whole_node_devices(env: Mapping[str, str], tasks_on_node: int | None) -> tuple[list[int] | None, str]:
    """local_device_ids for a SLURM/MPI process that is alone on its node (else None: JAX's one GPU per task)."""
    if "SEMREL_LOCAL_DEVICE_IDS" in env:
        return _device_ids(env["SEMREL_LOCAL_DEVICE_IDS"]), "SEMREL_LOCAL_DEVICE_IDS"
    if tasks_on_node != 1:
        return None, "one device per task (JAX default under SLURM/MPI)"
    if env.get("SLURM_GPUS_ON_NODE", "").isdigit() and int(env["SLURM_GPUS_ON_NODE"]) > 0:
        return list(range(int(env["SLURM_GPUS_ON_NODE"]))), "one task on this node: all SLURM_GPUS_ON_NODE"
    if _count(env.get("CUDA_VISIBLE_DEVICES")):
        return list(range(_count(env["CUDA_VISIBLE_DEVICES"]))), "one task on this node: all CUDA_VISIBLE_DEVICES"
    return None, ("one task on this node but its GPU count is unknown: JAX will use only local device 0 "
                  "(set SEMREL_LOCAL_DEVICE_IDS=0,1,... to use all)")


def decide(env: Mapping[str, str], tpu_processes: int | None = None) -> Decision:
    """The choice ``initialize`` makes, as a pure function of the environment.

    ``tpu_processes``: workers per slice x slices of this GCE TPU VM, from the metadata server (None when
    not on a GCE TPU VM or unknown); GKE and multislice TPUs are also recognised from ``env`` alone.
    """
    switch = env.get("SEMREL_DISTRIBUTED", "").strip().lower()
    if switch not in ("", "auto", "off"):
        raise DistributedConfigError(f"SEMREL_DISTRIBUTED={switch!r}: expected 'auto', 'off' or unset")
    if switch == "off":
        return Decision("single", "SEMREL_DISTRIBUTED=off")

    explicit = [name for name in _EXPLICIT if env.get(name, "") != ""]
    if explicit:
        missing = [name for name in _EXPLICIT if name not in explicit]
        if missing:
            raise DistributedConfigError(f"{', '.join(explicit)} set but {', '.join(missing)} missing; set all three.")
        address = env["SEMREL_COORDINATOR_ADDRESS"].strip()
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise DistributedConfigError(f"SEMREL_COORDINATOR_ADDRESS={address!r}: expected host:port")
        num, pid = _int(env, "SEMREL_NUM_PROCESSES"), _int(env, "SEMREL_PROCESS_ID")
        if num < 1 or not 0 <= pid < num:
            raise DistributedConfigError(f"SEMREL_PROCESS_ID={pid} must be in [0, SEMREL_NUM_PROCESSES={num})")
        kwargs = dict(coordinator_address=address, num_processes=num, process_id=pid)
        if env.get("SEMREL_LOCAL_DEVICE_IDS"):
            kwargs["local_device_ids"] = _device_ids(env["SEMREL_LOCAL_DEVICE_IDS"])
        kwargs["cluster_detection_method"] = "deactivate"  # the values above, not a detected cluster's
        return Decision("explicit", f"process {pid} of {num}, coordinator {address}", kwargs)

    if switch == "auto":
        return Decision("auto", "SEMREL_DISTRIBUTED=auto")

    # TPU: GKE sets the worker list in the environment; multislice sets MEGASCALE_*; GCE via metadata.
    gke_workers = _count(env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES"))
    slices = int(env["MEGASCALE_NUM_SLICES"]) if env.get("MEGASCALE_NUM_SLICES", "").isdigit() else 1
    if gke_workers > 1 or slices > 1 or (tpu_processes or 0) > 1:
        if tpu_processes:
            return Decision("auto", f"TPU VM: {tpu_processes} workers in all (metadata server)")
        return Decision("auto", f"TPU: {max(gke_workers, 1)} worker(s) per slice x {slices} slice(s)")

    if all(name in env for name in _SLURM_VARS) and _int(env, "SLURM_NTASKS") > 1:
        ids, why = _whole_node_devices(env, _tasks_on_this_node(env))
        kwargs = {"local_device_ids": ids} if ids is not None else {}
        return Decision("auto", f"SLURM job {env['SLURM_JOB_ID']}, task {env['SLURM_PROCID']} of "
                                f"{env['SLURM_NTASKS']}; devices: {why}", kwargs)

    if "OMPI_MCA_orte_hnp_uri" in env and "OMPI_COMM_WORLD_SIZE" in env and _int(env, "OMPI_COMM_WORLD_SIZE") > 1:
        local_size = env.get("OMPI_COMM_WORLD_LOCAL_SIZE", "")
        ids, why = _whole_node_devices(env, int(local_size) if local_size.isdigit() else None)
        kwargs = {"local_device_ids": ids} if ids is not None else {}
        return Decision("auto", f"Open MPI rank {env.get('OMPI_COMM_WORLD_RANK')} of {env['OMPI_COMM_WORLD_SIZE']}; "
                                f"devices: {why}", kwargs)

    if env.get("SLURM_NTASKS", "1").isdigit() and int(env.get("SLURM_NTASKS", "1")) > 1:
        return Decision("single", f"SLURM_NTASKS={env['SLURM_NTASKS']} but not inside an srun step "
                                  f"({', '.join(v for v in _SLURM_VARS if v not in env)} unset); launch with srun")
    return Decision("single", "no SEMREL_* variables and no multi-process cluster detected")


def _metadata(key: str, timeout: float) -> str:
    host = os.environ.get("GCE_METADATA_IP", "metadata.google.internal")
    url = f"http://{host}/computeMetadata/v1/instance/attributes/{key}"
    request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read().decode()


def _gce_tpu_processes(timeout: float = 5.0) -> int | None:
    """Workers per slice x slices of this GCE TPU VM (the metadata JAX itself reads); None off TPU VMs."""
    try:
        from jax._src import cloud_tpu_init  # private, only read: True when jax was imported on a TPU VM
    except ImportError:
        return None
    if not getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False) or os.environ.get("TPU_SKIP_MDS_QUERY"):
        return None
    try:
        workers = _count(_metadata("worker-network-endpoints", timeout))
        slices = 1
        for line in _metadata("tpu-env", timeout).splitlines():  # lines like MEGASCALE_NUM_SLICES: '2'
            key, _, value = line.partition(":")
            if key.strip() == "MEGASCALE_NUM_SLICES" and value.strip().strip("'\"").isdigit():
                slices = int(value.strip().strip("'\""))
        return workers * slices
    except OSError as e:
        logging.warning("distributed: TPU VM metadata unreachable (%s); treating it as a single worker", e)
        return None


_decision: Decision | None = None


def initialize(env: Mapping[str, str] | None = None) -> Decision:
    """Starts the multi-controller runtime if the environment asks for it (see module doc); idempotent.

    Call before anything creates a JAX array or lists devices.
    """
    global _decision
    import jax

    if _decision is not None:
        return _decision
    if jax.distributed.is_initialized():  # started by the caller (a notebook, a wrapper script)
        _decision = Decision("external", "jax.distributed was already initialized by the caller")
        return _decision
    env = os.environ if env is None else env
    needs_metadata = not env.get("SEMREL_DISTRIBUTED") and not env.get("SEMREL_COORDINATOR_ADDRESS")
    decision = decide(env, tpu_processes=_gce_tpu_processes() if needs_metadata else None)
    if decision.mode == "single":
        logging.info("%s", decision.describe())
    else:
        # Multi-process on CPU needs cross-process collectives (the default is gloo since JAX 0.5).
        if jax.config.jax_cpu_collectives_implementation is None:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        logging.warning("%s", decision.describe())  # shown at main's WARNING verbosity: multi-host setup matters
        jax.distributed.initialize(**decision.kwargs)
    _decision = decision
    return decision
