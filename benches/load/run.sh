#!/usr/bin/env bash
# Side-by-side load benchmark: graylane vs nginx vs haproxy doing the same gray routing
# (uid from the `xdw-kefu-uid` header, else cookie; uid in 10000000-10499999 -> gray).
# Three modes, each with its own table:
#   plain-h1  HTTP/1.1 keep-alive over plaintext, driven by wrk (h2load --h1 with --rate),
#             plus a direct-to-upstream row (the load generator's and upstream's own
#             ceiling)                                                      (default)
#   tls-h2    HTTP/2 over TLS (ALPN h2), driven by h2load                  (--tls)
#   tls-h1    HTTP/1.1 over TLS (h2load --h1)                               (--tls)
# Every row: req/s, p50, p99, and the proxy's CPU per request split into user and kernel
# time (utime/stime of all its processes and threads, /proc/PID/stat).
#
# Usage: benches/load/run.sh [--tls | --all] [--rate N] [--floor] [--syscalls] [--segments] [--where] [--quick] [--rounds N] [--no-build] [--out FILE]
#          plain: [--duration SECONDS] [--warmup SECONDS] [--connections N] [--workers "1 2"]
#          TLS:   [--requests N] [--tls-connections N] [--streams N] [--protos "h2 h1"]
#   (none)       plain mode only; report to benches/load/results.md
#   --tls        TLS modes only (1 worker each); report to benches/load/results-tls.md
#   --all        plain and TLS modes, interleaved in each round; report to results.md
#   --floor      plain mode also runs benches/floor's relay (1 worker only): on epoll (floor),
#                on epoll with a read tried straight after each write (floor-eager), on
#                epoll with each wake-up's writes sent through io_uring in one system call
#                (floor-batch), and on io_uring (floor-uring); the floor of a lean HTTP/1.1
#                path, and the kernel levers measured beside graylane and the peers
#                (FLOOR_KINDS="floor floor-batch" runs only those)
#   --syscalls   TLS modes (and with --rate the plain mode) also count each proxy's system
#                calls per request (perf stat on its syscall tracepoints during each
#                measured h2load run; a table in the report), the waits among them that
#                found nothing ready, and how often its threads slept (voluntary context
#                switches, from /proc).
#                The counting adds work to every system call of every proxy: the CPU
#                columns of such a run are not comparable with those of a run without it
#   --where      every mode also samples where each proxy's CPU goes (perf record -g on its
#                processes during each measured run): user space, the kernel's socket writes
#                (tcp_sendmsg) and within them the receiving side's TCP input that loopback
#                runs in the sender's context (net_rx_action), socket reads (tcp_recvmsg),
#                event waits (do_epoll_wait), the rest of the kernel; shares of the samples,
#                a table in the report. Of the user space share, the samples on the first
#                instruction after a system call (syscall_returns.py): the kernel's return
#                path with interrupts off, which the tick-based accounting of user time
#                counts as user time. Sampling slows every proxy a little: read the CPU
#                columns of such a run only against each other
#   --segments   every mode also counts TCP segments per response (nstat's TcpOutSegs over the
#                measured run, all loopback traffic: client, proxy and upstream sides) and
#                the pure and delayed ACKs among them; a table in the report. The
#                kernel's TCP work per request grows with the segments sent for it
#   --rate N     every proxy is driven at the same fixed N requests per second in every mode,
#                instead of as fast as it answers: h2load's --rps (N spread over the
#                connections, opened one per millisecond so that their timers do not
#                tick together) for DURATION seconds after WARMUP, also in the plain mode
#                (h2load --h1 over plaintext; every request then carries the stable uid in
#                its header, as the TLS modes' do). Without it each proxy is driven as fast
#                as it answers, and its CPU per request moves with that rate (the more
#                requests each wake-up finds ready, the less each costs), so a faster proxy
#                is measured at a cheaper point of its curve; at one fixed rate, below every
#                proxy's ceiling, all do the same work in the same time. A row whose rate
#                fell short of N by more than 3% is flagged in the report
#   --quick      1 round; plain 3 s per run after 1 s warm-up; TLS 40000 requests per run
#   default      3 rounds; plain 10 s per run after 2 s warm-up, 64 connections, workers
#                "1 2"; TLS 200000 requests per run after 20000 warm-up requests, h2load 1
#                thread, 50 connections, 10 streams per connection for h2 (1 for h1)
# Environment: PROXY_CPUS (default 1) and LOAD_CPUS (default 0) are `taskset -c` lists;
# KEEP_RUN_DIR=1 keeps configs, logs and raw wrk/h2load output.
#
# Installs nginx, haproxy, wrk (and for TLS or --rate nghttp2-client's h2load) from Debian packages
# if missing (needs root), builds graylane with `cargo build --release`, then for each
# round runs every (mode, workers, proxy) in a fixed interleaved order (direct, graylane,
# nginx, haproxy, ...) so that drift of the machine hits all of them alike. Each run starts
# the proxy fresh, checks its routing with curl over the same protocol (fails loudly when a
# body is wrong), warms up, then measures. Prints markdown tables and writes them to the
# report file; the raw rows are appended to results.tsv in the run directory.
set -euo pipefail

source "$(dirname "$0")/lib.sh"

ORIG_ARGS=("$@")
ROUNDS=3
DURATION=10
WARMUP=2
CONNS=64
WORKERS_LIST="1 2"
REQUESTS=200000
TLS_CONNS=50
STREAMS=10
PROTOS="h2 h1"
RUN_PLAIN=1
RUN_TLS=0
RUN_FLOOR=0
SYSCALLS=0
SEGMENTS=0
WHERE=0
RATE=0
OUT=""
while [[ $# -gt 0 ]]; do
    case $1 in
    --quick) ROUNDS=1 DURATION=3 WARMUP=1 REQUESTS=40000 ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --connections) CONNS=$2; shift ;;
    --workers) WORKERS_LIST=$2; shift ;;
    --tls) RUN_PLAIN=0 RUN_TLS=1 ;;
    --all) RUN_PLAIN=1 RUN_TLS=1 ;;
    --floor) RUN_FLOOR=1 ;;
    --syscalls) SYSCALLS=1 ;;
    --segments) SEGMENTS=1 ;;
    --where) WHERE=1 ;;
    --requests) REQUESTS=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --tls-connections) TLS_CONNS=$2; shift ;;
    --streams) STREAMS=$2; shift ;;
    --protos) PROTOS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --no-build) export NO_BUILD=1 ;;
    -h | --help) awk 'NR > 1 && /^set -euo/ {exit} NR > 1' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
for p in $PROTOS; do [[ $p == h2 || $p == h1 ]] || die "--protos takes h2 and/or h1, not '$p'"; done
((REQUESTS >= TLS_CONNS)) || die "--requests must be at least --tls-connections"
[[ $RATE =~ ^[0-9]+$ ]] || die "--rate takes a whole number of requests per second, not '$RATE'"
RATE=$((10#$RATE)) # "020" is 20, and "00" is 0: off
WARMUP_REQUESTS=$((REQUESTS / 10 > TLS_CONNS ? REQUESTS / 10 : TLS_CONNS))
if [[ -z $OUT ]]; then
    if [[ $RUN_PLAIN == 1 ]]; then OUT="$LOAD_DIR/results.md"; else OUT="$LOAD_DIR/results-tls.md"; fi
fi

PROXY_CPUS=${PROXY_CPUS:-1}
LOAD_CPUS=${LOAD_CPUS:-0}
STABLE_PORT=18101
GRAY_PORT=18102
GRAYLANE_PORT=18200
ADMIN_PORT=18290
NGINX_PORT=18300
HAPROXY_PORT=18400
FLOOR_PORT=18500
PATH_UNDER_TEST=/chat/send
CLK_TCK=$(getconf CLK_TCK)
# h2load sends the same headers on every request (it cannot vary them per request as
# uids.lua does for wrk): a stable uid in the header, as 56% of wrk's requests carry.
TLS_UID=52345678

# The exact command, as it can be pasted again (environment that changes the placement
# included).
CMDLINE="bash benches/load/run.sh$(printf ' %q' "${ORIG_ARGS[@]+"${ORIG_ARGS[@]}"}")"
[[ ${PROXY_CPUS} == 1 && ${LOAD_CPUS} == 0 ]] || CMDLINE="PROXY_CPUS=$PROXY_CPUS LOAD_CPUS=$LOAD_CPUS $CMDLINE"
# Which build was measured (benches/load/pgo.sh's lands in target/pgo).
[[ -z ${CARGO_TARGET_DIR:-} ]] || CMDLINE="CARGO_TARGET_DIR=$CARGO_TARGET_DIR $CMDLINE"
[[ -z ${FLOOR_KINDS:-} ]] || CMDLINE="FLOOR_KINDS=\"$FLOOR_KINDS\" $CMDLINE"
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)

trap cleanup EXIT
make_run_dir
RESULTS="$RUN_DIR/results.tsv"
: >"$RESULTS"
log "command: $CMDLINE"
log "run directory: $RUN_DIR; load average at start: $LOADAVG_START"

tools=(nginx:nginx haproxy:haproxy curl:curl taskset:util-linux)
[[ $RUN_PLAIN == 1 && $RATE == 0 ]] && tools+=(wrk:wrk)
[[ $RUN_PLAIN == 1 && $RATE != 0 ]] && tools+=(h2load:nghttp2-client)
[[ $RUN_TLS == 1 ]] && tools+=(h2load:nghttp2-client openssl:openssl)
[[ (($RUN_TLS == 1 || $RATE != 0) && $SYSCALLS == 1) || $WHERE == 1 ]] && tools+=(perf:linux-perf)
[[ $WHERE == 1 ]] && tools+=(objdump:binutils python3:python3)
[[ $SEGMENTS == 1 ]] && tools+=(nstat:iproute2)
ensure_tools "${tools[@]}"
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY_BIN=$(command -v haproxy || echo /usr/sbin/haproxy)
build_graylane
[[ $RUN_FLOOR == 1 ]] && build_floor

for p in $STABLE_PORT $GRAY_PORT $GRAYLANE_PORT $ADMIN_PORT $NGINX_PORT $HAPROXY_PORT $FLOOR_PORT; do
    port_free "$p" || die "port $p on 127.0.0.1 is in use; stop whatever holds it"
done

# === TLS material: one self-signed ECDSA P-256 certificate for all three proxies ===

TLS_DIR="$RUN_DIR/tls"
NGINX_LISTEN_TLS=" ssl http2"
NGINX_HTTP2_ON=""
if [[ $RUN_TLS == 1 ]]; then
    mkdir -p "$TLS_DIR"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
        -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$RUN_DIR/openssl.log" 2>&1 ||
        die "openssl could not make the certificate: $(cat "$RUN_DIR/openssl.log")"
    cat "$TLS_DIR/cert.pem" "$TLS_DIR/key.pem" >"$TLS_DIR/haproxy.pem" # haproxy: chain + key in one file
    # `listen ... ssl http2` until nginx 1.25.1, which moved it to `http2 on;`.
    nginx_ver=$("$NGINX_BIN" -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
    if [[ $(printf '%s\n1.25.1\n' "$nginx_ver" | sort -V | head -1) == 1.25.1 ]]; then
        NGINX_LISTEN_TLS=" ssl"
        NGINX_HTTP2_ON=" http2 on;"
    fi
fi

# render TEMPLATE OUT WORKERS PORT [TLS] : substitutes the @...@ placeholders; TLS=1
# turns the proxy's listener into a TLS one (nginx, haproxy templates).
render() {
    local tls=${5:-0} listen_tls="" nginx_tls="" haproxy_tls="" scheme=http
    if [[ $tls == 1 ]]; then
        listen_tls=$NGINX_LISTEN_TLS
        nginx_tls="ssl_certificate $TLS_DIR/cert.pem; ssl_certificate_key $TLS_DIR/key.pem;$NGINX_HTTP2_ON"
        haproxy_tls=" ssl crt $TLS_DIR/haproxy.pem alpn h2,http/1.1"
        scheme=https
    fi
    sed -e "s|@RUN@|$RUN_DIR|g" -e "s|@WORKERS@|$3|g" -e "s|@PORT@|$4|g" \
        -e "s|@ADMIN_PORT@|$ADMIN_PORT|g" -e "s|@STABLE_PORT@|$STABLE_PORT|g" \
        -e "s|@GRAY_PORT@|$GRAY_PORT|g" -e "s|@LISTEN_TLS@|$listen_tls|g" \
        -e "s|@NGINX_TLS@|$nginx_tls|g" -e "s|@HAPROXY_TLS@|$haproxy_tls|g" \
        -e "s|@SCHEME@|$scheme|g" "$1" >"$2"
    ! grep -q '@[A-Z_]*@' "$2" || die "unsubstituted placeholder in $2: $(grep -o '@[A-Z_]*@' "$2" | head -1)"
}

# === upstreams ===

render "$LOAD_DIR/upstream-nginx.conf" "$RUN_DIR/upstream-nginx.conf" 1 0
start_bg upstream taskset -c "$LOAD_CPUS" "$NGINX_BIN" -p "$RUN_DIR" -c "$RUN_DIR/upstream-nginx.conf" \
    -e "$RUN_DIR/upstream-nginx.error.log" -g 'daemon off;'
UPSTREAM_PID=$BG_PID
wait_http "http://127.0.0.1:$STABLE_PORT/" 15 "$UPSTREAM_PID" || die "upstream nginx did not start (see $RUN_DIR/upstream.log)"
[[ $(curl -s "http://127.0.0.1:$STABLE_PORT/") == stable ]] || die "stable upstream answers wrongly"
[[ $(curl -s "http://127.0.0.1:$GRAY_PORT/") == gray ]] || die "gray upstream answers wrongly"

# === proxies ===

# start_proxy KIND WORKERS [TLS] : starts one proxy pinned to PROXY_CPUS; sets PROXY_PID
# and PROXY_PORT. KIND=direct starts nothing and points at the stable upstream. TLS=1
# gives the proxy a TLS listener (ALPN h2, http/1.1) with the run's certificate.
start_proxy() {
    local kind=$1 w=$2 tls=${3:-0} label="$1-w$2"
    [[ $tls == 1 ]] && label="tls-$label"
    local dir="$RUN_DIR/$label"
    mkdir -p "$dir"
    case $kind in
    direct)
        PROXY_PID=""
        PROXY_PORT=$STABLE_PORT
        return 0
        ;;
    graylane)
        PROXY_PORT=$GRAYLANE_PORT
        render "$LOAD_DIR/graylane.yaml" "$dir/graylane.yaml" "$w" "$PROXY_PORT"
        if [[ $tls == 1 ]]; then # README "TLS": `tls: { cert, key }` on the listener
            sed -i "/^    bind: \"127.0.0.1:$PROXY_PORT\"/a\\    tls: { cert: \"$TLS_DIR/cert.pem\", key: \"$TLS_DIR/key.pem\" }" "$dir/graylane.yaml"
            grep -q '^    tls: ' "$dir/graylane.yaml" || die "could not add tls: to $dir/graylane.yaml"
        fi
        cp "$LOAD_DIR/rules.yaml" "$dir/rules.yaml"
        RUST_LOG=warn,graylane::access=info start_bg "$label" taskset -c "$PROXY_CPUS" "$GRAYLANE_BIN" run --config "$dir/graylane.yaml"
        ;;
    nginx)
        PROXY_PORT=$NGINX_PORT
        render "$LOAD_DIR/nginx-proxy.conf" "$dir/nginx.conf" "$w" "$PROXY_PORT" "$tls"
        start_bg "$label" taskset -c "$PROXY_CPUS" "$NGINX_BIN" -p "$dir" -c "$dir/nginx.conf" \
            -e "$dir/error.log" -g 'daemon off;'
        ;;
    haproxy)
        PROXY_PORT=$HAPROXY_PORT
        render "$LOAD_DIR/haproxy.cfg" "$dir/haproxy.cfg" "$w" "$PROXY_PORT" "$tls"
        start_bg "$label" taskset -c "$PROXY_CPUS" "$HAPROXY_BIN" -db -f "$dir/haproxy.cfg"
        ;;
    floor*)
        PROXY_PORT=$FLOOR_PORT
        local io=(--io epoll)
        [[ $kind == floor-uring ]] && io=(--io uring)
        [[ $kind == floor-batch ]] && io=(--io batch)
        [[ $kind == floor-eager ]] && io+=(--eager-read)
        start_bg "$label" taskset -c "$PROXY_CPUS" "$FLOOR_BIN" --listen "127.0.0.1:$PROXY_PORT" \
            --stable "127.0.0.1:$STABLE_PORT" --gray "127.0.0.1:$GRAY_PORT" "${io[@]}"
        ;;
    esac
    PROXY_PID=$BG_PID
    local scheme=http
    [[ $tls == 1 ]] && scheme=https
    if ! wait_http "$scheme://127.0.0.1:$PROXY_PORT/" 15 "$PROXY_PID"; then
        cat "$RUN_DIR/$label.log" >&2 || true
        die "$kind (workers $w$([[ $tls == 1 ]] && echo ", TLS")) did not start"
    fi
    if [[ $kind == graylane ]]; then
        wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" || die "graylane admin did not come up"
    fi
}

# set_target PORT SCHEME PROTO : where and how check_route's curl talks (PROTO h1 or h2).
set_target() {
    BASE_URL="$2://127.0.0.1:$1"
    case $2/$3 in
    http/*) CURL_OPTS=(--http1.1) WANT_VERSION=1.1 ;;
    https/h2) CURL_OPTS=(-k --http2) WANT_VERSION=2 ;;
    https/h1) CURL_OPTS=(-k --http1.1) WANT_VERSION=1.1 ;;
    esac
    WANT_SCHEME=$2
}

# check_route KIND EXPECTED DESCRIPTION CURL_ARGS... : fails loudly on a wrong body.
check_route() {
    local kind=$1 want=$2 what=$3 got
    shift 3
    got=$(curl -s --max-time 5 "${CURL_OPTS[@]}" "$@" "$BASE_URL$PATH_UNDER_TEST") || got="(curl failed)"
    [[ $got == "$want" ]] || die "$kind routes $what to '$got', expected '$want' ($BASE_URL, curl ${CURL_OPTS[*]})"
}

verify_routing() {
    local kind=$1 got
    [[ $kind == direct ]] && return 0
    got=$(curl -s -o /dev/null --max-time 5 -w '%{http_version}' "${CURL_OPTS[@]}" "$BASE_URL$PATH_UNDER_TEST") || got="(curl failed)"
    [[ $got == "$WANT_VERSION" ]] || die "$kind answered over HTTP/$got, expected HTTP/$WANT_VERSION ($BASE_URL)"
    got=$(curl -s --max-time 5 "${CURL_OPTS[@]}" "$BASE_URL/_xfp") || got="(curl failed)"
    [[ $got == "$WANT_SCHEME" ]] || die "$kind sent X-Forwarded-Proto '$got' upstream, expected '$WANT_SCHEME'"
    check_route "$kind" gray "header uid 10200000" -H 'xdw-kefu-uid: 10200000'
    check_route "$kind" gray "header uid 10000000 (range start)" -H 'xdw-kefu-uid: 10000000'
    check_route "$kind" gray "header uid 10499999 (range end)" -H 'xdw-kefu-uid: 10499999'
    check_route "$kind" gray "header uid 0010000000 (leading zeros)" -H 'xdw-kefu-uid: 0010000000'
    check_route "$kind" stable "header uid 9999999" -H 'xdw-kefu-uid: 9999999'
    check_route "$kind" stable "header uid 10500000" -H 'xdw-kefu-uid: 10500000'
    check_route "$kind" stable "header uid 104999990" -H 'xdw-kefu-uid: 104999990'
    check_route "$kind" stable "header uid $TLS_UID (h2load's)" -H "xdw-kefu-uid: $TLS_UID"
    check_route "$kind" gray "cookie uid 10200000" -H 'Cookie: lang=zh; xdw-kefu-uid=10200000; theme=dark'
    check_route "$kind" stable "cookie uid 60000000" -H 'Cookie: lang=zh; xdw-kefu-uid=60000000'
    check_route "$kind" stable "header 50000000 over cookie 10200000" \
        -H 'xdw-kefu-uid: 50000000' -H 'Cookie: xdw-kefu-uid=10200000'
    check_route "$kind" stable "invalid header over gray cookie" \
        -H 'xdw-kefu-uid: abc' -H 'Cookie: xdw-kefu-uid=10200000'
    check_route "$kind" stable "no uid"
}

# === measurement ===

# to_us VALUE : wrk latency (e.g. 412.00us, 1.23ms, 1.01s) in microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.1f", v }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.1f", v * 1000 }
        else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.1f", v * 60000000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.1f", v * 1000000 }
        else printf "nan" }'
}

wrk_cmd() { # PORT SECONDS : the wrk command line
    WRK_CMD=(taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNS" -d"$2s" --latency -s "$LOAD_DIR/uids.lua"
        "http://127.0.0.1:$1$PATH_UNDER_TEST")
}

wrk_run() { # PORT SECONDS OUTFILE
    wrk_cmd "$1" "$2"
    "${WRK_CMD[@]}" >"$3" 2>&1 || die "wrk failed: $(cat "$3")"
}

# h2load_cmd PORT PROTO REQUESTS [LOGFILE] [SCHEME] : the h2load command line. With
# --rate, REQUESTS is the run's length in seconds and the requests are paced; SCHEME http
# (the plain mode's) uses the plain mode's connections.
#
# Paced, each h2load connection sends what is due on its own timer, which ticks at most
# every 10 ms, starting when it connects. Connections opened together tick together and
# the load comes in bursts (at 20,000 req/s over 64 connections: ~200 requests every 10
# ms); opened one per millisecond (-r 1 --rate-period 1ms, which takes -n rather than a
# duration), their ticks spread over the 10 ms and so does the load.
h2load_cmd() {
    local scheme=${5:-https} conns=$TLS_CONNS
    [[ $scheme == http ]] && conns=$CONNS
    H2LOAD_CMD=(taskset -c "$LOAD_CPUS" h2load -t1 -c"$conns")
    if [[ $RATE != 0 ]]; then
        H2LOAD_CMD+=(-n$((RATE * $3)) -r1 --rate-period=1ms
            --rps="$(awk -v r="$RATE" -v c="$conns" 'BEGIN {printf "%g", r / c}')")
    else
        H2LOAD_CMD+=(-n"$3")
    fi
    if [[ $2 == h2 ]]; then
        H2LOAD_CMD+=(-m"$STREAMS")
    else
        H2LOAD_CMD+=(--h1 -m1)
    fi
    H2LOAD_CMD+=(-H "user-agent: h2load-graylane-bench" -H "accept: */*"
        -H "xdw-kefu-uid: $TLS_UID" -H "xdw-app-version: 5.3.1")
    [[ -n ${4:-} ]] && H2LOAD_CMD+=(--log-file="$4")
    H2LOAD_CMD+=("$scheme://127.0.0.1:$1$PATH_UNDER_TEST")
}

h2load_run() { # PORT PROTO REQUESTS OUTFILE [LOGFILE] [SCHEME]
    h2load_cmd "$1" "$2" "$3" "${5:-}" "${6:-https}"
    "${H2LOAD_CMD[@]}" >"$4" 2>&1 || die "h2load failed: $(tail -20 "$4")"
    [[ ${6:-https} == https ]] || return 0
    local alpn want=h2
    [[ $2 == h1 ]] && want=http/1.1
    alpn=$(awk '/^Application protocol:/ {print $3; exit}' "$4")
    [[ $alpn == "$want" ]] || die "h2load negotiated '$alpn', expected '$want' (see $4)"
}

# h2load_result OUTFILE LOGFILE : sets RPS, NDONE, FAILED, BAD, P50, P99 from an h2load run.
h2load_result() {
    # finished in 3.03s, 16381.00 req/s, 1.08MB/s
    # requests: 49179 total, 49625 started, 49179 done, 49143 succeeded, 36 failed, 36 errored, 0 timeout
    # status codes: 49143 2xx, 0 3xx, 0 4xx, 0 5xx
    RPS=$(awk '/^finished in/ {print $4}' "$1")
    NDONE=$(awk '/^requests:/ {print $6}' "$1")
    FAILED=$(awk '/^requests:/ {print $10}' "$1")
    BAD=$(awk '/^status codes:/ {print $5 + $7 + $9}' "$1")
    [[ -n $RPS && -n $NDONE && -n $FAILED && -n $BAD ]] || die "cannot parse h2load output $1"
    read -r P50 P99 < <(latency_pct "$2")
    [[ $KEEP_RUN_DIR == 1 ]] || rm -f "$2"
}

# latency_pct LOGFILE : "P50 P99" in µs from h2load's per-request log (nearest rank over
# the requests that got a response).
latency_pct() {
    awk -F'\t' '$2 != -1 {print $3}' "$1" | sort -n | awk '
        { v[NR] = $1 }
        function rank(p,   i) { i = int(p * NR); if (i < p * NR) i++; if (i < 1) i = 1; return v[i] }
        END { if (NR == 0) print "nan nan"; else printf "%.1f %.1f\n", rank(0.50), rank(0.99) }'
}

# gray_share : share of graylane's requests that went to gray, from its own metrics.
gray_share() {
    curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '
        /^graylane_requests_total\{/ { n = $NF; total += n; if ($0 ~ /pool="gray"/) gray += n }
        END { if (total > 0) printf "%.1f%%", 100 * gray / total; else print "?" }'
}

# sample_begin : snapshot of the proxy's CPU time (user, kernel ticks) before a measured run.
sample_begin() {
    SAMPLE_PIDS=()
    if [[ -n $PROXY_PID ]]; then
        mapfile -t SAMPLE_PIDS < <(proc_tree "$PROXY_PID")
    fi
    CPU0=$(cpu_split "${SAMPLE_PIDS[@]+"${SAMPLE_PIDS[@]}"}")
}

# sample_end KIND : CPU time after the run (CPU1), peak RSS, graylane's gray share; stops
# the proxy.
sample_end() {
    CPU1=$(cpu_split "${SAMPLE_PIDS[@]+"${SAMPLE_PIDS[@]}"}")
    RSS=0 SHARE=""
    if [[ -n $PROXY_PID ]]; then
        mapfile -t SAMPLE_PIDS < <(proc_tree "$PROXY_PID")
        RSS=$(rss_peak_kib "${SAMPLE_PIDS[@]}")
        [[ $1 == graylane ]] && SHARE=$(gray_share)
        stop_pid "$PROXY_PID"
    fi
}

# record MODE KIND WORKERS ROUND RPS P50 P99 REQUESTS ERRORS OUTFILE : CPU µs per request
# (user, kernel, total) from CPU0/CPU1, one row appended to results.tsv, one log line.
record() {
    local mode=$1 kind=$2 w=$3 round=$4 rps=$5 p50=$6 p99=$7 reqs=$8 errors=$9 out=${10}
    local user=nan kern=nan total=nan
    if [[ -n $PROXY_PID ]] && ((reqs > 0)); then
        read -r user kern total < <(awk -v a="$CPU0" -v b="$CPU1" -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {
            split(a, x, " "); split(b, y, " ")
            u = (y[1] - x[1]) * 1e6 / hz / n; s = (y[2] - x[2]) * 1e6 / hz / n
            printf "%.2f %.2f %.2f\n", u, s, u + s }')
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$kind" "$w" "$round" \
        "$rps" "$p50" "$p99" "$user" "$kern" "$total" "$RSS" "$errors" "$SHARE" "$reqs" >>"$RESULTS"
    log "round $round $mode $kind w$w: $rps req/s, p50 ${p50}us, p99 ${p99}us, cpu/req user ${user}us + kernel ${kern}us = ${total}us, peak rss ${RSS}KiB, errors $errors${SHARE:+, gray share $SHARE}"
    [[ $errors == 0 ]] || log "WARNING: $mode $kind w$w had $errors failed requests (see $out)"
    if [[ $RATE != 0 ]] && awk -v r="$rps" -v n="$RATE" 'BEGIN {exit !(r < 0.97 * n)}'; then
        log "WARNING: $mode $kind w$w was driven at $rps req/s, short of the fixed $RATE (it or the load generator could not keep up)"
    fi
}

measure_plain() { # KIND WORKERS ROUND
    local kind=$1 w=$2 round=$3 out="$RUN_DIR/wrk-$1-w$2-r$3.txt"
    start_proxy "$kind" "$w"
    set_target "$PROXY_PORT" http h1
    verify_routing "$kind"
    if [[ $RATE != 0 ]]; then
        measure_plain_paced "$kind" "$w" "$round"
        return 0
    fi
    wrk_run "$PROXY_PORT" "$WARMUP" "$RUN_DIR/warmup.txt"
    sample_begin
    [[ $SEGMENTS == 1 ]] && segments_begin
    [[ $WHERE == 1 && -n $PROXY_PID ]] && where_begin
    wrk_run "$PROXY_PORT" "$DURATION" "$out"
    # Rows per proxy and worker count: the tables take medians over rows of one key.
    [[ $WHERE == 1 && -n $PROXY_PID ]] && where_end plain-h1 "$kind w$w" "$round"
    [[ $SEGMENTS == 1 ]] && segments_end plain-h1 "$kind w$w" "$round" "$(awk '/requests in/ {print $1}' "$out")"
    sample_end "$kind"

    local reqs rps p50 p99 non2xx sockerr
    reqs=$(awk '/requests in/ {print $1}' "$out")
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$out")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$out")")
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$out")
    sockerr=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$out")
    [[ -n $reqs && -n $rps ]] || die "cannot parse wrk output $out"
    record plain-h1 "$kind" "$w" "$round" "$rps" "$p50" "$p99" "$reqs" $((${non2xx:-0} + ${sockerr:-0})) "$out"
}

# measure_plain_paced KIND WORKERS ROUND : the plain mode at --rate's fixed rate (h2load
# --h1 over plaintext); the proxy is started and its routing checked.
measure_plain_paced() {
    local kind=$1 w=$2 round=$3
    local out="$RUN_DIR/h2load-plain-$1-w$2-r$3.txt" lat="$RUN_DIR/h2load-plain-$1-w$2-r$3.log"
    h2load_run "$PROXY_PORT" h1 "$WARMUP" "$RUN_DIR/warmup.txt" "" http
    sample_begin
    [[ $SYSCALLS == 1 && -n $PROXY_PID ]] && syscalls_begin
    [[ $SEGMENTS == 1 ]] && segments_begin
    [[ $WHERE == 1 && -n $PROXY_PID ]] && where_begin
    h2load_run "$PROXY_PORT" h1 "$DURATION" "$out" "$lat" http
    [[ $WHERE == 1 && -n $PROXY_PID ]] && where_end plain-h1 "$kind w$w" "$round"
    [[ $SYSCALLS == 1 && -n $PROXY_PID ]] && syscalls_end plain-h1 "$kind w$w" "$round" "$out"
    h2load_result "$out" "$lat"
    [[ $SEGMENTS == 1 ]] && segments_end plain-h1 "$kind w$w" "$round" $((NDONE - FAILED))
    sample_end "$kind"
    record plain-h1 "$kind" "$w" "$round" "$RPS" "$P50" "$P99" $((NDONE - FAILED)) $((FAILED + BAD)) "$out"
}

# The system calls counted by --syscalls: reads from and writes to either side, and the
# event loop's waits; `raw_syscalls:sys_enter` counts every call.
SYSCALL_EVENTS=(raw_syscalls:sys_enter syscalls:sys_enter_read syscalls:sys_enter_recvfrom
    syscalls:sys_enter_recvmsg syscalls:sys_enter_write syscalls:sys_enter_writev
    syscalls:sys_enter_sendto syscalls:sys_enter_sendmsg syscalls:sys_enter_epoll_wait
    syscalls:sys_enter_epoll_pwait)

# perf_attach VAR ARGS... : runs `perf ARGS...` on the proxy's processes (SAMPLE_PIDS) in
# the background, its PID in VAR (--syscalls and --where may each have one running) and
# what it prints in perf-VAR.log, and gives it the time to attach before the measured
# requests.
perf_attach() {
    local var=$1
    shift
    perf "$@" -p "$(IFS=,; echo "${SAMPLE_PIDS[*]}")" >"$RUN_DIR/perf-$var.log" 2>&1 &
    printf -v "$var" '%s' "$!"
    sleep 0.5
}

# perf_detach PID : stops it (on SIGINT perf writes what it gathered) and waits for it.
perf_detach() {
    kill -INT "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# voluntary_switches PID... : how often the processes' threads have gone to sleep so far
# (each a context switch the thread asked for, by waiting), summed.
voluntary_switches() {
    local pid
    for pid in "$@"; do
        cat /proc/"$pid"/task/*/status 2>/dev/null
    done | awk '/^voluntary_ctxt_switches:/ { n += $2 } END { print n + 0 }'
}

# syscalls_begin : starts counting the proxy's system calls, its waits that found nothing
# ready (an epoll_wait returning 0: a poll with no timeout, or a timer's expiry), and
# its sleeps.
syscalls_begin() {
    SYSCALLS_OUT="$RUN_DIR/perf-stat.csv"
    perf_attach SYSCALLS_PID stat -x, -e "$(IFS=,; echo "${SYSCALL_EVENTS[*]}")" \
        -e syscalls:sys_exit_epoll_wait --filter 'ret == 0' \
        -e syscalls:sys_exit_epoll_pwait --filter 'ret == 0' -o "$SYSCALLS_OUT"
    SLEEPS0=$(voluntary_switches "${SAMPLE_PIDS[@]}")
}

# syscalls_end MODE KIND ROUND H2LOAD_OUT : stops perf; appends "mode kind round total reads
# writes waits empty-waits sleeps" per request to syscalls.tsv.
syscalls_end() {
    local sleeps n
    sleeps=$(($(voluntary_switches "${SAMPLE_PIDS[@]}") - SLEEPS0))
    perf_detach "$SYSCALLS_PID"
    n=$(awk '/^requests:/ {print $6 - $10}' "$4")
    awk -F, -v mode="$1" -v kind="$2" -v round="$3" -v n="$n" -v sleeps="$sleeps" '
        $3 ~ /raw_syscalls:sys_enter/ { total = $1 }
        $3 ~ /sys_enter_(read|recvfrom|recvmsg)$/ { reads += $1 }
        $3 ~ /sys_enter_(write|writev|sendto|sendmsg)$/ { writes += $1 }
        $3 ~ /sys_enter_epoll_p?wait$/ { waits += $1 }
        $3 ~ /sys_exit_epoll_p?wait$/ { empty += $1 }
        END { if (n > 0) printf "%s\t%s\t%s\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\n", mode, kind, round, total / n, reads / n, writes / n, waits / n, empty / n, sleeps / n }
    ' "$SYSCALLS_OUT" >>"$RUN_DIR/syscalls.tsv"
}

# segments_begin : zeroes nstat's history so that the next call reports this run alone.
segments_begin() {
    nstat -n >/dev/null
}

# segments_end MODE KIND ROUND RESPONSES : appends "mode kind round segments pure-acks
# delayed-acks" per response to segments.tsv (counters of the whole machine's TCP; only
# this run's loopback traffic moves them meanwhile).
segments_end() {
    nstat -z 2>/dev/null | awk -v mode="$1" -v kind="$2" -v round="$3" -v n="$4" '
        $1 == "TcpOutSegs" { segs = $2 }
        $1 == "TcpExtTCPPureAcks" { pure = $2 }
        $1 == "TcpExtDelayedACKs" { delayed = $2 }
        END { if (n > 0) printf "%s\t%s\t%s\t%.3f\t%.4f\t%.4f\n", mode, kind, round, segs / n, pure / n, delayed / n }
    ' >>"$RUN_DIR/segments.tsv"
}

# where_begin : starts sampling the proxy's processes with call graphs.
where_begin() {
    WHERE_OUT="$RUN_DIR/perf-where.data"
    perf_attach WHERE_PID record -q -F 1999 -g -o "$WHERE_OUT"
}

# where_end MODE KIND ROUND : stops sampling; appends "mode kind round user returns send
# rx recv wait other" (percent of the proxy's samples) to where.tsv. The kernel's share
# is the self time of its symbols; returns is the part of user that is system calls'
# returns (syscall_returns.py); send, recv and wait are inclusive (their callees
# counted); rx is every softirq's receive processing, nearly all of it within send; other
# is the kernel's rest.
where_end() {
    perf_detach "$WHERE_PID"
    if [[ ! -s $WHERE_OUT ]]; then
        log "WARNING: perf record wrote nothing for $1 $2 (see $RUN_DIR/perf-WHERE_PID.log); no --where row"
        return 0
    fi
    local returns
    returns=$({ perf script -G -F ip,sym,symoff,dso -i "$WHERE_OUT" 2>/dev/null || true; } |
        python3 "$LOAD_DIR/syscall_returns.py") || returns=nan
    { perf report -i "$WHERE_OUT" --children --sort sym --stdio -g none 2>/dev/null || true; } | awk \
        -v mode="$1" -v kind="$2" -v round="$3" -v returns="$returns" '
        $3 == "[k]" { c = $1; s = $2; sub("%", "", c); sub("%", "", s); v[$4] = c; kernel += s }
        END {
            send = v["tcp_sendmsg"] + 0; recv = v["tcp_recvmsg"] + 0; wait = v["do_epoll_wait"] + 0
            if (kernel > 0 && send + recv + wait == 0)
                print "WARNING: no socket symbols in the kernel samples (unresolved?)" > "/dev/stderr"
            other = kernel - send - recv - wait; if (other < 0) other = 0
            printf "%s\t%s\t%s\t%.1f\t%s\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\n", mode, kind, round,
                100 - kernel, returns, send, v["net_rx_action"] + 0, recv, wait, other
        }' >>"$RUN_DIR/where.tsv"
    rm -f "$WHERE_OUT"
}

measure_tls() { # KIND PROTO ROUND
    local kind=$1 proto=$2 round=$3
    local out="$RUN_DIR/h2load-$1-$2-r$3.txt" lat="$RUN_DIR/h2load-$1-$2-r$3.log"
    start_proxy "$kind" 1 1
    set_target "$PROXY_PORT" https "$proto"
    verify_routing "$kind"
    local warm=$WARMUP_REQUESTS length=$REQUESTS
    [[ $RATE != 0 ]] && warm=$WARMUP length=$DURATION
    h2load_run "$PROXY_PORT" "$proto" "$warm" "$RUN_DIR/warmup.txt"
    sample_begin
    [[ $SYSCALLS == 1 ]] && syscalls_begin
    [[ $SEGMENTS == 1 ]] && segments_begin
    [[ $WHERE == 1 ]] && where_begin
    h2load_run "$PROXY_PORT" "$proto" "$length" "$out" "$lat"
    [[ $WHERE == 1 ]] && where_end "tls-$proto" "$kind" "$round"
    [[ $SEGMENTS == 1 ]] && segments_end "tls-$proto" "$kind" "$round" "$(awk '/^requests:/ {print $6 - $10}' "$out")"
    [[ $SYSCALLS == 1 ]] && syscalls_end "tls-$proto" "$kind" "$round" "$out"
    sample_end "$kind"
    h2load_result "$out" "$lat"
    # What was negotiated (once per proxy and protocol, for the report).
    local info="$RUN_DIR/tlsinfo-$proto-$kind"
    [[ -e $info ]] || awk '/^TLS Protocol:/ {p = $3} /^Cipher:/ {c = $2} /^Server Temp Key:/ {k = $4}
        END {printf "%s %s %s", p, c, k}' "$out" >"$info"
    # Responses received = done - failed (h2load counts failed streams as done).
    record "tls-$proto" "$kind" 1 "$round" "$RPS" "$P50" "$P99" $((NDONE - FAILED)) $((FAILED + BAD)) "$out"
}

if [[ $RATE != 0 ]]; then
    log "rounds $ROUNDS; every mode paced at $RATE req/s, ${DURATION}s per run (+${WARMUP}s warm-up);" \
        "plain: $([[ $RUN_PLAIN == 1 ]] && echo "$CONNS connections, workers: $WORKERS_LIST" || echo off);" \
        "TLS: $([[ $RUN_TLS == 1 ]] && echo "$PROTOS, $TLS_CONNS connections, $STREAMS streams/connection for h2, 1 worker" || echo off)"
else
    log "rounds $ROUNDS; plain: $([[ $RUN_PLAIN == 1 ]] && echo "${DURATION}s per run (+${WARMUP}s warm-up), $CONNS connections, workers: $WORKERS_LIST" || echo off);" \
        "TLS: $([[ $RUN_TLS == 1 ]] && echo "$PROTOS, $REQUESTS requests per run (+$WARMUP_REQUESTS warm-up), $TLS_CONNS connections, $STREAMS streams/connection for h2, 1 worker" || echo off)"
fi
log "pinning: proxy on cpu $PROXY_CPUS; load generator and upstream nginx on cpu $LOAD_CPUS"
for round in $(seq 1 "$ROUNDS"); do
    if [[ $RUN_PLAIN == 1 ]]; then
        for w in $WORKERS_LIST; do
            kinds=(direct graylane nginx haproxy)
            # shellcheck disable=SC2206 # a list of words
            [[ $RUN_FLOOR == 1 && $w == 1 ]] && kinds+=(${FLOOR_KINDS:-floor floor-eager floor-batch floor-uring})
            for kind in "${kinds[@]}"; do
                [[ $kind == direct && $w != "${WORKERS_LIST%% *}" ]] && continue # one direct row per round
                measure_plain "$kind" "$w" "$round"
            done
        done
    fi
    if [[ $RUN_TLS == 1 ]]; then
        for proto in $PROTOS; do
            for kind in graylane nginx haproxy; do
                measure_tls "$kind" "$proto" "$round"
            done
        done
    fi
done

# === report ===

# The awk helpers shared by the table and the paired ratios.
AWK_LIB='
function median(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    if (n == 0) return "nan"
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function spread(list,   a, n, i, lo, hi) {
    n = split(list, a, " "); lo = a[1]; hi = a[1]
    for (i = 2; i <= n; i++) { if (a[i] + 0 < lo + 0) lo = a[i]; if (a[i] + 0 > hi + 0) hi = a[i] }
    return n > 1 ? sprintf(" (%.0f–%.0f)", lo, hi) : ""
}
function range(list,   a, n, i, lo, hi) {
    n = split(list, a, " "); lo = a[1]; hi = a[1]
    for (i = 2; i <= n; i++) { if (a[i] + 0 < lo + 0) lo = a[i]; if (a[i] + 0 > hi + 0) hi = a[i] }
    return sprintf("%.2f×–%.2f×", lo, hi)
}
function ratio(x, y) { return (x == "" || x == "nan" || y == "" || y == "nan" || y + 0 == 0) ? "–" : sprintf("%.2f×", x / y) }
function num(x, fmt) { return (x == "" || x == "nan") ? "–" : sprintf(fmt, x) }
function min2(x, y) { if (x == "" || x == "nan") return y; if (y == "" || y == "nan") return x; return x + 0 < y + 0 ? x : y }
'

# One table row per (mode, proxy) of a TSV whose lines are mode, proxy, round, then
# values: the median over rounds of each value, printed with the printf format in FORMATS
# (space-separated, one per value column).
median_rows() {
    awk -F'\t' -v formats="$2" "$AWK_LIB"'
        BEGIN { nf = split(formats, f, " ") }
        { key = $1 "\t" $2; if (!(key in seen)) { seen[key] = 1; order[++n] = key }
          for (i = 1; i <= nf; i++) v[key, i] = v[key, i] " " $(i + 3) }
        END { for (k = 1; k <= n; k++) { split(order[k], p, "\t"); printf "| %s | %s |", p[1], p[2]
              for (i = 1; i <= nf; i++) printf(" " f[i] " |", median(v[order[k], i])); printf "\n" } }
    ' "$1"
}

# table MODE : the markdown table of one mode.
table() {
    echo "| proxy | workers | req/s (median) | vs nginx | vs haproxy | p50 µs | p99 µs | CPU µs/req user | kernel | total | total vs best peer | user vs nginx | peak RSS MiB | failed |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    awk -F'\t' -v mode="$1" "$AWK_LIB"'
        $1 != mode { next }
        {
            k = $2 SUBSEP $3
            if (!(k in seen)) { seen[k] = 1; order[++n] = k }
            rps[k] = rps[k] " " $5; p50[k] = p50[k] " " $6; p99[k] = p99[k] " " $7
            usr[k] = usr[k] " " $8; ker[k] = ker[k] " " $9; tot[k] = tot[k] " " $10
            if ($11 + 0 > rss[k] + 0) rss[k] = $11
            err[k] += $12
        }
        END {
            for (i = 1; i <= n; i++) {
                k = order[i]; mr[k] = median(rps[k]); mu[k] = median(usr[k]); mk[k] = median(ker[k]); mt[k] = median(tot[k])
            }
            for (i = 1; i <= n; i++) {
                k = order[i]; split(k, kw, SUBSEP)
                ng = "nginx" SUBSEP kw[2]; hp = "haproxy" SUBSEP kw[2]
                direct = kw[1] == "direct"
                best = min2(mt[ng], mt[hp])
                printf "| %s | %s | %.0f%s | %s | %s | %.0f | %.0f | %s | %s | %s | %s | %s | %s | %d |\n",
                    direct ? "direct (no proxy)" : kw[1], direct ? "–" : kw[2], mr[k], spread(rps[k]),
                    ratio(mr[k], mr[ng]), ratio(mr[k], mr[hp]),
                    median(p50[k]), median(p99[k]),
                    num(mu[k], "%.1f"), num(mk[k], "%.1f"), num(mt[k], "%.1f"),
                    direct ? "–" : ratio(mt[k], best), direct ? "–" : ratio(mu[k], mu[ng]),
                    direct ? "–" : sprintf("%.1f", rss[k] / 1024), err[k]
            }
        }' "$RESULTS"
}

# paired_ratios MODE : graylane against the peers round by round (adjacent runs share the
# machine's state, so a per-round ratio cancels drift that the ratio of medians keeps).
paired_ratios() {
    awk -F'\t' -v mode="$1" "$AWK_LIB"'
        $1 != mode { next }
        { rps[$2, $3, $4] = $5; usr[$2, $3, $4] = $8; tot[$2, $3, $4] = $10
          if ($4 > rounds) rounds = $4
          if ($2 != "direct" && $2 != "nginx" && $2 != "haproxy") { if (!(($2, $3) in seen)) { seen[$2, $3] = 1; order[++n] = $2 SUBSEP $3 } } }
        function add(list, x, y) { return (x != "" && x != "nan" && y != "" && y != "nan" && y + 0 > 0) ? list " " x / y : list }
        function show(label, list) { return list == "" ? "" : sprintf("; %s %.2f× (%s)", label, median(list), range(list)) }
        END {
            for (i = 1; i <= n; i++) {
                split(order[i], kw, SUBSEP); p = kw[1]; w = kw[2]
                tb = tn = th = un = rn = rh = ""
                for (r = 1; r <= rounds; r++) {
                    g = tot[p, w, r]; ng = tot["nginx", w, r]; h = tot["haproxy", w, r]
                    tb = add(tb, g, min2(ng, h)); tn = add(tn, g, ng); th = add(th, g, h)
                    un = add(un, usr[p, w, r], usr["nginx", w, r])
                    rn = add(rn, rps[p, w, r], rps["nginx", w, r]); rh = add(rh, rps[p, w, r], rps["haproxy", w, r])
                }
                line = show("total CPU/req vs best peer", tb) show("vs nginx", tn) show("vs haproxy", th) \
                    show("user CPU/req vs nginx", un) show("req/s vs nginx", rn) show("vs haproxy", rh)
                if (line != "") printf "- %s, %s worker(s)%s\n", p, w, line
            }
        }' "$RESULTS" | sed 's/^\(- [a-z-]*, [0-9]* worker(s)\); /\1: /'
}

mode_title() {
    case $1 in
    plain-h1) [[ $RATE != 0 ]] && echo "HTTP/1.1 over plaintext, keep-alive (h2load --h1, $RATE req/s)" ||
        echo "HTTP/1.1 over plaintext, keep-alive (wrk)" ;;
    tls-h2) echo "HTTP/2 over TLS, ALPN h2 (h2load$([[ $RATE != 0 ]] && echo ", $RATE req/s"))" ;;
    tls-h1) echo "HTTP/1.1 over TLS, keep-alive (h2load --h1$([[ $RATE != 0 ]] && echo ", $RATE req/s"))" ;;
    esac
}

# mode_section MODE : title, load description, exact load command, table, paired ratios.
mode_section() {
    local mode=$1
    grep -q "^$mode"$'\t' "$RESULTS" || return 0
    echo "### $(mode_title "$mode")"
    echo
    case $RATE/$mode in
    [1-9]*/plain-h1)
        h2load_cmd '<port>' h1 "$DURATION" "RUN_DIR/h2load.log" http
        echo "$ROUNDS round(s), interleaved, ${DURATION} s per run after ${WARMUP} s warm-up, every" \
            "proxy paced at the same $RATE requests per second (h2load's \`--rps\` per connection)," \
            "h2load 1 thread, $CONNS keep-alive connections, every request with the stable uid" \
            "$TLS_UID in the header (h2load sends the same headers every time). The direct row is" \
            "h2load straight to the stable upstream. Load command:"
        echo
        echo "    ${H2LOAD_CMD[*]}"
        ;;
    */plain-h1)
        wrk_cmd '<port>' "$DURATION"
        echo "$ROUNDS round(s), interleaved, ${DURATION} s per run after ${WARMUP} s warm-up," \
            "wrk 1 thread, $CONNS keep-alive connections, \`benches/load/uids.lua\` (20% of" \
            "requests gray; 70% uid in a header, 30% in a cookie). The direct row is wrk straight" \
            "to the stable upstream. Load command:"
        echo
        echo "    ${WRK_CMD[*]/#$LOAD_DIR/benches/load}"
        ;;
    */tls-*)
        local proto=${mode#tls-} length="$REQUESTS requests per run after $WARMUP_REQUESTS warm-up requests"
        [[ $RATE != 0 ]] && length="${DURATION} s per run after ${WARMUP} s of warm-up requests"
        h2load_cmd '<port>' "$proto" "$([[ $RATE != 0 ]] && echo "$DURATION" || echo "$REQUESTS")" "RUN_DIR/h2load.log"
        echo "$ROUNDS round(s), interleaved, $length" \
            "on other connections;$([[ $RATE != 0 ]] && echo " every proxy paced at the same $RATE requests per second (h2load's \`--rps\` per connection);")" \
            "h2load 1 thread, $TLS_CONNS connections" \
            "$([[ $proto == h2 ]] && echo "× $STREAMS concurrent streams" || echo "(1 request in flight each)"), every request" \
            "with the stable uid $TLS_UID in the header (h2load sends the same headers every time)." \
            "TLS terminated by the proxy with one self-signed ECDSA P-256 certificate; the proxy" \
            "talks plaintext HTTP/1.1 to the same upstream as the plain mode. The measured window" \
            "includes the $TLS_CONNS handshakes. Negotiated:" \
            "$(for k in graylane nginx haproxy; do [[ -e $RUN_DIR/tlsinfo-$proto-$k ]] && printf '%s %s; ' "$k" "$(cat "$RUN_DIR/tlsinfo-$proto-$k")"; done | sed 's/; $/./')" \
            "Load command:"
        echo
        echo "    ${H2LOAD_CMD[*]}"
        ;;
    esac
    echo
    table "$mode"
    echo
    if [[ $RATE != 0 ]]; then
        local short
        short=$(awk -F'\t' -v mode="$mode" -v n="$RATE" '$1 == mode && $5 < 0.97 * n {printf "%s%s (%s worker(s)) round %s at %.0f req/s", sep, $2, $3, $4, $5; sep = "; "}' "$RESULTS")
        if [[ -n $short ]]; then
            echo "Runs that fell more than 3% short of $RATE req/s (the proxy or the load generator could not keep up, so they were not measured at the fixed rate): $short."
        else
            echo "Every run was driven within 3% of $RATE req/s."
        fi
        echo
    fi
    echo "Per-round paired ratios, proxy / peer (median, then min–max over rounds):"
    echo
    paired_ratios "$mode"
    echo
}

report() {
    local when
    when=$(date -u +%Y-%m-%dT%H:%MZ)
    echo "## Load benchmark: graylane vs nginx vs haproxy"
    echo
    echo "Measured $when with:"
    echo
    echo "    $CMDLINE"
    echo
    machine_notes
    echo "- load average at the start: $LOADAVG_START"
    echo "- peers: $("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //'), $("$HAPROXY_BIN" -v 2>&1 | head -1 | awk '{print "haproxy " $3}')$([[ $RUN_PLAIN == 1 && $RATE == 0 ]] && wrk -v 2>&1 | head -1 | awk '{print ", " $1 " " $2}')$([[ $RUN_TLS == 1 || $RATE != 0 ]] && h2load --version 2>&1 | head -1 | awk '{print ", " $1 " " $2}')$([[ $RUN_TLS == 1 ]] && openssl version | awk '{print ", peers built with " $1 " " $2 " (graylane: rustls with ring)"}')"
    echo "- pinning (\`taskset\`): the proxy (all its processes and threads) on cpu $PROXY_CPUS; the load generator (wrk or h2load) and the upstream nginx (1 worker, two \`return 200\` servers) on cpu $LOAD_CPUS"
    echo "- all proxies: keep-alive to the upstreams, X-Forwarded-For/-Proto and a pool header set; graylane's Prometheus metrics on (always) and a 1% sampled access log; nginx and haproxy without access logs. TLS rows: 1 worker each (graylane \`workers: 1\`, nginx \`worker_processes 1\`, haproxy \`nbthread 1\`)"
    echo
    echo "Columns: req/s is the median over rounds, (min–max) when there are several; p50/p99 are"
    echo "medians over rounds of each run's percentile (wrk's, or from h2load's per-request log)."
    echo "CPU µs/req = the proxy's utime (user) and stime (kernel) over the measured run, from"
    echo "\`/proc/PID/stat\` of all its processes (nginx master + workers; all threads), divided by the"
    echo "responses received; each column is its own median over rounds. *total vs best peer* divides"
    echo "by the lower of nginx's and haproxy's total; *user vs nginx* by nginx's user time (the same"
    echo "worker count). Peak RSS = sum of VmHWM, max over rounds. Failed = non-2xx responses plus"
    echo "socket errors (wrk) or failed streams (h2load)."
    echo
    local mode
    for mode in plain-h1 tls-h2 tls-h1; do
        mode_section "$mode"
    done
    if [[ -s $RUN_DIR/syscalls.tsv ]]; then
        echo "### System calls per request (\`--syscalls\`)"
        echo
        echo "\`perf stat\` on the proxy's processes during each measured h2load run, divided by the"
        echo "responses; medians over rounds. Reads: read, recvfrom, recvmsg; writes: write, writev,"
        echo "sendto, sendmsg; waits: epoll_wait, epoll_pwait; all: every system call; empty waits:"
        echo "waits that returned nothing ready; sleeps: the threads' voluntary context switches"
        echo "(\`voluntary_ctxt_switches\` in /proc): each a time a thread blocked, in an event loop"
        echo "of one thread a wait that found nothing ready."
        echo
        echo "| mode | proxy | all | reads | writes | waits | empty waits | sleeps |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|"
        median_rows "$RUN_DIR/syscalls.tsv" "%.2f %.2f %.2f %.2f %.2f %.2f"
        echo
    fi
    if [[ -s $RUN_DIR/where.tsv ]]; then
        echo "### Where the proxy's CPU goes (\`--where\`)"
        echo
        echo "\`perf record -g\` (1999 Hz) on the proxy's processes during each measured run; percent"
        echo "of its samples, medians over rounds. *socket writes*, *reads* and *event waits* are the"
        echo "kernel's \`tcp_sendmsg\`, \`tcp_recvmsg\` and \`do_epoll_wait\` with all they call; on"
        echo "loopback a write also runs the receiving socket's TCP input (\`net_rx_action\`, the"
        echo "column after it, counted wherever it runs, nearly all within writes; the peer's share of"
        echo "the work, which a network card would move to the receiving host); *other kernel* is the"
        echo "rest of the kernel's samples. *of it, syscall returns*: the user space samples on the first"
        echo "instruction after a system call, the kernel's return path run with interrupts off, which"
        echo "the tick-based accounting counts as user time (\`syscall_returns.py\`)."
        echo
        echo "| mode | proxy | user space | of it, syscall returns | socket writes | receiver's TCP input | socket reads | event waits | other kernel |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
        median_rows "$RUN_DIR/where.tsv" "%.1f%% %.1f%% %.1f%% %.1f%% %.1f%% %.1f%% %.1f%%"
        echo
    fi
    if [[ -s $RUN_DIR/segments.tsv ]]; then
        echo "### TCP segments per response (\`--segments\`)"
        echo
        echo "\`nstat\` over each measured run: every TCP segment sent on the machine (the client's, the"
        echo "proxy's both ways and the upstream's; all loopback), divided by the responses; medians"
        echo "over rounds. Pure ACKs carry no data; delayed ACKs are those a timer sent."
        echo
        echo "| mode | proxy | segments | pure ACKs | delayed ACKs |"
        echo "|---|---|---:|---:|---:|"
        median_rows "$RUN_DIR/segments.tsv" "%.2f %.3f %.3f"
        echo
    fi
    local shares
    shares=$(awk -F'\t' '$2 == "graylane" && $13 != "" {printf "%s%s %s", sep, $1, $13; sep = ", "}' "$RESULTS")
    local expect="plain: 20% expected; TLS: 0%, one stable uid"
    [[ $RATE != 0 ]] && expect="0% expected: every mode paced by h2load with one stable uid"
    [[ -n $shares ]] && echo "graylane's own metrics counted these gray shares per run ($expect): $shares." && echo
    echo "Raw per-run rows (mode, proxy, workers, round, req/s, p50 µs, p99 µs, CPU µs/req user, kernel, total, peak RSS KiB, failed, gray share, responses):"
    echo
    echo '```'
    cat "$RESULTS"
    echo '```'
}

report | tee "$OUT"
log "report written to $OUT"
