//! `GET /status`: what the status page draws (SPEC §10), and the memory behind its charts.
//!
//! The request path keeps no history of its own: a sampler on the admin listener reads the
//! metric counters every [`SAMPLE_EVERY`] into a ring of fixed length, and `/status`
//! subtracts one sample from the next. Reading counters costs the request path nothing,
//! and the ring cannot grow however long the process runs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{json, Value};

use crate::config::STABLE;
use crate::metrics::{MirrorResult, RouteCounts, DURATION_BUCKETS};
use crate::state::Shared;
use crate::unix_ms;

use super::guard;
use super::rules::{rules_json, shadow_json};

/// How often the sampler reads the counters: one chart point.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// What the charts span.
const SPAN: Duration = Duration::from_secs(15 * 60);

/// Samples kept: enough for [`SPAN`] of points, plus the one the first point starts from.
const RING: usize = (SPAN.as_secs() / SAMPLE_EVERY.as_secs()) as usize + 1;

/// What the numbers beside the charts cover: recent enough to show a change within a
/// refresh or two, long enough not to jump with every request.
const RECENT: Duration = Duration::from_secs(60);

// === Sample ===

/// Every counter the page reads, at one moment.
#[derive(Debug)]
struct Sample {
    at_ms: u64,
    /// Per service, per pool, per listener.
    routes: Vec<Vec<Vec<RouteCounts>>>,
    /// Each rule of the live ruleset then `default`, with its hits.
    rules: Vec<(String, u64)>,
}

impl Sample {
    fn take(shared: &Shared, at: SystemTime) -> Sample {
        let cfg = &shared.config;
        let routes = (0..cfg.services.len())
            .map(|s| {
                (0..cfg.services[s].pools.len())
                    .map(|p| {
                        (0..cfg.listeners.len())
                            .map(|l| shared.metrics.route(l, s, p).counts())
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let live = shared.live.load();
        let names = live.rules.rule_names().chain(std::iter::once("default"));
        let rules = names
            .zip(&live.hits)
            .map(|(n, c)| (n.to_owned(), c.get()))
            .collect();
        Sample {
            at_ms: unix_ms(at),
            routes,
            rules,
        }
    }

    fn route(&self, s: usize, p: usize, l: usize) -> RouteCounts {
        self.routes
            .get(s)
            .and_then(|r| r.get(p))
            .and_then(|r| r.get(l))
            .copied()
            .unwrap_or_default()
    }

    /// One pool's counts summed over the listeners.
    fn pool(&self, s: usize, p: usize) -> RouteCounts {
        let mut sum = RouteCounts::default();
        for c in self
            .routes
            .get(s)
            .and_then(|r| r.get(p))
            .into_iter()
            .flatten()
        {
            for (a, b) in sum.codes.iter_mut().zip(c.codes) {
                *a += b;
            }
            for (a, b) in sum.buckets.iter_mut().zip(c.buckets) {
                *a += b;
            }
            sum.websockets += c.websockets;
        }
        sum
    }

    fn rule_hits(&self, name: &str) -> u64 {
        self.rules
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, h)| *h)
    }
}

/// What happened on one route between two samples.
#[derive(Debug, Clone, Copy, Default)]
struct Delta {
    requests: u64,
    errors: u64,
    buckets: [u64; DURATION_BUCKETS.len()],
}

impl Delta {
    fn between(old: &RouteCounts, new: &RouteCounts) -> Delta {
        let total = |c: &RouteCounts| c.codes.iter().sum::<u64>();
        let mut buckets = [0; DURATION_BUCKETS.len()];
        for ((d, o), n) in buckets.iter_mut().zip(old.buckets).zip(new.buckets) {
            *d = n.saturating_sub(o);
        }
        Delta {
            requests: total(new).saturating_sub(total(old)),
            errors: new.codes[4].saturating_sub(old.codes[4]),
            buckets,
        }
    }

    fn error_share(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }

    /// The 95th percentile in ms, interpolated inside its bucket as Prometheus'
    /// `histogram_quantile` does, so the page and a dashboard agree.
    fn p95_ms(&self) -> Option<f64> {
        quantile_ms(&self.buckets, self.requests, 0.95)
    }
}

/// The `q` quantile of a cumulative histogram over [`DURATION_BUCKETS`], in ms; `None`
/// without observations. Beyond the last bound the answer is that bound.
fn quantile_ms(cumulative: &[u64], count: u64, q: f64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut lower_bound = 0.0;
    let mut lower_count = 0u64;
    for (bound, &c) in DURATION_BUCKETS.iter().zip(cumulative) {
        if c as f64 >= rank {
            let in_bucket = c.saturating_sub(lower_count) as f64;
            let frac = if in_bucket > 0.0 {
                (rank - lower_count as f64) / in_bucket
            } else {
                1.0
            };
            return Some((lower_bound + (bound - lower_bound) * frac) * 1000.0);
        }
        lower_bound = *bound;
        lower_count = c;
    }
    DURATION_BUCKETS.last().map(|b| b * 1000.0)
}

// === History ===

/// The ring the sampler fills: at most [`RING`] samples, oldest first.
#[derive(Debug, Default)]
pub(crate) struct History {
    /// Taken by the sampler every [`SAMPLE_EVERY`] and by `/status`; never by a request.
    ring: Mutex<VecDeque<Arc<Sample>>>,
}

impl History {
    pub(crate) fn new() -> History {
        History {
            ring: Mutex::new(VecDeque::with_capacity(RING)),
        }
    }

    /// Reads the counters now and keeps them, dropping the oldest sample when full.
    pub(crate) fn sample(&self, shared: &Shared) {
        let s = Arc::new(Sample::take(shared, SystemTime::now()));
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() >= RING {
            ring.pop_front();
        }
        ring.push_back(s);
    }

    fn snapshot(&self) -> Vec<Arc<Sample>> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().cloned().collect()
    }

    /// Samples kept now (for tests of the bound).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.ring.lock().map(|r| r.len()).unwrap_or(0)
    }
}

/// Samples every [`SAMPLE_EVERY`] until dropped (the admin listener aborts it).
pub(crate) async fn sampler(shared: Arc<Shared>, history: Arc<History>) {
    let mut tick = crate::timer::interval(SAMPLE_EVERY);
    // The first tick is immediate; the admin listener took that sample as it started.
    tick.tick().await;
    loop {
        tick.tick().await;
        history.sample(&shared);
    }
}

// === The document ===

/// The `/status` body; the page is drawn from exactly this.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    pub(crate) generated_at: String,
    /// Seconds the "recent" numbers cover: [`RECENT`], or less while the process is young.
    pub(crate) recent_seconds: u64,
    pub(crate) sample_every_seconds: u64,
    /// The `/rules` body.
    pub(crate) rules: Value,
    pub(crate) rule_hits: Vec<RuleHits>,
    pub(crate) services: Vec<ServiceStatus>,
    /// The `/shadow` body, or null without `shadow_rules_file`.
    pub(crate) shadow: Option<Value>,
}

#[derive(Debug, Serialize)]
pub(crate) struct RuleHits {
    pub(crate) rule: String,
    pub(crate) route: String,
    /// The rule's `percent` now (a ramp's current step), if it has one.
    pub(crate) percent_now: Option<f64>,
    pub(crate) requests: u64,
    /// Its part of all decisions in the recent window.
    pub(crate) share: Option<f64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ServiceStatus {
    pub(crate) name: String,
    /// Recent requests answered by a pool other than stable, over all answered.
    pub(crate) gray_share: Option<f64>,
    pub(crate) requests: u64,
    pub(crate) listeners: Vec<ListenerShare>,
    pub(crate) pools: Vec<PoolStatus>,
    /// The `/guard` body, or null without `guard:`.
    pub(crate) guard: Option<Value>,
    /// `mirror_requests_total` by result since start, or null without `mirror:`.
    pub(crate) mirror: Option<Value>,
    pub(crate) history: Series,
}

#[derive(Debug, Serialize)]
pub(crate) struct ListenerShare {
    pub(crate) listener: String,
    pub(crate) requests: u64,
    pub(crate) gray_share: Option<f64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct PoolStatus {
    pub(crate) name: String,
    pub(crate) requests: u64,
    pub(crate) error_share: Option<f64>,
    pub(crate) p95_ms: Option<f64>,
    pub(crate) long_links: i64,
    pub(crate) endpoints_up: usize,
    pub(crate) endpoints_down: usize,
    pub(crate) endpoints: Vec<EndpointStatus>,
}

#[derive(Debug, Serialize)]
pub(crate) struct EndpointStatus {
    pub(crate) endpoint: String,
    pub(crate) up: bool,
}

/// One service's chart data, column by column: `at[i]` is the end of point `i`'s interval
/// (Unix seconds); `null` where the interval had no requests.
#[derive(Debug, Serialize)]
pub(crate) struct Series {
    pub(crate) at: Vec<u64>,
    pub(crate) gray_share: Vec<Option<f64>>,
    pub(crate) pools: Vec<PoolSeries>,
}

#[derive(Debug, Serialize)]
pub(crate) struct PoolSeries {
    pub(crate) name: String,
    pub(crate) error_share: Vec<Option<f64>>,
    pub(crate) p95_ms: Vec<Option<f64>>,
    pub(crate) long_links: Vec<Option<f64>>,
}

/// Builds the document from the ring and the counters as they are now.
pub(crate) fn status(shared: &Shared, history: &History) -> Status {
    let now_at = SystemTime::now();
    let now = Sample::take(shared, now_at);
    let mut samples = history.snapshot();
    let recent_from = now.at_ms.saturating_sub(crate::millis(RECENT));
    let base = samples
        .iter()
        .rev()
        .find(|s| s.at_ms <= recent_from)
        .or_else(|| samples.first())
        .cloned();
    // The counters since the last sample make the newest point, so a change shows on the
    // next refresh rather than up to a sample later.
    let now = Arc::new(now);
    samples.push(now.clone());
    let base = base.unwrap_or_else(|| now.clone());
    let services = (0..shared.config.services.len())
        .map(|s| service(shared, s, &base, &now, &samples))
        .collect();
    Status {
        generated_at: humantime::format_rfc3339_seconds(now_at).to_string(),
        recent_seconds: now.at_ms.saturating_sub(base.at_ms) / 1000,
        sample_every_seconds: SAMPLE_EVERY.as_secs(),
        rules: rules_json(shared),
        rule_hits: rule_hits(shared, &base, &now),
        services,
        shadow: shadow_json(shared),
    }
}

fn rule_hits(shared: &Shared, base: &Sample, now: &Sample) -> Vec<RuleHits> {
    let live = shared.live.load();
    let at = now.at_ms;
    let percents: Vec<(&str, f64)> = live
        .rules
        .percents()
        .map(|p| (p.rule, p.share.percent_at(at).0))
        .collect();
    let pools = &shared.config.pool_names;
    let routes = live.rules.routes().map(|(n, pool)| {
        let route = pools.get(pool).map_or("?", String::as_str);
        (n, route)
    });
    let mut out: Vec<RuleHits> = routes
        .chain(std::iter::once(("default", "stable")))
        .map(|(name, route)| RuleHits {
            rule: name.to_owned(),
            route: route.to_owned(),
            percent_now: percents.iter().find(|(n, _)| *n == name).map(|p| p.1),
            requests: now.rule_hits(name).saturating_sub(base.rule_hits(name)),
            share: None,
        })
        .collect();
    let total: u64 = out.iter().map(|r| r.requests).sum();
    for r in &mut out {
        r.share = (total > 0).then(|| r.requests as f64 / total as f64);
    }
    out
}

fn service(
    shared: &Shared,
    s: usize,
    base: &Sample,
    now: &Sample,
    samples: &[Arc<Sample>],
) -> ServiceStatus {
    let cfg = &shared.config;
    let svc = &cfg.services[s];
    let gray_of = |requests: &dyn Fn(usize) -> u64| {
        let (mut all, mut gray) = (0, 0);
        for (p, pool) in svc.pools.iter().enumerate() {
            let n = requests(p);
            all += n;
            if pool.id != STABLE {
                gray += n;
            }
        }
        (all, (all > 0).then(|| gray as f64 / all as f64))
    };
    let listeners = cfg
        .listeners
        .iter()
        .enumerate()
        .map(|(l, lis)| {
            let (requests, gray_share) =
                gray_of(&|p| Delta::between(&base.route(s, p, l), &now.route(s, p, l)).requests);
            ListenerShare {
                listener: lis.name.clone(),
                requests,
                gray_share,
            }
        })
        .collect();
    let (requests, gray_share) =
        gray_of(&|p| Delta::between(&base.pool(s, p), &now.pool(s, p)).requests);
    let pools = svc
        .pools
        .iter()
        .enumerate()
        .map(|(p, pool)| {
            let d = Delta::between(&base.pool(s, p), &now.pool(s, p));
            let eps = shared
                .upstreams
                .services
                .get(s)
                .and_then(|ps| ps.get(p))
                .map(|u| u.endpoints.endpoints())
                .unwrap_or_default();
            let endpoints: Vec<EndpointStatus> = eps
                .iter()
                .map(|e| EndpointStatus {
                    endpoint: e.label().to_owned(),
                    up: e.available(),
                })
                .collect();
            let up = endpoints.iter().filter(|e| e.up).count();
            PoolStatus {
                name: pool.name.clone(),
                requests: d.requests,
                error_share: d.error_share(),
                p95_ms: d.p95_ms(),
                long_links: now.pool(s, p).websockets,
                endpoints_up: up,
                endpoints_down: endpoints.len() - up,
                endpoints,
            }
        })
        .collect();
    let guard = shared
        .guards
        .get(s)
        .and_then(Option::as_ref)
        .map(|g| guard::status(&svc.name, g));
    let mirror = svc.mirror.as_ref().map(|_| {
        let m = shared.metrics.service(s);
        let mut o = serde_json::Map::new();
        for r in MirrorResult::ALL {
            o.insert(r.label().to_owned(), json!(m.mirror(r).get()));
        }
        Value::Object(o)
    });
    ServiceStatus {
        name: svc.name.clone(),
        gray_share,
        requests,
        listeners,
        pools,
        guard,
        mirror,
        history: series(shared, s, samples),
    }
}

fn series(shared: &Shared, s: usize, samples: &[Arc<Sample>]) -> Series {
    let svc = &shared.config.services[s];
    let mut out = Series {
        at: Vec::with_capacity(samples.len()),
        gray_share: Vec::with_capacity(samples.len()),
        pools: svc
            .pools
            .iter()
            .map(|p| PoolSeries {
                name: p.name.clone(),
                error_share: Vec::with_capacity(samples.len()),
                p95_ms: Vec::with_capacity(samples.len()),
                long_links: Vec::with_capacity(samples.len()),
            })
            .collect(),
    };
    for pair in samples.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        out.at.push(new.at_ms / 1000);
        let (mut all, mut gray) = (0, 0);
        for (p, (pool, ps)) in svc.pools.iter().zip(&mut out.pools).enumerate() {
            let now = new.pool(s, p);
            let d = Delta::between(&old.pool(s, p), &now);
            all += d.requests;
            if pool.id != STABLE {
                gray += d.requests;
            }
            ps.error_share.push(d.error_share());
            ps.p95_ms.push(d.p95_ms());
            ps.long_links.push(Some(now.websockets as f64));
        }
        out.gray_share
            .push((all > 0).then(|| gray as f64 / all as f64));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cumulative(per_bucket: &[(usize, u64)]) -> ([u64; DURATION_BUCKETS.len()], u64) {
        let mut b = [0u64; DURATION_BUCKETS.len()];
        for &(i, n) in per_bucket {
            for x in b.iter_mut().skip(i) {
                *x += n;
            }
        }
        let total = b.last().copied().unwrap_or(0);
        (b, total)
    }

    #[test]
    fn p95_interpolates_inside_its_bucket() {
        // 100 requests, all in (5 ms, 10 ms]: p95 = 5 + 5 × 0.95 ms.
        let (b, n) = cumulative(&[(4, 100)]);
        let p = quantile_ms(&b, n, 0.95).unwrap_or_default();
        assert!((p - 9.75).abs() < 1e-9, "{p}");
        // 90 fast, 10 in (100, 250] ms: rank 95 is half-way through the slow bucket.
        let (b, n) = cumulative(&[(0, 90), (8, 10)]);
        let p = quantile_ms(&b, n, 0.95).unwrap_or_default();
        assert!((p - 175.0).abs() < 1e-9, "{p}");
    }

    #[test]
    fn p95_without_requests_or_beyond_the_last_bound() {
        let (b, _) = cumulative(&[]);
        assert_eq!(quantile_ms(&b, 0, 0.95), None);
        // All slower than 30 s: counted in +Inf only, so the cumulative buckets stay 0.
        let b = [0u64; DURATION_BUCKETS.len()];
        assert_eq!(quantile_ms(&b, 7, 0.95), Some(30_000.0));
    }

    #[test]
    fn deltas_count_5xx_as_errors() {
        let old = RouteCounts {
            codes: [0, 10, 0, 1, 2],
            ..RouteCounts::default()
        };
        let new = RouteCounts {
            codes: [0, 30, 0, 6, 4],
            ..RouteCounts::default()
        };
        let d = Delta::between(&old, &new);
        assert_eq!((d.requests, d.errors), (27, 2));
        assert_eq!(d.error_share(), Some(2.0 / 27.0));
        assert_eq!(Delta::default().error_share(), None);
    }

    #[test]
    fn the_ring_never_grows_past_its_span() {
        let shared = crate::testing::shared_with_rules("rules: []\n");
        let h = History::new();
        for _ in 0..RING * 3 {
            h.sample(&shared);
        }
        assert_eq!(h.len(), RING);
        assert_eq!(RING, 91);
    }

    #[test]
    fn a_young_process_shows_what_it_has() {
        let shared = crate::testing::shared_with_rules(
            "rules:\n  - name: ramp\n    when: { percent: { of: uid, steps: [1, 20], every: 1h, start: \"2020-01-01T00:00:00Z\" } }\n    route: gray\n",
        );
        let h = History::new();
        h.sample(&shared);
        let st = status(&shared, &h);
        assert_eq!(st.services.len(), shared.config.services.len());
        assert!(st.recent_seconds <= 1);
        let ramp = st.rule_hits.iter().find(|r| r.rule == "ramp");
        assert_eq!(ramp.and_then(|r| r.percent_now), Some(20.0));
        assert_eq!(
            st.rule_hits.last().map(|r| r.rule.as_str()),
            Some("default")
        );
    }
}
