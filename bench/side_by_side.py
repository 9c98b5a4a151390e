#!/usr/bin/env python3
"""The side-by-side tables of bench/run.sh: whosthat against nginx with one worker.

    python3 bench/side_by_side.py OUT_DIR

Reads what run.sh and bench/side_by_side.sh wrote into OUT_DIR: results.txt and
side.txt (one line per load run: name rps p50_ms p99_ms errors cpu_us_per_request, and
for wrk's runs user_us kernel_us: the same CPU split),
handshakes.txt (name full_handshakes resumed client_successes cpu_us_per_handshake)
and idle.txt (name open failed seconds rss_before_kib rss_after_kib established).
Every ratio is whosthat / nginx, per round (the two ran back to back), given as the
median with its range across rounds; a goal says which side of 1 is good.
"""

import os
import statistics
import sys

out = sys.argv[1]


def read(name):
    path = os.path.join(out, name)
    rows = {}
    if not os.path.exists(path):
        return rows
    for line in open(path):
        f = line.split()
        if f:
            rows.setdefault(f[0], []).append(f[1:])
    return rows


def num(v):
    try:
        return float(v)
    except ValueError:
        return float("nan")


load = read("results.txt")
load.update(read("side.txt"))
shakes = read("handshakes.txt")
idle = {k: v[-1] for k, v in read("idle.txt").items()}

# Column of each figure in a load line (after the name); wrk's lines also split the
# CPU into user space and kernel.
RPS, P99, CPU, USER, SYS = 0, 2, 4, 5, 6


def series(rows, name, col):
    return [num(r[col]) for r in rows.get(name, []) if len(r) > col]


def fmt(v, unit):
    if v != v:  # NaN
        return "-"
    if unit == "req/s":
        return f"{v:,.0f}"
    if unit == "ms":
        return f"{v:.2f} ms"
    if unit == "us":
        return f"{v:.1f} µs"
    return f"{v / 1024:.1f} KiB"


def ratio_text(w, n):
    """Per-round ratios: 'median (min-max)', or one number for one round."""
    pairs = [a / b for a, b in zip(w, n) if b and a == a and b == b]
    if not pairs:
        return "-", float("nan")
    m = statistics.median(pairs)
    if len(pairs) == 1:
        return f"{m:.2f}", m
    return f"{m:.2f} ({min(pairs):.2f}-{max(pairs):.2f})", m


def verdict(r, goal):
    if r != r:
        return "-"
    ok = r >= 1 if goal == ">=" else r <= 1
    return "met" if ok else "NOT met"


def row(label, wname, nname, rows, col, unit, goal):
    w, n = series(rows, wname, col), series(rows, nname, col)
    med = lambda s: statistics.median(s) if s else float("nan")
    text, r = ratio_text(w, n)
    print(f"| {label:<38} | {fmt(med(w), unit):>11} | {fmt(med(n), unit):>11} | {text:>17} | {goal} 1: {verdict(r, goal):<7} |")


def idle_per_conn(name):
    if name not in idle:
        return float("nan"), ""
    opened, failed, _, before, after, est = idle[name]
    opened = int(opened)
    per = (int(after) - int(before)) * 1024 / opened if opened else float("nan")
    note = f"{opened} open, {est} established" + (f", {failed} failed" if failed != "0" else "")
    return per, note


def idle_row(label, wname, nname, limit_kib):
    w, wnote = idle_per_conn(wname)
    n, nnote = idle_per_conn(nname)
    r = w / n if n == n and n else float("nan")
    ok = "met" if w == w and w <= limit_kib * 1024 else ("-" if w != w else "NOT met")
    rt = f"{r:.1f}" if r == r else "-"
    print(f"| {label:<38} | {fmt(w, 'B'):>11} | {fmt(n, 'B'):>11} | {rt:>17} | <= {limit_kib} KiB: {ok:<4} |")
    return wnote, nnote


header = f"| {'':<38} | {'whosthat':>11} | {'nginx 1w':>11} | {'ratio (range)':>17} | goal         |"
rule = f"|{'-' * 40}|{'-' * 13}|{'-' * 13}|{'-' * 19}|{'-' * 14}|"
rounds = len(load.get("nginx_1w", []))
print(f"\nside by side with nginx (1 worker), {rounds} interleaved rounds; whosthat with 1 worker unless the row says 'N w' (a worker per core); ratio = whosthat / nginx per round, median (min-max)\n")
print("HTTP/1.1 cleartext (wrk -t1), front server's CPU per request from /proc")
print(header)
print(rule)
row("small GET, req/s", "whosthat_1w", "nginx_1w", load, RPS, "req/s", ">=")
row("small GET, p99", "whosthat_1w", "nginx_1w", load, P99, "ms", "<=")
row("small GET, front CPU per request", "whosthat_1w", "nginx_1w", load, CPU, "us", "<=")
row("  of which user space", "whosthat_1w", "nginx_1w", load, USER, "us", "<=")
row("  of which kernel", "whosthat_1w", "nginx_1w", load, SYS, "us", "<=")
row("16 KiB GET, req/s", "whosthat_1w_16k", "nginx_1w_16k", load, RPS, "req/s", ">=")
row("16 KiB GET, p99", "whosthat_1w_16k", "nginx_1w_16k", load, P99, "ms", "<=")
row("16 KiB GET, front CPU per request", "whosthat_1w_16k", "nginx_1w_16k", load, CPU, "us", "<=")
# The gateway of the main table (a worker per core) against the same nginx runs.
row("small GET, req/s (whosthat: N w)", "whosthat", "nginx_1w", load, RPS, "req/s", ">=")
row("small GET, p99 (whosthat: N w)", "whosthat", "nginx_1w", load, P99, "ms", "<=")
row("small GET, CPU/request (whosthat: N w)", "whosthat", "nginx_1w", load, CPU, "us", "<=")
# nginx's idle keep-alive figure is from the proxy with THREADS workers: the same cost per connection.
notes = [idle_row("idle keep-alive connection (nginx: N w)", "whosthat", "nginx", 18)]
print()
print("TLS 1.3 (ECDSA P-256, one certificate) and HTTP/2 (h2load)")
print(header)
print(rule)
row("TLS keep-alive, req/s", "whosthat_tls", "nginx_1w_tls", load, RPS, "req/s", ">=")
row("TLS keep-alive, p99", "whosthat_tls", "nginx_1w_tls", load, P99, "ms", "<=")
row("TLS keep-alive, front CPU per request", "whosthat_tls", "nginx_1w_tls", load, CPU, "us", "<=")
row("  of which user space", "whosthat_tls", "nginx_1w_tls", load, USER, "us", "<=")
row("  of which kernel", "whosthat_tls", "nginx_1w_tls", load, SYS, "us", "<=")
# handshakes.txt: full resumed client cpu
row("server CPU per full TLS handshake", "whosthat_tls_handshake", "nginx_1w_handshake", shakes, 3, "us", "<=")
row("HTTP/2 over TLS, req/s", "whosthat_tls_h2", "nginx_1w_tls_h2", load, RPS, "req/s", ">=")
row("HTTP/2 over TLS, p99", "whosthat_tls_h2", "nginx_1w_tls_h2", load, P99, "ms", "<=")
row("HTTP/2 cleartext, req/s", "whosthat_h2c", "nginx_1w_h2c", load, RPS, "req/s", ">=")
row("HTTP/2 cleartext, p99", "whosthat_h2c", "nginx_1w_h2c", load, P99, "ms", "<=")
row("HTTP/2 cleartext, req/s (N w)", "whosthat_h2c_nw", "nginx_1w_h2c", load, RPS, "req/s", ">=")
row("HTTP/2 cleartext, p99 (N w)", "whosthat_h2c_nw", "nginx_1w_h2c", load, P99, "ms", "<=")
notes.append(idle_row("idle HTTP/2 cleartext connection", "whosthat_h2c", "nginx_1w_h2c", 16))
notes.append(idle_row("idle HTTP/2 TLS connection", "whosthat_tls_h2", "nginx_1w_tls_h2", 16))
notes.append(idle_row("idle HTTP/1.1 TLS connection", "whosthat_tls_h1", "nginx_1w_tls_h1", 18))
print()
for name in ["whosthat_tls_handshake", "nginx_1w_handshake"]:
    runs = shakes.get(name, [])
    if runs:
        full = [int(r[0]) for r in runs]
        resumed = sum(int(r[1]) for r in runs)
        client = [int(r[2]) for r in runs]
        print(f"{name}: full handshakes counted by the server per round {full} (client: {client} succeeded), "
              f"resumed {resumed}" + ("" if name.startswith("nginx") else " (rustls does not say; the same client resumed none at nginx)"))
for label, (w, n) in zip(["idle HTTP/1.1", "idle h2c", "idle h2 TLS", "idle HTTP/1.1 TLS"], notes):
    if w or n:
        print(f"{label}: whosthat {w or '-'}; nginx {n or '-'}")
errors = {k: sum(int(r[3]) for r in v if len(r) > 3) for k, v in load.items()}
bad = {k: v for k, v in errors.items() if v}
if bad:
    print("errors (non-2xx or socket errors) in the load runs: " + ", ".join(f"{k} {v}" for k, v in sorted(bad.items())))
