#!/usr/bin/env bash
# Starts a 3-node Baton cluster of real processes on 127.0.0.1 (data in a temp folder, fsync
# on), runs `baton bench` for each line of the matrix below, and stops the nodes it started (by
# PID). Usage: bench/baton-cluster.sh [DURATION_SECS]
# BENCH_TMPDIR=/dev/shm puts the data on tmpfs, where fsync costs nothing: a diagnostic that
# separates replication cost from disk cost, not a supported setup.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
source bench/lib.sh
prepare
start_baton
echo "# $(nproc) cores, 3 nodes on 127.0.0.1, fsync on, ${duration}s per run"
shift || true
runs=("$@")
[ ${#runs[@]} -eq 0 ] && runs=("uncontended 1" "uncontended 16" "uncontended 64" "contended 16")
for run in "${runs[@]}"; do
  set -- $run
  workload=$1 clients=$2
  shift 2
  "$bin" bench --endpoints "$baton_eps" --workload "$workload" --clients "$clients" --duration "$duration" --json "$@"
done
