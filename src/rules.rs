//! `rules.yaml`: raw serde types, validation with `FILE:LINE:COLUMN` positions, and the
//! compiled [`RuleSet`] whose [`RuleSet::decide`] runs on every request.
//!
//! Everything that can be worked out ahead of time is, at compile time: pool, listener and
//! service names become indices, id lists become hash sets and merged range tables, header
//! names become [`HeaderName`]s, and `percent` keeps its `"{seed}:"` prefix as bytes. So
//! `decide()` is pure, allocation-free, and no lookup grows linearly with a list's size
//! (a rule with a million ids in an `in_file` costs one hash probe).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use http::{HeaderMap, HeaderName};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

use crate::config::yamlpos::{LocatedError, Pos, PosIndex, YamlPath};
use crate::config::{PoolId, Topology, GRAY, STABLE};
use crate::markers::{self, Device, MarkerKind, Markers, Version};
use crate::routing::prefix_matches;

/// The rule label of a request no rule matched, in metrics and the propagate header; no
/// rule may take this name, so the label is never ambiguous.
pub const DEFAULT_RULE: &str = "default";

/// Where errors about the file as a whole point.
const FILE_START: Pos = Pos { line: 1, col: 1 };

/// Buckets per `percent` condition: P% with two decimals is `round(P×100)` buckets.
const BUCKETS: u64 = 10_000;

// === raw types ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default)]
    version: Option<String>,
    /// Required, even when empty: a file truncated to nothing mid-write must not compile
    /// into "everything to stable".
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    when: Option<RawWhen>,
    route: String,
}

/// Every condition rejects `null` (`uid:` with nothing after it): silently dropping the
/// condition would widen the rule to everyone.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWhen {
    #[serde(default, deserialize_with = "present")]
    uid: Nullable<RawIds>,
    #[serde(default, deserialize_with = "present")]
    staff_uid: Nullable<RawIds>,
    #[serde(default, deserialize_with = "present")]
    agent_gid: Nullable<RawGids>,
    #[serde(default, deserialize_with = "present")]
    entry_id: Nullable<RawIds>,
    #[serde(default, deserialize_with = "present")]
    app_version: Nullable<String>,
    #[serde(default, deserialize_with = "present")]
    device: Nullable<RawIn>,
    #[serde(default, deserialize_with = "present")]
    listener: Nullable<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    service: Nullable<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    path_prefix: Nullable<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    header: Nullable<BTreeMap<String, RawIn>>,
    #[serde(default, deserialize_with = "present")]
    cookie: Nullable<BTreeMap<String, RawIn>>,
    #[serde(default, deserialize_with = "present")]
    percent: Nullable<RawPercent>,
}

/// `None`: key absent; `Some(None)`: key present with `null`, rejected in validation,
/// where the message can name the condition.
type Nullable<T> = Option<Option<T>>;

fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Nullable<T>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { in: [ids], ranges: [\"lo-hi\"], in_file: path }"
)]
struct RawIds {
    #[serde(default, rename = "in")]
    ids: Vec<Id>,
    #[serde(default)]
    ranges: Vec<String>,
    #[serde(default)]
    in_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { any: [ids], ranges: [\"lo-hi\"], in_file: path }"
)]
struct RawGids {
    #[serde(default)]
    any: Vec<Id>,
    #[serde(default)]
    ranges: Vec<String>,
    #[serde(default)]
    in_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping like { in: [values] }")]
struct RawIn {
    #[serde(rename = "in")]
    values: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { of: uid, value: 20, seed: name }"
)]
struct RawPercent {
    of: String,
    value: f64,
    #[serde(default)]
    seed: Option<String>,
}

/// An id in a YAML list: a plain number, or a quoted string of digits (ops copy ids from
/// spreadsheets that quote them).
#[derive(Debug, Clone, Copy)]
struct Id(u64);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an id (decimal digits fitting u64)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id(v))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Id, E> {
                u64::try_from(v)
                    .map(Id)
                    .map_err(|_| E::custom(format!("invalid id {v}: does not fit u64")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                u64::try_from(v)
                    .map(Id)
                    .map_err(|_| E::custom(format!("invalid id {v}: ids are unsigned")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                markers::parse_u64(v.trim().as_bytes())
                    .map(Id)
                    .ok_or_else(|| {
                        E::custom(format!(
                            "invalid id {v:?}: expected decimal digits fitting u64"
                        ))
                    })
            }
        }
        d.deserialize_any(V)
    }
}

// === compiled types ===

/// A compiled ruleset: immutable, shared by every request through one `ArcSwap`.
pub struct RuleSet {
    /// The file's `version:` label, for `/rules` and `graylane_rules_info`.
    version: Option<String>,
    /// In file order: the first match wins.
    rules: Box<[Rule]>,
}

struct Rule {
    name: Box<str>,
    route: PoolId,
    /// ANDed, cheapest first (the order does not change the result: conditions are pure).
    conds: Box<[Cond]>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    fn holds(self, ord: Ordering) -> bool {
        match self {
            CmpOp::Eq => ord == Ordering::Equal,
            CmpOp::Ne => ord != Ordering::Equal,
            CmpOp::Gt => ord == Ordering::Greater,
            CmpOp::Ge => ord != Ordering::Less,
            CmpOp::Lt => ord == Ordering::Less,
            CmpOp::Le => ord != Ordering::Greater,
        }
    }
}

struct Percent {
    of: PercentOf,
    /// `"{seed}:"` as bytes, so `decide()` only appends the key.
    prefix: Box<[u8]>,
    /// `round(P×100)`: 0 matches no one, 10000 everyone with the marker.
    threshold: u32,
}

/// The markers a percentage may bucket by: a single id or name (not a list, not a
/// version), so that a user's bucket never changes while their marker does not.
#[derive(Clone, Copy)]
enum PercentOf {
    Uid,
    StaffUid,
    EntryId,
    Device,
}

/// Ids as a hash set plus sorted, merged inclusive ranges: one probe and one binary
/// search, whatever the list sizes.
struct IdSet {
    ids: Ids,
    ranges: Box<[(u64, u64)]>,
}

enum Ids {
    /// A scan beats hashing for the handful of ids most rules list.
    Small(Box<[u64]>),
    Hashed(HashSet<u64, BuildHasherDefault<IdHasher>>),
}

/// Ids below this count are scanned rather than hashed.
const SMALL_IDS: usize = 16;

impl IdSet {
    fn new(mut ids: Vec<u64>, mut ranges: Vec<(u64, u64)>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        let ranges = merged.into_boxed_slice();
        ids.retain(|&id| !in_ranges(&ranges, id));
        let ids = if ids.len() <= SMALL_IDS {
            ids.sort_unstable();
            ids.dedup();
            Ids::Small(ids.into_boxed_slice())
        } else {
            let mut set = HashSet::with_capacity_and_hasher(ids.len(), Default::default());
            set.extend(ids);
            Ids::Hashed(set)
        };
        IdSet { ids, ranges }
    }

    fn contains(&self, id: u64) -> bool {
        let listed = match &self.ids {
            Ids::Small(v) => v.contains(&id),
            Ids::Hashed(s) => s.contains(&id),
        };
        listed || in_ranges(&self.ranges, id)
    }
}

fn in_ranges(ranges: &[(u64, u64)], id: u64) -> bool {
    let i = ranges.partition_point(|r| r.0 <= id);
    i > 0 && ranges[i - 1].1 >= id
}

/// MurmurHash3's 64-bit finaliser. The ids are inserted from the trusted rules file, so a
/// request cannot grow or skew the table and SipHash's flood resistance buys nothing on
/// lookup; this is a few cycles instead of ~20 ns, and still mixes sequential or aligned
/// ids well across hashbrown's buckets and control bits.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = fmix64(self.0.rotate_left(8) ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = fmix64(n);
    }
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
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
    pub headers: &'a HeaderMap,
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

    /// The name of rule `idx` for labels; [`DEFAULT_RULE`] for an index this ruleset
    /// does not have, so a stale index can never panic a request.
    pub fn rule_name(&self, idx: usize) -> &str {
        self.rules.get(idx).map_or(DEFAULT_RULE, |r| &r.name)
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
                req.headers.get(&f.name).is_some_and(|v| {
                    f.values
                        .binary_search_by(|x| (**x).cmp(v.as_bytes()))
                        .is_ok()
                })
            }),
            Cond::Cookie(fields) => fields.iter().all(|f| {
                markers::cookie(req.headers, &f.name)
                    .is_some_and(|v| f.values.binary_search_by(|x| (**x).cmp(v)).is_ok())
            }),
            Cond::Percent(p) => p.holds(m),
        }
    }
}

impl Percent {
    fn holds(&self, m: &Markers) -> bool {
        let mut digits = [0u8; 20];
        let key: Option<&[u8]> = match self.of {
            PercentOf::Uid => m.uid.map(|id| itoa(id, &mut digits)),
            PercentOf::StaffUid => m.staff_uid.map(|id| itoa(id, &mut digits)),
            PercentOf::EntryId => m.entry_id.map(|id| itoa(id, &mut digits)),
            PercentOf::Device => m.device.as_ref().map(|d| d.as_str().as_bytes()),
        };
        let Some(key) = key else {
            return false;
        };
        if u64::from(self.threshold) >= BUCKETS {
            return true;
        }
        bucket(&self.prefix, key) < self.threshold
    }
}

/// The bucket of `"{seed}:{key}"` (SPEC §2 `percent`): every graylane instance and every
/// offline tool must agree on it, so it is spelled out here as the reference that the
/// allocation-free path in `decide()` is tested against.
pub fn percent_bucket(seed: &str, key: &str) -> u32 {
    let h = xxh3_64(format!("{seed}:{key}").as_bytes());
    (h % BUCKETS) as u32
}

/// `percent_bucket` from a precomputed `"{seed}:"` prefix, on the stack.
fn bucket(prefix: &[u8], key: &[u8]) -> u32 {
    const STACK: usize = 128;
    let n = prefix.len() + key.len();
    let h = if n <= STACK {
        let mut buf = [0u8; STACK];
        buf[..prefix.len()].copy_from_slice(prefix);
        buf[prefix.len()..n].copy_from_slice(key);
        xxh3_64(&buf[..n])
    } else {
        // A long seed: xxh3's streaming state lives on the stack too.
        let mut s = Xxh3Default::new();
        s.update(prefix);
        s.update(key);
        s.digest()
    };
    (h % BUCKETS) as u32
}

/// Decimal digits of `n`, without leading zeros, into `buf`.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

// === compile ===

/// A compiled ruleset with what the reloader needs besides it.
#[derive(Debug)]
pub struct Compiled {
    /// The rules.
    pub rules: RuleSet,
    /// Lowercase hex SHA-256 of the rules bytes followed by the bytes of each distinct
    /// `in_file` in order of first mention: `/rules` shows it, and a reload with the same
    /// hash is `unchanged`.
    pub sha256: String,
    /// Files the watcher must watch: from [`load`], the rules file first, then every
    /// distinct `in_file` (resolved); from [`compile`], only the `in_file`s (it has no
    /// rules file path).
    pub files: Vec<PathBuf>,
}

/// Reads the rules file (and its `in_file`s) and compiles it. `display` is the file name
/// as configured, used in errors; `in_file` paths resolve against `path`'s directory.
///
/// Rejected, as `display:LINE:COLUMN: message` at the offending key or value: YAML and
/// type errors, unknown keys or markers, a duplicate, reserved (`default`) or malformed
/// rule name, a `route` no service defines, a `listener` or `service` name the config
/// does not define (such a condition could never hold, which is always a typo),
/// `lo > hi`, a bad comparator, a bad `percent`, an invalid device name, header or
/// cookie name, and a missing, unreadable or malformed `in_file` (at the `in_file:` value,
/// the message naming the file's line). An unreadable rules file is reported at 1:1.
pub fn load(path: &Path, display: &str, topo: &Topology) -> Result<Compiled, LocatedError> {
    let src = std::fs::read(path)
        .map_err(|e| LocatedError::new(display, FILE_START, format!("cannot read: {e}")))?;
    let src = String::from_utf8(src).map_err(|e| {
        LocatedError::new(
            display,
            FILE_START,
            format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        )
    })?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let mut c = compile(&src, display, dir, topo)?;
    c.files.insert(0, path.to_path_buf());
    Ok(c)
}

/// Compiles rules from text, with `in_file` paths resolved against `dir`; see [`load`]
/// for what is rejected.
pub fn compile(
    src: &str,
    display: &str,
    dir: &Path,
    topo: &Topology,
) -> Result<Compiled, LocatedError> {
    if src.trim().is_empty() {
        return Err(LocatedError::new(
            display,
            FILE_START,
            "empty rules file: expected a `rules:` list (`rules: []` sends everything to stable)",
        ));
    }
    let raw: RawRules =
        serde_yaml::from_str(src).map_err(|e| LocatedError::from_serde(display, &e))?;
    let mut c = Compiler {
        dir,
        topo,
        files: HashMap::new(),
        mentions: Vec::new(),
    };
    let rules = match c.rules(raw) {
        Ok(r) => r,
        // Positions are only needed on failure: index the document then.
        Err(e) => return Err(e.locate(display, &PosIndex::new(src))),
    };

    // Distinct in_files in order of first mention in the text: the struct fields were
    // visited in declaration order, not text order, so sort by position when it matters.
    let mut mentions = std::mem::take(&mut c.mentions);
    let distinct: HashSet<&PathBuf> = mentions.iter().map(|(_, p)| p).collect();
    if distinct.len() > 1 {
        let idx = PosIndex::new(src);
        mentions.sort_by_key(|(p, _)| {
            let pos = idx.value(p);
            (pos.line, pos.col)
        });
    }
    let mut files: Vec<PathBuf> = Vec::new();
    let mut hasher = Sha256::new();
    hasher.update(src.as_bytes());
    for (_, path) in mentions {
        if files.contains(&path) {
            continue;
        }
        if let Some(Ok(f)) = c.files.get(&path) {
            hasher.update(&f.bytes);
        }
        files.push(path);
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Compiled {
        rules,
        sha256,
        files,
    })
}

/// A validation error before it has a position: positions are looked up only when
/// something failed.
#[derive(Debug)]
struct VErr {
    path: YamlPath,
    /// The key rather than the value is the offending place (an unknown header name).
    at_key: bool,
    message: String,
}

impl VErr {
    fn value(path: &YamlPath, message: impl Into<String>) -> Self {
        Self {
            path: path.clone(),
            at_key: false,
            message: message.into(),
        }
    }

    fn key(path: &YamlPath, message: impl Into<String>) -> Self {
        Self {
            path: path.clone(),
            at_key: true,
            message: message.into(),
        }
    }

    fn locate(self, file: &str, idx: &PosIndex) -> LocatedError {
        let pos = if self.at_key {
            idx.key(&self.path)
        } else {
            idx.value(&self.path)
        };
        LocatedError::new(file, pos, format!("{}: {}", self.path, self.message))
    }
}

type CResult<T> = Result<T, VErr>;

/// Ids and inclusive ranges, as listed.
type IdLists = (Vec<u64>, Vec<(u64, u64)>);

/// One parsed `in_file`, shared by every condition naming it.
struct InFile {
    bytes: Vec<u8>,
    ids: Vec<u64>,
    ranges: Vec<(u64, u64)>,
}

struct Compiler<'a> {
    dir: &'a Path,
    topo: &'a Topology,
    /// Each distinct resolved path, read and parsed once (or why it failed).
    files: HashMap<PathBuf, Result<Rc<InFile>, String>>,
    /// Every `in_file:` value's path in the document, with the file it names.
    mentions: Vec<(YamlPath, PathBuf)>,
}

impl Compiler<'_> {
    fn rules(&mut self, raw: RawRules) -> CResult<RuleSet> {
        let root = YamlPath::root();
        let mut names: HashSet<String> = HashSet::new();
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, r) in raw.rules.into_iter().enumerate() {
            let p = root.key("rules").index(i);
            check_rule_name(&r.name).map_err(|m| VErr::value(&p.key("name"), m))?;
            if !names.insert(r.name.clone()) {
                return Err(VErr::value(
                    &p.key("name"),
                    format!("duplicate rule name {:?}", r.name),
                ));
            }
            let route = self.pool(&p.key("route"), &r.route)?;
            let mut conds = match r.when {
                None => Vec::new(),
                Some(w) => self.when(&p.key("when"), w, &r.name)?,
            };
            conds.sort_by_key(Cond::cost);
            rules.push(Rule {
                name: r.name.into(),
                route,
                conds: conds.into_boxed_slice(),
            });
        }
        Ok(RuleSet {
            version: raw.version,
            rules: rules.into_boxed_slice(),
        })
    }

    fn pool(&self, p: &YamlPath, name: &str) -> CResult<PoolId> {
        match name {
            "stable" => return Ok(STABLE),
            "gray" => return Ok(GRAY),
            _ => {}
        }
        self.topo
            .pools
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| {
                let mut known: Vec<&str> = vec!["stable", "gray"];
                known.extend(
                    self.topo
                        .pools
                        .iter()
                        .map(String::as_str)
                        .filter(|n| *n != "stable" && *n != "gray"),
                );
                VErr::value(
                    p,
                    format!(
                        "unknown pool {name:?}: no service defines it (pools: {})",
                        known.join(", ")
                    ),
                )
            })
    }

    fn when(&mut self, p: &YamlPath, w: RawWhen, rule: &str) -> CResult<Vec<Cond>> {
        let mut conds = Vec::new();
        for (key, which, raw) in [
            ("uid", IdMarker::Uid, w.uid),
            ("staff_uid", IdMarker::StaffUid, w.staff_uid),
            ("entry_id", IdMarker::EntryId, w.entry_id),
        ] {
            if let Some(r) = not_null(p, key, raw)? {
                let set = self.id_set(&p.key(key), r.ids, r.ranges, r.in_file)?;
                conds.push(Cond::Id(which, set));
            }
        }
        if let Some(r) = not_null(p, "agent_gid", w.agent_gid)? {
            let set = self.id_set(&p.key("agent_gid"), r.any, r.ranges, r.in_file)?;
            conds.push(Cond::AgentGid(set));
        }
        if let Some(v) = not_null(p, "app_version", w.app_version)? {
            let cmps = parse_version_req(&v).map_err(|m| VErr::value(&p.key("app_version"), m))?;
            conds.push(Cond::AppVersion(cmps));
        }
        if let Some(d) = not_null(p, "device", w.device)? {
            let dp = p.key("device").key("in");
            if d.values.is_empty() {
                return Err(VErr::value(
                    &dp,
                    "`in` lists no devices: the rule could never match",
                ));
            }
            let mut names = Vec::with_capacity(d.values.len());
            for (i, v) in d.values.iter().enumerate() {
                let dev = Device::parse(v).ok_or_else(|| {
                    VErr::value(
                        &dp.index(i),
                        format!("invalid device {v:?}: expected 1-64 printable ASCII characters"),
                    )
                })?;
                names.push(dev);
            }
            names.sort_unstable();
            names.dedup();
            conds.push(Cond::Device(names.into_boxed_slice()));
        }
        if let Some(list) = not_null(p, "listener", w.listener)? {
            let on = self.names(&p.key("listener"), "listener", &list, &self.topo.listeners)?;
            conds.push(Cond::Listener(on));
        }
        if let Some(list) = not_null(p, "service", w.service)? {
            let on = self.names(&p.key("service"), "service", &list, &self.topo.services)?;
            conds.push(Cond::Service(on));
        }
        if let Some(list) = not_null(p, "path_prefix", w.path_prefix)? {
            for (i, pp) in list.iter().enumerate() {
                if !pp.starts_with('/') {
                    return Err(VErr::value(
                        &p.key("path_prefix").index(i),
                        format!("path_prefix {pp:?} must start with /"),
                    ));
                }
            }
            conds.push(Cond::PathPrefix(
                list.into_iter().map(String::into_boxed_str).collect(),
            ));
        }
        if let Some(fields) = not_null(p, "header", w.header)? {
            let hp = p.key("header");
            let mut out = Vec::with_capacity(fields.len());
            for (name, r) in fields {
                let hn = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
                    .map_err(|_| {
                        VErr::key(&hp.key(&name), format!("invalid header name {name:?}"))
                    })?;
                if r.values.is_empty() {
                    return Err(VErr::value(
                        &hp.key(&name).key("in"),
                        "`in` lists no values: the rule could never match",
                    ));
                }
                let mut values: Vec<Box<[u8]>> = r
                    .values
                    .into_iter()
                    .map(|v| v.into_bytes().into_boxed_slice())
                    .collect();
                values.sort_unstable();
                values.dedup();
                out.push(Field {
                    name: hn,
                    values: values.into_boxed_slice(),
                });
            }
            conds.push(Cond::Header(out.into_boxed_slice()));
        }
        if let Some(fields) = not_null(p, "cookie", w.cookie)? {
            let cp = p.key("cookie");
            let mut out = Vec::with_capacity(fields.len());
            for (name, r) in fields {
                let ok = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b";=,\"".contains(&b));
                if !ok {
                    return Err(VErr::key(
                        &cp.key(&name),
                        format!("invalid cookie name {name:?}"),
                    ));
                }
                if r.values.is_empty() {
                    return Err(VErr::value(
                        &cp.key(&name).key("in"),
                        "`in` lists no values: the rule could never match",
                    ));
                }
                let mut values: Vec<Box<str>> =
                    r.values.into_iter().map(String::into_boxed_str).collect();
                values.sort_unstable();
                values.dedup();
                out.push(Field {
                    name: name.into_boxed_str(),
                    values: values.into_boxed_slice(),
                });
            }
            conds.push(Cond::Cookie(out.into_boxed_slice()));
        }
        if let Some(pc) = not_null(p, "percent", w.percent)? {
            conds.push(Cond::Percent(percent(&p.key("percent"), pc, rule)?));
        }
        Ok(conds)
    }

    /// Resolves `listener:` / `service:` names to a table indexed by id.
    fn names(
        &self,
        p: &YamlPath,
        what: &str,
        list: &[String],
        known: &[String],
    ) -> CResult<Box<[bool]>> {
        let mut on = vec![false; known.len()];
        for (i, n) in list.iter().enumerate() {
            let id = known.iter().position(|k| k == n).ok_or_else(|| {
                VErr::value(
                    &p.index(i),
                    format!("unknown {what} {n:?} (configured: {})", known.join(", ")),
                )
            })?;
            on[id] = true;
        }
        Ok(on.into_boxed_slice())
    }

    fn id_set(
        &mut self,
        p: &YamlPath,
        ids: Vec<Id>,
        ranges: Vec<String>,
        in_file: Option<String>,
    ) -> CResult<IdSet> {
        // `uid: {}` or `uid: { in: [] }` can never match: almost certainly a mistake, and
        // one that silently turns a rule off.
        if ids.is_empty() && ranges.is_empty() && in_file.is_none() {
            return Err(VErr::value(
                p,
                "this condition lists no ids: give in/any, ranges or in_file (or remove it)",
            ));
        }
        let mut all_ids: Vec<u64> = ids.into_iter().map(|Id(n)| n).collect();
        let mut all_ranges = Vec::with_capacity(ranges.len());
        for (i, r) in ranges.iter().enumerate() {
            let range = parse_range(r.trim().as_bytes())
                .map_err(|m| VErr::value(&p.key("ranges").index(i), format!("range {r:?}: {m}")))?;
            all_ranges.push(range);
        }
        if let Some(f) = in_file {
            let fp = p.key("in_file");
            let file = self.in_file(&fp, &f)?;
            all_ids.extend_from_slice(&file.ids);
            all_ranges.extend_from_slice(&file.ranges);
        }
        Ok(IdSet::new(all_ids, all_ranges))
    }

    fn in_file(&mut self, p: &YamlPath, name: &str) -> CResult<Rc<InFile>> {
        if name.trim().is_empty() {
            return Err(VErr::value(p, "in_file must name a file"));
        }
        let path = {
            let n = Path::new(name);
            if n.is_absolute() {
                n.to_path_buf()
            } else {
                self.dir.join(n)
            }
        };
        self.mentions.push((p.clone(), path.clone()));
        let entry = self
            .files
            .entry(path.clone())
            .or_insert_with(|| read_in_file(&path, name));
        entry.clone().map_err(|m| VErr::value(p, m))
    }
}

/// Takes a condition out of its [`Nullable`]. `uid:` with nothing after it is an error,
/// not "no condition": dropping it would widen the rule to everyone.
fn not_null<T>(when: &YamlPath, key: &str, v: Nullable<T>) -> CResult<Option<T>> {
    match v {
        None => Ok(None),
        Some(Some(v)) => Ok(Some(v)),
        Some(None) => Err(VErr::key(
            &when.key(key),
            "a condition must not be empty (null): give it a value or remove the key",
        )),
    }
}

fn read_in_file(path: &Path, name: &str) -> Result<Rc<InFile>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read in_file {name:?} ({}): {e}", path.display()))?;
    let (ids, ranges) =
        parse_id_lines(&bytes).map_err(|(line, m)| format!("{name}:{line}: {m}"))?;
    Ok(Rc::new(InFile { bytes, ids, ranges }))
}

/// Parses an `in_file`: one id or `lo-hi` per line, blank lines and `#` comments ignored.
/// Borrowed slices and a hand-rolled digit loop: a million lines take milliseconds.
/// Errors carry the 1-based line.
fn parse_id_lines(bytes: &[u8]) -> Result<IdLists, (usize, String)> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut ids = Vec::new();
    let mut ranges = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = match line.iter().position(|&b| b == b'#') {
            Some(j) => &line[..j],
            None => line,
        };
        let line = trim_space(line);
        if line.is_empty() {
            continue;
        }
        if let Some(id) = markers::parse_u64(line) {
            ids.push(id);
            continue;
        }
        if line.contains(&b'-') {
            let r = parse_range(line).map_err(|m| {
                (
                    i + 1,
                    format!("range {:?}: {m}", String::from_utf8_lossy(line)),
                )
            })?;
            ranges.push(r);
        } else {
            return Err((
                i + 1,
                format!(
                    "invalid id {:?}: expected decimal digits fitting u64, or lo-hi",
                    String::from_utf8_lossy(line)
                ),
            ));
        }
    }
    Ok((ids, ranges))
}

/// `lo-hi`, inclusive, spaces allowed around `-`.
fn parse_range(s: &[u8]) -> Result<(u64, u64), String> {
    let bad = || "expected \"lo-hi\" with decimal ids fitting u64".to_owned();
    let dash = s.iter().position(|&b| b == b'-').ok_or_else(bad)?;
    let lo = markers::parse_u64(trim_space(&s[..dash])).ok_or_else(bad)?;
    let hi = markers::parse_u64(trim_space(&s[dash + 1..])).ok_or_else(bad)?;
    if lo > hi {
        return Err(format!("lo > hi ({lo} > {hi})"));
    }
    Ok((lo, hi))
}

fn trim_space(s: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r');
    let start = s.iter().position(|b| !ws(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    &s[start..end]
}

/// `">=5.2.0, <6"`: comparators separated by `,`, all of which must hold.
fn parse_version_req(s: &str) -> Result<Box<[(CmpOp, Version)]>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!(
                "bad comparator in {s:?}: empty (expected e.g. \">=5.2.0, <6\")"
            ));
        }
        let (op, rest) = [
            (">=", CmpOp::Ge),
            ("<=", CmpOp::Le),
            ("==", CmpOp::Eq),
            ("!=", CmpOp::Ne),
            (">", CmpOp::Gt),
            ("<", CmpOp::Lt),
            ("=", CmpOp::Eq),
        ]
        .into_iter()
        .find_map(|(tok, op)| part.strip_prefix(tok).map(|rest| (op, rest)))
        .ok_or_else(|| {
            format!(
                "bad comparator {part:?}: expected one of =, ==, !=, >, >=, <, <= then a version"
            )
        })?;
        let v = Version::parse(rest.trim()).ok_or_else(|| {
            format!(
                "bad comparator {part:?}: {:?} is not a version",
                rest.trim()
            )
        })?;
        out.push((op, v));
    }
    Ok(out.into_boxed_slice())
}

fn percent(p: &YamlPath, raw: RawPercent, rule: &str) -> CResult<Percent> {
    let of = match MarkerKind::from_name(&raw.of) {
        Some(MarkerKind::Uid) => PercentOf::Uid,
        Some(MarkerKind::StaffUid) => PercentOf::StaffUid,
        Some(MarkerKind::EntryId) => PercentOf::EntryId,
        Some(MarkerKind::Device) => PercentOf::Device,
        _ => {
            return Err(VErr::value(
                &p.key("of"),
                format!(
                    "percent of {:?}: expected uid, staff_uid, entry_id or device",
                    raw.of
                ),
            ))
        }
    };
    let hundredths = raw.value * 100.0;
    let threshold = hundredths.round();
    if !(0.0..=100.0).contains(&raw.value) || (hundredths - threshold).abs() > 1e-6 {
        return Err(VErr::value(
            &p.key("value"),
            format!(
                "percent value {}: expected a number in [0, 100] with at most two decimals",
                raw.value
            ),
        ));
    }
    let seed = raw.seed.unwrap_or_else(|| rule.to_owned());
    Ok(Percent {
        of,
        prefix: format!("{seed}:").into_bytes().into_boxed_slice(),
        threshold: threshold as u32,
    })
}

/// Rule names appear in metric labels and the propagate header.
fn check_rule_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if !ok {
        return Err(format!(
            "invalid rule name {n:?} (expected [a-z0-9_.-]{{1,64}})"
        ));
    }
    if n == DEFAULT_RULE {
        return Err(format!(
            "rule name {n:?} is reserved: it labels requests no rule matched"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::io::Write;

    fn topo() -> Topology {
        Topology {
            listeners: vec!["im".into(), "console".into()],
            services: vec!["chat".into(), "static".into()],
            pools: vec!["stable".into(), "gray".into(), "canary".into()],
        }
    }

    fn compile_in(src: &str, dir: &Path) -> Result<Compiled, String> {
        compile(src, "rules.yaml", dir, &topo()).map_err(|e| e.to_string())
    }

    fn ok(src: &str) -> RuleSet {
        match compile_in(src, Path::new("/nonexistent")) {
            Ok(c) => c.rules,
            Err(e) => panic!("{e}"),
        }
    }

    fn err(src: &str) -> String {
        match compile_in(src, Path::new("/nonexistent")) {
            Ok(_) => panic!("compiled: {src}"),
            Err(e) => e,
        }
    }

    /// Asserts the error is at `line:col` and mentions `want`.
    #[track_caller]
    fn assert_err(src: &str, line: usize, col: usize, want: &str) {
        let e = err(src);
        let prefix = format!("rules.yaml:{line}:{col}: ");
        assert!(e.starts_with(&prefix), "want {prefix}... got {e}");
        assert!(e.contains(want), "want {want:?} in {e}");
    }

    /// A one-rule file routing to gray with `when` lines (indented by 6) inserted.
    fn one(when: &str) -> String {
        let mut s = String::from("rules:\n  - name: r\n    when:\n");
        for l in when.lines() {
            s.push_str("      ");
            s.push_str(l);
            s.push('\n');
        }
        s.push_str("    route: gray\n");
        s
    }

    struct Req {
        markers: Markers,
        listener: usize,
        service: usize,
        path: String,
        headers: HeaderMap,
    }

    impl Req {
        fn new() -> Self {
            Req {
                markers: Markers::default(),
                listener: 0,
                service: 0,
                path: "/chat/x".into(),
                headers: HeaderMap::new(),
            }
        }
        fn uid(mut self, id: u64) -> Self {
            self.markers.uid = Some(id);
            self
        }
        fn marker(mut self, kind: MarkerKind, v: &str) -> Self {
            self.markers.set_from_str(kind, v).unwrap();
            self
        }
        fn header(mut self, k: &'static str, v: &str) -> Self {
            self.headers.append(k, HeaderValue::from_str(v).unwrap());
            self
        }
        fn decide(&self, rs: &RuleSet) -> Decision {
            rs.decide(&RequestInfo {
                markers: &self.markers,
                listener: self.listener,
                service: self.service,
                path: &self.path,
                headers: &self.headers,
            })
        }
        /// Whether the single rule of `rs` matched.
        fn hits(&self, rs: &RuleSet) -> bool {
            self.decide(rs).rule.is_some()
        }
    }

    const DEFAULT: Decision = Decision {
        pool: STABLE,
        rule: None,
    };

    // === acceptance ===

    #[test]
    fn spec_example_compiles_and_decides() {
        let rs = ok(r#"
version: "2026-11-22.1"
rules:
  - name: vip-never-gray
    when:
      uid: { in: [88000001, 88000002] }
    route: stable
  - name: gray-staff-groups
    when:
      agent_gid: { any: [141338365001, 141338365002] }
    route: gray
  - name: gray-staff
    when:
      staff_uid: { in: [9001, 9002] }
    route: gray
  - name: low-volume-uid-ranges
    when:
      uid: { ranges: ["10000000-10499999", "20000000-20099999"] }
      app_version: ">=5.2.0"
    route: gray
  - name: gray-entry-20pct
    when:
      entry_id: { in: [121338361120] }
      percent: { of: uid, value: 20 }
    route: gray
"#);
        assert_eq!(rs.version(), Some("2026-11-22.1"));
        assert_eq!(rs.len(), 5);
        assert_eq!(
            rs.rule_names().collect::<Vec<_>>(),
            [
                "vip-never-gray",
                "gray-staff-groups",
                "gray-staff",
                "low-volume-uid-ranges",
                "gray-entry-20pct"
            ]
        );
        assert_eq!(rs.rule_name(2), "gray-staff");
        assert_eq!(rs.rule_name(99), DEFAULT_RULE);

        let d = Req::new().uid(88000001).decide(&rs);
        assert_eq!(
            d,
            Decision {
                pool: STABLE,
                rule: Some(0)
            }
        );
        let d = Req::new()
            .marker(MarkerKind::AgentGid, "1, 141338365002")
            .decide(&rs);
        assert_eq!(
            d,
            Decision {
                pool: GRAY,
                rule: Some(1)
            }
        );
        let d = Req::new().marker(MarkerKind::StaffUid, "9002").decide(&rs);
        assert_eq!(
            d,
            Decision {
                pool: GRAY,
                rule: Some(2)
            }
        );
        let r = Req::new()
            .uid(10000000)
            .marker(MarkerKind::AppVersion, "5.2");
        assert_eq!(
            r.decide(&rs),
            Decision {
                pool: GRAY,
                rule: Some(3)
            }
        );
        let r = Req::new()
            .uid(10499999)
            .marker(MarkerKind::AppVersion, "5.1.9");
        assert_eq!(r.decide(&rs), DEFAULT);
        assert_eq!(
            Req::new().uid(10000000).decide(&rs),
            DEFAULT,
            "absent version"
        );
        assert_eq!(Req::new().decide(&rs), DEFAULT);
    }

    #[test]
    fn empty_rules_send_everything_to_stable() {
        let rs = ok("rules: []\n");
        assert!(rs.is_empty());
        assert_eq!(rs.version(), None);
        assert_eq!(Req::new().uid(1).decide(&rs), DEFAULT);
        let e = RuleSet::empty();
        assert_eq!(e.len(), 0);
        assert_eq!(Req::new().decide(&e), DEFAULT);
    }

    #[test]
    fn no_when_or_empty_when_matches_everything() {
        let rs = ok("rules:\n  - name: all\n    route: gray\n");
        assert_eq!(
            Req::new().decide(&rs),
            Decision {
                pool: GRAY,
                rule: Some(0)
            }
        );
        let rs = ok("rules:\n  - name: all\n    when: {}\n    route: canary\n");
        assert_eq!(
            Req::new().decide(&rs),
            Decision {
                pool: 2,
                rule: Some(0)
            }
        );
        let rs = ok("rules:\n  - name: all\n    when:\n    route: gray\n");
        assert!(Req::new().hits(&rs));
    }

    #[test]
    fn first_match_wins() {
        let rs = ok("
rules:
  - name: a
    when: { uid: { in: [1] } }
    route: stable
  - name: b
    when: { uid: { ranges: [\"0-10\"] } }
    route: gray
  - name: c
    route: canary
");
        assert_eq!(
            Req::new().uid(1).decide(&rs),
            Decision {
                pool: STABLE,
                rule: Some(0)
            }
        );
        assert_eq!(
            Req::new().uid(2).decide(&rs),
            Decision {
                pool: GRAY,
                rule: Some(1)
            }
        );
        assert_eq!(
            Req::new().uid(11).decide(&rs),
            Decision {
                pool: 2,
                rule: Some(2)
            }
        );
    }

    #[test]
    fn conditions_and_values_or() {
        let rs = ok(&one(
            "uid: { in: [1, 2], ranges: [\"100-199\"] }\ndevice: { in: [iOS, Android] }",
        ));
        let r = |uid, dev: &str| Req::new().uid(uid).marker(MarkerKind::Device, dev);
        assert!(r(1, "ios").hits(&rs));
        assert!(r(2, "ANDROID").hits(&rs));
        assert!(r(150, "android").hits(&rs));
        assert!(!r(3, "ios").hits(&rs));
        assert!(!r(1, "web").hits(&rs));
        assert!(!Req::new().uid(1).hits(&rs), "absent device");
    }

    // === each condition ===

    #[test]
    fn id_conditions() {
        for (key, kind) in [
            ("uid", MarkerKind::Uid),
            ("staff_uid", MarkerKind::StaffUid),
            ("entry_id", MarkerKind::EntryId),
        ] {
            let rs = ok(&one(&format!(
                "{key}: {{ in: [5, \"007\"], ranges: [\"10-20\", \" 30 - 30 \"] }}"
            )));
            for (v, want) in [
                ("5", true),
                ("7", true),
                ("10", true),
                ("20", true),
                ("30", true),
                ("21", false),
                ("29", false),
                ("6", false),
            ] {
                let r = Req::new().marker(kind, v);
                assert_eq!(r.hits(&rs), want, "{key}={v}");
            }
            assert!(!Req::new().hits(&rs), "{key} absent");
            // Another marker with the value does not count.
            let other = if kind == MarkerKind::Uid {
                MarkerKind::EntryId
            } else {
                MarkerKind::Uid
            };
            assert!(!Req::new().marker(other, "5").hits(&rs));
        }
        // An empty set could never match: rejected, pointing at the condition.
        assert_err(&one("uid: {}"), 4, 12, "lists no ids");
        assert_err(&one("device: { in: [] }"), 4, 21, "lists no devices");
        let rs = ok(&one("uid: { ranges: [\"0-18446744073709551615\"] }"));
        assert!(Req::new().uid(u64::MAX).hits(&rs));
        assert!(Req::new().uid(0).hits(&rs));
    }

    #[test]
    fn agent_gid_matches_any_group() {
        let rs = ok(&one(
            "agent_gid: { any: [141338365001], ranges: [\"500-600\"] }",
        ));
        let r = |v: &str| Req::new().marker(MarkerKind::AgentGid, v);
        assert!(r("141338365001").hits(&rs));
        assert!(r("7, 8, 141338365001").hits(&rs));
        assert!(r("1,550").hits(&rs));
        assert!(!r("1,2,3").hits(&rs));
        assert!(!Req::new().hits(&rs));
    }

    #[test]
    fn app_version_comparators() {
        let cases = [
            (">=5.2.0, <6", "5.2", true),
            (">=5.2.0, <6", "5.10.1", true),
            (">=5.2.0, <6", "6.0", false),
            (">=5.2.0, <6", "5.1.99", false),
            (">5.9.0", "5.10.0", true),
            (">5.9", "5.9.0.0", false),
            ("=5.2", "5.2.0", true),
            ("==5.2", "v5.2.0-rc1", true),
            ("!=5.2", "5.2.0", false),
            ("!=5.2", "5.2.1", true),
            ("<=5.2", "5.2", true),
            ("< 5.2", "5.2", false),
            (" >= v5 , != 5.5 ", "5.5", false),
        ];
        for (req, v, want) in cases {
            let rs = ok(&one(&format!("app_version: \"{req}\"")));
            let r = Req::new().marker(MarkerKind::AppVersion, v);
            assert_eq!(r.hits(&rs), want, "{v} {req}");
            assert!(!Req::new().hits(&rs));
        }
    }

    #[test]
    fn listener_service_and_path_prefix() {
        let rs = ok(&one("listener: [console]"));
        let mut r = Req::new();
        assert!(!r.hits(&rs));
        r.listener = 1;
        assert!(r.hits(&rs));
        r.listener = 7;
        assert!(!r.hits(&rs), "an unknown listener index is simply false");

        let rs = ok(&one("service: [chat, static]"));
        let mut r = Req::new();
        assert!(r.hits(&rs));
        r.service = 1;
        assert!(r.hits(&rs));
        r.service = 2;
        assert!(!r.hits(&rs));

        let rs = ok(&one("path_prefix: [/chat, /static/]"));
        for (p, want) in [
            ("/chat", true),
            ("/chat/x", true),
            ("/chat?q=1", true),
            ("/chatroom", false),
            ("/static/a.js", true),
            ("/static", false),
            ("/", false),
        ] {
            let mut r = Req::new();
            r.path = p.into();
            assert_eq!(r.hits(&rs), want, "{p}");
        }
    }

    #[test]
    fn header_conditions() {
        let rs = ok(&one(
            "header:\n  X-Env: { in: [pre, gray] }\n  x-zone: { in: [\"a\"] }",
        ));
        let r = Req::new().header("x-env", "gray").header("x-zone", "a");
        assert!(r.hits(&rs));
        let r = Req::new().header("x-env", "Gray").header("x-zone", "a");
        assert!(!r.hits(&rs), "values are case-sensitive");
        let r = Req::new().header("x-env", "pre");
        assert!(!r.hits(&rs), "names are ANDed");
        let r = Req::new()
            .header("x-env", "prod")
            .header("x-env", "pre")
            .header("x-zone", "a");
        assert!(!r.hits(&rs), "first occurrence only");
    }

    #[test]
    fn cookie_conditions() {
        let rs = ok(&one(
            "cookie:\n  env: { in: [gray] }\n  Zone: { in: [\"a,b\"] }",
        ));
        let r = Req::new()
            .header("cookie", "x=1; env=\"gray\"")
            .header("cookie", "Zone=a,b");
        assert!(r.hits(&rs));
        let r = Req::new().header("cookie", "env=gray; zone=a,b");
        assert!(!r.hits(&rs), "cookie names are case-sensitive");
        let r = Req::new().header("cookie", "env=prod; env=gray; Zone=a,b");
        assert!(!r.hits(&rs), "first occurrence only");
        assert!(!Req::new().hits(&rs));
    }

    // === percent ===

    /// Pinned so the hash can never change silently: every instance and every offline
    /// tool must keep agreeing on who is in the gray share.
    #[test]
    fn percent_bucket_is_pinned() {
        assert_eq!(xxh3_64(b"gray-entry-20pct:112233"), PINNED_HASH);
        assert_eq!(percent_bucket("gray-entry-20pct", "112233"), PINNED_BUCKET);
        assert_eq!(percent_bucket("s", "ios"), PINNED_DEVICE_BUCKET);
        // The published XXH3-64 test vector for empty input: this is XXH3, seed 0.
        assert_eq!(xxh3_64(b""), 0x2d06_8005_38d3_94c2);
    }

    const PINNED_HASH: u64 = 10486203502681987318;
    const PINNED_BUCKET: u32 = 7318;
    const PINNED_DEVICE_BUCKET: u32 = 1746;

    #[test]
    fn fast_bucket_agrees_with_the_reference() {
        let long = "s".repeat(300);
        for seed in [
            "r",
            "gray-entry-20pct",
            "x".repeat(107).as_str(),
            "x".repeat(108).as_str(),
            long.as_str(),
        ] {
            let prefix = format!("{seed}:");
            for key in [0u64, 7, 112233, u64::MAX] {
                let mut buf = [0u8; 20];
                let k = itoa(key, &mut buf);
                assert_eq!(k, key.to_string().as_bytes());
                assert_eq!(
                    bucket(prefix.as_bytes(), k),
                    percent_bucket(seed, &key.to_string()),
                    "{seed} {key}"
                );
            }
        }
    }

    fn percent_rule(of: &str, value: &str, seed: Option<&str>) -> RuleSet {
        let seed = seed.map(|s| format!(", seed: {s}")).unwrap_or_default();
        ok(&one(&format!(
            "percent: {{ of: {of}, value: {value}{seed} }}"
        )))
    }

    #[test]
    fn percent_uses_the_bucket_formula() {
        let rs = percent_rule("uid", "37.5", None);
        for uid in 0..2000u64 {
            let want = percent_bucket("r", &uid.to_string()) < 3750;
            assert_eq!(Req::new().uid(uid).hits(&rs), want, "uid {uid}");
        }
        // Leading zeros do not change the key.
        let r = Req::new().marker(MarkerKind::Uid, "000112233");
        assert_eq!(r.hits(&rs), percent_bucket("r", "112233") < 3750);
        // An explicit seed equal to the name changes nothing; another seed does.
        let same = percent_rule("uid", "37.5", Some("r"));
        let other = percent_rule("uid", "37.5", Some("elsewhere"));
        let mut differ = 0;
        for uid in 0..2000u64 {
            let r = Req::new().uid(uid);
            assert_eq!(r.hits(&rs), r.hits(&same));
            differ += usize::from(r.hits(&rs) != r.hits(&other));
        }
        assert!(differ > 100, "{differ}");
        // Device keys are lowercased.
        let rs = percent_rule("device", "50", Some("s"));
        let want = percent_bucket("s", "ios") < 5000;
        assert_eq!(Req::new().marker(MarkerKind::Device, "IOS").hits(&rs), want);
        // Staff and entry ids.
        for (of, kind) in [
            ("staff_uid", MarkerKind::StaffUid),
            ("entry_id", MarkerKind::EntryId),
        ] {
            let rs = percent_rule(of, "50", None);
            for id in 0..200u64 {
                let want = percent_bucket("r", &id.to_string()) < 5000;
                assert_eq!(Req::new().marker(kind, &id.to_string()).hits(&rs), want);
            }
            assert!(!Req::new().uid(1).hits(&rs), "absent marker");
        }
    }

    #[test]
    fn percent_edges() {
        let none = percent_rule("uid", "0", None);
        let all = percent_rule("uid", "100", None);
        let tiny = percent_rule("uid", "0.01", None);
        let mut tiny_hits = 0;
        for uid in 0..100_000u64 {
            let r = Req::new().uid(uid);
            assert!(!r.hits(&none));
            assert!(r.hits(&all));
            tiny_hits += usize::from(r.hits(&tiny));
        }
        // 0.01% of 100k is 10 on average; this is deterministic, the band is a sanity check.
        assert!((2..=25).contains(&tiny_hits), "{tiny_hits}");
        assert!(!Req::new().hits(&all), "absent marker: false even at 100");
    }

    #[test]
    fn percent_is_monotonic_with_the_right_share() {
        let levels = ["1", "20", "50", "100"];
        let sets: Vec<RuleSet> = levels
            .iter()
            .map(|p| percent_rule("uid", p, Some("rollout")))
            .collect();
        let n = 100_000u64;
        let mut counts = [0usize; 4];
        for uid in 0..n {
            let uid = uid * 7919 + 10_000_000;
            let r = Req::new().uid(uid);
            let hits: Vec<bool> = sets.iter().map(|s| r.hits(s)).collect();
            for i in 1..hits.len() {
                assert!(!hits[i - 1] || hits[i], "uid {uid} left when P grew");
            }
            for (c, h) in counts.iter_mut().zip(&hits) {
                *c += usize::from(*h);
            }
        }
        for (c, want) in counts.iter().zip([0.01, 0.20, 0.50, 1.0]) {
            let share = *c as f64 / n as f64;
            assert!((share - want).abs() < 0.01, "share {share} want {want}");
        }
    }

    // === rejections, each at its position ===

    #[test]
    fn rejects_unknown_keys_and_markers() {
        assert_err(&one("uuid: { in: [1] }"), 4, 7, "unknown field `uuid`");
        assert_err(
            &one("uid: { in: [1], nope: 2 }"),
            4,
            23,
            "unknown field `nope`",
        );
        assert_err(
            "rules:\n  - name: r\n    rout: gray\n",
            3,
            5,
            "unknown field `rout`",
        );
        assert_err("rules: []\nversoin: x\n", 2, 1, "unknown field `versoin`");
        assert_err(&one("device: { any: [ios] }"), 4, 17, "unknown field `any`");
        assert_err(&one("agent_gid: { in: [1] }"), 4, 20, "unknown field `in`");
        assert_err(
            &one("percent: { of: uid, value: 1, salt: x }"),
            4,
            37,
            "unknown field `salt`",
        );
    }

    #[test]
    fn rejects_null_conditions() {
        assert_err(
            &one("uid:"),
            4,
            7,
            "rules.0.when.uid: a condition must not be empty",
        );
        assert_err(&one("header:"), 4, 7, "rules.0.when.header:");
    }

    #[test]
    fn rejects_bad_ids_and_ranges() {
        assert_err(&one("uid: { in: [1, -2] }"), 4, 22, "ids are unsigned");
        assert_err(&one("uid: { in: [1, \"x1\"] }"), 4, 22, "invalid id \"x1\"");
        assert_err(
            &one("uid: { in: [18446744073709551616] }"),
            4,
            19,
            "does not fit u64",
        );
        assert_err(&one("uid: { in: [1.5] }"), 4, 19, "expected an id");
        assert_err(
            &one("uid: { ranges: [\"1-2\", \"5-3\"] }"),
            4,
            30,
            "rules.0.when.uid.ranges.1: range \"5-3\": lo > hi",
        );
        assert_err(
            &one("staff_uid: { ranges: [\"5\"] }"),
            4,
            29,
            "expected \"lo-hi\"",
        );
        assert_err(
            &one("agent_gid: { ranges: [\"a-b\"] }"),
            4,
            29,
            "expected \"lo-hi\"",
        );
        assert_err(
            &one("entry_id: { ranges: [\"-5\"] }"),
            4,
            28,
            "expected \"lo-hi\"",
        );
    }

    #[test]
    fn rejects_bad_names_and_routes() {
        let dup = "rules:\n  - name: a\n    route: gray\n  - name: a\n    route: stable\n";
        assert_err(dup, 4, 11, "rules.1.name: duplicate rule name \"a\"");
        assert_err(
            "rules:\n  - name: Bad\n    route: gray\n",
            2,
            11,
            "invalid rule name",
        );
        assert_err(
            "rules:\n  - name: \"\"\n    route: gray\n",
            2,
            11,
            "invalid rule name",
        );
        let long = "a".repeat(65);
        assert_err(
            &format!("rules:\n  - name: {long}\n    route: gray\n"),
            2,
            11,
            "invalid rule name",
        );
        ok(&format!(
            "rules:\n  - name: {}\n    route: gray\n",
            "a".repeat(64)
        ));
        ok("rules:\n  - name: a_b.c-9\n    route: gray\n");
        assert_err(
            "rules:\n  - name: default\n    route: gray\n",
            2,
            11,
            "reserved",
        );
        assert_err(
            "rules:\n  - name: a\n    route: grey\n",
            3,
            12,
            "unknown pool \"grey\"",
        );
        assert_err("rules:\n  - name: a\n", 2, 5, "missing field `route`");
        assert_err("rules:\n  - route: gray\n", 2, 5, "missing field `name`");
        let rs = ok("rules:\n  - name: a\n    route: canary\n");
        assert_eq!(Req::new().decide(&rs).pool, 2);
        // stable and gray are always valid routes, whatever the topology.
        let c = compile(
            "rules:\n  - name: a\n    route: gray\n",
            "f",
            Path::new("."),
            &Topology::default(),
        );
        assert_eq!(c.map(|c| c.rules.len()), Ok(1));
    }

    #[test]
    fn rejects_bad_comparators() {
        for bad in [
            "5.2.0",
            "~5.2",
            "=>5",
            ">=",
            ">= x",
            ">=5.2,",
            ", <6",
            "",
            "<6 >5",
            ">=1.2.3.4.5",
        ] {
            assert_err(
                &one(&format!("app_version: \"{bad}\"")),
                4,
                20,
                "rules.0.when.app_version: bad comparator",
            );
        }
        assert_err(&one("app_version: [\">5\"]"), 4, 20, "expected a string");
    }

    #[test]
    fn rejects_unknown_listeners_and_services() {
        assert_err(
            &one("listener: [im, imm]"),
            4,
            22,
            "unknown listener \"imm\" (configured: im, console)",
        );
        assert_err(
            &one("service: [\n    chat,\n    chatt]"),
            6,
            11,
            "unknown service \"chatt\"",
        );
    }

    #[test]
    fn rejects_bad_percent() {
        for (v, col) in [
            ("100.5", 34),
            ("12.345", 34),
            ("-1", 34),
            (".nan", 34),
            ("\"20\"", 34),
        ] {
            let src = one(&format!("percent: {{ of: uid, value: {v} }}"));
            let e = err(&src);
            assert!(e.starts_with(&format!("rules.yaml:4:{col}: ")), "{v}: {e}");
        }
        ok(&one("percent: { of: uid, value: 12.34 }"));
        ok(&one("percent: { of: uid, value: 0.07 }"));
        assert_err(
            &one("percent: { of: agent_gid, value: 5 }"),
            4,
            22,
            "expected uid, staff_uid, entry_id or device",
        );
        assert_err(
            &one("percent: { of: uidd, value: 5 }"),
            4,
            22,
            "percent of \"uidd\"",
        );
        assert_err(&one("percent: { value: 5 }"), 4, 16, "missing field `of`");
    }

    #[test]
    fn rejects_other_bad_values() {
        assert_err(&one("path_prefix: [/a, b]"), 4, 25, "must start with /");
        assert_err(&one("device: { in: [ios, \"\"] }"), 4, 27, "invalid device");
        assert_err(
            &one("header:\n  \"bad name\": { in: [x] }"),
            5,
            9,
            "invalid header name",
        );
        assert_err(
            &one("cookie:\n  \"a;b\": { in: [x] }"),
            5,
            9,
            "invalid cookie name",
        );
        assert_err(
            &one("header: { x-a: { in: x } }"),
            4,
            28,
            "expected a sequence",
        );
    }

    #[test]
    fn rejects_broken_files() {
        let e = err("");
        assert!(e.starts_with("rules.yaml:1:1: empty rules file"), "{e}");
        assert_err("version: x\n", 1, 1, "missing field `rules`");
        assert_err("rules: [\n", 2, 1, "");
        assert_err(
            "rules:\n  - name: a\n    route: [gray\n",
            3,
            12,
            "expected a string",
        );
        assert_err(
            "rules:\n  - name: a\n    route: gray\n  x\n",
            5,
            1,
            "could not find expected ':'",
        );
        assert_err("rules: {}\n", 1, 8, "expected a sequence");
    }

    // === in_file ===

    fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn in_file_ids_ranges_and_comments() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "ids.txt",
            "\u{feff}# staff of the gray workplace\n\n  42  \n007 # trailing comment\r\n100-199\n 300 - 300 \n\t\n#\n",
        );
        let src = one("uid: { in: [1], ranges: [\"1000-1000\"], in_file: ids.txt }");
        let c = compile_in(&src, dir.path()).unwrap();
        for (uid, want) in [
            (1, true),
            (42, true),
            (7, true),
            (100, true),
            (199, true),
            (300, true),
            (1000, true),
            (2, false),
            (200, false),
            (301, false),
        ] {
            assert_eq!(Req::new().uid(uid).hits(&c.rules), want, "{uid}");
        }
        assert_eq!(c.files, vec![dir.path().join("ids.txt")]);

        // Absolute paths are taken as they are; agent_gid takes in_file too.
        let abs = dir.path().join("ids.txt");
        let src = one(&format!("agent_gid: {{ in_file: \"{}\" }}", abs.display()));
        let rs = compile_in(&src, Path::new("/elsewhere")).unwrap().rules;
        assert!(Req::new().marker(MarkerKind::AgentGid, "5, 150").hits(&rs));
        assert!(!Req::new().marker(MarkerKind::AgentGid, "5, 6").hits(&rs));
    }

    #[test]
    fn in_file_problems_point_at_the_in_file_value() {
        let dir = tempfile::tempdir().unwrap();
        let src = one("uid: { in: [1], in_file: missing.txt }");
        let e = compile_in(&src, dir.path()).unwrap_err();
        assert!(
            e.starts_with(
                "rules.yaml:4:32: rules.0.when.uid.in_file: cannot read in_file \"missing.txt\""
            ),
            "{e}"
        );

        write(dir.path(), "bad.txt", "1\n2\n\nx3\n");
        let src = one("staff_uid:\n  in_file: bad.txt");
        let e = compile_in(&src, dir.path()).unwrap_err();
        assert!(
            e.starts_with(
                "rules.yaml:5:18: rules.0.when.staff_uid.in_file: bad.txt:4: invalid id \"x3\""
            ),
            "{e}"
        );

        write(dir.path(), "rev.txt", "# header\n9-3\n");
        let e = compile_in(&one("entry_id: { in_file: rev.txt }"), dir.path()).unwrap_err();
        assert!(e.starts_with("rules.yaml:4:28: "), "{e}");
        assert!(e.contains("rev.txt:2: range \"9-3\": lo > hi"), "{e}");

        write(dir.path(), "big.txt", "18446744073709551616\n");
        let e = compile_in(&one("uid: { in_file: big.txt }"), dir.path()).unwrap_err();
        assert!(e.contains("big.txt:1: invalid id"), "{e}");

        // Flow style: still the value's position.
        let src =
            "rules:\n  - name: a\n    when: { uid: { in_file: nope.txt } }\n    route: gray\n";
        let e = compile_in(src, dir.path()).unwrap_err();
        assert!(e.starts_with("rules.yaml:3:29: "), "{e}");
        // A second mention of a bad file fails at the first mention, in text order.
        let src = "rules:\n  - name: a\n    when: { uid: { in_file: bad.txt } }\n    route: gray\n  - name: b\n    when: { uid: { in_file: bad.txt } }\n    route: gray\n";
        let e = compile_in(src, dir.path()).unwrap_err();
        assert!(
            e.starts_with("rules.yaml:3:29: rules.0.when.uid.in_file: bad.txt:4: "),
            "{e}"
        );

        let e = compile_in(&one("uid: { in_file: \"\" }"), dir.path()).unwrap_err();
        assert!(e.contains("in_file must name a file"), "{e}");
    }

    #[test]
    fn sha256_covers_rules_then_in_files_in_order_of_first_mention() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.txt", "1\n");
        write(dir.path(), "b.txt", "2\n");
        // In text order b comes first, although `uid` is visited before `entry_id`.
        let src = "\
rules:
  - name: one
    when:
      entry_id: { in_file: b.txt }
      uid: { in_file: a.txt }
    route: gray
  - name: two
    when: { staff_uid: { in_file: b.txt } }
    route: gray
";
        let c = compile_in(src, dir.path()).unwrap();
        let mut h = Sha256::new();
        h.update(src.as_bytes());
        h.update(b"2\n");
        h.update(b"1\n");
        let want: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(c.sha256, want);
        assert_eq!(c.sha256.len(), 64);
        assert_eq!(
            c.files,
            vec![dir.path().join("b.txt"), dir.path().join("a.txt")]
        );

        let plain = compile_in("rules: []\n", dir.path()).unwrap();
        let want: String = Sha256::digest(b"rules: []\n")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(plain.sha256, want);
        assert!(plain.files.is_empty());
    }

    #[test]
    fn load_reads_the_file_and_lists_it_first() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ids.txt", "5\n");
        let path = write(dir.path(), "rules.yaml", &one("uid: { in_file: ids.txt }"));
        let c = load(&path, "conf/rules.yaml", &topo()).unwrap();
        assert_eq!(c.files, vec![path.clone(), dir.path().join("ids.txt")]);
        assert!(Req::new().uid(5).hits(&c.rules));

        let e = load(&dir.path().join("nope.yaml"), "nope.yaml", &topo()).unwrap_err();
        assert!(
            e.to_string().starts_with("nope.yaml:1:1: cannot read"),
            "{e}"
        );
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "rules:\n  - name: a\n    route: nowhere\n").unwrap();
        let e = load(&bad, "conf/bad.yaml", &topo()).unwrap_err();
        assert_eq!(e.pos, Pos { line: 3, col: 12 });
        assert_eq!(e.file, "conf/bad.yaml");
        std::fs::write(&bad, b"rules: []\n# \xff\n").unwrap();
        let e = load(&bad, "bad.yaml", &topo()).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }

    #[test]
    fn a_million_line_in_file_compiles_fast() {
        // Release builds take the full million; debug builds a tenth, to keep `cargo
        // test` quick (the parser is the same code).
        let n: u64 = if cfg!(debug_assertions) {
            100_000
        } else {
            1_000_000
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uids.txt");
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
            writeln!(f, "# generated").unwrap();
            for i in 0..n {
                // Spread ids out so the set cannot collapse into ranges.
                writeln!(f, "{}", 100_000_000 + i * 13).unwrap();
            }
            writeln!(f, "5000000000-5000000999 # one range").unwrap();
        }
        let src = one("uid: { in_file: uids.txt }");
        let t = std::time::Instant::now();
        let c = compile_in(&src, dir.path()).unwrap();
        let took = t.elapsed();
        let limit = if cfg!(debug_assertions) { 5.0 } else { 1.0 };
        assert!(took.as_secs_f64() < limit, "compiled {n} ids in {took:?}");
        let rs = &c.rules;
        assert!(Req::new().uid(100_000_000).hits(rs));
        assert!(Req::new().uid(100_000_000 + (n - 1) * 13).hits(rs));
        assert!(!Req::new().uid(100_000_001).hits(rs));
        assert!(Req::new().uid(5_000_000_500).hits(rs));
        assert!(!Req::new().uid(5_000_001_000).hits(rs));
        let t = std::time::Instant::now();
        let mut hits = 0;
        for i in 0..100_000u64 {
            hits += usize::from(Req::new().uid(100_000_000 + i * 7).hits(rs));
        }
        assert!(hits > 0);
        eprintln!(
            "1M-style in_file: {n} ids compiled in {took:?}; 100k decisions in {:?}",
            t.elapsed()
        );
    }

    // === internals ===

    #[test]
    fn id_sets_merge_ranges_and_hash_many_ids() {
        let s = IdSet::new(
            vec![5, 15, 1000],
            vec![
                (10, 20),
                (21, 30),
                (25, 40),
                (100, 100),
                (u64::MAX - 1, u64::MAX),
            ],
        );
        assert_eq!(
            &*s.ranges,
            &[(10, 40), (100, 100), (u64::MAX - 1, u64::MAX)]
        );
        assert!(
            matches!(&s.ids, Ids::Small(v) if **v == [5, 1000]),
            "15 is in a range"
        );
        for (id, want) in [
            (5, true),
            (9, false),
            (10, true),
            (40, true),
            (41, false),
            (100, true),
            (1000, true),
            (u64::MAX, true),
            (0, false),
        ] {
            assert_eq!(s.contains(id), want, "{id}");
        }
        let many: Vec<u64> = (0..1000).map(|i| i * 1024).collect();
        let s = IdSet::new(many, vec![]);
        assert!(matches!(s.ids, Ids::Hashed(_)));
        assert!(s.contains(1024 * 999));
        assert!(!s.contains(1023));
        let empty = IdSet::new(vec![], vec![]);
        assert!(!empty.contains(0));
    }

    #[test]
    fn ruleset_is_send_sync_and_debug_is_short() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RuleSet>();
        assert_send_sync::<Compiled>();
        let rs = ok(&one("uid: { in: [1] }"));
        assert_eq!(
            format!("{rs:?}"),
            "RuleSet { version: None, rules: [\"r\"] }"
        );
    }

    #[test]
    fn cheap_conditions_run_first() {
        let rs = ok(&one("cookie: { a: { in: [x] } }\npercent: { of: uid, value: 5 }\nuid: { in: [1] }\nlistener: [im]"));
        let costs: Vec<u8> = rs.rules[0].conds.iter().map(Cond::cost).collect();
        let mut sorted = costs.clone();
        sorted.sort();
        assert_eq!(costs, sorted);
    }
}
