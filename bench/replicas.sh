#!/usr/bin/env bash
# One closed-loop run against R replicas of a release binary on one PostgreSQL (over TLS,
# sslmode=require) and one RabbitMQ vhost, both fresh: the replicas start one after another,
# the run starts once the partitions are spread, loadgen spreads the requests round-robin
# over every replica (as a load balancer without affinity would), and one line is printed.
# With FAILOVER=1, the last replica is killed (-9) halfway through (loadgen's own checks go to
# the first) and the line also gives the time from the kill until all its partitions had new
# owners and until the first transition a new owner made in one of them (from
# order_transitions.epoch). Interleave calls to compare (BENCHMARKS.md):
#
#   for r in 1 2 3; do for n in 1 2 3; do bench/replicas.sh target/release/order-service $n 15 64 "round $r"; done; done
#
# usage: bench/replicas.sh <order-service binary> <REPLICAS> [SECONDS=15] [CONCURRENCY=64] [LABEL]
# (PARTITIONS=<n> to run with another partition count; BENCH_SKUS="A B C" to order several
# SKUs instead of one, CB-004; FAILOVER=1 as above)
# Needs target/release/loadgen (`cargo build --release -p loadgen`; LOADGEN to override), psql, createdb, dropdb, rabbitmqctl, jq.
set -u
bin=$(realpath "$1"); replicas=$2; secs=${3:-15}; conc=${4:-64}; label=${5:-run}
loadgen=${LOADGEN:-$(dirname "$0")/../target/release/loadgen}
base_port=${BENCH_PORT:-18290}
stamp=$(date +%s%N | tail -c 10)
db="replicas_$stamp"; vhost="replicas_$stamp"
token="replicas-bench-token-$stamp"
createdb -h 127.0.0.1 -U postgres "$db"
rabbitmqctl -q add_vhost "$vhost" >/dev/null
rabbitmqctl -q set_permissions -p "$vhost" guest ".*" ".*" ".*" >/dev/null
work=$(mktemp -d)
pids=()
sql() { psql -h 127.0.0.1 -U postgres -d "$db" -Atc "$1"; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  dropdb -h 127.0.0.1 -U postgres --force "$db"
  rabbitmqctl -q delete_vhost "$vhost" >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
urls=()
for i in $(seq "$replicas"); do
  port=$((base_port + i))
  (cd "$work" && exec env -i PATH="$PATH" ADMIN_TOKEN="$token" LOG_FORMAT=json RUST_LOG=warn \
    LISTEN_ADDR="127.0.0.1:$port" REPLICA_ID="r$i" ADVERTISE_URL="http://127.0.0.1:$port" \
    PARTITIONS="${PARTITIONS:-32}" \
    DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db?sslmode=require" \
    AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$vhost" "$bin" >"$work/r$i.log" 2>&1) &
  pids+=($!)
  urls+=("http://127.0.0.1:$port")
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health/ready" >/dev/null && break; sleep 0.2; done
done
# Spread: every partition owned, shares within one of each other.
for _ in $(seq 100); do
  spread=$(for u in "${urls[@]}"; do curl -fs "$u/health/ready" | jq '.ownership.owned | length'; done | sort -n | tr '\n' ' ')
  total=$(echo "$spread" | tr ' ' '\n' | awk '{s+=$1} END {print s}')
  lo=$(echo "$spread" | awk '{print $1}'); hi=$(echo "$spread" | awk '{print $NF}')
  [ "$total" = "${PARTITIONS:-32}" ] && [ $((hi - lo)) -le 1 ] && break
  sleep 0.2
done
url_list=$(IFS=,; echo "${urls[*]}")
skus=(); for sku in ${BENCH_SKUS:-CB-004}; do skus+=(--sku "$sku"); done
ADMIN_TOKEN=$token "$loadgen" --url "$url_list" --duration 3s --concurrency 16 \
  --stock 10000000 "${skus[@]}" >/dev/null 2>&1
failover=""
if [ "${FAILOVER:-0}" = 1 ]; then
  (
    sleep $((secs / 2))
    sql "SELECT partition || ' ' || epoch FROM partitions WHERE owner = 'r$replicas'" >"$work/victim-partitions"
    date +%s.%N >"$work/killed_at"
    kill -9 "${pids[$((replicas - 1))]}"
  ) &
fi
ADMIN_TOKEN=$token "$loadgen" --url "$url_list" --duration "${secs}s" \
  --concurrency "$conc" --stock 10000000 "${skus[@]}" --json "$work/report.json" >"$work/loadgen.txt" 2>&1
if [ "${FAILOVER:-0}" = 1 ] && [ -s "$work/victim-partitions" ]; then
  killed=$(cat "$work/killed_at")
  cond=$(awk '{printf "%s(partition = %s AND epoch > %s)", (NR>1?" OR ":""), $1, $2}' "$work/victim-partitions")
  owned_after=$(sql "SELECT round((extract(epoch FROM max(acquired_at)) - $killed)::numeric, 2) FROM partitions WHERE $cond")
  expr="((get_byte(uuid_send(t.order_id), 14) * 256 + get_byte(uuid_send(t.order_id), 15)) % ${PARTITIONS:-32})"
  tcond=$(awk -v e="$expr" '{printf "%s(%s = %s AND t.epoch > %s)", (NR>1?" OR ":""), e, $1, $2}' "$work/victim-partitions")
  first=$(sql "SELECT round((extract(epoch FROM min(t.at)) - $killed)::numeric, 2) FROM order_transitions t WHERE $tcond")
  failover=", kill -9 r$replicas ($(wc -l <"$work/victim-partitions") partitions): all re-owned after ${owned_after} s, first transition by a new owner after ${first} s"
fi
forwarded=$(for u in "${urls[@]}"; do curl -fs "$u/metrics" 2>/dev/null | awk '/^requests_forwarded_total/ {print $2}'; done | awk '{s+=$1} END {print s+0}')
echo "$label replicas=$replicas: $(jq -r '"\(.completed_per_sec_overall | floor) sagas/s, create p50 \(.create_latency.p50_us / 1000) ms p99 \(.create_latency.p99_us / 1000) ms, saga p50 \(.saga_latency.p50_us / 1000) ms p99 \(.saga_latency.p99_us / 1000) ms, invariants hold: \(.invariants.holds)"' "$work/report.json" 2>/dev/null || tail -5 "$work/loadgen.txt"), forwarded $forwarded$failover"
