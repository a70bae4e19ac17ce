#!/usr/bin/env bash
# Resolver benchmark: how fast crates/resolver turns domains into destinations, and how many
# queries reach the name server.
#
#   bench/resolver_bench.sh            # N=10000 CONC=100 by default
#   N=2000 CONC=50 bench/resolver_bench.sh
#
# Needs dnsmasq (package dnsmasq-base) and python3 (to pick a free port). Builds and runs
# crates/resolver/examples/resolve_bench.rs in release mode against a private dnsmasq on
# 127.0.0.1, authoritative for `test`, whose config file (generated, passed with
# --conf-file) has an MX record `dN.bench.test -> mx.bench.test` for each of N domains.
# Two cases, each with a fresh dnsmasq and a fresh resolver:
#   distinct: the N domains, CONC resolves at a time;
#   same:     `same.bench.test` resolved N times, all calls started at once (coalesced by
#             the resolver into one lookup).
# dnsmasq runs with --log-queries; the queries it logged for bench.test names are counted
# after it has exited. dnsmasq's records have TTL 0 (its default --local-ttl), so nothing is
# answered from the resolver's cache: every lookup the resolver makes reaches dnsmasq.
# CPU seconds (user + system) are given for the benchmark process and for dnsmasq.
# Prints a markdown table on stdout; bench/RESULTS.md keeps the recorded runs.
set -euo pipefail

N=${N:-10000}
CONC=${CONC:-100}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
dns_pid=
cleanup() {
  if [ -n "$dns_pid" ]; then kill "$dns_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cd "$root"
cargo build --release -q -p resolver --example resolve_bench

{
  echo "host-record=mx.bench.test,127.0.0.2"
  echo "host-record=ready.test,127.0.0.3"
  echo "mx-host=same.bench.test,mx.bench.test,10"
  seq 0 $((N - 1)) | sed 's/.*/mx-host=d&.bench.test,mx.bench.test,10/'
} >"$work/dnsmasq.conf"

free_port() {
  python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

echo "| case | resolves | concurrency | wall s | resolves/s | failed | resolver lookups | dnsmasq queries (MX, A) | CPU s bench | CPU s dnsmasq |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for mode in distinct same; do
  port=$(free_port)
  log="$work/$mode.log"
  dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
    --listen-address=127.0.0.1 --local=/test/ --pid-file= \
    --conf-file="$work/dnsmasq.conf" --port="$port" \
    --log-queries --log-facility="$log" &
  dns_pid=$!
  # The example waits (with a deadline) until dnsmasq answers.
  out=$(cargo run --release -q -p resolver --example resolve_bench -- \
    --server "127.0.0.1:$port" --mode "$mode" --count "$N" --concurrency "$CONC")
  # utime + stime, fields 14 and 15 after the command name in parentheses.
  ticks=$(sed 's/.*) //' "/proc/$dns_pid/stat" | awk '{print $12 + $13}')
  dns_cpu=$(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}')
  # dnsmasq writes out any log lines still queued when it exits.
  kill "$dns_pid"
  wait "$dns_pid" || true
  dns_pid=
  if grep -q "log entries lost" "$log"; then
    echo "dnsmasq dropped log lines: query counts are too low" >&2
  fi
  mx=$(grep -c 'query\[MX\] [^ ]*bench\.test from' "$log" || true)
  a=$(grep -c 'query\[A\] [^ ]*bench\.test from' "$log" || true)
  all=$(grep -c 'query\[[A-Z]*\] [^ ]*bench\.test from' "$log" || true)
  get() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$out"; }
  echo "| $mode | $(get count) | $(get concurrency) | $(get wall_s) | $(get per_s) | $(get failed) | $(get lookups) | $all ($mx, $a) | $(get cpu_s) | $dns_cpu |"
done
