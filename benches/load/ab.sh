#!/usr/bin/env bash
# What a change costs: detour's CPU time per request for the chain mode's JSON request, with
# two builds of detour in alternating rounds (this machine's speed drifts between rounds, so
# each round compares the two back to back). A round's second run tends to cost more than its
# first (with one build and one config on both sides: +3.9 µs per request on average over 12
# rounds), so the order alternates, A first in odd rounds and B first in even ones: keep
# ROUNDS even for the two to cancel.
#
#   benches/load/ab.sh BEFORE_BIN AFTER_BIN          # e.g. two copies of target/release/detour
#   DURATION=10s CONC=32 ROUNDS=6 benches/load/ab.sh A B
#   EXTRA_A='records: {enabled: false}' benches/load/ab.sh BIN BIN   # one build, two configs
#   THREAD=detour-records EXTRA_A=… ab.sh BIN BIN   # and that thread's own CPU per request
#
# EXTRA_A and EXTRA_B are YAML lines added to A's and B's config. detour runs in a scratch
# directory, so its records file (detour.db) is written there.
#
# detour runs on CPU $DETOUR_CPU with one worker thread; wrk and the mock on $LOAD_CPU. Every
# process started here is stopped by its PID on exit. Markdown table on stdout.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
A="${1:?usage: ab.sh BEFORE_BIN AFTER_BIN}"
B="${2:?usage: ab.sh BEFORE_BIN AFTER_BIN}"
DURATION="${DURATION:-10s}"
CONC="${CONC:-32}"
ROUNDS="${ROUNDS:-6}"
DETOUR_CPU="${DETOUR_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
BASE="${BASE_PORT:-18500}"
WORK="$(mktemp -d /tmp/detour-ab.XXXXXX)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

taskset -c "$LOAD_CPU" "$A" mock --listen "127.0.0.1:$BASE" --threads 1 >/dev/null 2>&1 &
PIDS+=($!)
config() {
  cat <<YAML
server: {threads: 1, pid_file: $WORK/detour.pid, upgrade_sock: $WORK/detour.sock, upstream_keepalive_pool_size: 2048}
listen: ["127.0.0.1:$((BASE + 10))"]
access-log: false
providers: [{name: mock, kind: openai, base-url: "http://127.0.0.1:$BASE/v1"}]
models: {gpt-4o: [{provider: mock}]}
$1
YAML
}
config "${EXTRA_A:-}" >"$WORK/a.yaml"
config "${EXTRA_B:-}" >"$WORK/b.yaml"

# measure BIN CONFIG: prints "RPS US_PER_REQUEST".
measure() {
  local bin=$1 cfg=$2 gw
  (cd "$WORK" && exec taskset -c "$DETOUR_CPU" "$bin" -c "$cfg") >/dev/null 2>"$WORK/err" &
  gw=$!
  PIDS+=("$gw")
  wait_http "http://127.0.0.1:$((BASE + 10))/health"
  cpu_per_request "$gw" "http://127.0.0.1:$((BASE + 10))/v1/chat/completions"
  kill -INT "$gw"; wait "$gw" 2>/dev/null || true
}

US_A="" US_B="" DIFF="" TH_A="" TH_B=""
for ((round = 1; round <= ROUNDS; round++)); do
  # $(…) waits for measure to end, so each detour has stopped before the next one starts.
  if ((round % 2)); then
    read -r ra ua ta <<<"$(measure "$A" "$WORK/a.yaml")"
    read -r rb ub tb <<<"$(measure "$B" "$WORK/b.yaml")"
  else
    read -r rb ub tb <<<"$(measure "$B" "$WORK/b.yaml")"
    read -r ra ua ta <<<"$(measure "$A" "$WORK/a.yaml")"
  fi
  US_A+="$ua "; US_B+="$ub "; TH_A+="$ta "; TH_B+="$tb "
  DIFF+="$(awk -v a="$ua" -v b="$ub" 'BEGIN { print b - a }') "
  echo "round $round: before $ra req/s $ua µs, after $rb req/s $ub µs" >&2
done
m() { tr ' ' '\n' <<<"$1" | grep . | median; }
range=$(tr ' ' '\n' <<<"$DIFF" | grep . | sort -g | sed -n '1p;$p' | paste -sd' ')
echo "| build | detour CPU per request (median of $ROUNDS) |"
echo "|---|---:|"
echo "| before ($A${EXTRA_A:+, $EXTRA_A}) | $(m "$US_A") µs |"
echo "| after ($B${EXTRA_B:+, $EXTRA_B}) | $(m "$US_B") µs |"
if [[ -n ${THREAD:-} ]]; then
  echo "| its \`$THREAD\` threads: before, after (median) | $(m "$TH_A") µs, $(m "$TH_B") µs |"
fi
awk -v d="$(m "$DIFF")" -v r="$range" 'BEGIN { split(r, x, " ");
  printf "| **added** (median, range) | %+.1f µs (%+.1f … %+.1f) |\n", d, x[1], x[2] }'
