//! `rules.yaml` → [`RuleSet`]: every check with the `FILE:LINE:COLUMN` of the offending key
//! or value, names resolved to indices, lists to sets.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use http::HeaderName;
use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::ids::{parse_range, read_in_file, IdSet, InFile};
use super::percent::percent;
use super::raw::*;
use super::time::parse_expiry;
use super::version::parse_version_req;
use super::*;
use crate::config::yamlpos::{LocatedError, Pos, PosIndex, YamlPath};
use crate::config::{Topology, GRAY};

/// Where errors about the file as a whole point.
const FILE_START: Pos = Pos { line: 1, col: 1 };

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
    /// distinct `in_file` (resolved); from [`compile()`], only the `in_file`s (it has no
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
        rule_files: 0,
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
pub(super) struct VErr {
    path: YamlPath,
    /// The key rather than the value is the offending place (an unknown header name).
    at_key: bool,
    message: String,
}

impl VErr {
    pub(super) fn value(path: &YamlPath, message: impl Into<String>) -> Self {
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

pub(super) type CResult<T> = Result<T, VErr>;

struct Compiler<'a> {
    dir: &'a Path,
    topo: &'a Topology,
    /// Each distinct resolved path, read and parsed once (or why it failed).
    files: HashMap<PathBuf, Result<Rc<InFile>, String>>,
    /// Every `in_file:` value's path in the document, with the file it names.
    mentions: Vec<(YamlPath, PathBuf)>,
    /// The contents of the `in_file`s the rule being compiled reads, hashed into its
    /// fingerprint.
    rule_files: u64,
}

impl Compiler<'_> {
    fn rules(&mut self, raw: RawRules) -> CResult<RuleSet> {
        let root = YamlPath::root();
        let mut names: HashSet<String> = HashSet::new();
        let mut rules = Vec::with_capacity(raw.rules.len());
        let mut ramps = false;
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
            let expires = r
                .expires
                .as_deref()
                .map(|e| parse_expiry(e).map_err(|m| VErr::value(&p.key("expires"), m)))
                .transpose()?;
            let written =
                xxh3_64(format!("{:?}", (&r.when, &r.route, &r.owner, &r.expires)).as_bytes());
            self.rule_files = 0;
            let mut conds = match r.when {
                None => Vec::new(),
                Some(w) => self.when(&p.key("when"), w, &r.name)?,
            };
            conds.sort_by_key(Cond::cost);
            ramps |= conds
                .iter()
                .any(|c| matches!(c, Cond::Percent(p) if matches!(p.share(), Share::Ramp(_))));
            rules.push(Rule {
                name: r.name.into(),
                route,
                conds: conds.into_boxed_slice(),
                owner: r.owner.map(Into::into),
                expires,
                fingerprint: xxh3_64_with_seed(&written.to_le_bytes(), self.rule_files),
            });
        }
        Ok(RuleSet {
            version: raw.version,
            rules: rules.into_boxed_slice(),
            ramps,
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
        let file = entry.clone().map_err(|m| VErr::value(p, m))?;
        self.rule_files = xxh3_64_with_seed(&file.bytes, self.rule_files);
        Ok(file)
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
