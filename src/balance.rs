//! Endpoints of a pool: DNS expansion, health (active checks and passive ejection) and
//! the load-balancing choice made for every request.
//!
//! The request path calls [`PoolEndpoints::pick`] and [`Endpoint::report`]; both are
//! lock-free and allocation-free (one `ArcSwap::load`, then atomics). Everything that
//! builds or rebuilds state — DNS re-resolution, the consistent-hash ring, active checks —
//! runs in the background tasks of [`spawn_tasks`] and is published with one pointer swap.
//!
//! Health is the conjunction of two independent views:
//! - active checks (`health:` of the service): down after `unhealthy` consecutive failed
//!   checks, up again after `healthy` consecutive successes;
//! - passive ejection, from the outcomes of real requests: [`CONNECT_FAILURES_TO_EJECT`]
//!   consecutive connect failures, or [`FAILURES_TO_EJECT`] consecutive failures of any
//!   kind, eject the endpoint for a backoff that doubles with each consecutive ejection
//!   ([`EJECT_BASE`] … [`EJECT_MAX`]) and resets after a success.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::Authority;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::IntGauge;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::config::{Health, LbPolicy, Pool, Protocol};

/// Consecutive connect failures that eject an endpoint. Low, because a refused or timed-out
/// connect is unambiguous (nothing was sent) and each one costs a client a retry.
pub const CONNECT_FAILURES_TO_EJECT: u32 = 3;
/// Consecutive failures of any kind (connect, reset, timeout, protocol, 5xx) that eject an
/// endpoint. Higher than for connects, like Envoy's `consecutive_5xx`, because a 5xx can be
/// one bad request rather than a bad endpoint.
pub const FAILURES_TO_EJECT: u32 = 5;
/// First ejection time; doubles with each consecutive ejection.
pub const EJECT_BASE: Duration = Duration::from_secs(1);
/// Ejection time never grows past this, so a recovered endpoint is retried within it.
pub const EJECT_MAX: Duration = Duration::from_secs(30);
/// Virtual nodes per endpoint on the hash ring: enough for ~±8 % load spread, small enough
/// that the ring of a large headless service stays in cache.
const VNODES: u64 = 160;
/// How often the sweep task republishes `endpoint_up`, so an ejection that expired on a pool
/// without traffic does not leave the gauge at 0.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

// === clock ===

/// Milliseconds on a process-wide monotonic clock, never 0 (0 means "not ejected").
fn clock_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let ms = BASE.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1
}

/// Reads the clock at most once per pick, and only if an ejected endpoint needs it; tests
/// set it to control time without sleeping.
struct Now(Option<u64>);

impl Now {
    fn lazy() -> Self {
        Now(None)
    }

    fn ms(&mut self) -> u64 {
        *self.0.get_or_insert_with(clock_ms)
    }
}

// === impl Endpoint ===

/// One resolved upstream address, with the health state that decides whether it gets
/// traffic. Shared by `Arc` between the pool's snapshot, in-flight requests and the health
/// task; it keeps its identity (and state) across DNS re-resolutions that still return it.
pub struct Endpoint {
    /// Where connections go.
    addr: SocketAddr,
    /// `ip:port`, parsed once so that a request URI costs no parsing.
    authority: Authority,
    /// `ip:port`: the `endpoint` label of `endpoint_up` and of logs.
    label: String,
    /// The configured `host:port` this address came from: the `Host` of active checks, so a
    /// name-based virtual host answers them as it answers traffic.
    origin: Arc<str>,
    /// Pool name, for logs.
    pool: Arc<str>,
    /// Requests being served now, for `least_request`.
    in_flight: AtomicUsize,
    /// Verdict of the active checks.
    check_down: AtomicBool,
    /// Consecutive check results that disagree with `check_down`; reaching the threshold
    /// flips it.
    check_streak: AtomicU32,
    /// Consecutive failed requests of any kind.
    failures: AtomicU32,
    /// Consecutive connect failures.
    connect_failures: AtomicU32,
    /// Consecutive ejections without a success in between: the backoff exponent.
    ejections: AtomicU32,
    /// `clock_ms()` at which the current ejection ends; 0 when not ejected. Cleared lazily
    /// by the first availability check that sees it expired.
    ejected_until: AtomicU64,
    /// `graylane_endpoint_up` for this endpoint.
    up: IntGauge,
}

/// What one request taught about its endpoint, for passive ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head arrived that is not a 5xx (a 4xx is the client's fault, not the
    /// endpoint's). Resets the failure counts and the ejection backoff.
    Success,
    /// The connection could not be made (refused, unreachable, connect timeout): nothing was
    /// sent, and the endpoint is very likely gone.
    ConnectFailure,
    /// The endpoint was reached but failed the request: reset, response timeout, a response
    /// that does not parse, or a 5xx answer.
    Failure,
}

impl Endpoint {
    fn new(
        addr: SocketAddr,
        origin: Arc<str>,
        pool: Arc<str>,
        gauges: &EndpointGauges,
    ) -> Result<Self, ResolveError> {
        let label = addr.to_string();
        let authority =
            Authority::try_from(label.as_str()).map_err(|_| ResolveError::Unusable {
                endpoint: origin.to_string(),
                addr,
            })?;
        let up = (gauges.make)(&label);
        up.set(1);
        Ok(Endpoint {
            addr,
            authority,
            label,
            origin,
            pool,
            in_flight: AtomicUsize::new(0),
            check_down: AtomicBool::new(false),
            check_streak: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            connect_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            up,
        })
    }

    /// The address connections go to (the connector dials it without DNS).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ip:port` for the authority of upstream request URIs, pre-parsed so that building a
    /// URI is a cheap clone.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// `ip:port`, the `endpoint` label of metrics and logs: one name can expand to many pods.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether the endpoint may take traffic now: not down by active checks and not ejected.
    /// Noticing an expired ejection here republishes `endpoint_up`, so the gauge follows
    /// without a timer per endpoint.
    pub fn available(&self) -> bool {
        self.usable(&mut Now::lazy())
    }

    fn usable(&self, now: &mut Now) -> bool {
        if self.check_down.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if now.ms() < until {
            return false;
        }
        // The first caller to see the ejection expired ends it; the others just use it.
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            tracing::info!(pool = %self.pool, endpoint = %self.label, "endpoint ejection ended");
            self.publish();
        }
        true
    }

    /// Counts a request for `least_request` until the guard drops, however the request ends
    /// (including a cancelled future).
    pub fn start(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(Arc::clone(self))
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Records the passive outcome of one request. An endpoint is ejected after
    /// [`CONNECT_FAILURES_TO_EJECT`] consecutive connect failures or [`FAILURES_TO_EJECT`]
    /// consecutive failures of any kind, for [`EJECT_BASE`] doubled per consecutive
    /// ejection up to [`EJECT_MAX`]; a success resets both counts and the backoff. Outcomes
    /// reported while ejected are ignored: they come from requests sent before the ejection
    /// and say nothing new (and would otherwise grow the backoff on their own).
    pub fn report(&self, outcome: Outcome) {
        self.report_at(outcome, &mut Now::lazy());
    }

    fn report_at(&self, outcome: Outcome, now: &mut Now) {
        let until = self.ejected_until.load(Ordering::Acquire);
        if until != 0 && now.ms() < until {
            return;
        }
        match outcome {
            Outcome::Success => {
                // Load first: stores on every success would bounce the cache line.
                for c in [&self.failures, &self.connect_failures, &self.ejections] {
                    if c.load(Ordering::Relaxed) != 0 {
                        c.store(0, Ordering::Relaxed);
                    }
                }
            }
            Outcome::ConnectFailure => {
                let c = self.connect_failures.fetch_add(1, Ordering::Relaxed) + 1;
                let f = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if c >= CONNECT_FAILURES_TO_EJECT || f >= FAILURES_TO_EJECT {
                    self.eject(until, now);
                }
            }
            Outcome::Failure => {
                let f = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if f >= FAILURES_TO_EJECT {
                    self.eject(until, now);
                }
            }
        }
    }

    /// Ejects unless another thread already did: `seen` is the `ejected_until` the caller
    /// read, and only the thread that swaps it grows the backoff.
    fn eject(&self, seen: u64, now: &mut Now) {
        let n = self.ejections.load(Ordering::Relaxed);
        let backoff = eject_backoff(n);
        let until = now
            .ms()
            .saturating_add(u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX));
        if self
            .ejected_until
            .compare_exchange(seen, until, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        self.ejections.store(n.saturating_add(1), Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.connect_failures.store(0, Ordering::Relaxed);
        tracing::warn!(
            pool = %self.pool,
            endpoint = %self.label,
            backoff_ms = backoff.as_millis() as u64,
            "endpoint ejected after consecutive failures"
        );
        self.publish();
    }

    /// Feeds one active-check result; returns the new `up` state when it flipped.
    fn record_check(&self, ok: bool, healthy: u32, unhealthy: u32) -> Option<bool> {
        let down = self.check_down.load(Ordering::Relaxed);
        if ok != down {
            // The result agrees with the current state: any streak towards a flip is broken.
            self.check_streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.check_streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if down { healthy } else { unhealthy };
        if streak < needed {
            return None;
        }
        self.check_streak.store(0, Ordering::Relaxed);
        self.check_down.store(!down, Ordering::Release);
        if down {
            tracing::info!(pool = %self.pool, endpoint = %self.label, "endpoint up: health checks pass");
        } else {
            tracing::warn!(pool = %self.pool, endpoint = %self.label, "endpoint down: health checks fail");
        }
        self.publish();
        Some(down)
    }

    /// Sets `endpoint_up` from the state (not from the clock: an expired ejection counts as
    /// down until `usable` notices and clears it, which republishes).
    fn publish(&self) {
        let up = !self.check_down.load(Ordering::Acquire)
            && self.ejected_until.load(Ordering::Acquire) == 0;
        self.up.set(i64::from(up));
    }
}

fn eject_backoff(consecutive: u32) -> Duration {
    EJECT_BASE
        .saturating_mul(1u32 << consecutive.min(16))
        .min(EJECT_MAX)
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("origin", &self.origin)
            .field("in_flight", &self.in_flight())
            .field("check_down", &self.check_down.load(Ordering::Relaxed))
            .field("ejected_until", &self.ejected_until.load(Ordering::Relaxed))
            .finish()
    }
}

/// Keeps a request counted in its endpoint's `in_flight` while it lives.
#[derive(Debug)]
pub struct InFlightGuard(Arc<Endpoint>);

impl InFlightGuard {
    /// The endpoint the request went to, so the caller can report its outcome.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl EndpointGauges ===

/// How `endpoint_up` children are made and dropped: the metrics module owns the registry
/// and the `service`/`pool` labels; this module only knows endpoint labels, which change
/// as DNS answers change.
#[derive(Clone)]
pub struct EndpointGauges {
    /// Returns the gauge for an endpoint label (`ip:port`).
    pub make: Arc<dyn Fn(&str) -> IntGauge + Send + Sync>,
    /// Drops the series of an endpoint that left the pool, so dashboards do not show a
    /// vanished pod as down forever.
    pub remove: Arc<dyn Fn(&str) + Send + Sync>,
}

impl fmt::Debug for EndpointGauges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EndpointGauges")
    }
}

// === impl PoolEndpoints ===

/// Why a pool's endpoints could not be resolved at start.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The name did not resolve.
    #[error("endpoint {endpoint:?}: cannot resolve: {error}")]
    Lookup {
        /// The endpoint as configured.
        endpoint: String,
        /// The resolver's error (in the message, so not also a `source`: a `{:#}` chain
        /// would print it twice).
        error: io::Error,
    },
    /// The name resolved to no address.
    #[error("endpoint {endpoint:?}: resolves to no address")]
    NoAddress {
        /// The endpoint as configured.
        endpoint: String,
    },
    /// An address that cannot be written as a URI authority (an IPv6 zone id).
    #[error("endpoint {endpoint:?}: address {addr} cannot be used in a request URI")]
    Unusable {
        /// The endpoint as configured.
        endpoint: String,
        /// The offending address.
        addr: SocketAddr,
    },
}

/// Turns a configured `host:port` into addresses. A trait object so tests can make DNS fail
/// on demand; the default is the system resolver (`getaddrinfo`, so `/etc/hosts` and the
/// pod's `resolv.conf` search domains apply, as they do for nginx and curl).
type Resolver = Arc<dyn Fn(&str) -> io::Result<Vec<SocketAddr>> + Send + Sync>;

fn system_resolver() -> Resolver {
    Arc::new(|s: &str| s.to_socket_addrs().map(Iterator::collect))
}

/// One configured `host:port`.
struct Target {
    /// As written; also what the resolver is asked.
    configured: Arc<str>,
    /// `Some` for an IP literal, which never needs DNS.
    literal: Option<SocketAddr>,
}

/// Everything a pick reads, published whole so a request never sees endpoints of one
/// resolution with the ring of another.
struct Snapshot {
    endpoints: Arc<Vec<Arc<Endpoint>>>,
    /// `(point, index into endpoints)` sorted by point; empty unless the pool hashes.
    ring: Vec<(u64, u32)>,
}

impl Snapshot {
    fn new(endpoints: Vec<Arc<Endpoint>>, lb: LbPolicy) -> Self {
        let ring = if lb == LbPolicy::HashUid {
            build_ring(&endpoints)
        } else {
            Vec::new()
        };
        Snapshot {
            endpoints: Arc::new(endpoints),
            ring,
        }
    }
}

/// Points depend only on each endpoint's label, never on list order, so a DNS answer in
/// another order moves no key and a new endpoint takes ~1/n of the keys from the others.
fn build_ring(endpoints: &[Arc<Endpoint>]) -> Vec<(u64, u32)> {
    let mut ring = Vec::with_capacity(endpoints.len() * VNODES as usize);
    for (i, ep) in endpoints.iter().enumerate() {
        let Ok(i) = u32::try_from(i) else { break };
        for v in 0..VNODES {
            ring.push((xxh3_64_with_seed(ep.label.as_bytes(), v), i));
        }
    }
    ring.sort_unstable();
    ring
}

/// A pool's endpoints: the configured `host:port` list expanded by DNS (a Kubernetes
/// headless service is one name and many pods), swapped whole on re-resolution.
pub struct PoolEndpoints {
    /// Pool name, for logs.
    name: Arc<str>,
    lb: LbPolicy,
    protocol: Protocol,
    resolve_interval: Duration,
    targets: Vec<Target>,
    /// What pick reads: one `load()` per pick.
    snapshot: ArcSwap<Snapshot>,
    /// Round-robin position, shared by all requests of the pool.
    cursor: AtomicUsize,
    gauges: EndpointGauges,
    resolver: Resolver,
    /// Last good addresses of each target; a failed lookup keeps them. The async mutex also
    /// serialises refreshes (periodic task and explicit calls).
    last_good: tokio::sync::Mutex<Vec<Vec<SocketAddr>>>,
}

impl PoolEndpoints {
    /// Resolves every endpoint once, blocking: this runs at start, before anything is
    /// served, and a name that does not resolve must fail the start synchronously (a pool
    /// that starts empty would silently send its traffic to stable). IP literals need no DNS.
    pub fn new(pool: &Pool, gauges: EndpointGauges) -> Result<PoolEndpoints, ResolveError> {
        Self::with_resolver(pool, gauges, system_resolver())
    }

    fn with_resolver(
        pool: &Pool,
        gauges: EndpointGauges,
        resolver: Resolver,
    ) -> Result<PoolEndpoints, ResolveError> {
        let name: Arc<str> = Arc::from(pool.name.as_str());
        let targets: Vec<Target> = pool
            .endpoints
            .iter()
            .map(|e| Target {
                configured: Arc::from(e.as_str()),
                literal: e.parse().ok(),
            })
            .collect();
        let mut resolved = Vec::with_capacity(targets.len());
        for t in &targets {
            resolved.push(lookup(t, &resolver).map_err(|e| match e {
                None => ResolveError::NoAddress {
                    endpoint: t.configured.to_string(),
                },
                Some(error) => ResolveError::Lookup {
                    endpoint: t.configured.to_string(),
                    error,
                },
            })?);
        }
        let mut endpoints: Vec<Arc<Endpoint>> = Vec::new();
        for (t, addrs) in targets.iter().zip(&resolved) {
            for &addr in addrs {
                if endpoints.iter().all(|e| e.addr != addr) {
                    let ep =
                        Endpoint::new(addr, Arc::clone(&t.configured), Arc::clone(&name), &gauges)?;
                    endpoints.push(Arc::new(ep));
                }
            }
        }
        Ok(PoolEndpoints {
            snapshot: ArcSwap::from_pointee(Snapshot::new(endpoints, pool.lb)),
            name,
            lb: pool.lb,
            protocol: pool.protocol,
            resolve_interval: pool.resolve_interval,
            targets,
            cursor: AtomicUsize::new(0),
            gauges,
            resolver,
            last_good: tokio::sync::Mutex::new(resolved),
        })
    }

    /// Picks an available endpoint by the pool's policy, skipping `exclude` (the endpoint
    /// that already failed this request, so a retry goes elsewhere). `hash_key` is the
    /// affinity key of `hash_uid` (the uid itself is fine: it is mixed here); without it a
    /// hashing pool falls back to round robin. `None` when no endpoint is available: the
    /// caller falls back to stable, or panic-routes with [`pick_any`](Self::pick_any).
    pub fn pick(&self, hash_key: Option<u64>, exclude: Option<&Endpoint>) -> Option<Arc<Endpoint>> {
        self.pick_at(hash_key, exclude, true, &mut Now::lazy())
    }

    /// Panic routing: like [`pick`](Self::pick) but ignores health, because a health view
    /// can be wrong and stable must still be tried. Still avoids `exclude` when there is any
    /// other endpoint.
    pub fn pick_any(
        &self,
        hash_key: Option<u64>,
        exclude: Option<&Endpoint>,
    ) -> Option<Arc<Endpoint>> {
        let mut now = Now::lazy();
        self.pick_at(hash_key, exclude, false, &mut now)
            .or_else(|| self.pick_at(hash_key, None, false, &mut now))
    }

    fn pick_at(
        &self,
        hash_key: Option<u64>,
        exclude: Option<&Endpoint>,
        health: bool,
        now: &mut Now,
    ) -> Option<Arc<Endpoint>> {
        let snap = self.snapshot.load();
        let mut ok = |ep: &Endpoint| {
            !matches!(exclude, Some(x) if x.addr == ep.addr) && (!health || ep.usable(now))
        };
        let i = match (self.lb, hash_key) {
            (LbPolicy::HashUid, Some(key)) => pick_hash(&snap, key, &mut ok),
            (LbPolicy::LeastRequest, _) => pick_p2c(&snap.endpoints, &self.cursor, &mut ok),
            _ => pick_rr(
                &snap.endpoints,
                self.cursor.fetch_add(1, Ordering::Relaxed),
                &mut ok,
            ),
        }?;
        snap.endpoints.get(i).cloned()
    }

    /// Whether any endpoint may take traffic: `false` makes the pool unhealthy
    /// (`pool_unhealthy` fallback to stable).
    pub fn has_available(&self) -> bool {
        self.snapshot.load().endpoints.iter().any(|e| e.available())
    }

    /// The current endpoint set, for the health task, the admin view and tests.
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        Arc::clone(&self.snapshot.load().endpoints)
    }

    /// Re-resolves the names now. A failed lookup (or an empty answer) of a name keeps that
    /// name's last good addresses and logs a warning: a DNS outage must not empty a pool.
    /// Addresses still present keep their [`Endpoint`] (and its health state); addresses
    /// gone drop their `endpoint_up` series.
    pub async fn refresh(&self) {
        let mut last_good = self.last_good.lock().await;
        for (i, t) in self.targets.iter().enumerate() {
            if t.literal.is_some() {
                continue;
            }
            let resolver = Arc::clone(&self.resolver);
            let configured = Arc::clone(&t.configured);
            let answer =
                tokio::task::spawn_blocking(move || lookup_name(&configured, &resolver)).await;
            match answer {
                Ok(Ok(addrs)) => {
                    if let Some(slot) = last_good.get_mut(i) {
                        *slot = addrs;
                    }
                }
                Ok(Err(e)) => {
                    let error = e.map_or_else(|| "no address".to_owned(), |e| e.to_string());
                    tracing::warn!(pool = %self.name, endpoint = %t.configured, %error,
                        "DNS re-resolution failed; keeping the last good addresses");
                }
                Err(e) => {
                    tracing::warn!(pool = %self.name, endpoint = %t.configured, error = %e,
                        "DNS re-resolution failed; keeping the last good addresses");
                }
            }
        }
        self.publish(&last_good);
    }

    /// Builds and swaps in the endpoint set for `resolved`, unless it is the current one.
    fn publish(&self, resolved: &[Vec<SocketAddr>]) {
        let old = self.endpoints();
        let mut addrs: Vec<(SocketAddr, &Arc<str>)> = Vec::new();
        for (t, list) in self.targets.iter().zip(resolved) {
            for &a in list {
                if addrs.iter().all(|(b, _)| *b != a) {
                    addrs.push((a, &t.configured));
                }
            }
        }
        if addrs.len() == old.len() && addrs.iter().zip(old.iter()).all(|((a, _), e)| *a == e.addr)
        {
            return;
        }
        let mut next = Vec::with_capacity(addrs.len());
        for (addr, origin) in addrs {
            if let Some(e) = old.iter().find(|e| e.addr == addr) {
                next.push(Arc::clone(e));
                continue;
            }
            match Endpoint::new(
                addr,
                Arc::clone(origin),
                Arc::clone(&self.name),
                &self.gauges,
            ) {
                Ok(e) => {
                    tracing::info!(pool = %self.name, endpoint = %e.label, from = %origin, "endpoint added");
                    next.push(Arc::new(e));
                }
                Err(error) => tracing::warn!(pool = %self.name, %error, "endpoint skipped"),
            }
        }
        for gone in old.iter().filter(|e| next.iter().all(|n| n.addr != e.addr)) {
            tracing::info!(pool = %self.name, endpoint = %gone.label, "endpoint removed");
            (self.gauges.remove)(&gone.label);
        }
        self.snapshot.store(Arc::new(Snapshot::new(next, self.lb)));
    }

    fn has_names(&self) -> bool {
        self.targets.iter().any(|t| t.literal.is_none())
    }
}

impl fmt::Debug for PoolEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolEndpoints")
            .field("name", &self.name)
            .field("lb", &self.lb)
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

/// `Err(None)`: the lookup answered no address.
fn lookup(t: &Target, resolver: &Resolver) -> Result<Vec<SocketAddr>, Option<io::Error>> {
    match t.literal {
        Some(a) => Ok(vec![a]),
        None => lookup_name(&t.configured, resolver),
    }
}

/// Sorted, so that the same answer in another order does not count as a change.
fn lookup_name(name: &str, resolver: &Resolver) -> Result<Vec<SocketAddr>, Option<io::Error>> {
    let mut addrs = resolver(name).map_err(Some)?;
    if addrs.is_empty() {
        return Err(None);
    }
    addrs.sort_unstable();
    addrs.dedup();
    Ok(addrs)
}

// === choice ===

/// Round robin from `start`, skipping unavailable endpoints (the next one takes their turn,
/// as in nginx).
fn pick_rr(
    eps: &[Arc<Endpoint>],
    start: usize,
    ok: &mut impl FnMut(&Endpoint) -> bool,
) -> Option<usize> {
    let n = eps.len();
    (0..n)
        .map(|k| start.wrapping_add(k) % n)
        .find(|&i| eps.get(i).is_some_and(|e| ok(e)))
}

/// Power of two choices: two distinct random endpoints, the one with fewer requests in
/// flight wins. Avoids the herd on "the" least-loaded endpoint that a full scan causes
/// when many requests pick at once.
fn pick_p2c(
    eps: &[Arc<Endpoint>],
    cursor: &AtomicUsize,
    ok: &mut impl FnMut(&Endpoint) -> bool,
) -> Option<usize> {
    let n = eps.len();
    if n < 2 {
        return pick_rr(eps, 0, ok);
    }
    let r = next_random();
    let a = (r as usize) % n;
    let b = (a + 1 + ((r >> 32) as usize) % (n - 1)) % n;
    let a_ok = eps.get(a).is_some_and(|e| ok(e));
    let b_ok = eps.get(b).is_some_and(|e| ok(e));
    match (a_ok, b_ok) {
        (true, true) => {
            let load = |i: usize| eps.get(i).map_or(usize::MAX, |e| e.in_flight());
            Some(if load(b) < load(a) { b } else { a })
        }
        (true, false) => Some(a),
        (false, true) => Some(b),
        (false, false) => pick_rr(eps, cursor.fetch_add(1, Ordering::Relaxed), ok),
    }
}

/// Consistent hashing: the first ring point at or after the key's point; an unusable
/// endpoint passes its keys to the next usable one on the ring, so only its keys move.
fn pick_hash(snap: &Snapshot, key: u64, ok: &mut impl FnMut(&Endpoint) -> bool) -> Option<usize> {
    let ring = &snap.ring;
    if ring.is_empty() {
        return None;
    }
    let point = xxh3_64(&key.to_le_bytes());
    let start = ring.partition_point(|&(p, _)| p < point);
    let mut last = u32::MAX;
    for k in 0..ring.len() {
        let Some(&(_, i)) = ring.get((start + k) % ring.len()) else {
            break;
        };
        if i == last {
            continue;
        }
        last = i;
        let i = i as usize;
        if snap.endpoints.get(i).is_some_and(|e| ok(e)) {
            return Some(i);
        }
    }
    None
}

/// xorshift64* per thread: picks need spread, not quality, and must not contend.
fn next_random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().build_hasher().finish() | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

// === background tasks ===

/// Spawns the pool's periodic tasks: DNS re-resolution every `resolve_interval` when any
/// endpoint is a name; active checks when `health` is set (each endpoint every `interval`,
/// all endpoints concurrently so one slow endpoint delays no other's verdict); and a sweep
/// that republishes `endpoint_up` once a second. Returns the handles so shutdown can abort
/// them.
pub fn spawn_tasks(pool: Arc<PoolEndpoints>, health: Option<Health>) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::with_capacity(3);
    if pool.has_names() {
        let pool = Arc::clone(&pool);
        tasks.push(tokio::spawn(async move {
            let every = pool.resolve_interval;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                pool.refresh().await;
            }
        }));
    }
    if let Some(h) = health {
        tasks.push(tokio::spawn(health_loop(Arc::clone(&pool), h)));
    }
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for e in pool.endpoints().iter() {
                e.available();
                e.publish();
            }
        }
    }));
    tasks
}

async fn health_loop(pool: Arc<PoolEndpoints>, h: Health) {
    let path: Arc<str> = Arc::from(h.path.as_str());
    let mut tick = tokio::time::interval(h.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut checks = JoinSet::new();
        for ep in pool.endpoints().iter() {
            let ep = Arc::clone(ep);
            let path = Arc::clone(&path);
            let (protocol, timeout, healthy, unhealthy) =
                (pool.protocol, h.timeout, h.healthy, h.unhealthy);
            checks.spawn(async move {
                let ok = match tokio::time::timeout(timeout, probe(&ep, &path, protocol)).await {
                    Ok(Ok(status)) if status.is_success() => true,
                    Ok(Ok(status)) => {
                        tracing::debug!(endpoint = %ep.label, %status, "health check failed");
                        false
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(endpoint = %ep.label, %error, "health check failed");
                        false
                    }
                    Err(_) => {
                        tracing::debug!(endpoint = %ep.label, "health check timed out");
                        false
                    }
                };
                ep.record_check(ok, healthy, unhealthy);
            });
        }
        while checks.join_next().await.is_some() {}
    }
}

type ProbeError = Box<dyn std::error::Error + Send + Sync>;

/// One `GET path` on a fresh connection (so the check also proves the endpoint accepts
/// connections), with the configured host as `Host` / `:authority`. The connection is
/// driven in this future, so the caller's timeout cancels everything.
async fn probe(
    ep: &Endpoint,
    path: &str,
    protocol: Protocol,
) -> Result<http::StatusCode, ProbeError> {
    let stream = tokio::net::TcpStream::connect(ep.addr).await?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    let builder =
        http::Request::get(path).header(http::header::USER_AGENT, "graylane-health-check");
    match protocol {
        Protocol::Http1 => {
            let req = builder
                .header(http::header::HOST, &*ep.origin)
                .header(http::header::CONNECTION, "close")
                .body(Empty::<Bytes>::new())?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
            drive(send.send_request(req), conn).await
        }
        Protocol::H2 => {
            let uri = format!("http://{}{}", ep.origin, path);
            let req = builder.uri(uri).body(Empty::<Bytes>::new())?;
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            drive(send.send_request(req), conn).await
        }
    }
}

/// Polls the response and the connection together (the connection does the I/O). A
/// connection that ends cleanly first may already have delivered the response (HTTP/1.1
/// `Connection: close`), so the response is still awaited then.
async fn drive(
    resp: impl Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>,
    conn: impl Future<Output = hyper::Result<()>>,
) -> Result<http::StatusCode, ProbeError> {
    tokio::pin!(resp, conn);
    tokio::select! {
        biased;
        r = &mut resp => Ok(r?.status()),
        end = &mut conn => {
            end?;
            Ok(resp.await?.status())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::sync::atomic::AtomicU16;
    use std::sync::Mutex;

    use crate::config::OnUnavailable;

    // --- helpers ---

    /// A fresh round-robin pool of one endpoint (10.0.0.1:80) reporting to `g`, and it.
    fn single_endpoint(g: &Gauges) -> (PoolEndpoints, Arc<Endpoint>) {
        let p = PoolEndpoints::new(
            &pool_cfg(&["10.0.0.1:80"], LbPolicy::RoundRobin),
            g.callbacks(),
        )
        .unwrap();
        let e = Arc::clone(&p.endpoints()[0]);
        (p, e)
    }

    fn pool_cfg(endpoints: &[&str], lb: LbPolicy) -> Pool {
        Pool {
            name: "stable".into(),
            id: 0,
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            retries: 1,
            protocol: Protocol::Http1,
            on_unavailable: OnUnavailable::Fallback,
            lb,
            resolve_interval: Duration::from_secs(30),
        }
    }

    #[derive(Clone, Default)]
    struct Gauges {
        made: Arc<Mutex<HashMap<String, IntGauge>>>,
        removed: Arc<Mutex<Vec<String>>>,
    }

    impl Gauges {
        fn callbacks(&self) -> EndpointGauges {
            let made = Arc::clone(&self.made);
            let removed = Arc::clone(&self.removed);
            EndpointGauges {
                make: Arc::new(move |label| {
                    let g = IntGauge::new("graylane_endpoint_up", "test").unwrap();
                    made.lock().unwrap().insert(label.to_owned(), g.clone());
                    g
                }),
                remove: Arc::new(move |label| removed.lock().unwrap().push(label.to_owned())),
            }
        }

        fn value(&self, label: &str) -> i64 {
            self.made.lock().unwrap()[label].get()
        }
    }

    fn pool_of(endpoints: &[&str], lb: LbPolicy) -> PoolEndpoints {
        PoolEndpoints::new(&pool_cfg(endpoints, lb), Gauges::default().callbacks()).unwrap()
    }

    fn ips(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    fn refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    fn at(ms: u64) -> Now {
        Now(Some(ms))
    }

    fn counts(
        p: &PoolEndpoints,
        n: usize,
        key: impl Fn(usize) -> Option<u64>,
    ) -> HashMap<String, usize> {
        let mut c = HashMap::new();
        for i in 0..n {
            let e = p.pick(key(i), None).unwrap();
            *c.entry(e.label().to_owned()).or_default() += 1;
        }
        c
    }

    fn eject(e: &Endpoint, now: u64) {
        for _ in 0..CONNECT_FAILURES_TO_EJECT {
            e.report_at(Outcome::ConnectFailure, &mut at(now));
        }
    }

    // --- load balancing ---

    #[test]
    fn round_robin_spreads_evenly_and_skips_unavailable() {
        let p = pool_of(
            &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
            LbPolicy::RoundRobin,
        );
        let c = counts(&p, 300, |_| None);
        assert_eq!(c.len(), 3);
        assert!(c.values().all(|&n| n == 100), "{c:?}");

        let eps = p.endpoints();
        eject(&eps[1], clock_ms());
        let c = counts(&p, 300, |_| None);
        assert_eq!(c.get("10.0.0.2:80"), None, "{c:?}");
        assert_eq!(c.values().sum::<usize>(), 300);
    }

    #[test]
    fn least_request_prefers_the_less_loaded() {
        let p = pool_of(
            &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
            LbPolicy::LeastRequest,
        );
        let eps = p.endpoints();
        let _busy: Vec<_> = (0..10).map(|_| eps[0].start()).collect();
        let _some: Vec<_> = (0..5).map(|_| eps[1].start()).collect();
        assert_eq!(eps[0].in_flight(), 10);
        let c = counts(&p, 3000, |_| None);
        // Two distinct candidates: the busiest can never win.
        assert_eq!(c.get("10.0.0.1:80"), None, "{c:?}");
        // (A,B) → B, (A,C) → C, (B,C) → C: C takes about twice what B takes.
        assert!(c["10.0.0.3:80"] * 2 > c["10.0.0.2:80"] * 3, "{c:?}");
        drop(_busy);
        assert_eq!(eps[0].in_flight(), 0);
        let c = counts(&p, 3000, |_| None);
        assert!(
            c["10.0.0.1:80"] > 1000,
            "the idle endpoint takes most: {c:?}"
        );
    }

    #[test]
    fn hash_is_stable_per_key_and_falls_back_to_round_robin_without_one() {
        let eps = ips(5);
        let p = pool_of(&refs(&eps), LbPolicy::HashUid);
        for uid in [1u64, 112233, 88000001] {
            let first = p.pick(Some(uid), None).unwrap();
            for _ in 0..20 {
                assert_eq!(p.pick(Some(uid), None).unwrap().addr(), first.addr());
            }
        }
        // Sequential uids spread over every endpoint (the key is mixed before the ring).
        let c = counts(&p, 10_000, |i| Some(i as u64));
        assert_eq!(c.len(), 5);
        assert!(c.values().all(|&n| n > 1000 && n < 3500), "{c:?}");
        let c = counts(&p, 500, |_| None);
        assert!(c.values().all(|&n| n == 100), "{c:?}");
        // Same endpoints in another order: same ring, same choices.
        let mut rev = eps.clone();
        rev.reverse();
        let q = pool_of(&refs(&rev), LbPolicy::HashUid);
        for uid in 0..1000u64 {
            assert_eq!(
                p.pick(Some(uid), None).unwrap().addr(),
                q.pick(Some(uid), None).unwrap().addr()
            );
        }
    }

    #[test]
    fn hash_moves_about_one_nth_of_keys_when_an_endpoint_is_added() {
        let before = pool_of(&refs(&ips(10)), LbPolicy::HashUid);
        let after = pool_of(&refs(&ips(11)), LbPolicy::HashUid);
        let keys = 10_000u64;
        let moved = (0..keys)
            .filter(|&k| {
                before.pick(Some(k), None).unwrap().addr()
                    != after.pick(Some(k), None).unwrap().addr()
            })
            .count();
        let frac = moved as f64 / keys as f64;
        let n = 11.0;
        assert!(frac > 0.5 / n && frac < 2.0 / n, "moved {frac}");
        // And every moved key went to the new endpoint.
        for k in 0..keys {
            let (a, b) = (
                before.pick(Some(k), None).unwrap(),
                after.pick(Some(k), None).unwrap(),
            );
            if a.addr() != b.addr() {
                assert_eq!(b.label(), "10.0.0.11:80");
            }
        }
    }

    #[test]
    fn hash_walks_past_an_unavailable_endpoint_and_only_its_keys_move() {
        let p = pool_of(&refs(&ips(4)), LbPolicy::HashUid);
        let home: Vec<_> = (0..2000u64)
            .map(|k| p.pick(Some(k), None).unwrap())
            .collect();
        let victim = Arc::clone(&p.endpoints()[2]);
        eject(&victim, clock_ms());
        for (k, h) in home.iter().enumerate() {
            let now = p.pick(Some(k as u64), None).unwrap();
            if h.addr() == victim.addr() {
                assert_ne!(now.addr(), victim.addr());
            } else {
                assert_eq!(now.addr(), h.addr());
            }
        }
    }

    #[test]
    fn pick_skips_exclude_for_every_policy() {
        for lb in [
            LbPolicy::RoundRobin,
            LbPolicy::LeastRequest,
            LbPolicy::HashUid,
        ] {
            let p = pool_of(&["10.0.0.1:80", "10.0.0.2:80"], lb);
            let eps = p.endpoints();
            for k in 0..200u64 {
                for x in eps.iter() {
                    let e = p.pick(Some(k), Some(x)).unwrap();
                    assert_ne!(e.addr(), x.addr(), "{lb:?}");
                }
            }
            let single = pool_of(&["10.0.0.1:80"], lb);
            let only = Arc::clone(&single.endpoints()[0]);
            assert!(single.pick(Some(1), Some(&only)).is_none(), "{lb:?}");
            // Panic routing still returns the excluded endpoint when it is the only one.
            assert_eq!(
                single.pick_any(Some(1), Some(&only)).unwrap().addr(),
                only.addr()
            );
        }
    }

    #[test]
    fn all_ejected_pick_none_but_pick_any_returns_one() {
        for lb in [
            LbPolicy::RoundRobin,
            LbPolicy::LeastRequest,
            LbPolicy::HashUid,
        ] {
            let p = pool_of(&["10.0.0.1:80", "10.0.0.2:80"], lb);
            let eps = p.endpoints();
            let now = clock_ms();
            eject(&eps[0], now);
            assert!(p.has_available());
            eject(&eps[1], now);
            assert!(!p.has_available());
            assert!(p.pick(Some(7), None).is_none(), "{lb:?}");
            assert!(p.pick_any(Some(7), None).is_some(), "{lb:?}");
            let e = p.pick_any(Some(7), Some(&eps[0])).unwrap();
            assert_eq!(e.addr(), eps[1].addr(), "{lb:?}");
        }
    }

    // --- passive ejection ---

    #[test]
    fn connect_failures_eject_with_growing_backoff_reset_by_success() {
        let g = Gauges::default();
        let (p, e) = single_endpoint(&g);
        assert_eq!(g.value("10.0.0.1:80"), 1);

        let t = 10_000;
        e.report_at(Outcome::ConnectFailure, &mut at(t));
        e.report_at(Outcome::ConnectFailure, &mut at(t));
        assert!(e.usable(&mut at(t)));
        e.report_at(Outcome::ConnectFailure, &mut at(t));
        assert!(!e.usable(&mut at(t)));
        assert_eq!(g.value("10.0.0.1:80"), 0);
        assert!(p.pick_at(None, None, true, &mut at(t + 999)).is_none());
        // Failures of requests already in flight do not extend the ejection.
        for _ in 0..10 {
            e.report_at(Outcome::Failure, &mut at(t + 500));
        }
        assert!(p.pick_at(None, None, true, &mut at(t + 1000)).is_some());
        assert_eq!(
            g.value("10.0.0.1:80"),
            1,
            "noticing the expiry republishes the gauge"
        );

        // Second consecutive ejection: 2 s.
        let t = t + 1000;
        eject(&e, t);
        assert!(!e.usable(&mut at(t + 1999)));
        assert!(e.usable(&mut at(t + 2000)));
        // Third: 4 s.
        let t = t + 2000;
        eject(&e, t);
        assert!(!e.usable(&mut at(t + 3999)));
        assert!(e.usable(&mut at(t + 4000)));
        // A success resets the backoff to 1 s.
        let t = t + 4000;
        e.report_at(Outcome::Success, &mut at(t));
        eject(&e, t);
        assert!(!e.usable(&mut at(t + 999)));
        assert!(e.usable(&mut at(t + 1000)));
    }

    #[test]
    fn other_failures_eject_after_five_consecutive() {
        let p = pool_of(&["10.0.0.1:80"], LbPolicy::RoundRobin);
        let e = Arc::clone(&p.endpoints()[0]);
        let t = 5_000;
        for _ in 0..FAILURES_TO_EJECT - 1 {
            e.report_at(Outcome::Failure, &mut at(t));
        }
        e.report_at(Outcome::Success, &mut at(t));
        for _ in 0..FAILURES_TO_EJECT - 1 {
            e.report_at(Outcome::Failure, &mut at(t));
        }
        assert!(
            e.usable(&mut at(t)),
            "a success in between breaks the streak"
        );
        e.report_at(Outcome::Failure, &mut at(t));
        assert!(!e.usable(&mut at(t)));
        assert!(e.usable(&mut at(t + 1000)));
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(eject_backoff(0), Duration::from_secs(1));
        assert_eq!(eject_backoff(3), Duration::from_secs(8));
        assert_eq!(eject_backoff(5), EJECT_MAX);
        assert_eq!(eject_backoff(u32::MAX), EJECT_MAX);
    }

    #[test]
    fn in_flight_guard_counts_until_dropped() {
        let p = pool_of(&["10.0.0.1:80"], LbPolicy::LeastRequest);
        let e = p.pick(None, None).unwrap();
        let g1 = e.start();
        let g2 = e.start();
        assert_eq!(e.in_flight(), 2);
        assert_eq!(g1.endpoint().addr(), e.addr());
        drop(g1);
        drop(g2);
        assert_eq!(e.in_flight(), 0);
    }

    // --- active checks ---

    #[test]
    fn check_thresholds_flip_state_after_consecutive_results() {
        let g = Gauges::default();
        let (p, e) = single_endpoint(&g);
        let (healthy, unhealthy) = (2, 3);
        assert_eq!(e.record_check(false, healthy, unhealthy), None);
        assert_eq!(e.record_check(false, healthy, unhealthy), None);
        assert_eq!(
            e.record_check(true, healthy, unhealthy),
            None,
            "a success breaks the streak"
        );
        assert_eq!(e.record_check(false, healthy, unhealthy), None);
        assert_eq!(e.record_check(false, healthy, unhealthy), None);
        assert!(e.available());
        assert_eq!(e.record_check(false, healthy, unhealthy), Some(false));
        assert!(!e.available());
        assert!(!p.has_available());
        assert_eq!(g.value("10.0.0.1:80"), 0);
        assert_eq!(e.record_check(true, healthy, unhealthy), None);
        assert_eq!(e.record_check(false, healthy, unhealthy), None);
        assert_eq!(e.record_check(true, healthy, unhealthy), None);
        assert_eq!(e.record_check(true, healthy, unhealthy), Some(true));
        assert!(e.available());
        assert_eq!(g.value("10.0.0.1:80"), 1);
    }

    /// An upstream answering every request with `status`, recording each `Host` (or h2
    /// `:authority`) it sees. Serves HTTP/1.1 and h2c.
    struct TestServer {
        addr: SocketAddr,
        status: Arc<AtomicU16>,
        hosts: Arc<Mutex<Vec<String>>>,
    }

    impl TestServer {
        async fn start() -> TestServer {
            use hyper::service::service_fn;
            use hyper_util::server::conn::auto;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let status = Arc::new(AtomicU16::new(200));
            let hosts = Arc::new(Mutex::new(Vec::new()));
            let (st, hs) = (Arc::clone(&status), Arc::clone(&hosts));
            tokio::spawn(async move {
                loop {
                    let (s, _) = listener.accept().await.unwrap();
                    let (st, hs) = (Arc::clone(&st), Arc::clone(&hs));
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                            let host = req
                                .headers()
                                .get(http::header::HOST)
                                .and_then(|h| h.to_str().ok())
                                .map(str::to_owned)
                                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                                .unwrap_or_default();
                            hs.lock()
                                .unwrap()
                                .push(format!("{host} {}", req.uri().path()));
                            let code = st.load(Ordering::SeqCst);
                            async move {
                                Ok::<_, Infallible>(
                                    http::Response::builder()
                                        .status(code)
                                        .body(Empty::<Bytes>::new())
                                        .unwrap(),
                                )
                            }
                        });
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(s), svc)
                            .await;
                    });
                }
            });
            TestServer {
                addr,
                status,
                hosts,
            }
        }

        fn hits(&self) -> usize {
            self.hosts.lock().unwrap().len()
        }
    }

    fn health(interval_ms: u64, timeout_ms: u64) -> Health {
        Health {
            path: "/healthz".into(),
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
            healthy: 2,
            unhealthy: 3,
        }
    }

    async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn probe_speaks_http1_and_h2_with_the_configured_host() {
        let srv = TestServer::start().await;
        let origin = format!("localhost:{}", srv.addr.port());
        let gauges = Gauges::default().callbacks();
        let ep = Endpoint::new(
            srv.addr,
            Arc::from(origin.as_str()),
            Arc::from("stable"),
            &gauges,
        )
        .unwrap();
        assert_eq!(probe(&ep, "/healthz", Protocol::Http1).await.unwrap(), 200);
        srv.status.store(503, Ordering::SeqCst);
        assert_eq!(probe(&ep, "/healthz", Protocol::H2).await.unwrap(), 503);
        let hosts = srv.hosts.lock().unwrap().clone();
        assert_eq!(
            hosts,
            vec![format!("{origin} /healthz"), format!("{origin} /healthz")]
        );
    }

    #[tokio::test]
    async fn active_checks_mark_down_on_500_and_up_again_on_200() {
        let srv = TestServer::start().await;
        let g = Gauges::default();
        let cfg = pool_cfg(&[&srv.addr.to_string()], LbPolicy::RoundRobin);
        let pool = Arc::new(PoolEndpoints::new(&cfg, g.callbacks()).unwrap());
        let ep = Arc::clone(&pool.endpoints()[0]);
        let tasks = spawn_tasks(Arc::clone(&pool), Some(health(20, 500)));

        wait_until("first checks", || srv.hits() >= 3).await;
        assert!(ep.available());
        srv.status.store(500, Ordering::SeqCst);
        let before = srv.hits();
        wait_until("down", || !ep.available()).await;
        assert!(
            srv.hits() - before >= 3,
            "down only after `unhealthy` failures"
        );
        assert!(!pool.has_available());
        assert!(pool.pick(None, None).is_none());
        assert_eq!(g.value(ep.label()), 0);

        srv.status.store(204, Ordering::SeqCst);
        let before = srv.hits();
        wait_until("up", || ep.available()).await;
        assert!(
            srv.hits() - before >= 2,
            "up only after `healthy` successes"
        );
        assert_eq!(g.value(ep.label()), 1);
        for t in tasks {
            t.abort();
        }
    }

    #[tokio::test]
    async fn active_checks_mark_down_when_nothing_listens_or_nothing_answers() {
        let closed = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        // Accepts connections and never answers: each check ends by `timeout`.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let cfg = pool_cfg(
            &[&closed.to_string(), &silent_addr.to_string()],
            LbPolicy::RoundRobin,
        );
        let pool = Arc::new(PoolEndpoints::new(&cfg, Gauges::default().callbacks()).unwrap());
        let eps = pool.endpoints();
        let tasks = spawn_tasks(Arc::clone(&pool), Some(health(20, 50)));
        wait_until("both down", || eps.iter().all(|e| !e.available())).await;
        assert!(pool.pick(None, None).is_none());
        assert!(pool.pick_any(None, None).is_some());
        for t in tasks {
            t.abort();
        }
    }

    // --- DNS ---

    #[tokio::test]
    async fn a_name_resolves_to_its_addresses() {
        let p = pool_of(&["localhost:4321", "127.0.0.1:4321"], LbPolicy::RoundRobin);
        let eps = p.endpoints();
        assert!(!eps.is_empty() && eps.len() <= 2, "{eps:?}");
        for e in eps.iter() {
            assert!(
                e.addr().ip().is_loopback() && e.addr().port() == 4321,
                "{e:?}"
            );
            assert_eq!(e.label(), e.addr().to_string());
            assert_eq!(e.authority().as_str(), e.label());
        }
        assert!(p.has_names());
        assert!(!pool_of(&["10.0.0.1:80", "[::1]:80"], LbPolicy::RoundRobin).has_names());
        p.refresh().await;
        assert_eq!(p.endpoints().len(), eps.len());
    }

    #[test]
    fn a_name_that_does_not_resolve_at_start_is_an_error() {
        let cfg = pool_cfg(&["10.0.0.1:80", "nowhere.invalid:80"], LbPolicy::RoundRobin);
        let e = PoolEndpoints::new(&cfg, Gauges::default().callbacks()).unwrap_err();
        assert!(e.to_string().contains("nowhere.invalid:80"), "{e}");
        let empty: Resolver = Arc::new(|_: &str| Ok(Vec::new()));
        let e =
            PoolEndpoints::with_resolver(&cfg, Gauges::default().callbacks(), empty).unwrap_err();
        assert!(matches!(e, ResolveError::NoAddress { .. }), "{e}");
    }

    #[tokio::test]
    async fn refresh_swaps_changes_keeps_state_and_survives_failures() {
        let answer: Arc<Mutex<io::Result<Vec<SocketAddr>>>> = Arc::new(Mutex::new(Ok(vec![
            "10.9.0.2:80".parse().unwrap(),
            "10.9.0.1:80".parse().unwrap(),
        ])));
        let a = Arc::clone(&answer);
        let resolver: Resolver = Arc::new(move |name: &str| {
            assert_eq!(name, "pods.svc:80");
            match &*a.lock().unwrap() {
                Ok(v) => Ok(v.clone()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            }
        });
        let g = Gauges::default();
        let cfg = pool_cfg(&["pods.svc:80", "10.0.0.1:80"], LbPolicy::HashUid);
        let p = PoolEndpoints::with_resolver(&cfg, g.callbacks(), resolver).unwrap();
        let labels = |p: &PoolEndpoints| {
            p.endpoints()
                .iter()
                .map(|e| e.label().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(labels(&p), ["10.9.0.1:80", "10.9.0.2:80", "10.0.0.1:80"]);
        let kept = Arc::clone(&p.endpoints()[1]);
        assert_eq!(&*kept.origin, "pods.svc:80");
        eject(&kept, clock_ms());

        // Same answer in another order: nothing changes.
        let before = p.endpoints();
        *answer.lock().unwrap() = Ok(vec![
            "10.9.0.1:80".parse().unwrap(),
            "10.9.0.2:80".parse().unwrap(),
        ]);
        p.refresh().await;
        assert!(Arc::ptr_eq(&before, &p.endpoints()));

        // A pod replaced: the survivor keeps its Arc and its ejection; the gone one's
        // series is removed; the new one gets a gauge.
        *answer.lock().unwrap() = Ok(vec![
            "10.9.0.2:80".parse().unwrap(),
            "10.9.0.3:80".parse().unwrap(),
        ]);
        p.refresh().await;
        assert_eq!(labels(&p), ["10.9.0.2:80", "10.9.0.3:80", "10.0.0.1:80"]);
        assert!(Arc::ptr_eq(&kept, &p.endpoints()[0]));
        assert!(!p.endpoints()[0].available());
        assert_eq!(*g.removed.lock().unwrap(), ["10.9.0.1:80"]);
        assert_eq!(g.value("10.9.0.3:80"), 1);
        // The ring follows the new set.
        for k in 0..500u64 {
            assert_ne!(p.pick(Some(k), None).unwrap().label(), "10.9.0.1:80");
        }

        // A failed lookup, then an empty answer: the last good set stays.
        let before = p.endpoints();
        *answer.lock().unwrap() = Err(io::Error::other("SERVFAIL"));
        p.refresh().await;
        assert!(Arc::ptr_eq(&before, &p.endpoints()));
        *answer.lock().unwrap() = Ok(Vec::new());
        p.refresh().await;
        assert!(Arc::ptr_eq(&before, &p.endpoints()));
        assert_eq!(g.removed.lock().unwrap().len(), 1);
    }
}
