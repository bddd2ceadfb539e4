#!/usr/bin/env bash
# User-space instructions per request of one or more graylane builds, counted by
# valgrind's callgrind. The count is repeatable for the same binary and requests (runs
# differ by < 0.1%) whatever else the machine is doing, so two builds can be compared
# where CPU times move by ±15% between runs. Kernel work (the syscalls' TCP processing)
# is not counted: run.sh measures the whole CPU time.
#
# Usage: benches/load/instructions.sh [--requests N] [--no-build] [--guard] [BIN...]
#   BIN      graylane binaries to compare (default: this tree's release build)
#   --requests N   measured requests (default 8000), after 200 warm-up requests
#   --guard  also run each binary with a guard on the service (comparison with stable and
#            the latency guard on), for its cost on the request path
#   --shadow also run each binary with a shadow ruleset (a second decision per request)
#   --tls PROTO  the load over TLS instead, PROTO h2 (ALPN h2, 10 connections with 10
#            streams each) or h1 (HTTP/1.1 over TLS, 10 connections): h2load from
#            nghttp2-client sends them, the same stable-uid request every time; the
#            count includes the 10 connections' TLS handshakes (h2load opens new ones
#            for the measured requests), so raise --requests to spread them thinner
#   --peers  also count nginx and haproxy doing the same routing (benches/load's configs,
#            one worker; with --tls, terminating TLS with the same certificate), for a
#            user-space comparison
#   --floor  also count benches/floor's relay (the same routing with nothing else, on
#            epoll and on io_uring): the floor of a lean HTTP/1.1 path
#   --connections C  plaintext: spread the requests over C connections at once (default
#            1: one after another); with many, the proxy serves several per wake-up and
#            its data for all of them competes for the caches, as under wrk
#   --cache  also simulate the caches and branch predictor (callgrind --cache-sim=yes
#            --branch-sim=yes): first-level data and instruction misses, last-level misses
#            and mispredicted branches per request, what instructions alone do not show.
#            The first levels are the host's (32 KiB each here); the last level is set to
#            32 MiB, 16-way (an EPYC's L3), because this VM's CPUID reports one of 256 MiB,
#            direct-mapped. The simulator does not see the kernel write the bytes a read
#            returns, so its last-level misses include first reads of such bytes, which
#            are warm on a real CPU
#   --atomics  also count the locked read-modify-write instructions executed per request
#            (atomic increments, compare-and-swaps, swaps; locked.py), which a
#            single-threaded worker pays for in its libraries' reference counts and wakers
#   --profile DIR  keep each run's callgrind dump as DIR/callgrind-K.out (K: the row
#            number), to read with `callgrind_annotate --inclusive=yes DIR/callgrind-1.out`
# Each binary runs under callgrind with the load benchmark's config (1 worker, metrics
# and a 1% access log on) in front of the load benchmark's upstream nginx; one client
# connection sends the requests one after another (seq_client.py, uids.lua's mix), so
# the runtime's batching does not vary between runs (with --connections it does: such
# counts move by a few percent from run to run). The counters are zeroed after the
# warm-up and read after the last request: startup and shutdown are not counted.
set -euo pipefail

source "$(dirname "$0")/lib.sh"

N=8000
GUARD=0
SHADOW=0
BINS=()
PROFILE_DIR=""
TLS=""
PEERS=0
FLOOR=0
CONNS=1
CACHE=0
ATOMICS=0
while [[ $# -gt 0 ]]; do
    case $1 in
    --requests) N=$2; shift ;;
    --no-build) export NO_BUILD=1 ;;
    --guard) GUARD=1 ;;
    --shadow) SHADOW=1 ;;
    --profile) PROFILE_DIR=$2; shift ;;
    --tls) TLS=$2; shift ;;
    --peers) PEERS=1 ;;
    --floor) FLOOR=1 ;;
    --connections) CONNS=$2; shift ;;
    --cache) CACHE=1 ;;
    --atomics) ATOMICS=1 ;;
    -h | --help) sed -n "2,45p" "$0"; exit 0 ;;
    -*) die "unknown argument $1 (see --help)" ;;
    *) BINS+=("$1") ;;
    esac
    shift
done

[[ -z $TLS || $TLS == h2 || $TLS == h1 ]] || die "--tls takes h2 or h1, not '$TLS'"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "--connections takes a positive number, not '$CONNS'"
[[ $CONNS == 1 || -z $TLS ]] || die "--connections is for the plaintext load (h2load opens 10)"
((N % CONNS == 0)) || die "--requests must be a multiple of --connections"
[[ -z $TLS || $FLOOR == 0 ]] || die "--floor is plaintext HTTP/1.1 only"

STABLE_PORT=18101
GRAY_PORT=18102
GRAYLANE_PORT=18200
ADMIN_PORT=18290

trap cleanup EXIT
make_run_dir
ensure_tools nginx:nginx valgrind:valgrind python3:python3 curl:curl
[[ -z $TLS ]] || ensure_tools h2load:nghttp2-client openssl:openssl
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
if [[ ${#BINS[@]} == 0 ]]; then
    build_graylane
    BINS=("$GRAYLANE_BIN")
fi
for p in $STABLE_PORT $GRAY_PORT $GRAYLANE_PORT $ADMIN_PORT; do
    port_free "$p" || die "port $p on 127.0.0.1 is in use; stop whatever holds it"
done

# With --tls the peers' configs get the certificate that graylane gets (made below).
LISTEN_TLS="" NGINX_TLS="" HAPROXY_TLS="" PEER_SCHEME=http
if [[ -n $TLS ]]; then
    PEER_SCHEME=https
    LISTEN_TLS=" ssl http2" # nginx 1.25.1+ wants `http2 on;` instead
    NGINX_TLS="ssl_certificate $RUN_DIR/cert.pem; ssl_certificate_key $RUN_DIR/key.pem;"
    nginx_ver=$("$NGINX_BIN" -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
    if [[ $(printf '%s\n1.25.1\n' "$nginx_ver" | sort -V | head -1) == 1.25.1 ]]; then
        LISTEN_TLS=" ssl" NGINX_TLS="$NGINX_TLS http2 on;"
    fi
    HAPROXY_TLS=" ssl crt $RUN_DIR/haproxy.pem alpn h2,http/1.1"
fi
render() {
    sed -e "s|@RUN@|$RUN_DIR|g" -e "s|@WORKERS@|1|g" -e "s|@PORT@|$2|g" \
        -e "s|@ADMIN_PORT@|$ADMIN_PORT|g" -e "s|@STABLE_PORT@|$STABLE_PORT|g" \
        -e "s|@GRAY_PORT@|$GRAY_PORT|g" -e "s|@LISTEN_TLS@|$LISTEN_TLS|g" \
        -e "s|@NGINX_TLS@|$NGINX_TLS|g" -e "s|@HAPROXY_TLS@|$HAPROXY_TLS|g" \
        -e "s|@SCHEME@|$PEER_SCHEME|g" "$1" >"$3"
}

render "$LOAD_DIR/upstream-nginx.conf" 0 "$RUN_DIR/upstream-nginx.conf"
start_bg upstream "$NGINX_BIN" -p "$RUN_DIR" -c "$RUN_DIR/upstream-nginx.conf" \
    -e "$RUN_DIR/upstream-nginx.error.log" -g 'daemon off;'
wait_http "http://127.0.0.1:$STABLE_PORT/" 15 "$BG_PID" || die "upstream nginx did not start"
render "$LOAD_DIR/graylane.yaml" "$GRAYLANE_PORT" "$RUN_DIR/graylane.yaml"
SCHEME=http
if [[ -n $TLS ]]; then
    SCHEME=https
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -keyout "$RUN_DIR/key.pem" -out "$RUN_DIR/cert.pem" -subj /CN=localhost \
        >"$RUN_DIR/openssl.log" 2>&1 || die "openssl: $(cat "$RUN_DIR/openssl.log")"
    cat "$RUN_DIR/cert.pem" "$RUN_DIR/key.pem" >"$RUN_DIR/haproxy.pem"
    sed -i "/^    bind: \"127.0.0.1:$GRAYLANE_PORT\"/a\\    tls: { cert: \"$RUN_DIR/cert.pem\", key: \"$RUN_DIR/key.pem\" }" \
        "$RUN_DIR/graylane.yaml"
    grep -q '^    tls: ' "$RUN_DIR/graylane.yaml" || die "could not add tls: to graylane.yaml"
fi
# load COUNT: COUNT requests of the benchmark's mix (plaintext), or over TLS with h2load.
load() {
    if [[ -z $TLS ]]; then
        python3 "$LOAD_DIR/seq_client.py" "$GRAYLANE_PORT" "$1" "$CONNS"
        return
    fi
    local proto=() streams=10
    [[ $TLS == h1 ]] && proto=(--h1) streams=1
    h2load -t1 -c10 -m"$streams" -n"$1" "${proto[@]}" -H 'xdw-kefu-uid: 52345678' \
        -H 'xdw-app-version: 5.3.1' "https://127.0.0.1:$GRAYLANE_PORT/chat/send" \
        >"$RUN_DIR/h2load.out" 2>&1 || die "h2load failed: $(tail -5 "$RUN_DIR/h2load.out")"
    grep -q "$1 succeeded" "$RUN_DIR/h2load.out" || die "h2load: not every request succeeded: $(grep 'requests:' "$RUN_DIR/h2load.out")"
}
cp "$LOAD_DIR/rules.yaml" "$RUN_DIR/rules.yaml"
# The same config with a guard on the service, every check on: gray and stable outcomes
# and latencies both recorded on the request path.
sed -e '/gray:   { endpoints/a\    guard: { max_error_rate: 0.05, min_requests: 50, window: 30s, compare_to_stable: true, max_latency_ratio: 3 }' \
    "$RUN_DIR/graylane.yaml" >"$RUN_DIR/graylane-guard.yaml"
grep -q 'guard:' "$RUN_DIR/graylane-guard.yaml" || die "could not add the guard to the config"

# The same config with a shadow ruleset: the load's ruleset widened, decided beside it.
{ cat "$RUN_DIR/graylane.yaml"; echo "shadow_rules_file: rules.next.yaml"; } >"$RUN_DIR/graylane-shadow.yaml"
sed -e 's/10000000-10499999/10000000-10999999/' "$RUN_DIR/rules.yaml" >"$RUN_DIR/rules.next.yaml"

RUNS=()
for bin in "${BINS[@]}"; do
    RUNS+=("$bin|graylane.yaml")
    [[ $GUARD == 1 ]] && RUNS+=("$bin|graylane-guard.yaml")
    [[ $SHADOW == 1 ]] && RUNS+=("$bin|graylane-shadow.yaml")
done
if [[ $PEERS == 1 ]]; then
    ensure_tools haproxy:haproxy
    render "$LOAD_DIR/nginx-proxy.conf" "$GRAYLANE_PORT" "$RUN_DIR/nginx-proxy.conf"
    render "$LOAD_DIR/haproxy.cfg" "$GRAYLANE_PORT" "$RUN_DIR/haproxy.cfg"
    RUNS+=("$NGINX_BIN|nginx-proxy.conf" "$(command -v haproxy)|haproxy.cfg")
fi
if [[ $FLOOR == 1 ]]; then
    build_floor
    RUNS+=("$FLOOR_BIN|epoll" "$FLOOR_BIN|uring")
fi

SIM=()
HEADER="| binary | config | instructions per request |"
RULE="|---|---|---:|"
if [[ $CACHE == 1 ]]; then
    SIM+=(--cache-sim=yes --branch-sim=yes --LL=33554432,16,64)
    HEADER+=" D1 misses | I1 misses | LL misses | mispredicted branches |"
    RULE+="---:|---:|---:|---:|"
fi
if [[ $ATOMICS == 1 ]]; then
    ensure_tools objdump:binutils
    SIM+=(--dump-instr=yes --compress-pos=no --compress-strings=no)
    HEADER+=" locked instructions |"
    RULE+="---:|"
fi
printf '%s\n%s\n' "$HEADER" "$RULE"
for run in "${RUNS[@]}"; do
    bin=${run%%|*}
    cfg=${run#*|}
    [[ -x $bin ]] || die "no binary at $bin"
    out="$RUN_DIR/callgrind.out"
    case $cfg in
    # One process each, in the foreground: callgrind counts the one that serves.
    nginx-proxy.conf) args=(-p "$RUN_DIR" -c "$RUN_DIR/$cfg" -e "$RUN_DIR/nginx-proxy.error.log"
        -g 'daemon off; master_process off;') ;;
    haproxy.cfg) args=(-db -f "$RUN_DIR/$cfg") ;;
    epoll | uring) args=(--listen "127.0.0.1:$GRAYLANE_PORT" --stable "127.0.0.1:$STABLE_PORT"
        --gray "127.0.0.1:$GRAY_PORT" --io "$cfg") ;;
    *) args=(run --config "$RUN_DIR/$cfg") ;;
    esac
    RUST_LOG=warn,graylane::access=info start_bg callgrind valgrind --tool=callgrind \
        "${SIM[@]+"${SIM[@]}"}" --callgrind-out-file="$out" "$bin" "${args[@]}"
    pid=$BG_PID
    wait_http "$SCHEME://127.0.0.1:$GRAYLANE_PORT/" 60 "$pid" || die "$bin did not start under valgrind"
    load $(((200 + CONNS - 1) / CONNS * CONNS)) # every connection warmed up
    callgrind_control --zero "$pid" >/dev/null 2>&1
    load "$N"
    callgrind_control --dump "$pid" >/dev/null 2>&1
    ir=$(awk '/^summary:/{print $2}' "$out.1")
    [[ -n $ir ]] || die "no callgrind dump for $bin"
    sim=""
    if [[ $CACHE == 1 ]]; then
        # The events line names the summary's columns.
        sim=$(awk -v n="$N" '/^events:/ {for (i = 2; i <= NF; i++) col[$i] = i}
            /^summary:/ {
                d1 = $col["D1mr"] + $col["D1mw"]; i1 = $col["I1mr"]
                ll = $col["DLmr"] + $col["DLmw"] + $col["ILmr"]; bm = $col["Bcm"] + $col["Bim"]
                printf " %.1f | %.1f | %.2f | %.1f |", d1 / n, i1 / n, ll / n, bm / n }' "$out.1")
    fi
    [[ $ATOMICS == 1 ]] && sim+=" $(python3 "$LOAD_DIR/locked.py" "$out.1" "$N") |"
    stop_pid "$pid"
    ROW=$((${ROW:-0} + 1))
    if [[ -n $PROFILE_DIR ]]; then
        mkdir -p "$PROFILE_DIR"
        cp "$out.1" "$PROFILE_DIR/callgrind-$ROW.out"
    fi
    rm -f "$out" "$out".*
    printf '| %s | %s | %s |%s\n' "$bin" "$cfg${TLS:+ (TLS $TLS)}$([[ $CONNS != 1 ]] && echo ", $CONNS connections")" "$((ir / N))" "$sim"
done
