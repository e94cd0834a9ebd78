#!/usr/bin/env bash
# The coordination-free tier against the linearizable counter, on the same 3 nodes (127.0.0.1,
# fresh data, fsync on) in one run: `baton bench` at CLIENTS clients (default 64) for SECS
# (default 10), alternating the `counter` workload (every client adds one to one linearizable
# counter, through its group's leader) and `crdt-counter` (every client adds one to one
# coordination-free PN-counter on its own node; a probe times how long a write takes to reach
# every node meanwhile), ROUNDS times (default 3). CONNECTIONS (default 3: one client per node,
# shared by the tasks as in one application process; 0: a client per task) applies to both.
# Prints one line per run, the servers' CPU per increment, and the ratio of the medians:
#   WORKLOAD ops/s p50_ms p99_ms errors cpu_us_per_op convergence_p50_ms convergence_p99_ms
#   bench/crdt.sh [SECS] [ROUNDS] [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
secs=${1:-10} rounds=${2:-3} clients=${3:-64}
prepare
start_baton
wait_for_placement
results=()
run() { # WORKLOAD
  local before after line
  before=$(cpu_ticks "${baton_pids[@]}")
  line=$("$bin" bench --endpoints "$baton_eps" --workload "$1" --clients "$clients" \
    --connections "${CONNECTIONS:-3}" --duration "$secs" --json | tail -1)
  after=$(cpu_ticks "${baton_pids[@]}")
  results+=("$(bench_row "$1" "$line" "$before" "$after" "$secs" convergence_p50_ms convergence_p99_ms)")
  echo "${results[-1]}"
}
echo "WORKLOAD ops/s p50_ms p99_ms errors cpu_us_per_op convergence_p50_ms convergence_p99_ms"
for _ in $(seq 1 "$rounds"); do
  run counter
  run crdt-counter
done
printf '%s\n' "${results[@]}" | python3 -c '
import sys, statistics
rows = [l.split() for l in sys.stdin if l.strip()]
med = lambda w, i: statistics.median(float(r[i]) for r in rows if r[0] == w)
print("median increments/s: counter %.0f, crdt-counter %.0f: crdt/linearizable = %.1fx; CPU per increment (µs, 3 nodes) %.1f vs %.1f; convergence under load p50 %.1f ms, p99 %.1f ms"
      % (med("counter", 1), med("crdt-counter", 1), med("crdt-counter", 1) / med("counter", 1), med("crdt-counter", 5), med("counter", 5), med("crdt-counter", 6), med("crdt-counter", 7)))
'
