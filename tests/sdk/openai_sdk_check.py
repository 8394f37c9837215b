#!/usr/bin/env python3
"""Drive a running detour gateway with the official OpenAI Python SDK.

Usage:
  python openai_sdk_check.py --base-url http://127.0.0.1:PORT/v1 --model MODEL \
      --expect-provider NAME --expect-content-prefix TEXT \
      [--fail-model MODEL --expect-fail-status N]

Prints one line per check (`ok: ...` or `FAIL: ...`) and exits non-zero if
any check failed. Everything checked comes from the SDK's real responses.
Set up the interpreter with scripts/sdk-venv.sh.
"""

import argparse
import sys
import traceback

import openai

MESSAGES = [{"role": "user", "content": "hi"}]


class Checker:
    def __init__(self):
        self.failures = 0
        self.passes = 0

    def check(self, cond, what, detail=""):
        if cond:
            self.passes += 1
            print(f"ok: {what}")
        else:
            self.failures += 1
            print(f"FAIL: {what}" + (f" ({detail})" if detail else ""))
        return cond

    def crashed(self, section, exc):
        self.failures += 1
        print(f"FAIL: {section}: unexpected {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)


def check_headers(c, headers, label, expect_provider):
    provider = headers.get("x-detour-provider")
    c.check(
        provider == expect_provider,
        f"{label}: x-detour-provider == {expect_provider!r}",
        f"got {provider!r}",
    )
    attempts = headers.get("x-detour-attempts")
    c.check(
        attempts is not None and attempts != "",
        f"{label}: x-detour-attempts present (={attempts})",
        f"got {attempts!r}",
    )


def check_non_stream(c, client, args):
    label = "non-stream"
    raw = client.chat.completions.with_raw_response.create(
        model=args.model, messages=MESSAGES
    )
    c.check(raw.status_code == 200, f"{label}: HTTP 200", f"got {raw.status_code}")
    check_headers(c, raw.headers, label, args.expect_provider)
    completion = raw.parse()
    c.check(
        completion.object == "chat.completion",
        f"{label}: object == 'chat.completion'",
        f"got {completion.object!r}",
    )
    if not c.check(len(completion.choices) > 0, f"{label}: has choices", "choices empty"):
        return
    content = completion.choices[0].message.content
    c.check(
        isinstance(content, str) and content.startswith(args.expect_content_prefix),
        f"{label}: content starts with {args.expect_content_prefix!r} (content={content!r})",
    )


def consume_stream(stream):
    """Return (joined delta text, saw finish_reason == 'stop', chunk count, objects)."""
    parts = []
    saw_stop = False
    n = 0
    objects = set()
    for chunk in stream:
        n += 1
        objects.add(chunk.object)
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        if choice.delta is not None and choice.delta.content:
            parts.append(choice.delta.content)
        if choice.finish_reason == "stop":
            saw_stop = True
    return "".join(parts), saw_stop, n, objects


def check_stream_result(c, label, text, saw_stop, n, objects, args):
    c.check(n > 0, f"{label}: received {n} chunks", "no chunks")
    c.check(
        objects == {"chat.completion.chunk"},
        f"{label}: every chunk object == 'chat.completion.chunk'",
        f"got {sorted(map(str, objects))}",
    )
    c.check(
        text.startswith(args.expect_content_prefix),
        f"{label}: joined text starts with {args.expect_content_prefix!r} (text={text!r})",
    )
    c.check(saw_stop, f"{label}: a chunk had finish_reason == 'stop'", "none did")


def check_stream(c, client, args):
    label = "stream"
    stream = client.chat.completions.create(
        model=args.model, messages=MESSAGES, stream=True
    )
    try:
        text, saw_stop, n, objects = consume_stream(stream)
    finally:
        stream.close()
    check_stream_result(c, label, text, saw_stop, n, objects, args)


def check_stream_headers(c, client, args):
    label = "stream (with_streaming_response)"
    with client.chat.completions.with_streaming_response.create(
        model=args.model, messages=MESSAGES, stream=True
    ) as resp:
        c.check(resp.status_code == 200, f"{label}: HTTP 200", f"got {resp.status_code}")
        ctype = resp.headers.get("content-type", "")
        c.check(
            ctype.startswith("text/event-stream"),
            f"{label}: content-type is text/event-stream",
            f"got {ctype!r}",
        )
        check_headers(c, resp.headers, label, args.expect_provider)
        text, saw_stop, n, objects = consume_stream(resp.parse())
    check_stream_result(c, label, text, saw_stop, n, objects, args)


def error_envelope(exc):
    """Return the inner `error` object of an APIStatusError.

    The SDK sets `exc.body` to the inner `error` object when the response is
    `{"error": {...}}`, but to the whole JSON otherwise; fall back to parsing
    the raw response ourselves.
    """
    body = exc.body
    if isinstance(body, dict):
        if isinstance(body.get("error"), dict):
            return body["error"], "body.error"
        if "type" in body or "attempts" in body:
            return body, "body"
    try:
        data = exc.response.json()
    except Exception:  # not JSON
        return None, "response (not JSON)"
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return data["error"], "response.json().error"
    return None, "response.json() without error object"


def check_fail(c, client, args):
    label = f"fail-model {args.fail_model!r}"
    try:
        result = client.chat.completions.create(model=args.fail_model, messages=MESSAGES)
    except openai.APIStatusError as exc:
        c.check(True, f"{label}: raised {type(exc).__name__}")
        c.check(
            exc.status_code == args.expect_fail_status,
            f"{label}: status_code == {args.expect_fail_status}",
            f"got {exc.status_code}",
        )
        # The raw response must also be the documented envelope.
        try:
            data = exc.response.json()
        except Exception as e:  # noqa: BLE001
            data = None
            c.check(False, f"{label}: response body is JSON", str(e))
        if data is not None:
            c.check(
                isinstance(data, dict) and isinstance(data.get("error"), dict),
                f"{label}: response body is {{\"error\": {{...}}}}",
                f"got {data!r}",
            )
        err, where = error_envelope(exc)
        if not c.check(err is not None, f"{label}: error object found ({where})", where):
            return
        c.check(
            err.get("type") == "all_attempts_failed",
            f"{label}: error.type == 'all_attempts_failed'",
            f"got {err.get('type')!r}",
        )
        attempts = err.get("attempts")
        c.check(
            isinstance(attempts, list) and len(attempts) > 0,
            f"{label}: error.attempts non-empty list "
            f"({len(attempts) if isinstance(attempts, list) else 0} attempts)",
            f"got {attempts!r}",
        )
        c.check(
            isinstance(err.get("message"), str) and err.get("message") != "",
            f"{label}: error.message non-empty ({err.get('message')!r})",
            f"got {err.get('message')!r}",
        )
        c.check(
            exc.type == err.get("type"),
            f"{label}: SDK exc.type == error.type",
            f"exc.type={exc.type!r}",
        )
    except openai.APIError as exc:
        c.check(
            False,
            f"{label}: raised APIStatusError",
            f"got {type(exc).__name__}: {exc}",
        )
    else:
        c.check(
            False,
            f"{label}: raised APIStatusError",
            f"call succeeded: {result!r}"[:300],
        )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--expect-provider", required=True)
    p.add_argument("--expect-content-prefix", required=True)
    p.add_argument("--fail-model")
    p.add_argument("--expect-fail-status", type=int)
    args = p.parse_args(argv)
    if args.fail_model and args.expect_fail_status is None:
        p.error("--fail-model needs --expect-fail-status")

    print(f"openai SDK {openai.__version__} against {args.base_url}")
    client = openai.OpenAI(
        base_url=args.base_url,
        api_key="client-key-not-forwarded",
        max_retries=0,
        timeout=20,
    )
    c = Checker()
    sections = [
        ("non-stream", check_non_stream),
        ("stream", check_stream),
        ("stream headers", check_stream_headers),
    ]
    if args.fail_model:
        sections.append(("fail-model", check_fail))
    for name, fn in sections:
        try:
            fn(c, client, args)
        except Exception as exc:  # noqa: BLE001 - report and continue
            c.crashed(name, exc)

    print(f"{c.passes} passed, {c.failures} failed")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
