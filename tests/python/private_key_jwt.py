"""private_key_jwt with Authlib (RFC 7523 client authentication), against a
running whosthat: client_credentials at the token endpoint, a call through
the gateway, introspection and revocation, each authenticated by a fresh
signed assertion. Exits non-zero (with the reason) on any failure.

usage: private_key_jwt.py BASE_URL ISSUER CLIENT_ID PRIVATE_KEY_PEM ALG
"""

import os
import sys
import time

# The test gateway listens on plain HTTP on 127.0.0.1.
os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"

from authlib.integrations.requests_client import OAuth2Session  # noqa: E402
from authlib.oauth2.rfc7523 import PrivateKeyJWT  # noqa: E402
from joserfc.jwk import ECKey, RSAKey  # noqa: E402


class ShortLivedPrivateKeyJWT(PrivateKeyJWT):
    """Authlib's default assertion lives an hour; whosthat accepts at most
    five minutes. Fresh claims per request: Authlib stores the jti it draws
    in the claims dict it is given, so a shared dict would repeat it."""

    def sign(self, auth, token_endpoint):
        self.claims = {"exp": int(time.time()) + 120}
        return super().sign(auth, token_endpoint)


def main():
    base, issuer, client_id, key_path, alg = sys.argv[1:6]
    with open(key_path) as f:
        pem = f.read()
    # Authlib reads a PEM as RSA; an EC key is handed over as a key object.
    key = ECKey.import_key(pem) if alg == "ES256" else RSAKey.import_key(pem)
    # The audience is the token endpoint under the configured issuer.
    auth = ShortLivedPrivateKeyJWT(issuer + "/auth/access_token", alg=alg)
    client = OAuth2Session(
        client_id,
        key,
        token_endpoint_auth_method=auth,
        revocation_endpoint_auth_method=auth,
    )
    token = client.fetch_token(base + "/auth/access_token", grant_type="client_credentials")
    assert token["token_type"] == "Bearer", token
    assert "refresh_token" not in token, token

    r = client.get(base + "/api/hello")
    assert r.status_code == 200, (r.status_code, r.text)
    seen = r.json()
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers.get("x-auth-client") == client_id, headers

    r = client.introspect_token(base + "/auth/introspect", token["access_token"])
    assert r.status_code == 200, (r.status_code, r.text)
    info = r.json()
    assert info["active"] is True and info["client_id"] == client_id, info

    r = client.revoke_token(base + "/auth/revoke", token["access_token"])
    assert r.status_code == 200, (r.status_code, r.text)
    r = client.introspect_token(base + "/auth/introspect", token["access_token"])
    assert r.json() == {"active": False}, r.text

    # Authlib's defaults (an hour-long assertion) are refused, by name.
    plain = OAuth2Session(client_id, key, token_endpoint_auth_method=PrivateKeyJWT(issuer, alg=alg))
    try:
        plain.fetch_token(base + "/auth/access_token", grant_type="client_credentials")
        raise AssertionError("an assertion valid for an hour was accepted")
    except Exception as e:  # authlib raises OAuthError
        assert "invalid_client" in str(e), e
    print("ok")


if __name__ == "__main__":
    main()
