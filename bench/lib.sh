# Shared by bench/run.sh, bench/side_by_side.sh, bench/fleet.sh and bench/profile.sh
# (sourced, not run). Expects OUT (the output directory) to be set by the caller.

need() { # command package: install the Debian package when the command is missing
    if ! command -v "$1" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$1" ]; then
        echo "installing $2 ..." >&2
        if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The upstream: an nginx answering a short static body (16 KiB of "x" at /16k), one
# worker, on port $1.
# Its pid file is $OUT/nginx-upstream.pid (the caller's cleanup kills it).
start_upstream() {
    local nginx
    nginx=$(command -v nginx || echo /usr/sbin/nginx)
    mkdir -p "$OUT/www"
    head -c 16384 /dev/zero | tr '\0' x > "$OUT/www/16k"
    cat > "$OUT/nginx-upstream.conf" <<CONF
worker_processes 1;
pid $OUT/nginx-upstream.pid;
error_log $OUT/nginx-upstream.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$1;
        location / { return 200 "hello from upstream\n"; }
        location = /16k { root $OUT/www; }
    }
}
CONF
    "$nginx" -c "$OUT/nginx-upstream.conf" -p "$OUT" -e "$OUT/nginx-upstream.err" 9>&-
}

# What every benchmark gateway's config shares, printed after the caller's [server]
# section: the bench user (password hash $1) and client, and the /api/ route to the
# upstream on port $2. Callers add sections and routes after it.
gateway_common() { # hash upstream-port
    cat <<CONF
[oauth]
default_client = "bench-cli"
[[users]]
name = "bench"
password_hash = "$1"
scopes = ["read"]
[[clients]]
id = "bench-cli"
grants = ["password", "refresh_token"]
scopes = ["read"]
[[routes]]
prefix = "/api/"
upstream = "http://127.0.0.1:$2"
strip_prefix = true
scopes = ["read"]
CONF
}

# Until a GET of base URL $1 gets any answer (curl options after it), for up to 5 s
# (WAIT_TRIES tenths of a second: a gateway under valgrind takes longer).
wait_answering() { # base-url [curl options...]
    local base=$1
    shift
    for _ in $(seq "${WAIT_TRIES:-50}"); do
        curl -s "$@" -o /dev/null "$base/" && return 0
        sleep 0.1
    done
    echo "nothing answers at $base" >&2
    return 1
}

# An access token for the bench user (password $BENCH_PW) from the gateway at base
# URL $1 (curl options after it).
bench_token() { # base-url [curl options...]
    local base=$1
    shift
    curl -s "$@" -X POST "$base/auth/access_token" \
        -d "grant_type=password&username=bench&password=$BENCH_PW" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}

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
