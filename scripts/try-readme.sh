#!/usr/bin/env bash
# Runs README.md's "Try it" block as written, against the service started the way the
# README's first command starts it, and checks that the block printed what the README says
# it prints. .ci/run calls it; any failure ends it with exit status 1 and says why.
#
#   scripts/try-readme.sh
#
# The service runs in a fresh directory under target/ (cargo finds the workspace from
# there), so its SQLite database and demo catalogue are new, as on a fresh machine; its
# environment holds only what cargo needs, so no DATABASE_URL or the like of the caller's
# changes what is tried. It needs port 8080 free.
# Environment: TRY_README_TIMEOUT, seconds to wait for the service to be ready, the build
# included (default 1800).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
url=http://127.0.0.1:8080

fail() {
  echo "try-readme: FAILED: $*" >&2
  exit 1
}

# The first code block under the README heading that starts with $1.
code_block() {
  awk -v heading="$1" '
    !under && $0 ~ "^#+ " heading { under = 1; next }
    under && !inside && /^#/ { exit }
    under && /^```/ { if (inside) exit; inside = 1; next }
    inside { print }
  ' README.md
}

start_command=$(code_block "The two commands" | head -n 1 | sed 's/#.*//; s/[[:space:]]*$//')
[[ -n $start_command ]] || fail "README.md has no first command under \"The two commands\""
block=$(code_block "Try it")
[[ -n $block ]] || fail "README.md has no code block under a \"Try it\" heading"

if (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then
  fail "port 8080 is in use; the README's service listens there. Stop what listens on it" \
    "(ss -ltnp 'sport = :8080') and run again"
fi

mkdir -p target
workdir=$(mktemp -d "$repo/target/try-readme.XXXXXX")
log=$workdir/service.log
keep=(PATH HOME USER LANG TMPDIR CARGO_HOME CARGO_TARGET_DIR CARGO_BUILD_JOBS RUSTUP_HOME
  RUSTUP_TOOLCHAIN RUSTFLAGS)
environment=()
for name in "${keep[@]}"; do
  if [[ -n ${!name:-} ]]; then environment+=("$name=${!name}"); fi
done

echo "== try-readme: starting the service: $start_command (log: $log)"
# A process group of its own (job control), so stopping it stops whatever it started.
set -m
(cd "$workdir" && exec env -i "${environment[@]}" bash -c "$start_command") >"$log" 2>&1 &
service=$!
set +m

service_log() {
  echo "-- last lines of the service's log:" >&2
  tail -n 40 "$log" >&2 || true
}

# Sets service_status: the service's exit status, or "killed" when SIGTERM did not stop it.
service_status=
stop_service() {
  kill -TERM -- "-$service" 2>/dev/null || true
  for _ in $(seq 40); do
    kill -0 "$service" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$service" 2>/dev/null; then
    kill -KILL -- "-$service" 2>/dev/null || true
    wait "$service" 2>/dev/null || true
    service_status=killed
    return
  fi
  service_status=0
  wait "$service" || service_status=$?
}
cleanup() {
  if [[ -z $service_status ]]; then stop_service; fi
  rm -rf "$workdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

deadline=$((SECONDS + ${TRY_README_TIMEOUT:-1800}))
until curl -fsS -o /dev/null "$url/health/ready" 2>/dev/null; do
  if ! kill -0 "$service" 2>/dev/null; then
    service_log
    fail "the service ($start_command) exited before it was ready"
  fi
  if ((SECONDS >= deadline)); then
    service_log
    fail "the service was not ready on $url within ${TRY_README_TIMEOUT:-1800} s"
  fi
  sleep 1
done
# Something else may have taken the port meanwhile: then ours failed to bind and exited.
kill -0 "$service" 2>/dev/null || { service_log; fail "the service exited; is port 8080 taken?"; }
echo "== try-readme: ready; running the Try it block of README.md"

out=$workdir/block.out
# Through a pipe, not into the file: the block writes to /dev/stderr, which reopens fd 2.
if ! bash -euo pipefail -c "$block" 2>&1 | tee "$out"; then
  service_log
  fail "the Try it block exited with an error"
fi

# What the README says the block prints: the demo catalogue, the 201 of the POST, and the
# order once finished, CONFIRMED (or REVERSED when the mock gateway declines the charge).
grep -q '"sku":"KB-001"' "$out" || fail "no demo catalogue (KB-001) in the output"
grep -q '^HTTP/[0-9.]* 201' "$out" || fail "the POST did not answer 201 Created"
last=$(grep -v '^[[:space:]]*$' "$out" | tail -n 1)
final=$(grep -o '"status":"[A-Z_]*"' <<<"$last" | head -n 1 | cut -d'"' -f4 || true)
case $final in
  CONFIRMED | REVERSED) ;;
  *)
    service_log
    fail "the last line is not a finished order (status: '${final:-none}'): $last"
    ;;
esac

stop_service
[[ $service_status == 0 ]] ||
  fail "the service did not stop cleanly on SIGTERM (exit: $service_status)"
echo "== try-readme: ok: the order ended $final; the service stopped cleanly"
