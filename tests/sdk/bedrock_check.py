"""Check what detour sends Bedrock against botocore, AWS's own Python implementation.

Input: a JSON file {"credentials": {...}, "region": "...", "requests": [...], "response": {...},
"stream_b64": "..."}:
  - requests: what the mock recorded (method, path, headers, body). For each:
      * the path is the one botocore's rest-json serializer renders for that modelId;
      * the body passes botocore's ParamValidator for Converse/ConverseStream input and is
        exactly what botocore's serializer produces from the same parameters;
      * the SigV4 Authorization header equals the one botocore's SigV4Auth computes over the
        same request, credentials and x-amz-date.
  - response: the mock's Converse JSON -> ConverseResponse shape;
  - stream_b64: the mock's ConverseStream body -> decoded by botocore's EventStreamBuffer (CRCs
    checked), each event payload -> the ConverseStreamOutput member shape it names.
Prints one line per check and 'N passed, N failed'; exits 1 if any failed.
"""
import base64
import copy
import datetime
import json
import sys
from unittest import mock
from urllib.parse import unquote

import botocore
import botocore.auth
import botocore.credentials
import botocore.eventstream
import botocore.serialize
import botocore.session
import botocore.validate
from botocore.awsrequest import AWSRequest


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

    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    serializer = botocore.serialize.create_serializer("rest-json")
    validator = botocore.validate.ParamValidator()
    c = data["credentials"]
    creds = botocore.credentials.Credentials(c["access_key"], c["secret_key"], c.get("token"))

    for i, r in enumerate(data["requests"]):
        path = r["path"]
        stream = path.endswith("/converse-stream")
        op = model.operation_model("ConverseStream" if stream else "Converse")
        model_id = unquote(path.split("/model/", 1)[1].rsplit("/", 1)[0])
        body = json.loads(r["body"])
        params = dict(body, modelId=model_id)
        report = validator.validate(params, op.input_shape)
        check(not report.has_errors(), f"request {i}: body valid for {op.name}",
              report.generate_report())
        # botocore takes blobs as bytes and base64-encodes them itself.
        raw = copy.deepcopy(params)
        for m in raw.get("messages", []):
            for block in m.get("content", []):
                src = block.get("image", {}).get("source", {})
                if "bytes" in src:
                    src["bytes"] = base64.b64decode(src["bytes"])
        ser = serializer.serialize_to_request(raw, op)
        check(ser["url_path"] == path, f"request {i}: path as botocore renders it",
              f"{ser['url_path']} != {path}")
        check(json.loads(ser["body"]) == body, f"request {i}: body as botocore serializes it",
              f"{ser['body']!r} != {body!r}")

        headers = {k.lower(): v for k, v in r["headers"]}
        amz_date = headers.get("x-amz-date", "")
        when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
        req = AWSRequest(method=r["method"], url=f"http://{headers['host']}{path}",
                         data=r["body"].encode(),
                         headers={"content-type": headers.get("content-type", "")})
        with mock.patch.object(botocore.auth, "get_current_datetime", return_value=when):
            botocore.auth.SigV4Auth(creds, "bedrock", data["region"]).add_auth(req)
        check(req.headers["Authorization"] == headers.get("authorization"),
              f"request {i}: SigV4 signature equals botocore's",
              f"\n  botocore: {req.headers['Authorization']}\n  detour:   {headers.get('authorization')}")
        if c.get("token"):
            check(headers.get("x-amz-security-token") == c["token"],
                  f"request {i}: session token header")

    out = model.operation_model("Converse").output_shape
    report = validator.validate(data["response"], out)
    check(not report.has_errors(), "mock answer is a ConverseResponse", report.generate_report())

    events = model.operation_model("ConverseStream").output_shape.members["stream"]
    buf = botocore.eventstream.EventStreamBuffer()
    buf.add_data(base64.b64decode(data["stream_b64"]))
    n = 0
    for msg in buf:
        n += 1
        h = msg.headers
        name = h.get(":event-type")
        ok = h.get(":message-type") == "event" and name in events.members
        check(ok, f"stream event {n}: {name} is a ConverseStreamOutput member", str(h))
        if ok:
            payload = json.loads(msg.payload)
            payload.pop("p", None)  # Bedrock's padding field; botocore's parser ignores it.
            report = validator.validate(payload, events.members[name])
            check(not report.has_errors(), f"stream event {n}: {name} payload",
                  report.generate_report())
    check(n >= 5, "stream has its events", str(n))

    print(f"{passed} passed, {failed} failed (botocore {botocore.__version__})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main(sys.argv[1])
