#!/usr/bin/env bash
# Side-by-side load benchmark: graylane vs nginx vs haproxy doing the same gray routing
# (uid from the `xdw-kefu-uid` header, else cookie; uid in 10000000-10499999 -> gray),
# plus a direct-to-upstream row (the load generator's and upstream's own ceiling).
#
# Usage: benches/load/run.sh [--quick] [--rounds N] [--duration SECONDS] [--warmup SECONDS]
#                            [--connections N] [--workers "1 2"] [--no-build]
#   --quick      1 round, 3 s per run, 1 s warm-up (under 60 s once built and installed)
#   default      3 rounds, 10 s per run, 2 s warm-up
# Environment: PROXY_CPUS (default 1) and LOAD_CPUS (default 0) are `taskset -c` lists;
# KEEP_RUN_DIR=1 keeps configs, logs and raw wrk output.
#
# Installs nginx, haproxy and wrk from Debian packages if missing (needs root), builds
# graylane with `cargo build --release`, then for each round runs every (workers, proxy)
# pair in a fixed interleaved order (direct, graylane, nginx, haproxy, direct, ...) so that
# drift of the machine hits all of them alike. Each run starts the proxy fresh, checks its
# routing with curl (fails loudly when a body is wrong), warms up, then measures with wrk.
# Prints a markdown table and writes it to benches/load/results.md.
set -euo pipefail

source "$(dirname "$0")/lib.sh"

ARGS=$*
ROUNDS=3
DURATION=10
WARMUP=2
CONNS=64
WORKERS_LIST="1 2"
while [[ $# -gt 0 ]]; do
    case $1 in
    --quick) ROUNDS=1 DURATION=3 WARMUP=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --connections) CONNS=$2; shift ;;
    --workers) WORKERS_LIST=$2; shift ;;
    --no-build) export NO_BUILD=1 ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

PROXY_CPUS=${PROXY_CPUS:-1}
LOAD_CPUS=${LOAD_CPUS:-0}
STABLE_PORT=18101
GRAY_PORT=18102
GRAYLANE_PORT=18200
ADMIN_PORT=18290
NGINX_PORT=18300
HAPROXY_PORT=18400
PATH_UNDER_TEST=/chat/send
CLK_TCK=$(getconf CLK_TCK)

trap cleanup EXIT
make_run_dir
RESULTS="$RUN_DIR/results.tsv"
: >"$RESULTS"

ensure_tools nginx:nginx haproxy:haproxy wrk:wrk curl:curl taskset:util-linux
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY_BIN=$(command -v haproxy || echo /usr/sbin/haproxy)
build_graylane

for p in $STABLE_PORT $GRAY_PORT $GRAYLANE_PORT $ADMIN_PORT $NGINX_PORT $HAPROXY_PORT; do
    port_free "$p" || die "port $p on 127.0.0.1 is in use; stop whatever holds it"
done

# render TEMPLATE OUT WORKERS PORT : substitutes the @...@ placeholders.
render() {
    sed -e "s|@RUN@|$RUN_DIR|g" -e "s|@WORKERS@|$3|g" -e "s|@PORT@|$4|g" \
        -e "s|@ADMIN_PORT@|$ADMIN_PORT|g" -e "s|@STABLE_PORT@|$STABLE_PORT|g" \
        -e "s|@GRAY_PORT@|$GRAY_PORT|g" "$1" >"$2"
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

# start_proxy KIND WORKERS : starts one proxy pinned to PROXY_CPUS; sets PROXY_PID and
# PROXY_PORT. KIND=direct starts nothing and points at the stable upstream.
start_proxy() {
    local kind=$1 w=$2 dir="$RUN_DIR/$1-w$2"
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
        cp "$LOAD_DIR/rules.yaml" "$dir/rules.yaml"
        RUST_LOG=warn,graylane::access=info start_bg "graylane-w$w" taskset -c "$PROXY_CPUS" "$GRAYLANE_BIN" run --config "$dir/graylane.yaml"
        ;;
    nginx)
        PROXY_PORT=$NGINX_PORT
        render "$LOAD_DIR/nginx-proxy.conf" "$dir/nginx.conf" "$w" "$PROXY_PORT"
        start_bg "nginx-w$w" taskset -c "$PROXY_CPUS" "$NGINX_BIN" -p "$dir" -c "$dir/nginx.conf" \
            -e "$dir/error.log" -g 'daemon off;'
        ;;
    haproxy)
        PROXY_PORT=$HAPROXY_PORT
        render "$LOAD_DIR/haproxy.cfg" "$dir/haproxy.cfg" "$w" "$PROXY_PORT"
        start_bg "haproxy-w$w" taskset -c "$PROXY_CPUS" "$HAPROXY_BIN" -db -f "$dir/haproxy.cfg"
        ;;
    esac
    PROXY_PID=$BG_PID
    if ! wait_http "http://127.0.0.1:$PROXY_PORT/" 15 "$PROXY_PID"; then
        cat "$RUN_DIR/$kind-w$w.log" >&2 || true
        die "$kind (workers $w) did not start"
    fi
    if [[ $kind == graylane ]]; then
        wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" || die "graylane admin did not come up"
    fi
}

# check_route PORT KIND EXPECTED DESCRIPTION CURL_ARGS... : fails loudly on a wrong body.
check_route() {
    local port=$1 kind=$2 want=$3 what=$4 got
    shift 4
    got=$(curl -s --max-time 5 "$@" "http://127.0.0.1:$port$PATH_UNDER_TEST") || got="(curl failed)"
    [[ $got == "$want" ]] || die "$kind routes $what to '$got', expected '$want'"
}

verify_routing() {
    local port=$1 kind=$2
    [[ $kind == direct ]] && return 0
    check_route "$port" "$kind" gray "header uid 10200000" -H 'xdw-kefu-uid: 10200000'
    check_route "$port" "$kind" gray "header uid 10000000 (range start)" -H 'xdw-kefu-uid: 10000000'
    check_route "$port" "$kind" gray "header uid 10499999 (range end)" -H 'xdw-kefu-uid: 10499999'
    check_route "$port" "$kind" gray "header uid 0010000000 (leading zeros)" -H 'xdw-kefu-uid: 0010000000'
    check_route "$port" "$kind" stable "header uid 9999999" -H 'xdw-kefu-uid: 9999999'
    check_route "$port" "$kind" stable "header uid 10500000" -H 'xdw-kefu-uid: 10500000'
    check_route "$port" "$kind" stable "header uid 104999990" -H 'xdw-kefu-uid: 104999990'
    check_route "$port" "$kind" gray "cookie uid 10200000" -H 'Cookie: lang=zh; xdw-kefu-uid=10200000; theme=dark'
    check_route "$port" "$kind" stable "cookie uid 60000000" -H 'Cookie: lang=zh; xdw-kefu-uid=60000000'
    check_route "$port" "$kind" stable "header 50000000 over cookie 10200000" \
        -H 'xdw-kefu-uid: 50000000' -H 'Cookie: xdw-kefu-uid=10200000'
    check_route "$port" "$kind" stable "invalid header over gray cookie" \
        -H 'xdw-kefu-uid: abc' -H 'Cookie: xdw-kefu-uid=10200000'
    check_route "$port" "$kind" stable "no uid"
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

wrk_run() { # PORT SECONDS OUTFILE
    taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNS" -d"$2s" --latency -s "$LOAD_DIR/uids.lua" \
        "http://127.0.0.1:$1$PATH_UNDER_TEST" >"$3" 2>&1 || die "wrk failed: $(cat "$3")"
}

# gray_share : share of graylane's requests that went to gray, from its own metrics.
gray_share() {
    curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '
        /^graylane_requests_total\{/ { n = $NF; total += n; if ($0 ~ /pool="gray"/) gray += n }
        END { if (total > 0) printf "%.1f%%", 100 * gray / total; else print "?" }'
}

measure() { # KIND WORKERS ROUND
    local kind=$1 w=$2 round=$3 out="$RUN_DIR/wrk-$1-w$2-r$3.txt"
    start_proxy "$kind" "$w"
    verify_routing "$PROXY_PORT" "$kind"
    wrk_run "$PROXY_PORT" "$WARMUP" "$RUN_DIR/warmup.txt"
    local pids=() t0 t1
    if [[ -n $PROXY_PID ]]; then
        mapfile -t pids < <(proc_tree "$PROXY_PID")
    fi
    t0=$(cpu_ticks "${pids[@]+"${pids[@]}"}")
    wrk_run "$PROXY_PORT" "$DURATION" "$out"
    t1=$(cpu_ticks "${pids[@]+"${pids[@]}"}")
    local rss=0 share=""
    if [[ -n $PROXY_PID ]]; then
        mapfile -t pids < <(proc_tree "$PROXY_PID")
        rss=$(rss_peak_kib "${pids[@]}")
        [[ $kind == graylane ]] && share=$(gray_share)
        stop_pid "$PROXY_PID"
    fi

    local reqs rps p50 p99 non2xx sockerr cpu_us
    reqs=$(awk '/requests in/ {print $1}' "$out")
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$out")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$out")")
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$out")
    sockerr=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$out")
    [[ -n $reqs && -n $rps ]] || die "cannot parse wrk output $out"
    if [[ -n $PROXY_PID ]]; then
        cpu_us=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.2f", d * 1e6 / hz / n}')
    else
        cpu_us=nan
    fi
    local errors=$((${non2xx:-0} + ${sockerr:-0}))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$w" "$round" "$rps" "$p50" "$p99" \
        "$cpu_us" "$rss" "$errors" "$share" >>"$RESULTS"
    log "round $round $kind w$w: $rps req/s, p50 ${p50}us, p99 ${p99}us, cpu ${cpu_us}us/req, peak rss ${rss}KiB, errors $errors${share:+, gray share $share}"
    [[ $errors == 0 ]] || log "WARNING: $kind w$w had $errors failed requests (see $out)"
}

log "rounds $ROUNDS, ${DURATION}s per run (+${WARMUP}s warm-up), $CONNS connections, workers: $WORKERS_LIST"
log "proxy on cpu $PROXY_CPUS; wrk and upstream on cpu $LOAD_CPUS"
for round in $(seq 1 "$ROUNDS"); do
    for w in $WORKERS_LIST; do
        for kind in direct graylane nginx haproxy; do
            [[ $kind == direct && $w != "${WORKERS_LIST%% *}" ]] && continue # one direct row per round
            measure "$kind" "$w" "$round"
        done
    done
done

# === report ===

report() {
    local when
    when=$(date -u +%Y-%m-%dT%H:%MZ)
    echo "## Load benchmark: graylane vs nginx vs haproxy"
    echo
    echo "Measured $when with \`benches/load/run.sh${ARGS:+ $ARGS}\`:" \
        "$ROUNDS round(s), interleaved, ${DURATION} s per run after ${WARMUP} s warm-up," \
        "wrk 1 thread, $CONNS keep-alive connections, \`benches/load/uids.lua\` (20% of" \
        "requests gray; 70% uid in a header, 30% in a cookie)."
    echo
    machine_notes
    echo "- peers: $("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //'), $("$HAPROXY_BIN" -v 2>&1 | head -1 | awk '{print "haproxy " $3}'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
    echo "- pinning: proxy on cpu $PROXY_CPUS; wrk and the upstream nginx (1 worker, two \`return 200\` servers) on cpu $LOAD_CPUS"
    echo "- all proxies: keep-alive to the upstreams, X-Forwarded-For/-Proto and a pool header set; graylane's Prometheus metrics on (always) and a 1% sampled access log; nginx and haproxy without access logs"
    echo
    echo "| proxy | workers | req/s (median) | vs nginx | vs haproxy | p50 µs | p99 µs | CPU µs/req | vs nginx | vs haproxy | peak RSS MiB | failed |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    awk -F'\t' '
        function median(list,   a, n, i, j, t) {
            n = split(list, a, " ")
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
            if (n == 0) return "nan"
            return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        function spread(list,   a, n, i, lo, hi) {
            n = split(list, a, " "); lo = a[1]; hi = a[1]
            for (i = 2; i <= n; i++) { if (a[i] + 0 < lo + 0) lo = a[i]; if (a[i] + 0 > hi + 0) hi = a[i] }
            return n > 1 ? sprintf(" (%.0f–%.0f)", lo, hi) : ""
        }
        function ratio(x, y) { return (x == "nan" || y == "" || y == "nan" || y + 0 == 0) ? "–" : sprintf("%.2f×", x / y) }
        {
            k = $1 SUBSEP $2
            if (!(k in seen)) { seen[k] = 1; order[++n] = k }
            rps[k] = rps[k] " " $4; p50[k] = p50[k] " " $5; p99[k] = p99[k] " " $6; cpu[k] = cpu[k] " " $7
            if ($8 + 0 > rss[k] + 0) rss[k] = $8
            err[k] += $9
        }
        END {
            for (i = 1; i <= n; i++) {
                k = order[i]; mr[k] = median(rps[k]); mc[k] = median(cpu[k])
            }
            for (i = 1; i <= n; i++) {
                k = order[i]; split(k, kw, SUBSEP)
                ng = "nginx" SUBSEP kw[2]; hp = "haproxy" SUBSEP kw[2]
                direct = kw[1] == "direct"
                printf "| %s | %s | %.0f%s | %s | %s | %.0f | %.0f | %s | %s | %s | %s | %d |\n",
                    direct ? "direct (no proxy)" : kw[1], direct ? "–" : kw[2], mr[k], spread(rps[k]),
                    ratio(mr[k], mr[ng]), ratio(mr[k], mr[hp]),
                    median(p50[k]), median(p99[k]),
                    direct ? "–" : sprintf("%.1f", mc[k]),
                    direct ? "–" : ratio(mc[k], mc[ng]), direct ? "–" : ratio(mc[k], mc[hp]),
                    direct ? "–" : sprintf("%.1f", rss[k] / 1024), err[k]
            }
        }' "$RESULTS"
    echo
    echo "req/s: median over rounds, (min–max) when there are several. Ratios compare rows with the"
    echo "same worker count (req/s: higher is better; CPU: lower is better); the direct row is compared"
    echo "with the 1-worker rows."
    echo "CPU µs/req = utime+stime of all the proxy's processes (nginx master+workers) over the"
    echo "measured run, divided by the requests wrk completed; peak RSS = sum of VmHWM, max over rounds."
    echo
    paired_ratios
    echo
    local shares
    shares=$(awk -F'\t' '$1 == "graylane" && $10 != "" {printf "%s%s", sep, $10; sep = ", "}' "$RESULTS")
    [[ -n $shares ]] && echo "graylane's own metrics counted these gray shares per run: $shares."
    echo
    echo "Raw per-run rows (proxy, workers, round, req/s, p50 µs, p99 µs, CPU µs/req, peak RSS KiB, failed, gray share):"
    echo
    echo '```'
    cat "$RESULTS"
    echo '```'
}

# paired_ratios : graylane against each peer round by round (adjacent runs share the
# machine's state, so a per-round ratio cancels drift that the ratio of medians keeps).
paired_ratios() {
    echo "Per-round paired ratios, graylane / peer (median, then min–max over rounds):"
    echo
    awk -F'\t' '
        function median(list,   a, n, i, j, t) {
            n = split(list, a, " ")
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
            return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        function range(list,   a, n, i, lo, hi) {
            n = split(list, a, " "); lo = a[1]; hi = a[1]
            for (i = 2; i <= n; i++) { if (a[i] + 0 < lo + 0) lo = a[i]; if (a[i] + 0 > hi + 0) hi = a[i] }
            return sprintf("%.2f×–%.2f×", lo, hi)
        }
        { cpu[$1, $2, $3] = $7; rps[$1, $2, $3] = $4; if ($3 > rounds) rounds = $3; if ($1 == "graylane") ws[$2] = 1 }
        END {
            for (w in ws) for (pi = 1; pi <= 2; pi++) {
                peer = pi == 1 ? "nginx" : "haproxy"; c = ""; r = ""
                for (round = 1; round <= rounds; round++) {
                    g = cpu["graylane", w, round]; q = cpu[peer, w, round]
                    if (g != "" && q + 0 > 0) c = c " " g / q
                    g = rps["graylane", w, round]; q = rps[peer, w, round]
                    if (g != "" && q + 0 > 0) r = r " " g / q
                }
                if (c != "")
                    printf "- %s worker(s), vs %s: CPU µs/req %.2f× (%s), req/s %.2f× (%s)\n",
                        w, peer, median(c), range(c), median(r), range(r)
            }
        }' "$RESULTS" | sort
}

report | tee "$LOAD_DIR/results.md"
