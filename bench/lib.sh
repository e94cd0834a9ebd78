# Shared by the bench scripts: `prepare` builds the release binary ($bin) and makes a temp
# folder ($dir, under BENCH_TMPDIR or TMPDIR); start_baton / start_etcd start a 3-node Baton
# and a 3-member etcd on 127.0.0.1 with data under $dir, remembering every PID in $pids so that
# cleanup (run on exit) stops exactly what was started and removes $dir.
# BATON_SERVER_FLAGS adds flags to every `baton server` (e.g. --lease-reads; {ID} in them becomes
# the node's id, e.g. --etcd-addr 127.0.0.1:1737{ID}); KEEP_LOGS=FILE
# keeps the servers' logs (concatenated) when the temp folder is removed.

baton_peers="1=127.0.0.1:17801,2=127.0.0.1:17802,3=127.0.0.1:17803"
baton_eps=127.0.0.1:17711,127.0.0.1:17712,127.0.0.1:17713
etcd_eps=127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793
baton_pids=()
etcd_pids=()

prepare() {
  cargo build --release -q -p baton
  bin=target/release/baton
  dir=$(mktemp -d -p "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}")
  pids=()
  trap cleanup EXIT
}

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "${KEEP_LOGS:-}" ] && cat "$dir"/*.log >"$KEEP_LOGS"; rm -rf "$dir"
}

start_baton() {
  local flags=${BATON_SERVER_FLAGS:-}
  for i in 1 2 3; do
    "$bin" server --id "$i" --data "$dir/baton$i" --client-addr "127.0.0.1:1771$i" \
      --peer-addr "127.0.0.1:1780$i" --peers "$baton_peers" ${flags//\{ID\}/$i} >"$dir/baton$i.log" 2>&1 &
    pids+=($!)
    baton_pids+=($!)
  done
  for _ in $(seq 1 100); do
    "$bin" status --endpoints "$baton_eps" --json 2>/dev/null | grep -q '"leader":[0-9]' && return 0
    sleep 0.1
  done
  echo "baton cluster did not elect a leader; logs in $dir" >&2
  return 1
}

# Waits (at most 30 s) until the cluster at ENDPOINTS (default: $baton_eps) has settled: every
# group led, and, with two or more data groups, leaderships spread over the nodes as placement
# spreads them (counts differing by at most one). Polls `baton status` rather than guessing.
wait_for_placement() {
  local eps=${1:-$baton_eps}
  for _ in $(seq 1 150); do
    "$bin" status --endpoints "$eps" --json 2>/dev/null | python3 -c '
import json, sys
groups = [g for g in json.load(sys.stdin)["groups"] if g["id"] != 0]
if not all(g["leader"] for g in groups):
    sys.exit(1)
data = [g for g in groups if g["slots"]]
if len(data) >= 2:
    counts = {}
    for g in groups:
        counts[g["leader"]] = counts.get(g["leader"], 0) + 1
    if len(counts) < min(3, len(groups)) or max(counts.values()) - min(counts.values()) > 1:
        sys.exit(1)
' && return 0
    sleep 0.2
  done
  echo "warning: leaderships did not settle within 30 s" >&2
}

start_etcd() {
  local cluster="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$dir/etcd$i" \
      --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
      --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token baton-bench \
      >"$dir/etcd$i.log" 2>&1 &
    pids+=($!)
    etcd_pids+=($!)
  done
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints "$etcd_eps" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "etcd cluster did not become healthy; logs in $dir" >&2
  return 1
}

joined() {
  local IFS=,
  echo "$*"
}

# The CPU time (user + system) of the given PIDs, summed, in clock ticks.
cpu_ticks() { # sum of utime+stime of the given pids, in clock ticks
  local t=0
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}

# One result row from a `baton bench --json` line: LABEL ops/s p50_ms p99_ms errors
# cpu_us_per_op (the servers' CPU ticks BEFORE..AFTER over SECS of ops), then the JSON's values
# of any EXTRA keys ("-" where absent).
#   bench_row LABEL JSON BEFORE AFTER SECS [EXTRA_KEY...]
bench_row() {
  python3 -c '
import json, sys, os
label, d, before, after, secs = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
ops = d["ops_per_s"] * secs
cpu_us = (after - before) / os.sysconf("SC_CLK_TCK") * 1e6 / ops if ops else 0
extra = [str(d.get(k, "-")) for k in sys.argv[6:]]
print(label, "%.0f" % d["ops_per_s"], d["p50_ms"], d["p99_ms"], d["errors"], "%.1f" % cpu_us, *extra)
' "$@"
}
