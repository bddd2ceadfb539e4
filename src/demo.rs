//! `graylane demo`: the sample config and rules (built into the binary) served with
//! built-in stable and gray upstreams on loopback, so a fresh clone shows a gray release
//! with nothing else installed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The sample `graylane.yaml`.
pub const SAMPLE_CONFIG: &str = include_str!("../config/graylane.yaml");
/// The sample `rules.yaml`.
pub const SAMPLE_RULES: &str = include_str!("../config/rules.yaml");

/// Writes the sample config and rules into `dir` (so ops can edit the rules live while
/// the demo runs) and returns the config path.
pub fn write_sample(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("rules.yaml"), SAMPLE_RULES)?;
    let cfg = dir.join("graylane.yaml");
    std::fs::write(&cfg, SAMPLE_CONFIG)?;
    Ok(cfg)
}

/// A demo upstream: answers every request with who it is and what graylane told it, and
/// echoes request bodies back so uploads can be tried.
pub async fn spawn_upstream(service: String, pool: String) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (service, pool) = (service.clone(), pool.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let body = describe(&req, &service, &pool, addr);
                    async move {
                        let mut r = Response::new(Full::new(Bytes::from(body)));
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/plain; charset=utf-8"),
                        );
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn describe<B>(req: &Request<B>, service: &str, pool: &str, addr: SocketAddr) -> String {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    format!(
        "{pool} {service} ({addr}) {} {} rule={}\n",
        req.method(),
        req.uri(),
        h("x-graylane-rule"),
    )
}

/// Prints the commands to try against a running demo.
pub fn print_tour(im: SocketAddr, console: SocketAddr, admin: SocketAddr, dir: &Path) {
    let uid20 = (30_000_000u64..)
        .find(|u| crate::rules::percent_bucket("gray-entry-20pct", &u.to_string()) < 2000)
        .unwrap_or(30_000_000);
    use std::io::Write as _;
    // A closed stdout (`graylane demo | head`) must not take the demo down.
    let _ = writeln!(
        std::io::stdout(),
        "graylane demo is running (rules: {}/rules.yaml; edit it and the change is live within a second)

Try these (each answer names the pool that served it):

  # a C-end user in a gray UID range with a new enough app -> gray
  curl -s http://{im}/chat/send -H 'xdw-kefu-uid: 10000042' -H 'xdw-app-version: 5.3.0'
  # same user on an old app -> stable
  curl -s http://{im}/chat/send -H 'xdw-kefu-uid: 10000042' -H 'xdw-app-version: 5.1.9'
  # a VIP is never gray -> stable
  curl -s http://{im}/chat/send -H 'xdw-kefu-uid: 88000001' -H 'xdw-app-version: 6.0'
  # a staff member of a gray group, as the browser sends it (cookie) -> gray
  curl -s http://{console}/api/tickets --cookie 'xdw-kefu-agent-gid=141338365001, 141338365002'
  # static resources of the console follow the same cookie -> gray
  curl -s http://{console}/static/app.js --cookie 'xdw-kefu-agent-gid=141338365002'
  # a user who came in through the gray entry point -> gray
  curl -s http://{im}/chat/send -H 'xdw-kefu-entryid: 121338361120'
  # the 20% split of another entry point: this uid is inside the 20% -> gray
  curl -s http://{im}/chat/send -H 'xdw-kefu-entryid: 121338361121' -H 'xdw-kefu-uid: {uid20}'
  # everyone else -> stable
  curl -s http://{im}/chat/send -H 'xdw-kefu-uid: 42'
  # what would happen to a request, and why
  curl -s 'http://{admin}/explain?listener=im&path=/chat/send&uid=10000042&app_version=5.3.0'
  curl -s http://{admin}/rules
  curl -s http://{admin}/metrics | grep '^graylane_requests_total' | grep -v ' 0$'

Stop with Ctrl-C.",
        dir.display()
    );
}
