#!/usr/bin/env bash
# whosthat as a fleet: three instances sharing one Redis (started here, on a free
# port, nothing kept on disk), side by side with three instances on the memory
# store. Each instance is driven alike (one wrk per instance, all at once):
#
#   - proxied GETs per instance, Redis store vs memory store (the goal: >= 95%;
#     a cache hit must not touch Redis, which the Redis commands counted per
#     proxied request show);
#   - tokens issued per second (password grant, a user hashed at argon2's
#     minimum cost so that the store, not argon2, is what is measured; one
#     connection per instance, under the brute-force limiter's 4 checks at
#     once per address);
#   - revocation delay from one instance to the others (p50/p99, by
#     bench/revocation_delay.py).
#
#   bench/fleet.sh                        # 3 interleaved rounds of 10 s, 32 connections per instance
#   DURATION=2 ROUNDS=1 PROBES=20 bench/fleet.sh   # a smoke run
#
# Knobs (env): DURATION (s per load run), ROUNDS, CONNS (wrk connections per
# instance), WORKERS (server.workers per instance; default: cores / 3, at least 1),
# PROBES (revocations timed), WHOSTHAT_BIN (a built binary: skips the release
# build), BENCH_OUT (default bench/out-fleet: configs, pid files, raw outputs).
# Everything runs on 127.0.0.1; only what this script started is stopped.
#
# Installs wrk, nginx, redis-server and python3-argon2 from Debian when missing.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${BENCH_OUT:-$ROOT/bench/out-fleet}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-32}
PROBES=${PROBES:-200}
CORES=$(nproc)
WORKERS=${WORKERS:-$(( CORES / 3 > 0 ? CORES / 3 : 1 ))}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

exec 9> "$OUT/.lock"
if ! flock -n 9; then
    echo "bench/fleet.sh: another run is using $OUT; wait for it, or set BENCH_OUT" >&2
    exit 1
fi

# need, free_port, start_upstream, parse_wrk
. "$ROOT/bench/lib.sh"
need wrk wrk
need nginx nginx-light
need redis-server redis-server
# A python3 with argon2 (Debian's package lands in the system python3, which
# may not be the python3 first on PATH).
argon2_python() {
    local py
    for py in python3 /usr/bin/python3; do
        "$py" -c 'import argon2' 2>/dev/null && { echo "$py"; return 0; }
    done
    return 1
}
if ! PY_ARGON2=$(argon2_python); then
    echo "installing python3-argon2 ..." >&2
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-argon2 >/dev/null
    PY_ARGON2=$(argon2_python) || { echo "python3-argon2 is installed but no python3 imports it" >&2; exit 1; }
fi

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$OUT/nginx-upstream.pid" ] && kill "$(cat "$OUT/nginx-upstream.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

if [ -n "${WHOSTHAT_BIN:-}" ]; then
    BIN=$WHOSTHAT_BIN
else
    echo "building whosthat (release) ..." >&2
    cargo build --release --quiet
    BIN="$ROOT/target/release/whosthat"
fi

# --- upstream: nginx answering a small static body
UP_PORT=$(free_port)
start_upstream "$UP_PORT"

# --- one Redis of our own
REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --dir "$OUT" > "$OUT/redis.log" 2>&1 9>&- &
PIDS+=("$!")
for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
done
redis_commands() {
    redis-cli -p "$REDIS_PORT" info stats | awk -F: '/^total_commands_processed:/ {print $2+0}'
}

# --- six instances: three on Redis, three on memory stores
BENCH_PW="bench-password"
HASH=$("$PY_ARGON2" -c 'import argon2,sys; print(argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(sys.argv[1]))' "$BENCH_PW")
# Not in a $(...) subshell: the instance's pid must reach PIDS, for the cleanup.
start_instance() { # name store-lines; sets PORT
    local name=$1 store=$2 port admin
    port=$(free_port); admin=$(free_port)
    cat > "$OUT/$name.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
workers = $WORKERS
$(gateway_common "$HASH" "$UP_PORT")
[store]
$store
EOF
    RUST_LOG=warn "$BIN" -c "$OUT/$name.toml" > "$OUT/$name.log" 2>&1 9>&- &
    PIDS+=("$!")
    for _ in $(seq 300); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/readyz")" = 200 ] && break
        sleep 0.1
    done
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/readyz")" = 200 ] ||
        { echo "$name did not become ready; see $OUT/$name.log" >&2; exit 1; }
    PORT=$port
}
REDIS_STORE="backend = \"redis\"
redis_url = \"redis://127.0.0.1:$REDIS_PORT/0\""
R_PORTS=(); M_PORTS=()
for i in 0 1 2; do
    start_instance "redis-$i" "$REDIS_STORE"; R_PORTS+=("$PORT")
    start_instance "memory-$i" 'backend = "memory"'; M_PORTS+=("$PORT")
done

# One token for the whole Redis fleet; one per memory instance (they share nothing).
R_TOKEN=$(bench_token "http://127.0.0.1:${R_PORTS[0]}")
M_TOKENS=()
for p in "${M_PORTS[@]}"; do M_TOKENS+=("$(bench_token "http://127.0.0.1:$p")"); done
for p in "${R_PORTS[@]}"; do
    test "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $R_TOKEN" "http://127.0.0.1:$p/api/")" = 200
done


drive() { # kind name: the three instances of `kind` (redis|memory) at once, one wrk each
    local kind=$1 name=$2 i pids=() port token
    for i in 0 1 2; do
        if [ "$kind" = redis ]; then port=${R_PORTS[$i]}; token=$R_TOKEN; else port=${M_PORTS[$i]}; token=${M_TOKENS[$i]}; fi
        wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Authorization: Bearer $token" \
            "http://127.0.0.1:$port/api/" > "$OUT/wrk-$name-$i.txt" 2>&1 9>&- &
        pids+=("$!")
    done
    for p in "${pids[@]}"; do wait "$p"; done
    for i in 0 1 2; do echo "$name $i $(parse_wrk < "$OUT/wrk-$name-$i.txt")" >> "$OUT/results.txt"; done
}

: > "$OUT/results.txt"
: > "$OUT/redis-commands.txt"
echo "proxied GETs: $ROUNDS rounds x ${DURATION}s, 3 instances x $CONNS connections, memory and Redis stores interleaved ..." >&2
for r in $(seq "$ROUNDS"); do
    # The order swaps every round, so neither store always runs on the warmer side.
    for kind in $([ $((r % 2)) = 1 ] && echo "memory redis" || echo "redis memory"); do
        before=$(redis_commands)
        drive "$kind" "proxy-$kind"
        after=$(redis_commands)
        [ "$kind" = redis ] && echo "$((after - before))" >> "$OUT/redis-commands.txt"
    done
    echo "  round $r done" >&2
done

cat > "$OUT/login.lua" <<EOF
wrk.method = "POST"
wrk.body = "grant_type=password&username=bench&password=$BENCH_PW"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
EOF
issue() { # kind
    local kind=$1 i pids=() port
    for i in 0 1 2; do
        if [ "$kind" = redis ]; then port=${R_PORTS[$i]}; else port=${M_PORTS[$i]}; fi
        wrk -t1 -c1 -d"${DURATION}s" --latency -s "$OUT/login.lua" \
            "http://127.0.0.1:$port/auth/access_token" > "$OUT/wrk-issue-$kind-$i.txt" 2>&1 9>&- &
        pids+=("$!")
    done
    for p in "${pids[@]}"; do wait "$p"; done
    for i in 0 1 2; do echo "issue-$kind $i $(parse_wrk < "$OUT/wrk-issue-$kind-$i.txt")" >> "$OUT/results.txt"; done
}
# One connection per instance: every login comes from 127.0.0.1, and the
# brute-force limiter lets one address run 4 password checks at once, counted
# fleet-wide with Redis (per instance with memory stores). More connections
# would measure its refusals (429), not issuance.
echo "token issuance: ${DURATION}s per store, 3 instances x 1 connection ..." >&2
issue redis
issue memory

echo "revocation delay: $PROBES revocations across the Redis fleet ..." >&2
python3 "$ROOT/bench/revocation_delay.py" --ports "$(IFS=,; echo "${R_PORTS[*]}")" \
    --count "$PROBES" --user bench --password "$BENCH_PW" --client bench-cli > "$OUT/revocation.txt"

python3 - "$OUT" "$ROUNDS" "$DURATION" "$CONNS" "$CORES" "$WORKERS" <<'EOF'
import os, re, statistics, sys
out, rounds, duration, conns, cores, workers = sys.argv[1:]
rows = {}
for line in open(os.path.join(out, "results.txt")):
    name, inst, rps, p50, p99, errs = line.split()
    rows.setdefault(name, []).append((int(inst), float(rps), float(p50), float(p99), int(errs)))
med = statistics.median
print(f"\nwhosthat fleet bench: 3 instances x {workers} workers, {rounds} interleaved rounds x {duration}s, "
      f"{conns} connections per instance, {cores} cores\n")
print(f"| {'what':<34} | {'req/s per instance':>18} | {'fleet req/s':>11} | {'p99 ms':>7} | {'errors':>6} |")
print(f"|{'-'*36}|{'-'*20}|{'-'*13}|{'-'*9}|{'-'*8}|")
def line(label, r, per_round):
    per = med([x[1] for x in r])
    fleet = per * 3
    p99 = med([x[3] for x in r])
    print(f"| {label:<34} | {per:>18.0f} | {fleet:>11.0f} | {p99:>7.3f} | {sum(x[4] for x in r):>6} |")
    return per
m = line("proxied GET, memory store", rows["proxy-memory"], True)
r = line("proxied GET, Redis store", rows["proxy-redis"], True)
im = line("tokens issued, memory store", rows["issue-memory"], False)
ir = line("tokens issued, Redis store", rows["issue-redis"], False)
ratio = r / m
print(f"\nRedis store / memory store, proxied req/s per instance: {ratio:.3f} "
      f"(goal >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'})")
cmds = [int(x) for x in open(os.path.join(out, "redis-commands.txt")).read().split()]
served = sum(x[1] for x in rows["proxy-redis"]) * float(duration)
print(f"Redis commands per proxied request (cache hits): {sum(cmds) / served:.5f} "
      f"({sum(cmds)} commands, the instances' background PINGs included, over {served:.0f} requests)")
print(f"tokens issued through Redis: {ir * 3:.0f}/s for the fleet ({ir / im:.2f}x the memory store's)")
print(open(os.path.join(out, "revocation.txt")).read().strip())
EOF
