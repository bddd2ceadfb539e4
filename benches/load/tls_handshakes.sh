#!/usr/bin/env bash
# TLS handshakes: the server CPU each one costs, graylane (rustls, ring) against nginx
# (OpenSSL) with the same certificate, full and resumed. The console listener sees a
# browser open several connections per page load and come back after a pause: whether a
# returning client resumes decides how many full handshakes a core must do.
#
# Usage: benches/load/tls_handshakes.sh [--no-build] [--seconds S] [--rounds N]
#   --seconds S   length of each openssl s_time run (default 10)
#   --rounds N    interleaved rounds (default 3); the table gives medians
# Each run: `openssl s_time -new` (every connection a full handshake) or `-reuse` (one
# full handshake, then resumptions of its session), TLS 1.3 and TLS 1.2 (ECDHE-ECDSA,
# P-256 certificate), a `GET /` on each connection relayed to one upstream (nginx
# answering a few bytes, reached over kept-alive connections by both), the client and
# upstream on core 0 and the server on core 1 (PROXY_CPUS, LOAD_CPUS). Reported per
# server: handshakes per second and the server's CPU (user and kernel) per connection
# from /proc/PID/stat, and for -reuse whether s_time saw its sessions resumed.
set -euo pipefail

source "$(dirname "$0")/lib.sh"

SECONDS_PER_RUN=10
ROUNDS=3
while [[ $# -gt 0 ]]; do
    case $1 in
    --seconds) SECONDS_PER_RUN=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --no-build) export NO_BUILD=1 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

PROXY_CPUS=${PROXY_CPUS:-1}
LOAD_CPUS=${LOAD_CPUS:-0}
UP_PORT=18111
GL_PORT=18210
GL_ADMIN=18291
NGX_PORT=18211

trap cleanup EXIT
make_run_dir
ensure_tools nginx:nginx openssl:openssl curl:curl
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
build_graylane
for p in $UP_PORT $GL_PORT $GL_ADMIN $NGX_PORT; do
    port_free "$p" || die "port $p on 127.0.0.1 is in use"
done

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$RUN_DIR/key.pem" -out "$RUN_DIR/cert.pem" -subj /CN=localhost \
    >"$RUN_DIR/openssl.log" 2>&1 || die "openssl: $(cat "$RUN_DIR/openssl.log")"

# The upstream (an nginx of its own, on the client's core) answers both proxies: nginx
# proxies to it as graylane does, with idle upstream connections kept, so both servers
# do the same work per connection: a handshake, one request relayed, one answer.
cat >"$RUN_DIR/upstream.conf" <<EOF
worker_processes 1;
pid $RUN_DIR/upstream.pid;
error_log $RUN_DIR/upstream.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    server { listen 127.0.0.1:$UP_PORT; location / { return 200 "ok\n"; } }
}
EOF
cat >"$RUN_DIR/nginx.conf" <<EOF
worker_processes 1;
pid $RUN_DIR/nginx.pid;
error_log $RUN_DIR/nginx.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    upstream app { server 127.0.0.1:$UP_PORT; keepalive 64; keepalive_requests 100000000; }
    server {
        listen 127.0.0.1:$NGX_PORT ssl;
        ssl_certificate $RUN_DIR/cert.pem;
        ssl_certificate_key $RUN_DIR/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
cat >"$RUN_DIR/graylane.yaml" <<EOF
listeners:
  - name: console
    bind: "127.0.0.1:$GL_PORT"
    tls: { cert: "$RUN_DIR/cert.pem", key: "$RUN_DIR/key.pem" }
admin: { bind: "127.0.0.1:$GL_ADMIN" }
rules_file: rules.yaml
workers: 1
services:
  - name: app
    match: { path_prefix: / }
    pools:
      stable: { endpoints: ["127.0.0.1:$UP_PORT"] }
      gray:   { endpoints: ["127.0.0.1:$UP_PORT"] }
access_log: { sample: 0.01 }
EOF
echo "rules: []" >"$RUN_DIR/rules.yaml"

start_bg upstream taskset -c "$LOAD_CPUS" "$NGINX_BIN" -p "$RUN_DIR" -c "$RUN_DIR/upstream.conf" \
    -e "$RUN_DIR/upstream.error.log" -g 'daemon off;'
wait_http "http://127.0.0.1:$UP_PORT/" 15 "$BG_PID" || die "upstream nginx did not start"
# The nginx master process stays on the client's core; its one worker is moved to the
# server core below, so only the worker's CPU is counted.
start_bg nginx "$NGINX_BIN" -p "$RUN_DIR" -c "$RUN_DIR/nginx.conf" -e "$RUN_DIR/nginx.error.log" \
    -g 'daemon off;'
NGX_MASTER=$BG_PID
wait_http "https://127.0.0.1:$NGX_PORT/" 15 "$NGX_MASTER" || die "nginx did not start"
NGX_WORKER=$(pgrep -P "$NGX_MASTER" | head -1)
[[ -n $NGX_WORKER ]] || die "no nginx worker process"
taskset -a -p -c "$PROXY_CPUS" "$NGX_WORKER" >/dev/null
start_bg graylane taskset -c "$PROXY_CPUS" "$GRAYLANE_BIN" run --config "$RUN_DIR/graylane.yaml"
GL_PID=$BG_PID
wait_http "https://127.0.0.1:$GL_PORT/" 30 "$GL_PID" || die "graylane did not start"

TICK=$(getconf CLK_TCK)
printf 'server\tmode\tproto\tround\tconnections\tconn_per_s\tuser_us\tkernel_us\tresumed\n' >"$RUN_DIR/rows.tsv"
# run SERVER PID PORT MODE PROTO ROUND
run() {
    local server=$1 pid=$2 port=$3 mode=$4 proto=$5 round=$6 out before after conns
    out="$RUN_DIR/s_time-$server-$mode-$proto-$round.txt"
    read -r bu bs < <(cpu_split "$pid")
    taskset -c "$LOAD_CPUS" openssl s_time -connect "127.0.0.1:$port" "-$mode" "-$proto" \
        -www / -time "$SECONDS_PER_RUN" >"$out" 2>&1 || die "s_time failed: $(tail -3 "$out")"
    read -r au as < <(cpu_split "$pid")
    # "N connections in T real seconds": the -new or -reuse line (the last such line).
    conns=$(awk '/connections in .* real seconds/ {n=$1} END {print n + 0}' "$out")
    ((conns > 0)) || die "s_time made no connection to $server: $(tail -3 "$out")"
    local rate user kern resumed=-
    rate=$(awk -v n="$conns" -v s="$SECONDS_PER_RUN" 'BEGIN {printf "%.0f", n / s}')
    user=$(awk -v t=$((au - bu)) -v n="$conns" -v k="$TICK" 'BEGIN {printf "%.1f", t / k * 1e6 / n}')
    kern=$(awk -v t=$((as - bs)) -v n="$conns" -v k="$TICK" 'BEGIN {printf "%.1f", t / k * 1e6 / n}')
    # s_time -reuse prints "r" for each resumed session and "*" for a new one.
    if [[ $mode == reuse ]]; then
        resumed=$(grep -o '[r*]' "$out" | sort | uniq -c | awk '{printf "%s%s=%s", sep, $2, $1; sep=" "}')
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$server" "$mode" "$proto" "$round" "$conns" \
        "$rate" "$user" "$kern" "$resumed" >>"$RUN_DIR/rows.tsv"
    log "$server $mode $proto round $round: $rate/s, user $user µs, kernel $kern µs per connection ${resumed}"
}

for round in $(seq 1 "$ROUNDS"); do
    for proto in tls1_3 tls1_2; do
        for mode in new reuse; do
            run graylane "$GL_PID" "$GL_PORT" "$mode" "$proto" "$round"
            run nginx "$NGX_WORKER" "$NGX_PORT" "$mode" "$proto" "$round"
        done
    done
done

{
    echo "### TLS handshakes: graylane (rustls) vs nginx (OpenSSL)"
    echo
    echo "$ROUNDS interleaved round(s) of ${SECONDS_PER_RUN} s per cell; medians. Client: \`openssl s_time -new|-reuse -www /\` (one connection at a time) on core $LOAD_CPUS; server on core $PROXY_CPUS. CPU is the server's, per connection (handshake + one small request)."
    echo
    echo "| server | TLS | mode | connections/s | CPU µs/conn user | kernel | total | total vs nginx |"
    echo "|---|---|---|---|---|---|---|---|"
    python3 - "$RUN_DIR/rows.tsv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
cells = {}
for r in rows:
    cells.setdefault((r["server"], r["proto"], r["mode"]), []).append(r)
def med(rs, k):
    return statistics.median(float(r[k]) for r in rs)
for proto in ("tls1_3", "tls1_2"):
    for mode in ("new", "reuse"):
        ngx = cells.get(("nginx", proto, mode), [])
        ngx_total = med(ngx, "user_us") + med(ngx, "kernel_us") if ngx else None
        for server in ("graylane", "nginx"):
            rs = cells.get((server, proto, mode))
            if not rs:
                continue
            u, k = med(rs, "user_us"), med(rs, "kernel_us")
            vs = f"{(u + k) / ngx_total:.2f}×" if ngx_total else "–"
            name = {"tls1_3": "1.3", "tls1_2": "1.2"}[proto]
            label = "full" if mode == "new" else "resumed (" + rs[-1]["resumed"] + ")"
            print(f"| {server} | {name} | {label} | {med(rs, 'conn_per_s'):.0f} | {u:.0f} | {k:.0f} | {u + k:.0f} | {vs} |")
PY
    echo
    machine_notes
} | tee "$RUN_DIR/report.md"
