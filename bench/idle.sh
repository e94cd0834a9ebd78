#!/usr/bin/env bash
# The cost of idle groups: for each group count, starts a 3-node cluster (real processes on
# 127.0.0.1, --groups N), waits until it settles (leaders placed, every group asleep), then reads
# the three processes' CPU time from /proc over a window with no client at all, and prints the
# CPU the whole cluster spends per second. Usage: bench/idle.sh [WINDOW_SECS] [GROUP COUNTS...]
# BASELINE_BIN=path measures another build of baton too, alternating with this one in the same
# run (e.g. a build from before a change), so that the two figures share the machine's noise.
set -euo pipefail
cd "$(dirname "$0")/.."
window=${1:-10}
shift || true
counts=("$@")
[ ${#counts[@]} -eq 0 ] && counts=(1 12 96)
source bench/lib.sh
prepare
ticks=$(getconf CLK_TCK)
cpu_ticks() {
  local sum=0
  for p in "${baton_pids[@]}"; do
    # utime and stime: fields 14 and 15 of /proc/PID/stat (the name, field 2, has no spaces here).
    read -r -a f <"/proc/$p/stat"
    sum=$((sum + f[13] + f[14]))
  done
  echo "$sum"
}
echo "# $(nproc) cores, 3 nodes on 127.0.0.1, no clients, ${window}s window once settled"
builds=("$bin")
[ -n "${BASELINE_BIN:-}" ] && builds+=("$BASELINE_BIN")
for n in "${counts[@]}"; do
  for b in "${builds[@]}"; do
    bin=$b BATON_SERVER_FLAGS="--groups $n" start_baton
    bin=$b wait_for_placement
    # Then (a build with hibernation) until every group at every node sleeps; a build without
    # it reports no `asleep` and has nothing more to settle.
    for _ in $(seq 1 150); do
      all_asleep=1
      for ep in ${baton_eps//,/ }; do
        "$b" status --endpoints "$ep" --json 2>/dev/null | python3 -c '
import json, sys
groups = json.load(sys.stdin)["groups"]
sys.exit(0 if all(g.get("asleep", True) for g in groups) else 1)' || all_asleep=0
      done
      [ "$all_asleep" = 1 ] && break
      sleep 0.2
    done
    before=$(cpu_ticks)
    sleep "$window"
    after=$(cpu_ticks)
    ms=$(( (after - before) * 1000 / ticks / window ))
    echo "build=$b groups=$n idle_cpu_ms_per_s=$ms"
    for p in "${baton_pids[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
    baton_pids=()
    rm -rf "$dir"/baton*
  done
done
