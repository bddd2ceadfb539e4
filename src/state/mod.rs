//! What every request shares: the config, the tables built from it once at start, and the
//! [`Live`] snapshot a rules reload swaps in one store. A request takes one
//! `live.load()` at its start and sees that ruleset to its end. Also what a connection
//! knows about itself ([`ConnCtx`]) and holds while it lives ([`ConnSlot`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::header::{HeaderName, HeaderValue};
use prometheus::IntCounter;

use crate::config::{Config, OnUnavailable, GRAY};
use crate::error::FallbackReason;
use crate::fields::Fields;
use crate::guard::GuardState;
use crate::longlink::{Handshake, Links, Rehome};
use crate::markers::{MarkerReader, Markers};
use crate::metrics::Metrics;
use crate::routing::Router;
use crate::rules::{Compiled, Decision, RequestInfo, RuleSet};
use crate::unix_ms;
use crate::upstream::Upstreams;

mod history;

pub(crate) use history::{HistoryEntry, RuleHistory};

/// The hot-reloaded part: everything a rules reload changes, swapped as one.
#[derive(Debug)]
pub struct Live {
    /// The compiled rules.
    pub(crate) rules: RuleSet,
    /// `rule_hits_total` children, one per rule, then `default`; resolved at load.
    pub(crate) hits: Vec<IntCounter>,
    /// `rule_header` values, one per rule, then `default`; built at load.
    pub(crate) rule_values: Vec<HeaderValue>,
    /// Hash of the rules bytes and in_files (`/rules`, `rules_info`, `unchanged`).
    pub(crate) sha256: String,
    /// When this ruleset went live.
    pub(crate) loaded_at: SystemTime,
    /// The rules file and its in_files, for the watcher.
    pub(crate) files: Vec<PathBuf>,
    /// The candidate ruleset decided beside these rules (`shadow_rules_file`), in the same
    /// snapshot so that one request sees one pair. Shared between snapshots while the
    /// candidate does not change, so its counts run on across reloads of the live rules.
    pub(crate) shadow: Option<Arc<Shadow>>,
}

/// A candidate ruleset: decided on every request, never routing (SPEC §9.4).
#[derive(Debug)]
pub(crate) struct Shadow {
    pub(crate) rules: RuleSet,
    /// `shadow_rule_hits_total` children, one per rule, then `default`.
    pub(crate) hits: Vec<IntCounter>,
    /// Each of `hits` when this candidate was loaded: `/shadow` counts from `since`.
    pub(crate) hits_base: Vec<u64>,
    /// `shadow_moves_total` per service, `[from][to]`, when this candidate was loaded.
    pub(crate) moves_base: Vec<Vec<Vec<u64>>>,
    pub(crate) sha256: String,
    pub(crate) since: SystemTime,
    /// The candidate file and its in_files, for the watcher.
    pub(crate) files: Vec<PathBuf>,
}

impl Shadow {
    /// Wraps a compiled candidate with its metric handles and the counts it starts from.
    pub(crate) fn new(c: Compiled, metrics: &Metrics, config: &Config) -> Self {
        let names: Vec<&str> = c.rules.rule_names().collect();
        let hits = metrics.shadow_rule_hits(&names);
        let hits_base = hits.iter().map(IntCounter::get).collect();
        let moves_base = (0..config.services.len())
            .map(|s| {
                let pools = config.services[s].pools.len();
                (0..pools)
                    .map(|from| {
                        (0..pools)
                            .map(|to| metrics.service(s).shadow_move(from, to).get())
                            .collect()
                    })
                    .collect()
            })
            .collect();
        Self {
            rules: c.rules,
            hits,
            hits_base,
            moves_base,
            sha256: c.sha256,
            since: SystemTime::now(),
            files: c.files,
        }
    }
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
            shadow: None,
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
    pub(crate) config: Config,
    /// Marker extraction tables built from `markers:`.
    pub(crate) reader: MarkerReader,
    /// Pre-resolved metric children.
    pub(crate) metrics: Metrics,
    /// Pools and clients.
    pub(crate) upstreams: Upstreams,
    /// Service selection, most specific first.
    pub(crate) router: Router,
    /// The live ruleset: one `load()` per request.
    pub(crate) live: ArcSwap<Live>,
    /// Mirrored copies in flight per service, for `mirror.max_in_flight`.
    pub(crate) mirror_in_flight: Vec<AtomicUsize>,
    /// The last shadow ruleset error, for `/shadow`; cleared by a good load of it.
    pub(crate) shadow_error: ArcSwapOption<String>,
    /// The last reload error, for `/rules`; cleared by a good reload.
    pub(crate) last_error: ArcSwapOption<String>,
    /// Set on SIGTERM: `/readyz` answers 503.
    pub(crate) draining: AtomicBool,
    /// The last reload outcomes, for `GET /rules/history`; written by reloads only.
    pub(crate) history: RuleHistory,
    /// Open long links, for re-homing on reload and closing last in a drain.
    pub(crate) links: Links,
    /// The automatic rollback guard per service (`None` without `guard:`).
    pub(crate) guards: Vec<Option<GuardState>>,
    /// `pool_header` values per global pool id, built once so a request clones a
    /// reference count instead of validating a header value.
    pub(crate) pool_values: Vec<HeaderValue>,
    /// Requests seen, for access-log sampling (one relaxed increment per request).
    access_seq: AtomicU64,
    /// `x-forwarded-proto` per listener, built once for the same reason.
    pub(crate) proto_values: Vec<HeaderValue>,
    /// Fields a client's `Connection` list may not strip: those graylane sets (`Host`,
    /// `x-forwarded-*`, the propagate headers) or routed on (the marker headers).
    pub(crate) protected_headers: Vec<HeaderName>,
    /// Two of the fields graylane sets share a name (say `pool_header` and `rule_header`
    /// both `x-gray`): the later one then replaces the earlier, as a map insert would.
    pub(crate) set_fields_share_a_name: bool,
    /// The lengths of those fields' names ([`crate::fields::length_bits`]): a received
    /// head with no name of these lengths has none of them to replace.
    pub(crate) set_name_lengths: u64,
}

/// Why building the shared state failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An endpoint name did not resolve.
    #[error(transparent)]
    Endpoint(#[from] crate::upstream::ResolveError),
    /// A metric definition was rejected (a bug, not a config problem).
    #[error("metrics: {0}")]
    Metrics(prometheus::Error),
}

impl Shared {
    /// Builds the shared state around a first ruleset.
    pub fn new(config: Config, rules: Compiled) -> Result<Self, BuildError> {
        let metrics = Metrics::try_new(&config).map_err(BuildError::Metrics)?;
        let mut live = Live::new(rules, &metrics);
        // A candidate that does not load is no reason not to start: routing never reads it.
        let shadow_error = ArcSwapOption::empty();
        if let Some((path, display)) = &config.shadow_rules_file {
            match crate::rules::load(path, display, &config.topology()) {
                Ok(c) => live.shadow = Some(Arc::new(Shadow::new(c, &metrics, &config))),
                Err(e) => {
                    tracing::warn!("shadow rules rejected, routing unaffected: {e}");
                    shadow_error.store(Some(Arc::new(e.to_string())));
                }
            }
        }
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
        // The fields graylane sets: x-forwarded-for/-proto and the propagate headers.
        let set: Vec<HeaderName> = [
            HeaderName::from_static("x-forwarded-for"),
            HeaderName::from_static("x-forwarded-proto"),
        ]
        .into_iter()
        .chain(config.propagate.pool_header.iter().cloned())
        .chain(config.propagate.rule_header.iter().cloned())
        .collect();
        let set_fields_share_a_name = set
            .iter()
            .enumerate()
            .any(|(i, a)| set[i + 1..].contains(a));
        let set_name_lengths = crate::fields::length_bits(set.iter().map(|h| h.as_str().len()));
        let mut protected_headers = vec![http::header::HOST];
        protected_headers.extend(set);
        protected_headers.extend(
            config
                .markers
                .sources
                .iter()
                .filter_map(|s| s.header.as_deref())
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
        );
        let history = RuleHistory::default();
        history.push(HistoryEntry::loaded("start", None, &live));
        Ok(Self {
            reader: MarkerReader::new(&config.markers),
            router: Router::new(&config),
            metrics,
            upstreams,
            live: ArcSwap::from_pointee(live),
            last_error: ArcSwapOption::empty(),
            shadow_error,
            mirror_in_flight: (0..config.services.len())
                .map(|_| AtomicUsize::new(0))
                .collect(),
            history,
            draining: AtomicBool::new(false),
            links: Links::default(),
            guards,
            access_seq: AtomicU64::new(0),
            pool_values,
            proto_values,
            protected_headers,
            set_fields_share_a_name,
            set_name_lengths,
            config,
        })
    }

    /// The validated config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether this request is one the access log samples.
    pub fn sample_access(&self) -> bool {
        let every = self.config.access_log_every;
        every != 0
            && self
                .access_seq
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(u64::from(every))
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

    /// The Unix ms a ramp of `service` reads its step at: now, or while the service's guard
    /// holds gray back, the moment it tripped (SPEC §9.2: the ramp does not advance on
    /// this instance until the guard closes, then it jumps to the clock's step).
    pub fn ramp_clock(&self, service: usize) -> u64 {
        let held = self
            .guards
            .get(service)
            .and_then(Option::as_ref)
            .and_then(GuardState::held_since);
        unix_ms(held.unwrap_or_else(SystemTime::now))
    }

    /// Routes and decides without forwarding: the request path and `/explain` share it,
    /// so what `explain` prints is what traffic does.
    pub fn decide(
        &self,
        live: &Live,
        listener: usize,
        host: Option<&str>,
        path: &str,
        headers: Fields<'_>,
        markers: &Markers,
    ) -> Outcome {
        let Some(service) = self.router.route(host, path) else {
            return Outcome::NoService;
        };
        let shadow = live.shadow.as_deref();
        let now_ms = if live.rules.has_ramps() || shadow.is_some_and(|s| s.rules.has_ramps()) {
            self.ramp_clock(service)
        } else {
            0
        };
        let req = RequestInfo {
            markers,
            listener,
            service,
            path,
            headers,
            now_ms,
        };
        let decision = live.rules.decide(&req);
        let svc = &self.config.services[service];
        let pool_of = |d: &Decision| svc.pool_by_id.get(d.pool).copied().flatten();
        let (pool, fallback) = match pool_of(&decision) {
            Some(p) => (p, None),
            None => (svc.stable_index(), Some(FallbackReason::PoolMissing)),
        };
        let shadow = shadow.map(|s| {
            let d = s.rules.decide(&req);
            let p = pool_of(&d).unwrap_or(svc.stable_index());
            (d, p)
        });
        Outcome::Routed {
            service,
            decision,
            pool,
            fallback,
            shadow,
        }
    }
}

/// Seconds since the Unix epoch, for `rules_loaded_timestamp_seconds`.
pub(crate) fn unix_secs(t: SystemTime) -> f64 {
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
        /// The shadow ruleset's decision and the pool it would use (after the same
        /// `pool_missing` fallback), when there is one.
        shadow: Option<(Decision, usize)>,
    },
}

/// Per-connection facts, computed once at accept.
#[derive(Debug, Clone)]
pub(crate) struct ConnCtx {
    /// Listener index.
    pub(crate) listener: usize,
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// `peer`'s IP as an `x-forwarded-for` value, built once for all its requests.
    pub(crate) peer_value: HeaderValue,
    /// Whether markers from this peer are trusted (`trusted_cidrs`).
    pub(crate) trusted: bool,
    /// The connection's place under `max_connections`, also held by its long links.
    pub(crate) slot: Arc<ConnSlot>,
}

/// One client connection counted against `max_connections` (and in `connections`). The
/// connection and every long link it became hold it: a WebSocket outlives hyper's
/// connection task, and must keep counting until the tunnel closes. Dropping the last
/// holder decrements, however it ends (including abort at the end of the drain).
#[derive(Debug)]
pub(crate) struct ConnSlot {
    /// Open connections of the listener, shared by its workers.
    open: Arc<AtomicUsize>,
    /// `graylane_connections{listener}`.
    gauge: prometheus::IntGauge,
}

impl ConnSlot {
    /// Takes a place; the caller checked `max_connections`.
    pub(crate) fn new(open: Arc<AtomicUsize>, gauge: prometheus::IntGauge) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        gauge.inc();
        Self { open, gauge }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

// === impl Rehome for Shared ===

impl Rehome for Shared {
    fn links(&self) -> &Links {
        &self.links
    }

    fn rehome_grace(&self) -> Option<Duration> {
        self.config.long_links.rehome_grace
    }

    fn rehome_spread(&self) -> Duration {
        self.config.long_links.rehome_spread
    }

    /// The live rules, then the guard and pool health, as for a new request (without the
    /// guard's probe share).
    fn pool_now(&self, hs: &Handshake) -> Option<usize> {
        let live = self.live.load();
        match self.decide(
            &live,
            hs.listener,
            hs.host.as_deref(),
            &hs.path,
            (&hs.headers).into(),
            &hs.markers,
        ) {
            Outcome::Routed {
                service,
                pool,
                fallback,
                ..
            } if service == hs.service => Some(self.effective_pool(service, pool, fallback).0),
            _ => None,
        }
    }

    fn rehomed(&self, hs: &Handshake, to: usize) {
        let svc = &self.config.services[hs.service];
        tracing::info!(
            service = %svc.name,
            from = %svc.pools[hs.pool].name,
            to = %svc.pools[to].name,
            "closing long link so it reconnects into its new pool"
        );
        self.metrics.service(hs.service).rehomed(hs.pool, to).inc();
    }
}
