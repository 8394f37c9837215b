#!/usr/bin/env bash
# What gateway keys cost: the chain mode's JSON request with auth.required on each store, against
# no auth, as detour's CPU time per request (user + system from /proc/PID/stat over the run).
#
#   benches/load/keys.sh            # needs target/release/detour, wrk, redis-server
#   DURATION=5s CONC=32 ROUNDS=5 benches/load/keys.sh
#
# Each keyed request is a PTB request: the key looked up (cached), a hold reserved before the
# attempt and settled after it. On SQLite the hold lives in process and the debit with its
# ledger row is queued to the ledger thread, which commits each few milliseconds' worth in one
# transaction (its CPU counts here: it shares detour's CPU); on Redis both are server-side
# scripts. detour runs on CPU $DETOUR_CPU with one worker thread; wrk, the mock and
# redis-server on $LOAD_CPU. Every process started here is stopped by its PID on exit.
# ROUNDS (default 3) rounds of all three stores; markdown table on stdout, progress on stderr.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="${DETOUR_BIN:-$ROOT/target/release/detour}"
DURATION="${DURATION:-10s}"
CONC="${CONC:-32}"
ROUNDS="${ROUNDS:-3}"
DETOUR_CPU="${DETOUR_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
BASE="${BASE_PORT:-18300}"
WORK="$(mktemp -d /tmp/detour-keys.XXXXXX)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
[[ -x $BIN ]] || { echo "keys.sh: build first: cargo build --release" >&2; exit 2; }

taskset -c "$LOAD_CPU" "$BIN" mock --listen "127.0.0.1:$BASE" --threads 1 >/dev/null 2>&1 &
PIDS+=($!)
taskset -c "$LOAD_CPU" redis-server --bind 127.0.0.1 --port $((BASE + 1)) --save '' \
  --appendonly no >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.5

export DETOUR_ADMIN_TOKEN=bench-admin-token
# measure STORE: start detour on STORE, warm up, run wrk; prints "RPS US_PER_REQUEST".
measure() {
  local store=$1 port=$((BASE + 10)) cfg="$WORK/$1.yaml" header=() key gw
  {
    echo "server: {threads: 1, pid_file: $WORK/$store.pid, upgrade_sock: $WORK/$store.sock, upstream_keepalive_pool_size: 2048}"
    echo "listen: [\"127.0.0.1:$port\"]"
    echo "access-log: false"
    case $store in
      none) ;;
      sqlite) echo "auth: {required: true}"; echo "store: {sqlite: $WORK/detour.db}" ;;
      redis) echo "auth: {required: true}"; echo "store: {redis: \"redis://127.0.0.1:$((BASE + 1))/0\"}" ;;
    esac
    echo "providers: [{name: mock, kind: openai, base-url: \"http://127.0.0.1:$BASE/v1\"}]"
    echo "models: {gpt-4o: [{provider: mock}]}"
  } >"$cfg"
  if [[ $store != none ]]; then
    key=$("$BIN" keys create bench --credits 1000000 -c "$cfg" | sed -n 's/.*"key": "\(dtr_[^"]*\)".*/\1/p')
    header=(-H "Authorization: Bearer $key")
  fi
  taskset -c "$DETOUR_CPU" "$BIN" -c "$cfg" >/dev/null 2>"$WORK/$store.err" &
  gw=$!
  PIDS+=("$gw")
  wait_http "http://127.0.0.1:$port/health"
  cpu_per_request "$gw" "http://127.0.0.1:$port/v1/chat/completions" "${header[@]}"
  kill -INT "$gw"; wait "$gw" 2>/dev/null || true   # SIGINT: Pingora stops at once
}

# Rounds of none, SQLite, Redis back to back: what keys add is taken within a round (this
# machine's speed drifts between rounds), then the median over the rounds.
declare -A RPS US ADDED
for ((round = 1; round <= ROUNDS; round++)); do
  for store in none sqlite redis; do
    read -r rps us _ <<<"$(measure "$store")"
    RPS[$store]+="$rps "; US[$store]+="$us "
    [[ $store == none ]] && base=$us
    ADDED[$store]+="$(awk -v a="$us" -v b="$base" 'BEGIN { print a - b }') "
    echo "round $round: $store $rps req/s, $us µs per request" >&2
  done
done
echo "| store | requests/s (c=$CONC, median of $ROUNDS) | detour CPU per request | added by keys (median, range) |"
echo "|---|---:|---:|---:|"
for store in none sqlite redis; do
  m() { tr ' ' '\n' <<<"$1" | grep . | median; }
  range=$(tr ' ' '\n' <<<"${ADDED[$store]}" | grep . | sort -g | sed -n '1p;$p' | paste -sd' ')
  added=$(awk -v a="$(m "${ADDED[$store]}")" -v r="$range" 'BEGIN { split(r, x, " ");
    printf "%+.1f µs (%+.1f … %+.1f)", a, x[1], x[2] }')
  [[ $store == none ]] && added="—"
  printf '| %s | %.0f | %.1f µs | %s |\n' "$store" "$(m "${RPS[$store]}")" "$(m "${US[$store]}")" "$added"
done
