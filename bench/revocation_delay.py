#!/usr/bin/env python3
"""How long a revocation made on one whosthat instance takes to reach the others.

For each sample: a token is issued on instance A (the samples rotate over the
instances), looked up once on every instance (so each holds it in its cache,
where only the revocation channel can take it out), revoked on A; then the
other instances are asked in turn, over keep-alive connections, until each
answers 401. The delay is from A's answer to the revocation to the first 401
of each other instance. Prints one line:

    revocation_delay samples=N p50_ms=.. p99_ms=.. max_ms=..

Only the standard library; 127.0.0.1 only.
"""

import argparse
import http.client
import json
import statistics
import sys
import time
import urllib.parse


def conn(port):
    return http.client.HTTPConnection("127.0.0.1", port, timeout=30)


def call(c, method, path, body=None, headers=None):
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    return r.status, data


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ports", required=True, help="comma-separated instance ports")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--client", required=True)
    ap.add_argument("--path", default="/api/")
    a = ap.parse_args()
    ports = [int(p) for p in a.ports.split(",")]
    conns = {p: conn(p) for p in ports}
    login = urllib.parse.urlencode(
        {"grant_type": "password", "username": a.user, "password": a.password, "client_id": a.client}
    )
    delays = []
    for i in range(a.count):
        origin = ports[i % len(ports)]
        status, data = call(conns[origin], "POST", "/auth/access_token", login, FORM)
        if status != 200:
            sys.exit(f"login on {origin} answered {status}: {data[:200]!r}")
        token = json.loads(data)["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        for p in ports:
            status, _ = call(conns[p], "GET", a.path, headers=auth)
            if status != 200:
                sys.exit(f"a fresh token answered {status} on {p}")
        body = urllib.parse.urlencode({"token": token, "client_id": a.client})
        status, data = call(conns[origin], "POST", "/auth/revoke", body, FORM)
        acked = time.perf_counter()
        if status != 200:
            sys.exit(f"revocation on {origin} answered {status}: {data[:200]!r}")
        waiting = [p for p in ports if p != origin]
        deadline = acked + 30
        while waiting:
            for p in list(waiting):
                status, _ = call(conns[p], "GET", a.path, headers=auth)
                if status == 401:
                    delays.append((time.perf_counter() - acked) * 1000)
                    waiting.remove(p)
                elif status != 200:
                    sys.exit(f"instance {p} answered {status} while the revocation travelled")
            if time.perf_counter() > deadline:
                sys.exit(f"instances {waiting} still accept a token revoked 30 s ago")
    delays.sort()
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    print(
        f"revocation_delay samples={len(delays)} p50_ms={statistics.median(delays):.3f} "
        f"p99_ms={p99:.3f} max_ms={delays[-1]:.3f}"
    )


if __name__ == "__main__":
    main()
