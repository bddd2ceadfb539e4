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
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use http::HeaderMap;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{Config, PoolId, GRAY, STABLE};
use crate::markers::{MarkerKind, Markers};
use crate::routing::{strip_port, Router};
use crate::rules::{self, RequestInfo, RuleSet, DEFAULT_RULE};

mod log;
mod report;
mod tally;
#[cfg(test)]
mod tests;

use log::*;
use report::*;
use tally::*;

/// Lines longer than this are skipped without being held in memory: an access line is
/// well under 100 KiB (the path is bounded by `max_header_bytes`), and a file without
/// newlines must not be read whole.
const MAX_LINE: usize = 1 << 20;

/// Bytes read at a time: a few hundred access lines.
const BLOCK: usize = 1 << 17;

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
    /// The access log could not be opened or read. (The OS's reason is the source, which
    /// main's `{e:#}` prints after the message.)
    #[error("cannot read {path}")]
    Log {
        /// The file as given on the command line.
        path: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The report could not be written (a closed pipe, a full disk).
    #[error("cannot write the report")]
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
        let mut file = File::open(log).map_err(read_err)?;
        replay.read(&mut file).map_err(read_err)?;
    }

    let totals = replay.totals();
    let sides = [
        Side::describe(
            "live",
            &cfg.rules_file_display,
            &cfg.rules_file,
            &live,
            &totals.live,
        ),
        Side::describe("candidate", &cand_display, candidate, &cand, &totals.cand),
    ];
    let report = Report {
        config: &config.display().to_string(),
        log: &log_display,
        replay: &replay,
        totals: &totals,
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

/// The streaming pass over the log: one hash lookup per line, nothing kept per line.
struct Replay<'a> {
    cfg: &'a Config,
    router: Router,
    /// Some ruleset ramps: lines need their timestamp.
    ramps: bool,
    live: Tally<'a>,
    cand: Tally<'a>,
    /// Requests per `from * pools + to`, from the live pool to the candidate's.
    moves: Vec<u64>,
    layout: Layout,
    users: Users,
    read: u64,
    decided: u64,
    skipped: [u64; Skip::ALL.len()],
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
        let layout = Layout {
            live_rules: live.len() + 1,
            cand_rules: cand.len() + 1,
            pools,
        };
        Self {
            cfg,
            router: Router::new(cfg),
            ramps: live.has_ramps() || cand.has_ramps(),
            live: Tally::new(live, pools),
            cand: Tally::new(cand, pools),
            moves: vec![0; pools * pools],
            layout,
            users: Users::new(layout.len()),
            read: 0,
            decided: 0,
            skipped: [0; Skip::ALL.len()],
            disagree: 0,
            with_rule: 0,
            no_headers: HeaderMap::new(),
        }
    }

    fn skipped(&self) -> u64 {
        self.skipped.iter().sum()
    }

    /// Reads `r` to its end and decides every line.
    fn read(&mut self, r: &mut dyn Read) -> io::Result<()> {
        for_each_line(r, |chunk| {
            self.read += 1;
            let outcome = match chunk {
                Chunk::Line(line) => self.line(line),
                Chunk::TooLong => Err(Skip::TooLong),
            };
            if let Err(why) = outcome {
                self.skip(why);
            }
        })
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
            headers: (&self.no_headers).into(),
            now_ms,
        };
        let (live_rule, from) = self.live.decide(self.cfg, &info);
        let (cand_rule, to) = self.cand.decide(self.cfg, &info);
        let pools = self.layout.pools;
        if from != to {
            if let Some(m) = self.moves.get_mut(from * pools + to) {
                *m += 1;
            }
        }
        let user = match (markers.uid, markers.staff_uid) {
            (Some(u), _) => Some(User::Uid(u)),
            (None, Some(s)) => Some(User::Staff(s)),
            (None, None) => None,
        };
        if let Some(user) = user {
            let l = self.layout;
            let row = self.users.row(user);
            self.users.set(row, l.live_rule(live_rule));
            self.users.set(row, l.cand_rule(cand_rule));
            self.users.set(row, l.live_pool(from));
            self.users.set(row, l.cand_pool(to));
            if from != to {
                self.users.set(row, l.moved(from, to));
            }
        }
        if let Some(logged) = f.rule.as_deref() {
            self.with_rule += 1;
            if self.live.rules.rule_name(live_rule) != logged {
                self.disagree += 1;
            }
        }
        self.decided += 1;
        Ok(())
    }

    /// The numbers the report shows.
    fn totals(&self) -> Totals {
        let l = self.layout;
        let users = self.users.per_bucket(l.len());
        let count = |requests: u64, bucket: usize| Count {
            requests,
            users: users.get(bucket).copied().unwrap_or(0),
        };
        let side =
            |t: &Tally<'_>, rule: fn(Layout, usize) -> usize, pool: fn(Layout, usize) -> usize| {
                SideTotals {
                    rules: t
                        .by_rule
                        .iter()
                        .enumerate()
                        .map(|(i, &n)| count(n, rule(l, i)))
                        .collect(),
                    pools: t
                        .by_pool
                        .iter()
                        .enumerate()
                        .map(|(p, &n)| count(n, pool(l, p)))
                        .collect(),
                    pool_missing: t.pool_missing,
                }
            };
        let moves = self
            .moves
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let (from, to) = (i / l.pools, i % l.pools);
                (from, to, count(n, l.moved(from, to)))
            })
            .collect();
        Totals {
            live: side(&self.live, Layout::live_rule, Layout::live_pool),
            cand: side(&self.cand, Layout::cand_rule, Layout::cand_pool),
            moves,
            moved: Count {
                requests: self.moves.iter().sum(),
                users: self.users.any_of(l.moved(0, 0)..l.len()),
            },
            users: self.users.len(),
        }
    }
}
