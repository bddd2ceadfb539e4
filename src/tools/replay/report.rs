//! The report: tables for people, JSON for scripts.

use super::*;

// === the report ===

/// Requests and distinct users of one bucket (a rule, a pool, a move).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Count {
    pub(super) requests: u64,
    pub(super) users: u64,
}

/// One ruleset's buckets.
#[derive(Debug)]
pub(super) struct SideTotals {
    /// Per rule in file order, then `default`.
    pub(super) rules: Vec<Count>,
    /// Per global pool id.
    pub(super) pools: Vec<Count>,
    pub(super) pool_missing: u64,
}

/// Everything counted, with distinct users resolved.
#[derive(Debug)]
pub(super) struct Totals {
    pub(super) live: SideTotals,
    pub(super) cand: SideTotals,
    /// Every from→to pair, moved or not.
    pub(super) moves: Vec<(PoolId, PoolId, Count)>,
    /// Over all pairs: a user who moved both ways counts once.
    pub(super) moved: Count,
    /// Distinct users over all decided lines: the denominator of user shares.
    pub(super) users: u64,
}

/// One ruleset as the report shows it.
pub(super) struct Side<'a> {
    /// `live` or `candidate`.
    pub(super) label: &'static str,
    pub(super) file: String,
    pub(super) version: Option<String>,
    pub(super) sha256: String,
    /// Rule names in file order, then `default`, with their `route`.
    pub(super) rules: Vec<(String, String)>,
    /// Rules with a `header:` or `cookie:` condition (they never match in a replay).
    pub(super) unevaluated: Vec<String>,
    pub(super) totals: &'a SideTotals,
}

impl<'a> Side<'a> {
    pub(super) fn describe(
        label: &'static str,
        display: &str,
        path: &Path,
        c: &rules::Compiled,
        totals: &'a SideTotals,
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
            totals,
        }
    }
}

/// What the report needs from a rule that the compiled [`RuleSet`] keeps to itself: its
/// route and whether it reads headers or cookies. Read from the YAML the compiler has
/// just accepted, so a failure here only costs those two columns.
pub(super) struct RuleShape {
    pub(super) name: String,
    pub(super) route: String,
    pub(super) needs_headers: bool,
}

impl RuleShape {
    pub(super) fn scan(path: &Path) -> Vec<RuleShape> {
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

pub(super) struct Report<'a> {
    pub(super) config: &'a str,
    pub(super) log: &'a str,
    pub(super) replay: &'a Replay<'a>,
    pub(super) totals: &'a Totals,
    pub(super) sides: &'a [Side<'a>; 2],
    pub(super) pool_names: &'a [String],
}

/// `part / whole` in [0, 1]; 0 for an empty whole.
pub(super) fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// A share as the tables print it.
pub(super) fn pct(part: u64, whole: u64) -> String {
    format!("{:.2}%", share(part, whole) * 100.0)
}

pub(super) const NOTE_HEADERS: &str = "header: and cookie: conditions cannot be evaluated from an \
     access log (headers and cookies are never logged): they count as not holding";
pub(super) const NOTE_RAMPS: &str = "ramps are decided at each line's timestamp";
pub(super) const NOTE_POOLS: &str = "guard and pool health are not replayed; a pool the service \
     lacks falls back to stable (pool_missing)";

impl Report<'_> {
    /// The moves shown: stable→gray and gray→stable always, any other pair that happened;
    /// stable→gray first, then gray→stable, then by volume.
    pub(super) fn moves(&self) -> Vec<(PoolId, PoolId, Count)> {
        let rank = |from: PoolId, to: PoolId| match (from, to) {
            (STABLE, GRAY) => 0,
            (GRAY, STABLE) => 1,
            _ => 2,
        };
        let mut out: Vec<_> = self
            .totals
            .moves
            .iter()
            .copied()
            .filter(|&(f, t, c)| rank(f, t) < 2 || c.requests > 0)
            .collect();
        out.sort_by_key(|&(f, t, c)| (rank(f, t), std::cmp::Reverse(c.requests)));
        out
    }

    pub(super) fn pool(&self, id: PoolId) -> &str {
        self.pool_names.get(id).map_or("?", String::as_str)
    }

    pub(super) fn to_json(&self) -> Value {
        let r = self.replay;
        let (decided, users) = (r.decided, self.totals.users);
        let count = |c: &Count| {
            json!({
                "requests": c.requests,
                "request_share": share(c.requests, decided),
                "users": c.users,
                "user_share": share(c.users, users),
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
                .zip(&s.totals.rules)
                .map(|((name, route), c)| with(count(c), json!({"rule": name, "route": route})))
                .collect();
            let pools: Vec<Value> = s
                .totals
                .pools
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
                "pool_missing": s.totals.pool_missing,
                "header_cookie_rules": s.unevaluated,
            })
        };
        let moves: Vec<Value> = self
            .moves()
            .into_iter()
            .map(|(f, t, c)| with(count(&c), json!({"from": self.pool(f), "to": self.pool(t)})))
            .collect();
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
            "moved": count(&self.totals.moved),
            "live_vs_log": { "lines_with_rule": r.with_rule, "disagree": r.disagree },
            "notes": notes,
        })
    }

    pub(super) fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        let r = self.replay;
        let (decided, users) = (r.decided, self.totals.users);
        let cells = |c: Count| {
            [
                c.requests.to_string(),
                pct(c.requests, decided),
                c.users.to_string(),
                pct(c.users, users),
            ]
        };
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
            let mut t = Table::new(["rule", "route", "requests", "share", "users", "share"], 2);
            for ((name, route), c) in s.rules.iter().zip(&s.totals.rules) {
                let [a, b, c, d] = cells(*c);
                t.row([name.clone(), route.clone(), a, b, c, d]);
            }
            t.write(out)?;
            writeln!(out)?;
            let mut t = Table::new(["pool", "", "requests", "share", "users", "share"], 2);
            for (id, c) in s.totals.pools.iter().enumerate() {
                if c.requests == 0 && id != STABLE && id != GRAY {
                    continue;
                }
                let [a, b, c, d] = cells(*c);
                t.row([self.pool(id).to_owned(), String::new(), a, b, c, d]);
            }
            t.write(out)?;
            if s.totals.pool_missing > 0 {
                writeln!(
                    out,
                    "  {} requests went to stable: their rule's pool is not defined by their service",
                    s.totals.pool_missing
                )?;
            }
        }

        writeln!(out)?;
        writeln!(out, "moves (live → candidate)")?;
        let mut t = Table::new(["from", "to", "requests", "share", "users", "share"], 2);
        for (f, to, c) in self.moves() {
            let [a, b, c, d] = cells(c);
            t.row([
                self.pool(f).to_owned(),
                format!("→ {}", self.pool(to)),
                a,
                b,
                c,
                d,
            ]);
        }
        let [a, b, c, d] = cells(self.totals.moved);
        t.row(["total".to_owned(), String::new(), a, b, c, d]);
        t.write(out)?;

        if r.skipped() > 0 {
            writeln!(out)?;
            writeln!(out, "skipped lines")?;
            let mut t = Table::new(["reason", "lines"], 1);
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

/// A plain text table: names left-aligned, numbers right-aligned so that their digits
/// line up.
pub(super) struct Table<const N: usize> {
    pub(super) rows: Vec<[String; N]>,
    /// The leading columns that hold names.
    pub(super) text_cols: usize,
}

impl<const N: usize> Table<N> {
    pub(super) fn new(head: [&str; N], text_cols: usize) -> Self {
        Self {
            rows: vec![head.map(str::to_owned)],
            text_cols,
        }
    }

    pub(super) fn row(&mut self, r: [String; N]) {
        self.rows.push(r);
    }

    pub(super) fn write(&self, out: &mut dyn Write) -> io::Result<()> {
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
                if i < self.text_cols {
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
