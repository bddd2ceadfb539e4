//! The metric families of SPEC §6, registered once; children are resolved from them in
//! `Metrics::try_new`.

use prometheus::core::Collector;
use prometheus::{
    Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Latency buckets in seconds: sub-millisecond for a local proxy hop up to the 30 s
/// default `upstream_response` timeout, roughly ×2–2.5 apart so p50/p99 stay readable.
pub(crate) const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The registered metric families, before children are resolved.
pub(super) struct Families {
    pub(super) requests: IntCounterVec,
    pub(super) duration: HistogramVec,
    pub(super) websockets: IntGaugeVec,
    pub(super) connections: IntGaugeVec,
    pub(super) rejected: IntCounterVec,
    pub(super) send_timeouts: IntCounterVec,
    pub(super) fallbacks: IntCounterVec,
    pub(super) upstream_errors: IntCounterVec,
    pub(super) retries: IntCounterVec,
    pub(super) gray_tripped: IntGaugeVec,
    pub(super) rehomed: IntCounterVec,
    pub(super) shadow_moves: IntCounterVec,
    pub(super) shadow_hits: IntCounterVec,
    pub(super) mirror: IntCounterVec,
    pub(super) endpoint_up: IntGaugeVec,
    pub(super) marker_invalid: IntCounterVec,
    pub(super) reloads: IntCounterVec,
    pub(super) rule_hits: IntCounterVec,
    pub(super) rules_info: IntGaugeVec,
    pub(super) rule_percent: GaugeVec,
    pub(super) rule_expired: IntGaugeVec,
    pub(super) rules_loaded: Gauge,
}

impl Families {
    pub(super) fn register(r: &Registry) -> prometheus::Result<Families> {
        const ROUTE: &[&str] = &["listener", "service", "pool"];
        let counters = |name: &str, help: &str, labels: &[&str]| {
            reg(r, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            reg(r, IntGaugeVec::new(Opts::new(name, help), labels)?)
        };
        let duration = HistogramOpts::new(
            "graylane_request_duration_seconds",
            "Time from request head to response head.",
        )
        .buckets(DURATION_BUCKETS.to_vec());
        Ok(Families {
            requests: counters(
                "graylane_requests_total",
                "Answered requests by status class; WebSocket handshakes count as 1xx.",
                &["listener", "service", "pool", "code"],
            )?,
            duration: reg(r, HistogramVec::new(duration, ROUTE)?)?,
            websockets: gauges("graylane_websocket_connections", "Open long links.", ROUTE)?,
            connections: gauges(
                "graylane_connections",
                "Open client connections.",
                &["listener"],
            )?,
            rejected: counters(
                "graylane_connections_rejected_total",
                "Connections closed at accept for exceeding max_connections.",
                &["listener"],
            )?,
            send_timeouts: counters(
                "graylane_send_timeouts_total",
                "Connections closed because the client read nothing of a response for timeouts.idle.",
                &["listener"],
            )?,
            fallbacks: counters(
                "graylane_fallbacks_total",
                "Requests sent to stable instead of the pool their rule chose.",
                &["service", "from", "to", "reason"],
            )?,
            upstream_errors: counters(
                "graylane_upstream_errors_total",
                "Failed upstream exchanges by kind.",
                &["service", "pool", "kind"],
            )?,
            retries: counters(
                "graylane_upstream_retries_total",
                "Retries on another endpoint of the same pool.",
                &["service", "pool"],
            )?,
            gray_tripped: gauges(
                "graylane_gray_tripped",
                "1 while the guard sends the service's gray traffic to stable.",
                &["service"],
            )?,
            shadow_moves: counters(
                "graylane_shadow_moves_total",
                "Requests the shadow ruleset would send to another pool than the live one.",
                &["service", "from", "to"],
            )?,
            mirror: counters(
                "graylane_mirror_requests_total",
                "Mirrored copies by how their status class compared with the real answer's.",
                &["service", "result"],
            )?,
            shadow_hits: counters(
                "graylane_shadow_rule_hits_total",
                "Decisions of the shadow ruleset by the rule that matched; never routes.",
                &["rule"],
            )?,
            rehomed: counters(
                "graylane_long_links_rehomed_total",
                "Long links closed after a reload changed their pool.",
                &["service", "from", "to"],
            )?,
            endpoint_up: gauges(
                "graylane_endpoint_up",
                "1 while the endpoint may take traffic.",
                &["service", "pool", "endpoint"],
            )?,
            marker_invalid: counters(
                "graylane_marker_invalid_total",
                "Marker values present but unparseable, treated as absent.",
                &["marker"],
            )?,
            reloads: counters(
                "graylane_rules_reloads_total",
                "Rules reload attempts by outcome.",
                &["result"],
            )?,
            rule_hits: counters(
                "graylane_rule_hits_total",
                "Decisions by the rule that matched; rule=\"default\" when none did.",
                &["rule"],
            )?,
            rules_info: gauges(
                "graylane_rules_info",
                "The live ruleset: always 1, identified by its labels.",
                &["version", "sha256"],
            )?,
            rule_percent: reg(
                r,
                GaugeVec::new(
                    Opts::new(
                        "graylane_rule_percent",
                        "The share in force of each percent rule, ramps by the clock.",
                    ),
                    &["rule"],
                )?,
            )?,
            rule_expired: gauges(
                "graylane_rule_expired",
                "1 for a rule whose expires: has passed (it still routes), else 0.",
                &["rule"],
            )?,
            rules_loaded: reg(
                r,
                Gauge::new(
                    "graylane_rules_loaded_timestamp_seconds",
                    "Unix time the live ruleset was loaded.",
                )?,
            )?,
        })
    }
}

/// Registers `c` and hands it back, so families are built in one expression each.
pub(super) fn reg<C: Collector + Clone + 'static>(r: &Registry, c: C) -> prometheus::Result<C> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

/// Builds a fixed-size table of children, one per label in `labels`.
pub(super) fn table<L: Copy, T, const N: usize>(
    labels: [L; N],
    mut f: impl FnMut(L) -> prometheus::Result<T>,
) -> prometheus::Result<[T; N]> {
    let v = labels
        .into_iter()
        .map(&mut f)
        .collect::<prometheus::Result<Vec<T>>>()?;
    v.try_into()
        .map_err(|_| prometheus::Error::Msg("metric table length mismatch".into()))
}
