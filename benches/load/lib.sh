# Shared helpers for the scripts in benches/load/ (sourced, not run).
#
# Every process a script starts goes through `start_bg`, which records its PID; `cleanup`
# (armed with `trap cleanup EXIT` by each script) stops exactly those PIDs, also when the
# script fails half-way. Nothing is ever stopped by name.

LOAD_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT_DIR=$(cd "$LOAD_DIR/../.." && pwd)
STARTED_PIDS=()
RUN_DIR=""
KEEP_RUN_DIR=${KEEP_RUN_DIR:-0}
POLICY_RC_D_CREATED=0

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "FAIL: $*"
    exit 1
}

# start_bg NAME CMD... : runs CMD in the background with stdout+stderr in
# $RUN_DIR/NAME.log; sets BG_PID.
start_bg() {
    local name=$1
    shift
    "$@" >"$RUN_DIR/$name.log" 2>&1 &
    BG_PID=$!
    STARTED_PIDS+=("$BG_PID")
}

# stop_pid PID : SIGTERM, then SIGKILL after 5 s; only PIDs this script started.
stop_pid() {
    local pid=$1 i
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid did not stop on SIGTERM; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    local rest=() p
    for p in "${STARTED_PIDS[@]}"; do
        [[ $p == "$pid" ]] || rest+=("$p")
    done
    STARTED_PIDS=("${rest[@]+"${rest[@]}"}")
}

cleanup() {
    local rc=$? p
    set +e
    for p in "${STARTED_PIDS[@]+"${STARTED_PIDS[@]}"}"; do
        stop_pid "$p"
    done
    if [[ $POLICY_RC_D_CREATED == 1 ]]; then
        rm -f /usr/sbin/policy-rc.d
    fi
    if [[ -n $RUN_DIR && -d $RUN_DIR ]]; then
        if [[ $rc != 0 || $KEEP_RUN_DIR == 1 ]]; then
            log "logs and configs kept in $RUN_DIR"
        else
            rm -rf "$RUN_DIR"
        fi
    fi
    exit "$rc"
}

make_run_dir() {
    RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/graylane-bench.XXXXXX")
    chmod 755 "$RUN_DIR"
}

# ensure_tools CMD:PACKAGE... : installs the Debian packages of missing commands. The
# packages' maintainer scripts would start system-wide nginx/haproxy services; a
# temporary policy-rc.d (exit 101) stops that, so the only processes running are ours.
ensure_tools() {
    local want=() pair cmd pkg
    for pair in "$@"; do
        cmd=${pair%%:*}
        pkg=${pair#*:}
        command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]] || want+=("$pkg")
    done
    [[ ${#want[@]} == 0 ]] && return 0
    [[ $(id -u) == 0 ]] || die "missing ${want[*]}; run as root or install them"
    log "installing ${want[*]}"
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        POLICY_RC_D_CREATED=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! compgen -G '/var/lib/apt/lists/*Packages*' >/dev/null; then
        apt-get update -q >&2
    fi
    if ! apt-get install -y -q --no-install-recommends "${want[@]}" >&2; then
        apt-get update -q >&2
        apt-get install -y -q --no-install-recommends "${want[@]}" >&2
    fi
    if [[ $POLICY_RC_D_CREATED == 1 ]]; then
        rm -f /usr/sbin/policy-rc.d
        POLICY_RC_D_CREATED=0
    fi
}

# port_free PORT : true when nothing listens on 127.0.0.1:PORT.
port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# wait_http URL [SECONDS] [PID] : waits until URL answers with any HTTP status; gives up
# early when PID (the server expected to answer) has exited. https URLs are accepted with
# any certificate (the benchmarks use a self-signed one).
wait_http() {
    local url=$1 secs=${2:-15} pid=${3:-} i
    for i in $(seq 1 $((secs * 20))); do
        if curl -s -k -o /dev/null --max-time 1 "$url"; then
            return 0
        fi
        [[ -z $pid ]] || kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# build_graylane : release build; sets GRAYLANE_BIN.
build_graylane() {
    if [[ ${NO_BUILD:-0} != 1 ]]; then
        log "cargo build --release"
        (cd "$ROOT_DIR" && cargo build --release --quiet) >&2 || die "cargo build --release failed"
    fi
    GRAYLANE_BIN="${CARGO_TARGET_DIR:-$ROOT_DIR/target}/release/graylane"
    [[ -x $GRAYLANE_BIN ]] || die "no binary at $GRAYLANE_BIN"
}

# build_floor : release build of benches/floor (its own workspace); sets FLOOR_BIN.
build_floor() {
    local dir="$ROOT_DIR/benches/floor"
    if [[ ${NO_BUILD:-0} != 1 ]]; then
        log "cargo build --release (benches/floor)"
        (cd "$dir" && cargo build --release --quiet) >&2 || die "cargo build --release failed in benches/floor"
    fi
    FLOOR_BIN="$dir/target/release/graylane-floor"
    [[ -x $FLOOR_BIN ]] || die "no binary at $FLOOR_BIN"
}

# proc_tree PID : the PID and its direct children (nginx master + workers).
proc_tree() {
    echo "$1"
    pgrep -P "$1" || true
}

# cpu_ticks PID... : utime+stime of all threads of these processes, in clock ticks.
cpu_ticks() {
    local p total=0 t
    for p in "$@"; do
        [[ -r /proc/$p/stat ]] || continue
        # Fields after "pid (comm) ": state is 1, utime 12, stime 13.
        t=$(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')
        total=$((total + t))
    done
    echo "$total"
}

# cpu_split PID... : "UTIME STIME" (user and kernel time) of all threads of these
# processes, in clock ticks. /proc/PID/stat of a process sums all its threads, live and
# exited, so one read per process covers a multi-threaded proxy.
cpu_split() {
    local p u=0 s=0 pu ps
    for p in "$@"; do
        [[ -r /proc/$p/stat ]] || continue
        # Fields after "pid (comm) ": state is 1, utime 12, stime 13.
        read -r pu ps < <(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12, $13}') || continue
        u=$((u + pu))
        s=$((s + ps))
    done
    echo "$u $s"
}

# rss_peak_kib PID... : sum of VmHWM (peak resident set) of these processes, in KiB.
rss_peak_kib() {
    local p total=0 v
    for p in "$@"; do
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# rss_now_kib PID : current VmRSS in KiB.
rss_now_kib() {
    awk '/^VmRSS:/ {print $2}' "/proc/$1/status"
}

# machine_notes : one markdown block describing the machine and tool versions.
machine_notes() {
    local cpu
    cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    echo "- machine: ${cpu:-unknown CPU}, $(nproc) online cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
    echo "- load average when the report was written: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min; other work on the machine skews every row alike only if it is steady)"
    # GRAYLANE_COMMIT: what the binary was built from, when the tree may have moved on
    # since (a long run copies the binary at its start).
    echo "- graylane ${GRAYLANE_COMMIT:-$(cd "$ROOT_DIR" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT_DIR" && git diff --quiet HEAD -- src 2>/dev/null || echo ' (+ uncommitted src changes)')} ($([[ ${GRAYLANE_BIN:-} == */pgo/release/* ]] && echo "release profile, profile-guided: benches/load/pgo.sh" || echo "release profile"))"
}
