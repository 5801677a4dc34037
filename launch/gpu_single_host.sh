#!/usr/bin/env bash
# One process driving all (or the chosen) GPUs of this host: the mesh spans every visible GPU.
#
# Usage:
#   launch/gpu_single_host.sh [--gpus=0,1,2,3] [--mem-fraction=0.9] [--dry-run] -- MAIN_ARGS...
#
#   --gpus=LIST         GPUs to use (sets CUDA_VISIBLE_DEVICES); default: all visible GPUs
#   --mem-fraction=F    fraction of each GPU's memory JAX preallocates (XLA_PYTHON_CLIENT_MEM_FRACTION);
#                       default: JAX's own (0.75)
#   --dry-run           print the command and environment instead of running it
#   MAIN_ARGS           arguments of `python -m semrel_jax.main` (--config=..., --workdir=..., --config.x=...)
#                       run from the repository root: relative paths are relative to it
#
# Environment: PYTHON (default: python3) is the interpreter with semrel_jax and jax[cuda12] installed.
#
# Example (8 GPUs, data-parallel over 4 and FSDP over 2):
#   launch/gpu_single_host.sh -- --config=configs/vqa.py:lsrm_7b --workdir=/data/runs/lsrm7b \
#       --config.mesh.data=4 --config.mesh.fsdp=2
#
# Distributed initialisation is switched off (SEMREL_DISTRIBUTED=off): even inside a SLURM allocation or
# an mpirun this is one process, never a member of a multi-process job. For several hosts see
# launch/slurm.sbatch, launch/ssh_multi_node.sh or launch/tpu_vm.sh.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

gpus="" mem_fraction="" dry_run=0
while (($#)); do
  case "$1" in
    --gpus=*) gpus="${1#*=}" ;;
    --mem-fraction=*) mem_fraction="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "unknown option: $1 (main's arguments go after --)" >&2; usage 2 ;;
  esac
  shift
done
(($#)) || { echo "missing MAIN_ARGS after --" >&2; usage 2; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"

# One process: no SEMREL_* coordinates may leak in from the caller's environment.
unset SEMREL_COORDINATOR_ADDRESS SEMREL_NUM_PROCESSES SEMREL_PROCESS_ID SEMREL_LOCAL_DEVICE_IDS
export SEMREL_DISTRIBUTED=off
[[ -n "$gpus" ]] && export CUDA_VISIBLE_DEVICES="$gpus"
[[ -n "$mem_fraction" ]] && export XLA_PYTHON_CLIENT_MEM_FRACTION="$mem_fraction"

if command -v nvidia-smi >/dev/null 2>&1; then
  echo "GPUs on $(hostname) (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-all}):" >&2
  nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader >&2 || true
else
  echo "warning: nvidia-smi not found; JAX will fall back to CPU if it sees no GPU" >&2
fi

cmd=("$python" -m semrel_jax.main "$@")
if ((dry_run)); then
  echo "cd $repo && SEMREL_DISTRIBUTED=off CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-} $(printf '%q ' "${cmd[@]}")"
  exit 0
fi
cd "$repo"
exec "${cmd[@]}"
