#!/usr/bin/env bash
# Screenshot of a page of a running `graylane demo`, taken by headless Chromium.
#
#   tools/browser/screenshot.sh [URL] [OUT.png]
#
# URL defaults to the admin status page, http://127.0.0.1:9901/; OUT to screenshot.png in
# the current directory; TRAFFIC=SECONDS sends demo requests first, WINDOW=W,H sizes the
# shot. Builds and starts `graylane demo` (which needs 127.0.0.1:8080,
# 8081 and 9901 free), waits until its admin listener answers, runs
#   chromium --headless --screenshot=OUT --window-size=1280,900 URL
# in a temporary profile, and stops the demo, however the script ends. Needs Debian's
# `chromium` (apt-get install -y chromium) and curl. Prints the URL's HTTP status: a 404
# is still photographed (the page says so).
set -euo pipefail

URL=${1:-http://127.0.0.1:9901/}
OUT=${2:-screenshot.png}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ADMIN=http://127.0.0.1:9901

log() { printf 'screenshot: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

CHROMIUM=
if [[ -x /usr/bin/chromium ]]; then
    CHROMIUM=/usr/bin/chromium
elif command -v chromium >/dev/null 2>&1; then
    CHROMIUM=$(command -v chromium)
else
    die "no chromium (/usr/bin/chromium or on PATH): apt-get install -y chromium"
fi
command -v curl >/dev/null 2>&1 || die "curl is needed"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports_free() {
    for port in 8080 8081 9901; do
        port_free "$port" || die "127.0.0.1:$port is taken; graylane demo needs 8080, 8081 and 9901"
    done
}
ports_free

DEMO_PID=
PROFILE=$(mktemp -d "${TMPDIR:-/tmp}/graylane-screenshot-XXXXXX")
DEMO_LOG=$PROFILE.demo.log
cleanup() {
    local rc=$?
    if [[ -n $DEMO_PID ]] && kill -0 "$DEMO_PID" 2>/dev/null; then
        kill -TERM "$DEMO_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$DEMO_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$DEMO_PID" 2>/dev/null || true
        wait "$DEMO_PID" 2>/dev/null || true
    fi
    if [[ $rc != 0 && -s $DEMO_LOG ]]; then
        log "demo output:"
        tail -n 20 "$DEMO_LOG" >&2
    fi
    rm -rf "$PROFILE" "$DEMO_LOG"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building graylane (release)"
(cd "$ROOT" && cargo build --release --locked --bin graylane >&2)
# Again after the build, which can take minutes: the admin port must be the demo's.
ports_free
# The binary itself, not `cargo run`, so the pid stopped below is the demo's.
"$ROOT/target/release/graylane" demo >"$DEMO_LOG" 2>&1 &
DEMO_PID=$!

log "waiting for the demo's admin listener"
for _ in $(seq 100); do
    curl -fsS -o /dev/null "$ADMIN/healthz" 2>/dev/null && break
    kill -0 "$DEMO_PID" 2>/dev/null || die "graylane demo exited"
    sleep 0.2
done
curl -fsS -o /dev/null "$ADMIN/healthz" || die "the demo's admin listener did not answer within 20 s"

# TRAFFIC=SECONDS: first send the demo's kinds of requests for that long (C-end users in and
# out of the gray ranges and entry split, staff with the gray group cookie), so the status
# page has numbers and chart points; one chart point is 10 s.
TRAFFIC=${TRAFFIC:-0}
if [[ $TRAFFIC -gt 0 ]]; then
    log "sending demo traffic for ${TRAFFIC}s"
    end=$((SECONDS + TRAFFIC))
    i=0
    while [[ $SECONDS -lt $end ]]; do
        i=$((i + 1))
        uid=$((10000000 + (i * 7919) % 1000000))
        curl -s -o /dev/null http://127.0.0.1:8080/chat/send -H "xdw-kefu-uid: $uid" -H 'xdw-app-version: 5.3.0' || true
        curl -s -o /dev/null http://127.0.0.1:8080/chat/send -H "xdw-kefu-entryid: 121338361121" -H "xdw-kefu-uid: $((30000000 + i))" || true
        if ((i % 3 == 0)); then
            curl -s -o /dev/null http://127.0.0.1:8081/api/tickets --cookie 'xdw-kefu-agent-gid=141338365001' || true
            curl -s -o /dev/null http://127.0.0.1:8081/static/app.js --cookie "xdw-kefu-agent-gid=$((141338365000 + i % 4))" || true
        fi
    done
fi

STATUS=$(curl -s -o /dev/null -w '%{http_code}' "$URL" || true)
log "$URL answers HTTP $STATUS"

# --screenshot writes relative paths into the current directory; make OUT absolute.
[[ $OUT == /* ]] || OUT=$PWD/$OUT
rm -f "$OUT"
timeout 60 "$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$PROFILE/profile" \
    --screenshot="$OUT" --window-size="${WINDOW:-1280,900}" "$URL" >"$PROFILE/chromium.log" 2>&1 || {
    tail -n 20 "$PROFILE/chromium.log" >&2
    die "chromium failed"
}
[[ -s $OUT ]] || die "chromium wrote no screenshot"
log "wrote $OUT"
