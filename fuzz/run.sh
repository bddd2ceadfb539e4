#!/usr/bin/env bash
# Runs every graylane fuzz target, one after another, in a single libFuzzer process each
# (the machine has 2 cores: no -jobs/-workers, no parallel targets). Not run in CI.
#
#   fuzz/run.sh                      # every target, 10^7 executions each
#   fuzz/run.sh rules markers        # only these targets
#   RUNS=100000 fuzz/run.sh          # fewer executions
#   MAX_TIME=1200 fuzz/run.sh        # also stop each target after 1200 s (0: no time cap)
#   MAX_TIME_connection=1800 fuzz/run.sh   # a time cap for one target only
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Seeds are read from
# fuzz/corpus/<target>/ (never written); what libFuzzer finds goes to
# fuzz/target/work-corpus/<target>/, logs to fuzz/target/logs/<target>.log, crashes and
# timeouts to fuzz/artifacts/<target>/. Prints, per target: executions, wall time, exec/s
# and the outcome (ok, or crash/timeout/oom with libFuzzer's exit status). Exits 1 when any
# target found something.
set -uo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$FUZZ_DIR" || exit 2

RUNS="${RUNS:-10000000}"
MAX_TIME="${MAX_TIME:-0}"
TIMEOUT="${TIMEOUT:-10}"          # seconds per input before libFuzzer calls it a timeout
TOOLCHAIN="${TOOLCHAIN:-+nightly}"
SANITIZER="${SANITIZER:-address}"
ALL_TARGETS=(rules config markers h1_response h1_head connection hpack)
if [ "$#" -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

max_len() {
    case "$1" in
        rules | config) echo 4096 ;;
        markers) echo 4096 ;;
        h1_response | h1_head) echo 8192 ;;
        hpack) echo 4096 ;;
        connection) echo 16384 ;;
        *) echo 4096 ;;
    esac
}

dict() {
    case "$1" in
        rules | config) echo "$FUZZ_DIR/dict/yaml.dict" ;;
        *) echo "$FUZZ_DIR/dict/http.dict" ;;
    esac
}

echo "== building all targets (sanitizer: $SANITIZER)"
if ! cargo "$TOOLCHAIN" fuzz build --sanitizer "$SANITIZER"; then
    echo "build failed" >&2
    exit 2
fi

mkdir -p target/logs
rows=()
found=0
for t in "${TARGETS[@]}"; do
    work="target/work-corpus/$t"
    mkdir -p "$work" "corpus/$t" "artifacts/$t"
    log="target/logs/$t.log"
    cap="MAX_TIME_$t"
    cap="${!cap:-$MAX_TIME}"
    args=(-runs="$RUNS" -max_len="$(max_len "$t")" -dict="$(dict "$t")" -timeout="$TIMEOUT"
        -print_final_stats=1)
    if [ "$cap" != 0 ]; then args+=(-max_total_time="$cap"); fi
    echo "== $t: ${args[*]}"
    start=$(date +%s.%N)
    cargo "$TOOLCHAIN" fuzz run --sanitizer "$SANITIZER" "$t" "$work" "corpus/$t" -- "${args[@]}" \
        >"$log" 2>&1
    status=$?
    end=$(date +%s.%N)
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
    # The final stats when libFuzzer ends normally; else the last status line (#N ...).
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    if [ -z "$execs" ]; then
        execs=$(grep -aoE '^#[0-9]+' "$log" | tail -n1 | tr -d '#')
    fi
    execs="${execs:-0}"
    rate=$(awk -v n="$execs" -v s="$secs" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')
    if [ "$status" = 0 ]; then
        outcome="ok"
    else
        found=1
        kind="error"
        grep -aq 'libFuzzer: timeout' "$log" && kind="timeout"
        grep -aq 'libFuzzer: out-of-memory' "$log" && kind="oom"
        grep -aqE 'deadly signal|panicked at|AddressSanitizer' "$log" && kind="crash"
        art=$(grep -aoE 'artifact_prefix=[^;]*; Test unit written to [^ ]+' "$log" | tail -n1 |
            sed 's/.*written to //')
        outcome="$kind (exit $status) ${art:-see $log}"
    fi
    echo "   $t: $execs executions in ${secs}s, $rate exec/s: $outcome"
    rows+=("$(printf '%-12s %12s %10s %9s  %s' "$t" "$execs" "${secs}s" "$rate" "$outcome")")
done

echo
printf '%-12s %12s %10s %9s  %s\n' target executions time exec/s outcome
for r in "${rows[@]}"; do echo "$r"; done
exit "$found"
