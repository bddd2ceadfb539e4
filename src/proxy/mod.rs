//! The request path: `handle(req)` finds the service, reads the markers, asks the live
//! ruleset for a pool, applies fallback, and forwards.

pub mod headers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use prometheus::IntCounter;

use crate::config::{Config, OnUnavailable, Protocol, GRAY};
use crate::error::{FallbackReason, UpstreamErrorKind};
use crate::guard::GuardState;
use crate::longlink::{self, Handshake, Links};
use crate::markers::{MarkerReader, Markers};
use crate::metrics::Metrics;
use crate::routing::Router;
use crate::rules::{Compiled, Decision, RequestInfo, RuleSet};
use crate::tls::TlsTerminator;
use crate::upstream::h1;
use crate::upstream::{self, DownBody, ReclaimableBody, UpBody, Upstreams};
use crate::upstream::{Endpoint, Outcome as BalanceOutcome};

/// The hot-reloaded part: everything a rules reload changes, swapped as one.
#[derive(Debug)]
pub struct Live {
    /// The compiled rules.
    pub rules: RuleSet,
    /// `rule_hits_total` children, one per rule, then `default`; resolved at load.
    pub hits: Vec<IntCounter>,
    /// `rule_header` values, one per rule, then `default`; built at load.
    pub rule_values: Vec<HeaderValue>,
    /// Hash of the rules bytes and in_files (`/rules`, `rules_info`, `unchanged`).
    pub sha256: String,
    /// When this ruleset went live.
    pub loaded_at: SystemTime,
    /// The rules file and its in_files, for the watcher.
    pub files: Vec<PathBuf>,
}

impl Live {
    /// Wraps a compiled ruleset with its metric handles.
    pub fn new(c: Compiled, metrics: &Metrics) -> Self {
        let names: Vec<&str> = c.rules.rule_names().collect();
        let hits = metrics.rule_hits(&names);
        let rule_values = names
            .iter()
            .copied()
            .chain(std::iter::once("default"))
            .map(|n| HeaderValue::from_str(n).unwrap_or(HeaderValue::from_static("default")))
            .collect();
        Self {
            rules: c.rules,
            hits,
            rule_values,
            sha256: c.sha256,
            loaded_at: SystemTime::now(),
            files: c.files,
        }
    }

    /// The rule's name, or `None` for the default.
    pub fn rule_name(&self, d: &Decision) -> Option<&str> {
        d.rule.map(|i| self.rules.rule_name(i))
    }
}

/// Everything the request path shares, built once at start.
#[derive(Debug)]
pub struct Shared {
    /// The validated config (not reloaded).
    pub config: Config,
    /// Marker extraction tables built from `markers:`.
    pub reader: MarkerReader,
    /// Pre-resolved metric children.
    pub metrics: Metrics,
    /// Pools and clients.
    pub upstreams: Upstreams,
    /// Service selection, most specific first.
    pub router: Router,
    /// The live ruleset: one `load()` per request.
    pub live: ArcSwap<Live>,
    /// The last reload error, for `/rules`; cleared by a good reload.
    pub last_error: ArcSwapOption<String>,
    /// Set on SIGTERM: `/readyz` answers 503.
    pub draining: AtomicBool,
    /// Open long links, for re-homing on reload and closing last in a drain.
    pub links: Links,
    /// TLS per listener (`None` = plaintext), indexed like `config.listeners`.
    pub tls: Vec<Option<TlsTerminator>>,
    /// The automatic rollback guard per service (`None` without `guard:`).
    pub guards: Vec<Option<GuardState>>,
    /// `pool_header` values per global pool id.
    pool_values: Vec<HeaderValue>,
    /// Requests seen, for access-log sampling (one relaxed increment per request).
    access_seq: std::sync::atomic::AtomicU64,
    /// `x-forwarded-proto` per listener.
    proto_values: Vec<HeaderValue>,
}

/// Why building the shared state failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An endpoint name did not resolve.
    #[error(transparent)]
    Endpoint(#[from] crate::upstream::ResolveError),
    /// A listener's certificate or key cannot be used.
    #[error("listener {listener}: {error}")]
    Tls {
        /// Listener name.
        listener: String,
        /// What is wrong with the files (in the message, so not also a `source`: a
        /// `{:#}` chain would print it twice).
        error: crate::tls::TlsError,
    },
    /// A metric definition was rejected (a bug, not a config problem).
    #[error("metrics: {0}")]
    Metrics(prometheus::Error),
}

impl Shared {
    /// Builds the shared state around a first ruleset.
    pub fn new(config: Config, rules: Compiled) -> Result<Self, BuildError> {
        let metrics = Metrics::try_new(&config).map_err(BuildError::Metrics)?;
        let live = Live::new(rules, &metrics);
        metrics.set_rules_info(
            live.rules.version(),
            &live.sha256,
            unix_secs(live.loaded_at),
        );
        let upstreams = Upstreams::new(&config, &metrics)?;
        let guards = config
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.guard.clone().map(|g| {
                    GuardState::new(s.name.clone(), g, metrics.service(i).gray_tripped().clone())
                })
            })
            .collect();
        let tls = config
            .listeners
            .iter()
            .map(|l| {
                l.tls
                    .as_ref()
                    .map(TlsTerminator::load)
                    .transpose()
                    .map_err(|error| BuildError::Tls {
                        listener: l.name.clone(),
                        error,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pool_values = config
            .pool_names
            .iter()
            .map(|n| HeaderValue::from_str(n).unwrap_or(HeaderValue::from_static("stable")))
            .collect();
        let proto_values = config
            .listeners
            .iter()
            .map(|l| HeaderValue::from_static(l.scheme()))
            .collect();
        Ok(Self {
            reader: MarkerReader::new(&config.markers),
            router: Router::new(&config),
            metrics,
            upstreams,
            live: ArcSwap::from_pointee(live),
            last_error: ArcSwapOption::empty(),
            draining: AtomicBool::new(false),
            links: Links::default(),
            tls,
            guards,
            access_seq: std::sync::atomic::AtomicU64::new(0),
            pool_values,
            proto_values,
            config,
        })
    }

    /// Re-reads every listener's certificate and key (SIGHUP). A bad file keeps the old
    /// certificate serving and is logged with the reason.
    pub fn reload_tls(&self) {
        for (l, t) in self.config.listeners.iter().zip(&self.tls) {
            if let Some(t) = t {
                match t.reload() {
                    Ok(()) => tracing::info!(listener = %l.name, "TLS certificate reloaded"),
                    Err(e) => {
                        tracing::error!(listener = %l.name, "TLS reload rejected, keeping the old certificate: {e}")
                    }
                }
            }
        }
    }

    /// Whether this request is one the access log samples.
    fn sample_access(&self) -> bool {
        let every = self.config.access_log_every;
        every != 0 && self.access_seq.fetch_add(1, Ordering::Relaxed) % u64::from(every) == 0
    }

    /// Whether a pool can take a request right now, without side effects (for
    /// `/explain`): `Some(reason)` when it would go to stable instead. On the request path
    /// the guard's `admit()` decides (it also lets half-open probes through).
    pub fn availability(&self, service: usize, pool: usize) -> Option<FallbackReason> {
        let svc = &self.config.services[service];
        if pool == svc.stable_index() {
            return None;
        }
        if svc.pools[pool].id == GRAY
            && self
                .guards
                .get(service)
                .and_then(Option::as_ref)
                .is_some_and(GuardState::is_tripped)
        {
            return Some(FallbackReason::GuardTripped);
        }
        let up = &self.upstreams.services[service][pool];
        if !up.endpoints.has_available() && up.on_unavailable == OnUnavailable::Fallback {
            return Some(FallbackReason::PoolUnhealthy);
        }
        None
    }

    /// Where a routed request would go right now, and why not where the rules said:
    /// the rules' own fallback if any, else the pool's current [`availability`].
    ///
    /// [`availability`]: Self::availability
    pub fn effective_pool(
        &self,
        service: usize,
        pool: usize,
        fallback: Option<FallbackReason>,
    ) -> (usize, Option<FallbackReason>) {
        if fallback.is_some() {
            return (pool, fallback);
        }
        match self.availability(service, pool) {
            Some(reason) => (self.config.services[service].stable_index(), Some(reason)),
            None => (pool, None),
        }
    }

    /// Routes and decides without forwarding: the request path and `/explain` share it,
    /// so what `explain` prints is what traffic does.
    pub fn decide(
        &self,
        live: &Live,
        listener: usize,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
        markers: &Markers,
    ) -> Outcome {
        let Some(service) = self.router.route(host, path) else {
            return Outcome::NoService;
        };
        let decision = live.rules.decide(&RequestInfo {
            markers,
            listener,
            service,
            path,
            headers,
        });
        let svc = &self.config.services[service];
        let (pool, fallback) = match svc.pool_by_id.get(decision.pool).copied().flatten() {
            Some(p) => (p, None),
            None => (svc.stable_index(), Some(FallbackReason::PoolMissing)),
        };
        Outcome::Routed {
            service,
            decision,
            pool,
            fallback,
        }
    }
}

/// Seconds since the Unix epoch, for `rules_loaded_timestamp_seconds`.
pub fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What routing and the rules decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No service matches host and path: 404.
    NoService,
    /// A service and one of its pools.
    Routed {
        /// Service index.
        service: usize,
        /// The rules' decision (the pool they chose and the rule).
        decision: Decision,
        /// Index into the service's `pools` actually used.
        pool: usize,
        /// Set when `pool` is not the pool the rules chose.
        fallback: Option<FallbackReason>,
    },
}

/// Per-connection facts, computed once at accept.
#[derive(Debug, Clone)]
pub struct ConnCtx {
    /// Listener index.
    pub listener: usize,
    /// The client's address.
    pub peer: SocketAddr,
    /// `peer`'s IP as an `x-forwarded-for` value, built once for all its requests.
    pub peer_value: HeaderValue,
    /// Whether markers from this peer are trusted (`trusted_cidrs`).
    pub trusted: bool,
    /// The connection's place under `max_connections`, also held by its long links.
    pub slot: Arc<crate::server::ConnSlot>,
}

/// The host a request addresses, without port: the URI authority (HTTP/2, absolute
/// form) or the `Host` header.
fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    let raw = match uri.host() {
        Some(h) => h,
        None => headers.get(header::HOST)?.to_str().ok()?,
    };
    Some(strip_port(raw))
}

/// `h` without its port (`host:port`, `[v6]:port`).
pub(crate) fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        // [v6]:port
        return h.split(']').next().map(|s| &s[1..]).unwrap_or(h);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    }
}

fn local(status: StatusCode, body: &'static str) -> Response<DownBody> {
    let mut r = Response::new(DownBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Handles one request end to end. Never fails: every error becomes a response.
pub async fn handle(
    mut req: Request<Incoming>,
    shared: &Arc<Shared>,
    conn: &ConnCtx,
) -> Response<DownBody> {
    let start = Instant::now();
    let client_upgrade = is_websocket(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    // Markers first (trusted peers only); untrusted peers' marker headers are removed so
    // an upstream never sees identity it should not believe.
    let markers = if conn.trusted {
        let (m, invalid) = shared.reader.read(&parts.headers, parts.uri.query());
        for kind in invalid.iter() {
            shared.metrics.marker_invalid(kind).inc();
        }
        m
    } else {
        shared.reader.remove_marker_headers(&mut parts.headers);
        Markers::default()
    };

    let live = shared.live.load();
    let outcome = shared.decide(
        &live,
        conn.listener,
        request_host(&parts.uri, &parts.headers),
        parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
        &parts.headers,
        &markers,
    );
    let Outcome::Routed {
        service,
        decision,
        pool,
        fallback,
    } = outcome
    else {
        // No service, no rules evaluated: not a `default` rule hit.
        let resp = local(
            StatusCode::NOT_FOUND,
            "graylane: no service for this request\n",
        );
        shared
            .metrics
            .unrouted(conn.listener)
            .observe(resp.status().as_u16(), start.elapsed());
        return resp;
    };
    let hit = decision.rule.unwrap_or(live.hits.len() - 1);
    if let Some(c) = live.hits.get(hit) {
        c.inc();
    }
    let svc = &shared.config.services[service];
    let svc_metrics = shared.metrics.service(service);
    if let Some(reason) = fallback {
        svc_metrics.fallback(decision.pool, reason).inc();
    }

    // A long link remembers its handshake so a reload can decide it again.
    let handshake = client_upgrade.as_ref().map(|_| Handshake {
        listener: conn.listener,
        host: request_host(&parts.uri, &parts.headers).map(str::to_owned),
        path: parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned(),
        headers: detached(&parts.headers),
        markers: markers.clone(),
        service,
        pool,
    });

    // === availability: guard, then health ===
    let stable = svc.stable_index();
    let mut pool = pool;
    // The guard that counts this request's outcome: set only for gray traffic it admitted.
    let mut guarded: Option<&GuardState> = None;
    if svc.pools[pool].id == GRAY {
        if let Some(g) = shared.guards.get(service).and_then(Option::as_ref) {
            if g.admit() {
                guarded = Some(g);
            } else {
                svc_metrics
                    .fallback(GRAY, FallbackReason::GuardTripped)
                    .inc();
                pool = stable;
            }
        }
    }
    // === the upstream request head, shared by every attempt ===
    headers::strip_hop_by_hop(&mut parts.headers, client_upgrade.is_some());
    if !parts.headers.contains_key(header::HOST) {
        if let Some(a) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    headers::append_forwarded_for(&mut parts.headers, &conn.peer_value);
    parts.headers.insert(
        headers::X_FORWARDED_PROTO,
        shared.proto_values[conn.listener].clone(),
    );
    let rule_value = live.rule_values.get(hit).cloned();
    if let (Some(h), Some(v)) = (&shared.config.propagate.rule_header, &rule_value) {
        parts.headers.insert(h.clone(), v.clone());
    }
    drop(live);

    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    let body = if body.is_end_stream() {
        Replay::Empty
    } else {
        Replay::Body(ReclaimableBody::new(body))
    };
    let hash_key = markers.uid;
    let timeout = shared.config.timeouts.upstream_response;
    let mut exclude: Option<Arc<Endpoint>> = None;
    let mut retries_left = shared.upstreams.services[service][pool].retries;
    // The upstream head's fields. An attempt takes them whole unless a later attempt may
    // need them after this one sent them (see `keep_head`); an attempt that fails before
    // sending (connect) hands them back. Copying per attempt cost a header map and an
    // allocation per custom field name on every request.
    let mut head = Some(std::mem::take(&mut parts.headers));

    // Set when the chosen pool cannot take this request (no endpoint left, or every
    // attempt failed to connect); the next turn of the loop moves it to stable.
    let mut to_stable = false;
    // The failure of the previous attempt, answered when no further attempt is possible.
    let mut last_error: Option<UpstreamErrorKind> = None;

    // === attempts: retries within the pool, then per-request fallback to stable ===
    let (resp, final_pool) = loop {
        if std::mem::take(&mut to_stable) {
            svc_metrics
                .fallback(svc.pools[pool].id, FallbackReason::PoolUnhealthy)
                .inc();
            pool = stable;
            guarded = None;
            exclude = None;
            last_error = None;
            retries_left = shared.upstreams.services[service][pool].retries;
        }
        let up = &shared.upstreams.services[service][pool];
        let picked = up.endpoints.pick(hash_key, exclude.as_deref()).or_else(|| {
            // Panic routing: a health view can be wrong; stable is tried anyway.
            (pool == stable)
                .then(|| up.endpoints.pick_any(hash_key, exclude.as_deref()))
                .flatten()
        });
        // A retry goes to *another* endpoint; with none left, the retry does not happen.
        let picked = picked.filter(|ep| exclude.as_ref().is_none_or(|x| x.addr() != ep.addr()));
        let Some(ep) = picked else {
            // No endpoint left in a non-stable pool: it had none to offer
            // (`pool_unhealthy`), or every one failed in a way that allows another try
            // (refused, or reset under an idempotent body-less request). Issue 4 asks
            // that a dying gray pool cost no request, so stable takes it (README).
            let fallback_ok = up.on_unavailable == OnUnavailable::Fallback;
            if pool != stable && body.replayable() && fallback_ok {
                to_stable = true;
                continue;
            }
            break (
                match last_error {
                    Some(kind) => error_response(kind),
                    None if pool != stable => local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "graylane: no healthy endpoint in the chosen pool\n",
                    ),
                    None => local(StatusCode::BAD_GATEWAY, "graylane: no upstream endpoint\n"),
                },
                pool,
            );
        };
        if exclude.is_some() {
            svc_metrics.retries(pool).inc();
        }
        // WebSocket handshakes always go over HTTP/1.1 (RFC 6455 Upgrade).
        let protocol = if client_upgrade.is_some() {
            Protocol::Http1
        } else {
            up.protocol
        };
        // HTTP/1 goes through graylane's own pool with an origin-form target; HTTP/2
        // through hyper-util's client, which wants the absolute URI.
        let uri = match protocol {
            Protocol::Http1 => Some(
                parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| http::Uri::from_static("/"), |pq| pq.clone().into()),
            ),
            Protocol::H2 => upstream::endpoint_uri(&ep, parts.uri.path_and_query()),
        };
        let Some(uri) = uri else {
            break (
                local(StatusCode::BAD_GATEWAY, "graylane: bad upstream address\n"),
                pool,
            );
        };
        // An HTTP/1.1 attempt takes the head and h1pool hands it back when it fails.
        // hyper-util's HTTP/2 client keeps a failed request, so there a copy is made
        // whenever a further attempt is possible.
        let keep_head = protocol == Protocol::H2
            && (retries_left > 0
                || (pool != stable && up.on_unavailable == OnUnavailable::Fallback));
        let headers = if keep_head { head.clone() } else { head.take() };
        let Some(headers) = headers else {
            // Not reached: an attempt that took the head without a copy had no further
            // attempt after it. Answered as its failure was.
            break (
                error_response(last_error.unwrap_or(UpstreamErrorKind::Reset)),
                pool,
            );
        };
        let mut req = Request::new(body.attempt());
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = match protocol {
            Protocol::Http1 => http::Version::HTTP_11,
            Protocol::H2 => http::Version::HTTP_2,
        };
        *req.headers_mut() = headers;
        if let Some(h) = &shared.config.propagate.pool_header {
            req.headers_mut()
                .insert(h.clone(), shared.pool_values[svc.pools[pool].id].clone());
        }
        let in_flight = ep.start();
        let connect_timeout = shared.config.timeouts.connect;
        let response = async {
            match protocol {
                Protocol::Http1 => h1::send(ep.addr(), req, connect_timeout)
                    .await
                    .map(|resp| resp.map(DownBody::h1))
                    .map_err(|f| match f.error {
                        // The client's fault, not the upstream's: see below.
                        h1::H1Error::RequestBody(_) => (None, f.error.to_string(), None),
                        _ => (Some(f.error.kind()), f.error.to_string(), Some(f.request)),
                    }),
                Protocol::H2 => shared
                    .upstreams
                    .h2_client()
                    .request(req)
                    .await
                    .map(|resp| resp.map(DownBody::h2))
                    .map_err(|e| (Some(upstream::classify(&e)), e.to_string(), None)),
            }
        };
        // `upstream_response` counts from the last request byte, not through an upload;
        // during the upload it cuts only an upload that stops moving for that long.
        let head_deadline = async {
            if let Replay::Body(b) = &body {
                loop {
                    let before = b.progress();
                    tokio::select! {
                        _ = b.sent() => break,
                        _ = tokio::time::sleep(timeout) => {
                            if b.progress() == before {
                                return;
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(timeout).await;
        };
        let result = tokio::select! {
            r = response => Ok(r),
            _ = head_deadline => Err(()),
        };
        drop(in_flight);
        let kind = match result {
            Ok(Ok(resp)) => {
                let failed = resp.status().is_server_error();
                ep.report(if failed {
                    BalanceOutcome::Failure
                } else {
                    BalanceOutcome::Success
                });
                if let Some(g) = guarded {
                    g.record(failed);
                }
                break (resp, pool);
            }
            Ok(Err((None, error, _))) => {
                // The client went away mid-upload. Nothing says the upstream failed, so
                // neither its endpoint's health, nor the guard, nor its error counters
                // hear of it; the client, if still listening, learns its body broke off.
                tracing::debug!(service = %svc.name, pool = %svc.pools[pool].name, %error, "request body cut off by the client");
                break (
                    local(
                        StatusCode::BAD_REQUEST,
                        "graylane: the request body was cut off\n",
                    ),
                    pool,
                );
            }
            Ok(Err((Some(kind), error, request))) => {
                if let Some(request) = request {
                    head = Some(request.into_parts().0.headers);
                }
                tracing::warn!(service = %svc.name, pool = %svc.pools[pool].name, endpoint = %ep.label(), kind = kind.label(), %error, "upstream request failed");
                kind
            }
            Err(_) => {
                tracing::warn!(service = %svc.name, pool = %svc.pools[pool].name, endpoint = %ep.label(), "no upstream response within {timeout:?}");
                UpstreamErrorKind::Timeout
            }
        };
        svc_metrics.upstream_error(pool, kind).inc();
        ep.report(if kind == UpstreamErrorKind::Connect {
            BalanceOutcome::ConnectFailure
        } else {
            BalanceOutcome::Failure
        });
        if let Some(g) = guarded {
            g.record(true);
        }
        // SPEC §3: retry a connect failure (nothing was sent), or a reset of an
        // idempotent request without a body. Never a timeout, never a sent body.
        let retryable = match kind {
            UpstreamErrorKind::Connect => body.replayable(),
            UpstreamErrorKind::Reset => idempotent && matches!(body, Replay::Empty),
            UpstreamErrorKind::Timeout | UpstreamErrorKind::Protocol => false,
        };
        if retryable && retries_left > 0 {
            retries_left -= 1;
            exclude = Some(ep);
            last_error = Some(kind);
            continue;
        }
        // Per-request fallback: the pool's tries are used up on failures that are safe to
        // try again (nothing sent, or a reset under an idempotent body-less request), so
        // stable takes the request instead of the user seeing a 502.
        if retryable && pool != stable && up.on_unavailable == OnUnavailable::Fallback {
            to_stable = true;
            continue;
        }
        break (error_response(kind), pool);
    };

    let mut resp = resp;
    let tunnel = match (client_upgrade, handshake) {
        (Some(client_up), Some(mut hs)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            // The link lives in (and is counted and re-homed from) the pool actually used.
            hs.pool = final_pool;
            resp.body_mut()
                .take_tunnel()
                .map(|upstream| (client_up, upstream, hs))
        }
        _ => None,
    };
    headers::strip_hop_by_hop(resp.headers_mut(), tunnel.is_some());
    if let Some((client_up, upstream, hs)) = tunnel {
        open_tunnel(shared, client_up, upstream, hs, conn.slot.clone());
    }
    let elapsed = start.elapsed();
    shared
        .metrics
        .route(conn.listener, service, final_pool)
        .observe(resp.status().as_u16(), elapsed);
    if shared.sample_access() {
        // Path only: query strings may carry an accessToken, and headers and cookies
        // never go to logs.
        tracing::info!(
            target: "graylane::access",
            listener = %shared.config.listeners[conn.listener].name,
            peer = %conn.peer.ip(),
            method = %parts.method,
            path = parts.uri.path(),
            service = %svc.name,
            pool = %svc.pools[final_pool].name,
            rule = rule_value.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("default"),
            status = resp.status().as_u16(),
            ms = elapsed.as_secs_f64() * 1000.0,
        );
    }
    resp
}

/// The request body across attempts: none (replayable at will), or the client's body,
/// replayable until its first byte was read.
enum Replay {
    Empty,
    Body(ReclaimableBody),
}

impl Replay {
    fn replayable(&self) -> bool {
        match self {
            Replay::Empty => true,
            Replay::Body(b) => !b.touched(),
        }
    }

    fn attempt(&self) -> UpBody {
        match self {
            Replay::Empty => UpBody::Empty,
            Replay::Body(b) => UpBody::Reclaimable(b.clone()),
        }
    }
}

/// A copy of `headers` that owns its bytes. hyper's header values are slices of the
/// connection's read buffer; a plain clone kept for a link's whole life would pin that
/// 8–16 KiB buffer per idle link.
fn detached(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
            out.append(k.clone(), v);
        }
    }
    out
}

/// A WebSocket handshake (HTTP/1.1 Upgrade, RFC 6455): `Connection: upgrade` and
/// `Upgrade: websocket`.
fn is_websocket<B>(req: &Request<B>) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    req.version() == http::Version::HTTP_11
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
}

/// Starts relaying once both sides have switched protocols. The link is registered
/// before the 101 reaches the client, so a reload right after it already sees the link.
fn open_tunnel(
    shared: &Arc<Shared>,
    client_up: hyper::upgrade::OnUpgrade,
    upstream: h1::Tunnel,
    hs: Handshake,
    slot: Arc<crate::server::ConnSlot>,
) {
    let (guard, close) = Links::register(shared, hs);
    let idle = shared.config.timeouts.long_link_idle;
    tokio::spawn(async move {
        let _slot = slot;
        match client_up.await {
            Ok(c) => longlink::relay(c, upstream, close, idle, guard).await,
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
}

/// The status and body for each upstream failure kind (SPEC §3). Exhaustive on purpose:
/// a new kind must decide its status here.
pub fn error_response(kind: UpstreamErrorKind) -> Response<DownBody> {
    match kind {
        UpstreamErrorKind::Connect => local(
            StatusCode::BAD_GATEWAY,
            "graylane: upstream connect failed\n",
        ),
        UpstreamErrorKind::Timeout => local(
            StatusCode::GATEWAY_TIMEOUT,
            "graylane: upstream timed out\n",
        ),
        UpstreamErrorKind::Reset => local(
            StatusCode::BAD_GATEWAY,
            "graylane: upstream closed the connection\n",
        ),
        UpstreamErrorKind::Protocol => local(
            StatusCode::BAD_GATEWAY,
            "graylane: upstream sent an invalid response\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.example.com:8080"), "a.example.com");
        assert_eq!(strip_port("a.example.com"), "a.example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
    }

    #[test]
    fn error_statuses_are_pinned() {
        let s = |k| error_response(k).status().as_u16();
        assert_eq!(s(UpstreamErrorKind::Connect), 502);
        assert_eq!(s(UpstreamErrorKind::Timeout), 504);
        assert_eq!(s(UpstreamErrorKind::Reset), 502);
        assert_eq!(s(UpstreamErrorKind::Protocol), 502);
    }
}
