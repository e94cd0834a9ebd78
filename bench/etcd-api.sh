#!/usr/bin/env bash
# The same client, the same API: `baton bench --target etcd` (etcd's Lock, Lease, KV and Election
# calls) against Baton's etcd v3 API (3 nodes, `--etcd-addr` on each) and against a real 3-member
# etcd, on 127.0.0.1, fsync on in both, each line on Baton then on etcd; writes the table of
# ratios into docs/BENCHMARKS.md between the etcd-api markers.
# Usage: bench/etcd-api.sh [DURATION_SECS]   (BENCH_NO_DOCS=1: print only, leave docs alone)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  echo "installing etcd (Debian packages etcd-server, etcd-client)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server etcd-client >/dev/null
fi
source bench/lib.sh
prepare
baton_etcd_eps=127.0.0.1:17371,127.0.0.1:17372,127.0.0.1:17373
BATON_SERVER_FLAGS="${BATON_SERVER_FLAGS:-} --etcd-addr 127.0.0.1:1737{ID}" start_baton
start_etcd
wait_for_placement
# Baton's keyspace group has a leader once a linearizable read succeeds on every node.
for ep in ${baton_etcd_eps//,/ }; do
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints "$ep" get nothing >/dev/null 2>&1 && break
    sleep 0.2
  done
done
results=bench/results/etcd-api-$(date -u +%Y%m%d-%H%M%S).jsonl
mkdir -p bench/results
# workload clients [extra flags]
matrix=(
  "uncontended 1"
  "uncontended 16"
  "uncontended 64"
  "contended 16"
  "hot-set 64"
  "election 16"
  "session-churn 16"
  "keepalive-scale 4 --sessions 2000"
  "mixed 64"
)
for line in "${matrix[@]}"; do
  set -- $line
  workload=$1 clients=$2
  shift 2
  for side in baton etcd; do
    if [ "$side" = baton ]; then eps=$baton_etcd_eps; tp=$(joined "${baton_pids[@]}"); else eps=$etcd_eps; tp=$(joined "${etcd_pids[@]}"); fi
    "$bin" bench --target etcd --endpoints "$eps" --workload "$workload" --clients "$clients" \
      --duration "$duration" --pids "$tp" --json "$@" |
      # Both sides are driven as etcd; the report tells them apart by target.
      if [ "$side" = baton ]; then sed 's/"target":"etcd"/"target":"baton-etcd-api"/'; else cat; fi |
      tee -a "$results"
  done
done
etcd_version=$(etcd --version 2>/dev/null | sed -n 1p)  # sed reads it all: no SIGPIPE under pipefail
table=$("$bin" bench-report "$results")
echo "$table"
[ "${BENCH_NO_DOCS:-}" = 1 ] && exit 0
section=$(mktemp)
{
  echo "<!-- etcd-api:begin (written by bench/etcd-api.sh; edits here are overwritten) -->"
  echo "Measured $(date -u +%Y-%m-%d) by \`bench/etcd-api.sh $duration\` on $(nproc) cores ($(uname -m)):"
  echo "\`baton bench --target etcd\` (etcd's own API and call sequence) against Baton's etcd API (3"
  echo "\`baton server\` nodes, release build, \`--etcd-addr\` on each) and against 3 etcd members"
  echo "($etcd_version), 127.0.0.1, fsync on in both, ${duration} s per run, each line on Baton then on"
  echo "etcd. Raw JSON lines: \`$results\`. The \"Baton\" columns are Baton behind etcd's API."
  echo
  echo "$table"
  echo "<!-- etcd-api:end -->"
} >"$section"
python3 - "$section" <<'PY'
import re, sys
section = open(sys.argv[1]).read().rstrip("\n")
path = "docs/BENCHMARKS.md"
doc = open(path).read()
pattern = re.compile(r"<!-- etcd-api:begin.*?<!-- etcd-api:end -->", re.S)
if pattern.search(doc):
    doc = pattern.sub(lambda _: section, doc)
else:
    doc = doc.rstrip("\n") + "\n\n## Behind etcd's API: the same client against Baton and etcd\n\n" + section + "\n"
open(path, "w").write(doc)
PY
echo "docs/BENCHMARKS.md updated" >&2
