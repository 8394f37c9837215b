"""Check Gemini REST shapes against the official `google-genai` SDK's published types.

Input: a JSON file {"requests": [...], "response": {...}, "stream_events": [...]}:
  - requests: generateContent bodies detour sent (recorded by the mock): only the top-level keys
    of a GenerateContentRequest, and each of contents / systemInstruction / generationConfig /
    tools / toolConfig validates as the SDK's Content / GenerationConfig / Tool / ToolConfig
    (these models forbid unknown fields and take the REST camelCase names);
  - response and stream_events: the mock's answers -> GenerateContentResponse.
Prints one line per check and 'N passed, N failed'; exits 1 if any failed.
"""
import json
import sys

import google.genai
import pydantic
from google.genai import types

REQUEST_KEYS = {"contents", "systemInstruction", "generationConfig", "tools", "toolConfig",
                "safetySettings", "cachedContent", "labels"}


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

    def validate(model, value, what):
        try:
            model.model_validate(value)
            check(True, what)
        except pydantic.ValidationError as e:
            check(False, what, str(e)[:800])

    for i, body in enumerate(data["requests"]):
        extra = set(body) - REQUEST_KEYS
        check(not extra, f"request {i}: only GenerateContentRequest keys", sorted(extra))
        for j, c in enumerate(body.get("contents", [])):
            validate(types.Content, c, f"request {i}: contents[{j}] is a Content")
        if "systemInstruction" in body:
            validate(types.Content, body["systemInstruction"], f"request {i}: systemInstruction")
        if "generationConfig" in body:
            validate(types.GenerationConfig, body["generationConfig"], f"request {i}: generationConfig")
        for j, t in enumerate(body.get("tools", [])):
            validate(types.Tool, t, f"request {i}: tools[{j}] is a Tool")
        if "toolConfig" in body:
            validate(types.ToolConfig, body["toolConfig"], f"request {i}: toolConfig")
    validate(types.GenerateContentResponse, data["response"], "mock answer is a GenerateContentResponse")
    for i, ev in enumerate(data["stream_events"]):
        validate(types.GenerateContentResponse, ev, f"stream event {i} is a GenerateContentResponse")
    print(f"google-genai {google.genai.__version__}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
