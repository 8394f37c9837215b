#!/usr/bin/env python3
"""Drive detour's POST /v1/messages with the official Anthropic Python SDK.

Usage:
  python anthropic_messages.py --base-url http://127.0.0.1:PORT --model CHAIN \
      --expect-text TEXT --fail-model CHAIN --expect-fail-status N

Prints one line per check (`ok: ...` or `FAIL: ...`) and exits non-zero if any failed.
Everything checked comes from the SDK's own parsing of detour's answers.
"""

import argparse
import sys
import traceback

import anthropic

failures = 0


def check(cond, what, detail=""):
    global failures
    if cond:
        print(f"ok: {what}")
    else:
        failures += 1
        print(f"FAIL: {what}" + (f" ({detail})" if detail else ""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--expect-text", required=True)
    ap.add_argument("--fail-model", required=True)
    ap.add_argument("--expect-fail-status", type=int, required=True)
    a = ap.parse_args()
    client = anthropic.Anthropic(base_url=a.base_url, api_key="sk-ant-client", max_retries=0)
    msgs = [{"role": "user", "content": "hi"}]

    try:
        m = client.messages.create(model=a.model, max_tokens=50, system="Be brief.", messages=msgs)
        text = "".join(b.text for b in m.content if b.type == "text")
        check(m.type == "message" and m.role == "assistant", "plain: a message", m.type)
        check(text.startswith(a.expect_text), "plain: the text", text)
        check(m.stop_reason == "end_turn", "plain: stop_reason end_turn", m.stop_reason)
        check(m.usage.output_tokens > 0, "plain: usage", str(m.usage))
    except Exception as e:  # noqa: BLE001
        check(False, f"plain: {type(e).__name__}: {e}")
        traceback.print_exc()

    try:
        with client.messages.stream(model=a.model, max_tokens=50, messages=msgs) as s:
            streamed = "".join(s.text_stream)
            final = s.get_final_message()
        check(streamed.startswith(a.expect_text), "stream: the text", streamed)
        check(final.stop_reason == "end_turn", "stream: stop_reason", final.stop_reason)
        check(final.usage.output_tokens > 0, "stream: usage in message_delta", str(final.usage))
    except Exception as e:  # noqa: BLE001
        check(False, f"stream: {type(e).__name__}: {e}")
        traceback.print_exc()

    try:
        c = client.messages.count_tokens(model=a.model, system="Be brief.", messages=msgs)
        check(c.input_tokens > 0, "count_tokens: a count", str(c))
    except Exception as e:  # noqa: BLE001
        check(False, f"count_tokens: {type(e).__name__}: {e}")
        traceback.print_exc()

    try:
        client.messages.create(model=a.fail_model, max_tokens=50, messages=msgs)
        check(False, "all failed: an error was raised")
    except anthropic.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        err = body.get("error", {})
        check(e.status_code == a.expect_fail_status, "all failed: status", str(e.status_code))
        check(body.get("type") == "error", "all failed: Anthropic's error shape", str(body))
        check(len(err.get("attempts", [])) >= 1, "all failed: attempts listed", str(err))

    try:
        client.messages.create(model=a.model, max_tokens=50, messages=[{"role": "system", "content": "x"}])
        check(False, "bad request: an error was raised")
    except anthropic.BadRequestError as e:
        check(e.body["error"]["type"] == "invalid_request_error", "bad request: its type", str(e.body))
        check("messages[0]" in e.body["error"]["message"], "bad request: names the field", str(e.body))

    print(f"{failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
