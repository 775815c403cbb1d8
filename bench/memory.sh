#!/usr/bin/env bash
# Memory of the order service under a long run, and the cost of a live order actor.
#
#   bench/memory.sh                       # 100000 orders through PostgreSQL + RabbitMQ
#   MEM_ORDERS=200000 bench/memory.sh
#   MEM_ORDERS=0 bench/memory.sh          # only the live-actor measurement
#
# 1. Long run: target/release/order-service on a fresh database and vhost, loadgen closed
#    loop (concurrency 64) for MEM_ORDERS orders; every 10 s the service's RSS (VmRSS from
#    /proc) and live order actors (/health/ready) are printed, so a flat RSS after warm-up
#    shows that finished actors are passivated and nothing grows per order.
# 2. Live actors: the service restarted with PAYMENT_MODE=manual (orders wait for payment,
#    so their actors stay alive), MEM_ACTORS orders created (sagas not followed); RSS before
#    and after, divided by the live actors, is the memory per live actor (its state, its
#    mailbox, its registry entry; the order's few hundred bytes of data included).
# Builds in release mode first; cleans up the database and the vhost on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
orders=${MEM_ORDERS:-100000}
actors=${MEM_ACTORS:-20000}
port=${MEM_PORT:-18081}
url="http://127.0.0.1:$port"
stamp=$(date -u +%Y%m%d_%H%M%S)
db="mem_$stamp"
vhost="mem_$stamp"
token="mem-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
svc=""
cleanup() {
  [ -n "$svc" ] && kill "$svc" 2>/dev/null && wait "$svc" 2>/dev/null || true
  dropdb -h 127.0.0.1 -U postgres --if-exists "$db" 2>/dev/null || true
  rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
}
trap cleanup EXIT

cargo build --release -p order-service -p loadgen
createdb -h 127.0.0.1 -U postgres "$db"
rabbitmqctl -q add_vhost "$vhost" >/dev/null
rabbitmqctl -q set_permissions -p "$vhost" guest ".*" ".*" ".*" >/dev/null

start() {
  env -i PATH="$PATH" HOME="$HOME" LISTEN_ADDR="127.0.0.1:$port" ADMIN_TOKEN="$token" \
    LOG_FORMAT=json RUST_LOG=warn PAYMENT_DECLINE_RATE=0.3 "$@" \
    DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db?sslmode=disable" \
    AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$vhost" \
    target/release/order-service >"/tmp/$db.log" 2>&1 &
  svc=$!
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "$url/health/ready" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "service not ready" >&2
  exit 1
}
stop() { kill "$svc"; wait "$svc" || true; svc=""; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$svc/status"; }
live() { curl -fsS "$url/health/ready" | jq '.order_actors.live'; }

if [ "$orders" -gt 0 ]; then
  echo "== long run: $orders orders, closed loop c=64 (RSS every 10 s)"
  start
  ADMIN_TOKEN=$token target/release/loadgen --url "$url" --orders "$orders" --concurrency 64 \
    --sku CB-004 --stock 100000000 --expect-decline-rate 0.3 --quiet --json "/tmp/$db.json" \
    >"/tmp/$db.loadgen" 2>&1 &
  lg=$!
  started=$(date +%s)
  echo "| elapsed (s) | orders created | RSS (MiB) | live actors |"
  echo "|---|---|---|---|"
  while kill -0 "$lg" 2>/dev/null; do
    created=$(psql -h 127.0.0.1 -U postgres -d "$db" -Atc 'select count(*) from public.orders' 2>/dev/null || echo ?)
    echo "| $(($(date +%s) - started)) | $created | $(($(rss_kib) / 1024)) | $(live) |"
    sleep 10
  done
  wait "$lg" || echo "(loadgen exit $?)"
  grep -E "load phase|saga \(waited\)|invariants" "/tmp/$db.loadgen" || true
  echo "after the run: RSS $(($(rss_kib) / 1024)) MiB, live actors $(live)"
  stop
fi
echo
echo "== live actors: $actors orders waiting for a manual payment"
# Admission control off: its default limit (2000 live orders) would refuse the rest.
start PAYMENT_MODE=manual MAX_ORDERS_IN_FLIGHT=0
sleep 2
before=$(rss_kib)
ADMIN_TOKEN=$token target/release/loadgen --url "$url" --orders "$actors" --concurrency 64 \
  --closed-on create --no-follow --sku CB-004 --stock 100000000 --quiet >/dev/null 2>&1 &
lg=$!
# Measured while the orders wait (before ACTOR_IDLE_SECS passivates them, and before
# loadgen's end-of-run checks read every order through the API).
n=0
same=0
for _ in $(seq 1 50); do
  sleep 1
  now=$(live)
  if [ "$now" = "$n" ] && [ "$now" -gt 0 ]; then same=$((same + 1)); else same=0; fi
  n=$now
  if [ "$now" -ge "$actors" ] || [ "$same" -ge 3 ]; then break; fi
done
after=$(rss_kib)
kill "$lg" 2>/dev/null || true
echo "RSS before $((before / 1024)) MiB, after $((after / 1024)) MiB with $n live actors:" \
  "$(( (after - before) * 1024 / (n > 0 ? n : 1) )) bytes per live actor"
stop
