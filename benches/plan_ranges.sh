#!/usr/bin/env bash
# plan-ranges at scale: wall time and peak resident memory of
#   graylane plan-ranges --volumes volumes.csv --target 3%
# on a generated 10,000,000-line volume file, once with the lines in uid order (no sort)
# and once with the same kind of users scattered (the sort path). The files are made with
# awk in a scratch directory that is removed at the end; generating takes longer than
# planning and is timed apart, never in the figures. CPU time (user + sys) is printed
# beside wall time: on a shared machine it is the steadier of the two.
#
# Usage: benches/plan_ranges.sh [--no-build] [LINES]
#   --no-build  use target/release/graylane as it is
#   LINES       lines per file (default 10000000)
set -euo pipefail

# log, die, make_run_dir, cleanup and build_graylane: the load scripts' helpers.
source "$(dirname "$0")/load/lib.sh"
LINES=10000000
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

# gen ORDER FILE: LINES users with a heavy-tailed weekly volume (Pareto, ~4% idle, a few
# dozen big accounts). ORDER "sorted" walks the uid line upwards; "scattered" visits
# the same sparse line in a multiplicative order (7919 is odd, so i*7919 mod 2^24 is a
# bijection and every uid is distinct).
gen() {
    local order=$1 file=$2
    awk -v n="$LINES" -v order="$order" 'BEGIN {
        srand(20261122)
        uid = 10000000
        big = 40 / n
        print "uid,requests"
        for (i = 0; i < n; i++) {
            if (order == "sorted") uid += 1 + int(rand() * 12)
            else uid = 10000000 + 12 * ((i * 7919) % 16777216) + int(rand() * 12)
            r = rand()
            if (r < big) c = 50000 + int(rand() * 250000)
            else if (r < 0.04) c = 0
            else c = int(3 * (1 - rand()) ^ -0.6)
            printf "%d,%d\n", uid, c
        }
    }' >"$file"
}

# seconds_since START_NS
seconds_since() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }

results=()
for order in sorted scattered; do
    file="$RUN_DIR/volumes.csv"
    log "generating $LINES lines ($order)"
    t0=$(date +%s%N)
    gen "$order" "$file"
    gen_s=$(seconds_since "$t0")
    size_mb=$(( $(stat -c %s "$file") / 1000000 ))
    log "generated in ${gen_s} s (${size_mb} MB)"

    cmd=("$BIN" plan-ranges --volumes "$file" --target 3%)
    if [[ -x /usr/bin/time ]]; then
        /usr/bin/time -f '%e %U %S %M' -o "$RUN_DIR/time" "${cmd[@]}" >"$RUN_DIR/plan" 2>"$RUN_DIR/err" \
            || { cat "$RUN_DIR/err" >&2; exit 1; }
        read -r wall user sys rss_kib <"$RUN_DIR/time"
        cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
        rss="$((rss_kib / 1024)) MiB"
    else
        TIMEFORMAT=%R
        { time "${cmd[@]}" >"$RUN_DIR/plan" 2>"$RUN_DIR/err"; } 2>"$RUN_DIR/time" \
            || { cat "$RUN_DIR/err" >&2; exit 1; }
        wall=$(tail -n 1 "$RUN_DIR/time")
        cpu="n/a"
        rss="n/a (no /usr/bin/time)"
    fi
    sed 's/^/    /' "$RUN_DIR/plan" >&2
    results+=("- \`graylane plan-ranges --volumes volumes.csv --target 3%\`, $(printf "%'d" "$LINES" 2>/dev/null || echo "$LINES") lines ($size_mb MB, uid $order): **${wall} s** wall (${cpu} s CPU), **${rss}** max RSS (generating the file: ${gen_s} s, not counted)")
    rm -f "$file"
done

printf '%s\n' "${results[@]}"
