#!/usr/bin/env bash
# whosthat benchmark: authenticated proxied GETs through whosthat, side by side with
# nginx as a plain reverse proxy and with the upstream called directly, plus
# password-grant token issuance. Everything runs on 127.0.0.1 with its own config
# and pid files under bench/out/; only what this script started is stopped.
#
#   bench/run.sh                 # defaults: 3 rounds of 10 s per contender, 50 connections
#   DURATION=5 ROUNDS=1 bench/run.sh
#
# Installs nginx and wrk from Debian when they are missing (needs root / apt-get).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="$ROOT/bench/out"
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
THREADS=$(nproc)
mkdir -p "$OUT"

need() {
    if ! command -v "$1" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$1" ]; then
        echo "installing $2 ..." >&2
        if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    fi
}
need wrk wrk
need nginx nginx-light
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
UP_PORT=$(free_port); NGX_PORT=$(free_port); GW_PORT=$(free_port)

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for f in "$OUT"/nginx-*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

echo "building whosthat (release) ..." >&2
cargo build --release --quiet
BIN="$ROOT/target/release/whosthat"

# --- upstream: nginx answering a small static body, one worker
cat > "$OUT/nginx-upstream.conf" <<EOF
worker_processes 1;
pid $OUT/nginx-upstream.pid;
error_log $OUT/nginx-upstream.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { return 200 "hello from upstream\n"; }
    }
}
EOF
"$NGINX" -c "$OUT/nginx-upstream.conf" -p "$OUT" -e "$OUT/nginx-upstream.err"

# --- nginx as the peer: plain reverse proxy, keep-alive pool, as many workers as whosthat has threads
cat > "$OUT/nginx-proxy.conf" <<EOF
worker_processes $THREADS;
pid $OUT/nginx-proxy.pid;
error_log $OUT/nginx-proxy.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream backend { server 127.0.0.1:$UP_PORT; keepalive 128; }
    server {
        listen 127.0.0.1:$NGX_PORT;
        location /api/ {
            proxy_pass http://backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
"$NGINX" -c "$OUT/nginx-proxy.conf" -p "$OUT" -e "$OUT/nginx-proxy.err"

# --- whosthat: a scoped, authenticated route to the same upstream
BENCH_PW="bench-password"
HASH=$(printf '%s' "$BENCH_PW" | "$BIN" hash-password)
cat > "$OUT/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$GW_PORT"
[oauth]
default_client = "bench-cli"
[[users]]
name = "bench"
password_hash = "$HASH"
scopes = ["read"]
[[clients]]
id = "bench-cli"
grants = ["password", "refresh_token"]
scopes = ["read"]
[[routes]]
prefix = "/api/"
upstream = "http://127.0.0.1:$UP_PORT"
strip_prefix = true
scopes = ["read"]
EOF
# Access logs off on both sides (nginx: access_log off).
RUST_LOG=warn "$BIN" -c "$OUT/gateway.toml" > "$OUT/whosthat.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do
    curl -s -o /dev/null "http://127.0.0.1:$GW_PORT/" && break
    sleep 0.1
done

TOKEN=$(curl -s -X POST "http://127.0.0.1:$GW_PORT/auth/access_token" \
    -d "grant_type=password&username=bench&password=$BENCH_PW" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
test "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$GW_PORT/api/")" = 200
test "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GW_PORT/api/")" = 401
test "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NGX_PORT/api/")" = 200

# wrk output -> "rps p50_ms p99_ms errors"
parse_wrk() {
    python3 -c '
import re, sys
t = sys.stdin.read()
def ms(v):
    n, u = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", t).group(1))
p99 = ms(re.search(r"\s99%\s+(\S+)", t).group(1))
m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
errs = (int(m.group(1)) if m else 0) + (sum(map(int, e.groups())) if e else 0)
print(f"{rps:.0f} {p50:.3f} {p99:.3f} {errs}")
'
}

run_wrk() { # name url [extra wrk args...]
    local name=$1 url=$2; shift 2
    wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$@" "$url" > "$OUT/wrk-$name.txt" 2>&1
    echo "$name $(parse_wrk < "$OUT/wrk-$name.txt")" >> "$OUT/results.txt"
}

: > "$OUT/results.txt"
echo "proxied GETs: $ROUNDS rounds x ${DURATION}s per contender, $CONNS connections, interleaved ..." >&2
for r in $(seq "$ROUNDS"); do
    run_wrk direct "http://127.0.0.1:$UP_PORT/"
    run_wrk nginx "http://127.0.0.1:$NGX_PORT/api/"
    run_wrk whosthat "http://127.0.0.1:$GW_PORT/api/" -H "Authorization: Bearer $TOKEN"
    echo "  round $r done" >&2
done

# --- token issuance: password grant, a fresh login per request
cat > "$OUT/login.lua" <<EOF
wrk.method = "POST"
wrk.body = "grant_type=password&username=bench&password=$BENCH_PW"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
EOF
wrk -t1 -c"$THREADS" -d"${DURATION}s" --latency -s "$OUT/login.lua" \
    "http://127.0.0.1:$GW_PORT/auth/access_token" > "$OUT/wrk-login.txt" 2>&1
LOGIN=$(parse_wrk < "$OUT/wrk-login.txt")

# The machine's argon2 bound: cores / one verification's time (hash-password does one
# argon2id computation with the same parameters; process start-up is included, so the
# bound is slightly underestimated).
VERIFY_MS=$(python3 - "$BIN" <<'EOF'
import subprocess, sys, time
runs = []
for _ in range(10):
    t = time.perf_counter()
    subprocess.run([sys.argv[1], "hash-password"], input=b"x", capture_output=True, check=True)
    runs.append(time.perf_counter() - t)
runs.sort()
print(f"{runs[len(runs)//2]*1000:.2f}")
EOF
)

python3 - "$OUT/results.txt" "$LOGIN" "$VERIFY_MS" "$THREADS" "$ROUNDS" "$DURATION" "$CONNS" <<'EOF'
import statistics, sys
path, login, verify_ms, cores, rounds, duration, conns = sys.argv[1:]
rows = {}
for line in open(path):
    name, rps, p50, p99, errs = line.split()
    rows.setdefault(name, []).append((float(rps), float(p50), float(p99), int(errs)))
med = lambda xs: statistics.median(xs)
print(f"\nwhosthat bench: {rounds} interleaved rounds x {duration}s, {conns} connections, wrk -t1, {cores} cores\n")
print(f"| {'contender':<28} | {'req/s':>9} | {'p50 ms':>7} | {'p99 ms':>7} | {'errors':>6} |")
print(f"|{'-'*30}|{'-'*11}|{'-'*9}|{'-'*9}|{'-'*8}|")
label = {"direct": "direct to upstream", "nginx": "nginx proxy_pass (no auth)", "whosthat": "whosthat (bearer + scope)"}
summary = {}
for name in ["direct", "nginx", "whosthat"]:
    r = rows[name]
    rps, p50, p99 = med([x[0] for x in r]), med([x[1] for x in r]), med([x[2] for x in r])
    summary[name] = (rps, p99)
    print(f"| {label[name]:<28} | {rps:>9.0f} | {p50:>7.3f} | {p99:>7.3f} | {sum(x[3] for x in r):>6} |")
lrps, lp50, lp99, lerr = login.split()
bound = int(cores) / (float(verify_ms) / 1000)
print(f"| {'password grant (login)':<28} | {float(lrps):>9.0f} | {float(lp50):>7.3f} | {float(lp99):>7.3f} | {lerr:>6} |")
print()
print(f"whosthat / nginx throughput: {summary['whosthat'][0] / summary['nginx'][0]:.2f}x; p99 ratio {summary['whosthat'][1] / summary['nginx'][1]:.2f}x")
print(f"argon2 bound: {cores} cores / {verify_ms} ms = {bound:.0f} logins/s; password grant reaches {float(lrps) / bound * 100:.0f}% of it")
EOF
