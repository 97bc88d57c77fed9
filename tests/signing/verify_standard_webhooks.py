"""An independent Standard Webhooks verifier, written from the spec's text.

The signed content is "{msg_id}.{timestamp}.{payload}". `webhook-signature` is a
space-delimited list of "<version>,<base64 signature>": `v1` is HMAC-SHA256 under the
`whsec_` secret (base64 after the prefix), `v1a` is ed25519 under the key pair whose
public key is `whpk_` (base64 after the prefix). A consumer tries each signature of
the scheme its key is for until one matches.

Reads one JSON object per line on stdin: {"id", "timestamp", "body_b64",
"signature", "key"}; writes "ok" or "no" per line.
"""

import base64
import hashlib
import hmac
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def verifies(msg_id, timestamp, body, header, key):
    signed = f"{msg_id}.{timestamp}.".encode() + body
    for entry in header.split(" "):
        version, _, encoded = entry.partition(",")
        try:
            signature = base64.b64decode(encoded, validate=True)
        except ValueError:
            continue
        if key.startswith("whsec_") and version == "v1":
            secret = base64.b64decode(key[len("whsec_"):])
            expected = hmac.new(secret, signed, hashlib.sha256).digest()
            if hmac.compare_digest(expected, signature):
                return True
        elif key.startswith("whpk_") and version == "v1a":
            public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key[len("whpk_"):]))
            try:
                public.verify(signature, signed)
                return True
            except InvalidSignature:
                continue
    return False


for line in sys.stdin:
    case = json.loads(line)
    ok = verifies(
        case["id"],
        case["timestamp"],
        base64.b64decode(case["body_b64"]),
        case["signature"],
        case["key"],
    )
    print("ok" if ok else "no", flush=True)
