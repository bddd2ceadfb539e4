//! `graylane.yaml` in two stages: `raw` serde types (`deny_unknown_fields`), then
//! `validate` into the [`Config`] below, whose values cannot be wrong. Every rejection
//! names the field path and its `FILE:LINE:COLUMN` (`yamlpos`).

mod raw;
mod validate;
pub(crate) mod yamlpos;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

use crate::markers::MarkerNames;
pub(crate) use raw::parse_duration;
use raw::RawConfig;
use validate::Validator;
use yamlpos::{LocatedError, Pos, PosIndex};

/// Index into [`Config::pool_names`]: pools are named globally so that a rule's `route`
/// resolves once, at load, to a number every service can look up in a table.
pub(crate) type PoolId = usize;

/// The pool every service must have and every fallback goes to.
pub(crate) const STABLE: PoolId = 0;
/// Always a valid `route`, even before any service defines it.
pub(crate) const GRAY: PoolId = 1;

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
    /// A candidate ruleset decided beside the live one on every request, never routing
    /// (SPEC §9.4): resolved path and the path as written.
    pub shadow_rules_file: Option<(PathBuf, String)>,
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
    /// Copies of a share of stable-routed requests sent to another pool (SPEC §9.5).
    pub mirror: Option<Mirror>,
    /// `Vary` added to every response of the service (`vary_markers: true`): `Cookie`
    /// and the marker header names, so a browser cache never reuses an answer across a
    /// pool switch.
    pub vary: Option<http::HeaderValue>,
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
    /// Trip only when gray fails significantly more than stable over the same window.
    pub compare_to_stable: bool,
    /// One-sided confidence of the comparison, in (0.5, 1).
    pub confidence: f64,
    /// Gray also trips when its p95 exceeds this many times stable's; `None` = off.
    pub max_latency_ratio: Option<f64>,
    /// ... and exceeds this, so that a fast service's noise never trips it.
    pub min_latency: Duration,
}

/// `mirror:` of a service.
#[derive(Debug, Clone)]
pub struct Mirror {
    /// Index into the service's `pools` the copies go to.
    pub to: usize,
    /// `round(percent × 100)` of 10,000 buckets.
    pub threshold: u32,
    /// Only these methods are copied.
    pub methods: Vec<http::Method>,
    /// Copies in flight beyond this are dropped (and counted), never queued.
    pub max_in_flight: usize,
}

/// Header names propagated upstream.
#[derive(Debug, Clone)]
pub struct Propagate {
    /// Set to the pool used.
    pub pool_header: Option<HeaderName>,
    /// Set to the rule name or `default`.
    pub rule_header: Option<HeaderName>,
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
    /// The closes a reload causes are spread over this window after the grace, so that a
    /// large staff group does not reconnect at once.
    pub rehome_spread: Duration,
}

/// Names the rules compiler resolves `listener`, `service` and `route` against.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    /// Listener names in config order (index = listener id).
    pub listeners: Vec<String>,
    /// Service names in config order (index = service id).
    pub services: Vec<String>,
    /// Global pool names (index = `PoolId`).
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

#[cfg(test)]
mod tests {
    use super::raw::parse_duration;
    use super::*;
    use crate::markers::MarkerKind;

    const MIN: &str = crate::testing::MIN_CONFIG;

    fn load(src: &str) -> Result<Config, String> {
        Config::from_str(src, "g.yaml", Path::new("/etc/gl")).map_err(|e| e.to_string())
    }

    /// Every key of graylane.yaml, written as blocks, each with a bad value to put in its
    /// place (`# bad: ...`). Adding a key here without a bad value fails the test below.
    const EVERY_KEY: &str = "\
listeners:
  - name: im                             # bad: Bad Name
    bind: \"127.0.0.1:0\"                  # bad: nope
    trusted_cidrs:
      - \"10.0.0.0/8\"                     # bad: 10.0.0.0/99
    tls:
      cert: c.pem                        # bad: [1]
      key: k.pem                         # bad: [1]
admin:
  bind: \"127.0.0.1:9901\"                 # bad: nope
  token_file: null                       # bad: [1]
rules_file: rules.yaml                   # bad: [1]
shadow_rules_file: rules.next.yaml       # bad: [1]
services:
  - name: chat                           # bad: Bad Name
    match:
      host: a.example.com                # bad: [1]
      path_prefix: /chat                 # bad: chat
    pools:
      stable:
        endpoints:
          - \"127.0.0.1:1\"                # bad: nohostport
        retries: 1                       # bad: -1
        protocol: http1                  # bad: h3
        on_unavailable: fallback         # bad: explode
        lb: round_robin                  # bad: random
        resolve_interval: 30s            # bad: soon
      gray: { endpoints: [\"127.0.0.1:2\"] }   # bad: [1]
    health:
      path: /healthz                     # bad: [1]
      interval: 2s                       # bad: soon
      timeout: 1s                        # bad: 5
      healthy: 2                         # bad: -1
      unhealthy: 3                       # bad: lots
    vary_markers: false                  # bad: sometimes
    mirror:
      to: gray                           # bad: blue
      percent: 5                         # bad: 101
      methods:
        - GET                            # bad: \"G T\"
      max_in_flight: 64                  # bad: -1
    guard:
      max_error_rate: 0.05               # bad: 2.5
      min_requests: 50                   # bad: lots
      window: 30s                        # bad: soon
      cooldown: 120s                     # bad: 1d
      compare_to_stable: true            # bad: maybe
      confidence: 0.99                   # bad: 1.5
      max_latency_ratio: 5               # bad: 0.5
      min_latency: 50ms                  # bad: soon
propagate:
  pool_header: x-graylane-pool           # bad: bad header
  rule_header: x-graylane-rule           # bad: bad header
markers:
  uid:
    header: xdw-kefu-uid                 # bad: bad header
    cookie: xdw-kefu-uid                 # bad: [1]
    query: null                          # bad: [1]
timeouts:
  connect: 1s                            # bad: soon
  request_header: 10s                    # bad: soon
  upstream_response: 30s                 # bad: soon
  idle: 60s                              # bad: soon
  drain: 30s                             # bad: soon
  long_link_idle: null                   # bad: soon
limits:
  max_header_bytes: 65536                # bad: 100
  max_connections: 10000                 # bad: lots
long_links:
  rehome_grace: 30s                      # bad: soon
  rehome_spread: 10s                     # bad: soon
workers: 1                               # bad: lots
access_log:
  sample: 0.01                           # bad: 2
";

    /// A bad value anywhere, however deeply nested, is reported at its own line and
    /// column, naming its key: an error at the enclosing mapping sends ops to the wrong
    /// line.
    #[test]
    fn every_bad_value_is_reported_at_its_own_position() {
        let clean: Vec<(&str, Option<&str>)> = EVERY_KEY
            .lines()
            .map(|l| match l.split_once(" # bad: ") {
                Some((code, bad)) => (code.trim_end(), Some(bad.trim())),
                None => (l, None),
            })
            .collect();
        // The part of a line before its value: through `key: `, or through `- ` for a
        // sequence item that is a plain value.
        let prefix = |code: &str| -> usize {
            match code.find(": ") {
                Some(i) => i + 2,
                None => code.find("- ").map_or(code.len(), |i| i + 2),
            }
        };
        let text = |swap: Option<(usize, &str)>| {
            let mut out = String::new();
            for (i, (code, _)) in clean.iter().enumerate() {
                match swap {
                    Some((at, bad)) if at == i => {
                        out.push_str(&code[..prefix(code)]);
                        out.push_str(bad);
                    }
                    _ => out.push_str(code),
                }
                out.push('\n');
            }
            out
        };
        load(&text(None)).expect("the clean file is valid");
        let mut checked = 0;
        for (i, (code, bad)) in clean.iter().enumerate() {
            let scalar = Some(&code[prefix(code)..]).filter(|v| !v.is_empty());
            let Some(bad) = bad else {
                assert!(
                    scalar.is_none(),
                    "line {} has a value but no `# bad:`: {code}",
                    i + 1
                );
                continue;
            };
            let src = text(Some((i, bad)));
            let err = load(&src).expect_err(&format!("{bad:?} on line {} must be refused", i + 1));
            let col = prefix(code) + 1;
            let want = format!("g.yaml:{}:{col}: ", i + 1);
            assert!(
                err.starts_with(&want),
                "{bad:?} on line {}: want {want}..., got {err}",
                i + 1
            );
            let key = code
                .trim_start()
                .trim_start_matches("- ")
                .split(':')
                .next()
                .unwrap_or("");
            if code.contains(": ") {
                assert!(err.contains(key), "{err} should name {key}");
            }
            checked += 1;
        }
        assert!(checked >= 40, "checked {checked} keys");
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
