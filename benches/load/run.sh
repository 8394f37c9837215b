#!/usr/bin/env bash
# Load benchmark: a mock OpenAI provider called directly vs. detour in front of the same mock.
#
#   benches/load/run.sh                      # builds target/release/detour if it is missing
#   DETOUR_BIN=target/debug/detour DURATION=3s benches/load/run.sh
#
# What it measures (wrk, POST /v1/chat/completions, see chat.lua):
#   * c=1 (1 connection, 1 wrk thread): latency p50 / p99 → detour's added latency in µs.
#   * c=$CONC (1 wrk thread): requests/s → ratio detour / direct.
#   each for a non-stream JSON answer and for an SSE stream of $CHUNKS content chunks.
#   * mode url: the JSON request in the header mode (`Helicone-Target-Url`, Pingora's native proxy
#     path) against the chain mode's JSON, with detour's CPU time per request for both.
#   * peak RSS (VmHWM) of a fresh detour after $RSS_CONNS concurrent slow streams.
#   * a $UPLOAD_MIB MiB upload streamed through the header mode to a sink: time and detour's
#     peak RSS (UPLOAD_MIB=0 skips it; needs python3).
# CPU layout (2-core machine): detour on CPU $DETOUR_CPU (1 worker thread), wrk on $LOAD_CPU.
# Throughput runs: the mock beside wrk on $LOAD_CPU. Latency (c=1) runs: a mock on $DETOUR_CPU,
# so that direct and detour runs cross between the cores equally often (see step 1).
#
# The report (Markdown) goes to stdout, progress to stderr: `run.sh > results.md` works.
# Exit status: 0 when every check passed, 1 when some check failed (the table is still printed,
# followed by the failed checks), 2 on a set-up error.
#
# Environment (defaults in brackets):
#   DETOUR_BIN [target/release/detour]   DURATION [15s] per measured run   WARMUP [1s] (0: none)
#   CONC [64]   CHUNKS [20]   RSS_CONNS [1000]   RSS_DURATION [10s]   RSS_CHUNK_INTERVAL_MS [50]
#   WRK_TIMEOUT [10s]   DETOUR_CPU [0]   LOAD_CPU [1]   BASE_PORT [18100]   KEEP_LOGS [0]
#   MODES ["json stream anth msg msgx url"]: the modes of step 2 to run (empty: none); RSS_CONNS=0 skips
#   step 3; UPLOAD_MIB [200].
#   Example, memory only: MODES= benches/load/run.sh; JSON only: MODES=json RSS_CONNS=0 ...
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
LUA="$HERE/chat.lua"

DURATION="${DURATION:-15s}"
WARMUP="${WARMUP:-1s}"
CONC="${CONC:-64}"
CHUNKS="${CHUNKS:-20}"
RSS_CONNS="${RSS_CONNS:-1000}"
RSS_DURATION="${RSS_DURATION:-10s}"
RSS_CHUNK_INTERVAL_MS="${RSS_CHUNK_INTERVAL_MS:-50}"
WRK_TIMEOUT="${WRK_TIMEOUT:-10s}"
DETOUR_CPU="${DETOUR_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
BASE_PORT="${BASE_PORT:-18100}"
KEEP_LOGS="${KEEP_LOGS:-0}"
MODES="${MODES-json stream anth msg msgx url}"
UPLOAD_MIB="${UPLOAD_MIB:-200}"
WRK="${WRK:-wrk}"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 2; }

# ---------------------------------------------------------------------------------------------
# Bookkeeping: every process started here is recorded by PID and stopped on exit.
# ---------------------------------------------------------------------------------------------
PIDS=()          # background processes (mocks, gateways, wrk), stopped in reverse order
FAILURES=()      # failed checks, printed after the table
declare -A R     # wrk results: R[label.key] = value (keys from chat.lua's WRK_RESULT line)
RUNS=()          # wrk run labels, in order
GW_NAME="" GW_PID=""   # the running gateway, checked after every wrk run
ABORTED=0        # set when the gateway died: the remaining runs are skipped
WORK="$(mktemp -d /tmp/detour-load.XXXXXX)"

alive() { # PID is running. A child that exited but is not reaped yet still answers kill -0 as a
           # zombie; so does a process whose main thread ended while other threads still run
           # (that one is alive). So: dead when kill -0 fails or every thread reads as a zombie.
  local t key state rest threads=0 zombies=0
  kill -0 "$1" 2>/dev/null || return 1
  for t in /proc/"$1"/task/*/status; do
    [[ -r $t ]] || continue
    while read -r key state rest; do
      if [[ $key == State: ]]; then
        threads=$((threads + 1))
        [[ $state != Z ]] || zombies=$((zombies + 1))
        break
      fi
    done <"$t" 2>/dev/null || true
  done
  # explicit status: a bare `return` in a trap handler returns the pre-trap status
  if ((threads > 0 && zombies == threads)); then return 1; else return 0; fi
}

forget_pid() { # drop a reaped PID from PIDS, so cleanup never signals a recycled PID
  local p keep=()
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

stop_pid() { # stop one PID: SIGINT (detour/Pingora: fast shutdown), then TERM, then KILL
  local pid=$1 sig i
  for sig in INT TERM KILL; do
    alive "$pid" || break
    kill -s "$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
  done
  wait "$pid" 2>/dev/null || true
  forget_pid "$pid"
}

cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
  if [[ $KEEP_LOGS == 1 || $rc -ne 0 ]]; then
    printf 'run.sh: logs kept in %s\n' "$WORK" >&2
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
secs() { # wrk duration (10, 10s, 2m, 1h) → whole seconds
  local d=$1
  case $d in
    *s) echo "${d%s}" ;;
    *m) echo $(( ${d%m} * 60 )) ;;
    *h) echo $(( ${d%h} * 3600 )) ;;
    *) echo "$d" ;;
  esac
}

port_free() { ! ss -Htan "sport = :$1" 2>/dev/null | grep -q .; }
NEXT_PORT=$BASE_PORT
free_port() { # free_port VAR: set VAR to the next free TCP port from BASE_PORT up (no subshell,
              # so NEXT_PORT advances)
  while ! port_free "$NEXT_PORT"; do NEXT_PORT=$((NEXT_PORT + 1)); done
  printf -v "$1" '%s' "$NEXT_PORT"
  NEXT_PORT=$((NEXT_PORT + 1))
}

check_pinned() { # check_pinned PID CPU NAME: taskset really applied
  local got
  got=$(awk '/^Cpus_allowed_list:/ {print $2}' "/proc/$1/status" 2>/dev/null)
  [[ $got == "$2" ]] || FAILURES+=("$3 (PID $1) runs on CPUs '$got', not on CPU $2")
}

start_mock() { # start_mock NAME PORT [extra args...] → sets MOCK_PID; waits for "listening on"
  # MOCK_CPU (default LOAD_CPU) chooses the core.
  local name=$1 port=$2 i cpu=${MOCK_CPU:-$LOAD_CPU}
  shift 2
  taskset -c "$cpu" "$DETOUR_BIN" mock --listen "127.0.0.1:$port" --name "$name" \
    --threads 1 "$@" >"$WORK/mock-$name.out" 2>"$WORK/mock-$name.err" &
  MOCK_PID=$!
  PIDS+=("$MOCK_PID")
  for ((i = 0; i < 100; i++)); do
    if grep -q 'listening on' "$WORK/mock-$name.out" 2>/dev/null; then
      check_pinned "$MOCK_PID" "$cpu" "mock $name"
      return 0
    fi
    alive "$MOCK_PID" || die "mock $name exited: $(tail -5 "$WORK/mock-$name.err")"
    sleep 0.1
  done
  die "mock $name did not report 'listening on' within 10 s"
}

start_gateway() { # start_gateway NAME PORT MOCK_PORT [NEAR_PORT] → sets GW_PID; waits for /health
  # Model gpt-4o goes to MOCK_PORT; with NEAR_PORT, model gpt-4o-near goes to that mock.
  local name=$1 port=$2 mock_port=$3 near_port=${4:-} i
  cat >"$WORK/gw-$name.yaml" <<EOF
server:
  threads: 1
  pid_file: $WORK/gw-$name.pid
  upgrade_sock: $WORK/gw-$name-upgrade.sock
  upstream_keepalive_pool_size: 2048
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 1
listen: ["127.0.0.1:$port"]
access-log: false
header-mode:                 # mode url: the mocks on loopback (approved: a provider's host)
  allow-networks: [127.0.0.0/8]
  allow-ports: ["1024-65535"]
providers:
  - name: mock
    kind: openai
    base-url: http://127.0.0.1:$mock_port/v1
models:
  gpt-4o:
    - provider: mock
EOF
  # The same mocks speak Anthropic's Messages API on /v1/messages: model claude is translated.
  cat >>"$WORK/gw-$name.yaml" <<EOF
  claude:
    - provider: anth
EOF
  sed -i "s|^models:|  - name: anth\n    kind: anthropic\n    base-url: http://127.0.0.1:$mock_port\nmodels:|" "$WORK/gw-$name.yaml"
  if [[ -n $near_port ]]; then
    cat >>"$WORK/gw-$name.yaml" <<EOF
  gpt-4o-near:
    - provider: near
      id: gpt-4o
  claude-near:
    - provider: anth-near
      id: claude
EOF
    sed -i "s|^models:|  - name: near\n    kind: openai\n    base-url: http://127.0.0.1:$near_port/v1\n  - name: anth-near\n    kind: anthropic\n    base-url: http://127.0.0.1:$near_port\nmodels:|" "$WORK/gw-$name.yaml"
  fi
  taskset -c "$DETOUR_CPU" "$DETOUR_BIN" -c "$WORK/gw-$name.yaml" \
    >"$WORK/gw-$name.out" 2>"$WORK/gw-$name.err" &
  GW_PID=$! GW_NAME=$name
  PIDS+=("$GW_PID")
  for ((i = 0; i < 150; i++)); do
    if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/health") == 200 ]]; then
      check_pinned "$GW_PID" "$DETOUR_CPU" "detour ($name)"
      return 0
    fi
    alive "$GW_PID" || die "detour ($name) exited: $(tail -5 "$WORK/gw-$name.err")"
    sleep 0.1
  done
  die "detour ($name) did not answer GET /health within 15 s"
}

JSON_BODY='{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}'
STREAM_BODY='{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true}'

preflight() { # preflight LABEL URL: one JSON and one stream request must come back complete
  local label=$1 url=$2 code n
  code=$(curl -sS --max-time 10 -o "$WORK/pre-$label-json" -w '%{http_code}' \
    -H 'content-type: application/json' -d "$JSON_BODY" "$url") || code=curl-error
  if [[ $code != 200 ]] || ! grep -q '"object":"chat.completion"' "$WORK/pre-$label-json"; then
    die "preflight $label JSON: HTTP $code, body: $(head -c 300 "$WORK/pre-$label-json")"
  fi
  code=$(curl -sS -N --max-time 10 -o "$WORK/pre-$label-stream" -w '%{http_code}' \
    -H 'content-type: application/json' -d "$STREAM_BODY" "$url") || code=curl-error
  n=$(grep -c '^data: ' "$WORK/pre-$label-stream" || true)
  # a role chunk + CHUNKS content chunks + a finish chunk + [DONE]
  if [[ $code != 200 || $n -ne $((CHUNKS + 3)) ]] || [[ $(grep '^data: ' "$WORK/pre-$label-stream" | tail -1) != 'data: [DONE]' ]]; then
    die "preflight $label stream: HTTP $code, $n data lines (want $((CHUNKS + 3)) ending in [DONE])"
  fi
}

check_gateway() { # after a run: is detour still up? If not: report how it ended, skip the rest
  local label=$1 rc=0
  [[ -n $GW_PID ]] && ! alive "$GW_PID" || return 0
  wait "$GW_PID" || rc=$?
  forget_pid "$GW_PID"
  ((rc > 128)) && rc="$rc (signal $((rc - 128)))"
  local err
  err=$(tail -4 "$WORK/gw-$GW_NAME.err" | tr '\n' ' ')
  FAILURES+=("$label: detour ($GW_NAME, PID $GW_PID) died during or before this run, exit status $rc${err:+; last stderr: $err}; remaining runs skipped")
  GW_PID=""
  ABORTED=1
}

cpu_ticks() { # cpu_ticks PID: user + system CPU time of PID so far, in clock ticks (0: none)
  [[ -n $1 ]] && awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}

cpu_us_per_req() { # cpu_us_per_req LABEL: detour's CPU µs per completed request in that run
  local t=${R[$1.cpu_ticks]:-} n=${R[$1.requests]:-}
  [[ -n $t && -n $n && $n -gt 0 ]] || { echo n/a; return; }
  awk -v t="$t" -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f µs", t * 1e6 / hz / n }'
}

# run_wrk LABEL URL MODE CONNS DURATION [MODEL [TARGET_URL]]
# Runs wrk pinned to LOAD_CPU, bounded by `timeout`, stores its WRK_RESULT line in R[LABEL.*]
# and records a failure for any socket error, non-2xx answer, missing result, or a dead gateway.
# While it runs, WATCH_PID/WATCH_PORT (if set) are sampled: peak VmRSS and peak number of
# established connections to WATCH_PORT (R[LABEL.max_rss_kb], R[LABEL.max_conns]).
WATCH_PID="" WATCH_PORT=""
run_wrk() {
  local label=$1 url=$2 mode=$3 conns=$4 dur=$5 model=${6:-gpt-4o} target=${7:-} out="$WORK/wrk-$1.txt" line kv rc=0 pid
  local max_rss=0 max_conns=0 rss c
  ((ABORTED == 0)) || return 0
  log "wrk $label: $mode, c=$conns, $dur"
  RUNS+=("$label")
  local cpu0
  cpu0=$(cpu_ticks "$GW_PID")
  taskset -c "$LOAD_CPU" timeout -k 5 $(( $(secs "$dur") + 30 )) \
    "$WRK" -t1 -c"$conns" -d"$dur" --timeout "$WRK_TIMEOUT" --latency -s "$LUA" "$url" -- "$mode" "$model" $target \
    >"$out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  # Sample the watched gateway while wrk runs (only in the memory run: ss and awk cost CPU).
  while [[ -n $WATCH_PID ]] && alive "$pid"; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$WATCH_PID/status" 2>/dev/null || echo 0)
    c=$(ss -Htn state established "( dport = :$WATCH_PORT )" 2>/dev/null | wc -l)
    if ((rss > max_rss)); then max_rss=$rss; fi
    if ((c > max_conns)); then max_conns=$c; fi
    sleep 0.25
  done
  wait "$pid" || rc=$?
  forget_pid "$pid"
  R[$label.max_rss_kb]=$max_rss
  R[$label.max_conns]=$max_conns
  R[$label.cpu_ticks]=$(( $(cpu_ticks "$GW_PID") - cpu0 ))
  line=$(grep '^WRK_RESULT ' "$out" || true)
  if [[ $rc -ne 0 || -z $line ]]; then
    FAILURES+=("$label: wrk exit status $rc, no result ($(grep -v '^WRK_RESULT' "$out" | tail -2 | tr '\n' ' '))")
    sed 's/^/    /' "$out" | tail -15 >&2
    check_gateway "$label"
    return 0
  fi
  for kv in ${line#WRK_RESULT }; do R[$label.${kv%%=*}]=${kv#*=}; done
  local ce=${R[$label.connect_err]} re=${R[$label.read_err]} we=${R[$label.write_err]} te=${R[$label.timeout_err]}
  ((ce + re + we + te == 0)) || FAILURES+=("$label: socket errors connect=$ce read=$re write=$we timeout=$te")
  ((${R[$label.status_err]} == 0)) || FAILURES+=("$label: ${R[$label.status_err]} responses with HTTP status >= 400")
  ((${R[$label.requests]} > 0)) || FAILURES+=("$label: no request completed")
  check_gateway "$label"
  log "   $(printf '%s' "$line" | cut -d' ' -f2-)"
}

# Number formatting for the table
n0() { # 12345.6 → 12,346
  awk -v x="$1" 'BEGIN {
    if (x == "") { print "n/a"; exit }
    s = sprintf("%.0f", x < 0 ? -x : x); o = ""
    while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) }
    print (x < 0 ? "-" : "") s o }'
}
us() { [[ -n $1 ]] && printf '%s µs' "$(n0 "$1")" || echo n/a; }
rps() { [[ -n $1 ]] && printf '%s req/s' "$(n0 "$1")" || echo n/a; }
added() { # added latency detour - direct, in µs
  if [[ -n $1 && -n $2 ]]; then
    local d=$(($2 - $1))
    if ((d >= 0)); then echo "+$(n0 "$d") µs"; else echo "$(n0 "$d") µs"; fi
  else echo n/a; fi
}
ratio() { # detour / direct
  [[ -n $1 && -n $2 ]] && awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0) printf "%.2f×", b / a; else print "n/a" }' || echo n/a
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

# ---------------------------------------------------------------------------------------------
# Set-up: binary, tools, file descriptors
# ---------------------------------------------------------------------------------------------
if [[ -z ${DETOUR_BIN:-} ]]; then
  DETOUR_BIN="$ROOT/target/release/detour"
  if [[ ! -x $DETOUR_BIN ]]; then
    log "building $DETOUR_BIN (cargo build --release)"
    (cd "$ROOT" && cargo build --release) >&2
  fi
fi
[[ -x $DETOUR_BIN ]] || die "DETOUR_BIN=$DETOUR_BIN is not an executable"
DETOUR_BIN="$(cd "$(dirname "$DETOUR_BIN")" && pwd)/$(basename "$DETOUR_BIN")"
command -v "$WRK" >/dev/null || die "wrk not found (Debian/Ubuntu: apt-get install -y wrk)"
for t in taskset timeout curl ss awk; do command -v "$t" >/dev/null || die "$t not found"; done
(($(nproc) >= 2)) || die "needs 2 CPUs (detour on one, mock + wrk on the other); nproc=$(nproc)"

# File descriptors: RSS_CONNS client + RSS_CONNS upstream connections in one detour process,
# RSS_CONNS in wrk and in the slow mock. Raise the soft limit (inherited by all of them).
want_fds=$((2 * RSS_CONNS + 1024))
hard=$(ulimit -Hn)
if [[ $hard != unlimited ]] && ((hard < want_fds)); then
  die "ulimit -Hn is $hard, the $RSS_CONNS-stream run needs about $want_fds file descriptors"
fi
if [[ $hard == unlimited ]] || ((hard > 65536)); then ulimit -n 65536; else ulimit -n "$hard"; fi

free_port MOCK_PORT
free_port NEAR_PORT
free_port GW_PORT
free_port SLOW_PORT
free_port GW2_PORT
DIRECT_URL="http://127.0.0.1:$MOCK_PORT/v1/chat/completions"
NEAR_URL="http://127.0.0.1:$NEAR_PORT/v1/chat/completions"
DETOUR_URL="http://127.0.0.1:$GW_PORT/v1/chat/completions"
log "binary: $DETOUR_BIN"
log "logs: $WORK"

# ---------------------------------------------------------------------------------------------
# 1. Start the mock (CPU $LOAD_CPU, with wrk) and detour in front of it (CPU $DETOUR_CPU).
#    The mock streams $CHUNKS content chunks back to back (no interval).
# ---------------------------------------------------------------------------------------------
start_mock fast "$MOCK_PORT" --chunks "$CHUNKS"
# A second mock on detour's core, for the c=1 latency runs: a request crossing between the
# cores costs this kind of VM ~90 µs per round trip (an IPI), so the latency runs keep the
# crossings equal (wrk on LOAD_CPU → mock on DETOUR_CPU directly, and wrk → detour → mock with
# both on DETOUR_CPU) and the difference is detour's own cost. Throughput runs use the mock
# beside wrk, so that detour has its core to itself.
MOCK_CPU=$DETOUR_CPU start_mock near "$NEAR_PORT" --chunks "$CHUNKS"
start_gateway main "$GW_PORT" "$MOCK_PORT" "$NEAR_PORT"
preflight direct "$DIRECT_URL"
preflight detour "$DETOUR_URL"
preflight direct-near "$NEAR_URL"

# ---------------------------------------------------------------------------------------------
# 2. Latency at c=1 and throughput at c=$CONC, direct vs. through detour, JSON and stream.
#    Direct and detour runs are interleaved per mode so slow drift affects both alike.
# ---------------------------------------------------------------------------------------------
# Mode anth: an Anthropic SSE stream from the mock (its /v1/messages), translated by detour into
# OpenAI chunks; the direct runs read the mock's Anthropic stream as it is.
# Modes msg and msgx: an Anthropic Messages client (POST /v1/messages, streamed). msg: to an
# Anthropic target, passed through byte for byte; the direct runs are the mock's /v1/messages.
# msgx: to an OpenAI target, translated both ways; the direct runs are the mock's OpenAI stream.
for mode in $MODES; do
  case $mode in json | stream | anth | msg | msgx | url) ;; *) die "MODES: unknown mode '$mode' (json, stream, anth, msg, msgx, url)" ;; esac
  for target in direct detour; do
    if [[ $target == direct ]]; then url=$DIRECT_URL; else url=$DETOUR_URL; fi
    wrk_mode=$mode model=gpt-4o near_model=gpt-4o-near near_url=$NEAR_URL far="" near=""
    if [[ $mode == anth ]]; then
      wrk_mode=stream model=claude near_model=claude-near
      near_url=${NEAR_URL%/v1/chat/completions}/v1/messages
      [[ $target == direct ]] && url=${DIRECT_URL%/v1/chat/completions}/v1/messages
    fi
    if [[ $mode == msg ]]; then
      wrk_mode=messages model=claude near_model=claude-near
      near_url=${NEAR_URL%/v1/chat/completions}/v1/messages
      if [[ $target == direct ]]; then
        url=${DIRECT_URL%/v1/chat/completions}/v1/messages
      else
        url=${DETOUR_URL%/v1/chat/completions}/v1/messages
      fi
    fi
    if [[ $mode == msgx ]]; then
      if [[ $target == direct ]]; then wrk_mode=stream; else
        wrk_mode=messages url=${DETOUR_URL%/v1/chat/completions}/v1/messages
      fi
    fi
    if [[ $mode == url ]]; then
      # Header mode: the same JSON request, its target named by Helicone-Target-Url.
      near_model=gpt-4o
      if [[ $target == direct ]]; then wrk_mode=json; else
        far="http://127.0.0.1:$MOCK_PORT" near="http://127.0.0.1:$NEAR_PORT"
      fi
    fi
    # Warm-up (not reported, but checked for errors): connections, pools, page faults.
    [[ $WARMUP == 0 || $WARMUP == 0s ]] || run_wrk "warmup-$mode-$target" "$url" "$wrk_mode" "$CONC" "$WARMUP" "$model" $far
    # Latency: one connection, one request at a time → p50 / p99 of the full response
    # (for a stream: until the last chunk and the terminating zero-length chunk).
    # Against the mock on detour's core (see above).
    if [[ $target == direct ]]; then
      run_wrk "$mode-$target-c1" "$near_url" "$wrk_mode" 1 "$DURATION" "$model"
    else
      run_wrk "$mode-$target-c1" "$url" "$wrk_mode" 1 "$DURATION" "$near_model" $near
    fi
    # Throughput: CONC connections kept busy by one wrk thread → requests/s.
    run_wrk "$mode-$target-c$CONC" "$url" "$wrk_mode" "$CONC" "$DURATION" "$model" $far
  done
done

# ---------------------------------------------------------------------------------------------
# 3. Memory: a fresh detour (so VmHWM covers this run only) in front of a slow mock that sends
#    an event every RSS_CHUNK_INTERVAL_MS ms, so a stream lasts (CHUNKS + 2) × 50 ms ≈ 1.1 s and
#    RSS_CONNS wrk connections keep RSS_CONNS streams open at once. During the run the
#    established detour→mock connections are counted to prove that concurrency was reached.
# ---------------------------------------------------------------------------------------------
RSS_LABEL="rss-stream-c$RSS_CONNS" PEAK_KB="" IDLE_RSS_KB="" MAX_CONNS=0
if ((ABORTED == 0 && RSS_CONNS > 0)); then
  [[ -n $GW_PID ]] && stop_pid "$GW_PID"   # free CPU $DETOUR_CPU and memory; its checks are done
  GW_PID=""
  start_mock slow "$SLOW_PORT" --chunks "$CHUNKS" --chunk-interval-ms "$RSS_CHUNK_INTERVAL_MS"
  start_gateway rss "$GW2_PORT" "$SLOW_PORT"
  RSS_PID=$GW_PID
  IDLE_RSS_KB=$(awk '/^VmRSS:/ {print $2}' "/proc/$RSS_PID/status")
  WATCH_PID=$RSS_PID WATCH_PORT=$SLOW_PORT
  run_wrk "$RSS_LABEL" "http://127.0.0.1:$GW2_PORT/v1/chat/completions" stream "$RSS_CONNS" "$RSS_DURATION"
  WATCH_PID="" WATCH_PORT=""
  if ((ABORTED == 0)); then
    PEAK_KB=$(awk '/^VmHWM:/ {print $2}' "/proc/$RSS_PID/status" 2>/dev/null || true)
    MAX_CONNS=${R[$RSS_LABEL.max_conns]:-0}
    if ((MAX_CONNS < RSS_CONNS * 9 / 10)); then
      FAILURES+=("$RSS_LABEL: at most $MAX_CONNS detour→mock connections were open at once (wanted ~$RSS_CONNS)")
    fi
    [[ -n $PEAK_KB ]] || FAILURES+=("$RSS_LABEL: could not read VmHWM of detour (PID $RSS_PID)")
  fi
fi

# ---------------------------------------------------------------------------------------------
# 3b. Upload: a fresh detour streams a $UPLOAD_MIB MiB body in the header mode to a sink (python's
#     http.server, reading and discarding), which answers with the byte count it read.
# ---------------------------------------------------------------------------------------------
UPLOAD_PEAK_KB="" UPLOAD_SECS="" UPLOAD_GOT=""
if ((ABORTED == 0 && UPLOAD_MIB > 0)) && command -v python3 >/dev/null; then
  [[ -n $GW_PID ]] && stop_pid "$GW_PID"
  GW_PID=""
  free_port SINK_PORT
  free_port GW3_PORT
  taskset -c "$LOAD_CPU" python3 - "$SINK_PORT" >"$WORK/sink.out" 2>&1 <<'PY' &
import http.server, json, sys
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get("content-length", 0)); got = 0
        while got < n:
            b = self.rfile.read(min(1 << 20, n - got))
            if not b:
                break
            got += len(b)
        body = json.dumps({"bytes": got}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
print("listening", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
  SINK_PID=$!
  PIDS+=("$SINK_PID")
  for ((i = 0; i < 50; i++)); do grep -q listening "$WORK/sink.out" 2>/dev/null && break; sleep 0.1; done
  start_gateway upload "$GW3_PORT" "$MOCK_PORT"
  head -c $((UPLOAD_MIB << 20)) /dev/urandom >"$WORK/upload.bin"
  log "upload: $UPLOAD_MIB MiB through Helicone-Target-Url"
  UPLOAD_SECS=$(taskset -c "$LOAD_CPU" curl -sS --max-time 300 -o "$WORK/upload.out" -w '%{time_total}' \
    -X POST -T "$WORK/upload.bin" -H 'content-type: application/octet-stream' \
    -H "Helicone-Target-Url: http://127.0.0.1:$SINK_PORT" "http://127.0.0.1:$GW3_PORT/v1/files") || UPLOAD_SECS=""
  UPLOAD_GOT=$(grep -o '"bytes": [0-9]*' "$WORK/upload.out" | grep -o '[0-9]*$' || true)
  UPLOAD_PEAK_KB=$(awk '/^VmHWM:/ {print $2}' "/proc/$GW_PID/status" 2>/dev/null || true)
  rm -f "$WORK/upload.bin"
  [[ $UPLOAD_GOT == $((UPLOAD_MIB << 20)) ]] || FAILURES+=("upload: the sink read '${UPLOAD_GOT}' bytes, not $((UPLOAD_MIB << 20))")
fi

# ---------------------------------------------------------------------------------------------
# 4. Report
# ---------------------------------------------------------------------------------------------
set +e   # from here on, a missing detail must not cost the table
cpu_model=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
[[ -n $cpu_model ]] || cpu_model=$(lscpu 2>/dev/null | awk -F': *' '/^Model name/ {print $2; exit}')
wrk_version=$("$WRK" -v 2>&1 | awk 'NR == 1 {print $2}')   # `wrk -v` exits 1
profile=release
[[ $DETOUR_BIN == */debug/* ]] && profile=debug

mode_name() {
  case $1 in
    json) echo "JSON" ;;
    stream) echo "SSE stream, $CHUNKS chunks" ;;
    anth) echo "Anthropic SSE → OpenAI SSE, $CHUNKS chunks" ;;
    msg) echo "Messages client → Anthropic, SSE passed through, $CHUNKS chunks" ;;
    msgx) echo "Messages client → OpenAI SSE translated, $CHUNKS chunks" ;;
    url) echo "JSON, header mode (Helicone-Target-Url)" ;;
  esac
}
{
  echo
  echo "## detour load benchmark"
  echo
  if [[ $profile != release ]]; then
    echo "> **Debug build** ($DETOUR_BIN): these numbers say nothing about detour's speed."
    echo
  fi
  echo "| Mode | Load | Metric | Direct (mock) | detour → mock | detour vs. direct |"
  echo "|---|---|---|---:|---:|---:|"
  for mode in $MODES; do
    d="$mode-direct-c1" g="$mode-detour-c1"
    echo "| $(mode_name $mode) | c=1 | latency p50 | $(us "${R[$d.p50_us]:-}") | $(us "${R[$g.p50_us]:-}") | $(added "${R[$d.p50_us]:-}" "${R[$g.p50_us]:-}") |"
    echo "| $(mode_name $mode) | c=1 | latency p99 | $(us "${R[$d.p99_us]:-}") | $(us "${R[$g.p99_us]:-}") | $(added "${R[$d.p99_us]:-}" "${R[$g.p99_us]:-}") |"
    d="$mode-direct-c$CONC" g="$mode-detour-c$CONC"
    echo "| $(mode_name $mode) | c=$CONC | throughput | $(rps "${R[$d.rps]:-}") | $(rps "${R[$g.rps]:-}") | $(ratio "${R[$d.rps]:-}" "${R[$g.rps]:-}") |"
  done
  echo
  for mode in json url; do
    [[ " $MODES " == *" $mode "* ]] || continue
    echo "detour CPU per request, $(mode_name $mode), c=$CONC: **$(cpu_us_per_req "$mode-detour-c$CONC")** (user + system, /proc/PID/stat over the run)."
    echo
  done
  if [[ -n $UPLOAD_PEAK_KB ]]; then
    echo "Upload: $UPLOAD_MIB MiB through Helicone-Target-Url to a sink in ${UPLOAD_SECS:-n/a} s; peak RSS of that (fresh) detour: **$(mib "$UPLOAD_PEAK_KB")**; the sink read $(n0 "${UPLOAD_GOT:-0}") bytes."
    echo
  fi
  if [[ -n $PEAK_KB ]]; then
    echo "Peak RSS of detour (VmHWM) with $RSS_CONNS concurrent SSE streams for $RSS_DURATION: **$(mib "$PEAK_KB")**" \
      "(idle after start: $(mib "$IDLE_RSS_KB"); up to $MAX_CONNS detour→mock connections seen open at once;" \
      "$(n0 "${R[$RSS_LABEL.rps]:-}") streams/s of $((CHUNKS + 2)) events $RSS_CHUNK_INTERVAL_MS ms apart)."
  else
    echo "Peak RSS of detour ($RSS_CONNS concurrent streams): n/a (see the checks below)."
  fi
  echo
  echo "Machine: $(nproc) CPUs, $cpu_model, Linux $(uname -r). detour ($profile build, 1 worker thread)" \
    "pinned to CPU $DETOUR_CPU, wrk $wrk_version (1 thread) on CPU $LOAD_CPU; the mock (1 thread) on CPU $LOAD_CPU for throughput rows and on CPU $DETOUR_CPU for latency rows (equal cross-core hops)." \
    "$DURATION per run, loopback, HTTP/1.1 keep-alive."
  echo
  echo "### Checks (every wrk run)"
  echo
  echo "| Run | Requests | Non-2xx (status ≥ 400) | Socket errors connect/read/write/timeout | Bytes/response |"
  echo "|---|---:|---:|---|---:|"
  for l in "${RUNS[@]}"; do
    if [[ -n ${R[$l.requests]:-} ]]; then
      bpr=$(awk -v b="${R[$l.bytes]}" -v r="${R[$l.requests]}" 'BEGIN { if (r > 0) printf "%.0f", b / r; else print "n/a" }')
      echo "| $l | ${R[$l.requests]} | ${R[$l.status_err]} | ${R[$l.connect_err]}/${R[$l.read_err]}/${R[$l.write_err]}/${R[$l.timeout_err]} | $bpr |"
    else
      echo "| $l | n/a | n/a | wrk failed | n/a |"
    fi
  done
  echo
  echo "Bytes/response = bytes read / responses completed (it includes responses still in flight when wrk stops)."
  echo
  if ((${#FAILURES[@]} == 0)); then
    echo "All checks passed: no socket errors, no non-2xx answers, detour stayed up, $RSS_CONNS streams were open at once."
  else
    echo "**${#FAILURES[@]} check(s) FAILED:**"
    echo
    for f in "${FAILURES[@]}"; do echo "- $f"; done
  fi
}

((${#FAILURES[@]} == 0)) || exit 1
