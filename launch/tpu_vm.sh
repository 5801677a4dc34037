#!/usr/bin/env bash
# Cloud TPU VMs (single host or pod slice): create, install this repository on every worker, run the same
# command on all workers at once, stop/delete. Wraps `gcloud compute tpus ...`.
#
# Usage:
#   launch/tpu_vm.sh SUBCOMMAND [ARGS...]
#
#   create             create the TPU VM (QUEUED=1: as a queued resource, waits until it is ACTIVE)
#   setup              copy this working tree to ~/semrel_jax on every worker; make ~/venv with jax[tpu]
#                      and the package installed editable
#   mount-nfs SRC DIR  mount an NFS share (e.g. Filestore 10.0.0.2:/vol1) at DIR on every worker: the
#                      workdir of a multi-host run must be shared by all workers
#   run -- MAIN_ARGS   run `python -m semrel_jax.main MAIN_ARGS` on all workers, in the foreground
#   run-detached -- MAIN_ARGS   the same under nohup (survives this shell); logs in ~/semrel_run.log
#   logs [WORKER]      follow a worker's ~/semrel_run.log (default: worker 0)
#   kill               stop the detached run on every worker (the pid it recorded, SIGTERM: checkpoint, exit)
#   ssh [WORKER]       interactive shell on a worker (default: 0)
#   status             describe the TPU (and the queued resource)
#   stop | start       stop / start the TPU VM (not available for pod slices and queued resources)
#   delete             delete the TPU VM (QUEUED=1: the queued resource with it)
#
# Settings (environment variables):
#   TPU_NAME           required: name of the TPU VM (and of the queued resource when QUEUED=1)
#   ZONE               required: e.g. us-central2-b (v4), us-west4-a (v5e), europe-west4-a (v6e)
#   ACCELERATOR_TYPE   default v4-16 (2 workers); v4-8, v5litepod-16, v6e-16, ...
#   RUNTIME_VERSION    default tpu-ubuntu2204-base (v4); v2-alpha-tpuv5-lite (v5e), v2-alpha-tpuv6e (v6e)
#   PROJECT            GCP project (default: gcloud's configured project)
#   QUEUED=1           create through a queued resource (capacity is granted when available)
#   SPOT=1             spot capacity (can be preempted; runs resume from checkpoints)
#   JAX_INSTALL        what setup installs for JAX (default: "jax[tpu]")
#
# Example (a 2-worker v4-16, a shared Filestore share as workdir):
#   export TPU_NAME=semrel-v4 ZONE=us-central2-b ACCELERATOR_TYPE=v4-16
#   launch/tpu_vm.sh create && launch/tpu_vm.sh setup
#   launch/tpu_vm.sh mount-nfs 10.0.0.2:/vol1 /mnt/shared
#   launch/tpu_vm.sh run -- --config=configs/vqa.py:lsrm_7b --workdir=/mnt/shared/runs/lsrm7b --config.mesh.fsdp=8
#   launch/tpu_vm.sh delete
#
# Distributed initialisation: `run` sets SEMREL_DISTRIBUTED=auto, so every worker calls
# jax.distributed.initialize() without arguments and JAX reads the slice's worker list and this worker's
# id from the TPU metadata server (worker 0 is the coordinator, port 8482). A single-host TPU VM is then
# simply a one-process job.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

(($#)) || usage 2
subcommand="$1"
shift
case "$subcommand" in -h|--help|help) usage 0 ;; esac

: "${TPU_NAME:?set TPU_NAME (name of the TPU VM)}"
: "${ZONE:?set ZONE (e.g. us-central2-b)}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-16}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
JAX_INSTALL="${JAX_INSTALL:-jax[tpu]}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC2088  # the tilde is meant for the workers' shells, not this one
remote_repo='~/semrel_jax' remote_python='~/venv/bin/python'

common=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && common+=(--project="$PROJECT")

on_workers() {  # on_workers WORKER COMMAND: run a shell command on one worker or on all of them
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${common[@]}" --worker="$1" --command="$2"
}

quoted_main() {  # the main command line for the workers' shells, every argument quoted; exec: same pid
  printf 'cd %s && exec env SEMREL_DISTRIBUTED=auto %s -m semrel_jax.main' "$remote_repo" "$remote_python"
  printf ' %q' "$@"
}

main_args() {  # sets args to MAIN_ARGS (what follows --)
  [[ "${1:-}" == "--" ]] && shift
  (($#)) || { echo "missing MAIN_ARGS: launch/tpu_vm.sh $subcommand -- --config=... --workdir=..." >&2; exit 2; }
  args=("$@")
}

case "$subcommand" in
  create)
    flags=("${common[@]}" --accelerator-type="$ACCELERATOR_TYPE")
    [[ "${SPOT:-0}" == 1 ]] && flags+=(--spot)
    if [[ "${QUEUED:-0}" == 1 ]]; then
      gcloud compute tpus queued-resources create "$TPU_NAME" "${flags[@]}" \
        --runtime-version="$RUNTIME_VERSION" --node-id="$TPU_NAME"
      echo "waiting for queued resource $TPU_NAME to become ACTIVE (Ctrl-C stops waiting, not the request)" >&2
      while true; do
        state="$(gcloud compute tpus queued-resources describe "$TPU_NAME" "${common[@]}" --format='value(state.state)')"
        echo "$(date +%H:%M:%S) $state" >&2
        case "$state" in
          ACTIVE) break ;;
          FAILED|SUSPENDED) echo "queued resource is $state" >&2; exit 1 ;;
        esac
        sleep 30
      done
    else
      gcloud compute tpus tpu-vm create "$TPU_NAME" "${flags[@]}" --version="$RUNTIME_VERSION"
    fi
    ;;
  setup)
    archive="$(mktemp -t semrel_jax.XXXXXX.tar.gz)"
    trap 'rm -f "$archive"' EXIT
    # The working tree as it is (uncommitted changes included), without VCS data, caches or local runs.
    tar -C "$repo" -czf "$archive" --exclude=./.git --exclude='__pycache__' --exclude='*.egg-info' \
      --exclude=./.venv --exclude=./venv --exclude=./runs --exclude=./logs --exclude=./.whl --exclude=.pytest_cache .
    gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":semrel_jax.tar.gz "${common[@]}" --worker=all
    on_workers all "set -e; rm -rf $remote_repo && mkdir -p $remote_repo && tar -xzf ~/semrel_jax.tar.gz -C $remote_repo
      python3 -m venv ~/venv && ~/venv/bin/pip install -q -U pip
      ~/venv/bin/pip install -q -U $(printf %q "$JAX_INSTALL") && ~/venv/bin/pip install -q -e $remote_repo
      echo \"\$(hostname): \$(~/venv/bin/python -c 'import jax, semrel_jax; print(\"jax\", jax.__version__)')\""
    ;;
  mount-nfs)
    (($# == 2)) || { echo "usage: launch/tpu_vm.sh mount-nfs SERVER:/EXPORT MOUNT_DIR" >&2; exit 2; }
    src="$(printf %q "$1")" dir="$(printf %q "$2")"
    on_workers all "set -e; command -v mount.nfs >/dev/null || { sudo apt-get update -q && sudo apt-get install -y -q nfs-common; }
      sudo mkdir -p $dir; mountpoint -q $dir || sudo mount -t nfs -o rw,hard $src $dir; sudo chmod a+rwx $dir"
    ;;
  run)
    main_args "$@"
    on_workers all "$(quoted_main "${args[@]}")"
    ;;
  run-detached)
    main_args "$@"
    on_workers all "nohup bash -c $(printf %q "$(quoted_main "${args[@]}")") > ~/semrel_run.log 2>&1 < /dev/null &
      echo \$! > ~/semrel_run.pid; echo \"\$(hostname): pid \$(cat ~/semrel_run.pid), log ~/semrel_run.log\""
    ;;
  logs)
    on_workers "${1:-0}" "tail -n +1 -f ~/semrel_run.log"
    ;;
  kill)
    on_workers all "if test -f ~/semrel_run.pid; then kill -TERM \$(cat ~/semrel_run.pid) && echo \"\$(hostname): SIGTERM sent\"; rm -f ~/semrel_run.pid; fi; true"
    ;;
  ssh)
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${common[@]}" --worker="${1:-0}"
    ;;
  status)
    if [[ "${QUEUED:-0}" == 1 ]]; then
      gcloud compute tpus queued-resources describe "$TPU_NAME" "${common[@]}"
    fi
    gcloud compute tpus tpu-vm describe "$TPU_NAME" "${common[@]}" \
      --format='table(name.basename(), acceleratorType, state, health, networkEndpoints.len():label=WORKERS)'
    ;;
  stop|start)
    gcloud compute tpus tpu-vm "$subcommand" "$TPU_NAME" "${common[@]}"
    ;;
  delete)
    if [[ "${QUEUED:-0}" == 1 ]]; then
      gcloud compute tpus queued-resources delete "$TPU_NAME" "${common[@]}" --force --quiet
    else
      gcloud compute tpus tpu-vm delete "$TPU_NAME" "${common[@]}" --quiet
    fi
    ;;
  *)
    echo "unknown subcommand: $subcommand" >&2
    usage 2
    ;;
esac
