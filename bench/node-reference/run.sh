#!/usr/bin/env bash
# Measures server.js as loadgen measures the Rust services: events/s and
# latency (from load.js), the receiver's CPU per event (from /proc, over the
# load phase only) and its peak RSS. Usage: ./run.sh CONNECTIONS
# Needs node and npm, and PostgreSQL on 127.0.0.1:5432 (user postgres, trust).
set -euo pipefail
cd "$(dirname "$0")"
connections="${1:-64}"
[ -d node_modules ] || npm ci --silent
psql() { command psql -h 127.0.0.1 -U postgres -qAt "$@"; }
psql -d postgres -c "DROP DATABASE IF EXISTS node_reference" -c "CREATE DATABASE node_reference"
psql -d node_reference -c "
  CREATE TABLE events (id bigserial PRIMARY KEY, event_id text UNIQUE NOT NULL, type text,
    payload text, received_at timestamptz DEFAULT now());
  CREATE TABLE purchases (id bigserial PRIMARY KEY, session_id text UNIQUE NOT NULL, user_id text,
    course_id text, status text, created_at timestamptz DEFAULT now());"
events() { psql -d node_reference -c "SELECT count(*) FROM events"; }

# Its log lines go to a pipe, as a container runtime would take them.
node server.js | cat >/dev/null &
until curl -s -o /dev/null 127.0.0.1:3999; do sleep 0.1; done
server=$(pgrep -f "node server.js")
trap 'kill $server' EXIT
cpu_ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }

node load.js "$connections" 25 >load.out &
loader=$!
until [ "$(events)" != 0 ]; do sleep 0.1; done   # the loader signs its events first
ticks=$(cpu_ticks) count=$(events)
wait "$loader"
ticks=$(( $(cpu_ticks) - ticks )) count=$(( $(events) - count ))
cat load.out && rm load.out
echo "receiver CPU $(( ticks * 10000000 / count / 1000 )) µs per event ($count events), peak RSS $(awk '/VmHWM/ {print $2 / 1024 " MB"}' "/proc/$server/status")"
