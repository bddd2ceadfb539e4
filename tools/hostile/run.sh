#!/usr/bin/env bash
# Peer comparison for the hardening suite: the hostile HTTP/1.1 cases of
# tools/hostile/cases.json (smuggling both ways, upgrade abuse, header abuse; the same
# bytes tests/hardening.rs sends) through nginx, haproxy and graylane (release binary),
# each in front of its own copy of the same tiny recording upstream (hostile.py), and
# a markdown table of what each answered and what reached its upstream.
#
#   bash tools/hostile/run.sh                 # table on stdout, progress on stderr
#   bash tools/hostile/run.sh --only cl-te,te-cl
#   GRAYLANE_BIN=/path/graylane GRAYLANE_COMMIT=abc123 GRAYLANE_TREE=clean bash tools/hostile/run.sh
#
# Not run in CI. Installs nginx and haproxy from Debian packages when missing (root;
# a temporary policy-rc.d keeps their system services from starting: see
# benches/load/lib.sh), builds graylane with `cargo build --release` unless NO_BUILD=1.
# Every process it starts is stopped by PID on exit.
#
# The peers are configured as they are commonly deployed in front of an application
# that also takes WebSocket: nginx with `proxy_http_version 1.1` and the documented
# `Upgrade`/`Connection $connection_upgrade` pair, haproxy in `mode http` (which
# tunnels any 101 by itself), both keeping upstream connections alive.
set -euo pipefail

HOSTILE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../../benches/load/lib.sh
source "$HOSTILE_DIR/../../benches/load/lib.sh"

ONLY=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --only) ONLY=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) die "unknown argument $1" ;;
    esac
done

trap cleanup EXIT
make_run_dir
ensure_tools nginx:nginx haproxy:haproxy python3:python3
NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY_BIN=$(command -v haproxy || echo /usr/sbin/haproxy)
if [[ -n ${GRAYLANE_BIN:-} ]]; then
    [[ -x $GRAYLANE_BIN ]] || die "no binary at $GRAYLANE_BIN"
else
    build_graylane
fi

# What was measured: the working tree's commit and whether src/ had uncommitted changes,
# unless a prebuilt GRAYLANE_BIN says otherwise (GRAYLANE_COMMIT, GRAYLANE_TREE).
COMMIT=${GRAYLANE_COMMIT:-$(cd "$ROOT_DIR" && git rev-parse HEAD 2>/dev/null || echo unknown)}
DIRTY=${GRAYLANE_TREE:-$(cd "$ROOT_DIR" && if git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null; then echo clean; else echo "dirty (uncommitted src changes)"; fi)}

# Eight free loopback ports: 3 proxies, 3 upstreams, graylane's admin, spare.
read -r P_NGINX P_HAPROXY P_GRAYLANE U_NGINX U_HAPROXY U_GRAYLANE P_ADMIN _ < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(8)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
)

mkdir -p "$RUN_DIR/nginx-tmp"
cat >"$RUN_DIR/nginx.conf" <<EOF
worker_processes 1;
pid $RUN_DIR/nginx.pid;
error_log $RUN_DIR/nginx.error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $RUN_DIR/nginx-tmp/body;
    proxy_temp_path $RUN_DIR/nginx-tmp/proxy;
    fastcgi_temp_path $RUN_DIR/nginx-tmp/fastcgi;
    uwsgi_temp_path $RUN_DIR/nginx-tmp/uwsgi;
    scgi_temp_path $RUN_DIR/nginx-tmp/scgi;
    map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
    upstream up { server 127.0.0.1:$U_NGINX; keepalive 16; }
    server {
        listen 127.0.0.1:$P_NGINX;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Host \$http_host;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_buffering off;
        }
    }
}
EOF

cat >"$RUN_DIR/haproxy.cfg" <<EOF
global
    pidfile $RUN_DIR/haproxy.pid
defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    timeout http-request 5s
    timeout http-keep-alive 5s
    option http-keep-alive
    option forwardfor
    http-reuse always
frontend fe
    bind 127.0.0.1:$P_HAPROXY
    default_backend be
backend be
    server s1 127.0.0.1:$U_HAPROXY
EOF

cat >"$RUN_DIR/graylane.yaml" <<EOF
listeners:
  - name: im
    bind: "127.0.0.1:$P_GRAYLANE"
admin: { bind: "127.0.0.1:$P_ADMIN" }
rules_file: rules.yaml
services:
  - name: chat
    match: { path_prefix: / }
    pools:
      stable: { endpoints: ["127.0.0.1:$U_GRAYLANE"] }
timeouts: { request_header: 5s, idle: 10s, upstream_response: 5s }
EOF
echo 'rules: []' >"$RUN_DIR/rules.yaml"

start_bg upstream python3 "$HOSTILE_DIR/hostile.py" upstream --cases "$HOSTILE_DIR/cases.json" \
    --ports "$U_NGINX,$U_HAPROXY,$U_GRAYLANE" --log-dir "$RUN_DIR"
start_bg nginx "$NGINX_BIN" -p "$RUN_DIR" -c "$RUN_DIR/nginx.conf" -e "$RUN_DIR/nginx.error.log" -g 'daemon off;'
start_bg haproxy "$HAPROXY_BIN" -db -f "$RUN_DIR/haproxy.cfg"
RUST_LOG=error start_bg graylane "$GRAYLANE_BIN" run --config "$RUN_DIR/graylane.yaml"

# Wait until every port listens (without sending a request: that would reach, and
# count in, the upstreams).
for port in "$U_NGINX" "$U_HAPROXY" "$U_GRAYLANE" "$P_NGINX" "$P_HAPROXY" "$P_GRAYLANE"; do
    for _ in $(seq 1 100); do
        port_free "$port" || break
        sleep 0.1
    done
    port_free "$port" && die "nothing listens on $port (see $RUN_DIR/*.log)"
done

log "nginx $("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //'), $("$HAPROXY_BIN" -v | head -1), graylane $COMMIT ($DIRTY)"
echo "Measured $(date -u +%Y-%m-%dT%H:%MZ): graylane $COMMIT, tree $DIRTY; $("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //'); $("$HAPROXY_BIN" -v | head -1 | cut -d' ' -f1-3)."
echo
python3 "$HOSTILE_DIR/hostile.py" client --cases "$HOSTILE_DIR/cases.json" --log-dir "$RUN_DIR" \
    --proxy "nginx=$P_NGINX:$U_NGINX" --proxy "haproxy=$P_HAPROXY:$U_HAPROXY" \
    --proxy "graylane=$P_GRAYLANE:$U_GRAYLANE" ${ONLY:+--only "$ONLY"}
