#!/usr/bin/env bash
# A/B of two builds of baton on the same machine, alternating, so that a change's cost is a
# ratio measured in one run: each binary serves `baton dev` (fresh data, fsync on) and drives
# it with its own `baton bench` for the uncontended (64 clients), contended (16) and
# session-churn (16) workloads, ROUNDS times (default 2). Prints one line per run:
# LABEL WORKLOAD CLIENTS ops/s p50 p99 errors.
#   bench/ab.sh OLD_BINARY NEW_BINARY [SECS] [ROUNDS]
# Build an older commit with e.g. `git worktree add /tmp/old COMMIT && (cd /tmp/old &&
# CARGO_TARGET_DIR=/tmp/old-target cargo build --release -p baton)`.
set -euo pipefail
old=$1 new=$2 secs=${3:-5} rounds=${4:-2}
dir=$(mktemp -d -p "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}")
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

run() { # LABEL BINARY
  local label=$1 bin=$2 addr=127.0.0.1:17790
  "$bin" dev --data "$dir/$label" --client-addr "$addr" >"$dir/$label.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do "$bin" status --endpoints "$addr" >/dev/null 2>&1 && break; sleep 0.1; done
  for w in "uncontended 64" "contended 16" "session-churn 16"; do
    read -r workload clients <<<"$w"
    "$bin" bench --endpoints "$addr" --workload "$workload" --clients "$clients" --duration "$secs" --json |
      python3 -c 'import json,sys; d=json.loads(sys.stdin.readlines()[-1]); print(sys.argv[1], sys.argv[2], sys.argv[3], "%.0f" % d["ops_per_s"], d["p50_ms"], d["p99_ms"], d["errors"])' "$label" "$workload" "$clients"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  rm -rf "${dir:?}/$label"
}

for _ in $(seq 1 "$rounds"); do
  run old "$old"
  run new "$new"
done
