#!/usr/bin/env bash
# Where the CPU goes per lock cycle: starts a 3-node Baton (bench/lib.sh), runs `uncontended`
# with 64 clients, and meanwhile samples the leader with `perf record` (software cpu-clock, so
# it works where hardware counters are not exposed). Prints CPU microseconds per cycle for each
# node and the bench client (from /proc), then the leader's hottest symbols.
# Usage: bench/profile.sh [DURATION_SECS] [WORKLOAD] [CLIENTS]   (needs perf: Debian linux-perf)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10} workload=${2:-uncontended} clients=${3:-64}
if ! command -v perf >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf >/dev/null
fi
source bench/lib.sh
prepare
start_baton
wait_for_placement
leader=$("$bin" status --endpoints "$baton_eps" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["groups"][0]["leader"])')
leader_pid=${baton_pids[$((leader - 1))]}
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
before=(); for p in "${baton_pids[@]}"; do before+=("$(cpu "$p")"); done
perf record -q -F 199 -e cpu-clock --call-graph dwarf,16384 -p "$leader_pid" -o "${PROFILE_OUT:-$dir/perf.data}" -- sleep "$duration" 2>/dev/null &
perf_pid=$!
/usr/bin/time -f "%U %S" -o "$dir/client.time" "$bin" bench --endpoints "$baton_eps" --workload "$workload" \
  --clients "$clients" --duration "$duration" --json | tee "$dir/run.json"
wait "$perf_pid" || true
ops=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["ops_per_s"]*float(sys.argv[2]))' "$dir/run.json" "$duration")
hz=$(getconf CLK_TCK)
echo "# CPU per $workload op ($clients clients, ${duration}s, $ops ops; leader is node $leader)"
for i in 0 1 2; do
  after=$(cpu "${baton_pids[$i]}")
  python3 -c "print('node $((i + 1)): %.1f us/op' % (($after - ${before[$i]}) / $hz * 1e6 / $ops))"
done
read -r u s <"$dir/client.time"
python3 -c "print('bench client (incl. set-up): %.1f us/op' % (($u + $s) * 1e6 / $ops))"
echo "# leader's hottest symbols (self time)"
perf report -i "${PROFILE_OUT:-$dir/perf.data}" --no-children --sort symbol --stdio 2>/dev/null | grep -E "^ +[0-9]" | cut -c1-120 | head -40
