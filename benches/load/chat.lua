-- wrk script for benches/load/run.sh: POST /v1/chat/completions.
--
-- Usage:  wrk ... -s benches/load/chat.lua http://HOST:PORT/v1/chat/completions -- json|stream [MODEL]
--         wrk ... -s benches/load/chat.lua http://DETOUR/v1/chat/completions -- url MODEL TARGET_URL
--         (url: the JSON request in detour's header mode, `Helicone-Target-Url: TARGET_URL`)
--         wrk ... -s benches/load/chat.lua http://HOST:PORT/v1/messages -- messages [MODEL]
--         (messages: an Anthropic Messages API request, streamed)
--
-- Every connection sends the same request (built once per thread, as in stock wrk).
-- No response() callback is defined on purpose: it would make wrk hand every response to Lua
-- and slow wrk itself down, which would cap the numbers measured.
--
-- done() prints one machine-readable line that run.sh parses:
--   WRK_RESULT requests=N duration_us=N bytes=N rps=F p50_us=N p90_us=N p99_us=N
--              max_us=N mean_us=F connect_err=N read_err=N write_err=N timeout_err=N status_err=N
-- status_err is wrk's count of responses with an HTTP status >= 400 (its "Non-2xx or 3xx" line).

function init(args)
  local mode = args[1] or "json"
  local model = args[2] or "gpt-4o"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if mode == "stream" then
    wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"hi"}],"stream":true}'
  elseif mode == "messages" then
    wrk.headers["anthropic-version"] = "2023-06-01"
    wrk.body = '{"model":"' .. model .. '","max_tokens":256,"messages":[{"role":"user","content":"hi"}],"stream":true}'
  elseif mode == "json" or mode == "url" then
    wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"hi"}]}'
    if mode == "url" then
      wrk.headers["Helicone-Target-Url"] = args[3]
    end
  else
    error("chat.lua: mode must be json, stream, messages or url, got " .. tostring(mode))
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "WRK_RESULT requests=%d duration_us=%d bytes=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f connect_err=%d read_err=%d write_err=%d timeout_err=%d status_err=%d\n",
    summary.requests, summary.duration, summary.bytes,
    secs > 0 and summary.requests / secs or 0,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean,
    e.connect, e.read, e.write, e.timeout, e.status))
end
