//! Test harness: a real graylane and real upstream HTTP servers on 127.0.0.1, port 0.
#![allow(dead_code, unreachable_pub)]

pub mod cdp;
pub mod hostile;
pub mod raw;

#[allow(unused_imports)]
pub use raw::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use graylane::{Config, Graylane, Shared};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An address whose connects are refused while the returned socket lives: bound and
/// never listening, so no other test can take its port meanwhile. (A port bound and then
/// closed can be taken by a test running beside, whose listener then holds the connect
/// open instead of refusing it.)
pub fn refused_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = s.local_addr().unwrap();
    (s, addr)
}

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
}

/// A real HTTP/1.1 + h2c upstream. Answers with its name as body and `x-upstream`.
/// Paths: `/slow?ms=N` waits first; `/count` streams the request body and answers its
/// length; `/echo` streams it back; `/status/NNN` answers that status.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections accepted so far (keep-alive reuse shows as few connections).
    pub conns: Arc<std::sync::atomic::AtomicUsize>,
    /// Faults to inject into every answer from now on.
    pub faults: Arc<Faults>,
    task: JoinHandle<()>,
}

/// What an upstream does to every request, whatever its path: answer with this status
/// (0: as the path says) after this delay.
#[derive(Debug, Default)]
pub struct Faults {
    pub status: std::sync::atomic::AtomicU16,
    pub delay_ms: std::sync::atomic::AtomicU64,
}

impl Upstream {
    /// Every answer from now on has `status` (0: back to normal).
    pub fn fail_with(&self, status: u16) {
        self.faults
            .status
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every answer from now on waits `ms` first.
    pub fn delay(&self, ms: u64) {
        self.faults
            .delay_ms
            .store(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
    pub fn last(&self) -> Seen {
        self.seen().pop().expect("upstream saw no request")
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub async fn spawn_upstream(name: &str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let name_s = name.to_owned();
    let seen2 = seen.clone();
    let conns: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let conns2 = conns.clone();
    let faults: Arc<Faults> = Arc::default();
    let faults2 = faults.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            conns2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let name = name_s.clone();
            let seen = seen2.clone();
            let faults = faults2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let name = name.clone();
                    let seen = seen.clone();
                    let faults = faults.clone();
                    async move {
                        let delay = faults.delay_ms.load(std::sync::atomic::Ordering::SeqCst);
                        if delay > 0 {
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                        }
                        let mut resp = upstream_answer(req, &name, &seen).await;
                        let status = faults.status.load(std::sync::atomic::Ordering::SeqCst);
                        if let Ok(s) = StatusCode::from_u16(status) {
                            *resp.status_mut() = s;
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        name: name.to_owned(),
        addr,
        seen,
        conns,
        faults,
        task,
    }
}

async fn upstream_answer(
    req: Request<Incoming>,
    name: &str,
    seen: &Mutex<Vec<Seen>>,
) -> Response<TestBody> {
    if let Ok(mut s) = seen.lock() {
        s.push(Seen {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            version: req.version(),
            headers: req.headers().clone(),
        });
    }
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let mut resp = if path.starts_with("/slow") {
        let ms: u64 = query
            .strip_prefix("ms=")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Response::new(full(name.to_owned()))
    } else if path.starts_with("/count") {
        let mut body = req.into_body();
        let mut n: u64 = 0;
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => break,
            }
        }
        Response::new(full(n.to_string()))
    } else if path.starts_with("/echo") {
        Response::new(req.into_body().boxed())
    } else if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(full(name.to_owned()));
        *r.status_mut() = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::OK);
        r
    } else {
        Response::new(full(name.to_owned()))
    };
    resp.headers_mut()
        .insert("x-upstream", name.parse().unwrap());
    resp
}

/// A running graylane in this process.
pub struct Proxy {
    pub addrs: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    /// Re-reads the TLS certificates, as SIGHUP does.
    pub tls: graylane::TlsReloader,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: Option<JoinHandle<bool>>,
}

impl Proxy {
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addrs[0], path)
    }
    pub fn rules_path(&self) -> PathBuf {
        self.dir.path().join("rules.yaml")
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("graylane.yaml")
    }
    /// Starts the drain; returns the run() result when it finishes.
    pub async fn stop(mut self) -> bool {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(h) => h.await.unwrap_or(false),
            None => false,
        }
    }
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A config with one `im` listener and the services given, listeners and admin on port 0.
/// `services` is YAML for the `services:` list; `{stable}` etc. are replaced by the caller.
pub fn config_yaml(services: &str, extra: &str) -> String {
    format!(
        "listeners:\n  - name: im\n    bind: \"127.0.0.1:0\"\nadmin: {{ bind: \"127.0.0.1:0\" }}\nrules_file: rules.yaml\nservices:\n{services}\n{extra}\n"
    )
}

/// `chat` on `chat_prefix` (stable, gray) plus `reports` on `/reports`, the only service
/// with a `canary` pool (so a rule may route to `canary` and `chat` falls back).
pub fn two_services(
    stable: SocketAddr,
    gray: SocketAddr,
    chat_prefix: &str,
    extra: &str,
) -> String {
    config_yaml(
        &format!(
            "  - name: chat\n    match: {{ path_prefix: {chat_prefix} }}\n    pools:\n      stable: {{ endpoints: [\"{stable}\"] }}\n      gray: {{ endpoints: [\"{gray}\"] }}\n  - name: reports\n    match: {{ path_prefix: /reports }}\n    pools:\n      stable: {{ endpoints: [\"{stable}\"] }}\n      canary: {{ endpoints: [\"{gray}\"] }}\n"
        ),
        extra,
    )
}

/// Two upstreams named `stable` and `gray` and a proxy in front of them, its config
/// built from their addresses: the setup most tests start from.
pub async fn proxy_with_upstreams(
    config: impl FnOnce(SocketAddr, SocketAddr) -> String,
    rules: &str,
) -> (Upstream, Upstream, Proxy) {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let p = spawn_proxy(&config(stable.addr, gray.addr), rules).await;
    (stable, gray, p)
}

/// The common case: service `chat` on `/` with stable and gray upstreams.
pub fn simple_config(stable: SocketAddr, gray: SocketAddr, extra: &str) -> String {
    config_yaml(
        &format!(
            "  - name: chat\n    match: {{ path_prefix: / }}\n    pools:\n      stable: {{ endpoints: [\"{stable}\"] }}\n      gray: {{ endpoints: [\"{gray}\"] }}\n"
        ),
        extra,
    )
}

/// Stable and gray upstreams behind service `chat` on `/` ([`simple_config`]).
pub async fn setup_simple(extra: &str, rules: &str) -> (Upstream, Upstream, Proxy) {
    proxy_with_upstreams(|s, g| simple_config(s, g, extra), rules).await
}

/// Stable and gray upstreams behind `chat` on `chat_prefix` and `reports`
/// ([`two_services`]).
pub async fn setup_two(chat_prefix: &str, extra: &str, rules: &str) -> (Upstream, Upstream, Proxy) {
    proxy_with_upstreams(|s, g| two_services(s, g, chat_prefix, extra), rules).await
}

/// WebSocket echo upstreams `stable` and `gray` ([`spawn_ws_upstream`]) behind service
/// `chat` on `/`.
pub async fn setup_ws(extra: &str, rules: &str) -> Proxy {
    let stable = spawn_ws_upstream("stable").await;
    let gray = spawn_ws_upstream("gray").await;
    spawn_proxy(&simple_config(stable, gray, extra), rules).await
}

/// A WebSocket echo upstream that prefixes every answer with its name.
pub async fn spawn_ws_upstream(name: &'static str) -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    match m {
                        Message::Text(t)
                            if ws.send(Message::text(format!("{name}:{t}"))).await.is_err() =>
                        {
                            return;
                        }
                        Message::Close(_) => return,
                        _ => {}
                    }
                }
            });
        }
    });
    addr
}

/// Parses `FILE:LINE:COLUMN: message` (an `error: ` prefix is allowed, so positions are
/// checked even where a test documents that prefix separately).
pub fn located(msg: &str) -> (String, u32, u32, String) {
    let msg = msg.trim_end();
    let line = msg.strip_prefix("error: ").unwrap_or(msg);
    // FILE could contain ':' in theory; the paths in these tests do not.
    let mut parts = line.splitn(4, ':');
    let file = parts.next().unwrap_or_default().to_owned();
    let l = parts.next().and_then(|v| v.parse().ok());
    let c = parts.next().and_then(|v| v.parse().ok());
    match (l, c, parts.next().and_then(|m| m.strip_prefix(' '))) {
        (Some(l), Some(c), Some(m)) => (file, l, c, m.to_owned()),
        _ => panic!("not FILE:LINE:COLUMN: message: {msg:?}"),
    }
}

/// The rules file itself (as configured, or joined with the config's directory), not an
/// `in_file`.
pub fn is_rules_yaml(file: &str) -> bool {
    file == "rules.yaml" || file.ends_with("/rules.yaml")
}

/// Everything graylane logged in this test binary so far (a global subscriber, installed
/// on first use, writing into memory).
pub fn logs() -> String {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    let buf = LOGS.get_or_init(|| {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let w = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || LogWriter(w.clone()))
            .try_init();
        buf
    });
    let bytes = buf.lock().map(|b| b.clone()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Parses a JSON answer, naming the text when it is not JSON.
pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

pub async fn spawn_proxy(config: &str, rules: &str) -> Proxy {
    try_spawn_proxy(config, rules).await.expect("proxy starts")
}

pub async fn try_spawn_proxy(config: &str, rules: &str) -> Result<Proxy, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("graylane.yaml"), config).unwrap();
    std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
    start_in(dir).await
}

pub async fn start_in(dir: tempfile::TempDir) -> Result<Proxy, String> {
    let cfg_path = dir.path().join("graylane.yaml");
    let cfg = Config::load(&cfg_path).map_err(|e| e.to_string())?;
    let rules = graylane::load_rules(&cfg.rules_file, &cfg.rules_file_display, &cfg.topology())
        .map_err(|e| e.to_string())?;
    let shared = Arc::new(Shared::new(cfg, rules).map_err(|e| e.to_string())?);
    let graylane = Graylane::bind(shared).await.map_err(|e| e.to_string())?;
    let addrs = graylane.listener_addrs();
    let admin = graylane.admin_addr().unwrap();
    let tls = graylane.tls_reloader();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(graylane.run(async move {
        let _ = rx.await;
    }));
    Ok(Proxy {
        addrs,
        admin,
        dir,
        tls,
        shutdown: Some(tx),
        handle: Some(handle),
    })
}

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A GET with headers; returns status, headers and body text.
pub async fn get(
    c: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    send(c, "GET", url, headers, Bytes::new()).await
}

pub async fn send(
    c: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (StatusCode, HeaderMap, String) {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(full(body)).unwrap();
    let resp = c.request(req).await.expect("request");
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// A streamed request body of `total` bytes in `chunk`-sized frames, generated lazily.
pub fn streamed_body(total: u64, chunk: usize) -> TestBody {
    let chunk_bytes = Bytes::from(vec![b'x'; chunk]);
    let stream = futures_stream(total, chunk_bytes);
    StreamBody::new(stream).boxed()
}

fn futures_stream(
    total: u64,
    chunk: Bytes,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, hyper::Error>> + Send + Sync + 'static {
    struct S {
        left: u64,
        chunk: Bytes,
    }
    impl futures_core::Stream for S {
        type Item = Result<Frame<Bytes>, hyper::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            if self.left == 0 {
                return std::task::Poll::Ready(None);
            }
            let n = (self.chunk.len() as u64).min(self.left) as usize;
            self.left -= n as u64;
            std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
        }
    }
    S { left: total, chunk }
}

/// GET on the admin listener.
pub async fn admin_get(p: &Proxy, path: &str) -> (StatusCode, String) {
    let (s, _, b) = get(&client(), &format!("http://{}{}", p.admin, path), &[]).await;
    (s, b)
}

pub async fn admin_post(p: &Proxy, path: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    let (s, _, b) = send(
        &client(),
        "POST",
        &format!("http://{}{}", p.admin, path),
        headers,
        Bytes::new(),
    )
    .await;
    (s, b)
}

/// Polls `f` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes a file atomically (temp + rename), as editors do.
pub fn write_atomic(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The value of one metric series in the admin /metrics text, or 0.
pub async fn metric(p: &Proxy, series: &str) -> f64 {
    let (_, text) = admin_get(p, "/metrics").await;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// Publishes `files` the way the kubelet updates a ConfigMap volume: a new timestamped
/// directory, a `..data_tmp` symlink to it renamed over `..data`, the old directory removed.
pub fn k8s_publish(dir: &Path, stamp: &str, files: &[(&str, &str)]) {
    let new = dir.join(stamp);
    std::fs::create_dir(&new).unwrap();
    for (name, content) in files {
        std::fs::write(new.join(name), content).unwrap();
    }
    let data = dir.join("..data");
    let old = std::fs::read_link(&data).ok();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(stamp, &tmp).unwrap();
    std::fs::rename(&tmp, &data).unwrap();
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}
