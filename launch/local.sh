#!/usr/bin/env bash
# Runs N processes of one command on this machine as a multi-host JAX run.
#
# Each process gets --coordinator_address=127.0.0.1:PORT --num_processes=N
# --process_id=i appended to the command. With -d, each process sees D CPU
# devices (XLA_FLAGS) and uses gloo collectives, so N x D CPU devices form one
# global mesh: a pod slice in miniature, for tests and debugging.
# Process 0 writes to this terminal; process i > 0 to LOGDIR/process_i.log.
# If any process fails, the others are stopped and its exit status returned.
#
# Usage:
#   launch/local.sh [-n N] [-d D] [-p PORT] [-l LOGDIR] [-t TIMEOUT_S] -- CMD...
# Example (2 processes x 2 CPU devices, the tiny digits config):
#   launch/local.sh -n 2 -d 2 -- python -m simclr_jax.main \
#       --config=configs/digits.py:tiny --workdir=runs/tiny_2proc
set -euo pipefail

n=2
devices=""
port=""
logdir=""
timeout_s=0
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while getopts "n:d:p:l:t:h" opt; do
  case "$opt" in
    n) n="$OPTARG" ;;
    d) devices="$OPTARG" ;;
    p) port="$OPTARG" ;;
    l) logdir="$OPTARG" ;;
    t) timeout_s="$OPTARG" ;;
    h) usage 0 ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
if [[ $# -eq 0 ]]; then echo "local.sh: no command given" >&2; usage; fi
if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
  echo "local.sh: -n $n is invalid: a positive number of processes" >&2; exit 2
fi
if [[ -n "$devices" && ! "$devices" =~ ^[1-9][0-9]*$ ]]; then
  echo "local.sh: -d $devices is invalid: a positive device count" >&2; exit 2
fi

python_bin="${PYTHON:-python3}"
if [[ -z "$port" ]]; then
  # A free port from the OS (the coordinator binds it a moment later).
  port="$("$python_bin" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
logdir="${logdir:-$(mktemp -d -t simclr_local.XXXXXX)}"
mkdir -p "$logdir"

if [[ -n "$devices" ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices"
fi

pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 2
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT TERM

runner=()
if [[ "$timeout_s" -gt 0 ]]; then
  # Each process is stopped after TIMEOUT_S (exit 124), which stops the rest.
  runner=(timeout --kill-after=5 "$timeout_s")
fi

echo "local.sh: $n processes, coordinator 127.0.0.1:$port, logs in $logdir" >&2
for ((i = 0; i < n; i++)); do
  flags=(--coordinator_address="127.0.0.1:$port" --num_processes="$n"
         --process_id="$i")
  if [[ $i -eq 0 ]]; then
    "${runner[@]}" "$@" "${flags[@]}" &
  else
    "${runner[@]}" "$@" "${flags[@]}" > "$logdir/process_$i.log" 2>&1 &
  fi
  pids+=("$!")
done

status=0
alive=("${pids[@]}")
while [[ ${#alive[@]} -gt 0 ]]; do
  rc=0
  finished=""
  wait -n -p finished "${alive[@]}" || rc=$?
  remaining=()
  for pid in "${alive[@]}"; do
    [[ "$pid" != "$finished" ]] && remaining+=("$pid")
  done
  alive=("${remaining[@]}")
  if [[ $rc -ne 0 ]]; then
    status=$rc
    echo "local.sh: a process exited with status $status; stopping the others" >&2
    stop_all
    for ((i = 1; i < n; i++)); do
      echo "--- tail of $logdir/process_$i.log" >&2
      tail -n 20 "$logdir/process_$i.log" >&2 || true
    done
    break
  fi
done
exit "$status"
