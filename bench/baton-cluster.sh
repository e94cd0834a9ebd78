#!/usr/bin/env bash
# Starts a 3-node Baton cluster of real processes on 127.0.0.1 (data in a temp folder, fsync
# on), runs `baton bench` with the arguments given for each line of the matrix below, and stops
# the nodes it started (by PID). Usage: bench/baton-cluster.sh [DURATION_SECS]
# BENCH_TMPDIR=/dev/shm puts the data on tmpfs, where fsync costs nothing: a diagnostic that
# separates replication cost from disk cost, not a supported setup.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
cargo build --release -q -p baton
bin=target/release/baton
dir=$(mktemp -d -p "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
peers="1=127.0.0.1:17801,2=127.0.0.1:17802,3=127.0.0.1:17803"
for i in 1 2 3; do
  "$bin" server --id "$i" --data "$dir/n$i" --client-addr "127.0.0.1:1771$i" \
    --peer-addr "127.0.0.1:1780$i" --peers "$peers" >"$dir/n$i.log" 2>&1 &
  pids+=($!)
done
eps=127.0.0.1:17711,127.0.0.1:17712,127.0.0.1:17713
for _ in $(seq 1 100); do
  "$bin" status --endpoints "$eps" --json 2>/dev/null | grep -q '"leader":[0-9]' && break
  sleep 0.1
done
echo "# $(nproc) cores, 3 nodes on 127.0.0.1, fsync on, ${duration}s per run"
for run in "uncontended 1" "uncontended 16" "uncontended 64" "contended 16"; do
  set -- $run
  "$bin" bench --endpoints "$eps" --workload "$1" --clients "$2" --duration "$duration" --json
done
