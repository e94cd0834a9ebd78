#!/usr/bin/env bash
# Baton against etcd, side by side, on this machine: installs etcd from Debian's etcd-server
# package if it is absent, starts a 3-member etcd and a 3-node Baton on 127.0.0.1 (disjoint
# ports, data in a temp folder, fsync on in both), runs the same `baton bench` matrix against
# both (each line on Baton then on etcd), stops what it started, and writes the table of
# Baton/etcd ratios with a plot into docs/BENCHMARKS.md.
# Usage: bench/compare.sh [DURATION_SECS]   (BENCH_NO_DOCS=1: print only, leave docs alone)
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
if ! command -v etcd >/dev/null; then
  echo "installing etcd (Debian package etcd-server)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server etcd-client >/dev/null
fi
source bench/lib.sh
prepare
start_baton
start_etcd
results=bench/results/compare-$(date -u +%Y%m%d-%H%M%S).jsonl
mkdir -p bench/results
# workload clients [extra flags]
matrix=(
  "uncontended 1"
  "uncontended 16"
  "uncontended 64"
  "uncontended 64 --connections 1"
  "uncontended-session 16"
  "contended 16"
  "hot-set 64"
  "session-churn 16"
  "keepalive-scale 4 --sessions 10000"
  "election 16"
  "mixed 64"
  "hold 64 --sessions 2000 --locks 20000"
)
for line in "${matrix[@]}"; do
  set -- $line
  workload=$1 clients=$2
  shift 2
  for target in baton etcd; do
    if [ "$target" = baton ]; then eps=$baton_eps; tp=$(joined "${baton_pids[@]}"); else eps=$etcd_eps; tp=$(joined "${etcd_pids[@]}"); fi
    "$bin" bench --target "$target" --endpoints "$eps" --workload "$workload" --clients "$clients" \
      --duration "$duration" --pids "$tp" --json "$@" | tee -a "$results"
  done
done
etcd_version=$(etcd --version 2>/dev/null | sed -n 1p)  # sed reads it all: no SIGPIPE under pipefail
table=$("$bin" bench-report "$results" --svg docs/bench-compare.svg)
echo "$table"
[ "${BENCH_NO_DOCS:-}" = 1 ] && exit 0
section=$(mktemp)
{
  echo "<!-- compare:begin (written by bench/compare.sh; edits here are overwritten) -->"
  echo "Measured $(date -u +%Y-%m-%d) by \`bench/compare.sh $duration\` on $(nproc) cores ($(uname -m)),"
  echo "3 Baton nodes (\`baton server\`, release build) and 3 etcd members ($etcd_version) on 127.0.0.1,"
  echo "fsync on in both, ${duration} s per run, each line on Baton then on etcd, from one \`baton bench\`"
  echo "process. Raw JSON lines: \`$results\`. Latencies are p50 / p99 in ms; for contended and election"
  echo "the latency is the wait for the grant / new leader."
  echo
  echo "$table"
  echo
  echo "![Baton ÷ etcd per workload](bench-compare.svg)"
  echo "<!-- compare:end -->"
} >"$section"
python3 - "$section" <<'PY'
import re, sys
section = open(sys.argv[1]).read().rstrip("\n")
path = "docs/BENCHMARKS.md"
doc = open(path).read()
pattern = re.compile(r"<!-- compare:begin.*?<!-- compare:end -->", re.S)
if pattern.search(doc):
    doc = pattern.sub(lambda _: section, doc)
else:
    doc = doc.rstrip("\n") + "\n\n## Baton vs etcd (bench/compare.sh)\n\n" + section + "\n"
open(path, "w").write(doc)
PY
rm -f "$section"
echo "wrote docs/BENCHMARKS.md and docs/bench-compare.svg" >&2
