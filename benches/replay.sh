#!/usr/bin/env bash
# replay at scale: wall time and peak resident memory of
#   graylane replay --config graylane.yaml --rules rules.next.yaml --log access.log --json
# on a generated access log of LINES graylane::access JSON lines (default 1,000,000), as
# `--log-format json` with `access_log: { sample: 1 }` writes them: 200,000 C-end users,
# 2,000 staff with groups, anonymous static loads, and 1 line in 100 of graylane's other
# output. The live rules send a uid range and staff to gray; the candidate widens the
# ranges, adds a 20% percent split on an entry point and a ramp, and drops a staff rule.
# Generated with awk in a scratch directory that is removed at the end; generating is
# timed apart, never in the figures.
#
# Usage: benches/replay.sh [--no-build] [LINES]
#   --no-build  use target/release/graylane as it is
#   LINES       access-log lines (default 1000000)
set -euo pipefail

# log, die, make_run_dir, cleanup and build_graylane: the load scripts' helpers.
source "$(dirname "$0")/load/lib.sh"
LINES=1000000
for arg in "$@"; do
    case $arg in
        --no-build) export NO_BUILD=1 ;;
        '' | *[!0-9]*) echo "usage: $0 [--no-build] [LINES]" >&2; exit 2 ;;
        *) LINES=$arg ;;
    esac
done

trap cleanup EXIT
make_run_dir
build_graylane
BIN=$GRAYLANE_BIN

cat >"$RUN_DIR/graylane.yaml" <<'EOF'
listeners:
  - name: im
    bind: "127.0.0.1:8080"
  - name: console
    bind: "127.0.0.1:8443"
admin: { bind: "127.0.0.1:9901" }
rules_file: rules.yaml
services:
  - name: chat
    match: { path_prefix: /chat }
    pools:
      stable: { endpoints: ["10.1.0.11:8000"] }
      gray:   { endpoints: ["10.2.0.11:8000"] }
  - name: console-api
    match: { host: console.kefu.example.com, path_prefix: /api }
    pools:
      stable: { endpoints: ["10.1.0.21:8000"] }
      gray:   { endpoints: ["10.2.0.21:8000"] }
  - name: static
    match: { path_prefix: / }
    pools:
      stable: { endpoints: ["10.1.0.31:80"] }
      gray:   { endpoints: ["10.2.0.31:80"] }
access_log: { sample: 1 }
EOF

cat >"$RUN_DIR/rules.yaml" <<'EOF'
version: "bench-live"
rules:
  - name: vip-never-gray
    when:
      uid: { in: [88000001, 88000002] }
    route: stable
  - name: gray-staff-groups
    when:
      agent_gid: { any: [141338365001, 141338365002] }
    route: gray
  - name: gray-staff
    when:
      staff_uid: { in: [9001, 9002, 9003] }
    route: gray
  - name: low-volume-uid-ranges
    when:
      uid: { ranges: ["10000000-10004999"] }
      app_version: ">=5.2.0"
    route: gray
EOF

cat >"$RUN_DIR/rules.next.yaml" <<'EOF'
version: "bench-candidate"
rules:
  - name: vip-never-gray
    when:
      uid: { in: [88000001, 88000002] }
    route: stable
  - name: gray-staff-groups
    when:
      agent_gid: { any: [141338365001, 141338365002, 141338365003] }
    route: gray
  - name: low-volume-uid-ranges
    when:
      uid: { ranges: ["10000000-10004999", "10100000-10109999"] }
      app_version: ">=5.2.0"
    route: gray
  - name: gray-entry-20pct
    when:
      entry_id: { in: [121338361121] }
      percent: { of: uid, value: 20 }
    route: gray
  - name: ios-ramp
    when:
      device: { in: [ios] }
      percent: { of: uid, steps: [1, 5, 20, 50], every: 15m, start: "2026-12-06T06:00:00Z" }
    route: gray
EOF

# One access line per request; timestamps walk forward over 2 hours from 05:30 so the
# ramp is seen before its start and at every step.
gen() {
    awk -v n="$LINES" 'BEGIN {
        srand(20261206)
        split("5.1.9 5.2.0 5.3.1.0 5.10 6.0", ver, " ")
        split("iOS Android web", dev, " ")
        split("/chat/send /chat/history /chat/poll /static/app.js /static/app.css", cpath, " ")
        split("141338365001 141338365002 141338365003 141338365009", gid, " ")
        t0 = 5 * 3600 + 1800
        for (i = 0; i < n; i++) {
            if (i % 100 == 99) {
                printf "{\"timestamp\":\"2026-12-06T07:00:00.000000Z\",\"level\":\"INFO\",\"fields\":{\"message\":\"rules reloaded\",\"result\":\"ok\"},\"target\":\"graylane::reload\"}\n"
                continue
            }
            s = t0 + int(i * 7200 / n)
            ts = sprintf("2026-12-06T%02d:%02d:%02d.%06dZ", int(s / 3600), int(s / 60) % 60, s % 60, int(rand() * 1000000))
            r = rand()
            if (r < 0.80) {
                uid = (rand() < 0.5) ? 10000000 + int(rand() * 20000) : 10100000 + int(rand() * 180000)
                extra = ""
                if (rand() < 0.1) extra = ",\"entry_id\":121338361121"
                printf "{\"timestamp\":\"%s\",\"level\":\"INFO\",\"fields\":{\"listener\":\"im\",\"peer\":\"10.0.3.17\",\"method\":\"POST\",\"host\":\"im.kefu.example.com\",\"path\":\"%s\",\"uid\":%d%s,\"app_version\":\"%s\",\"device\":\"%s\",\"service\":\"chat\",\"pool\":\"stable\",\"rule\":\"default\",\"status\":200,\"ms\":%.2f},\"target\":\"graylane::access\"}\n", ts, cpath[1 + int(rand() * 5)], uid, extra, ver[1 + int(rand() * 5)], dev[1 + int(rand() * 3)], rand() * 40
            } else if (r < 0.95) {
                staff = 9000 + int(rand() * 2000)
                printf "{\"timestamp\":\"%s\",\"level\":\"INFO\",\"fields\":{\"listener\":\"console\",\"peer\":\"10.0.4.2\",\"method\":\"GET\",\"host\":\"console.kefu.example.com\",\"path\":\"/api/session/list\",\"staff_uid\":%d,\"agent_gid\":\"%s,%s\",\"service\":\"console-api\",\"pool\":\"stable\",\"rule\":\"default\",\"status\":200,\"ms\":%.2f},\"target\":\"graylane::access\"}\n", ts, staff, gid[1 + int(rand() * 4)], gid[1 + int(rand() * 4)], rand() * 40
            } else {
                printf "{\"timestamp\":\"%s\",\"level\":\"INFO\",\"fields\":{\"listener\":\"console\",\"peer\":\"10.0.4.9\",\"method\":\"GET\",\"host\":\"console.kefu.example.com\",\"path\":\"/static/index.html\",\"service\":\"static\",\"pool\":\"stable\",\"rule\":\"default\",\"status\":200,\"ms\":%.2f},\"target\":\"graylane::access\"}\n", ts, rand() * 40
            }
        }
    }' >"$RUN_DIR/access.log"
}

# seconds_since START_NS
seconds_since() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }

log "generating $LINES lines"
t0=$(date +%s%N)
gen
gen_s=$(seconds_since "$t0")
size_mb=$(( $(stat -c %s "$RUN_DIR/access.log") / 1000000 ))
log "generated in ${gen_s} s (${size_mb} MB)"

results=()
for mode in table json; do
    cmd=("$BIN" replay --config "$RUN_DIR/graylane.yaml" --rules "$RUN_DIR/rules.next.yaml" --log "$RUN_DIR/access.log")
    [[ $mode == json ]] && cmd+=(--json)
    if [[ -x /usr/bin/time ]]; then
        /usr/bin/time -v -o "$RUN_DIR/time" "${cmd[@]}" >"$RUN_DIR/out" 2>"$RUN_DIR/err" \
            || { cat "$RUN_DIR/err" >&2; exit 1; }
        wall=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; printf "%.2f", s }' "$RUN_DIR/time")
        rss="$(( $(awk -F': ' '/Maximum resident set size/ { print $2 }' "$RUN_DIR/time") / 1024 )) MiB"
    else
        TIMEFORMAT=%R
        { time "${cmd[@]}" >"$RUN_DIR/out" 2>"$RUN_DIR/err"; } 2>"$RUN_DIR/time" \
            || { cat "$RUN_DIR/err" >&2; exit 1; }
        wall=$(tail -n 1 "$RUN_DIR/time")
        rss="n/a (no /usr/bin/time)"
    fi
    [[ $mode == table ]] && sed 's/^/    /' "$RUN_DIR/out" >&2
    flag=""
    [[ $mode == json ]] && flag=" --json"
    results+=("- \`graylane replay --config graylane.yaml --rules rules.next.yaml --log access.log$flag\`, $(printf "%'d" "$LINES" 2>/dev/null || echo "$LINES") lines ($size_mb MB): **${wall} s** wall, **${rss}** max RSS (generating the log: ${gen_s} s, not counted)")
done

printf '%s\n' "${results[@]}"
