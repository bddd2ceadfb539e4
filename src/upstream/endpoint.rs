//! One upstream address and the health state that decides whether it gets traffic.
//!
//! Health is the conjunction of two independent views:
//! - active checks (`health:` of the service, run by `health`): down after `unhealthy`
//!   consecutive failed checks, up again after `healthy` consecutive successes;
//! - passive ejection, from real requests: [`CONNECT_FAILURES_TO_EJECT`] consecutive
//!   connect failures eject the endpoint for a backoff that doubles with each consecutive
//!   ejection ([`EJECT_BASE`] … [`EJECT_MAX`]) and resets once a connection is made.
//!   Answers (5xx included), resets and response timeouts never eject: they say how the
//!   version behaves, which is the guard's business, not whether the endpoint is there.
//!
//! The request path calls [`Endpoint::report`] and [`Endpoint::available`]: atomics only.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::uri::Authority;
use prometheus::IntGauge;

use super::resolve::ResolveError;
use crate::metrics::EndpointGauges;

/// Consecutive connect failures that eject an endpoint. Low, because a refused or timed-out
/// connect is unambiguous (nothing was sent) and each one costs a client a retry. Only
/// connect failures eject (SPEC §3): 5xx answers, resets and timeouts are the guard's
/// signal about the version, never an endpoint's reachability.
pub(super) const CONNECT_FAILURES_TO_EJECT: u32 = 3;
/// First ejection time; doubles with each consecutive ejection.
pub(super) const EJECT_BASE: Duration = Duration::from_secs(1);
/// Ejection time never grows past this, so a recovered endpoint is retried within it.
pub(super) const EJECT_MAX: Duration = Duration::from_secs(30);

// === clock ===

/// Milliseconds on a process-wide monotonic clock, never 0 (0 means "not ejected").
pub(super) fn clock_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let ms = BASE.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1
}

/// Reads the clock at most once per pick, and only if an ejected endpoint needs it; tests
/// set it to control time without sleeping.
pub(super) struct Now(pub(super) Option<u64>);

impl Now {
    pub(super) fn lazy() -> Self {
        Now(None)
    }

    pub(super) fn ms(&mut self) -> u64 {
        *self.0.get_or_insert_with(clock_ms)
    }
}

// === impl Endpoint ===

/// One resolved upstream address, with the health state that decides whether it gets
/// traffic. Shared by `Arc` between the pool's snapshot, in-flight requests and the health
/// task; it keeps its identity (and state) across DNS re-resolutions that still return it.
pub(crate) struct Endpoint {
    /// Where connections go.
    pub(super) addr: SocketAddr,
    /// `ip:port`, parsed once so that a request URI costs no parsing.
    pub(super) authority: Authority,
    /// `ip:port`: the `endpoint` label of `endpoint_up` and of logs.
    pub(super) label: String,
    /// The configured `host:port` this address came from: the `Host` of active checks, so a
    /// name-based virtual host answers them as it answers traffic.
    pub(super) origin: Arc<str>,
    /// Pool name, for logs.
    pub(super) pool: Arc<str>,
    /// Requests being served now, for `least_request`.
    pub(super) in_flight: AtomicUsize,
    /// Verdict of the active checks.
    pub(super) check_down: AtomicBool,
    /// Consecutive check results that disagree with `check_down`; reaching the threshold
    /// flips it.
    pub(super) check_streak: AtomicU32,
    /// Consecutive connect failures.
    pub(super) connect_failures: AtomicU32,
    /// Consecutive ejections without a success in between: the backoff exponent.
    pub(super) ejections: AtomicU32,
    /// `clock_ms()` at which the current ejection ends; 0 when not ejected. Cleared lazily
    /// by the first availability check that sees it expired.
    pub(super) ejected_until: AtomicU64,
    /// `graylane_endpoint_up` for this endpoint.
    pub(super) up: IntGauge,
}

/// What one request taught about its endpoint's reachability, for passive ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A connection was made (whatever the answer, or none): resets the connect failure
    /// count and the ejection backoff.
    Connected,
    /// The connection could not be made (refused, unreachable, connect timeout): nothing was
    /// sent, and the endpoint is very likely gone.
    ConnectFailure,
}

impl Endpoint {
    pub(super) fn new(
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
            connect_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            up,
        })
    }

    /// The address connections go to (the connector dials it without DNS).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ip:port` for the authority of upstream request URIs, pre-parsed so that building a
    /// URI is a cheap clone.
    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The endpoint as configured (`name:port` or `ip:port`): the `Host` of health checks
    /// and of requests that came without one.
    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    /// `ip:port`, the `endpoint` label of metrics and logs: one name can expand to many pods.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Whether the endpoint may take traffic now: not down by active checks and not ejected.
    /// Noticing an expired ejection here republishes `endpoint_up`, so the gauge follows
    /// without a timer per endpoint.
    pub(crate) fn available(&self) -> bool {
        self.usable(&mut Now::lazy())
    }

    pub(super) fn usable(&self, now: &mut Now) -> bool {
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
    pub(crate) fn start(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(Arc::clone(self))
    }

    /// Requests in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Records whether one request could connect. An endpoint is ejected after
    /// [`CONNECT_FAILURES_TO_EJECT`] consecutive connect failures, for [`EJECT_BASE`]
    /// doubled per consecutive ejection up to [`EJECT_MAX`]; a connection made resets the
    /// count and the backoff. Outcomes
    /// reported while ejected are ignored: they come from requests sent before the ejection
    /// and say nothing new (and would otherwise grow the backoff on their own).
    pub(crate) fn report(&self, outcome: Outcome) {
        self.report_at(outcome, &mut Now::lazy());
    }

    pub(super) fn report_at(&self, outcome: Outcome, now: &mut Now) {
        let until = self.ejected_until.load(Ordering::Acquire);
        if until != 0 && now.ms() < until {
            return;
        }
        match outcome {
            Outcome::Connected => {
                // Load first: stores on every request would bounce the cache line.
                for c in [&self.connect_failures, &self.ejections] {
                    if c.load(Ordering::Relaxed) != 0 {
                        c.store(0, Ordering::Relaxed);
                    }
                }
            }
            Outcome::ConnectFailure => {
                let c = self.connect_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if c >= CONNECT_FAILURES_TO_EJECT {
                    self.eject(until, now);
                }
            }
        }
    }

    /// Ejects unless another thread already did: `seen` is the `ejected_until` the caller
    /// read, and only the thread that swaps it grows the backoff.
    pub(super) fn eject(&self, seen: u64, now: &mut Now) {
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
        self.connect_failures.store(0, Ordering::Relaxed);
        tracing::warn!(
            pool = %self.pool,
            endpoint = %self.label,
            backoff_ms = backoff.as_millis() as u64,
            "endpoint ejected after consecutive connect failures"
        );
        self.publish();
    }

    /// Feeds one active-check result; returns the new `up` state when it flipped.
    pub(super) fn record_check(&self, ok: bool, healthy: u32, unhealthy: u32) -> Option<bool> {
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
    pub(super) fn publish(&self) {
        let up = !self.check_down.load(Ordering::Acquire)
            && self.ejected_until.load(Ordering::Acquire) == 0;
        self.up.set(i64::from(up));
    }
}

pub(super) fn eject_backoff(consecutive: u32) -> Duration {
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
pub(crate) struct InFlightGuard(pub(super) Arc<Endpoint>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
