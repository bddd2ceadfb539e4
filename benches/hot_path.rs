//! Micro-benchmarks of the per-request hot path: marker extraction and `RuleSet::decide`,
//! plus compiling a ruleset with a million-id `in_file` (what a reload costs off-path).
//!
//! How it is measured (STYLE habit 10): criterion 0.5, wall-clock, single thread, the
//! `bench` profile (release, thin LTO). Inputs are built before timing starts; big
//! inputs (10,000 UID ranges, 1M ids) are generated into a tempdir at bench start with a
//! fixed-seed generator, so every run sees the same files. Each `decide` case names where
//! the first match is (or that none is), because `decide` cost grows with the rules it
//! walks, not with list sizes.
//!
//! Run: `cargo bench --bench hot_path` (add `-- --warm-up-time 1 --measurement-time 2`
//! for a quick pass, or a filter such as `-- decide/`). Targets: `decide()`
//! ≤ 100 ns for the sample ruleset, ≤ 300 ns with the 1M-id set.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;

use graylane::{Config, MarkerNames, MarkerReader, Markers, RequestInfo, RuleSet, Topology};

#[path = "common/requests.rs"]
mod requests;
use requests::{console_long_cookie, console_request, headers, im_request};

/// Index of the `im` listener in `config/graylane.yaml`.
const LISTENER_IM: usize = 0;
/// Index of the `console` listener.
const LISTENER_CONSOLE: usize = 1;
/// Index of the `chat` service.
const SERVICE_CHAT: usize = 0;
/// Index of the `console-api` service.
const SERVICE_CONSOLE_API: usize = 1;

/// The entry point the sample rules split 20% by uid.
const SPLIT_ENTRY: u64 = 121_338_361_121;
/// An entry point no rule names.
const OTHER_ENTRY: u64 = 121_338_361_999;

/// Number of ids in the big `in_file`.
const BIG_SET: usize = 1_000_000;
/// Number of disjoint UID ranges in the range benchmark.
const RANGES: u64 = 10_000;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn topology() -> Topology {
    let cfg = Config::load(&manifest_dir().join("config/graylane.yaml"))
        .unwrap_or_else(|e| panic!("sample config: {e}"));
    cfg.topology()
}

/// Deterministic 64-bit generator (SplitMix64), so generated files are the same each run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Writes `n` distinct-ish ids (eight-to-ten-digit UIDs) one per line; returns one id
/// that is in the file.
fn write_ids(path: &Path, n: usize, seed: u64) -> u64 {
    let mut rng = SplitMix(seed);
    let mut out = String::with_capacity(n * 11);
    let mut member = 0;
    for i in 0..n {
        let id = 10_000_000 + rng.next() % 9_000_000_000;
        if i == n / 2 {
            member = id;
        }
        writeln!(out, "{id}").expect("write to String");
    }
    std::fs::write(path, out).expect("write ids");
    member
}

/// `RANGES` disjoint ranges of 1,000 UIDs each, 10,000 apart, from 100,000,000 up.
fn write_ranges(path: &Path) {
    let mut out = String::from("# generated: 10,000 disjoint UID ranges\n");
    for i in 0..RANGES {
        let lo = 100_000_000 + i * 10_000;
        writeln!(out, "{lo}-{}", lo + 999).expect("write to String");
    }
    std::fs::write(path, out).expect("write ranges");
}

/// The sample rules plus 14 more realistic ones (device, header, cookie, path, listener,
/// version and percent conditions) in front of the default: 20 rules.
fn twenty_rules() -> String {
    let sample = std::fs::read_to_string(manifest_dir().join("config/rules.yaml"))
        .expect("config/rules.yaml");
    let mut s = sample;
    for i in 0..4 {
        write!(
            s,
            "  - name: region-{i}-ranges\n    when:\n      uid: {{ ranges: [\"{lo}-{hi}\"] }}\n      app_version: \">=5.4.0, <6\"\n    route: gray\n",
            lo = 30_000_000 + i * 1_000_000,
            hi = 30_000_000 + i * 1_000_000 + 49_999,
        )
        .expect("write to String");
    }
    for i in 0..3 {
        write!(
            s,
            "  - name: devices-{i}\n    when:\n      device: {{ in: [harmonyos-{i}, kaios-{i}] }}\n      listener: [im]\n    route: gray\n"
        )
        .expect("write to String");
    }
    for i in 0..3 {
        write!(
            s,
            "  - name: canary-header-{i}\n    when:\n      header: {{ x-canary-{i}: {{ in: [\"on\", \"1\"] }} }}\n    route: gray\n"
        )
        .expect("write to String");
    }
    for i in 0..2 {
        write!(
            s,
            "  - name: beta-cookie-{i}\n    when:\n      cookie: {{ beta-{i}: {{ in: [\"yes\"] }} }}\n      path_prefix: [/api/v2, /chat/v2]\n    route: gray\n"
        )
        .expect("write to String");
    }
    for i in 0..2u64 {
        write!(
            s,
            "  - name: entry-split-{i}\n    when:\n      entry_id: {{ in: [{e}] }}\n      percent: {{ of: uid, value: 5 }}\n    route: gray\n",
            e = 121_338_362_000 + i,
        )
        .expect("write to String");
    }
    s
}

fn compile_str(src: &str, dir: &Path, topo: &Topology) -> RuleSet {
    graylane::compile_rules(src, "rules.yaml", dir, topo)
        .unwrap_or_else(|e| panic!("bench ruleset: {e}"))
        .rules
}

/// Markers as the reader produces them from an IM request with this uid, through an
/// entry point no rule names.
fn im_markers(reader: &MarkerReader, uid: u64) -> (HeaderMap, Markers) {
    let h = im_request(uid, OTHER_ENTRY);
    let (m, invalid) = reader.read(&h, None);
    assert!(invalid.is_empty(), "bench request has an invalid marker");
    (h, m)
}

fn bench_markers(c: &mut Criterion) {
    let reader = MarkerReader::new(&MarkerNames::default());
    let im = im_request(10_203_040, SPLIT_ENTRY);
    let console = console_request();
    let (m, _) = reader.read(&console, None);
    assert_eq!(m.agent_gid.as_slice(), &[141_338_365_009, 141_338_365_002]);
    assert_eq!(m.staff_uid, Some(9003));

    let mut g = c.benchmark_group("markers");
    g.bench_function("im_headers", |b| {
        b.iter(|| reader.read(black_box(&im), black_box(None)))
    });
    g.bench_function("console_cookies", |b| {
        b.iter(|| reader.read(black_box(&console), black_box(None)))
    });
    // A browser's `Cookie` field often runs to kilobytes of analytics cookies before the
    // console's own: the marker cookies come last here, as the worst case.
    let long = console_long_cookie();
    let (m, _) = reader.read(&long, None);
    assert_eq!(
        m.staff_uid,
        Some(9003),
        "the long cookie's markers are read"
    );
    g.bench_function("console_long_cookie", |b| {
        b.iter(|| reader.read(black_box(&long), black_box(None)))
    });
    let bare = headers(&[("host", "kefu-im.example.com")]);
    g.bench_function("im_query", |b| {
        b.iter(|| {
            reader.read(
                black_box(&bare),
                black_box(Some(
                    "t=1700000000&xdw-kefu-uid=10203040&xdw-app-version=5.3.1",
                )),
            )
        })
    });
    g.finish();
}

fn bench_decide(c: &mut Criterion) {
    let topo = topology();
    let dir = tempfile::tempdir().expect("tempdir");
    let reader = MarkerReader::new(&MarkerNames::default());

    let sample = graylane::load_rules(
        &manifest_dir().join("config/rules.yaml"),
        "rules.yaml",
        &topo,
    )
    .unwrap_or_else(|e| panic!("sample rules: {e}"))
    .rules;
    let twenty = compile_str(&twenty_rules(), dir.path(), &topo);
    assert_eq!(twenty.len(), 20);

    write_ranges(&dir.path().join("ranges.txt"));
    let ranges = compile_str(
        "rules:\n  - name: ranges\n    when:\n      uid: { in_file: ranges.txt }\n    route: gray\n",
        dir.path(),
        &topo,
    );
    let member = write_ids(&dir.path().join("ids.txt"), BIG_SET, 1);
    // The sample rules with the 1M-id set as the last gray rule before the default.
    let big_src = format!(
        "{}  - name: big-set\n    when:\n      uid: {{ in_file: ids.txt }}\n    route: gray\n",
        std::fs::read_to_string(manifest_dir().join("config/rules.yaml")).expect("rules.yaml")
    );
    let big = compile_str(&big_src, dir.path(), &topo);

    let console = console_request();
    let (console_m, _) = reader.read(&console, None);

    // (name, ruleset, headers, markers, listener, service, path, expected rule name)
    let (h_range, m_range) = im_markers(&reader, 10_203_040); // rule 4: uid range + version
    let (h_default, m_default) = im_markers(&reader, 55_555_555); // nothing matches
    let (h_vip, m_vip) = im_markers(&reader, 88_000_001); // rule 1
                                                          // Through the 20% split entry but outside the 20%: every rule is evaluated to its end,
                                                          // including the percent hash; the worst case for the sample rules.
    let h_split = im_request(55_555_555, SPLIT_ENTRY);
    let (m_split, _) = reader.read(&h_split, None);
    let (h_rhit, m_rhit) = im_markers(&reader, 100_000_000 + 7_777 * 10_000 + 500);
    let (h_rmiss, m_rmiss) = im_markers(&reader, 100_000_000 + 7_777 * 10_000 + 5_000);
    let (h_big, m_big) = im_markers(&reader, member);
    let (h_bigmiss, m_bigmiss) = im_markers(&reader, 9_999_999);

    type Case<'a> = (
        &'a str,
        &'a RuleSet,
        &'a HeaderMap,
        &'a Markers,
        usize,
        usize,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "sample/first_rule",
            &sample,
            &h_vip,
            &m_vip,
            LISTENER_IM,
            SERVICE_CHAT,
            "/chat/send",
            "vip-never-gray",
        ),
        (
            "sample/console_gid",
            &sample,
            &console,
            &console_m,
            LISTENER_CONSOLE,
            SERVICE_CONSOLE_API,
            "/api/session/list",
            "gray-staff-groups",
        ),
        (
            "sample/uid_range",
            &sample,
            &h_range,
            &m_range,
            LISTENER_IM,
            SERVICE_CHAT,
            "/chat/send",
            "low-volume-uid-ranges",
        ),
        (
            "sample/default",
            &sample,
            &h_default,
            &m_default,
            LISTENER_IM,
            SERVICE_CHAT,
            "/chat/send",
            "default",
        ),
        (
            "sample/default_via_split",
            &sample,
            &h_split,
            &m_split,
            LISTENER_IM,
            SERVICE_CHAT,
            "/chat/send",
            "default",
        ),
        (
            "rules20/default",
            &twenty,
            &h_default,
            &m_default,
            LISTENER_IM,
            SERVICE_CHAT,
            "/chat/send",
            "default",
        ),
        (
            "ranges10k/hit",
            &ranges,
            &h_rhit,
            &m_rhit,
            LISTENER_IM,
            SERVICE_CHAT,
            "/chat/send",
            "ranges",
        ),
        (
            "ranges10k/miss",
            &ranges,
            &h_rmiss,
            &m_rmiss,
            LISTENER_IM,
            SERVICE_CHAT,
            "/chat/send",
            "default",
        ),
        (
            "ids1m/hit",
            &big,
            &h_big,
            &m_big,
            LISTENER_IM,
            SERVICE_CHAT,
            "/chat/send",
            "big-set",
        ),
        (
            "ids1m/miss",
            &big,
            &h_bigmiss,
            &m_bigmiss,
            LISTENER_IM,
            SERVICE_CHAT,
            "/chat/send",
            "default",
        ),
    ];

    let mut g = c.benchmark_group("decide");
    for (name, rs, headers, markers, listener, service, path, expect) in cases {
        let req = RequestInfo {
            markers,
            listener,
            service,
            path,
            headers: headers.into(),
            now_ms: 0,
        };
        let d = rs.decide(&req);
        let got = d.rule.map_or("default", |i| rs.rule_name(i));
        assert_eq!(got, expect, "case {name} decided by the wrong rule");
        g.bench_function(name, |b| b.iter(|| black_box(rs).decide(black_box(&req))));
    }
    g.finish();

    // Read + decide together: what the proxy does per request before forwarding.
    let mut g = c.benchmark_group("read_and_decide");
    let im = im_request(10_203_040, SPLIT_ENTRY);
    g.bench_function("sample/im", |b| {
        b.iter(|| {
            let (m, _) = reader.read(black_box(&im), None);
            sample.decide(&RequestInfo {
                markers: &m,
                listener: LISTENER_IM,
                service: SERVICE_CHAT,
                path: "/chat/send",
                headers: (&im).into(),
                now_ms: 0,
            })
        })
    });
    g.bench_function("sample/console", |b| {
        b.iter(|| {
            let (m, _) = reader.read(black_box(&console), None);
            sample.decide(&RequestInfo {
                markers: &m,
                listener: LISTENER_CONSOLE,
                service: SERVICE_CONSOLE_API,
                path: "/api/session/list",
                headers: (&console).into(),
                now_ms: 0,
            })
        })
    });
    g.finish();
}

fn bench_compile(c: &mut Criterion) {
    let topo = topology();
    let dir = tempfile::tempdir().expect("tempdir");
    write_ids(&dir.path().join("ids.txt"), BIG_SET, 2);
    let rules_path = dir.path().join("rules.yaml");
    std::fs::write(
        &rules_path,
        "version: bench\nrules:\n  - name: big-set\n    when:\n      uid: { in_file: ids.txt }\n    route: gray\n",
    )
    .expect("write rules");

    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    // `load` is what a reload runs: read both files, parse, build the set, hash the bytes.
    // The old ruleset is dropped outside the timing (in the proxy it is dropped by the
    // last request holding it, not by the reloader).
    g.bench_function("ids1m_load", |b| {
        b.iter_with_large_drop(|| {
            graylane::load_rules(&rules_path, "rules.yaml", &topo).expect("compile")
        })
    });
    g.bench_function("sample_load", |b| {
        let p = manifest_dir().join("config/rules.yaml");
        b.iter(|| graylane::load_rules(&p, "rules.yaml", &topo).expect("compile"))
    });
    g.finish();
}

criterion_group!(benches, bench_markers, bench_decide, bench_compile);
criterion_main!(benches);
