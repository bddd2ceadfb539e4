use super::percent::bucket;
use super::*;
use crate::config::{Topology, GRAY};
use crate::markers::itoa;
use crate::markers::MarkerKind;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::xxh3_64;

use crate::config::yamlpos::Pos;
use http::{HeaderMap, HeaderValue};
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
    now_ms: u64,
}

impl Req {
    fn new() -> Self {
        Req {
            markers: Markers::default(),
            listener: 0,
            service: 0,
            path: "/chat/x".into(),
            headers: HeaderMap::new(),
            now_ms: 0,
        }
    }
    fn at(mut self, rfc3339: &str) -> Self {
        let t = humantime::parse_rfc3339(rfc3339).unwrap();
        self.now_ms = crate::unix_ms(t);
        self
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
            headers: (&self.headers).into(),
            now_ms: self.now_ms,
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
    let src = "rules:\n  - name: a\n    when: { uid: { in_file: nope.txt } }\n    route: gray\n";
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

const RAMP: &str =
    "percent: { of: uid, steps: [1, 5, 20, 50, 100], every: 15m, start: \"2026-12-07T10:00:00Z\" }";

/// The share of 20,000 uids a ruleset sends to gray at `time`, in percent.
fn gray_share(rs: &RuleSet, time: &str) -> f64 {
    let gray = (0..20_000u64)
        .filter(|&u| Req::new().uid(u).at(time).decide(rs).pool == GRAY)
        .count();
    gray as f64 / 200.0
}

#[test]
fn a_ramp_is_at_the_clocks_step() {
    let rs = ok(&one(RAMP));
    assert!(rs.has_ramps());
    assert!(!ok(&one("percent: { of: uid, value: 20 }")).has_ramps());
    for (time, want) in [
        ("2026-12-07T09:59:59Z", 0.0),
        ("2026-12-07T10:00:00Z", 1.0),
        ("2026-12-07T10:14:59Z", 1.0),
        ("2026-12-07T10:15:00Z", 5.0),
        ("2026-12-07T10:30:00Z", 20.0),
        ("2026-12-07T10:45:00Z", 50.0),
        ("2026-12-07T11:00:00Z", 100.0),
        ("2027-06-01T00:00:00Z", 100.0),
    ] {
        let got = gray_share(&rs, time);
        assert!(
            (got - want).abs() <= want * 0.15 + 0.1,
            "{time}: {got}% want {want}%"
        );
    }
    // Widening only ever adds users: everyone in at 5 % is still in at 20 %.
    let at = |t| {
        (0..20_000u64)
            .filter(|&u| Req::new().uid(u).at(t).decide(&rs).pool == GRAY)
            .collect::<Vec<_>>()
    };
    let (five, twenty) = (at("2026-12-07T10:15:00Z"), at("2026-12-07T10:30:00Z"));
    assert!(five.iter().all(|u| twenty.contains(u)));
    // The share in force and the next step, as /rules shows them.
    let p = rs.percents().next().unwrap();
    let t = crate::unix_ms(humantime::parse_rfc3339("2026-12-07T10:20:00Z").unwrap());
    let (now, next) = p.share.percent_at(t);
    assert_eq!(now, 5.0);
    assert_eq!(
        next.map(crate::rfc3339_ms).as_deref(),
        Some("2026-12-07T10:30:00Z")
    );
    let end = crate::unix_ms(humantime::parse_rfc3339("2026-12-08T00:00:00Z").unwrap());
    assert_eq!(p.share.percent_at(end), (100.0, None));
}

#[test]
fn check_rejects_bad_ramps() {
    assert_err(
        &one("percent: { of: uid, value: 5, steps: [1, 2], every: 1m, start: \"2026-12-07T10:00:00Z\" }"),
        4,
        44,
        "value or steps, not both",
    );
    assert_err(
        &one("percent: { of: uid, steps: [5, 1], every: 1m, start: \"2026-12-07T10:00:00Z\" }"),
        4,
        38,
        "must not go down",
    );
    assert_err(
        &one("percent: { of: uid, steps: [1, 101], every: 1m, start: \"2026-12-07T10:00:00Z\" }"),
        4,
        38,
        "[0, 100]",
    );
    assert_err(
        &one("percent: { of: uid, steps: [1, -1], every: 1m, start: \"2026-12-07T10:00:00Z\" }"),
        4,
        38,
        "[0, 100]",
    );
    assert_err(
        &one("percent: { of: uid, steps: [1], start: \"2026-12-07T10:00:00Z\" }"),
        4,
        18,
        "needs every",
    );
    assert_err(
        &one("percent: { of: uid, steps: [1], every: 1m }"),
        4,
        18,
        "needs start",
    );
    assert_err(
        &one("percent: { of: uid, steps: [1], every: 0, start: \"2026-12-07T10:00:00Z\" }"),
        4,
        46,
        "above 0",
    );
    assert_err(
        &one("percent: { of: uid, steps: [1], every: 1m, start: tomorrow }"),
        4,
        57,
        "RFC 3339",
    );
    assert_err(
        &one("percent: { of: uid, value: 5, every: 1m }"),
        4,
        44,
        "belongs to a ramp",
    );
    assert_err(&one("percent: { of: uid }"), 4, 18, "needs value");
}

#[test]
fn expired_rules_still_route_and_are_listed() {
    let rs = ok("rules:\n  - name: old-gray\n    owner: \"team im\"\n    expires: 2026-12-01\n    when: { uid: { in: [7] } }\n    route: gray\n  - name: later\n    expires: \"2027-01-01T00:00:00Z\"\n    route: stable\n");
    assert_eq!(Req::new().uid(7).decide(&rs).pool, GRAY);
    // A date keeps the rule for that whole day (UTC).
    let now = humantime::parse_rfc3339("2026-12-01T23:59:59Z").unwrap();
    assert!(rs.expiry_warnings(now).is_empty());
    let now = humantime::parse_rfc3339("2026-12-02T00:00:00Z").unwrap();
    let w = rs.expiry_warnings(now);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("rule old-gray expired at 2026-12-02T00:00:00Z")
            && w[0].contains("owner: team im"),
        "{w:?}"
    );
    assert_err(
        "rules:\n  - name: r\n    expires: next week\n    route: gray\n",
        3,
        14,
        "YYYY-MM-DD",
    );
}

#[test]
fn fingerprints_change_with_what_a_rule_says() {
    let fp = |src: &str| {
        ok(src)
            .fingerprints()
            .map(|(n, f)| (n.to_owned(), f))
            .collect::<Vec<_>>()
    };
    let a = fp("rules:\n  - name: a\n    when: { uid: { in: [1] } }\n    route: gray\n  - name: b\n    route: stable\n");
    let b = fp("rules:\n  - name: a\n    when: { uid: { in: [2] } }\n    route: gray\n  - name: b\n    route: stable\n");
    assert_ne!(a[0].1, b[0].1, "a changed");
    assert_eq!(a[1].1, b[1].1, "b did not");
    // Formatting alone is no change.
    let c = fp("rules:\n  - name: a\n    when:\n      uid: { in: [ 1 ] }\n    route: gray\n  - name: b\n    route: stable\n");
    assert_eq!(a, c);
}
