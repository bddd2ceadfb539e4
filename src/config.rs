//! `graylane.yaml`: raw serde types, then `validate()` into a [`Config`] that cannot be
//! wrong. Every rejection names the field path and its `FILE:LINE:COLUMN`.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::markers::MarkerKind;
use crate::yamlpos::{LocatedError, Pos, PosIndex, YamlPath};

/// Index into [`Config::pool_names`]: pools are named globally so that a rule's `route`
/// resolves once, at load, to a number every service can look up in a table.
pub type PoolId = usize;

/// The pool every service must have and every fallback goes to.
pub const STABLE: PoolId = 0;
/// Always a valid `route`, even before any service defines it.
pub const GRAY: PoolId = 1;

// === raw types ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listeners: Vec<RawListener>,
    #[serde(default)]
    admin: RawAdmin,
    rules_file: String,
    services: Vec<RawService>,
    #[serde(default)]
    propagate: RawPropagate,
    #[serde(default)]
    markers: BTreeMap<String, RawMarkerSource>,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    long_links: RawLongLinks,
    #[serde(default)]
    workers: Option<usize>,
    #[serde(default)]
    access_log: RawAccessLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    #[serde(default)]
    sample: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: String,
    bind: String,
    #[serde(default)]
    trusted_cidrs: Option<Vec<String>>,
    #[serde(default)]
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "default_admin_bind")]
    bind: String,
    #[serde(default)]
    token_file: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            bind: default_admin_bind(),
            token_file: None,
        }
    }
}

fn default_admin_bind() -> String {
    "127.0.0.1:9901".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    #[serde(default, rename = "match")]
    matcher: RawMatch,
    pools: BTreeMap<String, RawPool>,
    #[serde(default)]
    health: Option<RawHealth>,
    #[serde(default)]
    guard: Option<RawGuard>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    path_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    endpoints: Vec<String>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    on_unavailable: Option<String>,
    #[serde(default)]
    lb: Option<String>,
    #[serde(default)]
    resolve_interval: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default = "healthz")]
    path: String,
    #[serde(default = "d2s")]
    interval: Dur,
    #[serde(default = "d1s")]
    timeout: Dur,
    #[serde(default = "two")]
    healthy: u32,
    #[serde(default = "three")]
    unhealthy: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuard {
    #[serde(default = "five_percent")]
    max_error_rate: f64,
    #[serde(default = "fifty")]
    min_requests: u64,
    #[serde(default = "d30s")]
    window: Dur,
    #[serde(default = "d120s")]
    cooldown: Dur,
}

fn d1s() -> Dur {
    Dur(Some(Duration::from_secs(1)))
}
fn d2s() -> Dur {
    Dur(Some(Duration::from_secs(2)))
}
fn d30s() -> Dur {
    Dur(Some(Duration::from_secs(30)))
}
fn d120s() -> Dur {
    Dur(Some(Duration::from_secs(120)))
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}
fn fifty() -> u64 {
    50
}
fn healthz() -> String {
    "/healthz".into()
}
fn five_percent() -> f64 {
    0.05
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPropagate {
    #[serde(default = "default_pool_header", deserialize_with = "nullable")]
    pool_header: Option<String>,
    #[serde(default = "default_rule_header", deserialize_with = "nullable")]
    rule_header: Option<String>,
}

impl Default for RawPropagate {
    fn default() -> Self {
        Self {
            pool_header: default_pool_header(),
            rule_header: default_rule_header(),
        }
    }
}

fn default_pool_header() -> Option<String> {
    Some("x-graylane-pool".to_owned())
}
fn default_rule_header() -> Option<String> {
    Some("x-graylane-rule".to_owned())
}

/// Each source: key absent = the default name, `null` = off.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMarkerSource {
    #[serde(default, deserialize_with = "double_option")]
    header: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    cookie: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    query: Option<Option<String>>,
}

fn double_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    #[serde(default = "d1s")]
    connect: Dur,
    #[serde(default = "d10s")]
    request_header: Dur,
    #[serde(default = "d30s")]
    upstream_response: Dur,
    #[serde(default = "d60s")]
    idle: Dur,
    #[serde(default = "d30s")]
    drain: Dur,
    #[serde(default)]
    long_link_idle: Dur,
}

fn d10s() -> Dur {
    Dur(Some(Duration::from_secs(10)))
}
fn d60s() -> Dur {
    Dur(Some(Duration::from_secs(60)))
}

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            connect: d1s(),
            request_header: d10s(),
            upstream_response: d30s(),
            idle: d60s(),
            drain: d30s(),
            long_link_idle: Dur(None),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default = "default_max_header_bytes")]
    max_header_bytes: usize,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
}

fn default_max_header_bytes() -> usize {
    65536
}
fn default_max_connections() -> usize {
    10000
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            max_connections: default_max_connections(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLongLinks {
    #[serde(default = "d30s")]
    rehome_grace: Dur,
}

impl Default for RawLongLinks {
    fn default() -> Self {
        Self {
            rehome_grace: d30s(),
        }
    }
}

/// A duration as ops write it: `250ms`, `1s`, `2m`, `1h`, or a bare `0`; `null` is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dur(pub Option<Duration>);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Int(u64),
            Text(String),
        }
        match Option::<Repr>::deserialize(d)? {
            None => Ok(Dur(None)),
            Some(Repr::Int(0)) => Ok(Dur(Some(Duration::ZERO))),
            Some(Repr::Int(n)) => Err(serde::de::Error::custom(format!(
                "duration {n} needs a unit: ms, s, m or h"
            ))),
            Some(Repr::Text(s)) => parse_duration(&s)
                .map(|d| Dur(Some(d)))
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `250ms`, `1s`, `2m`, `1h` (and `0`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 250ms, 1s, 2m, 1h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unit must be ms, s, m or h"
            ))
        }
    };
    Ok(d)
}

// === validated types ===

/// The validated configuration. Read once at start; only the rules are hot-reloaded.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file as given on the command line, for messages.
    pub file: String,
    /// The traffic listeners, in file order.
    pub listeners: Vec<Listener>,
    /// The admin listener.
    pub admin: Admin,
    /// The rules file, resolved against the config file's directory.
    pub rules_file: PathBuf,
    /// The rules file as written in the config, for `FILE:LINE:COLUMN` messages.
    pub rules_file_display: String,
    /// Services in file order; routing picks the most specific match.
    pub services: Vec<Service>,
    /// Global pool name table: `stable`, `gray`, then every other pool name sorted.
    pub pool_names: Vec<String>,
    /// Headers that tell the upstream which pool and rule served the request.
    pub propagate: Propagate,
    /// Where each marker is read from.
    pub markers: MarkerNames,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Limits.
    pub limits: Limits,
    /// Long-link behaviour on reload.
    pub long_links: LongLinks,
    /// Worker threads for the runtime.
    pub workers: usize,
    /// Log one request in this many (0 = off) at target `graylane::access`.
    pub access_log_every: u32,
}

/// One traffic listener.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Unique name, used in metrics and rules.
    pub name: String,
    /// Address to bind.
    pub bind: SocketAddr,
    /// `None`: markers trusted from everyone; `Some([])`: from no one.
    pub trusted_cidrs: Option<Vec<IpNet>>,
    /// TLS termination, if configured.
    pub tls: Option<Tls>,
}

impl Listener {
    /// Whether markers from `peer` may be used.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        match &self.trusted_cidrs {
            None => true,
            Some(nets) => {
                let peer = canonical_ip(peer);
                nets.iter().any(|n| n.contains(&peer))
            }
        }
    }

    /// `http` or `https`, for `x-forwarded-proto`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// IPv4-mapped IPv6 peers (dual-stack sockets) compare as IPv4 against CIDRs.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// PEM certificate and key paths, resolved against the config directory.
#[derive(Debug, Clone)]
pub struct Tls {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// The admin listener.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Address to bind.
    pub bind: SocketAddr,
    /// File holding the bearer token for POST endpoints.
    pub token_file: Option<PathBuf>,
}

/// A backend service and its pools.
#[derive(Debug, Clone)]
pub struct Service {
    /// Unique name.
    pub name: String,
    /// Host match, if any.
    pub host: Option<HostMatch>,
    /// Segment-aware path prefix, if any.
    pub path_prefix: Option<String>,
    /// Pools sorted by name.
    pub pools: Vec<Pool>,
    /// `pool_by_id[PoolId]` = index into `pools`, so a decision maps to a pool in O(1).
    pub pool_by_id: Vec<Option<usize>>,
    /// Active health checks.
    pub health: Option<Health>,
    /// Automatic rollback guard.
    pub guard: Option<Guard>,
}

impl Service {
    /// The service's pool for a global pool id, if it defines one.
    pub fn pool(&self, id: PoolId) -> Option<&Pool> {
        self.pool_by_id
            .get(id)
            .copied()
            .flatten()
            .and_then(|i| self.pools.get(i))
    }

    /// Index of the stable pool in `pools` (validation guarantees it exists).
    pub fn stable_index(&self) -> usize {
        self.pool_by_id.get(STABLE).copied().flatten().unwrap_or(0)
    }
}

/// `match.host`: exact (lowercased) or `*.suffix` (one or more labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Exact host name, lowercase, without port.
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Wildcard(String),
}

impl HostMatch {
    /// Matches a request host (lowercase, port already removed).
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => h.eq_ignore_ascii_case(host),
            HostMatch::Wildcard(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

/// Upstream protocol of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 with prior knowledge.
    H2,
}

/// What to do when the chosen pool has no healthy endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    /// Send the request to stable.
    Fallback,
    /// Answer 503.
    Fail,
}

/// Load-balancing policy of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// Rotate over endpoints.
    RoundRobin,
    /// Power of two choices on in-flight requests.
    LeastRequest,
    /// Consistent hashing on the uid marker.
    HashUid,
}

/// One pool of a service.
#[derive(Debug, Clone)]
pub struct Pool {
    /// Pool name (`stable`, `gray`, ...).
    pub name: String,
    /// Global id of the name.
    pub id: PoolId,
    /// `host:port` endpoints as written.
    pub endpoints: Vec<String>,
    /// Retries on another endpoint when safe.
    pub retries: u32,
    /// Upstream protocol.
    pub protocol: Protocol,
    /// Behaviour when no endpoint is up.
    pub on_unavailable: OnUnavailable,
    /// Load balancing.
    pub lb: LbPolicy,
    /// How often DNS names are re-resolved.
    pub resolve_interval: Duration,
}

/// Active health-check settings.
#[derive(Debug, Clone)]
pub struct Health {
    /// Path to GET.
    pub path: String,
    /// Check period.
    pub interval: Duration,
    /// Per-check timeout.
    pub timeout: Duration,
    /// Successes to come back up.
    pub healthy: u32,
    /// Failures to go down.
    pub unhealthy: u32,
}

/// Automatic rollback guard settings.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Error share above which gray trips.
    pub max_error_rate: f64,
    /// Minimum requests in the window before deciding.
    pub min_requests: u64,
    /// Sliding window.
    pub window: Duration,
    /// Time tripped before probing.
    pub cooldown: Duration,
}

/// Header names propagated upstream.
#[derive(Debug, Clone)]
pub struct Propagate {
    /// Set to the pool used.
    pub pool_header: Option<HeaderName>,
    /// Set to the rule name or `default`.
    pub rule_header: Option<HeaderName>,
}

/// Where one marker is read from; `None` = that source is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerSource {
    /// Header name, lowercase.
    pub header: Option<String>,
    /// Cookie name (case-sensitive, as RFC 6265 says).
    pub cookie: Option<String>,
    /// Query parameter name.
    pub query: Option<String>,
}

/// Sources of every marker, indexed by [`MarkerKind`] as usize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerNames {
    /// One entry per marker kind.
    pub sources: [MarkerSource; 6],
}

impl Default for MarkerNames {
    fn default() -> Self {
        Self {
            sources: MarkerKind::ALL.map(|k| MarkerSource {
                header: Some(k.default_source().to_owned()),
                cookie: Some(k.default_source().to_owned()),
                query: Some(k.default_source().to_owned()),
            }),
        }
    }
}

impl MarkerNames {
    /// Sources of one marker.
    pub fn get(&self, kind: MarkerKind) -> &MarkerSource {
        &self.sources[kind as usize]
    }
}

/// Timeouts; see SPEC §3.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// TCP connect to an upstream.
    pub connect: Duration,
    /// Receiving a whole request head.
    pub request_header: Duration,
    /// Waiting for an upstream response head.
    pub upstream_response: Duration,
    /// Keep-alive idle between requests.
    pub idle: Duration,
    /// Graceful shutdown budget.
    pub drain: Duration,
    /// Idle limit on an open long link; `None` = none.
    pub long_link_idle: Option<Duration>,
}

/// Limits; see SPEC §3.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request head size limit.
    pub max_header_bytes: usize,
    /// Open connections per listener.
    pub max_connections: usize,
}

/// Long-link settings.
#[derive(Debug, Clone)]
pub struct LongLinks {
    /// Delay before closing a link whose decision changed; `None` = never.
    pub rehome_grace: Option<Duration>,
}

/// Names the rules compiler resolves `listener`, `service` and `route` against.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    /// Listener names in config order (index = listener id).
    pub listeners: Vec<String>,
    /// Service names in config order (index = service id).
    pub services: Vec<String>,
    /// Global pool names (index = [`PoolId`]).
    pub pools: Vec<String>,
}

impl Config {
    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, LocatedError> {
        let display = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| {
            LocatedError::new(
                &display,
                Pos { line: 1, col: 1 },
                format!("cannot read: {e}"),
            )
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::from_str(&src, &display, dir)
    }

    /// Parses config text; relative paths resolve against `dir`.
    pub fn from_str(src: &str, file: &str, dir: &Path) -> Result<Config, LocatedError> {
        let raw: RawConfig =
            serde_yaml::from_str(src).map_err(|e| LocatedError::from_serde(file, &e))?;
        let pos = PosIndex::new(src);
        Validator {
            file,
            pos: &pos,
            dir,
        }
        .config(raw)
    }

    /// The names the rules compiler needs.
    pub fn topology(&self) -> Topology {
        Topology {
            listeners: self.listeners.iter().map(|l| l.name.clone()).collect(),
            services: self.services.iter().map(|s| s.name.clone()).collect(),
            pools: self.pool_names.clone(),
        }
    }

    /// Replaces every endpoint with loopback addresses from `f(service, pool)`; used by
    /// `demo`, whose upstreams bind port 0.
    pub fn map_endpoints(&mut self, mut f: impl FnMut(&str, &str) -> Vec<String>) {
        for s in &mut self.services {
            for p in &mut s.pools {
                p.endpoints = f(&s.name, &p.name);
            }
        }
    }
}

struct Validator<'a> {
    file: &'a str,
    pos: &'a PosIndex,
    dir: &'a Path,
}

type VResult<T> = Result<T, LocatedError>;

impl Validator<'_> {
    fn err_at(&self, path: &YamlPath, msg: impl Into<String>) -> LocatedError {
        LocatedError::new(
            self.file,
            self.pos.value(path),
            format!("{path}: {}", msg.into()),
        )
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    fn config(&self, raw: RawConfig) -> VResult<Config> {
        let root = YamlPath::root();
        if raw.listeners.is_empty() {
            return Err(self.err_at(&root.key("listeners"), "at least one listener is required"));
        }
        if raw.services.is_empty() {
            return Err(self.err_at(&root.key("services"), "at least one service is required"));
        }
        let mut names = HashSet::new();
        let mut listeners = Vec::new();
        for (i, l) in raw.listeners.into_iter().enumerate() {
            let p = root.key("listeners").index(i);
            if !names.insert(l.name.clone()) {
                return Err(self.err_at(&p.key("name"), format!("duplicate listener {:?}", l.name)));
            }
            listeners.push(self.listener(&p, l)?);
        }

        // Global pool table: stable and gray first, then the rest sorted.
        let mut pool_names = vec!["stable".to_owned(), "gray".to_owned()];
        let mut extra: Vec<String> = raw
            .services
            .iter()
            .flat_map(|s| s.pools.keys().cloned())
            .filter(|n| n != "stable" && n != "gray")
            .collect();
        extra.sort();
        extra.dedup();
        pool_names.extend(extra);

        let mut snames = HashSet::new();
        let mut services = Vec::new();
        for (i, s) in raw.services.into_iter().enumerate() {
            let p = root.key("services").index(i);
            if !snames.insert(s.name.clone()) {
                return Err(self.err_at(&p.key("name"), format!("duplicate service {:?}", s.name)));
            }
            services.push(self.service(&p, s, &pool_names)?);
        }

        let propagate = Propagate {
            pool_header: self.header_name(
                &root.key("propagate").key("pool_header"),
                raw.propagate.pool_header,
            )?,
            rule_header: self.header_name(
                &root.key("propagate").key("rule_header"),
                raw.propagate.rule_header,
            )?,
        };

        let mut markers = MarkerNames::default();
        for (name, src) in raw.markers {
            let p = root.key("markers").key(&name);
            let Some(kind) = MarkerKind::from_name(&name) else {
                return Err(LocatedError::new(
                    self.file,
                    self.pos.key(&p),
                    format!(
                        "markers: unknown marker {name:?} (expected uid, staff_uid, agent_gid, entry_id, app_version or device)"
                    ),
                ));
            };
            let slot = &mut markers.sources[kind as usize];
            if let Some(h) = src.header {
                slot.header = match h {
                    Some(h) => Some(
                        self.header_name(&p.key("header"), Some(h))?
                            .map(|n| n.as_str().to_owned())
                            .unwrap_or_default(),
                    ),
                    None => None,
                };
            }
            if let Some(c) = src.cookie {
                slot.cookie = self.nonempty(&p.key("cookie"), c)?;
            }
            if let Some(q) = src.query {
                slot.query = self.nonempty(&p.key("query"), q)?;
            }
        }

        let t = raw.timeouts;
        let tp = root.key("timeouts");
        let timeouts = Timeouts {
            connect: self.required_dur(&tp.key("connect"), t.connect)?,
            request_header: self.required_dur(&tp.key("request_header"), t.request_header)?,
            upstream_response: self
                .required_dur(&tp.key("upstream_response"), t.upstream_response)?,
            idle: self.required_dur(&tp.key("idle"), t.idle)?,
            drain: t.drain.0.unwrap_or(Duration::ZERO),
            long_link_idle: t.long_link_idle.0.filter(|d| !d.is_zero()),
        };
        let lp = root.key("limits");
        // hyper's read buffer cannot be smaller than 8 KiB, and the limit is that buffer.
        if raw.limits.max_header_bytes < 8192 {
            return Err(self.err_at(&lp.key("max_header_bytes"), "must be at least 8192"));
        }
        if raw.limits.max_connections == 0 {
            return Err(self.err_at(&lp.key("max_connections"), "must be at least 1"));
        }
        let workers = match raw.workers {
            Some(0) => return Err(self.err_at(&root.key("workers"), "must be at least 1")),
            Some(n) => n,
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        };
        let admin = Admin {
            bind: self.socket_addr(&root.key("admin").key("bind"), &raw.admin.bind)?,
            token_file: raw.admin.token_file.map(|f| self.resolve(&f)),
        };
        Ok(Config {
            file: self.file.to_owned(),
            listeners,
            admin,
            rules_file: self.resolve(&raw.rules_file),
            rules_file_display: raw.rules_file.clone(),
            services,
            pool_names,
            propagate,
            markers,
            timeouts,
            limits: Limits {
                max_header_bytes: raw.limits.max_header_bytes,
                max_connections: raw.limits.max_connections,
            },
            long_links: LongLinks {
                rehome_grace: raw.long_links.rehome_grace.0.filter(|d| !d.is_zero()),
            },
            workers,
            access_log_every: {
                let ap = root.key("access_log").key("sample");
                match raw.access_log.sample {
                    None => 0,
                    Some(0.0) => 0,
                    Some(r) if r > 0.0 && r <= 1.0 => (1.0 / r).round().max(1.0) as u32,
                    Some(_) => return Err(self.err_at(&ap, "must be in [0, 1]")),
                }
            },
        })
    }

    fn listener(&self, p: &YamlPath, l: RawListener) -> VResult<Listener> {
        check_name(&l.name).map_err(|m| self.err_at(&p.key("name"), m))?;
        let bind = self.socket_addr(&p.key("bind"), &l.bind)?;
        let trusted_cidrs = match l.trusted_cidrs {
            None => None,
            Some(list) => {
                let mut nets = Vec::with_capacity(list.len());
                for (i, c) in list.iter().enumerate() {
                    let cp = p.key("trusted_cidrs").index(i);
                    let net = c
                        .parse::<IpNet>()
                        .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                        .map_err(|_| self.err_at(&cp, format!("invalid CIDR {c:?}")))?;
                    nets.push(net);
                }
                Some(nets)
            }
        };
        let tls = l.tls.map(|t| Tls {
            cert: self.resolve(&t.cert),
            key: self.resolve(&t.key),
        });
        Ok(Listener {
            name: l.name,
            bind,
            trusted_cidrs,
            tls,
        })
    }

    fn service(&self, p: &YamlPath, s: RawService, pool_names: &[String]) -> VResult<Service> {
        check_name(&s.name).map_err(|m| self.err_at(&p.key("name"), m))?;
        let host = match s.matcher.host {
            None => None,
            Some(h) => {
                let h = h.trim().to_ascii_lowercase();
                let hp = p.key("match").key("host");
                if h.is_empty() || h.contains('/') || h.contains(' ') {
                    return Err(self.err_at(&hp, format!("invalid host {h:?}")));
                }
                Some(match h.strip_prefix('*') {
                    Some(rest) if rest.starts_with('.') && rest.len() > 1 => {
                        HostMatch::Wildcard(rest.to_owned())
                    }
                    Some(_) => {
                        return Err(self.err_at(&hp, "a wildcard host must look like *.example.com"))
                    }
                    None => HostMatch::Exact(h),
                })
            }
        };
        if let Some(pp) = &s.matcher.path_prefix {
            if !pp.starts_with('/') {
                return Err(self.err_at(
                    &p.key("match").key("path_prefix"),
                    format!("path_prefix {pp:?} must start with /"),
                ));
            }
        }
        if !s.pools.contains_key("stable") {
            return Err(self.err_at(
                &p.key("pools"),
                format!("service {:?} has no stable pool (every request without a gray decision goes there)", s.name),
            ));
        }
        let mut pools = Vec::with_capacity(s.pools.len());
        let mut pool_by_id = vec![None; pool_names.len()];
        for (name, rp) in s.pools {
            let pp = p.key("pools").key(&name);
            check_name(&name).map_err(|m| self.err_at(&pp, m))?;
            let id = pool_names.iter().position(|n| *n == name).unwrap_or(0);
            pool_by_id[id] = Some(pools.len());
            pools.push(self.pool(&pp, name, id, rp)?);
        }
        let health = match s.health {
            None => None,
            Some(h) => {
                let hp = p.key("health");
                if !h.path.starts_with('/') {
                    return Err(self.err_at(&hp.key("path"), "must start with /"));
                }
                if h.healthy == 0 || h.unhealthy == 0 {
                    return Err(self.err_at(&hp, "healthy and unhealthy must be at least 1"));
                }
                Some(Health {
                    path: h.path,
                    interval: self.required_dur(&hp.key("interval"), h.interval)?,
                    timeout: self.required_dur(&hp.key("timeout"), h.timeout)?,
                    healthy: h.healthy,
                    unhealthy: h.unhealthy,
                })
            }
        };
        let guard = match s.guard {
            None => None,
            Some(g) => {
                let gp = p.key("guard");
                if !(g.max_error_rate > 0.0 && g.max_error_rate <= 1.0) {
                    return Err(self.err_at(&gp.key("max_error_rate"), "must be in (0, 1]"));
                }
                Some(Guard {
                    max_error_rate: g.max_error_rate,
                    min_requests: g.min_requests.max(1),
                    window: self.required_dur(&gp.key("window"), g.window)?,
                    cooldown: self.required_dur(&gp.key("cooldown"), g.cooldown)?,
                })
            }
        };
        Ok(Service {
            name: s.name,
            host,
            path_prefix: s.matcher.path_prefix,
            pools,
            pool_by_id,
            health,
            guard,
        })
    }

    fn pool(&self, p: &YamlPath, name: String, id: PoolId, rp: RawPool) -> VResult<Pool> {
        if rp.endpoints.is_empty() {
            return Err(self.err_at(&p.key("endpoints"), "at least one endpoint is required"));
        }
        for (i, e) in rp.endpoints.iter().enumerate() {
            let ok = e
                .rsplit_once(':')
                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(self.err_at(
                    &p.key("endpoints").index(i),
                    format!("endpoint {e:?} must be host:port"),
                ));
            }
        }
        let protocol = match rp.protocol.as_deref() {
            None | Some("http1") | Some("http/1.1") => Protocol::Http1,
            Some("h2") => Protocol::H2,
            Some(other) => {
                return Err(self.err_at(
                    &p.key("protocol"),
                    format!("unknown protocol {other:?} (expected http1 or h2)"),
                ))
            }
        };
        let on_unavailable = match rp.on_unavailable.as_deref() {
            None | Some("fallback") => OnUnavailable::Fallback,
            Some("fail") => OnUnavailable::Fail,
            Some(other) => {
                return Err(self.err_at(
                    &p.key("on_unavailable"),
                    format!("unknown value {other:?} (expected fallback or fail)"),
                ))
            }
        };
        let lb = match rp.lb.as_deref() {
            None | Some("round_robin") => LbPolicy::RoundRobin,
            Some("least_request") => LbPolicy::LeastRequest,
            Some("hash_uid") | Some("hash: uid") => LbPolicy::HashUid,
            Some(other) => {
                return Err(self.err_at(
                    &p.key("lb"),
                    format!(
                        "unknown lb {other:?} (expected round_robin, least_request or hash_uid)"
                    ),
                ))
            }
        };
        Ok(Pool {
            name,
            id,
            endpoints: rp.endpoints,
            retries: rp.retries.unwrap_or(1),
            protocol,
            on_unavailable,
            lb,
            resolve_interval: rp
                .resolve_interval
                .and_then(|d| d.0)
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(30)),
        })
    }

    fn socket_addr(&self, p: &YamlPath, s: &str) -> VResult<SocketAddr> {
        s.parse::<SocketAddr>().map_err(|_| {
            self.err_at(
                p,
                format!("invalid address {s:?} (expected IP:PORT, e.g. 0.0.0.0:8080)"),
            )
        })
    }

    fn header_name(&self, p: &YamlPath, h: Option<String>) -> VResult<Option<HeaderName>> {
        match h {
            None => Ok(None),
            Some(h) => HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
                .map(Some)
                .map_err(|_| self.err_at(p, format!("invalid header name {h:?}"))),
        }
    }

    fn nonempty(&self, p: &YamlPath, v: Option<String>) -> VResult<Option<String>> {
        match v {
            Some(s) if s.trim().is_empty() => {
                Err(self.err_at(p, "must not be empty (use null to turn the source off)"))
            }
            other => Ok(other.map(|s| s.trim().to_owned())),
        }
    }

    fn required_dur(&self, p: &YamlPath, d: Dur) -> VResult<Duration> {
        match d.0 {
            Some(d) if !d.is_zero() => Ok(d),
            _ => Err(self.err_at(p, "must be a positive duration")),
        }
    }
}

/// Names of listeners, services and pools appear in metric labels and URLs.
fn check_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid name {n:?} (expected [a-z0-9_.-]{{1,64}})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "\
listeners:
  - name: im
    bind: \"127.0.0.1:0\"
rules_file: rules.yaml
services:
  - name: chat
    match: { path_prefix: /chat }
    pools:
      stable: { endpoints: [\"127.0.0.1:1\"] }
      gray: { endpoints: [\"127.0.0.1:2\"] }
";

    fn load(src: &str) -> Result<Config, String> {
        Config::from_str(src, "g.yaml", Path::new("/etc/gl")).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load(MIN).unwrap();
        assert_eq!(c.admin.bind.to_string(), "127.0.0.1:9901");
        assert_eq!(c.timeouts.idle, Duration::from_secs(60));
        assert_eq!(c.timeouts.long_link_idle, None);
        assert_eq!(c.limits.max_header_bytes, 65536);
        assert_eq!(c.long_links.rehome_grace, Some(Duration::from_secs(30)));
        assert_eq!(c.rules_file, PathBuf::from("/etc/gl/rules.yaml"));
        assert_eq!(c.pool_names, vec!["stable", "gray"]);
        assert_eq!(c.markers, MarkerNames::default());
        assert_eq!(
            c.propagate.pool_header.as_ref().map(|h| h.as_str()),
            Some("x-graylane-pool")
        );
        let chat = &c.services[0];
        assert_eq!(
            chat.pool(GRAY).map(|p| p.endpoints[0].as_str()),
            Some("127.0.0.1:2")
        );
        assert!(c.listeners[0].trusts("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn empty_health_and_guard_take_the_spec_defaults() {
        let src = MIN.replace(
            "      gray: { endpoints: [\"127.0.0.1:2\"] }\n",
            "      gray: { endpoints: [\"127.0.0.1:2\"] }\n    health: {}\n    guard: {}\n",
        );
        let c = load(&src).unwrap();
        let h = c.services[0].health.as_ref().expect("health");
        assert_eq!(
            (
                h.path.as_str(),
                h.interval,
                h.timeout,
                h.healthy,
                h.unhealthy
            ),
            (
                "/healthz",
                Duration::from_secs(2),
                Duration::from_secs(1),
                2,
                3
            )
        );
        let g = c.services[0].guard.as_ref().expect("guard");
        assert_eq!(
            (g.max_error_rate, g.min_requests, g.window, g.cooldown),
            (0.05, 50, Duration::from_secs(30), Duration::from_secs(120))
        );
    }

    #[test]
    fn unknown_key_is_located() {
        let src = MIN.replace("    bind:", "    bnid: x\n    bind:");
        let e = load(&src).unwrap_err();
        assert!(e.starts_with("g.yaml:3:5: "), "{e}");
        assert!(e.contains("bnid"), "{e}");
    }

    #[test]
    fn missing_stable_pool_is_rejected() {
        let src = MIN.replace("      stable: { endpoints: [\"127.0.0.1:1\"] }\n", "");
        let e = load(&src).unwrap_err();
        assert!(e.contains("no stable pool"), "{e}");
        assert!(e.starts_with("g.yaml:9:"), "{e}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (MIN.replace("127.0.0.1:0", "nowhere"), "listeners.0.bind"),
            (MIN.replace("/chat", "chat"), "path_prefix"),
            (MIN.replace("127.0.0.1:2", "127.0.0.1"), "must be host:port"),
            (format!("{MIN}timeouts: {{ idle: 5 }}\n"), "needs a unit"),
            (format!("{MIN}timeouts: {{ idle: 5x }}\n"), "unit must be"),
            (
                format!("{MIN}markers: {{ uuid: {{ header: a }} }}\n"),
                "unknown marker",
            ),
            (
                MIN.replace(
                    "    bind:",
                    "    trusted_cidrs: [\"10.0.0.0/33\"]\n    bind:",
                ),
                "invalid CIDR",
            ),
            (MIN.replace("name: chat", "name: Chat"), "invalid name"),
        ];
        for (src, want) in cases {
            let e = load(&src).unwrap_err();
            assert!(e.contains(want), "want {want:?} in {e}");
            assert!(e.starts_with("g.yaml:"), "{e}");
        }
    }

    #[test]
    fn marker_sources_can_be_renamed_and_turned_off() {
        let src = format!(
            "{MIN}markers:\n  device: {{ header: X-Dev, cookie: null }}\n  uid: {{ query: null }}\n"
        );
        let c = load(&src).unwrap();
        let d = c.markers.get(MarkerKind::Device);
        assert_eq!(d.header.as_deref(), Some("x-dev"));
        assert_eq!(d.cookie, None);
        assert_eq!(d.query.as_deref(), Some("xdw-device-id"));
        let u = c.markers.get(MarkerKind::Uid);
        assert_eq!(u.query, None);
        assert_eq!(u.header.as_deref(), Some("xdw-kefu-uid"));
    }

    #[test]
    fn trusted_cidrs_empty_trusts_no_one() {
        let src = MIN.replace("    bind:", "    trusted_cidrs: []\n    bind:");
        let c = load(&src).unwrap();
        assert!(!c.listeners[0].trusts("127.0.0.1".parse().unwrap()));
        let src = MIN.replace(
            "    bind:",
            "    trusted_cidrs: [\"127.0.0.0/8\", \"::1\"]\n    bind:",
        );
        let c = load(&src).unwrap();
        assert!(c.listeners[0].trusts("127.0.0.9".parse().unwrap()));
        assert!(c.listeners[0].trusts("::ffff:127.0.0.1".parse().unwrap()));
        assert!(c.listeners[0].trusts("::1".parse().unwrap()));
        assert!(!c.listeners[0].trusts("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn host_matching() {
        let w = HostMatch::Wildcard(".example.com".into());
        assert!(w.matches("a.example.com"));
        assert!(w.matches("a.b.example.com"));
        assert!(w.matches("A.Example.COM"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("aexample.com"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn zero_means_what_each_key_says() {
        let c = load(&format!(
            "{MIN}timeouts: {{ drain: 0, long_link_idle: 0 }}\nlong_links: {{ rehome_grace: 0 }}\n"
        ))
        .unwrap();
        // drain 0: exit at once; long_link_idle 0: no limit; rehome_grace 0: never.
        assert_eq!(c.timeouts.drain, Duration::ZERO);
        assert_eq!(c.timeouts.long_link_idle, None);
        assert_eq!(c.long_links.rehome_grace, None);
    }
}
