#!/usr/bin/env python3
"""The official OpenAI Python SDK in detour's header mode: `default_headers` carries a
Helicone-Fallbacks list whose first target answers 429 and whose second, an
OpenAI-compatible server, gets `bodyKeyOverride: {"model": ...}`.

Usage:
  python openai_header_mode.py --base-url http://127.0.0.1:PORT/v1 \
      --primary http://127.0.0.1:A --fallback http://127.0.0.1:B --override-model NAME

Prints `ok: ...` / `FAIL: ...` per check; exits non-zero if any failed.
"""

import argparse
import json
import sys

import openai

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
    ap.add_argument("--primary", required=True)
    ap.add_argument("--fallback", required=True)
    ap.add_argument("--override-model", required=True)
    a = ap.parse_args()
    fallbacks = [
        {"target-url": a.primary, "headers": {}, "onCodes": [429]},
        {
            "target-url": a.fallback,
            "headers": {},
            "onCodes": [],
            "bodyKeyOverride": {"model": a.override_model},
        },
    ]
    client = openai.OpenAI(
        base_url=a.base_url,
        api_key="sk-client-own-key",
        max_retries=0,
        default_headers={"Helicone-Fallbacks": json.dumps(fallbacks)},
    )
    messages = [{"role": "user", "content": "hi"}]

    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=messages)
    check(raw.headers.get("helicone-fallback-index") == "1", "json: Helicone-Fallback-Index 1",
          raw.headers.get("helicone-fallback-index"))
    done = raw.parse()
    check(done.model == a.override_model, "json: the override reached the fallback", done.model)
    text = done.choices[0].message.content or ""
    check(text.startswith("Hello from"), "json: an answer", text)

    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=messages, stream=True
    )
    check(raw.headers.get("helicone-fallback-index") == "1", "stream: Helicone-Fallback-Index 1",
          raw.headers.get("helicone-fallback-index"))
    parts, models = [], set()
    for chunk in raw.parse():
        models.add(chunk.model)
        for ch in chunk.choices:
            if ch.delta and ch.delta.content:
                parts.append(ch.delta.content)
    text = "".join(parts)
    check(text.startswith("Hello from"), "stream: the chunks", text)
    check(models == {a.override_model}, "stream: the override reached the fallback", models)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
