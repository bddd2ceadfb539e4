#!/usr/bin/env bash
# Reload under load: graylane serves a ruleset with a 1M-id `in_file` while wrk drives
# it; the in_file is replaced (write a new file, rename over the old one, as editors and
# deploy tools do) by another 1M-id file and `POST /reload` is sent, several times. For
# each swap it reports the reload latency: from the rename to the moment `GET /rules`
# shows the new sha256 (the watcher may get there before the POST; either way this is
# what ops see), and the POST's own round trip. wrk's non-2xx and socket-error counts
# must be zero.
#
# Usage: benches/load/reload_under_load.sh [--reloads N] [--interval SECONDS] [--no-build]
# Targets (issue 5): reload <= 1 s, zero failed requests. Exits 1 when one is missed.
# Environment: PROXY_CPUS (default 1), LOAD_CPUS (default 0), KEEP_RUN_DIR=1.
set -euo pipefail

source "$(dirname "$0")/lib.sh"

RELOADS=6
INTERVAL=2
CONNS=64
while [[ $# -gt 0 ]]; do
    case $1 in
    --reloads) RELOADS=$2; shift ;;
    --interval) INTERVAL=$2; shift ;;
    --no-build) export NO_BUILD=1 ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown argument $1" ;;
    esac
    shift
done
PROXY_CPUS=${PROXY_CPUS:-1}
LOAD_CPUS=${LOAD_CPUS:-0}
STABLE_PORT=18101
GRAY_PORT=18102
PORT=18200
ADMIN_PORT=18290
IDS=1000000

trap cleanup EXIT
make_run_dir
ensure_tools nginx:nginx wrk:wrk curl:curl taskset:util-linux sha256sum:coreutils
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
build_graylane
for p in $STABLE_PORT $GRAY_PORT $PORT $ADMIN_PORT; do
    port_free "$p" || die "port $p on 127.0.0.1 is in use"
done

now_ms() { date +%s%3N; }

# gen_ids SEED FILE : IDS pseudo-random 8-to-10-digit ids, one per line, deterministic.
gen_ids() {
    awk -v seed="$1" -v n="$IDS" 'BEGIN { srand(seed); for (i = 0; i < n; i++) printf "%d\n", 10000000 + int(rand() * 9000000000) }' >"$2"
}

log "generating two ${IDS}-id files"
gen_ids 1 "$RUN_DIR/ids-a.txt"
gen_ids 2 "$RUN_DIR/ids-b.txt"
cat >"$RUN_DIR/rules.yaml" <<'EOF'
version: "reload-bench"
rules:
  - name: listed-uids
    when:
      uid: { in_file: ids.txt }
    route: gray
  - name: uid-range
    when:
      uid: { ranges: ["10000000-10499999"] }
    route: gray
EOF
cp "$RUN_DIR/ids-a.txt" "$RUN_DIR/ids.txt"
sed -e "s|@WORKERS@|1|g" -e "s|@PORT@|$PORT|g" -e "s|@ADMIN_PORT@|$ADMIN_PORT|g" \
    -e "s|@STABLE_PORT@|$STABLE_PORT|g" -e "s|@GRAY_PORT@|$GRAY_PORT|g" \
    "$LOAD_DIR/graylane.yaml" >"$RUN_DIR/graylane.yaml"

sed -e "s|@RUN@|$RUN_DIR|g" -e "s|@STABLE_PORT@|$STABLE_PORT|g" -e "s|@GRAY_PORT@|$GRAY_PORT|g" \
    "$LOAD_DIR/upstream-nginx.conf" >"$RUN_DIR/upstream-nginx.conf"
start_bg upstream taskset -c "$LOAD_CPUS" "$NGINX_BIN" -p "$RUN_DIR" -c "$RUN_DIR/upstream-nginx.conf" \
    -e "$RUN_DIR/upstream-nginx.error.log" -g 'daemon off;'
wait_http "http://127.0.0.1:$STABLE_PORT/" || die "upstream nginx did not start"

t_start=$(now_ms)
RUST_LOG=warn start_bg graylane taskset -c "$PROXY_CPUS" "$GRAYLANE_BIN" run --config "$RUN_DIR/graylane.yaml"
GL_PID=$BG_PID
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" 30 || die "graylane did not start (see $RUN_DIR/graylane.log)"
log "graylane up with a ${IDS}-id in_file in $(($(now_ms) - t_start)) ms; RSS $(($(rss_now_kib "$GL_PID") / 1024)) MiB"

# A listed id must go gray: proves the in_file is live.
member=$(sed -n 500000p "$RUN_DIR/ids-a.txt")
[[ $(curl -s -H "xdw-kefu-uid: $member" "http://127.0.0.1:$PORT/") == gray ]] || die "listed uid $member not routed to gray"

rules_sha() { curl -s "http://127.0.0.1:$ADMIN_PORT/rules" | sed -n 's/.*"sha256": *"\([0-9a-f]*\)".*/\1/p'; }
expected_sha() { cat "$RUN_DIR/rules.yaml" "$1" | sha256sum | awk '{print $1}'; }
[[ $(rules_sha) == $(expected_sha "$RUN_DIR/ids-a.txt") ]] || die "/rules sha256 is not sha256(rules.yaml + in_file)"

WRK_SECS=$((RELOADS * INTERVAL + INTERVAL + 2))
log "wrk for ${WRK_SECS}s, $CONNS connections; $RELOADS swaps of the in_file, one every ${INTERVAL}s"
taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNS" -d"${WRK_SECS}s" --latency -s "$LOAD_DIR/uids.lua" \
    "http://127.0.0.1:$PORT/chat/send" >"$RUN_DIR/wrk.txt" 2>&1 &
WRK_PID=$!
STARTED_PIDS+=("$WRK_PID")
sleep "$INTERVAL"

LAT=()
POSTS=()
for i in $(seq 1 "$RELOADS"); do
    if ((i % 2)); then next=b; else next=a; fi
    want=$(expected_sha "$RUN_DIR/ids-$next.txt")
    cp "$RUN_DIR/ids-$next.txt" "$RUN_DIR/ids.txt.tmp"
    t0=$(now_ms)
    mv -f "$RUN_DIR/ids.txt.tmp" "$RUN_DIR/ids.txt"
    code=$(curl -s -o "$RUN_DIR/reload-$i.json" -w '%{http_code}' -X POST "http://127.0.0.1:$ADMIN_PORT/reload")
    t_post=$(now_ms)
    [[ $code == 200 ]] || die "POST /reload answered $code: $(cat "$RUN_DIR/reload-$i.json")"
    while [[ $(rules_sha) != "$want" ]]; do
        (($(now_ms) - t0 < 10000)) || die "reload $i: /rules never showed the new sha256"
        sleep 0.01
    done
    t1=$(now_ms)
    LAT+=($((t1 - t0)))
    POSTS+=($((t_post - t0)))
    log "reload $i (-> ids-$next): live after $((t1 - t0)) ms (POST /reload returned after $((t_post - t0)) ms)"
    sleep "$INTERVAL"
done

wait "$WRK_PID" || die "wrk failed: $(cat "$RUN_DIR/wrk.txt")"
stop_pid "$WRK_PID" # already exited: this only forgets it
# A listed id of the last file must go gray now.
member=$(sed -n 500000p "$RUN_DIR/ids-$next.txt")
[[ $(curl -s -H "xdw-kefu-uid: $member" "http://127.0.0.1:$PORT/") == gray ]] || die "uid $member of the new file not routed to gray"

reloads=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^graylane_rules_reloads_total\{/ {printf "%s%s=%s", sep, $1, $2; sep=" "}')
hwm=$(rss_peak_kib "$GL_PID")
rss=$(rss_now_kib "$GL_PID")
stop_pid "$GL_PID"

reqs=$(awk '/requests in/ {print $1}' "$RUN_DIR/wrk.txt")
rps=$(awk '/^Requests\/sec:/ {print $2}' "$RUN_DIR/wrk.txt")
p99=$(awk '$1 == "99%" {print $2}' "$RUN_DIR/wrk.txt")
maxlat=$(awk '$1 == "Latency" {print $4}' "$RUN_DIR/wrk.txt")
non2xx=$(awk '/Non-2xx/ {print $NF}' "$RUN_DIR/wrk.txt")
sockerr=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$RUN_DIR/wrk.txt")
non2xx=${non2xx:-0}
sockerr=${sockerr:-0}
max_lat=$(printf '%s\n' "${LAT[@]}" | sort -n | tail -1)
med_lat=$(printf '%s\n' "${LAT[@]}" | sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}')

cat <<EOF

## Reload under load

Measured $(date -u +%Y-%m-%dT%H:%MZ) with \`benches/load/reload_under_load.sh\`: graylane (1 worker,
cpu $PROXY_CPUS) with a ${IDS}-id \`in_file\` rule; wrk (1 thread, $CONNS connections, \`uids.lua\`) and the
upstream nginx on cpu $LOAD_CPUS; $RELOADS swaps of the in_file between two ${IDS}-id files, one every ${INTERVAL} s.
$(machine_notes)

| metric | value | target |
|---|---|---|
| reload latency, rename → /rules shows new sha256 (median / max of $RELOADS) | ${med_lat} ms / ${max_lat} ms | ≤ 1000 ms |
| POST /reload round trip (each) | $(IFS=,; echo "${POSTS[*]}" | sed 's/,/, /g') ms | |
| requests during the test | $reqs ($rps req/s, p99 $p99, max $maxlat) | |
| non-2xx responses | $non2xx | 0 |
| socket errors | $sockerr | 0 |
| peak RSS (VmHWM) / RSS at end | $((hwm / 1024)) MiB / $((rss / 1024)) MiB | |
| reload counters | $reloads | |
EOF

fail=0
((max_lat <= 1000)) || { log "MISSED: a reload took ${max_lat} ms (> 1000 ms)"; fail=1; }
((non2xx == 0 && sockerr == 0)) || { log "MISSED: $non2xx non-2xx, $sockerr socket errors"; fail=1; }
exit "$fail"
