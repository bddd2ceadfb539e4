//! The upstream side: pools and their endpoints, endpoint choice, the pooled client,
//! hop-by-hop header handling and the body types that stream both ways.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Scheme;
use http::Uri;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::balance::{Endpoint, PoolEndpoints, ResolveError};
use crate::config::{Config, OnUnavailable, Protocol};
use crate::error::UpstreamErrorKind;
use crate::h1pool::{H1Body, H1Error, Tunnel};
use crate::metrics::Metrics;

// === bodies ===

/// The request body sent upstream. An enum rather than a boxed trait object: no
/// allocation per request, and a body-less request can be replayed on retry.
#[derive(Debug)]
pub enum UpBody {
    /// No body (health checks, replayed body-less requests).
    Empty,
    /// The client's body, reclaimable until the first byte is read from it: when the
    /// connect fails, nothing was sent and the request can go to another endpoint.
    Reclaimable(ReclaimableBody),
}

/// A body shared between attempts of one request. Streaming takes an uncontended lock
/// per frame.
#[derive(Debug, Clone)]
pub struct ReclaimableBody(Arc<BodySlot>);

#[derive(Debug)]
struct BodySlot {
    touched: AtomicBool,
    body: Mutex<Option<Incoming>>,
    /// The last byte went upstream: the wait for the response head starts now.
    sent: AtomicBool,
    /// Frames handed upstream so far: an upload that stops moving still times out.
    progress: std::sync::atomic::AtomicU64,
    sent_notify: tokio::sync::Notify,
}

impl ReclaimableBody {
    /// Wraps a client body.
    pub fn new(b: Incoming) -> Self {
        Self(Arc::new(BodySlot {
            touched: AtomicBool::new(false),
            body: Mutex::new(Some(b)),
            sent: AtomicBool::new(false),
            progress: std::sync::atomic::AtomicU64::new(0),
            sent_notify: tokio::sync::Notify::new(),
        }))
    }

    /// Frames handed upstream so far.
    pub fn progress(&self) -> u64 {
        self.0.progress.load(Ordering::Relaxed)
    }

    /// Resolves once the whole body has been handed upstream (or failed), so that
    /// `upstream_response` times the wait for the response head, not a slow upload.
    pub async fn sent(&self) {
        let notified = self.0.sent_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.0.sent.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    /// Whether any byte may have been sent (a frame was taken from the body).
    pub fn touched(&self) -> bool {
        self.0.touched.load(Ordering::Relaxed)
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpBody::Empty => Poll::Ready(None),
            UpBody::Reclaimable(r) => {
                let polled = match r.0.body.lock() {
                    Ok(mut g) => match g.as_mut() {
                        Some(b) => Pin::new(b).poll_frame(cx),
                        None => Poll::Ready(None),
                    },
                    Err(_) => Poll::Ready(None),
                };
                // Taken once a frame came out: a poll that found nothing yet leaves the
                // body replayable.
                if matches!(polled, Poll::Ready(Some(_))) {
                    r.0.touched.store(true, Ordering::Relaxed);
                }
                if matches!(polled, Poll::Ready(Some(Ok(_)))) {
                    r.0.progress.fetch_add(1, Ordering::Relaxed);
                }
                if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    r.0.sent.store(true, Ordering::Release);
                    r.0.sent_notify.notify_waiters();
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Empty => true,
            UpBody::Reclaimable(r) => {
                let end =
                    r.0.body
                        .lock()
                        .map(|g| g.as_ref().is_none_or(|b| b.is_end_stream()))
                        .unwrap_or(true);
                // hyper may stop polling once this says so: the body is sent.
                if end && !r.0.sent.swap(true, Ordering::AcqRel) {
                    r.0.sent_notify.notify_waiters();
                }
                end
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Empty => SizeHint::with_exact(0),
            UpBody::Reclaimable(r) => {
                r.0.body
                    .lock()
                    .ok()
                    .and_then(|g| g.as_ref().map(|b| b.size_hint()))
                    .unwrap_or_default()
            }
        }
    }
}

/// The response body sent to the client: the upstream's, streamed, or a short local one.
/// `guard` lives as long as the body so the connection knows a response is in flight.
#[derive(Debug)]
pub struct DownBody<G = ()> {
    inner: DownInner,
    _guard: Option<G>,
}

#[derive(Debug)]
// The HTTP/1.1 body (its connection inline) is the common case; boxing it to even out
// the variants would allocate on every request.
#[allow(clippy::large_enum_variant)]
enum DownInner {
    /// An HTTP/1.1 upstream's body; its connection goes back to the pool when it ends.
    H1(H1Body),
    /// An HTTP/2 upstream's body.
    H2(Incoming),
    Full(Option<Bytes>),
}

/// Why streaming an upstream's body to the client stopped.
#[derive(Debug, thiserror::Error)]
pub enum DownBodyError {
    /// The HTTP/1.1 upstream connection failed or sent a bad body.
    #[error(transparent)]
    H1(#[from] H1Error),
    /// The HTTP/2 upstream stream failed.
    #[error(transparent)]
    H2(#[from] hyper::Error),
}

impl DownBody<()> {
    /// A complete body held in memory (error pages, admin answers).
    pub fn full(b: impl Into<Bytes>) -> Self {
        Self {
            inner: DownInner::Full(Some(b.into())),
            _guard: None,
        }
    }

    /// An HTTP/2 upstream's body, streamed.
    pub fn h2(b: Incoming) -> Self {
        Self {
            inner: DownInner::H2(b),
            _guard: None,
        }
    }

    /// An HTTP/1.1 upstream's body, streamed.
    pub fn h1(b: H1Body) -> Self {
        Self {
            inner: DownInner::H1(b),
            _guard: None,
        }
    }

    /// The upstream connection of a `101` answer, leaving an empty body in its place.
    pub fn take_tunnel(&mut self) -> Option<Tunnel> {
        match std::mem::replace(&mut self.inner, DownInner::Full(None)) {
            DownInner::H1(b) => b.into_tunnel(),
            other => {
                self.inner = other;
                None
            }
        }
    }

    /// Attaches a value dropped when the body is done or abandoned.
    pub fn with_guard<G>(self, guard: G) -> DownBody<G> {
        DownBody {
            inner: self.inner,
            _guard: Some(guard),
        }
    }
}

impl<G: Unpin> Body for DownBody<G> {
    type Data = Bytes;
    type Error = DownBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DownBodyError>>> {
        let this = self.get_mut();
        let r = match &mut this.inner {
            DownInner::H1(b) => Pin::new(b).poll_frame(cx).map_err(DownBodyError::from),
            DownInner::H2(b) => Pin::new(b).poll_frame(cx).map_err(DownBodyError::from),
            DownInner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        };
        if matches!(r, Poll::Ready(None)) {
            // Release the in-flight guard as soon as the last byte is out, not when
            // hyper gets round to dropping the body.
            this._guard = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            DownInner::H1(b) => b.is_end_stream(),
            DownInner::H2(b) => b.is_end_stream(),
            DownInner::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            DownInner::H1(b) => b.size_hint(),
            DownInner::H2(b) => b.size_hint(),
            DownInner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            DownInner::Full(None) => SizeHint::with_exact(0),
        }
    }
}

// === hop-by-hop ===

/// Removes hop-by-hop fields (RFC 9110 §7.6.1): `Connection` and every field it names,
/// and the fixed list of SPEC §3. `keep_upgrade` keeps `Upgrade` (and a `Connection:
/// upgrade`) for WebSocket handshakes.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the (few) names first: a request rarely has any of these fields and
    // a response usually only `Connection`, and each removal is a hash lookup.
    let mut found = 0u8;
    for k in headers.keys() {
        if !hop_by_hop_length(k.as_str().len()) {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            found |= 1 << i;
        }
    }
    if found == 0 && !keep_upgrade {
        return;
    }
    let has = |name: usize| found & (1 << name) != 0;
    if has(0) {
        // Fields named by Connection: the values are cloned (a reference count, no copy)
        // so the map can be changed while their tokens are read, and each token is
        // removed by `&str`, which looks the name up without building (and allocating)
        // a `HeaderName`. Almost every message has one value (`keep-alive`, `close`).
        let mut first: [Option<HeaderValue>; 2] = Default::default();
        let mut overflow: Vec<HeaderValue> = Vec::new();
        for (i, v) in headers.get_all(header::CONNECTION).iter().enumerate() {
            match first.get_mut(i) {
                Some(slot) => *slot = Some(v.clone()),
                None => overflow.push(v.clone()),
            }
        }
        for v in first.iter().flatten().chain(overflow.iter()) {
            let Ok(s) = v.to_str() else { continue };
            for tok in s.split(',') {
                let tok = tok.trim();
                if tok.is_empty() || (keep_upgrade && tok.eq_ignore_ascii_case("upgrade")) {
                    continue;
                }
                headers.remove(tok);
            }
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        let kept = name == header::TE || (keep_upgrade && i < 2);
        if has(i) && !kept {
            headers.remove(name);
        }
    }
    // TE: only `trailers` may pass (it tells the upstream the client accepts trailers).
    // Looked up only when the scan saw it.
    let te = if has(TE_AT) {
        headers.get(header::TE)
    } else {
        None
    };
    if let Some(te) = te {
        let keeps_trailers = te
            .to_str()
            .map(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
            .unwrap_or(false);
        if keeps_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

/// `x-forwarded-for`; a constant so that inserting it allocates nothing (a `&str` name
/// outside the standard set is copied into a fresh `HeaderName` on every insert).
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`, a constant for the same reason.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// Every field [`strip_hop_by_hop`] may remove or rewrite by its own name; `Connection`
/// and `Upgrade` first (a WebSocket handshake keeps them).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::UPGRADE,
    PROXY_CONNECTION,
    KEEP_ALIVE,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TE,
];
/// Whether a name this long could be in [`HOP_BY_HOP`]: most names are ruled out by
/// their length alone, before any comparison.
fn hop_by_hop_length(len: usize) -> bool {
    matches!(len, 2 | 7 | 10 | 16..=19)
}
/// Where `TE` is in [`HOP_BY_HOP`].
const TE_AT: usize = 7;
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// The client address as an `x-forwarded-for` value, built once per connection: every
/// request on it then sets the field by a reference-count clone.
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Appends the peer to `x-forwarded-for` (joining earlier values into one field).
pub fn append_forwarded_for(headers: &mut HeaderMap, peer: &HeaderValue) {
    let mut joined: Vec<u8> = Vec::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        // Only visible ASCII is carried on: an address list has no use for anything else,
        // and upstreams that parse the chain should not get a client's junk.
        let Ok(s) = v.to_str() else { continue };
        let s = s.trim();
        if !s.is_empty() {
            joined.extend_from_slice(s.as_bytes());
            joined.extend_from_slice(b", ");
        }
    }
    if joined.is_empty() {
        headers.insert(X_FORWARDED_FOR, peer.clone());
        return;
    }
    joined.extend_from_slice(peer.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

// === pools ===

/// One pool of one service: its endpoints (with health, balancing and DNS) and the
/// settings the forwarding loop needs.
#[derive(Debug)]
pub struct PoolUpstream {
    /// Endpoints, swapped whole on DNS re-resolution.
    pub endpoints: Arc<PoolEndpoints>,
    /// Which client speaks to this pool.
    pub protocol: Protocol,
    /// Retries allowed on another endpoint.
    pub retries: u32,
    /// What to do when no endpoint is available.
    pub on_unavailable: OnUnavailable,
}

/// The URI for `path_and_query` on an endpoint.
pub fn endpoint_uri(
    ep: &Endpoint,
    path_and_query: Option<&http::uri::PathAndQuery>,
) -> Option<Uri> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(ep.authority().clone());
    parts.path_and_query = Some(
        path_and_query
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).ok()
}

thread_local! {
    /// The worker this thread serves (0 on the main runtime); picks the worker's own
    /// upstream clients so pooled connections stay on the thread that made them.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as worker `id` (see [`Upstreams::client`]).
pub fn set_worker(id: usize) {
    WORKER.with(|w| w.set(id));
}

/// Every service's pools, indexed like `Config::services[s].pools[p]`.
#[derive(Debug)]
pub struct Upstreams {
    /// `services[s][p]`.
    pub services: Vec<Vec<PoolUpstream>>,
    /// HTTP/2 (prior knowledge) clients for `protocol: h2` pools, one per worker.
    /// (HTTP/1.1 goes through [`crate::h1pool`].)
    h2: Vec<Client<HttpConnector, UpBody>>,
}

impl Upstreams {
    /// Builds pools (resolving endpoint names once) and clients from the config.
    pub fn new(cfg: &Config, metrics: &Metrics) -> Result<Self, ResolveError> {
        let mut services = Vec::with_capacity(cfg.services.len());
        for s in &cfg.services {
            let mut pools = Vec::with_capacity(s.pools.len());
            for p in &s.pools {
                let gauges = metrics.endpoint_gauges(&s.name, &p.name);
                pools.push(PoolUpstream {
                    endpoints: Arc::new(PoolEndpoints::new(p, gauges)?),
                    protocol: p.protocol,
                    retries: p.retries,
                    on_unavailable: p.on_unavailable,
                });
            }
            services.push(pools);
        }
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(cfg.timeouts.connect));
        conn.set_keepalive(Some(Duration::from_secs(60)));
        let workers = cfg.workers.max(1);
        let h2 = (0..workers)
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .http2_only(true)
                    .pool_idle_timeout(Duration::from_secs(90))
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .build(conn.clone())
            })
            .collect();
        Ok(Self { services, h2 })
    }

    /// Starts DNS re-resolution and health checks for every pool; the handles are
    /// aborted at shutdown.
    pub fn spawn_tasks(&self, cfg: &Config) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for (s, pools) in cfg.services.iter().zip(&self.services) {
            for p in pools {
                tasks.extend(crate::balance::spawn_tasks(
                    p.endpoints.clone(),
                    s.health.clone(),
                ));
            }
        }
        tasks
    }

    /// This worker's HTTP/2 client (for `protocol: h2` pools).
    pub fn h2_client(&self) -> &Client<HttpConnector, UpBody> {
        let w = WORKER.with(|w| w.get());
        // `workers` (≥ 1) entries; a thread outside the workers uses 0.
        &self.h2[w.min(self.h2.len() - 1)]
    }
}

/// The SPEC §3 kind of an error hyper reported once the connection was up: a response
/// it could not parse is `protocol`, its own timeouts `timeout`, anything else `reset`.
fn hyper_error_kind(e: &hyper::Error) -> UpstreamErrorKind {
    if e.is_parse() || e.is_parse_status() {
        UpstreamErrorKind::Protocol
    } else if e.is_timeout() {
        UpstreamErrorKind::Timeout
    } else {
        UpstreamErrorKind::Reset
    }
}

/// Classifies an HTTP/2 client error into the SPEC §3 kinds.
pub fn classify(err: &hyper_util::client::legacy::Error) -> UpstreamErrorKind {
    use std::error::Error as _;
    let mut src: Option<&(dyn std::error::Error + 'static)> = err.source();
    let mut timed_out = false;
    let mut hyper_kind = None;
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                timed_out = true;
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            hyper_kind = hyper_kind.or(Some(hyper_error_kind(h)));
        }
        src = e.source();
    }
    if err.is_connect() {
        return if timed_out {
            UpstreamErrorKind::Timeout
        } else {
            UpstreamErrorKind::Connect
        };
    }
    hyper_kind.unwrap_or(UpstreamErrorKind::Reset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_fields_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip, trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["te", "x-kept"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn connection_tokens_match_any_case_and_every_value() {
        let mut h = map(&[
            ("connection", "X-Secret"),
            ("connection", "close"),
            ("connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn every_hop_by_hop_name_passes_the_length_filter() {
        for h in &HOP_BY_HOP {
            assert!(hop_by_hop_length(h.as_str().len()), "{h}");
        }
        assert_eq!(HOP_BY_HOP[TE_AT], header::TE);
    }

    #[test]
    fn websocket_keeps_upgrade() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
        ]);
        append_forwarded_for(&mut h, &peer_value("127.0.0.1".parse().unwrap()));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 127.0.0.1");
        let mut h = map(&[("x-forwarded-for", "1.2.3.4")]);
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        append_forwarded_for(&mut h, &peer_value("10.0.0.1".parse().unwrap()));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.1");
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &peer_value("::1".parse().unwrap()));
        assert_eq!(h["x-forwarded-for"], "::1");
    }
}
