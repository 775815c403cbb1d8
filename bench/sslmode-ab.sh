#!/usr/bin/env bash
# One closed-loop run of a release binary against PostgreSQL with a given sslmode: a fresh
# database and vhost, 3 s of unrecorded warm-up at c=16, then loadgen for SECONDS at
# CONCURRENCY; prints one line (sagas/s, create and saga latency, invariants) and cleans up.
# Interleave calls to compare binaries or modes on one host (BENCHMARKS.md, "PostgreSQL
# over TLS"):
#
#   for r in 1 2 3; do for m in require disable; do
#     bench/sslmode-ab.sh target/release/order-service $m 15 64 "round $r"; done; done
#
# LOADGEN_ARGS adds options to the measured run, e.g. LOADGEN_ARGS="--follow events".
#
# usage: bench/sslmode-ab.sh <order-service binary> <require|disable|prefer|none> [SECONDS=15] [CONCURRENCY=64] [LABEL]
# Needs target/release/loadgen (`cargo build --release -p loadgen`; LOADGEN to override), psql, createdb, dropdb, rabbitmqctl, jq.
set -u
bin=$(realpath "$1"); mode=$2; secs=${3:-15}; conc=${4:-64}; label=${5:-run}
loadgen=${LOADGEN:-$(dirname "$0")/../target/release/loadgen}
port=${BENCH_PORT:-18190}
stamp=$(date +%s%N | tail -c 10)
db="sslab_$stamp"; vhost="sslab_$stamp"
token="sslmode-ab-token-$stamp"
createdb -h 127.0.0.1 -U postgres "$db"
rabbitmqctl -q add_vhost "$vhost" >/dev/null
rabbitmqctl -q set_permissions -p "$vhost" guest ".*" ".*" ".*" >/dev/null
query=""; [ "$mode" != none ] && query="?sslmode=$mode"
work=$(mktemp -d)
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  dropdb -h 127.0.0.1 -U postgres --force "$db"
  rabbitmqctl -q delete_vhost "$vhost" >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
(cd "$work" && exec env -i PATH="$PATH" ADMIN_TOKEN="$token" LOG_FORMAT=json RUST_LOG=warn \
  LISTEN_ADDR="127.0.0.1:$port" DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db$query" \
  AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$vhost" "$bin" >"$work/service.log" 2>&1) &
pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health/ready" >/dev/null && break; sleep 0.2; done
ADMIN_TOKEN=$token "$loadgen" --url "http://127.0.0.1:$port" --duration 3s --concurrency 16 \
  --stock 10000000 --sku CB-004 >/dev/null 2>&1
ADMIN_TOKEN=$token "$loadgen" --url "http://127.0.0.1:$port" --duration "${secs}s" \
  --concurrency "$conc" --stock 10000000 --sku CB-004 --json "$work/report.json" ${LOADGEN_ARGS:-} >"$work/loadgen.txt" 2>&1
tls=$(psql -h 127.0.0.1 -U postgres -Atc "SELECT count(*) FILTER (WHERE s.ssl) || ' of ' || count(*) \
  FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = '$db'")
echo "$label sslmode=$mode TLS connections $tls: $(jq -r '"\(.completed_per_sec_overall | floor) sagas/s, create p50 \(.create_latency.p50_us / 1000) ms p99 \(.create_latency.p99_us / 1000) ms, saga p50 \(.saga_latency.p50_us / 1000) ms, invariants hold: \(.invariants.holds)"' "$work/report.json" 2>/dev/null || tail -5 "$work/loadgen.txt")"
