#!/usr/bin/env bash
# System calls and context switches per operation: starts a 3-node Baton (bench/lib.sh) with
# --groups GROUPS, waits for every group's leader and the placement, then counts (perf stat,
# kernel tracepoints) the three servers' fdatasync, futex, writev and epoll_wait calls and
# context switches while `baton bench` runs WORKLOAD with CLIENTS for SECS, and prints each per
# operation. Usage: bench/syscalls.sh [GROUPS] [WORKLOAD] [CLIENTS] [SECS]   (needs perf)
set -euo pipefail
cd "$(dirname "$0")/.."
groups=${1:-1} workload=${2:-hot-set} clients=${3:-64} secs=${4:-6}
if ! command -v perf >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf >/dev/null
fi
source bench/lib.sh
prepare
BATON_SERVER_FLAGS="--groups $groups" start_baton
wait_for_placement
events=syscalls:sys_enter_fdatasync,syscalls:sys_enter_futex,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait,context-switches
pid_list=$(IFS=,; echo "${baton_pids[*]}")
perf stat -x, -e "$events" -p "$pid_list" -o "$dir/stat.csv" -- sleep "$secs" &
perf_pid=$!
ops=$("$bin" bench --endpoints "$baton_eps" --workload "$workload" --clients "$clients" --duration "$secs" --json |
  tail -1 | python3 -c "import json,sys; print(json.load(sys.stdin)['ops_per_s'] * $secs)")
wait "$perf_pid" || true
echo "# groups=$groups $workload $clients clients ${secs}s: $ops ops (all three servers)"
python3 - "$dir/stat.csv" "$ops" <<'PY'
import sys
ops = float(sys.argv[2])
for line in open(sys.argv[1]):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].replace(".", "").isdigit():
        name = f[2].replace("syscalls:sys_enter_", "")
        print(f"{name}: {float(f[0]) / ops:.2f} per op")
PY
