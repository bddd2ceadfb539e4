//! Config files for the proxies under test, written into the run's temporary directory.
//! Both route by the same header to the same upstreams, so their figures compare.

use std::net::SocketAddr;
use std::path::Path;

use crate::run::Setup;

/// One listener and one service whose rule sends the first half of the uids to gray: the
/// least config that still makes every link go through routing.
pub(crate) fn write_graylane_config(
    dir: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
    setup: &Setup,
    gray_n: u64,
) -> Result<(), String> {
    let (stable, gray) = (setup.stable, setup.gray);
    // Long links do not count against max_connections today; the limit is raised anyway
    // so the run measures memory, not a connection cap.
    let max_conn = setup.plan.len() * 2 + 1000;
    let config = format!(
        "\
listeners:
  - name: ws
    bind: \"{listen}\"
admin: {{ bind: \"{admin}\" }}
rules_file: rules.yaml
services:
  - name: im
    match: {{ path_prefix: / }}
    pools:
      stable: {{ endpoints: [\"{stable}\"] }}
      gray: {{ endpoints: [\"{gray}\"] }}
timeouts: {{ idle: 60s }}
limits: {{ max_connections: {max_conn} }}
"
    );
    let rules = format!(
        "\
version: ws-scale
rules:
  - name: first-half-gray
    when: {{ uid: {{ ranges: [\"0-{}\"] }} }}
    route: gray
",
        gray_n - 1
    );
    std::fs::write(dir.join("graylane.yaml"), config)
        .and_then(|()| std::fs::write(dir.join("rules.yaml"), rules))
        .map_err(|e| format!("cannot write graylane config: {e}"))
}

/// nginx doing graylane's job for this run: the pool from `xdw-kefu-uid` (gray uids
/// have at most six digits, stable ones seven), WebSocket upgrade, long read timeouts so
/// idle links stay open, as many workers as graylane has (one per core).
pub(crate) fn write_nginx_config(
    dir: &Path,
    listen: SocketAddr,
    setup: &Setup,
    fd_limit: u64,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let d = dir.display();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (stable, gray) = (setup.stable, setup.gray);
    let conf = format!(
        "\
worker_processes {workers};
worker_rlimit_nofile {fd_limit};
pid {d}/nginx.pid;
events {{ worker_connections {fd_limit}; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map $http_xdw_kefu_uid $pool {{
        \"~^[0-9]{{1,6}}$\" gray;
        default stable;
    }}
    upstream stable {{ server {stable}; }}
    upstream gray {{ server {gray}; }}
    server {{
        listen {listen} backlog=4096;
        location = /__ready {{ return 200 \"ready\\n\"; }}
        location / {{
            proxy_pass http://$pool;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection \"upgrade\";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"
    );
    std::fs::write(dir.join("nginx.conf"), conf)
        .map_err(|e| format!("cannot write nginx config: {e}"))
}
