#!/usr/bin/env bash
# Idle memory: starts graylane with the sample config (config/graylane.yaml and
# config/rules.yaml, copied to a scratch directory with the listener and admin ports moved
# to 1808x/18991 so a running demo does not clash; its endpoints need not exist), waits
# until it is ready and settled, and reports its resident set. Then sends a few requests
# (answered 502: nothing listens on the endpoints) and reports it again.
#
# Usage: benches/load/idle_rss.sh [--no-build]
# Target (issue 5): idle RSS <= 20 MiB. Exits 1 when missed.
set -euo pipefail

source "$(dirname "$0")/lib.sh"
[[ ${1:-} == --no-build ]] && export NO_BUILD=1
TARGET_KIB=$((20 * 1024))

trap cleanup EXIT
make_run_dir
ensure_tools curl:curl
build_graylane
for p in 18080 18081 18991; do port_free "$p" || die "port $p on 127.0.0.1 is in use"; done

sed -e 's|127.0.0.1:8080|127.0.0.1:18080|' -e 's|127.0.0.1:8081|127.0.0.1:18081|' \
    -e 's|127.0.0.1:9901|127.0.0.1:18991|' "$ROOT_DIR/config/graylane.yaml" >"$RUN_DIR/graylane.yaml"
cp "$ROOT_DIR/config/rules.yaml" "$RUN_DIR/rules.yaml"

RUST_LOG=warn start_bg graylane "$GRAYLANE_BIN" run --config "$RUN_DIR/graylane.yaml"
PID=$BG_PID
wait_http "http://127.0.0.1:18991/readyz" 30 || die "graylane did not start (see $RUN_DIR/graylane.log)"
sleep 2
idle=$(rss_now_kib "$PID")
threads=$(awk '/^Threads:/ {print $2}' "/proc/$PID/status")
for i in $(seq 1 20); do
    curl -s -o /dev/null -H "xdw-kefu-uid: 1020000$i" "http://127.0.0.1:18080/chat/x" || true
done
curl -s -o /dev/null "http://127.0.0.1:18991/metrics"
sleep 1
after=$(rss_now_kib "$PID")
hwm=$(rss_peak_kib "$PID")
stop_pid "$PID"

mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
cat <<EOF

## Idle RSS

Measured $(date -u +%Y-%m-%dT%H:%MZ) with \`benches/load/idle_rss.sh\`: \`graylane run\` with the sample config
(3 services, 6 rules, default \`workers\` = $(nproc) on this machine, $threads threads), no pinning.
$(machine_notes)

| state | RSS (VmRSS) | target |
|---|---|---|
| idle, 2 s after /readyz | $(mib "$idle") MiB | ≤ 20 MiB |
| after 20 proxied requests (502) and one /metrics scrape | $(mib "$after") MiB | |
| peak (VmHWM) | $(mib "$hwm") MiB | |
EOF
((idle <= TARGET_KIB)) || { log "MISSED: idle RSS $(mib "$idle") MiB > 20 MiB"; exit 1; }
