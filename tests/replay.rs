//! `graylane replay` (SPEC §9.4) through the built binary: a generated access log whose
//! per-rule counts, moves and skipped lines are worked out here independently and must
//! match the `--json` report exactly; the tables name the moves; a broken candidate exits
//! 1 at its `FILE:LINE:COLUMN`; and the proxy's own access log replays to the decisions
//! it logged.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::{json, Value};

fn graylane() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_graylane"));
    c.env_remove("RUST_LOG").stdin(Stdio::null());
    c
}

fn replay(config: &Path, candidate: &Path, log: &Path, json: bool) -> Output {
    let mut c = graylane();
    c.arg("replay")
        .arg("--config")
        .arg(config)
        .arg("--rules")
        .arg(candidate)
        .arg("--log")
        .arg(log);
    if json {
        c.arg("--json");
    }
    c.output().expect("graylane runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn report(o: &Output) -> Value {
    assert!(o.status.success(), "replay failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

// === the scenario ===

const CONFIG: &str = r#"
listeners:
  - name: im
    bind: "127.0.0.1:0"
  - name: console
    bind: "127.0.0.1:0"
admin: { bind: "127.0.0.1:0" }
rules_file: rules.yaml
services:
  - name: chat
    match: { path_prefix: /chat }
    pools:
      stable: { endpoints: ["127.0.0.1:9"] }
      gray:   { endpoints: ["127.0.0.1:9"] }
  - name: console-api
    match: { host: console.example.com, path_prefix: /api }
    pools:
      stable: { endpoints: ["127.0.0.1:9"] }
      gray:   { endpoints: ["127.0.0.1:9"] }
      canary: { endpoints: ["127.0.0.1:9"] }
  - name: static
    match: { path_prefix: /static }
    pools:
      stable: { endpoints: ["127.0.0.1:9"] }
      gray:   { endpoints: ["127.0.0.1:9"] }
"#;

/// Live: uid range A (on new app versions), three staff uids, and group 500 on the console.
const LIVE: &str = r#"
version: "live-1"
rules:
  - name: vip-never-gray
    when:
      uid: { in: [88000001, 88000002] }
    route: stable
  - name: gray-staff
    when:
      staff_uid: { in: [9001, 9002, 9003] }
    route: gray
  - name: gray-groups
    when:
      agent_gid: { any: [500] }
      listener: [console]
    route: gray
  - name: uid-range-a
    when:
      uid: { ranges: ["10000000-10000999"] }
      app_version: ">=5.2.0"
    route: gray
"#;

/// The ramp's start: lines before it get step 0, lines after it step 100.
const RAMP_START_MS: u64 = 1_796_540_400_000; // 2026-12-06T07:00:00Z

/// Candidate: drops `gray-staff`, sends group 600 to `canary` (only console-api has it),
/// widens the uid ranges to A ∪ B, adds a header rule (never holds in a replay) and a ramp
/// on entry 777.
fn candidate_rules() -> String {
    format!(
        r#"
version: "cand-1"
rules:
  - name: vip-never-gray
    when:
      uid: {{ in: [88000001, 88000002] }}
    route: stable
  - name: canary-groups
    when:
      agent_gid: {{ any: [600] }}
    route: canary
  - name: gray-groups
    when:
      agent_gid: {{ any: [500] }}
      listener: [console]
    route: gray
  - name: uid-range-ab
    when:
      uid: {{ ranges: ["10000000-10000999", "10002000-10002499"] }}
      app_version: ">=5.2.0"
    route: gray
  - name: beta-header
    when:
      header: {{ x-beta: {{ in: ["1"] }} }}
    route: gray
  - name: ramp-entry
    when:
      entry_id: {{ in: [777] }}
      percent: {{ of: uid, steps: [100], every: 1h, start: "{}" }}
    route: gray
"#,
        rfc3339(RAMP_START_MS)
    )
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// One logged request.
#[derive(Debug, Clone)]
struct Req {
    ts_ms: u64,
    listener: &'static str,
    host: Option<&'static str>,
    path: &'static str,
    uid: Option<u64>,
    staff_uid: Option<u64>,
    agent_gid: Vec<u64>,
    entry_id: Option<u64>,
    app_version: Option<&'static str>,
}

/// The user of a line: uid first, then staff uid, in separate id spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum User {
    Uid(u64),
    Staff(u64),
}

impl Req {
    fn user(&self) -> Option<User> {
        self.uid.map(User::Uid).or(self.staff_uid.map(User::Staff))
    }

    fn service(&self) -> Option<&'static str> {
        let seg = |p: &str| self.path == p || self.path.starts_with(&format!("{p}/"));
        if seg("/chat") {
            Some("chat")
        } else if self.host == Some("console.example.com") && seg("/api") {
            Some("console-api")
        } else if seg("/static") {
            Some("static")
        } else {
            None
        }
    }

    fn new_version(&self) -> bool {
        // ">=5.2.0", numerically per part.
        matches!(self.app_version, Some("5.2.0" | "5.3.1.0" | "5.10" | "6"))
    }

    fn live(&self) -> (&'static str, &'static str) {
        if matches!(self.uid, Some(88_000_001 | 88_000_002)) {
            ("vip-never-gray", "stable")
        } else if matches!(self.staff_uid, Some(9001..=9003)) {
            ("gray-staff", "gray")
        } else if self.agent_gid.contains(&500) && self.listener == "console" {
            ("gray-groups", "gray")
        } else if self
            .uid
            .is_some_and(|u| (10_000_000..=10_000_999).contains(&u))
            && self.new_version()
        {
            ("uid-range-a", "gray")
        } else {
            ("default", "stable")
        }
    }

    fn candidate(&self) -> (&'static str, &'static str) {
        let in_ab = |u: u64| {
            (10_000_000..=10_000_999).contains(&u) || (10_002_000..=10_002_499).contains(&u)
        };
        if matches!(self.uid, Some(88_000_001 | 88_000_002)) {
            ("vip-never-gray", "stable")
        } else if self.agent_gid.contains(&600) {
            // Only console-api defines canary: elsewhere the pool falls back to stable.
            let pool = if self.service() == Some("console-api") {
                "canary"
            } else {
                "stable"
            };
            ("canary-groups", pool)
        } else if self.agent_gid.contains(&500) && self.listener == "console" {
            ("gray-groups", "gray")
        } else if self.uid.is_some_and(in_ab) && self.new_version() {
            ("uid-range-ab", "gray")
        } else if self.entry_id == Some(777) && self.uid.is_some() && self.ts_ms >= RAMP_START_MS {
            ("ramp-entry", "gray")
        } else {
            ("default", "stable")
        }
    }

    /// The line as `log_access` writes it, with `rule` as logged.
    fn line(&self, logged_rule: &str) -> String {
        let mut f = serde_json::Map::new();
        f.insert("listener".into(), json!(self.listener));
        f.insert("peer".into(), json!("10.0.0.7"));
        f.insert("method".into(), json!("GET"));
        if let Some(h) = self.host {
            let with_port = if self.listener == "console" {
                format!("{h}:8443")
            } else {
                h.to_owned()
            };
            f.insert("host".into(), json!(with_port));
        }
        f.insert("path".into(), json!(self.path));
        if let Some(u) = self.uid {
            f.insert("uid".into(), json!(u));
        }
        if let Some(u) = self.staff_uid {
            f.insert("staff_uid".into(), json!(u));
        }
        if !self.agent_gid.is_empty() {
            let g: Vec<String> = self.agent_gid.iter().map(u64::to_string).collect();
            f.insert("agent_gid".into(), json!(g.join(",")));
        }
        if let Some(e) = self.entry_id {
            f.insert("entry_id".into(), json!(e));
        }
        if let Some(v) = self.app_version {
            f.insert("app_version".into(), json!(v));
        }
        f.insert("service".into(), json!(self.service().unwrap_or("-")));
        f.insert("pool".into(), json!(self.live().1));
        f.insert("rule".into(), json!(logged_rule));
        f.insert("status".into(), json!(200));
        f.insert("ms".into(), json!(1.25));
        json!({
            "timestamp": rfc3339(self.ts_ms),
            "level": "INFO",
            "fields": f,
            "target": "graylane::access",
        })
        .to_string()
    }
}

/// splitmix64: the same log on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

fn generate(n: usize) -> Vec<Req> {
    let mut rng = Rng(20_261_206);
    let versions = [
        None,
        Some("5.1.9"),
        Some("5.2.0"),
        Some("5.3.1.0"),
        Some("5.10"),
        Some("6"),
    ];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        // Two hours around the ramp's start.
        let ts_ms = RAMP_START_MS - 3_600_000 + rng.below(7_200_000);
        let roll = rng.below(100);
        let req = if roll < 70 {
            // C-end: uids around ranges A and B, a few VIPs.
            let uid = if rng.below(200) == 0 {
                rng.pick(&[88_000_001, 88_000_002])
            } else {
                10_000_000 + rng.below(3_000)
            };
            Req {
                ts_ms,
                listener: "im",
                host: rng.pick(&[None, Some("im.example.com")]),
                path: rng.pick(&[
                    "/chat/send",
                    "/chat",
                    "/static/app.js",
                    "/chatroom",
                    "/chat/history",
                ]),
                uid: Some(uid),
                staff_uid: None,
                agent_gid: Vec::new(),
                entry_id: rng.pick(&[None, None, Some(777), Some(778)]),
                app_version: rng.pick(&versions),
            }
        } else if roll < 92 {
            // B-end: staff with groups, on the console.
            let gids: &[&[u64]] = &[&[], &[500], &[600, 7], &[7, 8], &[8, 500], &[600]];
            Req {
                ts_ms,
                listener: rng.pick(&["console", "console", "im"]),
                host: rng.pick(&[
                    Some("console.example.com"),
                    Some("console.example.com"),
                    None,
                ]),
                path: rng.pick(&["/api/session", "/api", "/static/app.css", "/chat/send"]),
                uid: None,
                staff_uid: Some(9000 + rng.below(20)),
                agent_gid: rng.pick(gids).to_vec(),
                entry_id: None,
                app_version: None,
            }
        } else {
            // Anonymous: static resources before login.
            Req {
                ts_ms,
                listener: "im",
                host: None,
                path: rng.pick(&["/static/index.html", "/chat"]),
                uid: None,
                staff_uid: None,
                agent_gid: Vec::new(),
                entry_id: rng.pick(&[None, Some(777)]),
                app_version: rng.pick(&versions),
            }
        };
        out.push(req);
    }
    out
}

/// What the report must say, counted here without graylane.
#[derive(Default)]
struct Expected {
    read: u64,
    decided: u64,
    skipped: BTreeMap<&'static str, u64>,
    users: HashSet<User>,
    live: BTreeMap<&'static str, (u64, HashSet<User>)>,
    cand: BTreeMap<&'static str, (u64, HashSet<User>)>,
    moves: BTreeMap<(&'static str, &'static str), (u64, HashSet<User>)>,
    pool_missing: u64,
    disagree: u64,
}

struct Scenario {
    _dir: tempfile::TempDir,
    config: PathBuf,
    candidate: PathBuf,
    log: PathBuf,
    expected: Expected,
}

/// Writes config, live rules, candidate and a log of `n` requests plus noise, and counts
/// what replay must report.
fn scenario(n: usize) -> Scenario {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("graylane.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    std::fs::write(dir.path().join("rules.yaml"), LIVE).unwrap();
    let candidate = dir.path().join("rules.next.yaml");
    std::fs::write(&candidate, candidate_rules()).unwrap();

    let mut e = Expected::default();
    let mut log = String::new();
    let skip = |e: &mut Expected, log: &mut String, line: &str, why: &'static str| {
        log.push_str(line);
        log.push('\n');
        e.read += 1;
        *e.skipped.entry(why).or_default() += 1;
    };

    for (i, r) in generate(n).iter().enumerate() {
        // Every 97th line logged another rule: the live rules changed since.
        let (live_rule, live_pool) = r.live();
        let logged = if i % 97 == 0 {
            "retired-rule"
        } else {
            live_rule
        };
        log.push_str(&r.line(logged));
        log.push('\n');
        e.read += 1;
        if r.service().is_none() {
            *e.skipped.entry("no_service").or_default() += 1;
            continue;
        }
        e.decided += 1;
        if logged != live_rule {
            e.disagree += 1;
        }
        let user = r.user();
        let (cand_rule, cand_pool) = r.candidate();
        if cand_rule == "canary-groups" && cand_pool == "stable" {
            e.pool_missing += 1;
        }
        let count = |entry: &mut (u64, HashSet<User>)| {
            entry.0 += 1;
            entry.1.extend(user);
        };
        count(e.live.entry(live_rule).or_default());
        count(e.cand.entry(cand_rule).or_default());
        if live_pool != cand_pool {
            count(e.moves.entry((live_pool, cand_pool)).or_default());
        }
        e.users.extend(user);

        // Noise between the requests.
        match i % 1000 {
            10 => skip(
                &mut e,
                &mut log,
                "2026-12-06T07:01:47.571424Z  INFO graylane::access: listener=im path=/chat",
                "not_json",
            ),
            20 => skip(
                &mut e,
                &mut log,
                r#"{"timestamp":"2026-12-06T07:01:47Z","level":"INFO","fields":{"message":"listening","addr":"127.0.0.1:8080"},"target":"graylane::server"}"#,
                "other_target",
            ),
            30 => skip(&mut e, &mut log, "", "not_json"),
            40 => skip(
                &mut e,
                &mut log,
                "\u{1b}[2m garbage {{{ not json",
                "not_json",
            ),
            50 => {
                let mut other = r.clone();
                other.listener = "partner";
                skip(&mut e, &mut log, &other.line("default"), "unknown_listener");
            }
            60 => skip(
                &mut e,
                &mut log,
                r#"{"timestamp":"2026-12-06T07:01:47Z","level":"INFO","fields":{"listener":"im","uid":1},"target":"graylane::access"}"#,
                "malformed",
            ),
            70 => skip(
                &mut e,
                &mut log,
                r#"{"timestamp":"2026-12-06T07:01:47Z","level":"INFO","fields":{"listener":"im","path":"/chat","uid":"12"},"target":"graylane::access"}"#,
                "malformed",
            ),
            80 => {
                let mut bad = r.clone();
                bad.path = "/chat";
                bad.app_version = Some("five");
                skip(&mut e, &mut log, &bad.line("default"), "invalid_marker");
            }
            90 => skip(
                &mut e,
                &mut log,
                r#"{"timestamp":"yesterday","level":"INFO","fields":{"listener":"im","path":"/chat","uid":5},"target":"graylane::access"}"#,
                "bad_timestamp",
            ),
            _ => {}
        }
    }
    let log_path = dir.path().join("access.log");
    std::fs::write(&log_path, log).unwrap();
    Scenario {
        _dir: dir,
        config,
        candidate,
        log: log_path,
        expected: e,
    }
}

fn rule_counts(side: &Value) -> BTreeMap<String, (u64, u64)> {
    side["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().unwrap().to_owned(),
                (
                    r["requests"].as_u64().unwrap(),
                    r["users"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

fn expected_rules(
    names: &[&str],
    got: &BTreeMap<&'static str, (u64, HashSet<User>)>,
) -> BTreeMap<String, (u64, u64)> {
    names
        .iter()
        .map(|n| {
            let (r, u) = got.get(n).map_or((0, 0), |(r, u)| (*r, u.len() as u64));
            ((*n).to_owned(), (r, u))
        })
        .collect()
}

// === tests ===

#[test]
fn json_numbers_match_an_independent_count() {
    let s = scenario(20_000);
    let e = &s.expected;
    let v = report(&replay(&s.config, &s.candidate, &s.log, true));

    // Lines.
    assert_eq!(v["lines"]["read"], e.read, "{v:#}");
    assert_eq!(v["lines"]["decided"], e.decided);
    assert_eq!(v["lines"]["skipped"], e.read - e.decided);
    for (reason, n) in v["lines"]["skipped_by_reason"].as_object().unwrap() {
        let want = e.skipped.get(reason.as_str()).copied().unwrap_or(0);
        assert_eq!(n.as_u64(), Some(want), "skipped {reason}");
    }
    for reason in e.skipped.keys() {
        assert!(
            v["lines"]["skipped_by_reason"].get(reason).is_some(),
            "{reason}"
        );
    }
    assert!(e.skipped["unknown_listener"] > 0 && e.skipped["no_service"] > 0);
    assert_eq!(v["users"], e.users.len() as u64);

    // Per rule, both rulesets, in file order then default.
    let live_names = [
        "vip-never-gray",
        "gray-staff",
        "gray-groups",
        "uid-range-a",
        "default",
    ];
    let cand_names = [
        "vip-never-gray",
        "canary-groups",
        "gray-groups",
        "uid-range-ab",
        "beta-header",
        "ramp-entry",
        "default",
    ];
    let order = |side: &Value| -> Vec<String> {
        side["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(order(&v["live"]), live_names);
    assert_eq!(order(&v["candidate"]), cand_names);
    assert_eq!(
        rule_counts(&v["live"]),
        expected_rules(&live_names, &e.live)
    );
    assert_eq!(
        rule_counts(&v["candidate"]),
        expected_rules(&cand_names, &e.cand)
    );
    // Every rule of the scenario is exercised, except the header rule.
    for (name, (requests, _)) in rule_counts(&v["candidate"]) {
        assert_eq!(requests == 0, name == "beta-header", "{name}");
    }
    assert_eq!(
        v["candidate"]["header_cookie_rules"],
        json!(["beta-header"])
    );
    assert_eq!(v["live"]["header_cookie_rules"], json!([]));
    assert_eq!(v["candidate"]["pool_missing"], e.pool_missing);
    assert!(e.pool_missing > 0);

    // Shares are of decided lines and of all distinct users.
    let first = &v["live"]["rules"][3];
    let (req, users) = (
        first["requests"].as_u64().unwrap(),
        first["users"].as_u64().unwrap(),
    );
    let close = |a: &Value, b: f64| (a.as_f64().unwrap() - b).abs() < 1e-12;
    assert!(close(
        &first["request_share"],
        req as f64 / e.decided as f64
    ));
    assert!(close(
        &first["user_share"],
        users as f64 / e.users.len() as f64
    ));

    // Moves: every pair with its requests and distinct users, stable→gray first.
    let moves: BTreeMap<(String, String), (u64, u64)> = v["moves"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["requests"].as_u64().unwrap() > 0)
        .map(|m| {
            (
                (
                    m["from"].as_str().unwrap().to_owned(),
                    m["to"].as_str().unwrap().to_owned(),
                ),
                (
                    m["requests"].as_u64().unwrap(),
                    m["users"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    let want: BTreeMap<(String, String), (u64, u64)> = e
        .moves
        .iter()
        .map(|((f, t), (r, u))| (((*f).to_owned(), (*t).to_owned()), (*r, u.len() as u64)))
        .collect();
    assert_eq!(moves, want);
    for pair in [
        ("stable", "gray"),
        ("gray", "stable"),
        ("stable", "canary"),
        ("gray", "canary"),
    ] {
        assert!(
            want.contains_key(&(pair.0.to_owned(), pair.1.to_owned())),
            "{pair:?} exercised"
        );
    }
    assert_eq!(v["moves"][0]["from"], "stable");
    assert_eq!(v["moves"][0]["to"], "gray");
    assert_eq!(v["moves"][1]["from"], "gray");
    assert_eq!(v["moves"][1]["to"], "stable");
    let moved: u64 = e.moves.values().map(|m| m.0).sum();
    let moved_users: HashSet<User> = e.moves.values().flat_map(|m| m.1.iter().copied()).collect();
    assert_eq!(v["moved"]["requests"], moved);
    assert_eq!(v["moved"]["users"], moved_users.len() as u64);

    // The live rules against what the lines logged.
    assert_eq!(v["live_vs_log"]["lines_with_rule"], e.decided);
    assert_eq!(v["live_vs_log"]["disagree"], e.disagree);
}

#[test]
fn tables_name_the_moves_and_the_caveats() {
    let s = scenario(3_000);
    let e = &s.expected;
    let o = replay(&s.config, &s.candidate, &s.log, false);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let moves = text
        .split("moves (live → candidate)")
        .nth(1)
        .unwrap_or_else(|| panic!("no moves section:\n{text}"));
    for (from, to) in [("stable", "gray"), ("gray", "stable")] {
        let (requests, users) = e
            .moves
            .get(&(from, to))
            .map_or((0, 0), |(r, u)| (r.to_owned(), u.len()));
        let line = moves
            .lines()
            .find(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.len() > 3 && w[0] == from && w[1] == "→" && w[2] == to
            })
            .unwrap_or_else(|| panic!("no {from} → {to} line:\n{text}"));
        let w: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(w[3], requests.to_string(), "{line}");
        assert_eq!(w[5], users.to_string(), "{line}");
    }
    assert!(
        text.contains(&format!("{} read, {} decided", e.read, e.decided)),
        "{text}"
    );
    assert!(text.contains("unknown_listener"), "{text}");
    assert!(
        text.contains("header: and cookie: conditions cannot be evaluated"),
        "{text}"
    );
    assert!(text.contains("candidate beta-header"), "{text}");
    assert!(
        text.contains("ramps are decided at each line's timestamp"),
        "{text}"
    );
}

#[test]
fn lines_from_unknown_listeners_are_skipped_and_counted() {
    let s = scenario(10);
    let mut log = String::new();
    let r = &generate(1)[0];
    let mut known = r.clone();
    known.path = "/chat";
    for listener in ["im", "partner", "im-v2", "console"] {
        let mut l = known.clone();
        l.listener = listener;
        log.push_str(&l.line("default"));
        log.push('\n');
    }
    std::fs::write(&s.log, log).unwrap();
    let v = report(&replay(&s.config, &s.candidate, &s.log, true));
    assert_eq!(v["lines"]["read"], 4);
    assert_eq!(v["lines"]["decided"], 2);
    assert_eq!(v["lines"]["skipped_by_reason"]["unknown_listener"], 2);
}

#[test]
fn a_broken_candidate_exits_1_at_its_position() {
    let s = scenario(10);
    std::fs::write(
        &s.candidate,
        "rules:\n  - name: widen\n    when:\n      uid: { ranges: [\"20-10\"] }\n    route: gray\n",
    )
    .unwrap();
    let o = replay(&s.config, &s.candidate, &s.log, false);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    let rest = err
        .strip_prefix("error: ")
        .and_then(|e| e.strip_prefix(s.candidate.to_str().unwrap()))
        .unwrap_or_else(|| panic!("not `error: FILE:…`: {err}"));
    let mut parts = rest.splitn(4, ':');
    assert_eq!(parts.next(), Some(""));
    assert_eq!(parts.next(), Some("4"), "{err}");
    assert!(parts.next().unwrap().parse::<u32>().is_ok(), "{err}");
    assert!(stdout(&o).is_empty());

    // An unknown pool is a compile error too, not a replay with fallbacks.
    std::fs::write(&s.candidate, "rules:\n  - name: x\n    route: blue\n").unwrap();
    let o = replay(&s.config, &s.candidate, &s.log, true);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("rules.next.yaml:3:"), "{}", stderr(&o));

    // A missing log is an error that names it.
    std::fs::write(&s.candidate, LIVE).unwrap();
    let o = replay(&s.config, &s.candidate, &s.log.with_extension("gone"), true);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("access.gone"), "{}", stderr(&o));
}

#[test]
fn the_same_rules_move_nothing() {
    let s = scenario(2_000);
    std::fs::write(&s.candidate, LIVE).unwrap();
    let v = report(&replay(&s.config, &s.candidate, &s.log, true));
    assert_eq!(v["moved"]["requests"], 0);
    assert_eq!(rule_counts(&v["live"]), rule_counts(&v["candidate"]));
    // Without ramps, timestamps are not read: the `yesterday` lines are decided.
    assert_eq!(v["lines"]["skipped_by_reason"]["bad_timestamp"], 0);
}

// === the proxy's own log ===

/// Starts `graylane run` with JSON logs and every request sampled, sends requests with
/// marker headers, and replays what it wrote to stderr: the report must agree with every
/// rule the proxy logged, so the log format and the replay stay in step.
#[test]
fn the_proxys_own_access_log_replays_to_its_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("graylane.yaml");
    std::fs::write(&config, format!("{CONFIG}access_log: {{ sample: 1 }}\n")).unwrap();
    std::fs::write(dir.path().join("rules.yaml"), LIVE).unwrap();
    let candidate = dir.path().join("rules.next.yaml");
    std::fs::write(&candidate, candidate_rules()).unwrap();

    let mut child = graylane()
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let mut addrs: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while addrs.len() < 2 && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                let f = &v["fields"];
                if f["message"] == "listening" {
                    if let (Some(n), Some(a)) = (f["listener"].as_str(), f["addr"].as_str()) {
                        addrs.insert(n.to_owned(), a.to_owned());
                    }
                }
            }
            lines.push(l);
        }
    }
    assert_eq!(
        addrs.len(),
        2,
        "listeners did not come up:\n{}",
        lines.join("\n")
    );

    // (listener, host, path, headers, expected live rule)
    type Sent<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let reqs: &[Sent<'_>] = &[
        (
            "im",
            "im.example.com",
            "/chat/send",
            &[("xdw-kefu-uid", "10000042"), ("xdw-app-version", "5.3.1")],
            "uid-range-a",
        ),
        (
            "im",
            "im.example.com",
            "/chat/send",
            &[("xdw-kefu-uid", "10000042"), ("xdw-app-version", "5.1")],
            "default",
        ),
        (
            "im",
            "im.example.com",
            "/chat",
            &[("xdw-kefu-uid", "88000001"), ("xdw-app-version", "6")],
            "vip-never-gray",
        ),
        (
            "im",
            "im.example.com",
            "/static/app.js?accessToken=secret",
            &[("cookie", "xdw-kefu-uid=10002100; xdw-app-version=5.10")],
            "default",
        ),
        (
            "console",
            "console.example.com",
            "/api/session",
            &[("xdw-kefu-agent-uid", "9002")],
            "gray-staff",
        ),
        (
            "console",
            "console.example.com",
            "/api/session",
            &[
                ("xdw-kefu-agent-uid", "9010"),
                ("xdw-kefu-agent-gid", "7, 500"),
            ],
            "gray-groups",
        ),
        (
            "console",
            "console.example.com",
            "/api/x?xdw-kefu-agent-gid=600",
            &[("xdw-kefu-agent-uid", "9011")],
            "default",
        ),
        (
            "im",
            "im.example.com",
            "/chat/send?xdw-kefu-entryid=777",
            &[("xdw-kefu-uid", "10009999"), ("xdw-device-id", "iOS")],
            "default",
        ),
    ];
    for (listener, host, path, headers, _) in reqs {
        let mut s = TcpStream::connect(&addrs[*listener]).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut head = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
        for (k, v) in *headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(resp.starts_with("HTTP/1.1 "), "{resp}");
    }
    // Every request's access line is written before its answer; wait for the last one.
    let want = reqs.len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines
        .iter()
        .filter(|l| l.contains("graylane::access"))
        .count()
        < want
        && Instant::now() < deadline
    {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(rx);
    let _ = reader.join();

    let log = dir.path().join("stderr.log");
    std::fs::write(&log, lines.join("\n")).unwrap();
    assert!(
        !lines.join("\n").contains("secret"),
        "query strings are never logged"
    );
    let v = report(&replay(&config, &candidate, &log, true));
    assert_eq!(v["lines"]["decided"], want as u64, "{v:#}");
    assert_eq!(v["live_vs_log"]["lines_with_rule"], want as u64);
    assert_eq!(v["live_vs_log"]["disagree"], 0, "{}", lines.join("\n"));
    let mut want_rules: BTreeMap<String, u64> = BTreeMap::new();
    for r in reqs {
        *want_rules.entry(r.4.to_owned()).or_default() += 1;
    }
    let got: BTreeMap<String, u64> = rule_counts(&v["live"])
        .into_iter()
        .filter(|(_, (r, _))| *r > 0)
        .map(|(n, (r, _))| (n, r))
        .collect();
    assert_eq!(got, want_rules);
    // The candidate: 600 → canary on console-api, 10002100 in range B (5.10 ≥ 5.2.0), and
    // the ramp on entry 777 (its step depends on today's clock, so not asserted).
    let cand = rule_counts(&v["candidate"]);
    assert_eq!(cand["canary-groups"].0, 1);
    assert_eq!(cand["uid-range-ab"].0, 2);
    // The proxy's own lines (listening, shutdown) are skipped as another target.
    assert!(
        v["lines"]["skipped_by_reason"]["other_target"]
            .as_u64()
            .unwrap()
            >= 2
    );
}

#[test]
fn a_log_on_stdin_with_line_prefixes_replays_the_same() {
    let s = scenario(2_000);
    let from_file = report(&replay(&s.config, &s.candidate, &s.log, true));
    // As `kubectl logs --timestamps` hands it over: a time and a space before each line.
    let prefixed: String = std::fs::read_to_string(&s.log)
        .unwrap()
        .lines()
        .map(|l| format!("2026-12-06T07:01:47.000000001Z {l}\n"))
        .collect();
    let mut child = graylane()
        .arg("replay")
        .arg("--config")
        .arg(&s.config)
        .arg("--rules")
        .arg(&s.candidate)
        .args(["--log", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(prefixed.as_bytes()));
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let from_stdin = report(&o);
    for k in ["lines", "users", "moves", "moved", "live_vs_log"] {
        assert_eq!(from_stdin[k], from_file[k], "{k}");
    }
    assert_eq!(
        from_stdin["candidate"]["rules"],
        from_file["candidate"]["rules"]
    );
}
