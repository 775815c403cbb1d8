#!/usr/bin/env bash
# Chaos drill against a running order service: places orders while a real fault happens,
# waits for every order to finish, and prints the invariant report.
#
#   scripts/chaos.sh [rabbitmq|postgres|kill] [orders]
#
# Scenarios (default rabbitmq):
#   rabbitmq  stop the local RabbitMQ app for 10 s (rabbitmqctl stop_app/start_app)
#   postgres  refuse and cut connections to the service's database for 5 s
#             (needs DATABASE=<name>, psql as user postgres on 127.0.0.1)
#   kill      kill -9 the service (SERVICE_PID) and run RESTART_CMD to start it again
#
# Environment: URL (default http://127.0.0.1:8080), ADMIN_TOKEN (required: the invariant
# report is an admin endpoint), SKU (default CB-004), CONCURRENCY (default 16).
# Exit status: 0 when every order is terminal and every invariant holds, 1 otherwise.
set -euo pipefail

scenario=${1:-rabbitmq}
orders=${2:-300}
url=${URL:-http://127.0.0.1:8080}
sku=${SKU:-CB-004}
concurrency=${CONCURRENCY:-16}
: "${ADMIN_TOKEN:?set ADMIN_TOKEN to the admin token of the service}"

for tool in curl jq xargs; do
  command -v "$tool" >/dev/null || { echo "chaos.sh needs $tool" >&2; exit 2; }
done
curl -fsS "$url/health/ready" >/dev/null || { echo "service at $url is not ready" >&2; exit 2; }

run=$(date +%s)
echo "== $scenario: $orders orders of $sku at concurrency $concurrency against $url"

place_orders() {
  # Each order retries with its own Idempotency-Key until the service accepts or refuses it
  # for good (201, 409, 422): a 503 or a dropped connection during the fault is retried.
  seq 1 "$orders" | xargs -P "$concurrency" -I{} bash -c '
    for attempt in $(seq 1 60); do
      code=$(curl -s -o /dev/null -w "%{http_code}" -X POST "$0/api/orders" \
        -H "Content-Type: application/json" -H "Idempotency-Key: chaos-$1-{}" \
        -d "{\"customer_id\":\"chaos\",\"currency\":\"USD\",\"items\":[{\"sku\":\"$2\",\"quantity\":1}]}" || true)
      case $code in 201|409|422) echo "$code"; exit 0;; esac
      sleep 1
    done
    echo "gave-up"' "$url" "$run" "$sku"
}

results=$(mktemp)
place_orders >"$results" &
loader=$!
sleep 2

case $scenario in
  rabbitmq)
    echo "-- stopping RabbitMQ for 10 s"
    rabbitmqctl -q stop_app
    sleep 3; echo "   ready during the outage: $(curl -s -o /dev/null -w '%{http_code}' "$url/health/ready")"
    sleep 7
    rabbitmqctl -q start_app
    ;;
  postgres)
    : "${DATABASE:?set DATABASE to the database name of the service}"
    echo "-- cutting PostgreSQL connections to $DATABASE for 5 s"
    psql -h 127.0.0.1 -U postgres -d postgres -qc "ALTER DATABASE \"$DATABASE\" ALLOW_CONNECTIONS false"
    psql -h 127.0.0.1 -U postgres -d postgres -qAtc "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '$DATABASE'" >/dev/null
    sleep 2; echo "   ready during the outage: $(curl -s -o /dev/null -w '%{http_code}' "$url/health/ready")"
    sleep 3
    psql -h 127.0.0.1 -U postgres -d postgres -qc "ALTER DATABASE \"$DATABASE\" ALLOW_CONNECTIONS true"
    ;;
  kill)
    : "${SERVICE_PID:?set SERVICE_PID}" "${RESTART_CMD:?set RESTART_CMD}"
    echo "-- kill -9 $SERVICE_PID, then: $RESTART_CMD"
    kill -9 "$SERVICE_PID"
    sleep 1
    bash -c "$RESTART_CMD" &
    ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac

wait "$loader"
echo "-- responses: $(sort "$results" | uniq -c | tr '\n' ' ')"

echo "-- waiting for every order to reach a terminal state"
deadline=$((SECONDS + 180))
while :; do
  busy=0
  for status in PENDING STOCK_RESERVED PAID COMPENSATING; do
    n=$(curl -fsS "$url/api/orders?status=$status&limit=500" | jq '.orders | length')
    busy=$((busy + n))
  done
  [ "$busy" -eq 0 ] && break
  if [ $SECONDS -gt $deadline ]; then echo "   $busy orders still in flight after 180 s"; break; fi
  sleep 1
done

echo "-- invariant report"
report=$(curl -fsS -H "Authorization: Bearer $ADMIN_TOKEN" "$url/api/admin/invariants")
echo "$report" | jq .
rm -f "$results"
[ "$(echo "$report" | jq -r .holds)" = "true" ]
