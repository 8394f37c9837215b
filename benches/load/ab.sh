#!/usr/bin/env bash
# What a change costs: detour's CPU time per request for the chain mode's JSON request, with
# two builds of detour in alternating rounds (this machine's speed drifts between rounds, so
# each round compares the two back to back).
#
#   benches/load/ab.sh BEFORE_BIN AFTER_BIN          # e.g. two copies of target/release/detour
#   DURATION=10s CONC=32 ROUNDS=5 benches/load/ab.sh A B
#
# detour runs on CPU $DETOUR_CPU with one worker thread; wrk and the mock on $LOAD_CPU. Every
# process started here is stopped by its PID on exit. Markdown table on stdout.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
A="${1:?usage: ab.sh BEFORE_BIN AFTER_BIN}"
B="${2:?usage: ab.sh BEFORE_BIN AFTER_BIN}"
DURATION="${DURATION:-10s}"
CONC="${CONC:-32}"
ROUNDS="${ROUNDS:-5}"
DETOUR_CPU="${DETOUR_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
BASE="${BASE_PORT:-18500}"
WORK="$(mktemp -d /tmp/detour-ab.XXXXXX)"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_http() { # wait_http URL: up to 15 s for a 200
  local i
  for ((i = 0; i < 150; i++)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1") == 200 ]] && return 0
    sleep 0.1
  done
  echo "ab.sh: $1 did not answer" >&2; exit 2
}

taskset -c "$LOAD_CPU" "$A" mock --listen "127.0.0.1:$BASE" --threads 1 >/dev/null 2>&1 &
PIDS+=($!)
cfg="$WORK/detour.yaml"
cat >"$cfg" <<YAML
server: {threads: 1, pid_file: $WORK/detour.pid, upgrade_sock: $WORK/detour.sock, upstream_keepalive_pool_size: 2048}
listen: ["127.0.0.1:$((BASE + 10))"]
access-log: false
providers: [{name: mock, kind: openai, base-url: "http://127.0.0.1:$BASE/v1"}]
models: {gpt-4o: [{provider: mock}]}
YAML

# measure BIN: prints "RPS US_PER_REQUEST".
measure() {
  local bin=$1 gw t0 t1 out line n rps
  taskset -c "$DETOUR_CPU" "$bin" -c "$cfg" >/dev/null 2>"$WORK/err" &
  gw=$!
  PIDS+=("$gw")
  wait_http "http://127.0.0.1:$((BASE + 10))/health"
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONC" -d1s -s "$HERE/chat.lua" \
    "http://127.0.0.1:$((BASE + 10))/v1/chat/completions" -- json >/dev/null
  t0=$(awk '{print $14 + $15}' "/proc/$gw/stat")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONC" -d"$DURATION" -s "$HERE/chat.lua" \
    "http://127.0.0.1:$((BASE + 10))/v1/chat/completions" -- json)
  t1=$(awk '{print $14 + $15}' "/proc/$gw/stat")
  kill -INT "$gw"; wait "$gw" 2>/dev/null || true
  line=$(grep WRK_RESULT <<<"$out")
  n=$(sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<<"$line")
  rps=$(sed -n 's/.* rps=\([0-9.]*\).*/\1/p' <<<"$line")
  awk -v r="$rps" -v t=$((t1 - t0)) -v n="$n" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%s %.1f\n", r, t * 1e6 / hz / n }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

US_A="" US_B="" DIFF=""
for ((round = 1; round <= ROUNDS; round++)); do
  read -r ra ua < <(measure "$A")
  read -r rb ub < <(measure "$B")
  US_A+="$ua "; US_B+="$ub "
  DIFF+="$(awk -v a="$ua" -v b="$ub" 'BEGIN { print b - a }') "
  echo "round $round: before $ra req/s $ua µs, after $rb req/s $ub µs" >&2
done
m() { tr ' ' '\n' <<<"$1" | grep . | median; }
range=$(tr ' ' '\n' <<<"$DIFF" | grep . | sort -g | sed -n '1p;$p' | paste -sd' ')
echo "| build | detour CPU per request (median of $ROUNDS) |"
echo "|---|---:|"
echo "| before ($A) | $(m "$US_A") µs |"
echo "| after ($B) | $(m "$US_B") µs |"
awk -v d="$(m "$DIFF")" -v r="$range" 'BEGIN { split(r, x, " ");
  printf "| **added** (median, range) | %+.1f µs (%+.1f … %+.1f) |\n", d, x[1], x[2] }'
