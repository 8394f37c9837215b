"""Check detour's Vertex token request with google-auth, Google's own auth library.

Input: a JSON file {"form": ..., "assertion": ..., "key_file": ...}:
  - form: the token request body detour sent (JWT bearer grant, RFC 7523);
  - assertion: the JWT in it;
  - key_file: the service-account JSON key detour signed with.
The assertion must verify with google.auth.jwt.decode against the key's public half, with the
claims Google's own service_account.Credentials put in theirs.
Prints one line per check and 'N passed, N failed'; exits 1 if any failed.
"""
import json
import sys
import time
from urllib.parse import parse_qs

import google.auth
from cryptography.hazmat.primitives import serialization
from google.auth import jwt


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

    info = json.loads(data["key_file"])
    form = parse_qs(data["form"])
    check(form.get("grant_type") == ["urn:ietf:params:oauth:grant-type:jwt-bearer"],
          "grant_type is the JWT bearer grant", str(form.get("grant_type")))
    check(form.get("assertion") == [data["assertion"]], "the form carries the assertion")

    private = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        claims = jwt.decode(data["assertion"], certs=public_pem, audience=info["token_uri"])
        check(True, "RS256 signature verifies (google.auth.jwt.decode)")
    except Exception as e:  # noqa: BLE001 - any failure is the finding
        check(False, "RS256 signature verifies (google.auth.jwt.decode)", repr(e))
        claims = {}
    header = jwt.decode_header(data["assertion"])
    check(header.get("alg") == "RS256", "alg RS256", str(header))
    check(header.get("kid") == info["private_key_id"], "kid is the key id", str(header))
    check(claims.get("iss") == info["client_email"], "iss is the service account", str(claims))
    check(claims.get("scope") == "https://www.googleapis.com/auth/cloud-platform",
          "scope cloud-platform", str(claims))
    now = time.time()
    check(abs(claims.get("iat", 0) - now) < 600, "iat is now", str(claims))
    check(claims.get("exp", 0) - claims.get("iat", 0) == 3600, "lifetime one hour", str(claims))

    print(f"{passed} passed, {failed} failed (google-auth {google.auth.__version__})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main(sys.argv[1])
