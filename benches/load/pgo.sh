#!/usr/bin/env bash
# A profile-guided (PGO) release build of graylane: the compiler lays out and inlines the
# request path by what a real load executed, which cuts the instructions per request by
# ~17-19% (README, "Performance"). Three steps:
#   1. an instrumented release build (rustc -Cprofile-generate), in target/pgo-generate;
#   2. that binary serves a training load on loopback, the load benchmark's own: HTTP/1.1
#      keep-alive over plaintext (wrk with benches/load/uids.lua: header and cookie
#      markers, 20% gray), HTTP/2 and HTTP/1.1 over TLS (h2load), in front of the
#      benchmark's upstream nginx; it then stops on SIGTERM and writes its profile;
#   3. the profile merged (llvm-profdata, rustup's llvm-tools component) and the release
#      build made with it (-Cprofile-use): target/pgo/release/graylane.
# Paths the training load does not take (long links, reloads, the admin API) are built
# as cold code: as correct as in the plain build, smaller, and no faster.
#
# Usage: benches/load/pgo.sh [--seconds S]
#   --seconds S   plaintext training time (default 10; the TLS loads send 200,000 and
#                 100,000 requests)
# Then, e.g.: CARGO_TARGET_DIR=target/pgo bash benches/load/run.sh --no-build
# Installs nginx, wrk, h2load (nghttp2-client) and openssl from Debian packages if
# missing (needs root), and rustup's llvm-tools component if llvm-profdata is missing.
set -euo pipefail

source "$(dirname "$0")/lib.sh"

SECONDS_PLAIN=10
while [[ $# -gt 0 ]]; do
    case $1 in
    --seconds) SECONDS_PLAIN=$2; shift ;;
    -h | --help) sed -n "2,20p" "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

trap cleanup EXIT
make_run_dir
ensure_tools nginx:nginx wrk:wrk h2load:nghttp2-client openssl:openssl curl:curl

# llvm-profdata must match rustc's LLVM: take it from the toolchain's llvm-tools.
sysroot=$(cd "$ROOT_DIR" && rustc --print sysroot)
host=$(cd "$ROOT_DIR" && rustc -vV | awk '/^host:/ {print $2}')
PROFDATA="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x $PROFDATA ]]; then
    log "rustup component add llvm-tools"
    (cd "$ROOT_DIR" && rustup component add llvm-tools) >&2 || die "cannot add rustup's llvm-tools (llvm-profdata)"
fi
[[ -x $PROFDATA ]] || die "no llvm-profdata at $PROFDATA"

GEN_DIR="$ROOT_DIR/target/pgo-generate"
USE_DIR="$ROOT_DIR/target/pgo"
PROFILES="$RUN_DIR/profiles"
# Build scripts and proc macros are instrumented too and write profiles while building:
# their own directory, kept out of the merge.
log "instrumented build (target/pgo-generate)"
(cd "$ROOT_DIR" && RUSTFLAGS="-Cprofile-generate=$RUN_DIR/build-profiles" \
    CARGO_TARGET_DIR="$GEN_DIR" cargo build --release --locked --quiet --bin graylane) >&2 ||
    die "instrumented build failed"

PORT=18600
TLS_PORT=18643
ADMIN_PORT=18690
STABLE_PORT=18601
GRAY_PORT=18602
sed -e "s|@RUN@|$RUN_DIR|g" -e "s|@STABLE_PORT@|$STABLE_PORT|g" -e "s|@GRAY_PORT@|$GRAY_PORT|g" \
    "$LOAD_DIR/upstream-nginx.conf" >"$RUN_DIR/upstream-nginx.conf"
mkdir -p "$RUN_DIR/upstream-body"
start_bg upstream nginx -p "$RUN_DIR" -c "$RUN_DIR/upstream-nginx.conf" \
    -e "$RUN_DIR/upstream-nginx.error.log" -g 'daemon off;'
wait_http "http://127.0.0.1:$STABLE_PORT/" 15 "$BG_PID" || die "upstream nginx did not start"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$RUN_DIR/key.pem" -out "$RUN_DIR/cert.pem" -subj /CN=localhost \
    >"$RUN_DIR/openssl.log" 2>&1 || die "openssl: $(cat "$RUN_DIR/openssl.log")"
# The load benchmark's config (metrics, a 1% access log), plus a TLS listener.
sed -e "s|@PORT@|$PORT|g" -e "s|@ADMIN_PORT@|$ADMIN_PORT|g" -e "s|@STABLE_PORT@|$STABLE_PORT|g" \
    -e "s|@GRAY_PORT@|$GRAY_PORT|g" -e "s|@WORKERS@|1|g" "$LOAD_DIR/graylane.yaml" >"$RUN_DIR/graylane.yaml"
sed -i "/^    bind: \"127.0.0.1:$PORT\"/a\\  - name: console\\n    bind: \"127.0.0.1:$TLS_PORT\"\\n    tls: { cert: \"$RUN_DIR/cert.pem\", key: \"$RUN_DIR/key.pem\" }" \
    "$RUN_DIR/graylane.yaml"
grep -q "127.0.0.1:$TLS_PORT" "$RUN_DIR/graylane.yaml" || die "could not add the TLS listener"
cp "$LOAD_DIR/rules.yaml" "$RUN_DIR/rules.yaml"

log "training load"
LLVM_PROFILE_FILE="$PROFILES/graylane-%p.profraw" RUST_LOG=warn,graylane::access=info \
    start_bg graylane "$GEN_DIR/release/graylane" run --config "$RUN_DIR/graylane.yaml"
GL_PID=$BG_PID
wait_http "http://127.0.0.1:$PORT/" 30 "$GL_PID" || die "instrumented graylane did not start"
[[ $(curl -s -H 'xdw-kefu-uid: 10000001' "http://127.0.0.1:$PORT/chat/send") == gray ]] ||
    die "instrumented graylane routes wrongly"
[[ $(curl -sk "https://127.0.0.1:$TLS_PORT/chat/send") == stable ]] ||
    die "instrumented graylane's TLS listener answers wrongly"
wrk -t1 -c64 -d"${SECONDS_PLAIN}s" -s "$LOAD_DIR/uids.lua" "http://127.0.0.1:$PORT/chat/send" \
    >"$RUN_DIR/wrk.txt" 2>&1 || die "wrk failed: $(tail -3 "$RUN_DIR/wrk.txt")"
h2_load() { # LOG ARGS... : h2load against the TLS listener; every request must succeed
    local out=$1
    shift
    h2load -t1 -c50 -H 'xdw-kefu-uid: 52345678' -H 'xdw-app-version: 5.3.1' "$@" \
        "https://127.0.0.1:$TLS_PORT/chat/send" >"$out" 2>&1 || die "h2load failed: $(tail -3 "$out")"
    grep -q ' 0 failed' "$out" || die "h2load: requests failed: $(grep '^requests:' "$out")"
}
h2_load "$RUN_DIR/h2load-h2.txt" -m10 -n200000
h2_load "$RUN_DIR/h2load-h1.txt" --h1 -m1 -n100000
log "trained: $(awk '/^Requests\/sec:/ {print $2}' "$RUN_DIR/wrk.txt") req/s plaintext (instrumented)"
stop_pid "$GL_PID" # writes the profile on its way out
compgen -G "$PROFILES/graylane-*.profraw" >/dev/null || die "the instrumented graylane wrote no profile"

"$PROFDATA" merge -o "$RUN_DIR/graylane.profdata" "$PROFILES"/graylane-*.profraw ||
    die "llvm-profdata merge failed"
log "profile-guided build (target/pgo)"
(cd "$ROOT_DIR" && RUSTFLAGS="-Cprofile-use=$RUN_DIR/graylane.profdata" \
    CARGO_TARGET_DIR="$USE_DIR" cargo build --release --locked --quiet --bin graylane) >&2 ||
    die "profile-guided build failed"
"$USE_DIR/release/graylane" --version >/dev/null || die "the profile-guided binary does not run"
log "built $USE_DIR/release/graylane"
