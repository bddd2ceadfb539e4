//! The children the request path touches, one set per (listener, service, pool), per
//! listener and per service, and the label tables that index them.

use std::time::Duration;

use prometheus::core::Metric as _;
use prometheus::{Histogram, IntCounter, IntGauge};

use crate::config::PoolId;
use crate::error::{FallbackReason, UpstreamErrorKind};

pub(crate) use super::families::DURATION_BUCKETS;

/// `code` label values of `requests_total`, indexed by [`code_index`].
pub(super) const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// How a rules reload ended; the `result` label of `rules_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadResult {
    /// A new ruleset was compiled and stored.
    Ok,
    /// The files hash to the live ruleset's sha256; nothing was swapped.
    Unchanged,
    /// The files did not compile; the previous ruleset stays live.
    Error,
}

impl ReloadResult {
    /// Every result, in label order.
    pub const ALL: [ReloadResult; 3] = [
        ReloadResult::Ok,
        ReloadResult::Unchanged,
        ReloadResult::Error,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            ReloadResult::Ok => "ok",
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Error => "error",
        }
    }

    pub(super) fn index(self) -> usize {
        match self {
            ReloadResult::Ok => 0,
            ReloadResult::Unchanged => 1,
            ReloadResult::Error => 2,
        }
    }
}

pub(super) fn reason_index(r: FallbackReason) -> usize {
    match r {
        FallbackReason::PoolMissing => 0,
        FallbackReason::PoolUnhealthy => 1,
        FallbackReason::GuardTripped => 2,
    }
}

pub(super) fn kind_index(k: UpstreamErrorKind) -> usize {
    match k {
        UpstreamErrorKind::Connect => 0,
        UpstreamErrorKind::Timeout => 1,
        UpstreamErrorKind::Reset => 2,
        UpstreamErrorKind::Protocol => 3,
    }
}

/// Status classes outside 1xx–5xx (hyper allows up to 999) count with their nearest
/// class, so every answer is counted exactly once.
pub(super) fn code_index(status: u16) -> usize {
    match status {
        0..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

// === RouteMetrics ===

/// The children of one (listener, service, pool): what a finished request touches.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    /// `requests_total` per status class, indexed by [`code_index`].
    pub(super) codes: [IntCounter; 5],
    /// `request_duration_seconds`.
    pub(super) duration: Histogram,
    /// `websocket_connections`; a sink for unrouted requests, which never open a tunnel.
    pub(super) websockets: IntGauge,
}

impl RouteMetrics {
    /// Counts one answered request (or WebSocket handshake, `101` → `1xx`) and its
    /// latency; two atomic adds and a bucket search, nothing else.
    pub fn observe(&self, status: u16, elapsed: Duration) {
        if let Some(c) = self.codes.get(code_index(status)) {
            c.inc();
        }
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Open long links on this route: `inc()` when the tunnel opens, `dec()` when it
    /// closes, so the gauge is exact even when links outlive a reload.
    pub fn websockets(&self) -> &IntGauge {
        &self.websockets
    }

    /// Every count of this route at one moment, for the status page's history: read by
    /// the admin sampler every few seconds, never by a request.
    pub(crate) fn counts(&self) -> RouteCounts {
        let proto = self.duration.metric();
        let mut buckets = [0u64; DURATION_BUCKETS.len()];
        for (b, pb) in buckets.iter_mut().zip(proto.get_histogram().get_bucket()) {
            *b = pb.cumulative_count();
        }
        RouteCounts {
            codes: std::array::from_fn(|i| self.codes[i].get()),
            buckets,
            websockets: self.websockets.get(),
        }
    }
}

/// A [`RouteMetrics`] read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RouteCounts {
    /// Answered requests per status class, indexed like `CODE_CLASSES`.
    pub(crate) codes: [u64; 5],
    /// Cumulative counts of `request_duration_seconds` at each of [`DURATION_BUCKETS`].
    pub(crate) buckets: [u64; DURATION_BUCKETS.len()],
    /// Open long links (a gauge).
    pub(crate) websockets: i64,
}

/// How a copy went; the `result` label of `mirror_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorResult {
    /// Its status class equals the real answer's.
    Match,
    /// It does not.
    Mismatch,
    /// No answer: no endpoint, a connect or exchange failure, or no head in time.
    Error,
    /// Not sent: `max_in_flight` copies were already out.
    Dropped,
}

impl MirrorResult {
    pub const ALL: [MirrorResult; 4] = [
        MirrorResult::Match,
        MirrorResult::Mismatch,
        MirrorResult::Error,
        MirrorResult::Dropped,
    ];

    pub fn label(self) -> &'static str {
        match self {
            MirrorResult::Match => "match",
            MirrorResult::Mismatch => "mismatch",
            MirrorResult::Error => "error",
            MirrorResult::Dropped => "dropped",
        }
    }
}

// === ListenerMetrics ===

/// Connection-level gauges of one listener, kept by the accept loop.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    /// `connections{listener}`: open client connections, to compare with `max_connections`.
    pub connections: IntGauge,
    /// `connections_rejected_total{listener}`: closed at once for being over the limit.
    pub rejected: IntCounter,
    /// `send_timeouts_total{listener}`: closed because the client stopped reading.
    pub send_timeouts: IntCounter,
}

// === ServiceMetrics ===

/// Per-service children; pools are indexed within `service.pools` unless said otherwise.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    /// `fallbacks_total`, indexed by global [`PoolId`] then [`reason_index`]; the stable
    /// row is the sink, since stable never falls back.
    pub(super) fallbacks: Vec<[IntCounter; 3]>,
    /// `upstream_errors_total`, indexed by pool then [`kind_index`].
    pub(super) upstream_errors: Vec<[IntCounter; 4]>,
    /// `upstream_retries_total`, indexed by pool.
    pub(super) retries: Vec<IntCounter>,
    /// `long_links_rehomed_total`, indexed `[from][to]`; the diagonal is the sink.
    pub(super) rehomed: Vec<Vec<IntCounter>>,
    /// `shadow_moves_total`, indexed `[from][to]` like `rehomed`.
    pub(super) shadow_moves: Vec<Vec<IntCounter>>,
    /// `mirror_requests_total`, indexed like [`MirrorResult::ALL`].
    pub(super) mirror: [IntCounter; 4],
    /// `gray_tripped{service}`.
    pub(super) gray_tripped: IntGauge,
    /// Where out-of-range indices land.
    pub(super) sink: IntCounter,
}

impl ServiceMetrics {
    /// `fallbacks_total{service,from,to="stable",reason}`.
    ///
    /// `from` is the **global** [`PoolId`] the rules chose (an index into
    /// `Config::pool_names`), not an index into `service.pools`: with `pool_missing` the
    /// chosen pool is by definition not among the service's pools.
    pub fn fallback(&self, from: PoolId, reason: FallbackReason) -> &IntCounter {
        self.fallbacks
            .get(from)
            .and_then(|r| r.get(reason_index(reason)))
            .unwrap_or(&self.sink)
    }

    /// `upstream_errors_total{service,pool,kind}`; feeds error-rate alerts per pool.
    pub fn upstream_error(&self, pool: usize, kind: UpstreamErrorKind) -> &IntCounter {
        self.upstream_errors
            .get(pool)
            .and_then(|r| r.get(kind_index(kind)))
            .unwrap_or(&self.sink)
    }

    /// `upstream_retries_total{service,pool}`: one per retry attempt, not per request.
    pub fn retries(&self, pool: usize) -> &IntCounter {
        self.retries.get(pool).unwrap_or(&self.sink)
    }

    /// `gray_tripped{service}`: set to 1 while the guard keeps gray's traffic on stable.
    pub fn gray_tripped(&self) -> &IntGauge {
        &self.gray_tripped
    }

    /// `long_links_rehomed_total{service,from,to}`; `from == to` is never a re-home and
    /// counts nowhere.
    pub fn rehomed(&self, from: usize, to: usize) -> &IntCounter {
        self.rehomed
            .get(from)
            .and_then(|r| r.get(to))
            .unwrap_or(&self.sink)
    }

    /// `mirror_requests_total{service,result}`.
    pub fn mirror(&self, r: MirrorResult) -> &IntCounter {
        let i = MirrorResult::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.mirror.get(i).unwrap_or(&self.sink)
    }

    /// `shadow_moves_total{service,from,to}`: requests the candidate ruleset would send
    /// to another pool; `from == to` is no move and counts nowhere.
    pub fn shadow_move(&self, from: usize, to: usize) -> &IntCounter {
        self.shadow_moves
            .get(from)
            .and_then(|r| r.get(to))
            .unwrap_or(&self.sink)
    }
}
