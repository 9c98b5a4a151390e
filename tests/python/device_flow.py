"""The device authorization grant (RFC 8628) with Authlib as the token client,
against a running whosthat: the device authorization request, the
verification page walked with a cookie-keeping requests session (as a user's
browser would: code, sign-in, approval), and the device polling with Authlib,
honouring authorization_pending and slow_down, until it gets tokens and calls
the API. Exits non-zero (with the reason) on any failure.

usage: device_flow.py BASE_URL CLIENT_ID USER PASSWORD
"""

import os
import re
import sys
import time

os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"

import requests  # noqa: E402
from authlib.integrations.requests_client import OAuth2Session  # noqa: E402
from authlib.integrations.base_client.errors import OAuthError  # noqa: E402

GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def csrf(html):
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html
    return m.group(1)


def browser_approves(base, user_code, user, password):
    page_url = base + "/auth/device"
    s = requests.Session()
    page = s.get(page_url + "?user_code=" + user_code)
    assert page.status_code == 200, page.text
    assert 'value="%s"' % user_code in page.text, page.text
    steps = [
        {"action": "code", "user_code": user_code},
        {"action": "login", "username": user, "password": password},
        {"action": "approve"},
    ]
    for form in steps:
        form["csrf"] = csrf(page.text)
        page = s.post(page_url, data=form)
        assert page.status_code == 200, (page.status_code, page.text)
    assert "Your device is connected" in page.text, page.text


def main():
    base, client_id, user, password = sys.argv[1:5]
    r = requests.post(base + "/auth/device_authorization", data={"client_id": client_id, "scope": "read"})
    assert r.status_code == 200, r.text
    start = r.json()
    for k in ["device_code", "user_code", "verification_uri", "verification_uri_complete", "expires_in", "interval"]:
        assert k in start, start

    device = OAuth2Session(client_id)
    interval = start["interval"]
    approved = False
    token = None
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            token = device.fetch_token(
                base + "/auth/access_token",
                grant_type=GRANT,
                device_code=start["device_code"],
            )
            break
        except OAuthError as e:
            if e.error == "slow_down":
                interval += 5
            elif e.error != "authorization_pending":
                raise
        if not approved:
            browser_approves(base, start["user_code"], user, password)
            approved = True
        time.sleep(interval + 0.2)
    assert token is not None, "no token before the deadline"
    assert token["token_type"] == "Bearer", token
    r = device.get(base + "/api/hello")
    assert r.status_code == 200, (r.status_code, r.text)
    headers = {k.lower(): v for k, v in r.json()["headers"]}
    assert headers.get("x-auth-user") == user, headers
    print("ok")


if __name__ == "__main__":
    main()
