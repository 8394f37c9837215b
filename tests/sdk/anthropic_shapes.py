"""Check Anthropic wire shapes against the official `anthropic` SDK's published types.

Input: a JSON file {"requests": [...], "message": {...}, "stream_events": [...]}:
  - requests: Messages API bodies detour sent (recorded by the mock) -> MessageCreateParams,
    with no top-level key the type does not declare;
  - message: a JSON answer -> anthropic.types.Message;
  - stream_events: the data of each SSE event -> anthropic.types.RawMessageStreamEvent.
Prints one line per check and 'N passed, N failed'; exits 1 if any failed.
"""
import json
import sys

import anthropic
import pydantic
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.message_create_params import (
    MessageCreateParamsNonStreaming,
    MessageCreateParamsStreaming,
)


def declared_keys(td):
    keys = set()
    for base in td.__mro__:
        keys |= set(getattr(base, "__annotations__", {}))
    return keys


def main(path):
    data = json.load(open(path))
    passed = failed = 0

    def check(ok, what, detail=""):
        nonlocal passed, failed
        if ok:
            passed += 1
            print(f"ok: {what}")
        else:
            failed += 1
            print(f"FAIL: {what} {detail}")

    for i, body in enumerate(data["requests"]):
        td = MessageCreateParamsStreaming if body.get("stream") else MessageCreateParamsNonStreaming
        extra = set(body) - declared_keys(td)
        check(not extra, f"request {i}: only declared top-level keys", sorted(extra))
        try:
            pydantic.TypeAdapter(td).validate_python(body, strict=True)
            check(True, f"request {i}: validates as {td.__name__}")
        except pydantic.ValidationError as e:
            check(False, f"request {i}: validates as {td.__name__}", str(e)[:800])
    try:
        Message.model_validate(data["message"], strict=True)
        check(True, "mock answer validates as Message")
    except pydantic.ValidationError as e:
        check(False, "mock answer validates as Message", str(e)[:800])
    adapter = pydantic.TypeAdapter(RawMessageStreamEvent)
    for i, ev in enumerate(data["stream_events"]):
        if ev.get("type") == "ping":
            # The SDK skips `event: ping` by name; it is not part of the event union.
            check(ev == {"type": "ping"}, f"stream event {i} is a bare ping", ev)
            continue
        try:
            adapter.validate_python(ev, strict=True)
            check(True, f"stream event {i} ({ev.get('type')}) validates")
        except pydantic.ValidationError as e:
            check(False, f"stream event {i} ({ev.get('type')})", str(e)[:800])
    print(f"anthropic SDK {anthropic.__version__}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
