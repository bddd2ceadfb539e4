//! The Prometheus registry of SPEC §6 and the label children the request path uses.
//!
//! Every child whose labels are known from the config — each (listener, service, pool),
//! each endpoint, each marker, each error kind — is resolved once in [`Metrics::try_new`].
//! The request path then only indexes plain vectors and bumps atomics: no label hashing,
//! no lock. Series exist from the start with value 0, so dashboards and `rate()` see a
//! zero line instead of a gap until the first event.
//!
//! Lookups never panic. Indices come from the validated config; an index outside it
//! (a bug elsewhere) lands on an unregistered "sink" child rather than taking the
//! process down or polluting a real series.
//!
//! - `families`: the registered families of SPEC §6.
//! - `children`: what one request touches, resolved per (listener, service, pool).

mod children;
mod families;

pub(crate) use children::{
    ListenerMetrics, MirrorResult, ReloadResult, RouteCounts, RouteMetrics, ServiceMetrics,
    DURATION_BUCKETS,
};

use std::fmt;
use std::sync::{Arc, Mutex};

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
    TextEncoder,
};

use crate::config::{Config, STABLE};
use crate::error::{FallbackReason, UpstreamErrorKind};
use crate::markers::MarkerKind;
use children::CODE_CLASSES;
use families::{table, Families};

/// Label value of `service` and `pool` for requests no service matched (SPEC §3).
pub(crate) const UNROUTED: &str = "-";

// === Metrics ===

/// Every metric of SPEC §6 in a private registry, so tests and embedders can build
/// several side by side. Share it behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Metrics {
    /// Private, not the process-global default registry: nothing else can add series.
    registry: Registry,
    /// `[listener][service][pool]`.
    routes: Vec<Vec<Vec<RouteMetrics>>>,
    /// `[listener]`, service and pool `"-"`.
    unrouted: Vec<RouteMetrics>,
    /// `[listener]`.
    listeners: Vec<ListenerMetrics>,
    /// `[service]`.
    services: Vec<ServiceMetrics>,
    /// `endpoint_up` family: endpoints come and go with DNS, so their gauges are made
    /// by the balancer (off the request path) through [`Metrics::endpoint_gauges`].
    endpoint_up: IntGaugeVec,
    /// `marker_invalid_total`, indexed by `MarkerKind as usize`.
    marker_invalid: [IntCounter; 6],
    /// `rules_reloads_total`, indexed by [`ReloadResult::index`].
    reloads: [IntCounter; 3],
    /// Rule names change with every reload, so children are made by [`Metrics::rule_hits`].
    rule_hits: IntCounterVec,
    /// The shadow ruleset's `shadow_rule_hits_total{rule}`, made like `rule_hits`.
    shadow_hits: IntCounterVec,
    /// `rules_info{version,sha256}`.
    rules_info: IntGaugeVec,
    /// Label values of the live `rules_info` series, so the next reload can remove it.
    /// Taken only by reloads, never by requests.
    rules_info_live: Mutex<Option<[String; 2]>>,
    /// `rule_percent{rule}` and `rule_expired{rule}`, set every second from the live
    /// ruleset.
    rule_percent: prometheus::GaugeVec,
    rule_expired: IntGaugeVec,
    /// The rules those two families have series for, so rules that left the ruleset
    /// lose theirs. Taken by the once-a-second update only.
    rule_state_names: Mutex<Vec<String>>,
    /// `rules_loaded_timestamp_seconds`.
    rules_loaded: Gauge,
    /// Unregistered children that out-of-range lookups return.
    sink: Sink,
}

/// Unregistered stand-ins: counting into them is harmless and invisible.
#[derive(Debug)]
struct Sink {
    counter: IntCounter,
    gauge: IntGauge,
    route: RouteMetrics,
    listener: ListenerMetrics,
    service: ServiceMetrics,
}

impl Sink {
    fn new() -> prometheus::Result<Sink> {
        let counter = IntCounter::new("graylane_sink_total", "unregistered sink")?;
        let gauge = IntGauge::new("graylane_sink", "unregistered sink")?;
        let duration = Histogram::with_opts(
            HistogramOpts::new("graylane_sink_seconds", "unregistered sink")
                .buckets(DURATION_BUCKETS.to_vec()),
        )?;
        let route = RouteMetrics {
            codes: std::array::from_fn(|_| counter.clone()),
            duration,
            websockets: gauge.clone(),
        };
        let listener = ListenerMetrics {
            connections: gauge.clone(),
            rejected: counter.clone(),
            send_timeouts: counter.clone(),
        };
        let service = ServiceMetrics {
            fallbacks: Vec::new(),
            upstream_errors: Vec::new(),
            retries: Vec::new(),
            rehomed: Vec::new(),
            shadow_moves: Vec::new(),
            mirror: std::array::from_fn(|_| counter.clone()),
            gray_tripped: gauge.clone(),
            sink: counter.clone(),
        };
        Ok(Sink {
            counter,
            gauge,
            route,
            listener,
            service,
        })
    }
}
impl Metrics {
    /// Builds the registry and every child the config implies. An error means a metric
    /// definition in this file is invalid (a bad name, a label count that does not
    /// match), never the config's contents: label *values* are never rejected.
    ///
    /// # Errors
    ///
    /// A metric definition in this file is invalid; never the config's fault.
    pub fn try_new(cfg: &Config) -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let f = Families::register(&registry)?;
        let sink = Sink::new()?;

        let route = |l: &str, s: &str, p: &str, ws: bool| -> prometheus::Result<RouteMetrics> {
            Ok(RouteMetrics {
                codes: table(CODE_CLASSES, |c| {
                    f.requests.get_metric_with_label_values(&[l, s, p, c])
                })?,
                duration: f.duration.get_metric_with_label_values(&[l, s, p])?,
                websockets: if ws {
                    f.websockets.get_metric_with_label_values(&[l, s, p])?
                } else {
                    sink.gauge.clone()
                },
            })
        };

        let mut routes = Vec::with_capacity(cfg.listeners.len());
        let mut unrouted = Vec::with_capacity(cfg.listeners.len());
        let mut listeners = Vec::with_capacity(cfg.listeners.len());
        for l in &cfg.listeners {
            let l = l.name.as_str();
            let mut by_service = Vec::with_capacity(cfg.services.len());
            for s in &cfg.services {
                let by_pool = s
                    .pools
                    .iter()
                    .map(|p| route(l, &s.name, &p.name, true))
                    .collect::<prometheus::Result<Vec<_>>>()?;
                by_service.push(by_pool);
            }
            routes.push(by_service);
            unrouted.push(route(l, UNROUTED, UNROUTED, false)?);
            listeners.push(ListenerMetrics {
                connections: f.connections.get_metric_with_label_values(&[l])?,
                rejected: f.rejected.get_metric_with_label_values(&[l])?,
                send_timeouts: f.send_timeouts.get_metric_with_label_values(&[l])?,
            });
        }

        let mut services = Vec::with_capacity(cfg.services.len());
        for s in &cfg.services {
            let name = s.name.as_str();
            let mut fallbacks = Vec::with_capacity(cfg.pool_names.len());
            for (id, from) in cfg.pool_names.iter().map(String::as_str).enumerate() {
                fallbacks.push(if id == STABLE {
                    std::array::from_fn(|_| sink.counter.clone())
                } else {
                    table(FallbackReason::ALL, |r| {
                        f.fallbacks
                            .get_metric_with_label_values(&[name, from, "stable", r.label()])
                    })?
                });
            }
            let mut upstream_errors = Vec::with_capacity(s.pools.len());
            let mut retries = Vec::with_capacity(s.pools.len());
            let mut rehomed = Vec::with_capacity(s.pools.len());
            let mut shadow_moves = Vec::with_capacity(s.pools.len());
            for (i, p) in s.pools.iter().enumerate() {
                let pool = p.name.as_str();
                upstream_errors.push(table(UpstreamErrorKind::ALL, |k| {
                    f.upstream_errors
                        .get_metric_with_label_values(&[name, pool, k.label()])
                })?);
                retries.push(f.retries.get_metric_with_label_values(&[name, pool])?);
                let pair_row = |family: &prometheus::IntCounterVec| {
                    s.pools
                        .iter()
                        .enumerate()
                        .map(|(j, to)| {
                            if i == j {
                                Ok(sink.counter.clone())
                            } else {
                                family.get_metric_with_label_values(&[name, pool, to.name.as_str()])
                            }
                        })
                        .collect::<prometheus::Result<Vec<_>>>()
                };
                rehomed.push(pair_row(&f.rehomed)?);
                shadow_moves.push(pair_row(&f.shadow_moves)?);
            }
            services.push(ServiceMetrics {
                fallbacks,
                upstream_errors,
                retries,
                rehomed,
                shadow_moves,
                mirror: table(MirrorResult::ALL, |r| {
                    f.mirror.get_metric_with_label_values(&[name, r.label()])
                })?,
                gray_tripped: f.gray_tripped.get_metric_with_label_values(&[name])?,
                sink: sink.counter.clone(),
            });
        }

        let marker_invalid = table(MarkerKind::ALL, |k| {
            f.marker_invalid.get_metric_with_label_values(&[k.name()])
        })?;
        let reloads = table(ReloadResult::ALL, |r| {
            f.reloads.get_metric_with_label_values(&[r.label()])
        })?;

        Ok(Metrics {
            registry,
            routes,
            unrouted,
            listeners,
            services,
            endpoint_up: f.endpoint_up,
            marker_invalid,
            reloads,
            rule_hits: f.rule_hits,
            shadow_hits: f.shadow_hits,
            rules_info: f.rules_info,
            rules_info_live: Mutex::new(None),
            rule_percent: f.rule_percent,
            rule_expired: f.rule_expired,
            rule_state_names: Mutex::new(Vec::new()),
            rules_loaded: f.rules_loaded,
            sink,
        })
    }

    /// The children a routed request touches; `pool` indexes `service.pools`.
    pub fn route(&self, listener: usize, service: usize, pool: usize) -> &RouteMetrics {
        self.routes
            .get(listener)
            .and_then(|s| s.get(service))
            .and_then(|p| p.get(pool))
            .unwrap_or(&self.sink.route)
    }

    /// Requests no service matched (the 404 of SPEC §3), counted with
    /// `service="-"`, `pool="-"` so the 404 rate shows next to the routed traffic.
    /// Its `websockets()` gauge is unregistered: no tunnel opens without a service.
    pub fn unrouted(&self, listener: usize) -> &RouteMetrics {
        self.unrouted.get(listener).unwrap_or(&self.sink.route)
    }

    /// The accept loop's gauges for one listener.
    pub fn listener(&self, listener: usize) -> &ListenerMetrics {
        self.listeners.get(listener).unwrap_or(&self.sink.listener)
    }

    /// Per-service children: fallbacks, upstream errors, retries, guard, re-homes.
    pub fn service(&self, service: usize) -> &ServiceMetrics {
        self.services.get(service).unwrap_or(&self.sink.service)
    }

    /// `marker_invalid_total{marker}`: a client sent a marker that does not parse, which
    /// silently routes it as if unmarked — this counter is how ops notice.
    pub fn marker_invalid(&self, kind: MarkerKind) -> &IntCounter {
        self.marker_invalid
            .get(kind as usize)
            .unwrap_or(&self.sink.counter)
    }

    /// Counts one reload attempt in `rules_reloads_total{result}`.
    pub fn reload_result(&self, r: ReloadResult) {
        if let Some(c) = self.reloads.get(r.index()) {
            c.inc();
        }
    }

    /// Children of `rule_hits_total{rule}` for a ruleset being compiled: one per entry
    /// of `names`, in order, then one more for `rule="default"`. A rule that keeps its
    /// name across reloads keeps counting on the same series.
    ///
    /// Series of rules that disappear are kept: the live ruleset still holds its handles
    /// until the new one is stored, and removing them here would silently stop counting
    /// if the reload then failed.
    pub fn rule_hits(&self, names: &[&str]) -> Vec<IntCounter> {
        self.hits_of(&self.rule_hits, names)
    }

    /// Children of `shadow_rule_hits_total{rule}` for a candidate ruleset, as
    /// [`Metrics::rule_hits`] makes them for the live one.
    pub(crate) fn shadow_rule_hits(&self, names: &[&str]) -> Vec<IntCounter> {
        self.hits_of(&self.shadow_hits, names)
    }

    fn hits_of(&self, family: &IntCounterVec, names: &[&str]) -> Vec<IntCounter> {
        names
            .iter()
            .copied()
            .chain(std::iter::once("default"))
            .map(|n| match family.get_metric_with_label_values(&[n]) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(rule = n, error = %e, "rule hits child");
                    self.sink.counter.clone()
                }
            })
            .collect()
    }

    /// Marks the ruleset just stored as live: `rules_info{version,sha256} 1` for it alone
    /// (the previous ruleset's series is removed, so queries joining on `rules_info`
    /// name the ruleset that is actually routing) and `rules_loaded_timestamp_seconds`. A missing `version` is the empty label
    /// value, which Prometheus treats as an absent label.
    pub fn set_rules_info(&self, version: Option<&str>, sha256: &str, loaded_at_unix_secs: f64) {
        let new = [version.unwrap_or("").to_owned(), sha256.to_owned()];
        // A poisoned lock only means another reload panicked mid-update; the label
        // values it guards are still whole strings, so carry on with them.
        let mut live = self
            .rules_info_live
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Set the new series before removing the old one, so a scrape in between sees
        // two series rather than none.
        match self
            .rules_info
            .get_metric_with_label_values(&[&new[0], &new[1]])
        {
            Ok(g) => g.set(1),
            Err(e) => tracing::error!(error = %e, "rules_info child"),
        }
        if let Some(old) = live.take() {
            if old != new {
                if let Err(e) = self.rules_info.remove_label_values(&[&old[0], &old[1]]) {
                    tracing::warn!(error = %e, "removing the previous rules_info series");
                }
            }
        }
        *live = Some(new);
        self.rules_loaded.set(loaded_at_unix_secs);
    }

    /// Sets `rule_percent{rule}` (the share in force, 0–100) and `rule_expired{rule}`
    /// for the live rules, and removes the series of rules no longer in them. New values
    /// are set before stale series go, so a scrape never sees a rule without its series.
    pub(crate) fn set_rule_states(&self, percents: &[(&str, f64)], expiring: &[(&str, bool)]) {
        for (rule, p) in percents {
            match self.rule_percent.get_metric_with_label_values(&[rule]) {
                Ok(g) => g.set(*p),
                Err(e) => tracing::error!(rule, error = %e, "rule_percent child"),
            }
        }
        for (rule, expired) in expiring {
            match self.rule_expired.get_metric_with_label_values(&[rule]) {
                Ok(g) => g.set(i64::from(*expired)),
                Err(e) => tracing::error!(rule, error = %e, "rule_expired child"),
            }
        }
        let mut names = self
            .rule_state_names
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for old in names.iter() {
            if !percents.iter().any(|(r, _)| r == old) {
                let _ = self.rule_percent.remove_label_values(&[old]);
            }
            if !expiring.iter().any(|(r, _)| r == old) {
                let _ = self.rule_expired.remove_label_values(&[old]);
            }
        }
        *names = percents
            .iter()
            .map(|(r, _)| *r)
            .chain(expiring.iter().map(|(r, _)| *r))
            .map(str::to_owned)
            .collect();
    }

    /// Makes and removes `endpoint_up{service,pool,endpoint}` gauges for one pool, as
    /// DNS brings endpoints (labelled `ip:port`) and takes them away.
    pub fn endpoint_gauges(&self, service: &str, pool: &str) -> EndpointGauges {
        let (fam, s, p) = (
            self.endpoint_up.clone(),
            service.to_owned(),
            pool.to_owned(),
        );
        let sink = self.sink.gauge.clone();
        let make = {
            let (fam, s, p) = (fam.clone(), s.clone(), p.clone());
            move |ep: &str| {
                fam.get_metric_with_label_values(&[&s, &p, ep])
                    .unwrap_or_else(|_| sink.clone())
            }
        };
        let remove = move |ep: &str| {
            let _ = fam.remove_label_values(&[&s, &p, ep]);
        };
        EndpointGauges {
            make: std::sync::Arc::new(make),
            remove: std::sync::Arc::new(remove),
        }
    }

    /// The registry in Prometheus text exposition format 0.0.4.
    pub fn encode(&self) -> String {
        let mut buf = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        buf
    }
}

// === EndpointGauges ===

/// How `endpoint_up` children are made and dropped: the metrics module owns the registry
/// and the `service`/`pool` labels; `upstream` only knows endpoint labels, which change
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

#[cfg(test)]
mod tests {
    use super::children::{code_index, kind_index, reason_index};
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    /// Listeners `im` and `console`; `chat` (stable, gray) and `static` (stable, canary).
    fn yaml() -> String {
        crate::testing::MIN_CONFIG.replace(
            "rules_file:",
            "  - name: console\n    bind: \"127.0.0.1:0\"\nrules_file:",
        ) + "  - name: static\n    match: { path_prefix: / }\n    pools:\n      stable: { endpoints: [\"static-stable.kefu.svc:80\"] }\n      canary: { endpoints: [\"static-canary.kefu.svc:80\"] }\n"
    }

    fn setup() -> (Config, Metrics) {
        let cfg = Config::from_str(&yaml(), "g.yaml", Path::new(".")).unwrap();
        let m = Metrics::try_new(&cfg).unwrap();
        (cfg, m)
    }

    fn pool(cfg: &Config, service: usize, name: &str) -> usize {
        cfg.services[service]
            .pools
            .iter()
            .position(|p| p.name == name)
            .unwrap()
    }

    fn has(out: &str, lines: &[&str]) {
        for line in lines {
            assert!(
                out.lines().any(|l| l == *line),
                "missing line {line:?} in:\n{out}"
            );
        }
    }

    fn lacks(out: &str, needle: &str) {
        assert!(!out.contains(needle), "unexpected {needle:?} in:\n{out}");
    }

    #[test]
    fn is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Metrics>();
    }

    #[test]
    fn requests_by_route_and_class() {
        let (cfg, m) = setup();
        let gray = pool(&cfg, 0, "gray");
        let r = m.route(0, 0, gray);
        r.observe(200, Duration::from_millis(3));
        r.observe(101, Duration::from_millis(1));
        r.observe(503, Duration::from_millis(40));
        r.observe(999, Duration::from_millis(40));
        m.unrouted(1).observe(404, Duration::from_micros(100));
        let out = m.encode();
        has(
            &out,
            &[
                r#"graylane_requests_total{code="2xx",listener="im",pool="gray",service="chat"} 1"#,
                r#"graylane_requests_total{code="1xx",listener="im",pool="gray",service="chat"} 1"#,
                r#"graylane_requests_total{code="5xx",listener="im",pool="gray",service="chat"} 2"#,
                // every known route starts at zero
                r#"graylane_requests_total{code="2xx",listener="console",pool="canary",service="static"} 0"#,
                r#"graylane_requests_total{code="4xx",listener="console",pool="-",service="-"} 1"#,
                r#"graylane_request_duration_seconds_bucket{listener="im",pool="gray",service="chat",le="0.005"} 2"#,
                r#"graylane_request_duration_seconds_count{listener="im",pool="gray",service="chat"} 4"#,
                "# TYPE graylane_request_duration_seconds histogram",
            ],
        );
        // unrouted requests never open a tunnel: no websocket series for "-"
        lacks(
            &out,
            r#"graylane_websocket_connections{listener="console",pool="-""#,
        );
    }

    #[test]
    fn gauges_and_per_service_counters() {
        let (cfg, m) = setup();
        let gray = pool(&cfg, 0, "gray");
        let stable = pool(&cfg, 0, "stable");
        m.route(0, 0, gray).websockets().inc();
        m.listener(1).connections.set(3);
        m.listener(1).rejected.inc();
        let chat = m.service(0);
        chat.fallback(crate::config::GRAY, FallbackReason::GuardTripped)
            .inc();
        chat.upstream_error(gray, UpstreamErrorKind::Reset).inc();
        chat.retries(gray).inc();
        chat.gray_tripped().set(1);
        chat.rehomed(gray, stable).inc();
        // static has no gray pool: a rule choosing gray falls back with pool_missing
        m.service(1)
            .fallback(crate::config::GRAY, FallbackReason::PoolMissing)
            .inc();
        let g = m.endpoint_gauges("chat", "stable");
        (g.make)("10.1.0.11:8000").set(1);
        (g.make)("10.1.0.12:8000").set(0);
        (m.endpoint_gauges("static", "canary").make)("10.3.0.1:80").set(1);
        (g.make)("10.1.0.99:8000").set(1);
        (g.remove)("10.1.0.99:8000");

        let out = m.encode();
        for line in [
            r#"graylane_websocket_connections{listener="im",pool="gray",service="chat"} 1"#,
            r#"graylane_connections{listener="console"} 3"#,
            r#"graylane_connections_rejected_total{listener="console"} 1"#,
            r#"graylane_connections_rejected_total{listener="im"} 0"#,
            r#"graylane_fallbacks_total{from="gray",reason="guard_tripped",service="chat",to="stable"} 1"#,
            r#"graylane_fallbacks_total{from="gray",reason="pool_missing",service="static",to="stable"} 1"#,
            r#"graylane_fallbacks_total{from="canary",reason="pool_unhealthy",service="chat",to="stable"} 0"#,
            r#"graylane_upstream_errors_total{kind="reset",pool="gray",service="chat"} 1"#,
            r#"graylane_upstream_errors_total{kind="protocol",pool="stable",service="static"} 0"#,
            r#"graylane_upstream_retries_total{pool="gray",service="chat"} 1"#,
            r#"graylane_gray_tripped{service="chat"} 1"#,
            r#"graylane_gray_tripped{service="static"} 0"#,
            r#"graylane_long_links_rehomed_total{from="gray",service="chat",to="stable"} 1"#,
            r#"graylane_long_links_rehomed_total{from="stable",service="chat",to="gray"} 0"#,
            r#"graylane_endpoint_up{endpoint="10.1.0.11:8000",pool="stable",service="chat"} 1"#,
            r#"graylane_endpoint_up{endpoint="10.1.0.12:8000",pool="stable",service="chat"} 0"#,
            r#"graylane_endpoint_up{endpoint="10.3.0.1:80",pool="canary",service="static"} 1"#,
        ] {
            has(&out, &[line]);
        }
        // stable never falls back and a pool never re-homes into itself
        lacks(&out, r#"from="stable",reason="#);
        lacks(
            &out,
            r#"graylane_long_links_rehomed_total{from="gray",service="chat",to="gray"}"#,
        );
    }

    #[test]
    fn out_of_range_lands_in_the_sink() {
        let (_, m) = setup();
        let before = m.encode();
        m.route(9, 0, 0).observe(200, Duration::ZERO);
        m.route(0, 9, 0).websockets().inc();
        m.route(0, 0, 9).observe(200, Duration::ZERO);
        m.unrouted(9).observe(404, Duration::ZERO);
        m.listener(9).rejected.inc();
        m.service(9).retries(0).inc();
        m.service(0).retries(9).inc();
        m.service(0).fallback(9, FallbackReason::PoolMissing).inc();
        m.service(0)
            .fallback(STABLE, FallbackReason::PoolUnhealthy)
            .inc();
        m.service(0)
            .upstream_error(9, UpstreamErrorKind::Connect)
            .inc();
        m.service(0).rehomed(0, 9).inc();
        assert_eq!(before, m.encode());
        lacks(&before, "sink");
    }

    #[test]
    fn markers_and_reloads() {
        let (_, m) = setup();
        m.marker_invalid(MarkerKind::AppVersion).inc();
        m.reload_result(ReloadResult::Error);
        m.reload_result(ReloadResult::Ok);
        m.reload_result(ReloadResult::Ok);
        let out = m.encode();
        has(
            &out,
            &[r#"graylane_marker_invalid_total{marker="app_version"} 1"#],
        );
        for k in MarkerKind::ALL {
            assert!(
                out.contains(&format!(
                    "graylane_marker_invalid_total{{marker=\"{}\"}}",
                    k.name()
                )),
                "{}",
                k.name()
            );
        }
        has(
            &out,
            &[
                r#"graylane_rules_reloads_total{result="ok"} 2"#,
                r#"graylane_rules_reloads_total{result="error"} 1"#,
                r#"graylane_rules_reloads_total{result="unchanged"} 0"#,
            ],
        );
    }

    #[test]
    fn rule_hits_end_with_default() {
        let (_, m) = setup();
        let hits = m.rule_hits(&["vip", "beta-staff"]);
        assert_eq!(hits.len(), 3);
        hits[0].inc();
        hits[2].inc_by(5);
        // same name on the next ruleset: same series
        let again = m.rule_hits(&["vip"]);
        again[0].inc();
        let out = m.encode();
        has(
            &out,
            &[
                r#"graylane_rule_hits_total{rule="vip"} 2"#,
                r#"graylane_rule_hits_total{rule="beta-staff"} 0"#,
                r#"graylane_rule_hits_total{rule="default"} 5"#,
            ],
        );
    }

    #[test]
    fn rules_info_keeps_only_the_live_series() {
        let (_, m) = setup();
        let out = m.encode();
        lacks(&out, "graylane_rules_info{");
        m.set_rules_info(Some("2024-05-01"), "aaaa", 1_700_000_000.0);
        m.set_rules_info(Some("2024-05-01"), "aaaa", 1_700_000_001.0);
        let out = m.encode();
        has(
            &out,
            &[
                r#"graylane_rules_info{sha256="aaaa",version="2024-05-01"} 1"#,
                "graylane_rules_loaded_timestamp_seconds 1700000001",
            ],
        );
        m.set_rules_info(None, "bbbb", 1_700_000_100.5);
        let out = m.encode();
        has(
            &out,
            &[r#"graylane_rules_info{sha256="bbbb",version=""} 1"#],
        );
        lacks(&out, "aaaa");
        has(
            &out,
            &["graylane_rules_loaded_timestamp_seconds 1700000100.5"],
        );
        assert_eq!(out.matches("graylane_rules_info{").count(), 1);
    }

    #[test]
    fn label_indices_follow_all() {
        for (i, r) in FallbackReason::ALL.into_iter().enumerate() {
            assert_eq!(reason_index(r), i);
        }
        for (i, k) in UpstreamErrorKind::ALL.into_iter().enumerate() {
            assert_eq!(kind_index(k), i);
        }
        for (i, r) in ReloadResult::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        for (i, k) in MarkerKind::ALL.into_iter().enumerate() {
            assert_eq!(k as usize, i);
        }
        assert_eq!(code_index(100), 0);
        assert_eq!(code_index(299), 1);
        assert_eq!(code_index(304), 2);
        assert_eq!(code_index(451), 3);
        assert_eq!(code_index(599), 4);
    }

    #[test]
    fn every_family_is_exported() {
        let (_, m) = setup();
        m.set_rules_info(None, "x", 0.0);
        m.rule_hits(&[]);
        // Endpoint gauges exist once the balancer has resolved its endpoints.
        (m.endpoint_gauges("chat", "stable").make)("10.1.0.11:8000").set(1);
        let out = m.encode();
        for name in [
            "requests_total",
            "rule_hits_total",
            "upstream_errors_total",
            "fallbacks_total",
            "marker_invalid_total",
            "rules_reloads_total",
            "connections_rejected_total",
            "long_links_rehomed_total",
            "upstream_retries_total",
            "request_duration_seconds",
            "websocket_connections",
            "connections",
            "endpoint_up",
            "gray_tripped",
            "rules_info",
            "rules_loaded_timestamp_seconds",
        ] {
            assert!(out.contains(&format!("# TYPE graylane_{name} ")), "{name}");
        }
    }
}
