#!/usr/bin/env bash
# What observing costs: the same 3 nodes (127.0.0.1, fresh data, fsync on) started with
# observability off (--no-metrics, no tracing) and on (metrics and hot names counted, /metrics
# scraped every second on every node, and every request's spans exported with --otlp-endpoint
# to a local OTLP collector, examples/otlp_sink.rs), alternating, ROUNDS times (default 3);
# each start is driven by `baton bench` uncontended at 64 clients for SECS (default 10).
# MODES (default "off on") picks the starts compared, in that order, the first one being the
# baseline: `off`, `metrics` (metrics and scraping, no tracing), `on`, `tls` (no metrics, TLS with
# client certificates on the client port and mutual TLS between nodes; certificates from
# `baton certs`: compare with MODES="off tls"), `auth` (no metrics, authentication on, the bench
# running as a user with the lock permission: compare with MODES="off auth"). OTLP_FLAGS adds flags to
# the traced servers (e.g. --otlp-sample-ratio 1); BATON_OTLP_LOG their span filter.
# Prints one line per run and the ratio of each mode's median to the baseline's:
#   MODE ops/s p50_ms p99_ms errors cpu_us_per_op
#   bench/observability.sh [SECS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
secs=${1:-10} rounds=${2:-3}
cargo build --release -q -p baton --bin baton --example otlp_sink
bin=target/release/baton
sink=target/release/examples/otlp_sink
dir=$(mktemp -d -p "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done; rm -rf "$dir"; }
trap cleanup EXIT

# Below the ephemeral range (32768+), where outgoing connections could take a port first.
port=$((20000 + RANDOM % 12000))
peers="1=127.0.0.1:$((port + 11)),2=127.0.0.1:$((port + 12)),3=127.0.0.1:$((port + 13))"
eps="127.0.0.1:$((port + 1)),127.0.0.1:$((port + 2)),127.0.0.1:$((port + 3))"
otlp="127.0.0.1:$((port + 30))"
"$sink" "$otlp" >"$dir/sink.log" 2>&1 &
sink_pid=$!
pids+=($sink_pid)

# Certificates for the `tls` mode.
"$bin" certs "$dir/certs" --nodes 1,2,3 >/dev/null

results=()
run() { # MODE: off | metrics | on | tls | auth
  local mode=$1 servers=() scraper= client_tls=()
  [ "$mode" = tls ] && client_tls=(--cacert "$dir/certs/ca.pem" --cert "$dir/certs/client-root.pem" \
    --key "$dir/certs/client-root-key.pem")
  for id in 1 2 3; do
    local extra=(--no-metrics)
    local c="$dir/certs/node-$id.pem" k="$dir/certs/node-$id-key.pem" ca="$dir/certs/ca.pem"
    case $mode in
      tls) extra=(--no-metrics --tls-cert "$c" --tls-key "$k" --client-ca "$ca" --peer-cert "$c" --peer-key "$k"
        --peer-ca "$ca") ;;
      metrics) extra=(--http-addr "127.0.0.1:$((port + 20 + id))") ;;
      on) extra=(--http-addr "127.0.0.1:$((port + 20 + id))" --otlp-endpoint "http://$otlp" ${OTLP_FLAGS:-}) ;;
    esac
    "$bin" server --id "$id" --data "$dir/$mode-$id" --client-addr "127.0.0.1:$((port + id))" \
      --peer-addr "127.0.0.1:$((port + 10 + id))" --peers "$peers" "${extra[@]}" >"$dir/$mode-$id.log" 2>&1 &
    servers+=($!)
    pids+=($!)
  done
  if [ "$mode" = tls ]; then
    BATON_CACERT="${client_tls[1]}" BATON_CERT="${client_tls[3]}" BATON_KEY="${client_tls[5]}" wait_for_placement "$eps"
  else
    wait_for_placement "$eps"
  fi
  if [ "$mode" = auth ]; then
    # Authentication on, the bench as a user with the lock permission on every name (each
    # request checked against its grants; tokens renewed by the client as they run out).
    for step in "user add root --new-password rootpw" "user grant-role root root" "role add bench" \
      "role grant bench lock ''" "user add bench --new-password benchpw" "user grant-role bench bench" "auth enable"; do
      eval "\"$bin\" $step --endpoints $eps" >/dev/null
    done
    client_tls=(--user bench:benchpw)
  fi
  if [ "$mode" = metrics ] || [ "$mode" = on ]; then
    # A Prometheus scraping every second (bounded: it stops with the run).
    (for _ in $(seq 1 $((secs + 5))); do
      for id in 1 2 3; do curl -sf "http://127.0.0.1:$((port + 20 + id))/metrics" >/dev/null || true; done
      sleep 1
    done) &
    scraper=$!
    pids+=($scraper)
  fi
  local before after line
  before=$(cpu_ticks "${servers[@]}")
  line=$("$bin" "${client_tls[@]}" bench --endpoints "$eps" --workload uncontended --clients 64 --duration "$secs" \
    --json | tail -1)
  after=$(cpu_ticks "${servers[@]}")
  results+=("$(bench_row "$mode" "$line" "$before" "$after" "$secs")")
  echo "${results[-1]}"
  [ -n "$scraper" ] && { kill "$scraper" 2>/dev/null || true; wait "$scraper" 2>/dev/null || true; }
  for p in "${servers[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
  rm -rf "${dir:?}"/"$mode"-*
}

echo "MODE ops/s p50_ms p99_ms errors cpu_us_per_op"
modes=(${MODES:-off on})
for _ in $(seq 1 "$rounds"); do
  for m in "${modes[@]}"; do run "$m"; done
done
kill "$sink_pid"; wait "$sink_pid" 2>/dev/null || true
tail -1 "$dir/sink.log"
printf '%s\n' "${results[@]}" | python3 -c '
import sys, statistics
rows = [l.split() for l in sys.stdin if l.strip()]
med = lambda mode, i: statistics.median(float(r[i]) for r in rows if r[0] == mode)
base = sys.argv[1] if len(sys.argv) > 1 else "off"
off = med(base, 1)
for mode in sorted({r[0] for r in rows} - {base}):
    on = med(mode, 1)
    print("median ops/s: %s %.0f, %s %.0f: %s/%s = %.3f (overhead %.1f%%); CPU per op (µs, 3 nodes) %.1f vs %.1f"
          % (base, off, mode, on, mode, base, on / off, (1 - on / off) * 100, med(mode, 5), med(base, 5)))
' "${modes[0]}"
