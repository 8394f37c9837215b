#!/usr/bin/env bash
# The test command (README, .ci/run): installs what a fresh Debian machine lacks, then runs
# every test — unit, integration over real sockets (a real SQLite file, a real redis-server on a
# loopback port), the official OpenAI SDK client test, Prometheus's promtool over the Grafana
# board's queries, and the dashboard page in Debian's headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
if ! command -v cmake >/dev/null 2>&1; then          # pingora-core builds zlib-ng with cmake
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq cmake >/dev/null
fi
if ! command -v redis-server >/dev/null 2>&1; then   # the Redis store's tests start their own
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
fi
if ! command -v promtool >/dev/null 2>&1; then        # checks the Grafana board's PromQL
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq prometheus >/dev/null
fi
if ! command -v chromium >/dev/null 2>&1; then        # the dashboard's test loads it headless
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv >/dev/null
fi
bash scripts/sdk-venv.sh >/dev/null                 # venv with the official openai package

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# Bounded: a test that hangs fails the run (status 124) instead of holding CI to its limit.
timeout --kill-after=30 "${DETOUR_TEST_TIMEOUT:-2400}" cargo test --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
[ "$status" -eq 124 ] && echo "the tests did not finish within ${DETOUR_TEST_TIMEOUT:-2400} s"
set -e
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo
echo "${passed} passed, ${failed} failed"
exit "$status"
