#!/usr/bin/env bash
# Benchmarks the order service with target/release/loadgen and writes the figures into
# BENCHMARKS.md (between the bench:begin / bench:end markers; text outside them is kept).
#
#   bench/run.sh                      # 20 s per load
#   BENCH_SECONDS=10 bench/run.sh     # shorter
#
# What it does:
#   1. cargo build --release (order-service and loadgen);
#   2. a fresh PostgreSQL database bench_<timestamp> on 127.0.0.1:5432 and a fresh RabbitMQ
#      vhost bench_<timestamp> (guest gets all permissions on it);
#   3. starts target/release/order-service on them (ADMIN_TOKEN, LOG_FORMAT=json,
#      RUST_LOG=warn, PAYMENT_DECLINE_RATE) with a clean environment (env -i), and runs the
#      loads: closed loop at concurrency 1, 16, 64, 256 (each worker waits for its saga),
#      open loop at 100, 300, 1000 orders/s, each for BENCH_SECONDS after setting the SKU's
#      stock to BENCH_STOCK; loadgen follows every saga with the long poll (?wait_ms=);
#   4. loads BENCH_PRELOAD finished orders into every store (bench/preload.sql, then VACUUM
#      ANALYZE and a CHECKPOINT), restarts the service, warms it up for BENCH_WARMUP seconds
#      at concurrency 16 (unrecorded: the fresh row runs after two rows of load) and repeats
#      closed loop at concurrency 64 on the grown tables;
#   5. restarts the service in embedded mode (SQLite in a temp dir + in-process bus: no
#      DATABASE_URL / AMQP_URL) and runs closed loop at concurrency 64;
#   6. writes the table, the exact command of each row, CPU use per process during each
#      load (from /proc), the machine, the versions, the git commit and the date;
#   7. before the loads, measures the machine itself with pgbench (if installed): the issue's
#      reference saga-step transaction (UPDATE by primary key + INSERT into a log,
#      synchronous_commit on, prepared statements) with 8 clients for 10 s, in a throwaway database. This
#      machine's speed drifts over minutes; the figure says how fast it was. Then the
#      same transaction at an open 300/s for 10 s, each one timed (p50 / p99 / p99.9 / max):
#      the commit latency of one durable write on this machine, which bounds a create's.
#      And, if perf is installed, the round trip of two processes waking each other
#      (`perf bench sched pipe`): every hop of a saga is such a wake-up, which pgbench's
#      figure does not show (two machines with the same pgbench figure ran the service at
#      1245 and 754 sagas/s at c=64). After the loads it measures the 8-client tps once more
#      (10 s): some hosts drift by half within tens of minutes, and the two figures show
#      whether the rows ran at one machine speed.
# On exit (also on error or Ctrl-C) it stops the service, drops the database, deletes the
# vhost and the temp dir. It talks to 127.0.0.1 only.
#
# Environment: BENCH_SECONDS (20), BENCH_PORT (18080), BENCH_STOCK (10000000),
# BENCH_SKU (CB-004), BENCH_DRAIN_TIMEOUT (120s), PAYMENT_DECLINE_RATE (0.3),
# BENCH_OUT (BENCHMARKS.md), BENCH_ONLY (run only the rows whose label contains this),
# BENCH_PRELOAD (1000000: finished orders loaded before repeating closed c=64 on grown
# tables; 0 skips that row), BENCH_WARMUP (10: seconds of unrecorded load before that row),
# BENCH_SETTLE (5: seconds of pause after each row, before the next),
# BENCH_SSLMODE (require: PostgreSQL over TLS; disable: plain TCP),
# KEEP_WORKDIR (set: keep the temp dir with the service logs and JSON reports).
set -euo pipefail

# bash reads a script as it runs it: run it from memory, so that editing this file during a
# run (several minutes) cannot break the run.
if [ -z "${BENCH_FROM_MEMORY:-}" ]; then
  BENCH_FROM_MEMORY=1 exec bash -c "$(cat "$0")" "$0" "$@"
fi

cd "$(dirname "$0")/.."
root=$(pwd)
seconds=${BENCH_SECONDS:-20}
port=${BENCH_PORT:-18080}
stock=${BENCH_STOCK:-10000000}
sku=${BENCH_SKU:-CB-004}
drain=${BENCH_DRAIN_TIMEOUT:-120s}
decline=${PAYMENT_DECLINE_RATE:-0.3}
out=${BENCH_OUT:-BENCHMARKS.md}
only=${BENCH_ONLY:-}
preload=${BENCH_PRELOAD:-1000000}
warmup=${BENCH_WARMUP:-10}
settle=${BENCH_SETTLE:-5}
# As users run it: TLS, as a managed PostgreSQL requires (`disable` for plain TCP).
sslmode=${BENCH_SSLMODE:-require}
url="http://127.0.0.1:$port"

for tool in cargo curl jq psql createdb dropdb rabbitmqctl awk; do
  command -v "$tool" >/dev/null || { echo "bench/run.sh needs $tool" >&2; exit 2; }
done
[[ $seconds =~ ^[0-9]+$ ]] && [ "$seconds" -ge 3 ] || { echo "BENCH_SECONDS must be a whole number >= 3" >&2; exit 2; }

stamp=$(date -u +%Y%m%d_%H%M%S)
db="bench_$stamp"
vhost="bench_$stamp"
token="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
work=$(mktemp -d "${TMPDIR:-/tmp}/orderbench.XXXXXX")
svc_pid=""
loadgen_pid=""
db_created=""
vhost_created=""
calib_db=""

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

stop_service() {
  [ -n "$svc_pid" ] || return 0
  if kill -0 "$svc_pid" 2>/dev/null; then
    kill -TERM "$svc_pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$svc_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$svc_pid" 2>/dev/null || true
  fi
  wait "$svc_pid" 2>/dev/null || true
  svc_pid=""
}

cleanup() {
  local status=$?
  if [ -n "$loadgen_pid" ]; then kill "$loadgen_pid" 2>/dev/null || true; fi
  stop_service
  if [ -n "$db_created" ]; then
    dropdb -h 127.0.0.1 -U postgres --if-exists --force "$db" || log "could not drop database $db"
  fi
  if [ -n "$calib_db" ]; then
    dropdb -h 127.0.0.1 -U postgres --if-exists --force "$calib_db" || log "could not drop database $calib_db"
  fi
  if [ -n "$vhost_created" ]; then
    rabbitmqctl -q delete_vhost "$vhost" >/dev/null || log "could not delete vhost $vhost"
  fi
  if [ -n "${KEEP_WORKDIR:-}" ]; then log "kept $work"; else rm -rf "$work"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if curl -fsS -o /dev/null --max-time 2 "$url/health/live" 2>/dev/null; then
  echo "something already listens on 127.0.0.1:$port; set BENCH_PORT" >&2
  exit 2
fi

log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
log "building (release)"
cargo build --release -p order-service -p loadgen
service_bin="$root/target/release/order-service"
loadgen_bin="$root/target/release/loadgen"

# --- start / stop ----------------------------------------------------------------------

# start_service <pg|embedded>
start_service() {
  local mode=$1
  local env_common=(PATH="$PATH" HOME="$HOME" LISTEN_ADDR="127.0.0.1:$port" ADMIN_TOKEN="$token"
    LOG_FORMAT=json RUST_LOG=warn PAYMENT_DECLINE_RATE="$decline")
  if [ "$mode" = pg ]; then
    (cd "$work" && exec env -i "${env_common[@]}" \
      DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db?sslmode=$sslmode" \
      AMQP_URL="amqp://guest:guest@127.0.0.1:5672/$vhost" \
      "$service_bin" >"$work/service-pg.log" 2>&1) &
  else
    mkdir -p "$work/embedded"
    # No DATABASE_URL: the default sqlite://data/orders.db, relative to this temp dir.
    (cd "$work/embedded" && exec env -i "${env_common[@]}" \
      "$service_bin" >"$work/service-embedded.log" 2>&1) &
  fi
  svc_pid=$!
  for _ in $(seq 1 600); do
    if curl -fsS -o /dev/null --max-time 1 "$url/health/ready" 2>/dev/null; then
      log "service ($mode) ready, pid $svc_pid"
      return 0
    fi
    kill -0 "$svc_pid" 2>/dev/null || { tail -20 "$work/service-$mode.log" >&2; echo "service exited" >&2; exit 1; }
    sleep 0.1
  done
  tail -20 "$work/service-$mode.log" >&2
  echo "service ($mode) not ready after 60 s" >&2
  exit 1
}

# --- CPU accounting from /proc ---------------------------------------------------------

ticks_per_sec=$(getconf CLK_TCK)
cores=$(nproc)

# Prints: now_ns service postgres(our db) postgres(all) rabbitmq loadgen machine_busy
# machine_total, CPU in clock ticks. One quick pass (a few ms) so that every figure is read
# at about the same moment, even on a loaded machine.
snapshot() {
  local now pgpids _cpu user nice system idle iowait irq softirq steal _rest
  now=$(date +%s%N)
  pgpids=$(pgrep -d, -f "^postgres: .* $db " || true)
  read -r _cpu user nice system idle iowait irq softirq steal _rest </proc/stat
  # A process may exit between the glob and the read; cat then fails, and under pipefail
  # and `set -e` the background sampler would die without writing the row's CPU figures.
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v svc="${svc_pid:-x}" -v lg="${loadgen_pid:-x}" \
    -v pg=",$pgpids," -v now="$now" \
    -v busy="$((user + nice + system + irq + softirq + steal))" \
    -v total="$((user + nice + system + idle + iowait + irq + softirq + steal))" '
    {
      pid = $1; comm = $0; sub(/^[^(]*\(/, "", comm); sub(/\) [^)]*$/, "", comm)
      rest = $0; sub(/^.*\) /, "", rest); split(rest, f, " "); t = f[12] + f[13]
      if (pid == svc) s += t
      if (pid == lg) l += t
      if (comm == "postgres") { pa += t; if (index(pg, "," pid ",")) pd += t }
      if (comm == "beam.smp") r += t
    }
    END { printf "%s %d %d %d %d %d %s %s\n", now, s, pd, pa, r, l, busy, total }'
}

# sample_cpu <file>: measures the steady part of the load phase (from 1 s to seconds-1 s,
# by the clock), writes "service pg_db pg_all rabbitmq loadgen machine" in cores, and a top
# snapshot from the middle of it.
sample_cpu() {
  local file=$1 a b end rest
  sleep 1
  a=$(snapshot)
  end=$(($(date +%s%N) + (seconds - 2) * 1000000000))
  sleep $(((seconds - 2) / 2))
  top -b -n2 -d0.5 -w 160 2>/dev/null | awk '/^top -/{n++} n==2' | head -16 >"$file.top" || true
  if [ "$2" = postgres ]; then
    # What the database sessions are doing, and the outbox backlog of each store.
    psql -h 127.0.0.1 -U postgres -d "$db" -qAt -F ' ' -c "
      SELECT 'pg sessions: ' || string_agg(n || ' ' || what, ', ' ORDER BY n DESC) FROM (
        SELECT count(*) AS n, state || coalesce(' (' || wait_event_type || ':' || wait_event || ')', '') AS what
        FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
        GROUP BY 2) s;
      SELECT 'outbox rows (live, statistics): ' || string_agg(schemaname || ' ' || n_live_tup, ', ' ORDER BY schemaname)
      FROM pg_stat_user_tables WHERE relname = 'outbox';" \
      >>"$file.top" 2>&1 || true
  fi
  rest=$(((end - $(date +%s%N)) / 1000000))
  if [ "$rest" -gt 0 ]; then sleep "$(awk -v ms="$rest" 'BEGIN { printf "%.3f", ms / 1000 }')"; fi
  b=$(snapshot)
  if [ "$2" = postgres ]; then
    # Queue depths right after the load phase: rabbitmqctl starts an Erlang VM (~0.4 s of
    # CPU), which during the load would slow the orders of its last second.
    sleep 1.2
    rabbitmqctl -q list_queues -p "$vhost" name messages messages_unacknowledged 2>/dev/null \
      | awk 'NR > 1 { printf "%s%s %s (%s unacked)", (n++ ? ", " : "queues (messages): "), $1, $2, $3 } END { print "" }' >>"$file.top" || true
  fi
  awk -v a="$a" -v b="$b" -v hz="$ticks_per_sec" -v cores="$cores" 'BEGIN {
    split(a, x, " "); split(b, y, " "); span = (y[1] - x[1]) / 1e9;
    for (i = 2; i <= 6; i++) printf "%.2f ", (y[i] - x[i]) / hz / span;
    printf "%.2f\n", (y[7] - x[7]) / (y[8] - x[8]) * cores }' >"$file"
  printf 'raw (ns service pg_db pg_all rabbitmq loadgen busy total):\n%s\n%s\n' "$a" "$b" >>"$file"
}

# --- the loads -------------------------------------------------------------------------

rows=()      # label|mode|json|cpu|loadavg|command
# run_load <label> <mode> <loadgen args...>
run_load() {
  local label=$1 mode=$2; shift 2
  if [ -n "$only" ] && [[ $label != *"$only"* ]]; then return 0; fi
  local n=${#rows[@]}
  local json="$work/load-$n.json" cpu="$work/load-$n.cpu" loadavg
  local args=(--url "$url" --duration "${seconds}s" "$@" --sku "$sku" --stock "$stock"
    --expect-decline-rate "$decline" --drain-timeout "$drain" --label "$label" --quiet)
  loadavg=$(cut -d' ' -f1-3 /proc/loadavg)
  log "$label ($mode): loadgen ${args[*]}   [load average $loadavg]"
  local status=0
  ADMIN_TOKEN=$token "$loadgen_bin" "${args[@]}" --json "$json" >"$work/load-$n.txt" 2>&1 &
  loadgen_pid=$!
  sample_cpu "$cpu" "$mode" &
  local sampler=$!
  wait "$loadgen_pid" || status=$?
  wait "$sampler" || true
  cat "$work/load-$n.txt" >&2
  [ -f "$json" ] || { echo "loadgen failed (exit $status) without a report" >&2; exit 1; }
  rows+=("$label|$mode|$json|$cpu|$loadavg|ADMIN_TOKEN=… target/release/loadgen ${args[*]}|$status")
  # Let the previous load settle: the first seconds after a heavy row carry its after-effects
  # (open 300/s starting 3 s after 20 s of closed c=256: create p99.9 30–60 ms, p99 10–12;
  # starting 8 s after: p99.9 ~13 ms, p99 8.3–8.8), which belong to that row, not the next.
  sleep "$settle"
}

log "PostgreSQL database $db, RabbitMQ vhost $vhost"
createdb -h 127.0.0.1 -U postgres "$db"
db_created=1
rabbitmqctl -q add_vhost "$vhost" >/dev/null
vhost_created=1
rabbitmqctl -q set_permissions -p "$vhost" guest ".*" ".*" ".*" >/dev/null

# --- the machine's own speed ---------------------------------------------------------------

# Creates the throwaway database $calib_db with the tables of the issue's reference
# transaction, and $work/step.sql, the transaction itself. The calibrations run in this
# shell (not a subshell) so that `cleanup` knows the database to drop.
calib_setup() {
  calib_db="${db}_calib"
  createdb -h 127.0.0.1 -U postgres "$calib_db"
  psql -h 127.0.0.1 -U postgres -d "$calib_db" -q -v ON_ERROR_STOP=1 -c "
    CREATE TABLE step (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
    INSERT INTO step (id) SELECT g FROM generate_series(1, 10000) g;
    CREATE TABLE step_log (id bigserial PRIMARY KEY, step_id int NOT NULL,
                           at timestamptz NOT NULL DEFAULT now());" >/dev/null
  cat >"$work/step.sql" <<'SQL'
\set id random(1, 10000)
BEGIN;
UPDATE step SET n = n + 1 WHERE id = :id;
INSERT INTO step_log (step_id) VALUES (:id);
END;
SQL
}

calib_teardown() {
  dropdb -h 127.0.0.1 -U postgres --if-exists --force "$calib_db" && calib_db=""
}

# Prints the tps of the reference transaction with 8 clients for 10 s (nothing if pgbench
# failed; its errors go to $work/pgbench.err).
reference_tps() {
  pgbench -h 127.0.0.1 -U postgres -n -M prepared -c 8 -j 2 -T 10 -f "$work/step.sql" "$calib_db" 2>>"$work/pgbench.err" \
    | awk '/^tps = / { printf "%.0f", $3 }'
}

# What a pgbench figure says when pgbench ran but gave none.
pgbench_failed() {
  echo "not measured (pgbench failed: $(head -c 200 "$work/pgbench.err" 2>/dev/null))"
}

# Sets machine_tps: the tps of the issue's reference transaction (8 clients, 10 s), and
# machine_latency (below), or why not.
calibrate() {
  if ! command -v pgbench >/dev/null; then
    machine_tps="not measured (no pgbench)"
    machine_latency="not measured (no pgbench)"
    return 0
  fi
  calib_setup
  local tps
  tps=$(reference_tps) || tps=""
  # The same transaction at an open 300/s (the open-loop row's rate), each one timed: the
  # commit latency this machine's database and disk give one durable write at that rate
  # with nothing else running. A create is one such commit, so its p99 cannot be below
  # this one's.
  if pgbench -h 127.0.0.1 -U postgres -n -M prepared -c 2 -j 1 -R 300 -T 10 -l \
    --log-prefix="$work/pgbench-lat" -f "$work/step.sql" "$calib_db" >/dev/null 2>>"$work/pgbench.err"; then
    machine_latency=$(cat "$work"/pgbench-lat.* 2>/dev/null | awk '{ print $3 / 1000 }' | sort -n \
      | awk '{ v[NR] = $1 } END { if (NR) printf "p50 %.2f / p99 %.1f / p99.9 %.1f / max %.1f ms (%d transactions)", v[int(NR * 0.5) + 1], v[int(NR * 0.99) + 1], v[int(NR * 0.999) + 1], v[NR], NR }')
  fi
  machine_latency=${machine_latency:-"$(pgbench_failed)"}
  calib_teardown
  machine_tps=${tps:-"$(pgbench_failed)"}
}

# Sets machine_tps_end: the reference transaction's tps again, after the loads. Some hosts
# drift by half within tens of minutes (BENCHMARKS.md history in git, "Eighth round"); the two figures
# show whether the rows ran on the same machine speed.
calibrate_end() {
  if ! command -v pgbench >/dev/null; then
    machine_tps_end="not measured (no pgbench)"
    return 0
  fi
  calib_setup
  machine_tps_end=$(reference_tps) || machine_tps_end=""
  calib_teardown
  machine_tps_end=${machine_tps_end:-"$(pgbench_failed)"}
}

# Sets machine_wakeup: the round trip of two processes waking each other through a pipe
# (`perf bench sched pipe`), or why not. Every hop of a saga wakes a process on the other
# side (service, PostgreSQL, RabbitMQ); pgbench's figure does not show what that costs.
measure_wakeups() {
  if ! command -v perf >/dev/null; then
    machine_wakeup="not measured (no perf)"
    return 0
  fi
  machine_wakeup=$(perf bench sched pipe -l 50000 2>/dev/null | awk '/usecs\/op/ { printf "%.1f µs", $1 }') || machine_wakeup=""
  machine_wakeup=${machine_wakeup:-"not measured (perf bench failed)"}
}
log "measuring the machine (pgbench, 10 + 10 s; perf bench sched pipe)"
calibrate
measure_wakeups
log "machine: $machine_tps (transactions/s)"

bench_started=$(date +%s)
start_service pg
run_load "closed c=1" postgres --concurrency 1
run_load "closed c=16" postgres --concurrency 16
run_load "closed c=64" postgres --concurrency 64
run_load "closed c=256" postgres --concurrency 256
run_load "open 100/s" postgres --rate 100
run_load "open 300/s" postgres --rate 300
run_load "open 1000/s" postgres --rate 1000
stop_service

if [ "$preload" -gt 0 ] && { [ -z "$only" ] || [[ "closed c=64 grown" == *"$only"* ]]; }; then
  log "preloading $preload finished orders into every store (bench/preload.sql)"
  preload_started=$(date +%s)
  psql -h 127.0.0.1 -U postgres -d "$db" -q -v n="$preload" -f bench/preload.sql >"$work/preload.log" 2>&1 \
    || { cat "$work/preload.log" >&2; exit 1; }
  preload_seconds=$(($(date +%s) - preload_started))
  log "preloaded in ${preload_seconds}s; orders now: $(psql -h 127.0.0.1 -U postgres -d "$db" -Atc 'select count(*) from public.orders')"
  # The preload's gigabyte or two of WAL would otherwise start a checkpoint that runs
  # through the measured load; the fresh row did not start in one either.
  psql -h 127.0.0.1 -U postgres -d "$db" -qc 'CHECKPOINT'
  start_service pg
  # The fresh row runs on a service (and database sessions, prepared statements, caches)
  # warmed by the rows before it; this gives the restarted service the same, unrecorded.
  log "warming up the restarted service: ${warmup}s at concurrency 16 (not recorded)"
  ADMIN_TOKEN=$token "$loadgen_bin" --url "$url" --duration "${warmup}s" --concurrency 16 \
    --sku "$sku" --stock "$stock" --drain-timeout "$drain" --quiet >"$work/warmup.txt" 2>&1 \
    || { cat "$work/warmup.txt" >&2; exit 1; }
  run_load "closed c=64 grown" postgres --concurrency 64
  stop_service
fi

start_service embedded
run_load "embedded closed c=64" "embedded (SQLite + in-process bus)" --concurrency 64
stop_service
bench_seconds=$(($(date +%s) - bench_started))
log "measuring the machine again (pgbench, 10 s)"
calibrate_end
log "machine at the end: $machine_tps_end (transactions/s)"

# --- BENCHMARKS.md -----------------------------------------------------------------------

ms() { awk -v us="$1" 'BEGIN { if (us == "" || us == "null") print "-"; else if (us < 10000) printf "%.2f", us / 1000; else printf "%.0f", us / 1000 }'; }

# Markdown prose folded to 92 columns (BENCHMARKS.md keeps its lines short); a bullet's
# continuation lines are indented under it.
para() { printf '%s\n' "$*" | fold -s -w 92 | sed 's/ *$//'; }
bullet() { printf '%s\n' "- $*" | fold -s -w 90 | sed 's/ *$//; 2,$s/^/  /'; }

generated="$work/generated.md"
{
  echo "<!-- bench:begin (generated by bench/run.sh; edit outside the markers) -->"
  echo
  echo "### Run of $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  bullet "commit \`$(git describe --always --dirty 2>/dev/null || echo unknown)\` ($(git log -1 --format=%cI 2>/dev/null || echo '?'))"
  bullet "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), memory $(free -h | awk '/^Mem:/ {print $2 " total, " $7 " available"}')"
  bullet "PostgreSQL $(psql -h 127.0.0.1 -U postgres -Atc 'show server_version' 2>/dev/null || echo '?'), RabbitMQ $(rabbitmqctl -q version 2>/dev/null || echo '?'), $(rustc --version 2>/dev/null || echo rustc)"
  bullet "the machine's own speed at the start: $machine_tps transactions/s of the issue's reference saga step (\`UPDATE\` by primary key + \`INSERT\` into a log, \`synchronous_commit\` on; \`pgbench -M prepared -c 8 -j 2 -T 10\`; the issue quotes about 9,000 for this machine); at the end, after the loads: $machine_tps_end transactions/s"
  bullet "the machine's own commit latency at the start: $machine_latency for the same transaction at an open 300/s with nothing else running (\`pgbench -M prepared -c 2 -j 1 -R 300 -T 10 -l\`, latency per transaction including its wait for the schedule); a create is one such commit"
  bullet "the machine's cross-process wake-up round trip: $machine_wakeup (\`perf bench sched pipe -l 50000\`: two processes waking each other through pipes; a saga's every hop wakes a process on the other side)"
  bullet "service: \`PAYMENT_DECLINE_RATE=$decline LOG_FORMAT=json RUST_LOG=warn\`, other settings default (\`DB_MAX_CONNECTIONS=8\` per store); PostgreSQL over loopback with \`sslmode=$sslmode\`; the service, PostgreSQL, RabbitMQ and loadgen share the machine"
  bullet "each load: ${seconds} s of orders of one \`$sku\` (stock set to $stock first), then the drain until every saga is terminal, then the checks; the whole run took ${bench_seconds} s (build excluded)"
  echo
  echo "| # | mode | load | created/s | completed/s | create p50 / p99 (ms) | saga p50 / p99 (ms) | CONFIRMED / REVERSED / REJECTED | errors | not terminal | invariants |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  cpu_rows=()
  i=0
  for row in "${rows[@]}"; do
    IFS='|' read -r label mode json cpu loadavg command status <<<"$row"
    i=$((i + 1))
    jq -r --arg i "$i" --arg mode "$mode" --arg load "${label#embedded }" \
      '[$i, $mode, $load,
        (.created_per_sec | floor | tostring),
        (.completed_per_sec | floor | tostring),
        "\(.create_latency.p50_us // "null") \(.create_latency.p99_us // "null")",
        "\(.saga_latency.p50_us // "null") \(.saga_latency.p99_us // "null")",
        "\(.terminal.CONFIRMED // 0) / \(.terminal.REVERSED // 0) / \(.terminal.REJECTED // 0)",
        (if .error_count == 0 then "0" else ([.errors | to_entries[] | "\(.value) × \(.key)"] | join(", ")) end)
          + (if .dropped > 0 then ", \(.dropped) dropped" else "" end),
        (.unfinished | tostring),
        (if .invariants == null then "not checked" elif .invariants.holds and .passed then "holds" else "FAILS: " + (.failures | join("; ")) end)
       ] | join("|")' "$json" >"$work/row"
    IFS='|' read -r c1 c2 c3 c4 c5 create saga c8 c9 c10 c11 <"$work/row"
    read -r cp50 cp99 <<<"$create"
    read -r sp50 sp99 <<<"$saga"
    read -r svc pgdb pgall rabbit lg machine <"$cpu" || { svc=?; pgdb=?; pgall=?; rabbit=?; lg=?; machine=?; }
    if [[ $mode == embedded* ]]; then pgcol="–"; rbcol="–"; else pgcol="$pgdb ($pgall)"; rbcol=$rabbit; fi
    # The whole machine's CPU per completed saga: comparable across hosts and loads, where
    # latency tails are not (a saturated host queues every hop).
    per_saga=$(awk -v m="$machine" -v c="$c5" 'BEGIN { if (m + 0 > 0 && c + 0 > 0) printf "%.2f ms", m * 1000 / c; else printf "?" }')
    echo "| $c1 | $c2 | $c3 | $c4 | $c5 | $(ms "$cp50") / $(ms "$cp99") | $(ms "$sp50") / $(ms "$sp99") | $c8 | $c9 | $c10 | $c11 |"
    cpu_rows+=("| $c1 | $svc / $pgcol / $rbcol / $lg ($machine) | $per_saga | $loadavg |")
  done
  echo
  echo "Embedded: SQLite and the in-process bus. CPU of the same rows:"
  echo
  echo "| # | CPU cores: service / postgres (all) / rabbitmq / loadgen (machine, of $cores) | machine CPU per saga | load avg before |"
  echo "|---|---|---|---|"
  printf '%s\n' "${cpu_rows[@]}"
  echo
  fresh=$(printf '%s\n' "${rows[@]}" | awk -F'|' '$1 == "closed c=64" { print $3 }')
  grown=$(printf '%s\n' "${rows[@]}" | awk -F'|' '$1 == "closed c=64 grown" { print $3 }')
  if [ -n "$fresh" ] && [ -n "$grown" ]; then
    jq -rn --slurpfile f "$fresh" --slurpfile g "$grown" --arg n "$preload" --arg secs "${preload_seconds:-?}" '
      ($f[0].completed_per_sec) as $a | ($g[0].completed_per_sec) as $b |
      "Growth: \"closed c=64 grown\" repeats \"closed c=64\" after \($n) finished orders were loaded into every store (bench/preload.sql, \($secs) s, then VACUUM ANALYZE and CHECKPOINT; the restarted service warmed up for '"$warmup"' s at concurrency 16, unrecorded): \($b | floor) vs \($a | floor) completed sagas/s, \((($b - $a) / $a * 100) | . * 10 | round / 10)% (saga p99 \($g[0].saga_latency.p99_us / 1000 | floor) ms vs \($f[0].saga_latency.p99_us / 1000 | floor) ms)."' | fold -s -w 92 | sed 's/ *$//'
    echo
  fi
  first=$(printf '%s\n' "${rows[@]}" | head -1 | cut -d'|' -f3)
  follow_desc=$(jq -r 'if .follow_mode == "poll" or (.follow_mode == null and .follow) then "polling GET /api/orders/{id} (first poll after 5 ms, then ×1.5 up to 100 ms, at most \(.poll_budget) polls/s)"
    elif .follow_mode == "wait" then "the long poll GET /api/orders/{id}?wait_ms=\(.long_poll_ms) (at most \(.max_waits) open at once)"
    else "not followed" end' "$first" 2>/dev/null || echo "polling")
  closed_desc=$(jq -r 'if .closed_on == "create" then "creates its next order as soon as the create call answered (sagas followed separately)"
    else "creates its next order once its previous saga is terminal" end' "$first" 2>/dev/null || echo "?")
  echo "Closed loop: each of the C workers $closed_desc. Open loop: orders are"
  echo "scheduled at the rate, independent of the answers, and latencies count from each order's"
  echo "scheduled start. created/s and completed/s are per second of the load phase (completed/s"
  echo "counts the sagas that became terminal during it); the backlog left at the end is drained"
  echo "before the checks; the next row starts ${settle} s later. Sagas are followed with"
  echo "$follow_desc; saga latency is create start → terminal state seen by the follower. CPU is"
  echo "measured from /proc over the load phase minus its first and last second; \"postgres\" is the"
  echo "backends of the benchmark database (all postgres processes in brackets, including WAL writer"
  echo "and checkpointer and anyone else's databases); \"rabbitmq\" is the whole broker (other vhosts"
  echo "included); \"machine\" is all busy CPU, other users included. \"machine CPU per saga\" is"
  echo "that busy CPU divided by completed/s (loadgen included): a figure to compare hosts and"
  echo "commits by, where latency tails mostly say how close to saturation the host was."
  echo
  echo "Commands (\`ADMIN_TOKEN\` set to the service's token):"
  echo
  i=0
  for row in "${rows[@]}"; do
    IFS='|' read -r label mode json cpu loadavg command status <<<"$row"
    i=$((i + 1))
    para "$i. \`$command\` (exit $status)"
  done
  echo
  para "Full loadgen reports and top snapshots of this run: \`bench/last-run.md\` (written by the run, not committed)."
  echo
  echo "<!-- bench:end -->"
} >"$generated"

# The run's full reports stay beside the script, out of BENCHMARKS.md (git keeps the table's history).
{
  i=0
  for row in "${rows[@]}"; do
    IFS='|' read -r label mode json cpu loadavg command status <<<"$row"
    echo "**$((i + 1)). $mode, $label**"
    echo
    echo '```'
    cat "$work/load-$i.txt"
    echo
    if [ -f "$cpu.top" ]; then sed -n '1,3p;7,$p' "$cpu.top"; fi
    echo '```'
    echo
    i=$((i + 1))
  done
} >"$root/bench/last-run.md"

if [ -f "$out" ] && grep -q '<!-- bench:begin' "$out" && grep -q '<!-- bench:end -->' "$out"; then
  awk -v gen="$generated" '
    /<!-- bench:begin/ { while ((getline line < gen) > 0) print line; skip = 1; next }
    /<!-- bench:end -->/ { skip = 0; next }
    !skip { print }' "$out" >"$work/out.md"
  cat "$work/out.md" >"$out"
else
  { echo "# Benchmarks"; echo; echo "Generated by \`bench/run.sh\`; see README, \"Load generator and benchmarks\"."; echo; cat "$generated"; } >"$out"
fi
log "wrote $out (${bench_seconds} s of loads)"

failed=0
for row in "${rows[@]}"; do
  IFS='|' read -r label mode json cpu loadavg command status <<<"$row"
  [ "$status" = 0 ] || { log "$label: loadgen exit $status"; failed=1; }
done
exit "$failed"
