#!/usr/bin/env python3
"""DPoP proofs (RFC 9449) for bench/run.sh, made ahead of a wrk run.

    dpop_proofs.py KEY.pem METHOD URL [TOKEN] [COUNT]

KEY.pem is a P-256 private key (made when missing). Prints COUNT proofs (default
1), one per line, each with its own jti and iat = now, for METHOD and URL; with
TOKEN (not "-"), each carries ath, the hash of that access token. The gateway
accepts a proof for 60 s after its iat and each jti once, so a run must use them
within the minute, and needs at least as many as it sends requests.
"""
import base64
import hashlib
import json
import os
import sys
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_key(path):
    if not os.path.exists(path):
        key = ec.generate_private_key(ec.SECP256R1())
        with open(path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        return key
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), None)


def main():
    path, method, url = sys.argv[1:4]
    token = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] != "-" else None
    count = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    key = load_key(path)
    nums = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256",
           "x": b64(nums.x.to_bytes(32, "big")), "y": b64(nums.y.to_bytes(32, "big"))}
    header = b64(json.dumps({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk},
                            separators=(",", ":")).encode())
    ath = b64(hashlib.sha256(token.encode()).digest()) if token else None
    iat = int(time.time())
    out = sys.stdout
    algo = ec.ECDSA(hashes.SHA256())
    for _ in range(count):
        claims = {"jti": b64(os.urandom(16)), "htm": method, "htu": url, "iat": iat}
        if ath:
            claims["ath"] = ath
        signing_input = header + "." + b64(json.dumps(claims, separators=(",", ":")).encode())
        r, s = decode_dss_signature(key.sign(signing_input.encode(), algo))
        out.write(signing_input + "." + b64(r.to_bytes(32, "big") + s.to_bytes(32, "big")) + "\n")


if __name__ == "__main__":
    main()
