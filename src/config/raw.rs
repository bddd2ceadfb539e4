//! The raw serde shape of `graylane.yaml`: unknown keys are errors, defaults are SPEC §3's.
//! Values that need more than a type check are validated in `validate`, where the field
//! path and its position are known.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) listeners: Vec<RawListener>,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    pub(super) rules_file: String,
    #[serde(default)]
    pub(super) shadow_rules_file: Option<String>,
    pub(super) services: Vec<RawService>,
    #[serde(default)]
    pub(super) propagate: RawPropagate,
    #[serde(default)]
    pub(super) markers: BTreeMap<String, RawMarkerSource>,
    #[serde(default)]
    pub(super) timeouts: RawTimeouts,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) long_links: RawLongLinks,
    #[serde(default)]
    pub(super) workers: Option<usize>,
    #[serde(default)]
    pub(super) access_log: RawAccessLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccessLog {
    #[serde(default)]
    pub(super) sample: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) name: String,
    pub(super) bind: String,
    #[serde(default)]
    pub(super) trusted_cidrs: Option<Vec<String>>,
    #[serde(default)]
    pub(super) tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: String,
    pub(super) key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    #[serde(default = "default_admin_bind")]
    pub(super) bind: String,
    #[serde(default)]
    pub(super) token_file: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            bind: default_admin_bind(),
            token_file: None,
        }
    }
}

pub(super) fn default_admin_bind() -> String {
    "127.0.0.1:9901".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: String,
    #[serde(default, rename = "match")]
    pub(super) matcher: RawMatch,
    pub(super) pools: BTreeMap<String, RawPool>,
    #[serde(default)]
    pub(super) health: Option<RawHealth>,
    #[serde(default)]
    pub(super) guard: Option<RawGuard>,
    #[serde(default)]
    pub(super) vary_markers: bool,
    #[serde(default)]
    pub(super) mirror: Option<RawMirror>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMirror {
    pub(super) to: String,
    pub(super) percent: f64,
    #[serde(default = "mirror_methods")]
    pub(super) methods: Vec<String>,
    #[serde(default = "sixty_four")]
    pub(super) max_in_flight: usize,
}

pub(super) fn mirror_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}
pub(super) fn sixty_four() -> usize {
    64
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMatch {
    #[serde(default)]
    pub(super) host: Option<String>,
    #[serde(default)]
    pub(super) path_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub(super) endpoints: Vec<String>,
    #[serde(default)]
    pub(super) retries: Option<u32>,
    #[serde(default)]
    pub(super) protocol: Option<String>,
    #[serde(default)]
    pub(super) on_unavailable: Option<String>,
    #[serde(default)]
    pub(super) lb: Option<String>,
    #[serde(default)]
    pub(super) resolve_interval: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    #[serde(default = "healthz")]
    pub(super) path: String,
    #[serde(default = "d2s")]
    pub(super) interval: Dur,
    #[serde(default = "d1s")]
    pub(super) timeout: Dur,
    #[serde(default = "two")]
    pub(super) healthy: u32,
    #[serde(default = "three")]
    pub(super) unhealthy: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGuard {
    #[serde(default = "five_percent")]
    pub(super) max_error_rate: f64,
    #[serde(default = "fifty")]
    pub(super) min_requests: u64,
    #[serde(default = "d30s")]
    pub(super) window: Dur,
    #[serde(default = "d120s")]
    pub(super) cooldown: Dur,
    #[serde(default = "yes")]
    pub(super) compare_to_stable: bool,
    #[serde(default = "ninety_nine_percent")]
    pub(super) confidence: f64,
    #[serde(default)]
    pub(super) max_latency_ratio: Option<f64>,
    #[serde(default = "d50ms")]
    pub(super) min_latency: Dur,
}

pub(super) fn d50ms() -> Dur {
    Dur(Some(Duration::from_millis(50)))
}
pub(super) fn yes() -> bool {
    true
}
pub(super) fn ninety_nine_percent() -> f64 {
    0.99
}
pub(super) fn d1s() -> Dur {
    Dur(Some(Duration::from_secs(1)))
}
pub(super) fn d2s() -> Dur {
    Dur(Some(Duration::from_secs(2)))
}
pub(super) fn d30s() -> Dur {
    Dur(Some(Duration::from_secs(30)))
}
pub(super) fn d120s() -> Dur {
    Dur(Some(Duration::from_secs(120)))
}
pub(super) fn two() -> u32 {
    2
}
pub(super) fn three() -> u32 {
    3
}
pub(super) fn fifty() -> u64 {
    50
}
pub(super) fn healthz() -> String {
    "/healthz".into()
}
pub(super) fn five_percent() -> f64 {
    0.05
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPropagate {
    #[serde(default = "default_pool_header", deserialize_with = "nullable")]
    pub(super) pool_header: Option<String>,
    #[serde(default = "default_rule_header", deserialize_with = "nullable")]
    pub(super) rule_header: Option<String>,
}

impl Default for RawPropagate {
    fn default() -> Self {
        Self {
            pool_header: default_pool_header(),
            rule_header: default_rule_header(),
        }
    }
}

pub(super) fn default_pool_header() -> Option<String> {
    Some("x-graylane-pool".to_owned())
}
pub(super) fn default_rule_header() -> Option<String> {
    Some("x-graylane-rule".to_owned())
}

/// Each source: key absent = the default name, `null` = off.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMarkerSource {
    #[serde(default, deserialize_with = "double_option")]
    pub(super) header: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(super) cookie: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub(super) query: Option<Option<String>>,
}

pub(super) fn double_option<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

pub(super) fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    #[serde(default = "d1s")]
    pub(super) connect: Dur,
    #[serde(default = "d10s")]
    pub(super) request_header: Dur,
    #[serde(default = "d30s")]
    pub(super) upstream_response: Dur,
    #[serde(default = "d60s")]
    pub(super) idle: Dur,
    #[serde(default = "d30s")]
    pub(super) drain: Dur,
    #[serde(default)]
    pub(super) long_link_idle: Dur,
}

pub(super) fn d10s() -> Dur {
    Dur(Some(Duration::from_secs(10)))
}
pub(super) fn d60s() -> Dur {
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
pub(super) struct RawLimits {
    #[serde(default = "default_max_header_bytes")]
    pub(super) max_header_bytes: usize,
    #[serde(default = "default_max_connections")]
    pub(super) max_connections: usize,
}

pub(super) fn default_max_header_bytes() -> usize {
    65536
}
pub(super) fn default_max_connections() -> usize {
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
pub(super) struct RawLongLinks {
    #[serde(default = "d30s")]
    pub(super) rehome_grace: Dur,
    #[serde(default = "d10s")]
    pub(super) rehome_spread: Dur,
}

impl Default for RawLongLinks {
    fn default() -> Self {
        Self {
            rehome_grace: d30s(),
            rehome_spread: d10s(),
        }
    }
}

/// A duration as ops write it: `250ms`, `1s`, `2m`, `1h`, or a bare `0`; `null` is `None`.
///
/// Read by a visitor rather than an untagged enum: an untagged enum buffers the value
/// first, and serde_yaml then reports a bad duration at the start of the enclosing
/// mapping instead of at the value itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Dur(pub(super) Option<Duration>);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DurVisitor;

        impl<'de> serde::de::Visitor<'de> for DurVisitor {
            type Value = Dur;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as 250ms, 1s, 2m, 1h, or 0")
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Dur, E> {
                Ok(Dur(None))
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<Dur, E> {
                Ok(Dur(None))
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Dur, D::Error> {
                d.deserialize_any(self)
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Dur, E> {
                if n == 0 {
                    Ok(Dur(Some(Duration::ZERO)))
                } else {
                    Err(E::custom(format!(
                        "duration {n} needs a unit: ms, s, m or h"
                    )))
                }
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Dur, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!(
                        "invalid duration {n}: must not be negative"
                    ))),
                }
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Dur, E> {
                parse_duration(s).map(|d| Dur(Some(d))).map_err(E::custom)
            }
        }

        d.deserialize_any(DurVisitor)
    }
}

/// Parses `250ms`, `1s`, `2m`, `1h` (and `0`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
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
