//! The attempts of one request (SPEC §3): an endpoint of the chosen pool, a retry on
//! another endpoint when the failure allows it, and the per-request fallback to stable
//! once the pool's tries are used up in a way that is safe to repeat.
//!
//! The loop in [`Forward::run`] reads as the policy: pick, attempt, and on failure ask
//! [`Forward::after`] what comes next. Each failure knows whose fault it is; a client's
//! fault is never counted against an endpoint, the guard or the upstream error counters.

use std::pin::Pin;
use std::sync::Arc;

use crate::timer::Sleep;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body::Body as _;

use crate::config::{OnUnavailable, Protocol, Service, GRAY};
use crate::error::{FallbackReason, Fault, Refusal, UpstreamErrorKind};
use crate::fields::Received;
use crate::guard::GuardState;
use crate::metrics::ServiceMetrics;
use crate::state::Shared;
use crate::upstream::{self, h1, ClientBody, DownBody, ReclaimableBody, UpBody};
use crate::upstream::{Endpoint, Outcome as EndpointOutcome, PoolUpstream};

use super::deadline::{response_deadline, Deadline};
use super::headers::Added;
use super::{local, Answer};

/// The request body across attempts: none (replayable at will), or the client's body,
/// replayable until its first byte was read.
pub(super) enum Replay {
    Empty,
    Body(ReclaimableBody),
}

impl Replay {
    /// Wraps the client's body; a body that is already complete needs no wrapper.
    pub(super) fn new(body: ClientBody) -> Self {
        if body.is_end_stream() {
            Replay::Empty
        } else {
            Replay::Body(ReclaimableBody::new(body))
        }
    }

    /// Whether another attempt could still send the whole body.
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

/// Why one attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttemptError {
    /// The upstream failed in one of SPEC §3's ways.
    Upstream(UpstreamErrorKind),
    /// The client went away mid-upload: nothing says the upstream failed.
    ClientBodyCut,
    /// The client stopped sending its body: its fault, not the upstream's.
    ClientBodyStalled,
}

impl AttemptError {
    /// SPEC §3: a connect failure is repeatable while the body is (nothing was sent); a
    /// reset only under an idempotent request without a body. Never a timeout, never a
    /// sent body, never a client's failure.
    fn retry(self, idempotent: bool, body: &Replay) -> bool {
        match self {
            AttemptError::Upstream(UpstreamErrorKind::Connect) => body.replayable(),
            AttemptError::Upstream(UpstreamErrorKind::Reset) => {
                idempotent && matches!(body, Replay::Empty)
            }
            AttemptError::Upstream(UpstreamErrorKind::Timeout | UpstreamErrorKind::Protocol) => {
                false
            }
            AttemptError::ClientBodyCut | AttemptError::ClientBodyStalled => false,
        }
    }

    fn refusal(self) -> Refusal {
        match self {
            AttemptError::Upstream(kind) => Refusal::Upstream(kind),
            AttemptError::ClientBodyCut => Refusal::BodyCutOff,
            AttemptError::ClientBodyStalled => Refusal::BodyStalled,
        }
    }
}

/// What follows a failed attempt.
enum Next {
    /// Another endpoint of the same pool.
    Retry,
    /// The pool's tries are used up on repeatable failures: stable takes the request.
    ToStable,
    /// Nothing more to try: graylane answers.
    Refuse(Refusal),
}

/// One request's way through its attempts.
pub(super) struct Forward<'a> {
    pub(super) shared: &'a Shared,
    pub(super) svc: &'a Service,
    pub(super) metrics: &'a ServiceMetrics,
    pub(super) service: usize,
    /// The pool of the current attempt.
    pub(super) pool: usize,
    /// The service's guard: it hears of every gray outcome it admitted and every stable
    /// outcome (its baseline).
    pub(super) guard: Option<&'a GuardState>,
    /// The guard admitted this request to gray (a fallback to stable clears it).
    pub(super) gray_admitted: bool,
    /// When the request arrived, for the latency the guard compares; the first attempt's
    /// `upstream_response` runs from it too.
    pub(super) start: std::time::Instant,
    /// `hash_uid`'s affinity key.
    pub(super) hash_key: Option<u64>,
    /// A WebSocket handshake: always HTTP/1.1 upstream (RFC 6455 Upgrade).
    pub(super) websocket: bool,
    pub(super) method: &'a Method,
    pub(super) uri: &'a Uri,
    /// The upstream head's fields. An attempt takes them whole unless a later attempt
    /// may need them after this one sent them (see [`Forward::attempt`]); an attempt
    /// that fails before sending hands them back. Copying per attempt cost a header map
    /// and an allocation per custom field name on every request.
    pub(super) head: Option<HeaderMap>,
    /// Fields graylane sets that `head` does not carry, written after it.
    added: Added<'a>,
    pub(super) body: Replay,
    /// The endpoint that failed the previous attempt; a retry goes elsewhere.
    exclude: Option<Arc<Endpoint>>,
    retries_left: u32,
    /// The failure of the previous attempt, answered when no further attempt is possible.
    last_error: Option<UpstreamErrorKind>,
    /// The own loop's request head, which an HTTP/1.1 attempt writes from (`head` is
    /// then empty); the response head is then wanted with its fields as received.
    received: Option<&'a Received>,
    /// The connection's own timer for `upstream_response`, set again for each attempt
    /// (see [`Forward::reuse_timer`]); `None`: a timer per attempt.
    timer: Option<Pin<&'a mut Sleep>>,
    /// An attempt was made (the next one's time runs from its own start).
    attempted: bool,
}

impl<'a> Forward<'a> {
    /// A request about to make its first attempt on `pool`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        shared: &'a Shared,
        service: usize,
        pool: usize,
        gray_admitted: bool,
        start: std::time::Instant,
        hash_key: Option<u64>,
        websocket: bool,
        method: &'a Method,
        uri: &'a Uri,
        head: HeaderMap,
        received: Option<&'a Received>,
        added: Added<'a>,
        body: Replay,
    ) -> Self {
        Self {
            shared,
            svc: &shared.config.services[service],
            metrics: shared.metrics.service(service),
            service,
            pool,
            guard: shared.guards.get(service).and_then(Option::as_ref),
            gray_admitted,
            start,
            hash_key,
            websocket,
            method,
            uri,
            head: Some(head),
            added,
            body,
            exclude: None,
            retries_left: shared.upstreams.services[service][pool].retries,
            last_error: None,
            received,
            timer: None,
            attempted: false,
        }
    }

    /// Times the attempts with `timer`, a connection's own, instead of a new one each.
    /// A new timer is handed to the timer thread on its first poll and forgotten there
    /// after it is dropped; one that only moves between requests stays known and is moved
    /// by an atomic store. For bodiless requests only: an upload's deadline also watches
    /// its progress.
    pub(super) fn reuse_timer(&mut self, timer: Pin<&'a mut Sleep>) {
        if matches!(self.body, Replay::Empty) {
            self.timer = Some(timer);
        }
    }

    /// Attempts until an answer: the upstream's response, or graylane's refusal. Returns
    /// it with the pool that answered.
    ///
    /// The exchange is awaited here, not in a method of its own: each nested `async fn`
    /// is a future built and then moved into its caller's, and the HTTP/1.1 exchange
    /// inside makes these futures kilobytes large (measured: ~600 instructions per request
    /// in `memcpy` for one more level).
    pub(super) async fn run(&mut self) -> (Answer, usize) {
        loop {
            let Some(ep) = self.pick() else {
                match self.nothing_to_pick() {
                    Next::ToStable => self.fall_back_to_stable(),
                    Next::Retry => {}
                    Next::Refuse(r) => return (local(r), self.pool),
                }
                continue;
            };
            if self.exclude.is_some() {
                self.metrics.retries(self.pool).inc();
            }
            let (attempt, added) = match self.prepare(&ep) {
                Ok(x) => x,
                Err(refusal) => return (local(refusal), self.pool),
            };
            let timeout = self.shared.config.timeouts.upstream_response;
            // The first attempt's time runs from the request's start (microseconds
            // earlier): one clock read fewer per request.
            let from = if std::mem::replace(&mut self.attempted, true) {
                std::time::Instant::now()
            } else {
                self.start
            };
            let in_flight = ep.start();
            let upload = match &self.body {
                Replay::Body(b) => Some(b),
                _ => None,
            };
            let result = tokio::select! {
                r = exchange(self.shared, attempt, &ep, added.fields(), self.received) => Ok(r),
                waited = response_deadline(upload, from, timeout, self.timer.as_mut()) => Err(waited),
            };
            drop(in_flight);
            match self.conclude(&ep, result) {
                Ok(resp) => return (resp, self.pool),
                Err((error, connect)) => match self.after(ep, error, connect) {
                    Next::Retry => {}
                    Next::ToStable => self.fall_back_to_stable(),
                    Next::Refuse(r) => return (local(r), self.pool),
                },
            }
        }
    }

    fn upstream(&self) -> &'a PoolUpstream {
        &self.shared.upstreams.services[self.service][self.pool]
    }

    fn stable(&self) -> usize {
        self.svc.stable_index()
    }

    /// Whether this pool may hand the request to stable (not stable itself, and not
    /// `on_unavailable: fail`).
    fn may_fall_back(&self) -> bool {
        self.pool != self.stable() && self.upstream().on_unavailable == OnUnavailable::Fallback
    }

    /// An available endpoint other than the one that just failed. Stable panic-routes:
    /// a health view can be wrong, so its endpoints are tried anyway.
    fn pick(&self) -> Option<Arc<Endpoint>> {
        let up = self.upstream();
        let exclude = self.exclude.as_deref();
        let picked = up.endpoints.pick(self.hash_key, exclude).or_else(|| {
            (self.pool == self.stable())
                .then(|| up.endpoints.pick_any(self.hash_key, exclude))
                .flatten()
        });
        // A retry goes to *another* endpoint; with none left, the retry does not happen.
        picked.filter(|ep| exclude.is_none_or(|x| x.addr() != ep.addr()))
    }

    /// No endpoint left: the pool had none to offer (`pool_unhealthy`), or every one
    /// failed in a way that allows another try. A dying gray pool costs no request:
    /// stable takes it while the body can still be sent whole.
    fn nothing_to_pick(&self) -> Next {
        if self.may_fall_back() && self.body.replayable() {
            return Next::ToStable;
        }
        let refusal = match self.last_error {
            Some(kind) => Refusal::Upstream(kind),
            None if self.pool != self.stable() => Refusal::PoolUnavailable,
            None => Refusal::NoEndpoint,
        };
        Next::Refuse(refusal)
    }

    fn fall_back_to_stable(&mut self) {
        self.metrics
            .fallback(self.svc.pools[self.pool].id, FallbackReason::PoolUnhealthy)
            .inc();
        self.pool = self.stable();
        self.gray_admitted = false;
        self.exclude = None;
        self.last_error = None;
        self.retries_left = self.upstream().retries;
    }

    /// The request of the next attempt on `ep` with the fields its HTTP/1.1 encoder adds,
    /// or the refusal when there can be none.
    fn prepare(&mut self, ep: &Endpoint) -> Result<(Attempt<'a>, Added<'a>), Refusal> {
        let protocol = if self.websocket {
            Protocol::Http1
        } else {
            self.upstream().protocol
        };
        // HTTP/1 goes through graylane's own pool with an origin-form target; HTTP/2
        // through hyper-util's client, which wants the absolute URI.
        let h2_uri = match protocol {
            Protocol::Http1 => None,
            Protocol::H2 => Some(
                upstream::endpoint_uri(ep, self.uri.path_and_query())
                    .ok_or(Refusal::BadUpstreamAddress)?,
            ),
        };
        // An HTTP/1.1 attempt takes the head and hands it back when it fails.
        // hyper-util's HTTP/2 client keeps a failed request, so there a copy is made
        // whenever a further attempt is possible.
        let keep_head = protocol == Protocol::H2 && (self.retries_left > 0 || self.may_fall_back());
        let head = if keep_head {
            self.head.clone()
        } else {
            self.head.take()
        };
        // Not reached without a head: an attempt that took it without a copy had no
        // further attempt after it. Answered as its failure was.
        let head = head.ok_or(Refusal::Upstream(
            self.last_error.unwrap_or(UpstreamErrorKind::Reset),
        ))?;
        // A received head goes to an HTTP/2 upstream as a map, built for the attempt.
        let mut head = match (protocol, self.received) {
            (Protocol::H2, Some(r)) => r.to_map(),
            _ => head,
        };
        let mut added = self.added;
        if let Some(h) = &self.shared.config.propagate.pool_header {
            let v = &self.shared.pool_values[self.svc.pools[self.pool].id];
            if added.pool_sent {
                head.insert(h.clone(), v.clone());
            } else {
                added.push(h, v);
            }
        }
        let body = self.body.attempt();
        let Some(uri) = h2_uri else {
            let req = h1::Outgoing {
                method: self.method,
                target: h1::origin_form(self.uri),
                headers: head,
            };
            return Ok((Attempt::H1(req, body), added));
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = http::Version::HTTP_2;
        *req.headers_mut() = head;
        added.insert_into(req.headers_mut());
        added.clear();
        Ok((Attempt::H2(req), added))
    }

    /// Counts a response head where it belongs, or turns a failed exchange (or a deadline
    /// that passed first) into its error, taking back the head it returns.
    fn conclude(
        &mut self,
        ep: &Endpoint,
        result: Result<Result<Answer, Failed>, Deadline>,
    ) -> Result<Answer, (AttemptError, bool)> {
        let (error, message, connect) = match result {
            // RFC 9110 §7.8, §15.2.2: a server switches only to a protocol the client
            // asked for, and graylane only ever asks for WebSocket. Passing another 101
            // on would hand the client a connection in an unknown protocol.
            Ok(Ok(resp))
                if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
                    && !(self.websocket && upgrades_to_websocket(resp.headers())) =>
            {
                ep.report(EndpointOutcome::Connected);
                tracing::warn!(service = %self.svc.name, pool = %self.svc.pools[self.pool].name, endpoint = %ep.label(), "upstream switched to a protocol the client did not ask for; answering 502");
                return Err((AttemptError::Upstream(UpstreamErrorKind::Protocol), false));
            }
            Ok(Ok(resp)) => {
                ep.report(EndpointOutcome::Connected);
                self.tell_guard(resp.status().is_server_error(), true);
                return Ok(resp);
            }
            Ok(Err(Failed {
                error,
                message,
                head,
                connected,
            })) => {
                if head.is_some() {
                    self.head = head;
                }
                if connected {
                    ep.report(EndpointOutcome::Connected);
                }
                (error, message, !connected)
            }
            Err(Deadline::ClientStalled) => {
                tracing::debug!(service = %self.svc.name, pool = %self.svc.pools[self.pool].name, "the client stopped sending its request body");
                return Err((AttemptError::ClientBodyStalled, false));
            }
            Err(Deadline::NoHead) => {
                let timeout = self.shared.config.timeouts.upstream_response;
                tracing::warn!(service = %self.svc.name, pool = %self.svc.pools[self.pool].name, endpoint = %ep.label(), "no upstream response within {timeout:?}");
                // The exchange was cut at the deadline; whether it had connected is not
                // known here, and an endpoint that never answers a connect within the
                // response timeout is caught by the connect timeout first.
                return Err((AttemptError::Upstream(UpstreamErrorKind::Timeout), false));
            }
        };
        match error {
            AttemptError::ClientBodyCut | AttemptError::ClientBodyStalled => {
                tracing::debug!(service = %self.svc.name, pool = %self.svc.pools[self.pool].name, error = %message, "request body cut off by the client");
            }
            AttemptError::Upstream(kind) => {
                tracing::warn!(service = %self.svc.name, pool = %self.svc.pools[self.pool].name, endpoint = %ep.label(), kind = kind.label(), error = %message, "upstream request failed");
            }
        }
        Err((error, connect))
    }

    /// Tells the service's guard how this attempt went: gray outcomes it admitted, and
    /// every stable outcome as the baseline. `answered`: a response head arrived (its
    /// latency counts).
    fn tell_guard(&self, failed: bool, answered: bool) {
        let Some(g) = self.guard else {
            return;
        };
        let gray = self.gray_admitted && self.svc.pools[self.pool].id == GRAY;
        if !gray && self.pool != self.stable() {
            return;
        }
        let now = tokio::time::Instant::now();
        let latency = answered.then(|| now.into_std().saturating_duration_since(self.start));
        if gray {
            g.record_gray(failed, latency, now);
        } else {
            g.record_stable(failed, latency, now);
        }
    }

    /// Records a failed attempt where it belongs and decides what comes next.
    fn after(&mut self, ep: Arc<Endpoint>, error: AttemptError, connect: bool) -> Next {
        // A client's failure says nothing about the upstream: no counter, no endpoint
        // health, no guard outcome hears of it.
        if let (AttemptError::Upstream(kind), Fault::Upstream) = (error, error.refusal().fault()) {
            self.metrics.upstream_error(self.pool, kind).inc();
            if connect {
                ep.report(EndpointOutcome::ConnectFailure);
            }
            self.tell_guard(true, false);
        }
        let idempotent = matches!(
            *self.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        );
        let retry = error.retry(idempotent, &self.body);
        if retry && self.retries_left > 0 {
            self.retries_left -= 1;
            self.exclude = Some(ep);
            if let AttemptError::Upstream(kind) = error {
                self.last_error = Some(kind);
            }
            return Next::Retry;
        }
        // Per-request fallback: the pool's tries are used up on failures that are safe
        // to try again, so stable takes the request instead of the user seeing a 502.
        if retry && self.may_fall_back() {
            return Next::ToStable;
        }
        Next::Refuse(error.refusal())
    }
}

/// A failed exchange: why, the message to log, and the request head when the client
/// hands it back (HTTP/1.1), so a further attempt need not have copied it.
pub(super) struct Failed {
    error: AttemptError,
    message: String,
    head: Option<HeaderMap>,
    /// A connection was made before it failed (passive ejection counts connect failures
    /// only).
    connected: bool,
}

/// One attempt's request, as its upstream's protocol takes it.
pub(super) enum Attempt<'a> {
    H1(h1::Outgoing<'a>, UpBody),
    H2(Request<UpBody>),
}

/// One exchange with `ep` over the pool's protocol. `received`: see [`h1::send`].
pub(super) async fn exchange(
    shared: &Shared,
    attempt: Attempt<'_>,
    ep: &Endpoint,
    added: &[(&HeaderName, &HeaderValue)],
    received: Option<&Received>,
) -> Result<Answer, Failed> {
    match attempt {
        Attempt::H1(req, body) => h1::send(
            ep.addr(),
            ep.origin(),
            req,
            body,
            added,
            shared.config.timeouts.connect,
            received,
        )
        .await
        .map(|resp| Box::new(resp.map(DownBody::h1)))
        .map_err(|f| {
            let message = f.error.to_string();
            match f.error {
                // The client's fault, not the upstream's.
                h1::H1Error::RequestBody(_) => Failed {
                    error: AttemptError::ClientBodyCut,
                    message,
                    head: None,
                    connected: true,
                },
                e => Failed {
                    error: AttemptError::Upstream(e.kind()),
                    message,
                    connected: !e.at_connect(),
                    head: Some(f.headers),
                },
            }
        }),
        Attempt::H2(req) => shared
            .upstreams
            .h2_client()
            .request(req)
            .await
            .map(|resp| Box::new(resp.map(DownBody::h2)))
            .map_err(|e| Failed {
                error: AttemptError::Upstream(upstream::classify(&e)),
                message: e.to_string(),
                head: None,
                connected: !e.is_connect(),
            }),
    }
}

/// Whether a 101 names WebSocket (RFC 6455 §4.1: `Upgrade: websocket`, case-insensitive)
/// as what it switches to.
fn upgrades_to_websocket(headers: &http::HeaderMap) -> bool {
    let mut upgrades = headers.get_all(http::header::UPGRADE).iter();
    match (upgrades.next(), upgrades.next()) {
        (Some(v), None) => v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"),
        _ => false,
    }
}
