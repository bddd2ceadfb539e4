//! `graylane replay` (SPEC §9.4): what a candidate ruleset would have done to traffic the
//! proxy logged, next to what the live rules do to the same traffic, before anyone edits
//! `rules.yaml`.
//!
//! Each `graylane::access` JSON line carries the listener, host, path and the markers the
//! proxy parsed, which is everything a rule can look at except headers and cookies. Both
//! rulesets decide every line the way the proxy does: the config's router picks the
//! service, the compiled rules pick the pool, and a pool the service lacks falls back to
//! `stable` (`pool_missing`). Guard and pool health are left out: they change with the
//! upstreams' state, and the question here is what the *rules* would do.
//!
//! Decisions where the spec is silent:
//! - `header:` and `cookie:` conditions never hold: headers and cookies are never logged
//!   (they may carry tokens), so a rule that needs one matches nothing here. Rules that
//!   have such a condition are named in the report, because their numbers are a floor.
//! - Ramps are decided at each line's own `timestamp`, so yesterday's log is replayed
//!   with yesterday's steps and a ramp's `start` can be tried on past traffic. The
//!   guard's hold on a ramp is ignored, like the guard itself. Timestamps are parsed only
//!   when a ruleset ramps; a line without a readable one is then skipped.
//! - A user is the `uid`, or the `staff_uid` when there is no uid (the two are separate
//!   id spaces); lines with neither count as requests but not as users. A user counts in
//!   every rule, pool and move that at least one of their lines reached, so per-rule
//!   user shares may add up to more than 100%.
//! - Text before the first `{` of a line is ignored, so logs that went through
//!   `kubectl logs --timestamps` or a syslog prefix replay as they are; `-` reads stdin
//!   (`zcat access.log.gz | graylane replay ... --log -`).
//! - Skipped lines are counted by reason, never fatal: a log file holds graylane's other
//!   lines too, and a truncated last line is normal for a file still being written.
//! - The log has the path without its query string; `path_prefix` is segment-aware, so
//!   the two only differ for a prefix that itself contains `?`.
//! - Where the live rules decide a line differently from the `rule` the line logged,
//!   the count is reported: the rules changed since, or a header or cookie decided.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

use http::HeaderMap;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{Config, PoolId, STABLE};
use crate::markers::{MarkerKind, Markers};
use crate::routing::{strip_port, Router};
use crate::rules::{self, RequestInfo, RuleSet, DEFAULT_RULE};

/// Lines longer than this are skipped without being held in memory: an access line is
/// well under 100 KiB (the path is bounded by `max_header_bytes`), and a file without
/// newlines must not be read whole.
const MAX_LINE: usize = 1 << 20;

/// Why a replay failed (main prints `error: {e:#}` and exits 1).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// graylane.yaml did not load: `FILE:LINE:COLUMN: message`.
    #[error("{0}")]
    Config(String),
    /// The config's own rules file did not compile: `FILE:LINE:COLUMN: message`.
    #[error("{0}")]
    LiveRules(String),
    /// The candidate did not compile against the config: `FILE:LINE:COLUMN: message`,
    /// FILE as given on the command line.
    #[error("{0}")]
    Candidate(String),
    /// The access log could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Log {
        /// The file as given on the command line.
        path: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The report could not be written (a closed pipe, a full disk).
    #[error("cannot write the report: {0}")]
    Output(#[source] io::Error),
}

/// Decides every access-log line of `log` with the live rules of `config` and with
/// `candidate`, and writes the comparison to `out` (a table, or JSON with `json`).
pub fn run(
    config: &Path,
    candidate: &Path,
    log: &Path,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), ReplayError> {
    let cfg = Config::load(config).map_err(|e| ReplayError::Config(e.to_string()))?;
    let topo = cfg.topology();
    let live = rules::load(&cfg.rules_file, &cfg.rules_file_display, &topo)
        .map_err(|e| ReplayError::LiveRules(e.to_string()))?;
    let cand_display = candidate.display().to_string();
    let cand = rules::load(candidate, &cand_display, &topo)
        .map_err(|e| ReplayError::Candidate(e.to_string()))?;

    let log_display = log.display().to_string();
    let read_err = |source| ReplayError::Log {
        path: log_display.clone(),
        source,
    };
    let mut replay = Replay::new(&cfg, &live.rules, &cand.rules);
    if log == Path::new("-") {
        replay.read(&mut io::stdin().lock()).map_err(read_err)?;
    } else {
        let file = File::open(log).map_err(read_err)?;
        replay
            .read(&mut BufReader::with_capacity(1 << 16, file))
            .map_err(read_err)?;
    }

    let sides = [
        Side::describe(
            "live",
            &cfg.rules_file_display,
            &cfg.rules_file,
            &live,
            &replay.live,
        ),
        Side::describe("candidate", &cand_display, candidate, &cand, &replay.cand),
    ];
    let report = Report {
        config: &config.display().to_string(),
        log: &log_display,
        replay: &replay,
        sides: &sides,
        pool_names: &cfg.pool_names,
    };
    if json {
        let v = report.to_json();
        serde_json::to_writer_pretty(&mut *out, &v).map_err(|e| ReplayError::Output(e.into()))?;
        writeln!(out).map_err(ReplayError::Output)?;
    } else {
        report.write_text(out).map_err(ReplayError::Output)?;
    }
    out.flush().map_err(ReplayError::Output)
}

// === reading the log ===

/// One tracing-subscriber JSON line, borrowed from the read buffer: `Cow` so that a
/// value with escapes still parses (it is then the one that allocates).
#[derive(Deserialize)]
struct LogLine<'a> {
    #[serde(borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    target: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    fields: Option<Fields<'a>>,
}

/// The `fields` of an access line that decide a request (see `log_access`); the
/// rest (peer, method, status, ms, service, pool) is ignored.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default)]
    listener: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    host: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    path: Option<Cow<'a, str>>,
    #[serde(default)]
    uid: Option<u64>,
    #[serde(default)]
    staff_uid: Option<u64>,
    #[serde(borrow, default)]
    agent_gid: Option<Cow<'a, str>>,
    #[serde(default)]
    entry_id: Option<u64>,
    #[serde(borrow, default)]
    app_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    device: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    rule: Option<Cow<'a, str>>,
}

/// Why a line was not decided, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// No JSON object on the line: text-format logs, blank lines, garbage.
    NotJson,
    /// A JSON log line of another target (graylane's own INFO and WARN lines).
    OtherTarget,
    /// An access line without a listener or path, or with a field of the wrong type.
    Malformed,
    /// A listener the config does not define (the log is from another config).
    UnknownListener,
    /// No service of the config matches its host and path.
    NoService,
    /// A marker value the proxy would not have parsed (the line was edited or corrupt).
    InvalidMarker,
    /// A ruleset ramps and the line's `timestamp` is missing or unreadable.
    BadTimestamp,
    /// Over [`MAX_LINE`] bytes.
    TooLong,
}

impl Skip {
    const ALL: [Skip; 8] = [
        Skip::NotJson,
        Skip::OtherTarget,
        Skip::Malformed,
        Skip::UnknownListener,
        Skip::NoService,
        Skip::InvalidMarker,
        Skip::BadTimestamp,
        Skip::TooLong,
    ];

    fn name(self) -> &'static str {
        match self {
            Skip::NotJson => "not_json",
            Skip::OtherTarget => "other_target",
            Skip::Malformed => "malformed",
            Skip::UnknownListener => "unknown_listener",
            Skip::NoService => "no_service",
            Skip::InvalidMarker => "invalid_marker",
            Skip::BadTimestamp => "bad_timestamp",
            Skip::TooLong => "too_long",
        }
    }
}

// === counting ===

/// Distinct users: uids and staff uids apart, since the two id spaces may overlap.
#[derive(Debug, Default)]
struct Users {
    uids: HashSet<u64>,
    staff: HashSet<u64>,
}

/// A line's user (see the module doc).
#[derive(Debug, Clone, Copy)]
enum User {
    Uid(u64),
    Staff(u64),
}

impl Users {
    fn add(&mut self, u: Option<User>) {
        match u {
            Some(User::Uid(id)) => {
                self.uids.insert(id);
            }
            Some(User::Staff(id)) => {
                self.staff.insert(id);
            }
            None => {}
        }
    }

    fn len(&self) -> u64 {
        (self.uids.len() + self.staff.len()) as u64
    }
}

/// Requests and distinct users of one bucket (a rule, a pool, a move).
#[derive(Debug, Default)]
struct Count {
    requests: u64,
    users: Users,
}

impl Count {
    fn add(&mut self, u: Option<User>) {
        self.requests += 1;
        self.users.add(u);
    }
}

/// What one ruleset did to the decided lines.
#[derive(Debug)]
struct Tally<'r> {
    rules: &'r RuleSet,
    /// Per rule in file order, then `default`.
    by_rule: Vec<Count>,
    /// Per global pool id, after the `pool_missing` fallback.
    by_pool: Vec<Count>,
    /// Lines whose rule chose a pool their service does not define.
    pool_missing: u64,
}

impl<'r> Tally<'r> {
    fn new(rules: &'r RuleSet, pools: usize) -> Self {
        Self {
            rules,
            by_rule: (0..=rules.len()).map(|_| Count::default()).collect(),
            by_pool: (0..pools).map(|_| Count::default()).collect(),
            pool_missing: 0,
        }
    }
}

/// The streaming pass over the log: a few hash inserts per line, nothing kept per line.
struct Replay<'a> {
    cfg: &'a Config,
    router: Router,
    /// Some ruleset ramps: lines need their timestamp.
    ramps: bool,
    live: Tally<'a>,
    cand: Tally<'a>,
    /// `moves[from * pools + to]`, from the live pool to the candidate's.
    moves: Vec<Count>,
    read: u64,
    decided: u64,
    skipped: [u64; Skip::ALL.len()],
    /// Distinct users over all decided lines: the denominator of user shares.
    users: Users,
    /// Decided lines whose logged `rule` is not the one the live rules choose.
    disagree: u64,
    /// Decided lines that logged a `rule`, for the disagreement to mean something.
    with_rule: u64,
    /// Empty: the log has no headers, so header and cookie conditions never hold.
    no_headers: HeaderMap,
}

impl<'a> Replay<'a> {
    fn new(cfg: &'a Config, live: &'a RuleSet, cand: &'a RuleSet) -> Self {
        let pools = cfg.pool_names.len();
        Self {
            cfg,
            router: Router::new(cfg),
            ramps: live.has_ramps() || cand.has_ramps(),
            live: Tally::new(live, pools),
            cand: Tally::new(cand, pools),
            moves: (0..pools * pools).map(|_| Count::default()).collect(),
            read: 0,
            decided: 0,
            skipped: [0; Skip::ALL.len()],
            users: Users::default(),
            disagree: 0,
            with_rule: 0,
            no_headers: HeaderMap::new(),
        }
    }

    fn skipped(&self) -> u64 {
        self.skipped.iter().sum()
    }

    /// Reads `r` to its end, one line at a time, into one reused buffer.
    fn read(&mut self, r: &mut dyn BufRead) -> io::Result<()> {
        let mut buf = Vec::with_capacity(4096);
        loop {
            buf.clear();
            let n = (&mut *r)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.read += 1;
            if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') {
                skip_rest_of_line(r)?;
                self.skip(Skip::TooLong);
                continue;
            }
            if let Err(why) = self.line(&buf) {
                self.skip(why);
            }
        }
    }

    fn skip(&mut self, why: Skip) {
        if let Some(i) = Skip::ALL.iter().position(|s| *s == why) {
            self.skipped[i] += 1;
        }
    }

    /// Decides one line with both rulesets and counts it.
    fn line(&mut self, raw: &[u8]) -> Result<(), Skip> {
        let start = raw.iter().position(|&b| b == b'{').ok_or(Skip::NotJson)?;
        let raw = &raw[start..];
        let line: LogLine<'_> = match serde_json::from_slice(raw) {
            Ok(l) => l,
            // An access line that does not have the access shape, or something else.
            Err(_) if contains(raw, b"\"graylane::access\"") => return Err(Skip::Malformed),
            Err(_) => return Err(Skip::NotJson),
        };
        if line.target.as_deref() != Some("graylane::access") {
            return Err(Skip::OtherTarget);
        }
        let f = line.fields.ok_or(Skip::Malformed)?;
        let (Some(listener), Some(path)) = (f.listener.as_deref(), f.path.as_deref()) else {
            return Err(Skip::Malformed);
        };
        let listener = self
            .cfg
            .listeners
            .iter()
            .position(|l| l.name == listener)
            .ok_or(Skip::UnknownListener)?;
        let host = f.host.as_deref().map(strip_port);
        let service = self.router.route(host, path).ok_or(Skip::NoService)?;
        let markers = markers(&f)?;
        let now_ms = if self.ramps {
            line.timestamp
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .map(crate::unix_ms)
                .ok_or(Skip::BadTimestamp)?
        } else {
            0
        };

        let info = RequestInfo {
            markers: &markers,
            listener,
            service,
            path,
            headers: &self.no_headers,
            now_ms,
        };
        let user = match (markers.uid, markers.staff_uid) {
            (Some(u), _) => Some(User::Uid(u)),
            (None, Some(s)) => Some(User::Staff(s)),
            (None, None) => None,
        };
        let cfg = self.cfg;
        let from = decide(cfg, &mut self.live, &info, user);
        let to = decide(cfg, &mut self.cand, &info, user);
        if from.pool != to.pool {
            let pools = cfg.pool_names.len();
            if let Some(m) = self.moves.get_mut(from.pool * pools + to.pool) {
                m.add(user);
            }
        }
        if let Some(logged) = f.rule.as_deref() {
            self.with_rule += 1;
            let name = from
                .rule
                .map_or(DEFAULT_RULE, |i| self.live.rules.rule_name(i));
            if name != logged {
                self.disagree += 1;
            }
        }
        self.users.add(user);
        self.decided += 1;
        Ok(())
    }
}

/// Where one ruleset sent a line.
struct Sent {
    rule: Option<usize>,
    pool: PoolId,
}

/// The proxy's decision (`Shared::decide` without the clock and the guard), counted.
fn decide(cfg: &Config, t: &mut Tally<'_>, info: &RequestInfo<'_>, user: Option<User>) -> Sent {
    let d = t.rules.decide(info);
    let defined = cfg.services[info.service]
        .pool_by_id
        .get(d.pool)
        .copied()
        .flatten()
        .is_some();
    let pool = if defined {
        d.pool
    } else {
        t.pool_missing += 1;
        STABLE
    };
    let rule_idx = d.rule.unwrap_or(t.rules.len());
    if let Some(c) = t.by_rule.get_mut(rule_idx) {
        c.add(user);
    }
    if let Some(c) = t.by_pool.get_mut(pool) {
        c.add(user);
    }
    Sent { rule: d.rule, pool }
}

/// The line's markers, parsed as the proxy parses request values (numbers were logged as
/// numbers and need no parsing).
fn markers(f: &Fields<'_>) -> Result<Markers, Skip> {
    let mut m = Markers {
        uid: f.uid,
        staff_uid: f.staff_uid,
        entry_id: f.entry_id,
        ..Markers::default()
    };
    let text = [
        (MarkerKind::AgentGid, f.agent_gid.as_deref()),
        (MarkerKind::AppVersion, f.app_version.as_deref()),
        (MarkerKind::Device, f.device.as_deref()),
    ];
    for (kind, value) in text {
        if let Some(v) = value {
            m.set_from_str(kind, v).map_err(|_| Skip::InvalidMarker)?;
        }
    }
    Ok(m)
}

/// Consumes up to and including the next newline without keeping the bytes.
fn skip_rest_of_line(r: &mut dyn BufRead) -> io::Result<()> {
    loop {
        let avail = r.fill_buf()?;
        if avail.is_empty() {
            return Ok(());
        }
        if let Some(i) = avail.iter().position(|&b| b == b'\n') {
            r.consume(i + 1);
            return Ok(());
        }
        let n = avail.len();
        r.consume(n);
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// === the report ===

/// One ruleset as the report shows it.
struct Side<'a> {
    /// `live` or `candidate`.
    label: &'static str,
    file: String,
    version: Option<String>,
    sha256: String,
    /// Rule names in file order, then `default`, with their `route`.
    rules: Vec<(String, String)>,
    /// Rules with a `header:` or `cookie:` condition (they never match in a replay).
    unevaluated: Vec<String>,
    tally: &'a Tally<'a>,
}

impl<'a> Side<'a> {
    fn describe(
        label: &'static str,
        display: &str,
        path: &Path,
        c: &rules::Compiled,
        tally: &'a Tally<'a>,
    ) -> Self {
        let shape = RuleShape::scan(path);
        let rules = c
            .rules
            .rule_names()
            .map(|n| {
                let route = shape
                    .iter()
                    .find(|s| s.name == n)
                    .map_or("-", |s| s.route.as_str());
                (n.to_owned(), route.to_owned())
            })
            .chain(std::iter::once((
                DEFAULT_RULE.to_owned(),
                "stable".to_owned(),
            )))
            .collect();
        let unevaluated = shape
            .iter()
            .filter(|s| s.needs_headers)
            .map(|s| s.name.clone())
            .collect();
        Self {
            label,
            file: display.to_owned(),
            version: c.rules.version().map(str::to_owned),
            sha256: c.sha256.clone(),
            rules,
            unevaluated,
            tally,
        }
    }
}

/// What the report needs from a rule that the compiled [`RuleSet`] keeps to itself: its
/// route and whether it reads headers or cookies. Read from the YAML the compiler has
/// just accepted, so a failure here only costs those two columns.
struct RuleShape {
    name: String,
    route: String,
    needs_headers: bool,
}

impl RuleShape {
    fn scan(path: &Path) -> Vec<RuleShape> {
        let Ok(src) = std::fs::read_to_string(path) else {
            return Vec::new();
        };
        let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(&src) else {
            return Vec::new();
        };
        let Some(list) = doc.get("rules").and_then(|r| r.as_sequence()) else {
            return Vec::new();
        };
        list.iter()
            .filter_map(|r| {
                let name = r.get("name")?.as_str()?.to_owned();
                let route = r
                    .get("route")
                    .and_then(|v| v.as_str())
                    .unwrap_or("-")
                    .to_owned();
                let needs_headers = r
                    .get("when")
                    .is_some_and(|w| w.get("header").is_some() || w.get("cookie").is_some());
                Some(RuleShape {
                    name,
                    route,
                    needs_headers,
                })
            })
            .collect()
    }
}

struct Report<'a> {
    config: &'a str,
    log: &'a str,
    replay: &'a Replay<'a>,
    sides: &'a [Side<'a>; 2],
    pool_names: &'a [String],
}

/// `part / whole` in [0, 1]; 0 for an empty whole.
fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// A share as the tables print it.
fn pct(part: u64, whole: u64) -> String {
    format!("{:.2}%", share(part, whole) * 100.0)
}

const NOTE_HEADERS: &str = "header: and cookie: conditions cannot be evaluated from an \
     access log (headers and cookies are never logged): they count as not holding";
const NOTE_RAMPS: &str = "ramps are decided at each line's timestamp";
const NOTE_POOLS: &str = "guard and pool health are not replayed; a pool the service \
     lacks falls back to stable (pool_missing)";

impl Report<'_> {
    /// The moves shown: stable→gray and gray→stable always, any other pair that happened.
    fn moves(&self) -> Vec<(PoolId, PoolId, &Count)> {
        let n = self.pool_names.len();
        let mut out = Vec::new();
        for (i, c) in self.replay.moves.iter().enumerate() {
            let (from, to) = (i / n, i % n);
            let always = (from == STABLE && to == crate::config::GRAY)
                || (from == crate::config::GRAY && to == STABLE);
            if always || c.requests > 0 {
                out.push((from, to, c));
            }
        }
        // stable→gray first, then gray→stable, then by volume.
        out.sort_by_key(|(f, t, c)| {
            let rank = match (*f, *t) {
                (STABLE, crate::config::GRAY) => 0,
                (crate::config::GRAY, STABLE) => 1,
                _ => 2,
            };
            (rank, std::cmp::Reverse(c.requests))
        });
        out
    }

    fn moved_users(&self) -> u64 {
        let mut all = Users::default();
        for c in &self.replay.moves {
            all.uids.extend(&c.users.uids);
            all.staff.extend(&c.users.staff);
        }
        all.len()
    }

    fn pool(&self, id: PoolId) -> &str {
        self.pool_names.get(id).map_or("?", String::as_str)
    }

    fn to_json(&self) -> Value {
        let r = self.replay;
        let (decided, users) = (r.decided, r.users.len());
        let count = |c: &Count| {
            json!({
                "requests": c.requests,
                "request_share": share(c.requests, decided),
                "users": c.users.len(),
                "user_share": share(c.users.len(), users),
            })
        };
        let with = |mut v: Value, extra: Value| {
            if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
                o.extend(e);
            }
            v
        };
        let side = |s: &Side<'_>| {
            let rules: Vec<Value> = s
                .rules
                .iter()
                .zip(&s.tally.by_rule)
                .map(|((name, route), c)| with(count(c), json!({"rule": name, "route": route})))
                .collect();
            let pools: Vec<Value> = s
                .tally
                .by_pool
                .iter()
                .enumerate()
                .map(|(id, c)| with(count(c), json!({"pool": self.pool(id)})))
                .collect();
            json!({
                "file": s.file,
                "version": s.version,
                "sha256": s.sha256,
                "rules": rules,
                "pools": pools,
                "pool_missing": s.tally.pool_missing,
                "header_cookie_rules": s.unevaluated,
            })
        };
        let moves: Vec<Value> = self
            .moves()
            .into_iter()
            .map(|(f, t, c)| with(count(c), json!({"from": self.pool(f), "to": self.pool(t)})))
            .collect();
        let moved_requests: u64 = r.moves.iter().map(|c| c.requests).sum();
        let moved_users = self.moved_users();
        let reasons: serde_json::Map<String, Value> = Skip::ALL
            .iter()
            .zip(r.skipped)
            .map(|(s, n)| (s.name().to_owned(), Value::from(n)))
            .collect();
        let notes: Vec<&str> = [NOTE_HEADERS, NOTE_RAMPS, NOTE_POOLS]
            .into_iter()
            .filter(|n| r.ramps || *n != NOTE_RAMPS)
            .collect();
        json!({
            "config": self.config,
            "log": self.log,
            "lines": {
                "read": r.read,
                "decided": decided,
                "skipped": r.skipped(),
                "skipped_by_reason": reasons,
            },
            "users": users,
            "live": side(&self.sides[0]),
            "candidate": side(&self.sides[1]),
            "moves": moves,
            "moved": {
                "requests": moved_requests,
                "request_share": share(moved_requests, decided),
                "users": moved_users,
                "user_share": share(moved_users, users),
            },
            "live_vs_log": { "lines_with_rule": r.with_rule, "disagree": r.disagree },
            "notes": notes,
        })
    }

    fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        let r = self.replay;
        let (decided, users) = (r.decided, r.users.len());
        writeln!(
            out,
            "replay of {} with {} (live) and {} (candidate)",
            self.log, self.sides[0].file, self.sides[1].file
        )?;
        writeln!(
            out,
            "lines: {} read, {} decided, {} skipped; {} distinct users",
            r.read,
            decided,
            r.skipped(),
            users
        )?;

        for s in self.sides {
            writeln!(out)?;
            writeln!(
                out,
                "{} rules: {} (version {}, sha256 {})",
                s.label,
                s.file,
                s.version.as_deref().unwrap_or("-"),
                s.sha256.get(..12).unwrap_or(&s.sha256)
            )?;
            let mut t = Table::new(["rule", "route", "requests", "share", "users", "share"]);
            for ((name, route), c) in s.rules.iter().zip(&s.tally.by_rule) {
                t.row([
                    name.clone(),
                    route.clone(),
                    c.requests.to_string(),
                    pct(c.requests, decided),
                    c.users.len().to_string(),
                    pct(c.users.len(), users),
                ]);
            }
            t.write(out)?;
            writeln!(out)?;
            let mut t = Table::new(["pool", "", "requests", "share", "users", "share"]);
            for (id, c) in s.tally.by_pool.iter().enumerate() {
                if c.requests == 0 && id != STABLE && id != crate::config::GRAY {
                    continue;
                }
                t.row([
                    self.pool(id).to_owned(),
                    String::new(),
                    c.requests.to_string(),
                    pct(c.requests, decided),
                    c.users.len().to_string(),
                    pct(c.users.len(), users),
                ]);
            }
            t.write(out)?;
            if s.tally.pool_missing > 0 {
                writeln!(
                    out,
                    "  {} requests went to stable: their rule's pool is not defined by their service",
                    s.tally.pool_missing
                )?;
            }
        }

        writeln!(out)?;
        writeln!(out, "moves (live → candidate)")?;
        let mut t = Table::new(["from", "to", "requests", "share", "users", "share"]);
        for (f, to, c) in self.moves() {
            t.row([
                self.pool(f).to_owned(),
                format!("→ {}", self.pool(to)),
                c.requests.to_string(),
                pct(c.requests, decided),
                c.users.len().to_string(),
                pct(c.users.len(), users),
            ]);
        }
        let moved: u64 = r.moves.iter().map(|c| c.requests).sum();
        let moved_users = self.moved_users();
        t.row([
            "total".to_owned(),
            String::new(),
            moved.to_string(),
            pct(moved, decided),
            moved_users.to_string(),
            pct(moved_users, users),
        ]);
        t.write(out)?;

        if r.skipped() > 0 {
            writeln!(out)?;
            writeln!(out, "skipped lines")?;
            let mut t = Table::new(["reason", "lines"]);
            for (s, n) in Skip::ALL.iter().zip(r.skipped) {
                if n > 0 {
                    t.row([s.name().to_owned(), n.to_string()]);
                }
            }
            t.write(out)?;
        }

        writeln!(out)?;
        writeln!(out, "notes:")?;
        let names = |s: &Side<'_>| {
            if s.unevaluated.is_empty() {
                "none".to_owned()
            } else {
                s.unevaluated.join(", ")
            }
        };
        writeln!(
            out,
            "  - {NOTE_HEADERS}; rules with them: live {}; candidate {}",
            names(&self.sides[0]),
            names(&self.sides[1])
        )?;
        if r.ramps {
            writeln!(out, "  - {NOTE_RAMPS}")?;
        }
        writeln!(out, "  - {NOTE_POOLS}")?;
        if r.disagree > 0 {
            writeln!(
                out,
                "  - the live rules decide {} of {} lines differently from the rule the line \
                 logged: the rules changed since, or a header or cookie decided",
                r.disagree, r.with_rule
            )?;
        }
        Ok(())
    }
}

/// A plain text table: the first two columns left-aligned, the numbers right-aligned.
struct Table<const N: usize> {
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    fn new(head: [&str; N]) -> Self {
        Self {
            rows: vec![head.map(str::to_owned)],
        }
    }

    fn row(&mut self, r: [String; N]) {
        self.rows.push(r);
    }

    fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut width = [0usize; N];
        for r in &self.rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        for r in &self.rows {
            let mut line = String::from(" ");
            for (i, (c, w)) in r.iter().zip(width).enumerate() {
                let pad = " ".repeat(w - c.chars().count());
                line.push(' ');
                if i < 2 {
                    line.push_str(c);
                    line.push_str(&pad);
                } else {
                    line.push_str(&pad);
                    line.push_str(c);
                }
                line.push(' ');
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Fields<'_> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn markers_come_back_as_the_proxy_parsed_them() {
        let f = fields(
            r#"{"uid":42,"staff_uid":7,"agent_gid":"141338365001,2","entry_id":9,
                "app_version":"5.3.1.0","device":"iOS"}"#,
        );
        let m = markers(&f).unwrap();
        assert_eq!(m.uid, Some(42));
        assert_eq!(m.staff_uid, Some(7));
        assert_eq!(m.agent_gid.as_slice(), &[141_338_365_001, 2]);
        assert_eq!(m.entry_id, Some(9));
        assert_eq!(
            m.app_version.map(|v| v.to_string()).as_deref(),
            Some("5.3.1")
        );
        assert!(m.device.is_some());
    }

    #[test]
    fn a_marker_the_proxy_would_reject_skips_the_line() {
        let f = fields(r#"{"app_version":"five"}"#);
        assert_eq!(markers(&f).err(), Some(Skip::InvalidMarker));
    }

    #[test]
    fn escaped_strings_still_parse() {
        let l: LogLine<'_> = serde_json::from_str(
            r#"{"target":"graylane::access","fields":{"listener":"im","path":"/a\"b"}}"#,
        )
        .unwrap();
        assert_eq!(l.fields.unwrap().path.as_deref(), Some("/a\"b"));
    }

    #[test]
    fn a_too_long_line_is_dropped_without_losing_the_next() {
        let mut data = vec![b'x'; MAX_LINE + 10];
        data.extend_from_slice(b"\nnext\n");
        let mut r = io::Cursor::new(data);
        let mut buf = Vec::new();
        let n = (&mut r)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .unwrap();
        assert_eq!(n, MAX_LINE + 1);
        skip_rest_of_line(&mut r).unwrap();
        buf.clear();
        r.read_until(b'\n', &mut buf).unwrap();
        assert_eq!(buf, b"next\n");
    }

    #[test]
    fn tables_align_numbers_right() {
        let mut t = Table::new(["rule", "route", "requests"]);
        t.row(["a".into(), "gray".into(), "5".into()]);
        t.row(["default".into(), "stable".into(), "12345".into()]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[1].len(), lines[2].len(), "{s}");
        assert!(lines[1].ends_with("    5"), "{s}");
    }

    #[test]
    fn shares_of_nothing_are_zero() {
        assert_eq!(share(0, 0), 0.0);
        assert_eq!(pct(1, 3), "33.33%");
    }
}
