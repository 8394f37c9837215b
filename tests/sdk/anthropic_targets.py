#!/usr/bin/env python3
"""Drive detour's POST /v1/messages with the official Anthropic Python SDK, against one chain.

Usage:
  python anthropic_targets.py --base-url http://127.0.0.1:PORT --model CHAIN \
      --expect-text TEXT [--full]

Checks a plain message with a system prompt, a stream, and (with --full: the target's mock
answers tools and max_tokens) a `max_tokens` stop and a tool round trip, JSON and streamed.
Prints one line per check (`ok: ...` or `FAIL: ...`) and exits non-zero if any failed.
Everything checked comes from the SDK's own parsing of detour's answers.
"""

import argparse
import sys
import traceback

import anthropic

failures = 0

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def check(cond, what, detail=""):
    global failures
    if cond:
        print(f"ok: {what}")
    else:
        failures += 1
        print(f"FAIL: {what}" + (f" ({detail})" if detail else ""))


def guarded(name, f):
    try:
        f()
    except Exception as e:  # noqa: BLE001
        check(False, f"{name}: {type(e).__name__}: {e}")
        traceback.print_exc()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--expect-text", required=True)
    ap.add_argument("--full", action="store_true")
    a = ap.parse_args()
    client = anthropic.Anthropic(base_url=a.base_url, api_key="sk-ant-client", max_retries=0)
    ask = [{"role": "user", "content": "hi"}]

    def plain():
        m = client.messages.create(model=a.model, max_tokens=50, system="Be brief.", messages=ask)
        text = "".join(b.text for b in m.content if b.type == "text")
        check(m.type == "message" and m.role == "assistant", "plain: a message", m.type)
        check(text.startswith(a.expect_text), "plain: the text", text)
        check(m.stop_reason == "end_turn", "plain: stop_reason end_turn", m.stop_reason)
        check(m.usage.input_tokens > 0 and m.usage.output_tokens > 0, "plain: usage", str(m.usage))

    def stream():
        with client.messages.stream(model=a.model, max_tokens=50, messages=ask) as s:
            streamed = "".join(s.text_stream)
            final = s.get_final_message()
        check(streamed.startswith(a.expect_text), "stream: the text", streamed)
        check(final.stop_reason == "end_turn", "stream: stop_reason", final.stop_reason)
        check(final.usage.output_tokens > 0, "stream: usage", str(final.usage))

    def max_tokens():
        m = client.messages.create(model=a.model, max_tokens=1, messages=ask)
        check(m.stop_reason == "max_tokens", "max_tokens: stop_reason", m.stop_reason)
        with client.messages.stream(model=a.model, max_tokens=1, messages=ask) as s:
            final = s.get_final_message()
        check(final.stop_reason == "max_tokens", "max_tokens: streamed", final.stop_reason)

    def tools():
        question = [{"role": "user", "content": "Weather in Paris?"}]
        m = client.messages.create(model=a.model, max_tokens=100, tools=[WEATHER], messages=question)
        uses = [b for b in m.content if b.type == "tool_use"]
        check(m.stop_reason == "tool_use", "tools: stop_reason tool_use", m.stop_reason)
        check(len(uses) == 1 and uses[0].name == "get_weather", "tools: the call", str(m.content))
        check(uses and uses[0].input == {"city": "Paris"}, "tools: its input", str(m.content))
        with client.messages.stream(model=a.model, max_tokens=100, tools=[WEATHER], messages=question) as s:
            final = s.get_final_message()
        streamed = [b for b in final.content if b.type == "tool_use"]
        check(
            len(streamed) == 1 and streamed[0].input == {"city": "Paris"},
            "tools: the call, streamed",
            str(final.content),
        )
        if not uses:
            return
        answered = question + [
            {"role": "assistant", "content": m.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "18C, sunny"}]},
        ]
        r = client.messages.create(model=a.model, max_tokens=100, tools=[WEATHER], messages=answered)
        text = "".join(b.text for b in r.content if b.type == "text")
        check(r.stop_reason == "end_turn" and text.startswith(a.expect_text), "tools: the round trip", str(r.content))

    guarded("plain", plain)
    guarded("stream", stream)
    if a.full:
        guarded("max_tokens", max_tokens)
        guarded("tools", tools)
    print(f"{failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
