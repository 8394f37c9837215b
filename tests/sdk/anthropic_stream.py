#!/usr/bin/env python3
"""Stream one message from detour's POST /v1/messages with the official Anthropic Python SDK
and print what the SDK made of it, as one JSON line: the text, the stop reason, the content
block types, the event types in order, and an error (its type and message) if the stream
ended in one.

Usage:
  python anthropic_stream.py --base-url http://127.0.0.1:PORT --model CHAIN [--request-id ID]

The SDK's own accumulator builds the final message: a block index that does not follow the
events before it, a second message_start or a missing one fails there.
"""

import argparse
import json

import anthropic


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--request-id", default=None)
    a = ap.parse_args()
    client = anthropic.Anthropic(base_url=a.base_url, api_key="sk-ant-client", max_retries=0)
    out = {"events": [], "error": None}
    try:
        with client.messages.stream(
            model=a.model,
            max_tokens=64,
            extra_body={"top_k": 5},
            extra_headers={"x-request-id": a.request_id} if a.request_id else None,
            messages=[{"role": "user", "content": "hi"}],
        ) as s:
            for ev in s:
                out["events"].append(ev.type)
            m = s.get_final_message()
        out["text"] = "".join(b.text for b in m.content if b.type == "text")
        out["stop_reason"] = m.stop_reason
        out["blocks"] = [b.type for b in m.content]
    except anthropic.APIStatusError as e:
        out["error"] = {"status": e.status_code, "type": e.body.get("error", {}).get("type") if isinstance(e.body, dict) else None, "message": str(e)}
    except Exception as e:  # noqa: BLE001
        out["error"] = {"status": None, "type": type(e).__name__, "message": str(e)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
