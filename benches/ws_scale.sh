#!/usr/bin/env bash
# Scale check for long links: opens N (default 10,000) concurrent idle WebSocket links
# through a release graylane, reports its resident memory per link and echo round-trips/s
# across the links. See the header of benches/ws_scale.rs for how it is measured.
#
#   bash benches/ws_scale.sh                 # 10,000 links (capped by the open-files limit)
#   bash benches/ws_scale.sh --links 2000 --echo-secs 3
#   bash benches/ws_scale.sh --help
#
# Each link needs two sockets in graylane and two in the bench (client + upstream side),
# so the open-files limit is raised first: to 200000 where allowed (root with
# CAP_SYS_RESOURCE), else to the hard limit.
set -euo pipefail
cd "$(dirname "$0")/.."

want=200000
if ! ulimit -n "$want" 2>/dev/null; then
    hard=$(ulimit -Hn)
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then
        ulimit -n "$hard"
        echo "ws_scale.sh: open-files limit raised to the hard limit, $hard (wanted $want)" >&2
    else
        ulimit -n "$want"
    fi
fi
echo "ws_scale.sh: open-files limit $(ulimit -n)" >&2

cargo build --release --bin graylane
cargo bench --bench ws_scale -- "$@"
