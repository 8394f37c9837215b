# Shared by the load scripts (source it after setting WORK, CONC, DURATION, LOAD_CPU): the
# processes they start, stopped on exit; waiting for a listener; detour's CPU per request.

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
  echo "$(basename "$0"): $1 did not answer" >&2; [[ -s ${WORK:-}/err ]] && tail -3 "$WORK/err" >&2; exit 2
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# thread_ticks PID NAME: the CPU ticks of PID's threads named NAME (0 when none).
thread_ticks() {
  local t sum=0
  for t in /proc/"$1"/task/*; do
    [[ $(cat "$t/comm" 2>/dev/null) == "$2" ]] && sum=$((sum + $(awk '{print $14 + $15}' "$t/stat")))
  done
  echo "$sum"
}

# cpu_per_request PID URL [wrk args…]: a 1 s warm-up, then wrk for $DURATION at $CONC with
# the chain-mode JSON request; prints "REQUESTS_PER_S US_OF_CPU_PER_REQUEST" of process PID,
# then, with THREAD set, the µs per request of its threads named $THREAD (e.g. detour-records).
cpu_per_request() {
  local pid=$1 url=$2 t0 t1 out line n rps bad h0=0 h1=0
  shift 2
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONC" -d1s "$@" -s "$HERE/chat.lua" "$url" -- json >/dev/null
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  [[ -n ${THREAD:-} ]] && h0=$(thread_ticks "$pid" "$THREAD")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONC" -d"$DURATION" "$@" -s "$HERE/chat.lua" "$url" -- json)
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  [[ -n ${THREAD:-} ]] && h1=$(thread_ticks "$pid" "$THREAD")
  line=$(grep WRK_RESULT <<<"$out")
  n=$(sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<<"$line")
  rps=$(sed -n 's/.* rps=\([0-9.]*\).*/\1/p' <<<"$line")
  bad=$(sed -n 's/.* status_err=\([0-9]*\).*/\1/p' <<<"$line")
  [[ $bad == 0 ]] || { echo "$(basename "$0"): $bad error answers" >&2; exit 1; }
  awk -v r="$rps" -v t=$((t1 - t0)) -v h=$((h1 - h0)) -v n="$n" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%s %.1f %.2f\n", r, t * 1e6 / hz / n, h * 1e6 / hz / n }'
}
