#!/usr/bin/env bash
# Sharding on one machine: the same 3 nodes (127.0.0.1, fresh data, fsync on) started with
# --groups 1 and with --groups 12, alternating, ROUNDS times (default 2); each layout is driven by
# `baton bench` uncontended and hot-set at 64 and 256 clients. Prints one line per run:
# GROUPS WORKLOAD CLIENTS ops/s p50 p99 errors
# and the servers' CPU per operation (µs, from /proc, all three nodes summed).
#   bench/groups.sh [BINARY] [SECS] [ROUNDS] [GROUPS...]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
bin=${1:-target/release/baton} secs=${2:-5} rounds=${3:-2}
shift $(($# < 3 ? $# : 3))
layouts=("${@:-1 12}")
read -r -a layouts <<<"${layouts[*]}"
dir=$(mktemp -d -p "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done; rm -rf "$dir"; }
trap cleanup EXIT

port=$((20000 + RANDOM % 20000))
peers="1=127.0.0.1:$((port + 11)),2=127.0.0.1:$((port + 12)),3=127.0.0.1:$((port + 13))"
eps="127.0.0.1:$((port + 1)),127.0.0.1:$((port + 2)),127.0.0.1:$((port + 3))"

run() { # GROUPS
  local groups=$1
  pids=()
  for id in 1 2 3; do
    "$bin" server --id "$id" --data "$dir/g$groups-$id" --client-addr "127.0.0.1:$((port + id))" \
      --peer-addr "127.0.0.1:$((port + 10 + id))" --peers "$peers" --groups "$groups" >"$dir/g$groups-$id.log" 2>&1 &
    pids+=($!)
  done
  # Ready when every group is led and placement has spread the leaderships (bench/lib.sh).
  wait_for_placement "$eps"
  for w in "uncontended 64" "uncontended 256" "hot-set 64" "hot-set 256"; do
    read -r workload clients <<<"$w"
    local before after ops
    before=$(cpu_ticks "${pids[@]}")
    line=$("$bin" bench --endpoints "$eps" --workload "$workload" --clients "$clients" --duration "$secs" --json | tail -1)
    after=$(cpu_ticks "${pids[@]}")
    python3 -c '
import json, sys, os
d = json.loads(sys.argv[1])
ticks = int(sys.argv[3]) - int(sys.argv[2])
hz = os.sysconf("SC_CLK_TCK")
ops = d["ops_per_s"] * float(sys.argv[4])
cpu_us = ticks / hz * 1e6 / ops if ops else 0
print(sys.argv[5], d["workload"], d["clients"], "%.0f" % d["ops_per_s"], d["p50_ms"], d["p99_ms"], d["errors"], "cpu_us_per_op=%.0f" % cpu_us)
' "$line" "$before" "$after" "$secs" "$groups"
  done
  for p in "${pids[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
  pids=()
  rm -rf "${dir:?}"/g"$groups"-*
}

for _ in $(seq 1 "$rounds"); do
  for g in "${layouts[@]}"; do
    run "$g"
  done
done
