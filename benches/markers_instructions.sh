#!/usr/bin/env bash
# Instructions one marker read costs, per case, counted by callgrind: the example
# `marker_reads` run with N = 0 and N = 20,000 reads, the difference divided by N.
# Repeatable to the instruction, where criterion's times for the same cases move by
# ±15% on a busy machine. To compare with another revision, run this script in a
# worktree of it (copy examples/marker_reads.rs there if it predates it).
#
# Usage: benches/markers_instructions.sh [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
[[ ${1:-} == --no-build ]] || cargo build --release --example marker_reads >&2
bin=target/release/examples/marker_reads
n=20000
count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
echo "| case | instructions per read |"
echo "|---|---:|"
for c in im_headers console_cookies console_long_cookie im_query; do
    base=$(count "$c" 0)
    full=$(count "$c" "$n")
    echo "| $c | $(( (full - base) / n )) |"
done
