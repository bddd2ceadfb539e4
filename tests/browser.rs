//! A real browser in front of graylane: headless Chromium, driven over the DevTools
//! protocol, uses a small staff-console app through a TLS listener (HTTP/2 by ALPN) and a
//! plaintext one, before and after the staff-group cookie that routes it to gray.
//!
//! What only a browser shows:
//! - caching: `app.js` (`max-age=600`) cached from stable before the cookie must not be
//!   used by a new tab once the cookie sends the user to gray: Chromium's HTTP cache keys
//!   on `Vary: Cookie`, which `vary_markers` adds. A reload of the same tab may still run
//!   the stable copy from Blink's in-memory cache, which never sees the `Cookie` field;
//!   README gives the remedy this test checks with `fixed.js`: a fixed-name asset served
//!   `no-cache` with an ETag per pool is revalidated, through graylane, at gray;
//! - cookies: Chromium sends each cookie as its own field over HTTP/2 (a control server
//!   without graylane shows it); the upstream must receive one field joined with "; "
//!   (RFC 9113 §8.2.3);
//! - long links: a re-homed WebSocket must reach `onclose` with 1012, not 1006, so the
//!   page reconnects, into its new pool.
//!
//! Failed checks are collected and reported together at the end; a missing precondition
//! (a page that does not load) stops the test at once.
//!
//! Needs Debian's `chromium` (`/usr/bin/chromium` or on `PATH`). Without it the test says
//! so on stderr and passes, unless `GRAYLANE_REQUIRE_BROWSER=1` (CI) makes that a failure.
// Tests run on runtimes with tokio's time driver and may use its timers.
#![allow(clippy::disallowed_methods)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cdp::{chromium_or_skip, Browser, Cdp, Page};
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use sha2::Digest;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// The staff group the rules send to gray.
const GROUP_COOKIE: &str = "xdw-kefu-agent-gid";
/// How long a page may take to load (and a link to answer) on a busy 2-core machine.
const LOAD: Duration = Duration::from_secs(15);
/// `long_links.rehome_grace` in the config below.
const GRACE: Duration = Duration::from_secs(1);
/// What the re-home may take beyond the grace: the reload (inotify, a 500 ms poll behind
/// it) and the page seeing the close.
const SLACK: Duration = Duration::from_secs(4);

// ---------------------------------------------------------------------------------------
// Upstreams: the staff-console app, one server per service and pool.

/// One request as an upstream received it: the target and every header field line.
#[derive(Debug, Clone)]
struct Hit {
    target: String,
    lines: Vec<(String, String)>,
}

impl Hit {
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    /// The values of every field line named `name`, one entry per line.
    fn values(&self, name: &str) -> Vec<String> {
        self.lines
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// `page`: the HTML page on `/`.
    Page,
    /// `static`: `/static/app.js`, cacheable for 10 minutes, and `/static/fixed.js`,
    /// `no-cache` with an ETag per pool (answering 304 to its own ETag).
    Static,
    /// `api`: `/api/whoami`, the pool and the cookie field lines received.
    Api,
}

/// An HTTP/1.1 upstream of one service's pool, recording every request.
struct App {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    task: JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    /// The requests for `path` (query ignored) so far.
    fn hits(&self, path: &str) -> Vec<Hit> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.path() == path)
            .cloned()
            .collect()
    }
}

async fn spawn_app(kind: Kind, pool: &'static str) -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
    let hits2 = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let hits = hits2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let hit = Hit {
                        target: req
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default(),
                        lines: req
                            .headers()
                            .iter()
                            .map(|(n, v)| {
                                (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into())
                            })
                            .collect(),
                    };
                    hits.lock().unwrap().push(hit.clone());
                    async move { Ok::<_, Infallible>(app_answer(kind, pool, &hit)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    App { addr, hits, task }
}

fn answer(status: u16, content_type: &str, cache: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", cache)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn app_answer(kind: Kind, pool: &str, hit: &Hit) -> Response<Full<Bytes>> {
    match (kind, hit.path()) {
        (Kind::Page, "/") => answer(200, "text/html; charset=utf-8", "no-store", page(pool)),
        (Kind::Static, "/static/app.js") => answer(
            200,
            "application/javascript",
            "max-age=600",
            format!("window.VERSION = \"{pool}\";\n"),
        ),
        (Kind::Static, "/static/fixed.js") => {
            let etag = format!("\"{pool}-1\"");
            let status = if hit.values("if-none-match").contains(&etag) {
                304
            } else {
                200
            };
            let mut r = answer(
                status,
                "application/javascript",
                "no-cache",
                if status == 304 {
                    String::new()
                } else {
                    format!("window.FIXED = \"{pool}\";\n")
                },
            );
            r.headers_mut().insert("etag", etag.parse().unwrap());
            r
        }
        (Kind::Api, "/api/whoami") => answer(
            200,
            "application/json",
            "no-store",
            json!({ "pool": pool, "cookie": hit.values("cookie") }).to_string(),
        ),
        // favicon.ico and anything else.
        _ => answer(404, "text/plain", "no-store", "not here\n".into()),
    }
}

/// The staff console: loads app.js, asks the API who it is, opens a WebSocket (and
/// reconnects once when it closes), and keeps everything it saw in `window.R`.
fn page(pool: &str) -> String {
    let script = r#"
const R = window.R = {
  nonce: String(performance.timeOrigin) + ':' + Math.random(),
  page: 'POOL', version: window.VERSION || null, fixed: window.FIXED || null,
  api: null, apiError: null, opens: 0, ws: [], closes: []
};
function show() { document.getElementById('out').textContent = JSON.stringify(R, null, 1); }
fetch('/api/whoami', { cache: 'no-store' })
  .then(r => r.json())
  .then(j => { R.api = j; show(); }, e => { R.apiError = String(e); show(); });
function connect(attempt) {
  const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
  const ws = new WebSocket(scheme + location.host + '/ws');
  ws.onopen = () => { R.opens++; ws.send('hello ' + attempt); };
  ws.onmessage = e => { R.ws.push(e.data); show(); };
  ws.onclose = e => {
    R.closes.push({ attempt: attempt, code: e.code, reason: e.reason, clean: e.wasClean });
    show();
    if (attempt === 0) connect(1);
  };
}
connect(0);
show();
"#
    .replace("POOL", pool);
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>staff console ({pool})</title>\n\
         <script src=\"/static/app.js\"></script><script src=\"/static/fixed.js\"></script></head>\n\
         <body><h1>staff console</h1><pre id=\"out\"></pre>\n<script>{script}</script></body></html>\n"
    )
}

/// One WebSocket link as the `ws` upstream saw it.
#[derive(Debug, Clone, Default)]
struct Link {
    cookie: Vec<String>,
    got: Vec<String>,
    /// The Close frame received: code and reason.
    close: Option<(u16, String)>,
}

/// A WebSocket echo upstream of one pool: answers `POOL:TEXT`, records the handshake's
/// cookie field lines and the Close frame each link got.
struct WsApp {
    addr: SocketAddr,
    links: Arc<Mutex<Vec<Link>>>,
    open: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for WsApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsApp {
    fn links(&self) -> Vec<Link> {
        self.links.lock().unwrap().clone()
    }
    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

async fn spawn_ws(pool: &'static str) -> WsApp {
    use tokio_tungstenite::tungstenite::handshake::server::{Request as WsReq, Response as WsResp};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let links: Arc<Mutex<Vec<Link>>> = Arc::default();
    let open: Arc<AtomicUsize> = Arc::default();
    let (links2, open2) = (links.clone(), open.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (links, open) = (links2.clone(), open2.clone());
            tokio::spawn(async move {
                let mut cookie = Vec::new();
                // tungstenite's callback type; this one never refuses.
                #[allow(clippy::result_large_err)]
                let cb = |req: &WsReq, resp: WsResp| {
                    cookie = req
                        .headers()
                        .get_all("cookie")
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect();
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
                    return;
                };
                let i = {
                    let mut l = links.lock().unwrap();
                    l.push(Link {
                        cookie,
                        ..Link::default()
                    });
                    l.len() - 1
                };
                open.fetch_add(1, Ordering::SeqCst);
                // Read to the end: after a Close frame tungstenite sends the reply.
                while let Some(Ok(m)) = ws.next().await {
                    match m {
                        Message::Text(t) => {
                            links.lock().unwrap()[i].got.push(t.to_string());
                            if ws.send(Message::text(format!("{pool}:{t}"))).await.is_err() {
                                break;
                            }
                        }
                        Message::Close(f) => {
                            links.lock().unwrap()[i].close =
                                Some(f.map_or((1005, String::new()), |f| {
                                    (u16::from(f.code), f.reason.to_string())
                                }));
                        }
                        _ => {}
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    WsApp {
        addr,
        links,
        open,
        task,
    }
}

/// Both pools of one service.
struct Pools<T> {
    stable: T,
    gray: T,
}

struct Apps {
    page: Pools<App>,
    stat: Pools<App>,
    api: Pools<App>,
    ws: Pools<WsApp>,
}

impl Apps {
    async fn spawn() -> Apps {
        Apps {
            page: Pools {
                stable: spawn_app(Kind::Page, "stable").await,
                gray: spawn_app(Kind::Page, "gray").await,
            },
            stat: Pools {
                stable: spawn_app(Kind::Static, "stable").await,
                gray: spawn_app(Kind::Static, "gray").await,
            },
            api: Pools {
                stable: spawn_app(Kind::Api, "stable").await,
                gray: spawn_app(Kind::Api, "gray").await,
            },
            ws: Pools {
                stable: spawn_ws("stable").await,
                gray: spawn_ws("gray").await,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// graylane: a TLS listener `console` and a plaintext one `im`.

fn graylane_yaml(a: &Apps) -> String {
    let service = |name: &str, prefix: &str, stable: SocketAddr, gray: SocketAddr, extra: &str| {
        format!(
            "  - name: {name}\n    match: {{ path_prefix: {prefix} }}\n{extra}    pools:\n      \
             stable: {{ endpoints: [\"{stable}\"] }}\n      gray: {{ endpoints: [\"{gray}\"] }}\n"
        )
    };
    format!(
        "listeners:\n  - name: console\n    bind: \"127.0.0.1:0\"\n    tls: {{ cert: console.crt, key: console.key }}\n  \
         - name: im\n    bind: \"127.0.0.1:0\"\n\
         admin: {{ bind: \"127.0.0.1:0\" }}\nrules_file: rules.yaml\nservices:\n{}{}{}{}\
         long_links: {{ rehome_grace: 1s, rehome_spread: 0 }}\n",
        service(
            "static",
            "/static/",
            a.stat.stable.addr,
            a.stat.gray.addr,
            "    vary_markers: true\n"
        ),
        service("page", "/", a.page.stable.addr, a.page.gray.addr, ""),
        service("api", "/api/", a.api.stable.addr, a.api.gray.addr, ""),
        service("ws", "/ws", a.ws.stable.addr, a.ws.gray.addr, ""),
    )
}

/// Staff group 7 goes to `route`; `version` tells the reloads apart.
fn rules(version: &str, route: &str) -> String {
    format!(
        "version: \"{version}\"\nrules:\n  - name: staff-group-7\n    \
         when: {{ agent_gid: {{ any: [7] }} }}\n    route: {route}\n"
    )
}

/// Writes the rules as an editor does and waits until graylane serves them.
async fn set_rules(p: &Proxy, version: &str, route: &str) {
    write_atomic(&p.rules_path(), &rules(version, route));
    let loaded = eventually(Duration::from_secs(5), || async {
        let (_, body) = admin_get(p, "/rules").await;
        json(&body)["version"] == version
    })
    .await;
    assert!(loaded, "graylane did not load rules {version}");
}

/// A self-signed certificate for the `.test` names, and the base64 SHA-256 of its
/// SubjectPublicKeyInfo for `--ignore-certificate-errors-spki-list`.
struct Cert {
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
    spki_sha256: String,
}

fn make_cert() -> Cert {
    let names = ["console.test", "im.test", "direct.test", "localhost"];
    let ck = rcgen::generate_simple_self_signed(names.map(String::from).to_vec()).unwrap();
    Cert {
        cert_pem: ck.cert.pem(),
        key_pem: ck.key_pair.serialize_pem(),
        cert_der: ck.cert.der().to_vec(),
        key_der: ck.key_pair.serialize_der(),
        spki_sha256: base64(&sha2::Sha256::digest(ck.key_pair.public_key_der())),
    }
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            out.push(if i <= c.len() {
                A[(n >> shift) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    out
}

async fn start_graylane(a: &Apps, cert: &Cert) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("console.crt"), &cert.cert_pem).unwrap();
    std::fs::write(dir.path().join("console.key"), &cert.key_pem).unwrap();
    std::fs::write(dir.path().join("graylane.yaml"), graylane_yaml(a)).unwrap();
    std::fs::write(dir.path().join("rules.yaml"), rules("r0", "gray")).unwrap();
    start_in(dir).await.expect("graylane starts")
}

/// Control, without graylane: an HTTP/2 TLS server that answers `/probe` with the
/// `cookie` field lines Chromium sent, so the test can say what the browser sends.
async fn spawn_direct_h2(cert: &Cert) -> (SocketAddr, JoinHandle<()>) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der.clone())),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let resp = if req.uri().path() == "/probe" {
                        let lines: Vec<String> = req
                            .headers()
                            .get_all("cookie")
                            .iter()
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                            .collect();
                        answer(
                            200,
                            "application/json",
                            "no-store",
                            json!(lines).to_string(),
                        )
                    } else if req.uri().path() == "/" {
                        answer(
                            200,
                            "text/html",
                            "no-store",
                            "<!doctype html><title>direct</title><p>direct".into(),
                        )
                    } else {
                        answer(404, "text/plain", "no-store", String::new())
                    };
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

// ---------------------------------------------------------------------------------------
// The browser side.

/// `window.R` once a page load newer than `old` has its API answer and a WebSocket
/// message, with the resource timings (protocol, bytes over the wire) of what it fetched.
async fn loaded(cdp: &mut Cdp, tab: &Page, old: &Value) -> Value {
    let expr = format!(
        "(() => {{ const R = window.R; \
           if (!R || R.nonce === {old} || !(R.api || R.apiError) || R.ws.length < 1) return null; \
           const res = {{}}; \
           for (const e of performance.getEntriesByType('resource')) \
             res[new URL(e.name).pathname] = {{ proto: e.nextHopProtocol, transfer: e.transferSize }}; \
           const nav = performance.getEntriesByType('navigation')[0]; \
           return {{ R, res, nav: nav ? nav.nextHopProtocol : null }}; }})()"
    );
    cdp.wait_for(tab, &expr, LOAD)
        .await
        .unwrap_or_else(|e| panic!("page did not load: {e}"))
}

/// The Network events (`Network.enable` on the tab) of the requests for `path` among
/// `events`: what Chromium sent and where the answer came from, for failure messages.
fn network_log(events: &[Value], path: &str) -> Vec<Value> {
    let ids: Vec<&Value> = events
        .iter()
        .filter(|e| {
            let p = &e["params"];
            [&p["request"]["url"], &p["response"]["url"]]
                .iter()
                .filter_map(|u| u.as_str())
                .any(|u| u.split('?').next().unwrap_or("").ends_with(path))
        })
        .map(|e| &e["params"]["requestId"])
        .collect();
    events
        .iter()
        .filter(|e| ids.contains(&&e["params"]["requestId"]))
        .map(|e| {
            let p = &e["params"];
            json!({
                "event": e["method"],
                "url": p["request"]["url"].as_str().or(p["response"]["url"].as_str()),
                "headers": if p["headers"].is_null() { &p["request"]["headers"] } else { &p["headers"] },
                "response": if p["response"].is_null() { Value::Null } else { json!({
                    "status": p["response"]["status"],
                    "protocol": p["response"]["protocol"],
                    "fromDiskCache": p["response"]["fromDiskCache"],
                    "headers": p["response"]["headers"],
                })},
            })
        })
        .collect()
}

/// Says so when a [`network_log`] shows an answer from Blink's in-memory cache, whose
/// Vary check compares only the request fields the page itself set (never `Cookie`).
fn from_memory(log: &Value) -> &'static str {
    let events = log.as_array().map(Vec::as_slice).unwrap_or_default();
    let served = events
        .iter()
        .any(|e| e["event"] == "Network.requestServedFromCache");
    let from_disk = events
        .iter()
        .any(|e| e["response"]["fromDiskCache"] == true);
    if served && !from_disk {
        " in memory (Network.requestServedFromCache, fromDiskCache false: no request \
         reached the network stack, where the Cookie header and Vary: Cookie apply)"
    } else {
        ""
    }
}

async fn nonce(cdp: &mut Cdp, tab: &Page) -> Value {
    cdp.evaluate(tab, "window.R ? window.R.nonce : null")
        .await
        .unwrap_or(Value::Null)
}

struct Site {
    /// `console` (TLS, HTTP/2) or `im` (plaintext, HTTP/1.1).
    listener: &'static str,
    origin: String,
    /// What `nextHopProtocol` must say for the page's subresources.
    proto: &'static str,
}

/// The outcomes checked along the way. A failed check is recorded and the scenario goes
/// on where it can, so one run tells everything that is wrong; the test fails at the end.
#[derive(Default)]
struct Checks {
    failed: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            let m = msg();
            eprintln!("CHECK FAILED: {m}");
            self.failed.push(m);
        }
    }
}

/// The page, API and WebSocket of one load came from `pool` (app.js is checked apart).
fn check_parts(c: &mut Checks, pool: &str, got: &Value, what: &str) {
    let r = &got["R"];
    c.check(r["page"] == pool, || {
        format!("{what}: HTML page not from {pool}; R = {r}")
    });
    c.check(r["api"]["pool"] == pool, || {
        format!("{what}: /api/whoami not from {pool}; R = {r}")
    });
    let first = r["ws"][0].as_str().unwrap_or("");
    c.check(first.starts_with(&format!("{pool}:hello 0")), || {
        format!("{what}: WebSocket answered {first:?}, want {pool}:…; R = {r}")
    });
}

/// The last `/api/whoami` the gray API upstream received had the cookies in exactly one
/// field line, joined with "; " (RFC 9113 §8.2.3).
fn check_api_cookie(c: &mut Checks, a: &Apps, what: &str) {
    let hits = a.api.gray.hits("/api/whoami");
    let Some(hit) = hits.last() else {
        c.check(false, || {
            format!("{what}: the gray API upstream saw no request")
        });
        return;
    };
    c.check(
        hit.values("cookie") == vec![format!("a=1; {GROUP_COOKIE}=7")],
        || {
            format!(
                "{what}: cookie field lines at the api upstream {:?}, want exactly one, \
                 \"a=1; {GROUP_COOKIE}=7\"; all its header lines: {:?}",
                hit.values("cookie"),
                hit.lines
            )
        },
    );
}

async fn new_tab(cdp: &mut Cdp) -> Page {
    let tab = cdp.new_page().await.expect("new tab");
    // Network events only explain failures (what Chromium sent, what came from cache).
    cdp.call(Some(&tab.session), "Network.enable", json!({}))
        .await
        .expect("Network.enable");
    tab
}

/// Steps 1–4 of the scenario on one listener. Rules must send group 7 to gray on entry;
/// on exit they send it to stable (`version_after`) and every tab is closed.
async fn scenario(
    cdp: &mut Cdp,
    p: &Proxy,
    a: &Apps,
    site: &Site,
    version_after: &str,
    c: &mut Checks,
) {
    let what = site.listener;
    let url = format!("{}/", site.origin);
    let js = "/static/app.js";
    let stable_js = a.stat.stable.hits(js).len();
    let gray_js = a.stat.gray.hits(js).len();

    // 1. No cookie yet: everything stable, and app.js lands in the browser's cache.
    let tab = new_tab(cdp).await;
    cdp.navigate(&tab, &url).await.expect("navigate");
    let got = loaded(cdp, &tab, &Value::Null).await;
    let w = format!("{what}, before the cookie");
    check_parts(c, "stable", &got, &w);
    c.check(
        got["R"]["version"] == "stable" && got["R"]["fixed"] == "stable",
        || format!("{w}: app.js and fixed.js; {got}"),
    );
    c.check(
        got["nav"] == site.proto && got["res"][js]["proto"] == site.proto,
        || format!("{w}: protocol, want {}: {got}", site.proto),
    );
    assert_eq!(
        a.stat.stable.hits(js).len(),
        stable_js + 1,
        "{w}: app.js fetched"
    );
    // A reload with no cookie change reuses the cached app.js: the cache is live, so
    // what step 2 shows is Vary's doing.
    let old = nonce(cdp, &tab).await;
    cdp.reload(&tab).await.expect("reload");
    let got = loaded(cdp, &tab, &old).await;
    check_parts(
        c,
        "stable",
        &got,
        &format!("{what}, reload before the cookie"),
    );
    assert_eq!(
        a.stat.stable.hits(js).len(),
        stable_js + 1,
        "{what}: a plain reload fetched app.js again: the browser does not cache it, so \
         the Vary checks below would prove nothing ({got})"
    );

    // 2. The staff-group cookie and one unrelated cookie, then reload: page, API, link
    // and fixed.js gray. fixed.js is revalidated (`no-cache`) and graylane sends that
    // revalidation, with the stable copy's ETag, to gray, which answers in full.
    let jar = cdp
        .evaluate(
            &tab,
            &format!(
                "document.cookie = 'a=1; path=/'; document.cookie = '{GROUP_COOKIE}=7; path=/'; \
                 document.cookie"
            ),
        )
        .await
        .expect("set cookies");
    assert_eq!(jar, format!("a=1; {GROUP_COOKIE}=7"), "{what}: cookie jar");
    let old = nonce(cdp, &tab).await;
    cdp.take_events();
    cdp.reload(&tab).await.expect("reload");
    let got = loaded(cdp, &tab, &old).await;
    let js_log = Value::from(network_log(&cdp.take_events(), js));
    let w = format!("{what}, reload with the staff cookie");
    check_parts(c, "gray", &got, &w);
    let fetched = a.stat.gray.hits(js).len() - gray_js;
    let fixed = a.stat.gray.hits("/static/fixed.js");
    let revalidated = fixed
        .last()
        .map(|h| h.values("if-none-match"))
        .unwrap_or_default();
    c.check(
        got["R"]["fixed"] == "gray" && revalidated == vec!["\"stable-1\"".to_owned()],
        || {
            format!(
                "{w}: window.FIXED = {}, and the gray static upstream's last fixed.js request \
                 carried If-None-Match {revalidated:?} (want \"gray\" and the stable copy's \
                 ETag: a revalidation routed like the request)",
                got["R"]["fixed"]
            )
        },
    );
    // What README says of a fixed-name asset with max-age: Blink's in-memory cache may
    // serve the stable copy to this reload (it never compares Cookie). Reported, not
    // required: it is the browser's choice, and the new tab below must get gray.
    eprintln!(
        "{w}: app.js window.VERSION = {} (gray upstream saw {fetched} request(s){})",
        got["R"]["version"],
        from_memory(&js_log),
    );
    c.check(
        fetched == 0 || got["res"][js]["proto"] == site.proto,
        || format!("{w}: app.js protocol, want {}: {got}", site.proto),
    );
    c.check(got["res"]["/api/whoami"]["proto"] == site.proto, || {
        format!("{w}: /api/whoami protocol, want {}: {got}", site.proto)
    });
    check_api_cookie(c, a, &w);
    c.check(
        a.ws.gray.links().last().map(|l| l.cookie.clone())
            == Some(vec![format!("a=1; {GROUP_COOKIE}=7")]),
        || {
            format!(
                "{w}: WebSocket handshake cookie at the gray upstream: {:?}",
                a.ws.gray.links()
            )
        },
    );

    // 2b. The same page in a new tab, the cookie still set. A new tab has a renderer of
    // its own, so app.js comes from Chromium's HTTP cache (or the network), not from the
    // previous page's memory.
    cdp.close_page(&tab).await.expect("close tab");
    let closed = eventually(LOAD, || async { a.ws.gray.open() == 0 }).await;
    assert!(closed, "{what}: the closed tab's WebSocket is still open");
    let gray_links = a.ws.gray.links().len();
    let gray_js = a.stat.gray.hits(js).len();
    let tab = new_tab(cdp).await;
    cdp.navigate(&tab, &url).await.expect("navigate");
    let got = loaded(cdp, &tab, &Value::Null).await;
    let js_log = Value::from(network_log(&cdp.take_events(), js));
    let w = format!("{what}, new tab with the staff cookie");
    check_parts(c, "gray", &got, &w);
    let fetched = a.stat.gray.hits(js).len() - gray_js;
    eprintln!(
        "{w}: window.VERSION = {}, gray app.js fetched {fetched} time(s)",
        got["R"]["version"]
    );
    c.check(got["R"]["version"] == "gray", || {
        format!(
            "{w}: window.VERSION = {} (gray static upstream saw {fetched} more request(s)); \
             Chromium's events for app.js: {js_log}",
            got["R"]["version"]
        )
    });
    check_api_cookie(c, a, &w);
    assert_eq!(
        a.ws.gray.links().len(),
        gray_links + 1,
        "{w}: one gray link"
    );

    // 3. Group 7 back to stable while the gray link is open: after the grace the link
    // is closed with 1012 both ways, the page sees it, and reconnects into stable.
    let rehomed_series =
        "graylane_long_links_rehomed_total{from=\"gray\",service=\"ws\",to=\"stable\"}";
    let rehomed = metric(p, rehomed_series).await;
    let t0 = Instant::now();
    write_atomic(&p.rules_path(), &rules(version_after, "stable"));
    let close = cdp
        .wait_for(
            &tab,
            "window.R.closes.length ? window.R.closes[0] : null",
            GRACE + SLACK,
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: the gray WebSocket was not closed: {e}"));
    let took = t0.elapsed();
    let w = format!("{what}, re-home");
    eprintln!("{w}: the page saw the gray WebSocket close {took:?} after the rules edit: {close}");
    c.check(close["code"] == 1012 && close["clean"] == true, || {
        format!(
            "{w}: the page's onclose got {close}, want code 1012, clean (1006 = no Close frame)"
        )
    });
    c.check(took >= GRACE - Duration::from_millis(100), || {
        format!("{w}: closed {took:?} after the edit, before rehome_grace {GRACE:?}")
    });
    eventually(Duration::from_secs(3), || async {
        a.ws.gray.links()[gray_links].close.is_some()
    })
    .await;
    let link = &a.ws.gray.links()[gray_links];
    c.check(link.close.as_ref().map(|c| c.0) == Some(1012), || {
        format!("{w}: Close frame at the gray upstream: {link:?}, want 1012")
    });
    let again = cdp
        .wait_for(
            &tab,
            "window.R.opens >= 2 && window.R.ws.length >= 2 ? window.R : null",
            LOAD,
        )
        .await
        .unwrap_or_else(|e| panic!("{w}: the page did not reconnect: {e}"));
    c.check(again["ws"][1] == "stable:hello 1", || {
        format!(
            "{w}: the reconnected link answered {}, want stable; R = {again}",
            again["ws"][1]
        )
    });
    let now = metric(p, rehomed_series).await;
    c.check(now == rehomed + 1.0, || {
        format!("{w}: {rehomed_series} went from {rehomed} to {now}")
    });

    // 4. app.js answers carry Vary with Cookie.
    let head = cdp
        .evaluate(
            &tab,
            "fetch('/static/app.js', { cache: 'no-store' }).then(async r => \
             ({ status: r.status, vary: r.headers.get('vary'), \
                cache: r.headers.get('cache-control'), body: await r.text() }))",
        )
        .await
        .expect("fetch app.js");
    eprintln!("{what}: app.js answer as the page reads it: {head}");
    let vary = head["vary"].as_str().unwrap_or("").to_ascii_lowercase();
    c.check(vary.split(',').any(|v| v.trim() == "cookie"), || {
        format!("{what}: app.js Vary {vary:?} has no cookie: {head}")
    });

    cdp.close_page(&tab).await.expect("close tab");
    // No link may stay open into the next scenario's rule changes.
    let idle = eventually(LOAD, || async {
        a.ws.stable.open() + a.ws.gray.open() == 0
    })
    .await;
    assert!(
        idle,
        "{what}: WebSocket links still open after the tab closed"
    );
}

/// Control: what Chromium itself sends for two cookies over HTTP/2 (no graylane).
async fn cookie_fields_chromium_sends(cdp: &mut Cdp, addr: SocketAddr) -> Value {
    let tab = cdp.new_page().await.expect("new tab");
    cdp.navigate(&tab, &format!("https://direct.test:{}/", addr.port()))
        .await
        .expect("navigate direct");
    cdp.wait_for(&tab, "document.readyState === 'complete'", LOAD)
        .await
        .expect("direct page");
    let lines = cdp
        .evaluate(
            &tab,
            &format!(
                "document.cookie = 'a=1; path=/'; document.cookie = '{GROUP_COOKIE}=7; path=/'; \
                 fetch('/probe', {{ cache: 'no-store' }}).then(r => r.json())"
            ),
        )
        .await
        .expect("probe");
    cdp.close_page(&tab).await.expect("close tab");
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_console_in_headless_chromium() {
    let Some(exe) = chromium_or_skip("tests/browser.rs") else {
        return;
    };
    let started = Instant::now();
    let cert = make_cert();
    let apps = Apps::spawn().await;
    let p = start_graylane(&apps, &cert).await;
    let (direct, direct_task) = spawn_direct_h2(&cert).await;
    let browser = Browser::launch(
        &exe,
        &[
            "--host-resolver-rules=MAP *.test 127.0.0.1".to_owned(),
            // Trusts the test's certificate. --ignore-certificate-errors alone lets the
            // page load, but Chromium then caches nothing fetched over that connection,
            // and the Vary check needs the cache.
            format!("--ignore-certificate-errors-spki-list={}", cert.spki_sha256),
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut cdp = browser.connect().await.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{} up after {:?}", cdp.browser, started.elapsed());

    let crumbs = cookie_fields_chromium_sends(&mut cdp, direct).await;
    eprintln!("Chromium's own cookie field lines over HTTP/2 (no graylane): {crumbs}");
    direct_task.abort();

    let console = Site {
        listener: "console",
        origin: format!("https://console.test:{}", p.addrs[0].port()),
        proto: "h2",
    };
    let mut checks = Checks::default();
    set_rules(&p, "r1", "gray").await;
    scenario(&mut cdp, &p, &apps, &console, "r2", &mut checks).await;

    let im = Site {
        listener: "im",
        origin: format!("http://im.test:{}", p.addrs[1].port()),
        proto: "http/1.1",
    };
    set_rules(&p, "r3", "gray").await;
    scenario(&mut cdp, &p, &apps, &im, "r4", &mut checks).await;

    drop(cdp);
    drop(browser);
    p.stop().await;
    eprintln!("browser test took {:?}", started.elapsed());
    assert!(
        checks.failed.is_empty(),
        "{} check(s) failed:\n- {}",
        checks.failed.len(),
        checks.failed.join("\n- ")
    );
}
