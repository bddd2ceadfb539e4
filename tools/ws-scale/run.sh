#!/usr/bin/env bash
# Scale check for long links: opens N (default 10,000) concurrent idle WebSocket links
# through a release graylane, reports its resident memory per link and echo round-trips/s
# across the links. See README.md next to this script for how it is measured.
#
#   bash tools/ws-scale/run.sh                 # 10,000 links (capped by the open-files limit)
#   bash tools/ws-scale/run.sh --links 2000 --echo-secs 3
#   bash tools/ws-scale/run.sh --help
#
# Each link needs two sockets in graylane and two in the tool (client + upstream side),
# so the open-files limit is raised first: to 200000 where allowed (root with
# CAP_SYS_RESOURCE), else to the hard limit.
set -euo pipefail
cd "$(dirname "$0")/../.."

want=200000
if ! ulimit -n "$want" 2>/dev/null; then
    hard=$(ulimit -Hn)
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then
        ulimit -n "$hard"
        echo "ws-scale/run.sh: open-files limit raised to the hard limit, $hard (wanted $want)" >&2
    else
        ulimit -n "$want"
    fi
fi
echo "ws-scale/run.sh: open-files limit $(ulimit -n)" >&2

cargo build --release --bin graylane -p graylane
cargo run --release -p ws-scale -- "$@"
