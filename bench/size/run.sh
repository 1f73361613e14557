#!/usr/bin/env bash
# Production size: a PostgreSQL database filled with N purchases and what
# comes with them (fill.sql), then each operator command timed with its
# default limit, three times, the best kept; the prunes, which change what
# they work on, once, then again with nothing left; then the webhook path
# (checkouts, refunds and disputes of stored payments, of unknown ones) and
# verify and the feed's catch-up through the Node client. N=0 runs the same
# on empty tables. Needs the release build (payments-svc, webhook-gateway,
# loadgen) and clients/node built (npm run build).
#   bench/size/run.sh 1000000 [bin dir, default target/release]
set -uo pipefail
cd "$(dirname "$0")/../.."
n="${1:?how many purchases}"
bin="${2:-target/release}"
admin="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
db="size_${n}"
url="${admin%/*}/${db}"
export DATABASE_URL="$url"

psql "$admin" -qc "DROP DATABASE IF EXISTS ${db} WITH (FORCE)" -c "CREATE DATABASE ${db}"
"$bin/payments-svc" migrate >/dev/null 2>&1
start=$(date +%s.%N)
psql "$url" -q -v n="$n" -f bench/size/fill.sql
echo "filled ${n} purchases in $(echo "$(date +%s.%N) - $start" | bc | cut -c1-6) s ($(psql "$url" -Atc "SELECT pg_size_pretty(pg_database_size(current_database()))"))"

best() { # the best of three runs of a command, in seconds
  local fastest=999999999999
  for _ in 1 2 3; do
    local t0 t1
    t0=$(date +%s%N); "$@" >/dev/null 2>&1; t1=$(date +%s%N)
    fastest=$(( (t1 - t0) < fastest ? (t1 - t0) : fastest ))
  done
  printf '%8.3f s  %s\n' "$(echo "$fastest / 1000000000" | bc -l)" "${*#"$bin/"}"
}
once() { # one run of a command that changes what it works on, in seconds
  local t0 t1 said
  t0=$(date +%s%N); said="$("$@" 2>&1 | tail -n 1)"; t1=$(date +%s%N)
  printf '%8.3f s  %s: %s\n' "$(echo "($t1 - $t0) / 1000000000" | bc -l)" "${*#"$bin/"}" "$said"
}
half=$(( n / 2 ))
head=$(psql "$url" -Atc "SELECT max(cursor) FROM purchase_changes")
best "$bin/payments-svc" events list
best "$bin/payments-svc" events list --status failed
best "$bin/payments-svc" events show "evt_${half}"
best "$bin/payments-svc" events replay --failed --dry-run
best "$bin/payments-svc" purchases show "cs_test_${half}"
best "$bin/payments-svc" purchases list
best "$bin/payments-svc" purchases list --needs-refund
best "$bin/payments-svc" reversals unmatched
best "$bin/payments-svc" events prune --dry-run
tail_100() { head -n 100 < <(timeout 30 "$bin/payments-svc" changes tail --json --after $((head - 100))); }
best tail_100
once "$bin/payments-svc" changes prune
once "$bin/payments-svc" events prune
echo "again, with nothing left to prune (what every retention pass costs):"
once "$bin/payments-svc" changes prune
once "$bin/payments-svc" events prune
psql "$url" -qc "VACUUM ANALYZE" -c "CHECKPOINT" # what autovacuum would have done by now

webhooks() { # a 20 s loadgen run on the filled database
  "$bin/loadgen" --bin-dir "$bin" --database-url "$url" --keep-database --duration 20 "$@" 2>&1 |
    grep -E '^(events/s|latency|database  .*CPU|check|Error)' | sed "s/^/  $* /"
}
for connections in 16 64; do
  webhooks --connections "$connections" --timed checkouts
  webhooks --connections "$connections" --timed reversals --events 200000
  webhooks --connections "$connections" --timed unmatched
done
BENCH_DATABASE_URL="$url" BENCH_PURCHASES="$n" PAYMENTS_BIN_DIR="$bin" node clients/node/bench/latency.mjs 4000 300 10
[ -n "${KEEP:-}" ] || psql "$admin" -qc "DROP DATABASE ${db} WITH (FORCE)"
