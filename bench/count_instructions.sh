#!/usr/bin/env bash
# Instructions per webhook message, counted by valgrind's callgrind: repeatable to ~1 % on this
# shared host, where wall-clock and CPU-time figures swing by up to 2x between runs.
#
#   bench/count_instructions.sh [USERS] [CODE_DIR]
#
# Starts one `jiefen serve` under callgrind (slow: ~40 s to start) on a fresh PostgreSQL
# database and the local Redis, warms it up, zeroes the counters, drives USERS simulated
# residents (default 20, i.e. 320 messages, 4 at a time) through the whole intake with
# `jiefen bench webhook --url`, and divides the server's instructions by the messages.
# CODE_DIR (default: this checkout) lets you compare another checkout, e.g. a git worktree.
# KEEP_CALLGRIND=FILE keeps the profile for callgrind_annotate (where the instructions go).
# Needs valgrind (Debian package `valgrind`), the local Redis and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
users=${1:-20}
code_dir=$(cd "${2:-.}" && pwd)
python=$(pwd)/.venv/bin/python
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
work=$(mktemp -d /tmp/jiefen-instructions.XXXXXX)
database="jiefen_instr_$port"
psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE $database"
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS $database WITH (FORCE)"
  redis-cli -h 127.0.0.1 --scan --pattern "jiefen-instr-$port:*" | xargs -r redis-cli -h 127.0.0.1 DEL >/dev/null
  rm -rf "$work"
}
(
  cd "$code_dir"
  export JIEFEN_DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1:5432/$database"
  export JIEFEN_REDIS_URL=redis://127.0.0.1:6379/0 JIEFEN_REDIS_PREFIX="jiefen-instr-$port:"
  export JIEFEN_DATA_DIR="$work/var" JIEFEN_LOG_LEVEL=WARNING
  export JIEFEN_WECHAT_API_BASE=http://127.0.0.1:9 JIEFEN_PASSIVE_REPLY_DEADLINE_S=30
  exec valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
    "$python" -m jiefen.cli serve --port "$port" >"$work/server.log" 2>&1
) &
server=$!
trap cleanup EXIT
echo "starting the server under callgrind..." >&2
for _ in $(seq 1 180); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  sleep 1
done
.venv/bin/jiefen bench webhook --url "http://127.0.0.1:$port" --users 2 --concurrency 2 >/dev/null 2>&1
callgrind_control -z "$server" >/dev/null
messages=$(.venv/bin/jiefen bench webhook --url "http://127.0.0.1:$port" --users "$users" \
  --concurrency 4 --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(-1 if d["failures"] else d["messages"])')
callgrind_control -d "$server" >/dev/null
sleep 1
total=$(grep -h '^totals:' "$work"/callgrind.out.* | awk '{s += $2} END {print s}')
if [[ -n "${KEEP_CALLGRIND:-}" ]]; then cp "$(ls -t "$work"/callgrind.out.* | head -1)" "$KEEP_CALLGRIND"; fi
python3 -c "print(f'messages {$messages}  instructions {$total}  per message {$total / $messages / 1e6:.2f} M')"
