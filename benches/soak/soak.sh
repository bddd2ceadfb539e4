#!/usr/bin/env bash
# Soak: graylane under a steady mixed load for an hour, with its rules reloaded every
# minute, thousands of WebSocket links held open, and faults injected in one gray
# upstream. It measures leaks, not speed: resident memory after warm-up vs at the end,
# open fds before, at peak and after the load, requests lost to reloads, re-homed links.
#
# Usage: benches/soak/soak.sh [--duration SECONDS] [--links N] [options]
#   --duration S      load phase length (default 3600); warm-up is the first 1/12 of it
#                     (5 minutes of an hour)
#   --links N         WebSocket links held open (default 5000)
#   --rate R          HTTP requests/s in total (default 200)
#   --conns C         HTTP keep-alive connections (default 16)
#   --reload-every S  seconds between rules edits (default 60)
#   --fd-wait S       how long fds may take to return to baseline after the load (default 120)
#   --out DIR         run directory (default benches/soak/runs/YYYYmmdd-HHMMSS)
#   --no-build        use the existing target/release/graylane
#   -h, --help        this text
# Environment: SOAK_PORT_BASE (default 18400; ports BASE+1..+5, +10, +90 on 127.0.0.1),
# GRAYLANE_BIN (a graylane binary to soak instead of the release build), GRAYLANE_BIN_FROM
# (the commit that binary was built from, for the report).
# Writes samples.csv (every 10 s), reloads.csv, summary.md and every log into the run
# directory and prints summary.md. Exit 0 when every criterion passed, 1 otherwise.
# See benches/soak/README.md for what is measured and how.
set -euo pipefail

SOAK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../load/lib.sh
source "$SOAK_DIR/../load/lib.sh"

DURATION=3600
LINKS=5000
RATE=200
CONNS=16
RELOAD_EVERY=60
FD_WAIT=120
OUT=""
while [[ $# -gt 0 ]]; do
    case $1 in
    --duration) DURATION=$2; shift ;;
    --links) LINKS=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --conns) CONNS=$2; shift ;;
    --reload-every) RELOAD_EVERY=$2; shift ;;
    --fd-wait) FD_WAIT=$2; shift ;;
    --out) OUT=$2; shift ;;
    --no-build) export NO_BUILD=1 ;;
    -h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
for v in DURATION LINKS RATE CONNS RELOAD_EVERY FD_WAIT; do
    [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || die "--${v,,} must be a positive integer (got ${!v})"
done
WARMUP=$((DURATION / 12))
SAMPLE_EVERY=10
# The soak's grace and spread: every re-home of one reload is done 15 s after it.
REHOME_GRACE=5
REHOME_SPREAD=10
# No rules edit in the last QUIET seconds of the load, so every re-home it causes is
# over (and every link back) when the load stops.
QUIET=$((REHOME_GRACE + REHOME_SPREAD + 10))

BASE=${SOAK_PORT_BASE:-18400}
NGX_STABLE=$((BASE + 1))
NGX_GRAY=$((BASE + 2))
INJECTOR=$((BASE + 3))
WS_STABLE=$((BASE + 4))
WS_GRAY=$((BASE + 5))
PORT=$((BASE + 10))
ADMIN_PORT=$((BASE + 90))
ADMIN="127.0.0.1:$ADMIN_PORT"

# ---------------------------------------------------------------- limits of the machine
# Each link is two sockets in graylane (client and upstream side), one in ws_links.py and
# one in upstreams.py; all of them inherit this shell's limit.
hard=$(ulimit -Hn)
[[ $hard == unlimited ]] && hard=1048576
NEED_FDS=$((2 * LINKS + 2 * CONNS + 1000))
ulimit -n "$hard" || die "cannot raise the open-files soft limit to the hard limit $hard"
((hard >= NEED_FDS)) ||
    die "open-files hard limit is $hard; $LINKS links need $NEED_FDS in graylane (2 per link + headroom). Raise it (ulimit -Hn, limits.conf, systemd LimitNOFILE) or use fewer --links"
read -r port_lo port_hi </proc/sys/net/ipv4/ip_local_port_range
PORT_RANGE=$((port_hi - port_lo + 1))
# Per destination: every link's client socket (to graylane) and upstream socket (to one
# of two echo ports), plus re-homed links' sockets in TIME_WAIT, plus HTTP connections.
NEED_PORTS=$((LINKS + 4000))
((PORT_RANGE >= NEED_PORTS)) ||
    die "net.ipv4.ip_local_port_range is $port_lo-$port_hi ($PORT_RANGE ports); $LINKS links need about $NEED_PORTS per destination"

# ---------------------------------------------------------------- run directory, build
if [[ -z $OUT ]]; then
    OUT="$SOAK_DIR/runs/$(date +%Y%m%d-%H%M%S)"
fi
mkdir -p "$OUT"
RUN_DIR=$(cd "$OUT" && pwd)
KEEP_RUN_DIR=1
trap cleanup EXIT
log "run directory $RUN_DIR"
log "open-files limit $(ulimit -n) (need $NEED_FDS); local port range $port_lo-$port_hi"

ensure_tools nginx:nginx curl:curl jq:jq python3:python3
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
if [[ -n ${GRAYLANE_BIN:-} ]]; then
    [[ -x $GRAYLANE_BIN ]] || die "GRAYLANE_BIN=$GRAYLANE_BIN is not executable"
    log "using GRAYLANE_BIN=$GRAYLANE_BIN"
else
    build_graylane
fi
# A private copy: a rebuild in the work tree during the hour must not touch the binary
# under test.
cp "$GRAYLANE_BIN" "$RUN_DIR/graylane"
GRAYLANE_COMMIT=$(cd "$ROOT_DIR" && git rev-parse --short HEAD 2>/dev/null || echo '?')
[[ -n ${GRAYLANE_BIN_FROM:-} ]] && GRAYLANE_COMMIT=$GRAYLANE_BIN_FROM
export GRAYLANE_COMMIT
GL="$RUN_DIR/graylane"
for p in $NGX_STABLE $NGX_GRAY $INJECTOR $WS_STABLE $WS_GRAY $PORT $ADMIN_PORT; do
    port_free "$p" || die "port $p on 127.0.0.1 is in use (set SOAK_PORT_BASE)"
done

# ---------------------------------------------------------------- configs
MAXCONN=$((2 * LINKS > 10000 ? 2 * LINKS : 10000))
cat >"$RUN_DIR/graylane.yaml" <<EOF
# Written by benches/soak/soak.sh.
listeners:
  - name: im
    bind: "127.0.0.1:$PORT"
admin: { bind: "$ADMIN" }
rules_file: rules.yaml
services:
  - name: api                     # no faults: every answer must be 200
    match: { path_prefix: /api }
    pools:
      stable: { endpoints: ["127.0.0.1:$NGX_STABLE"] }
      gray:   { endpoints: ["127.0.0.1:$NGX_GRAY"] }
  - name: chat                    # gray = the fault injector + a healthy nginx
    match: { path_prefix: /chat }
    pools:
      stable: { endpoints: ["127.0.0.1:$NGX_STABLE"] }
      gray:   { endpoints: ["127.0.0.1:$INJECTOR", "127.0.0.1:$NGX_GRAY"] }
    health: { path: /healthz, interval: 2s, timeout: 1s, healthy: 2, unhealthy: 3 }
    # Trips on the error phase (every answer of one endpoint a 500: half of gray fails),
    # not on the reset and stall phases (30% of one endpoint), which reach the clients.
    guard: { max_error_rate: 0.25, min_requests: 50, window: 30s, cooldown: 30s }
  - name: ws                      # WebSocket echo upstreams, no faults
    match: { path_prefix: /ws }
    pools:
      stable: { endpoints: ["127.0.0.1:$WS_STABLE"] }
      gray:   { endpoints: ["127.0.0.1:$WS_GRAY"] }
timeouts: { connect: 1s, upstream_response: 2s, idle: 60s }
limits: { max_connections: $MAXCONN }
long_links: { rehome_grace: ${REHOME_GRACE}s, rehome_spread: ${REHOME_SPREAD}s }
access_log: { sample: 0.01 }
EOF
rules() { python3 "$SOAK_DIR/soaklib.py" write-rules --dir "$RUN_DIR" "$@"; }
rules --set A --seq 0 >/dev/null
sed -e "s|@RUN@|$RUN_DIR|g" -e "s|@STABLE_PORT@|$NGX_STABLE|g" -e "s|@GRAY_PORT@|$NGX_GRAY|g" \
    "$LOAD_DIR/upstream-nginx.conf" >"$RUN_DIR/upstream-nginx.conf"
"$GL" check --config "$RUN_DIR/graylane.yaml" >"$RUN_DIR/check.txt" 2>&1 ||
    die "graylane check failed: $(cat "$RUN_DIR/check.txt")"

# ---------------------------------------------------------------- processes
start_bg upstream-nginx "$NGINX_BIN" -p "$RUN_DIR" -c "$RUN_DIR/upstream-nginx.conf" \
    -e "$RUN_DIR/upstream-nginx.error.log" -g 'daemon off;'
NGX_PID=$BG_PID
wait_http "http://127.0.0.1:$NGX_STABLE/" 15 "$NGX_PID" || die "upstream nginx did not start"
start_bg upstreams python3 "$SOAK_DIR/upstreams.py" --ws-stable "$WS_STABLE" --ws-gray "$WS_GRAY" \
    --injector "$INJECTOR" --stats "$RUN_DIR/upstreams_stats.json"
UP_PID=$BG_PID
wait_http "http://127.0.0.1:$INJECTOR/healthz" 15 "$UP_PID" || die "upstreams.py did not start"
RUST_LOG=${RUST_LOG:-info} start_bg graylane "$GL" run --config "$RUN_DIR/graylane.yaml"
GL_PID=$BG_PID
wait_http "http://$ADMIN/readyz" 30 "$GL_PID" || die "graylane did not start (see $RUN_DIR/graylane.log)"
log "graylane pid $GL_PID up on 127.0.0.1:$PORT (admin $ADMIN)"

# Routing smoke test before any load.
route() { curl -s --max-time 5 "$@"; }
[[ $(route -H 'xdw-kefu-uid: 50000001' "http://127.0.0.1:$PORT/api/x") == stable ]] || die "stable uid not routed to stable"
[[ $(route -H 'xdw-kefu-uid: 10000042' "http://127.0.0.1:$PORT/api/x") == gray ]] || die "gray uid not routed to gray"
[[ $(route -H 'xdw-kefu-uid: 20000042' "http://127.0.0.1:$PORT/api/x") == gray ]] || die "slice A uid not gray under ruleset A"
[[ $(route -H 'xdw-kefu-uid: 10000001' "http://127.0.0.1:$PORT/api/x") == stable ]] || die "VIP uid not stable"

# sample PHASE: one row of samples.csv (a failed reading is logged, never fatal).
sample() {
    python3 "$SOAK_DIR/soaklib.py" sample --pid "$GL_PID" --admin "$ADMIN" --run "$RUN_DIR" \
        --t0 "${T0:-0}" --phase "$1" >>"$RUN_DIR/progress.log" 2>&1 || log "sample failed (see progress.log)"
}
# snapshot NAME: graylane's memory map summary, status and metrics, to explain a change.
snapshot() {
    cat "/proc/$GL_PID/smaps_rollup" >"$RUN_DIR/snap-$1-smaps_rollup.txt" 2>/dev/null || true
    cat "/proc/$GL_PID/status" >"$RUN_DIR/snap-$1-status.txt" 2>/dev/null || true
    curl -s --max-time 5 "http://$ADMIN/metrics" >"$RUN_DIR/snap-$1-metrics.txt" || true
}
fds_now() { ls "/proc/$GL_PID/fd" | wc -l; }
gauge_now() { curl -s --max-time 5 "http://$ADMIN/metrics" | awk '/^graylane_websocket_connections\{/ {s += $2} END {print s + 0}'; }
rules_field() { curl -s --max-time 5 "http://$ADMIN/rules" | jq -r "$1"; }
now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }

# ---------------------------------------------------------------- baseline
log "baseline: 15 s idle"
sleep 15
BASE_FDS=999999
for _ in 1 2 3 4 5; do
    f=$(fds_now)
    ((f < BASE_FDS)) && BASE_FDS=$f
    sleep 1
done
BASE_RSS=$(rss_now_kib "$GL_PID")
ls -l "/proc/$GL_PID/fd" >"$RUN_DIR/fds-baseline.txt" 2>/dev/null || true
sample baseline
snapshot baseline
log "baseline: $BASE_FDS fds, RSS $((BASE_RSS / 1024)) MiB"

# ---------------------------------------------------------------- load
T0=$(date +%s)
END=$((T0 + DURATION))
start_bg ws_links python3 "$SOAK_DIR/ws_links.py" --port "$PORT" --admin "$ADMIN" --links "$LINKS" \
    --duration "$DURATION" --stale-after $((REHOME_GRACE + REHOME_SPREAD + 10)) \
    --stats "$RUN_DIR/ws_stats.json" --event-log "$RUN_DIR/ws_events.jsonl"
WS_PID=$BG_PID
start_bg http_load python3 "$SOAK_DIR/http_load.py" --port "$PORT" --rate "$RATE" --conns "$CONNS" \
    --duration "$DURATION" --stats "$RUN_DIR/http_stats.json" --lost-log "$RUN_DIR/lost.jsonl"
HTTP_PID=$BG_PID
log "load: $LINKS WebSocket links, $RATE req/s on $CONNS connections, a rules edit every ${RELOAD_EVERY}s, for ${DURATION}s (warm-up ${WARMUP}s)"

echo "k,epoch,ruleset,version,trigger,broken,error_seen_ms,live_ms,extra,extra_result" >"$RUN_DIR/reloads.csv"
WRITES=0
BROKEN=0
POSTS=0
HUPS=0
# do_reload K: rules edit number K (odd: ruleset B, even: A). Every 10th (K % 10 == 3) is
# preceded by a broken file, which must be rejected while the old rules keep serving;
# K % 5 == 2 adds a POST /reload, K % 5 == 4 a SIGHUP, after the edit is live.
do_reload() {
    local k=$1 set=A broken=0 err_ms="" t0 live_ms="" extra="" extra_res="" want
    ((k % 2)) && set=B
    want="soak-$set-$k"
    if ((k % 10 == 3)); then
        broken=1
        BROKEN=$((BROKEN + 1))
        t0=$(rules --set "$set" --seq "$k" --broken)
        while [[ $(rules_field '.last_error // ""') == "" ]]; do
            (($(now_ms) - t0 < 5000)) || { log "reload $k: the broken file was not rejected within 5 s"; break; }
            sleep 0.05
        done
        err_ms=$(($(now_ms) - t0))
        sleep 2
    fi
    t0=$(rules --set "$set" --seq "$k")
    WRITES=$((WRITES + 1))
    while [[ $(rules_field '.version') != "$want" ]]; do
        if (($(now_ms) - t0 > 10000)); then
            log "reload $k: $want not live after 10 s"
            break
        fi
        sleep 0.05
    done
    live_ms=$(($(now_ms) - t0))
    if ((k % 5 == 2)); then
        extra=post
        POSTS=$((POSTS + 1))
        extra_res=$(curl -s --max-time 10 -o "$RUN_DIR/post-reload.json" -w '%{http_code}' -X POST "http://$ADMIN/reload" || echo curl-failed)
        extra_res="$extra_res $(jq -r .version "$RUN_DIR/post-reload.json" 2>/dev/null || echo '?')"
    elif ((k % 5 == 4)); then
        extra=sighup
        HUPS=$((HUPS + 1))
        kill -HUP "$GL_PID"
        sleep 1
        extra_res="version $(rules_field .version)"
    fi
    echo "$k,$(date +%s),$set,$want,rename,$broken,$err_ms,$live_ms,$extra,$extra_res" >>"$RUN_DIR/reloads.csv"
}

next_sample=$T0
next_reload=$((T0 + RELOAD_EVERY))
next_log=$T0
k=0
warm_snap=0
while :; do
    now=$(date +%s)
    ((now < END)) || break
    kill -0 "$GL_PID" 2>/dev/null || die "graylane exited during the soak (see $RUN_DIR/graylane.log)"
    if ((now >= next_sample)); then
        phase=load
        ((now - T0 < WARMUP)) && phase=warmup
        sample "$phase"
        if [[ $phase == load && $warm_snap == 0 ]]; then
            snapshot end-of-warmup
            warm_snap=1
        fi
        next_sample=$((next_sample + SAMPLE_EVERY))
        if ((now >= next_log)); then
            log "$(tail -1 "$RUN_DIR/progress.log")"
            next_log=$((next_log + 60))
        fi
    fi
    if ((now >= next_reload && now + QUIET < END)); then
        k=$((k + 1))
        do_reload "$k"
        next_reload=$((next_reload + RELOAD_EVERY))
    fi
    sleep 1
done
sample load
snapshot end-of-load
cp "$RUN_DIR/snap-end-of-load-metrics.txt" "$RUN_DIR/metrics-end-of-load.txt"
ls -l "/proc/$GL_PID/fd" >"$RUN_DIR/fds-end-of-load.txt" 2>/dev/null || true

# ---------------------------------------------------------------- after the load
log "load over; waiting for the clients to finish and close their links"
for pid in $HTTP_PID $WS_PID; do
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    kill -0 "$pid" 2>/dev/null && log "client $pid still running after 60 s; stopping it"
    stop_pid "$pid"
done
T_STOP=$(date +%s)
FDS_AFTER=""
FDS_BACK_S=""
GAUGE_AFTER=""
next_sample=$T_STOP
while :; do
    now=$(date +%s)
    FDS_AFTER=$(fds_now)
    GAUGE_AFTER=$(gauge_now)
    if ((FDS_AFTER <= BASE_FDS && GAUGE_AFTER == 0)); then
        FDS_BACK_S=$((now - T_STOP))
        break
    fi
    ((now - T_STOP < FD_WAIT)) || break
    if ((now >= next_sample)); then
        sample after
        next_sample=$((next_sample + SAMPLE_EVERY))
    fi
    sleep 1
done
sample after
snapshot after
RSS_AFTER=$(rss_now_kib "$GL_PID")
ls -l "/proc/$GL_PID/fd" >"$RUN_DIR/fds-after.txt" 2>/dev/null || true
log "after the load: $FDS_AFTER fds (baseline $BASE_FDS)${FDS_BACK_S:+, back after ${FDS_BACK_S}s}, links gauge $GAUGE_AFTER"
curl -s --max-time 5 "http://$ADMIN/metrics" >"$RUN_DIR/metrics-after.txt" || true
curl -s --max-time 5 "http://$ADMIN/rules/history" >"$RUN_DIR/rules-history.json" || true
GL_ALIVE=1
kill -0 "$GL_PID" 2>/dev/null || GL_ALIVE=0
stop_pid "$GL_PID"
stop_pid "$UP_PID"
stop_pid "$NGX_PID"

# ---------------------------------------------------------------- report
{
    machine_notes
    echo "- graylane binary sha256 $(sha256sum "$GL" | cut -c1-16)…, the tree at $GRAYLANE_COMMIT when the soak started"
    echo "- python $(python3 -c 'import platform; print(platform.python_version())'), $($NGINX_BIN -v 2>&1 | sed 's/^nginx version: //') as the HTTP upstream"
} >"$RUN_DIR/machine.md"
cat >"$RUN_DIR/meta.env" <<EOF
duration=$DURATION
links=$LINKS
rate=$RATE
conns=$CONNS
reload_every=$RELOAD_EVERY
warmup=$WARMUP
fd_wait=$FD_WAIT
rehome_grace=$REHOME_GRACE
rehome_spread=$REHOME_SPREAD
t0=$T0
t_stop=$T_STOP
base_fds=$BASE_FDS
base_rss_kib=$BASE_RSS
fds_after=$FDS_AFTER
fds_back_s=$FDS_BACK_S
gauge_after=$GAUGE_AFTER
rss_after_kib=$RSS_AFTER
writes=$WRITES
broken=$BROKEN
posts=$POSTS
sighups=$HUPS
graylane_alive=$GL_ALIVE
command=benches/soak/soak.sh --duration $DURATION --links $LINKS$([[ $RATE != 200 ]] && echo " --rate $RATE")$([[ $CONNS != 16 ]] && echo " --conns $CONNS")$([[ $RELOAD_EVERY != 60 ]] && echo " --reload-every $RELOAD_EVERY")
EOF
set +e
python3 "$SOAK_DIR/summarize.py" "$RUN_DIR" >"$RUN_DIR/summary.md"
rc=$?
set -e
cat "$RUN_DIR/summary.md"
log "summary written to $RUN_DIR/summary.md"
exit "$rc"
