#!/usr/bin/env python3
"""The official OpenAI Python SDK with a detour gateway key as its api_key.

Usage: python openai_gateway_key.py BASE_URL GATEWAY_KEY MODEL EXPECT_PROVIDER

Checks: a plain completion and a stream are served (by EXPECT_PROVIDER, from the raw
response's x-detour-provider header), and a wrong key is an AuthenticationError (401).
Exits non-zero on any failed check.
"""

import sys

import openai

base, key, model, provider = sys.argv[1:5]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
fails = 0

raw = client.chat.completions.with_raw_response.create(
    model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=50
)
c = raw.parse()
got = raw.headers.get("x-detour-provider")
ok = got == provider and c.choices[0].message.content
print(("ok" if ok else "FAIL") + f": plain completion from {got}: {c.choices[0].message.content!r}")
fails += not ok

text = "".join(
    (ch.choices[0].delta.content or "")
    for ch in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=50
    )
    if ch.choices
)
print(("ok" if text else "FAIL") + f": stream text {text!r}")
fails += not text

try:
    openai.OpenAI(base_url=base, api_key="dtr_wrong", max_retries=0).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    print("FAIL: a wrong key was served")
    fails += 1
except openai.AuthenticationError as e:
    print(f"ok: a wrong key is AuthenticationError ({e.status_code})")

sys.exit(1 if fails else 0)
