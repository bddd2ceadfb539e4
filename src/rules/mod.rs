//! `rules.yaml`: raw serde types, validation with `FILE:LINE:COLUMN` positions, and the
//! compiled [`RuleSet`] whose [`RuleSet::decide`] runs on every request.
//!
//! Everything that can be worked out ahead of time is, at compile time: pool, listener and
//! service names become indices, id lists become hash sets and merged range tables, header
//! names become [`HeaderName`]s, and `percent` keeps its `"{seed}:"` prefix as bytes. So
//! `decide()` is pure, allocation-free, and no lookup grows linearly with a list's size
//! (a rule with a million ids in an `in_file` costs one hash probe).
//!
//! - `raw`: the serde shape of `rules.yaml`.
//! - `compile`: validation with positions, and building the [`RuleSet`].
//! - `ids`: id sets and ranges, and `in_file` lists.
//! - `version`: `app_version` comparators.
//! - `percent`: sticky buckets for `percent`.

mod compile;
mod ids;
mod percent;
mod raw;
mod time;
mod version;

pub use compile::{compile, load, Compiled};
pub(crate) use percent::{percent_bucket, Share};

use std::fmt;

use http::HeaderName;

use crate::config::{PoolId, STABLE};
use crate::fields::Fields;
use crate::markers::{self, Device, Markers, Version};
use crate::routing::prefix_matches;
use ids::IdSet;
use percent::Percent;
use version::CmpOp;

/// The rule label of a request no rule matched, in metrics and the propagate header; no
/// rule may take this name, so the label is never ambiguous.
pub(crate) const DEFAULT_RULE: &str = "default";

// === compiled types ===

/// A compiled ruleset: immutable, shared by every request through one `ArcSwap`.
pub struct RuleSet {
    /// The file's `version:` label, for `/rules` and `graylane_rules_info`.
    version: Option<String>,
    /// In file order: the first match wins.
    rules: Box<[Rule]>,
    /// Some rule ramps (`percent` with `steps`): deciding needs the clock.
    ramps: bool,
}

struct Rule {
    name: Box<str>,
    route: PoolId,
    /// ANDed, cheapest first (the order does not change the result: conditions are pure).
    conds: Box<[Cond]>,
    /// `owner:`, shown where the rule is listed.
    owner: Option<Box<str>>,
    /// `expires:` as Unix ms: past it the rule still routes, but is reported.
    expires: Option<u64>,
    /// What the rule says, hashed (its YAML and the bytes of its `in_file`s), so a
    /// reload can name the rules it changed.
    fingerprint: u64,
}

/// A rule's `percent` share, for `/rules` and `graylane_rule_percent`.
#[derive(Debug, Clone)]
pub(crate) struct PercentRule<'a> {
    pub(crate) rule: &'a str,
    pub(crate) share: &'a Share,
}

/// A rule whose `expires:` has passed.
#[derive(Debug, Clone)]
pub(crate) struct ExpiredRule<'a> {
    pub(crate) rule: &'a str,
    pub(crate) owner: Option<&'a str>,
    /// Unix ms.
    pub(crate) expires: u64,
}

/// One compiled condition.
enum Cond {
    /// Indexed by listener id: O(1) whatever the list length.
    Listener(Box<[bool]>),
    /// Indexed by service id.
    Service(Box<[bool]>),
    /// `uid`, `staff_uid` or `entry_id`.
    Id(IdMarker, IdSet),
    /// True when any of the request's groups is in the set.
    AgentGid(IdSet),
    /// Every comparator must hold.
    AppVersion(Box<[(CmpOp, Version)]>),
    /// Sorted, lowercased.
    Device(Box<[Device]>),
    /// Segment-aware prefixes; lists are short, so a scan.
    PathPrefix(Box<[Box<str>]>),
    /// Each field's first value must be one of its values.
    Header(Box<[Field<HeaderName, Box<[u8]>>]>),
    /// Each cookie's first value must be one of its values.
    Cookie(Box<[Field<Box<str>, Box<str>>]>),
    /// `bucket < threshold`.
    Percent(Percent),
}

/// One `header:` or `cookie:` entry: a name and its allowed values, sorted for binary
/// search.
struct Field<N, V> {
    name: N,
    values: Box<[V]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdMarker {
    Uid,
    StaffUid,
    EntryId,
}

impl IdMarker {
    fn get(self, m: &Markers) -> Option<u64> {
        match self {
            IdMarker::Uid => m.uid,
            IdMarker::StaffUid => m.staff_uid,
            IdMarker::EntryId => m.entry_id,
        }
    }
}

// === impl RuleSet ===

/// What one request sees of the world when rules decide.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// Its markers; [`Markers::default()`] for an untrusted peer.
    pub markers: &'a Markers,
    /// Index of the listener it came in on, in config order.
    pub listener: usize,
    /// Index of the service it addresses, in config order.
    pub service: usize,
    /// The raw path (with query), as `path_prefix` matches it.
    pub path: &'a str,
    /// Its headers, for `header:` and `cookie:` conditions.
    pub headers: Fields<'a>,
    /// The Unix ms a ramp reads its step at (see [`RuleSet::has_ramps`]; 0 is fine
    /// without ramps).
    pub now_ms: u64,
}

/// Where a request goes and why, so metrics and the propagate header can name the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The pool the rules chose (before any fallback).
    pub pool: PoolId,
    /// Index of the matching rule; `None` = no rule matched (the `default` label).
    pub rule: Option<usize>,
}

impl RuleSet {
    /// No rules: everything goes to stable. What the proxy holds before the first load in
    /// tests and tools.
    pub fn empty() -> RuleSet {
        RuleSet {
            version: None,
            rules: Box::new([]),
            ramps: false,
        }
    }

    /// The rules' verdict for one request: the first rule whose conditions all hold,
    /// else stable. Pure and allocation-free, so it is safe to call again for a long
    /// link after a reload to see whether its decision changed.
    pub fn decide(&self, req: &RequestInfo<'_>) -> Decision {
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.conds.iter().all(|c| c.holds(req)) {
                return Decision {
                    pool: rule.route,
                    rule: Some(i),
                };
            }
        }
        Decision {
            pool: STABLE,
            rule: None,
        }
    }

    /// The file's `version:` label, if it has one.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// Number of rules, for `/rules`.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// No rules at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The name of rule `idx` for labels; `DEFAULT_RULE` for an index this ruleset
    /// does not have, so a stale index can never panic a request.
    pub fn rule_name(&self, idx: usize) -> &str {
        self.rules.get(idx).map_or(DEFAULT_RULE, |r| &r.name)
    }

    /// Whether some rule ramps, so that a caller reads the clock for `now_ms` only then.
    pub fn has_ramps(&self) -> bool {
        self.ramps
    }

    /// Every rule with a `percent` condition, in order.
    pub(crate) fn percents(&self) -> impl Iterator<Item = PercentRule<'_>> {
        self.rules.iter().filter_map(|r| {
            r.conds.iter().find_map(|c| match c {
                Cond::Percent(p) => Some(PercentRule {
                    rule: &r.name,
                    share: p.share(),
                }),
                _ => None,
            })
        })
    }

    /// Rules with an `expires:`, with whether it has passed at Unix ms `now`.
    pub(crate) fn expiring(&self, now: u64) -> impl Iterator<Item = (ExpiredRule<'_>, bool)> {
        self.rules.iter().filter_map(move |r| {
            let expires = r.expires?;
            let rule = ExpiredRule {
                rule: &r.name,
                owner: r.owner.as_deref(),
                expires,
            };
            Some((rule, now >= expires))
        })
    }

    /// One line per rule whose `expires:` has passed at `now`, for `graylane check` and
    /// the reload log: it still routes, and someone has to remove or renew it.
    pub fn expiry_warnings(&self, now: std::time::SystemTime) -> Vec<String> {
        let now = crate::unix_ms(now);
        self.expiring(now)
            .filter(|(_, expired)| *expired)
            .map(|(r, _)| {
                format!(
                    "rule {} expired at {} and still routes (owner: {}); remove or renew it",
                    r.rule,
                    crate::rfc3339_ms(r.expires),
                    r.owner.unwrap_or("-")
                )
            })
            .collect()
    }

    /// Each rule's name and fingerprint, to tell a reload's added, removed and changed
    /// rules.
    pub(crate) fn fingerprints(&self) -> impl Iterator<Item = (&str, u64)> {
        self.rules.iter().map(|r| (&*r.name, r.fingerprint))
    }

    /// Each rule's name and the pool it routes to, in order, for the status page.
    pub(crate) fn routes(&self) -> impl Iterator<Item = (&str, PoolId)> {
        self.rules.iter().map(|r| (&*r.name, r.route))
    }

    /// Every rule name in order, so metrics can pre-resolve `rule_hits_total` children.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.name)
    }
}

impl Default for RuleSet {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the conditions: an id set may hold a million entries.
        f.debug_struct("RuleSet")
            .field("version", &self.version)
            .field("rules", &self.rule_names().collect::<Vec<_>>())
            .finish()
    }
}

impl Cond {
    /// Rough cost, to evaluate cheap conditions first within a rule.
    fn cost(&self) -> u8 {
        match self {
            Cond::Listener(_) | Cond::Service(_) => 0,
            Cond::Id(..) | Cond::AppVersion(_) | Cond::Device(_) => 1,
            Cond::AgentGid(_) | Cond::PathPrefix(_) => 2,
            Cond::Header(_) => 3,
            Cond::Percent(_) => 4,
            // Scans every Cookie header.
            Cond::Cookie(_) => 5,
        }
    }

    fn holds(&self, req: &RequestInfo<'_>) -> bool {
        let m = req.markers;
        match self {
            Cond::Listener(on) => on.get(req.listener).copied().unwrap_or(false),
            Cond::Service(on) => on.get(req.service).copied().unwrap_or(false),
            Cond::Id(which, set) => which.get(m).is_some_and(|id| set.contains(id)),
            Cond::AgentGid(set) => m.agent_gid.as_slice().iter().any(|&g| set.contains(g)),
            Cond::AppVersion(cmps) => m
                .app_version
                .is_some_and(|v| cmps.iter().all(|(op, w)| op.holds(v.cmp(w)))),
            Cond::Device(names) => m.device.is_some_and(|d| names.binary_search(&d).is_ok()),
            Cond::PathPrefix(ps) => ps.iter().any(|p| prefix_matches(p, req.path)),
            Cond::Header(fields) => fields.iter().all(|f| {
                req.headers
                    .get(&f.name)
                    .is_some_and(|v| f.values.binary_search_by(|x| (**x).cmp(v)).is_ok())
            }),
            Cond::Cookie(fields) => fields.iter().all(|f| {
                markers::cookie(req.headers, &f.name)
                    .is_some_and(|v| f.values.binary_search_by(|x| (**x).cmp(v)).is_ok())
            }),
            Cond::Percent(p) => p.holds(m, req.now_ms),
        }
    }
}

#[cfg(test)]
mod tests;
