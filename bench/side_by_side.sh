# Sourced by bench/run.sh (not run on its own): whosthat and nginx with one worker side
# by side over TLS 1.3 and HTTP/2, with the same ECDSA P-256 certificate and key.
#
#   side_setup    the certificate, nginx with one worker (cleartext HTTP/1.1, h2c prior
#                 knowledge, TLS with ALPN h2 and http/1.1, and a TLS port that logs
#                 every request to count handshakes), whosthat with one worker, and
#                 whosthat with one worker terminating TLS, both with the same routes;
#                 call before the first load run
#   side_rounds   ROUNDS interleaved rounds of: TLS keep-alive (wrk), server CPU per
#                 full handshake (h2load --h1, one request per new connection, no
#                 session resumption), HTTP/2 over TLS and h2c (h2load -c8 -m32)
#   side_idle     memory per idle HTTP/2 (cleartext and TLS) and TLS HTTP/1.1 connection
#
# Uses from run.sh: OUT, ROOT, BIN, NGINX, NOFILE, IDLE_CONNS, DURATION, ROUNDS, CONNS,
# UP_PORT, HASH, BENCH_PW, PIDS, free_port, run_wrk, idle_test, children_of.
# Knobs (env): HANDSHAKES (new connections per handshake run, default 3000),
# HANDSHAKE_RATE (new connections per second, default 1000), H2_CONNS (8), H2_STREAMS (32).

HANDSHAKES=${HANDSHAKES:-3000}
HANDSHAKE_RATE=${HANDSHAKE_RATE:-1000}
H2_CONNS=${H2_CONNS:-8}
H2_STREAMS=${H2_STREAMS:-32}
CLK_TCK=$(getconf CLK_TCK)

side_setup() {
    NGX1_PORT=$(free_port); NGX1_H2C_PORT=$(free_port); NGX1_TLS_PORT=$(free_port)
    NGX1_HS_PORT=$(free_port); GW_TLS_PORT=$(free_port); GW_TLS_ADMIN=$(free_port)
    # One certificate and key for both servers: ECDSA P-256, self-signed.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
        -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null

    # nginx 1.22 (Debian 12) has no `http2 on;`: `listen ... http2` gives h2c prior
    # knowledge on a cleartext port and ALPN h2 on a TLS one. Session tickets and the
    # cache are nginx's defaults, as rustls's are whosthat's: the client resumes nothing.
    cat > "$OUT/nginx-1w.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $OUT/nginx-1w.pid;
error_log $OUT/nginx-1w.err warn;
events { worker_connections $((IDLE_CONNS > 3072 ? IDLE_CONNS + 1024 : 4096)); }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    ssl_certificate $OUT/cert.pem;
    ssl_certificate_key $OUT/key.pem;
    ssl_protocols TLSv1.3;
    upstream backend { server 127.0.0.1:$UP_PORT; keepalive 128; }
    log_format handshake "\$ssl_session_reused \$ssl_protocol";
    server {
        listen 127.0.0.1:$NGX1_PORT;
        listen 127.0.0.1:$NGX1_H2C_PORT http2;
        listen 127.0.0.1:$NGX1_TLS_PORT ssl http2;
        location /api/ {
            proxy_pass http://backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    # The handshake runs: one line per request ('.' = full handshake, 'r' = resumed).
    server {
        listen 127.0.0.1:$NGX1_HS_PORT ssl;
        access_log $OUT/nginx-1w-handshakes.log handshake;
        location /api/ {
            proxy_pass http://backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    "$NGINX" -c "$OUT/nginx-1w.conf" -p "$OUT" -e "$OUT/nginx-1w.err" 9>&-

    # Against nginx with one worker, whosthat with one worker (`workers = 1`): the same
    # share of the machine, where wrk and the upstream take the rest. The cleartext
    # gateway of run.sh keeps its default (a worker per core) and is measured too.
    GW1_PORT=$(free_port)
    sed -e "s|^listen = .*|listen = \"127.0.0.1:$GW1_PORT\"\nworkers = 1|" \
        "$OUT/gateway.toml" > "$OUT/gateway-1w.toml"
    RUST_LOG=warn "$BIN" -c "$OUT/gateway-1w.toml" > "$OUT/whosthat-1w.log" 2>&1 9>&- &
    GW1_PID=$!
    PIDS+=("$GW1_PID")
    wait_answering "http://127.0.0.1:$GW1_PORT"
    GW1_TOKEN=$(bench_token "http://127.0.0.1:$GW1_PORT")
    # whosthat terminating TLS, one worker: the cleartext gateway's config with tls and
    # an admin listener (its request counter counts the handshakes).
    sed -e "s|^listen = .*|listen = \"127.0.0.1:$GW_TLS_PORT\"\nworkers = 1\ntls = { cert = \"cert.pem\", key = \"key.pem\" }\nadmin_listen = \"127.0.0.1:$GW_TLS_ADMIN\"|" \
        "$OUT/gateway.toml" > "$OUT/gateway-tls.toml"
    RUST_LOG=warn "$BIN" -c "$OUT/gateway-tls.toml" > "$OUT/whosthat-tls.log" 2>&1 9>&- &
    GW_TLS_PID=$!
    PIDS+=("$GW_TLS_PID")
    wait_answering "https://127.0.0.1:$GW_TLS_PORT" -k
    TLS_TOKEN=$(bench_token "https://127.0.0.1:$GW_TLS_PORT" -k)
    local port code proto
    for port in "$GW_TLS_PORT" "$NGX1_TLS_PORT" "$NGX1_HS_PORT"; do
        code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TLS_TOKEN" "https://127.0.0.1:$port/api/")
        proto=$(openssl s_client -connect "127.0.0.1:$port" -brief < /dev/null 2>&1 | sed -n 's/^Protocol version: //p')
        if [ "$code" != 200 ] || [ "$proto" != TLSv1.3 ]; then
            echo "TLS on 127.0.0.1:$port: status $code, protocol '$proto' (want 200 over TLSv1.3)" >&2
            exit 1
        fi
    done
    test "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NGX1_PORT/api/")" = 200
    test "$(curl -s -o /dev/null -w '%{http_code}' --http2-prior-knowledge "http://127.0.0.1:$NGX1_H2C_PORT/api/")" = 200
    test "$(curl -s -o /dev/null -w '%{http_code}' --http2-prior-knowledge -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$GW_PORT/api/")" = 200
    test "$(curl -s -o /dev/null -w '%{http_code}' --http2-prior-knowledge -H "Authorization: Bearer $GW1_TOKEN" "http://127.0.0.1:$GW1_PORT/api/")" = 200
}

cpu_ticks() { # pids... -> their user + system CPU time, summed, in clock ticks
    local total=0 p t
    for p in "$@"; do
        # Fields after "pid (comm) ": utime and stime are the 12th and 13th.
        t=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')
        total=$((total + ${t:-0}))
    done
    echo "$total"
}

cpu_split() { # pids... -> "user system": their CPU time in clock ticks, each summed
    local user=0 sys=0 p u s
    for p in "$@"; do
        read -r u s < <(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12, $13}') || true
        user=$((user + ${u:-0}))
        sys=$((sys + ${s:-0}))
    done
    echo "$user $sys"
}

us_per() { # ticks_before ticks_after count -> CPU microseconds per unit ("-" if count is 0)
    python3 -c 'import sys; b, a, n = map(int, sys.argv[1:4]); print(f"{(a - b) * 1e6 / int(sys.argv[4]) / n:.2f}" if n else "-")' \
        "$1" "$2" "$3" "$CLK_TCK"
}

front_pids() { # contender -> the pids of the server under test
    case $1 in
        whosthat_tls*) echo "$GW_TLS_PID" ;;
        whosthat_1w* | whosthat_h2c) echo "$GW1_PID" ;;
        whosthat*) echo "$GW_PID" ;;
        nginx_1w*) children_of "$OUT/nginx-1w.pid" ;;
        nginx*) children_of "$OUT/nginx-proxy.pid" ;;
    esac
}

# h2load output + its per-request log -> "rps p50_ms p99_ms errors"
parse_h2load() { # text log
    python3 - "$1" "$2" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", t).group(1))
# Errors: requests that failed, errored or timed out, and answers other than 2xx.
# Not "total - 2xx": with -D, h2load's total and its status counts disagree by the
# requests in flight when the time is up (once it gave -1).
failed = sum(map(int, re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", t).groups()))
other = sum(map(int, re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", t).groups()))
lat = sorted(int(line.split("\t")[2]) for line in open(sys.argv[2]) if line.count("\t") >= 2)
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000 if lat else float("nan")
print(f"{rps:.0f} {pct(0.5):.3f} {pct(0.99):.3f} {failed + other}")
EOF
}

run_h2load() { # name url [extra h2load args...]: HTTP/2, H2_CONNS x H2_STREAMS, DURATION s
    local name=$1 url=$2; shift 2
    local pids before after reqs
    pids=$(front_pids "$name")
    # shellcheck disable=SC2086
    before=$(cpu_ticks $pids)
    h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D"$DURATION" --log-file="$OUT/h2load-$name.log" "$@" "$url" \
        > "$OUT/h2load-$name.txt" 2>&1
    # shellcheck disable=SC2086
    after=$(cpu_ticks $pids)
    reqs=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' "$OUT/h2load-$name.txt")
    echo "$name $(parse_h2load "$OUT/h2load-$name.txt" "$OUT/h2load-$name.log") $(us_per "$before" "$after" "${reqs:-0}")" \
        >> "$OUT/side.txt"
}

whosthat_tls_requests() { # requests the TLS gateway has answered, from its /metrics
    curl -s "http://127.0.0.1:$GW_TLS_ADMIN/metrics" |
        awk '/^whosthat_requests_total\{/ {n += $NF} END {print n + 0}'
}

run_handshakes() { # name url: HANDSHAKES new TLS connections, one request each
    local name=$1 url=$2; shift 2
    local pids before after count_before count_after full resumed client
    pids=$(front_pids "$name")
    case $name in
        whosthat*) count_before=$(whosthat_tls_requests) ;;
        *) count_before=$(wc -l < "$OUT/nginx-1w-handshakes.log") ;;
    esac
    # shellcheck disable=SC2086
    before=$(cpu_ticks $pids)
    # -n = -c: every client (connection) makes one request and closes; -r: a fixed
    # rate of new connections. h2load keeps no TLS session between its clients.
    h2load --h1 -t1 -c"$HANDSHAKES" -n"$HANDSHAKES" -r$((HANDSHAKE_RATE / 10)) --rate-period=100ms \
        "$@" "$url" > "$OUT/h2load-$name.txt" 2>&1
    # shellcheck disable=SC2086
    after=$(cpu_ticks $pids)
    client=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' "$OUT/h2load-$name.txt")
    resumed=0
    case $name in
        whosthat*) count_after=$(whosthat_tls_requests) ;;
        *)
            count_after=$(wc -l < "$OUT/nginx-1w-handshakes.log")
            resumed=$(tail -n +$((count_before + 1)) "$OUT/nginx-1w-handshakes.log" | grep -c '^r' || true)
            ;;
    esac
    full=$((count_after - count_before - resumed))
    # name handshakes(server-counted) resumed client-succeeded cpu_us_per_handshake
    echo "$name $full $resumed ${client:-0} $(us_per "$before" "$after" "$full")" >> "$OUT/handshakes.txt"
}

side_rounds() {
    : > "$OUT/side.txt"
    : > "$OUT/handshakes.txt"
    echo "TLS and HTTP/2: $ROUNDS rounds, whosthat and nginx (1 worker) interleaved ..." >&2
    local r order
    for r in $(seq "$ROUNDS"); do
        # Who goes first alternates, so neither always runs on the warmer side.
        if [ $((r % 2)) = 1 ]; then order="whosthat nginx_1w"; else order="nginx_1w whosthat"; fi
        for who in $order; do
            if [ "$who" = whosthat ]; then
                run_wrk whosthat_tls "https://127.0.0.1:$GW_TLS_PORT/api/" -H "Authorization: Bearer $TLS_TOKEN"
            else
                run_wrk nginx_1w_tls "https://127.0.0.1:$NGX1_TLS_PORT/api/"
            fi
        done
        for who in $order; do
            if [ "$who" = whosthat ]; then
                run_handshakes whosthat_tls_handshake "https://127.0.0.1:$GW_TLS_PORT/api/" \
                    -H "Authorization: Bearer $TLS_TOKEN"
            else
                run_handshakes nginx_1w_handshake "https://127.0.0.1:$NGX1_HS_PORT/api/"
            fi
        done
        for who in $order; do
            if [ "$who" = whosthat ]; then
                run_h2load whosthat_tls_h2 "https://127.0.0.1:$GW_TLS_PORT/api/" -H "Authorization: Bearer $TLS_TOKEN"
                run_h2load whosthat_h2c "http://127.0.0.1:$GW1_PORT/api/" -H "Authorization: Bearer $GW1_TOKEN"
                # The same with a worker per core: what more connections than one
                # worker can serve get from the second core.
                run_h2load whosthat_h2c_nw "http://127.0.0.1:$GW_PORT/api/" -H "Authorization: Bearer $TOKEN"
            else
                run_h2load nginx_1w_tls_h2 "https://127.0.0.1:$NGX1_TLS_PORT/api/"
                run_h2load nginx_1w_h2c "http://127.0.0.1:$NGX1_H2C_PORT/api/"
            fi
        done
        echo "  round $r done" >&2
    done
}

side_idle() {
    gw_tls_pid() { echo "$GW_TLS_PID"; }
    nginx_1w_workers() { children_of "$OUT/nginx-1w.pid"; }
    echo "idle HTTP/2 and TLS connections: $IDLE_CONNS to each server ..." >&2
    idle_test whosthat_h2c "$GW_PORT" gw_pid --h2 --header "Authorization: Bearer $TOKEN"
    idle_test nginx_1w_h2c "$NGX1_H2C_PORT" nginx_1w_workers --h2
    idle_test whosthat_tls_h2 "$GW_TLS_PORT" gw_tls_pid --tls --h2 --header "Authorization: Bearer $TLS_TOKEN"
    idle_test nginx_1w_tls_h2 "$NGX1_TLS_PORT" nginx_1w_workers --tls --h2
    idle_test whosthat_tls_h1 "$GW_TLS_PORT" gw_tls_pid --tls --header "Authorization: Bearer $TLS_TOKEN"
    idle_test nginx_1w_tls_h1 "$NGX1_TLS_PORT" nginx_1w_workers --tls
}
