#!/usr/bin/env bash
# Measures the bare hyper server (src/main.rs) under wrk, once with tokio's
# default worker threads (one per core) and once with one, and prints
# requests/s, latency and the server's CPU per request (from /proc, over
# the wrk run only). Usage: ./run.sh CONNECTIONS [HOLD_MICROSECONDS]
# HOLD_MICROSECONDS (default 2000) stands for the time the gateway waits
# for payments-svc; it sets the request rate, as latency does for loadgen.
# Needs wrk (Debian package `wrk`; installed here when missing, as root).
set -euo pipefail
cd "$(dirname "$0")"
connections="${1:-16}"
hold="${2:-2000}"
port=3998
command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
cargo build --release --quiet
export FIXTURE="$PWD/../../tests/fixtures/stripe/checkout_session_completed_paid.json"

for workers in "$(nproc)" 1; do
    TOKIO_WORKER_THREADS="$workers" target/release/http-floor "$port" "$hold" &
    server=$!
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.1; done
    ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }
    before=$(ticks)
    wrk -t1 -c"$connections" -d15 --latency -s post.lua "http://127.0.0.1:$port/api/payments/webhook" >wrk.out
    used=$(( $(ticks) - before ))
    kill "$server" && wait "$server" 2>/dev/null || true
    requests=$(awk '/requests in/ {print $1}' wrk.out)
    echo "workers $workers, $connections connections, hold $hold µs:" \
        "$(awk '/Requests\/sec/ {printf "%d requests/s", $2}' wrk.out)," \
        "p50 $(awk '$1 == "50%" {print $2}' wrk.out), p99 $(awk '$1 == "99%" {print $2}' wrk.out)," \
        "server CPU $(( used * 10000000 / requests / 1000 )) µs per request"
    rm wrk.out
done
