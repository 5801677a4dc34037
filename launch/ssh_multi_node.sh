#!/usr/bin/env bash
# Multi-host training over plain ssh: one `python -m semrel_jax.main` per host, process ids in host-list
# order, the first host is the coordinator. No cluster manager needed (bare-metal GPU nodes, cloud VMs).
#
# Usage:
#   launch/ssh_multi_node.sh [OPTIONS] HOSTS -- MAIN_ARGS...
#
#   HOSTS               comma-separated hosts (host or user@host), or @FILE with one host per line
#                       (# comments allowed). Host i runs process i; host 0 is the coordinator.
#   MAIN_ARGS           arguments of `python -m semrel_jax.main`, the same on every host. --workdir must be
#                       on a filesystem all hosts share (NFS, Lustre, a gcsfuse mount): Orbax writes each
#                       process's shards there and process 0 commits them.
#   --port=PORT         coordinator port on host 0 (default: 8476); must be reachable from the others
#   --coordinator=ADDR  address the hosts reach host 0 at (default: host 0's name without user@)
#   --repo=DIR          path of this repository on the hosts (default: the same path as here)
#   --python=CMD        interpreter on the hosts (default: python3), e.g. ~/venvs/semrel/bin/python
#   --env=NAME=VALUE    extra environment for every process (repeatable), e.g. --env=XLA_PYTHON_CLIENT_MEM_FRACTION=.9
#   --local-device-ids=LIST  GPUs each process drives (SEMREL_LOCAL_DEVICE_IDS; default: all)
#   --logs=DIR          one log per host (default: logs/ssh-<date>-<time>); host 0's log is also shown here
#   --dry-run           print the command each host would run, run nothing
#
#   SSH (default: ssh) and SSH_OPTS (extra options, word-split) choose the ssh client. Sessions get a
#   pseudo-terminal (-tt) so that ending this script (Ctrl-C, or one host failing) ends every remote
#   process instead of leaving the others waiting in a collective.
#
# Example (two 8-GPU hosts; the code and a virtualenv at the same paths on both):
#   launch/ssh_multi_node.sh --python="$HOME/venvs/semrel/bin/python" gpu-a,gpu-b -- \
#       --config=configs/vqa.py:lsrm_7b --workdir=/nfs/runs/lsrm7b --config.mesh.fsdp=8
#
# Each host gets SEMREL_COORDINATOR_ADDRESS=<host 0>:<port>, SEMREL_NUM_PROCESSES=<number of hosts> and
# SEMREL_PROCESS_ID=<its index>, which semrel_jax.training.distributed passes to jax.distributed.initialize.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

port=8476 coordinator="" repo="" python="python3" logs="" dry_run=0 device_ids=""
extra_env=()
while (($#)); do
  case "$1" in
    --port=*) port="${1#*=}" ;;
    --coordinator=*) coordinator="${1#*=}" ;;
    --repo=*) repo="${1#*=}" ;;
    --python=*) python="${1#*=}" ;;
    --env=*) extra_env+=("${1#*=}") ;;
    --local-device-ids=*) device_ids="${1#*=}" ;;
    --logs=*) logs="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    -h|--help) usage 0 ;;
    -*) echo "unknown option: $1" >&2; usage 2 ;;
    *) break ;;
  esac
  shift
done
(($# >= 2)) && [[ "$2" == "--" ]] || { echo "expected: HOSTS -- MAIN_ARGS..." >&2; usage 2; }
host_spec="$1"
shift 2
(($#)) || { echo "missing MAIN_ARGS after --" >&2; usage 2; }

hosts=()
if [[ "$host_spec" == @* ]]; then
  while IFS= read -r line || [[ -n "$line" ]]; do
    line="${line%%#*}"
    line="${line//[[:space:]]/}"
    [[ -n "$line" ]] && hosts+=("$line")
  done < "${host_spec#@}"
else
  IFS=, read -r -a hosts <<< "$host_spec"
fi
((${#hosts[@]})) || { echo "no hosts in $host_spec" >&2; exit 2; }
[[ "$port" =~ ^[0-9]+$ ]] || { echo "--port: expected a number, got $port" >&2; exit 2; }
for kv in "${extra_env[@]}"; do
  [[ "$kv" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || { echo "--env: expected NAME=VALUE, got $kv" >&2; exit 2; }
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
repo="${repo:-$here}"
first="${hosts[0]#*@}"
coordinator="${coordinator:-$first}:$port"
num=${#hosts[@]}
logs="${logs:-logs/ssh-$(date +%Y%m%d-%H%M%S)}"
ssh_cmd=("${SSH:-ssh}")
# shellcheck disable=SC2206  # SSH_OPTS is a word-split list of options by design
[[ -n "${SSH_OPTS:-}" ]] && ssh_cmd+=($SSH_OPTS)

remote_command() {  # the shell command host $1 runs, every word quoted for the remote shell
  local env=(SEMREL_COORDINATOR_ADDRESS="$coordinator" SEMREL_NUM_PROCESSES="$num" SEMREL_PROCESS_ID="$1")
  [[ -n "$device_ids" ]] && env+=(SEMREL_LOCAL_DEVICE_IDS="$device_ids")
  env+=("${extra_env[@]}")
  printf 'cd %q && exec env' "$repo"
  printf ' %q' "${env[@]}" "$python" -m semrel_jax.main "${@:2}"
}

echo "$num processes, coordinator $coordinator, repo $repo" >&2
if ((dry_run)); then
  for i in "${!hosts[@]}"; do
    printf '%s: %s\n' "${hosts[$i]}" "$(remote_command "$i" "$@")"
  done
  exit 0
fi

mkdir -p "$logs"
pids=()
declare -A done_pids=()
cleanup() {  # ends the ssh sessions still running; their remote processes get SIGHUP
  local pid
  for pid in "${pids[@]}"; do
    [[ -n "${done_pids[$pid]:-}" ]] || kill "$pid" 2>/dev/null || true
  done
  [[ -n "${tail_pid:-}" ]] && kill "$tail_pid" 2>/dev/null || true
}
trap 'echo "interrupted: stopping all hosts" >&2; cleanup; exit 130' INT TERM
trap cleanup EXIT

for i in "${!hosts[@]}"; do
  log="$logs/$i-${hosts[$i]//[^A-Za-z0-9_.-]/_}.log"
  : >"$log"  # exists before tail opens it
  "${ssh_cmd[@]}" -tt -o BatchMode=yes "${hosts[$i]}" "$(remote_command "$i" "$@")" </dev/null >"$log" 2>&1 &
  pids+=("$!")
  echo "process $i on ${hosts[$i]}: log $log" >&2
done
tail -n +1 -f "$logs/0-${hosts[0]//[^A-Za-z0-9_.-]/_}.log" &
tail_pid=$!

# Wait for all; the first failure stops the others (they would block in a collective until timeout).
status=0 running=$num
while ((running)); do
  for i in "${!pids[@]}"; do
    pid="${pids[$i]}"
    [[ -n "${done_pids[$pid]:-}" ]] && continue
    kill -0 "$pid" 2>/dev/null && continue
    rc=0
    wait "$pid" || rc=$?
    done_pids[$pid]=1
    running=$((running - 1))
    if ((rc != 0 && status == 0)); then
      status=$rc
      echo "process $i on ${hosts[$i]} exited with $rc: stopping the others (see $logs)" >&2
      cleanup
    fi
  done
  ((running)) && sleep 1
done
sleep 0.5  # let tail print the last lines of host 0's log
exit "$status"
