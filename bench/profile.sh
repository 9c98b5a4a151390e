#!/usr/bin/env bash
# Instruction-level profile of the proxied-request path with callgrind: whosthat
# (release, with line tables) runs under valgrind in front of an nginx upstream while
# wrk sends authenticated GETs for a fixed time; prints the functions that cost the
# most instructions (inclusive and exclusive). Counts instructions, not time, so it
# is repeatable on a busy machine. valgrind hides SHA-NI from the CPU, so the token's
# SHA-256 shows at its software cost here (about 3,500 instructions), far above what it
# costs on a CPU with SHA-NI.
#
#   bench/profile.sh            # 20 s of load
#   SECONDS_OF_LOAD=10 bench/profile.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="$ROOT/bench/out/profile"
LOAD=${SECONDS_OF_LOAD:-20}
mkdir -p "$OUT"
# Dumps of an earlier run would be read as this one's.
rm -f "$OUT"/callgrind.out*

. "$ROOT/bench/lib.sh"
need valgrind valgrind
need wrk wrk
need nginx nginx-light
UP_PORT=$(free_port); GW_PORT=$(free_port)

VG_PID=""
cleanup() {
    [ -n "$VG_PID" ] && kill "$VG_PID" 2>/dev/null || true
    [ -f "$OUT/nginx-upstream.pid" ] && kill "$(cat "$OUT/nginx-upstream.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

TARGET=${CARGO_TARGET_DIR:-$ROOT/target/profiling}
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_TARGET_DIR="$TARGET" cargo build --release --quiet --bin whosthat
BIN="$TARGET/release/whosthat"

start_upstream "$UP_PORT"

BENCH_PW="bench-password"
HASH=$(printf '%s' "$BENCH_PW" | "$BIN" hash-password)
cat > "$OUT/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$GW_PORT"
$(gateway_common "$HASH" "$UP_PORT")
EOF
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
    --dump-instr=no --collect-atstart=yes "$BIN" -c "$OUT/gateway.toml" > "$OUT/valgrind.log" 2>&1 &
VG_PID=$!
WAIT_TRIES=600 wait_answering "http://127.0.0.1:$GW_PORT"
TOKEN=$(bench_token "http://127.0.0.1:$GW_PORT")
# Reset the counters so start-up and the login are not in the profile.
callgrind_control -z "$VG_PID" >/dev/null 2>&1 || true
wrk -t1 -c8 -d"${LOAD}s" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$GW_PORT/api/" | tee "$OUT/wrk.txt"
callgrind_control -d "$VG_PID" >/dev/null 2>&1 || true
sleep 1
kill -INT "$VG_PID"; wait "$VG_PID" 2>/dev/null || true; VG_PID=""
REQS=$(grep -Eo '^ +[0-9]+ requests' "$OUT/wrk.txt" | grep -Eo '[0-9]+')
echo "requests profiled: $REQS"
# The dump taken right after the load (callgrind_control -d), not the one written at
# exit, which holds only the shutdown: the largest file.
PROFILE=$(ls -S "$OUT"/callgrind.out* | head -1)
# Into files first: a `head` or `grep -m1` on the pipe would stop callgrind_annotate
# with SIGPIPE, which pipefail turns into the script's failure.
callgrind_annotate --inclusive=yes --threshold=100 "$PROFILE" > "$OUT/inclusive.txt" 2>/dev/null || true
callgrind_annotate --threshold=100 "$PROFILE" > "$OUT/exclusive.txt" 2>/dev/null || true
TOTAL=$(sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' "$OUT/exclusive.txt" | tr -d ,)
echo "instructions per request: $((${TOTAL:-0} / (REQS > 0 ? REQS : 1)))"
echo "--- inclusive (top 40; whole list in $OUT/inclusive.txt)"
sed -n '/file:function/,$p' "$OUT/inclusive.txt" | sed -n 3,42p | cut -c1-200
echo "--- exclusive (top 40; whole list in $OUT/exclusive.txt)"
sed -n '/file:function/,$p' "$OUT/exclusive.txt" | sed -n 3,42p | cut -c1-200
