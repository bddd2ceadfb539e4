//! `graylane plan-ranges` (SPEC §9.4) through the built binary: a generated volume file
//! planned at or under the target and within a point of it, a fragment that parses and
//! that `graylane check` accepts, and the ways it exits 1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn graylane() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_graylane"));
    c.env_remove("RUST_LOG").stdin(Stdio::null());
    c
}

fn plan_ranges(volumes: &Path, extra: &[&str]) -> Output {
    graylane()
        .arg("plan-ranges")
        .arg("--volumes")
        .arg(volumes)
        .args(extra)
        .output()
        .expect("graylane runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// splitmix64: the same volumes on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
}

/// `n` users on a sparse uid line from 10,000,000, with a heavy-tailed weekly volume:
/// Pareto for the crowd, ~4% of users idle (0 requests), and a few dozen big accounts
/// of 0.2–1% of the total each.
fn generate(n: usize) -> Vec<(u64, u64)> {
    let mut rng = Rng(20_261_122);
    let mut uid = 10_000_000u64;
    let mut vols = Vec::with_capacity(n);
    for _ in 0..n {
        uid += 1 + rng.next() % 12;
        let requests = if rng.next().is_multiple_of(25) {
            0
        } else {
            (3.0 * rng.unit().powf(-0.6)) as u64
        };
        vols.push((uid, requests));
    }
    let crowd: u64 = vols.iter().map(|v| v.1).sum();
    for _ in 0..40 {
        let i = (rng.next() % n as u64) as usize;
        vols[i].1 = crowd / 500 + rng.next() % (crowd / 125);
    }
    vols
}

/// The volumes as a CSV a person would export: a header, not in uid order, the odd blank
/// line, spaces and CRLF, and one user's week split over two lines.
fn write_csv(dir: &Path, vols: &[(u64, u64)]) -> PathBuf {
    let n = vols.len();
    let mut text = String::from("uid,requests\n");
    for k in 0..n {
        // 7919 is prime and does not divide n: a permutation.
        let (uid, requests) = vols[k * 7919 % n];
        match k % 1000 {
            0 => text.push_str(&format!(" {uid} , {requests} \r\n\n")),
            1 if requests > 1 => text.push_str(&format!(
                "{uid},{}\n{uid},{}\n",
                requests / 2,
                requests - requests / 2
            )),
            _ => text.push_str(&format!("{uid},{requests}\n")),
        }
    }
    let path = dir.join("volumes.csv");
    std::fs::write(&path, text).unwrap();
    path
}

/// The `uid.ranges` of the fragment, parsed as YAML.
fn ranges_of(fragment: &str) -> Vec<(u64, u64)> {
    let doc: serde_yaml::Value = serde_yaml::from_str(fragment)
        .unwrap_or_else(|e| panic!("the fragment is YAML ({e}):\n{fragment}"));
    let ranges = doc["uid"]["ranges"]
        .as_sequence()
        .unwrap_or_else(|| panic!("uid.ranges is a list:\n{fragment}"));
    ranges
        .iter()
        .map(|r| {
            let r = r.as_str().expect("each range is a string");
            let (lo, hi) = r.split_once('-').expect("lo-hi");
            let (lo, hi) = (lo.parse().unwrap(), hi.parse().unwrap());
            assert!(lo <= hi, "{r}");
            (lo, hi)
        })
        .collect()
}

/// Requests and users inside `ranges`, and checks the ranges are sorted and disjoint.
fn covered(vols: &[(u64, u64)], ranges: &[(u64, u64)]) -> (u64, usize) {
    for pair in ranges.windows(2) {
        assert!(pair[0].1 < pair[1].0, "sorted, disjoint: {ranges:?}");
    }
    let inside: Vec<u64> = vols
        .iter()
        .filter(|(uid, _)| ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(uid)))
        .map(|v| v.1)
        .collect();
    (inside.iter().sum(), inside.len())
}

fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn a_generated_week_is_planned_at_or_under_the_target_and_within_a_point() {
    let dir = tempfile::tempdir().unwrap();
    let vols = generate(200_000);
    let csv = write_csv(dir.path(), &vols);
    let total: u64 = vols.iter().map(|v| v.1).sum();

    for (target, percent) in [("3%", 3), ("0.05", 5), ("1%", 1)] {
        let o = plan_ranges(&csv, &["--target", target]);
        assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
        let out = stdout(&o);
        let ranges = ranges_of(&out);
        assert!(
            (1..=3).contains(&ranges.len()),
            "default --max-ranges is 3:\n{out}"
        );
        let (sum, users) = covered(&vols, &ranges);
        // At or under the target, exactly.
        assert!(
            u128::from(sum) * 100 <= u128::from(total) * percent,
            "{target}: {sum} of {total}:\n{out}"
        );
        // Within one percentage point of it (the done criterion) ...
        assert!(
            u128::from(sum) * 100 >= u128::from(total) * (percent - 1),
            "{target}: {sum} of {total}:\n{out}"
        );
        // ... and in fact within 1% of the target, where the planner stops adding ranges.
        assert!(
            u128::from(sum) * 100 * 100 >= u128::from(total) * percent * 99,
            "{target}: {sum} of {total}:\n{out}"
        );
        // The comment tells the truth.
        let comment = out.lines().next().unwrap();
        assert!(comment.starts_with("# target "), "{out}");
        assert!(
            comment.contains(&format!(
                "of {} requests ({}), {} of 200,000 users",
                grouped(total),
                grouped(sum),
                grouped(users as u64)
            )),
            "{out}"
        );
        assert_eq!(
            out.lines().filter(|l| !l.starts_with('#')).count(),
            1,
            "{out}"
        );
    }
}

/// Big accounts at every 500th uid split the line into pieces of ~1% each: one range
/// cannot reach 3%, three can.
#[test]
fn max_ranges_caps_the_count_and_more_ranges_get_closer() {
    let dir = tempfile::tempdir().unwrap();
    let vols: Vec<(u64, u64)> = (0..10_000u64)
        .map(|i| (500_000 + i, if i % 500 == 250 { 20_000 } else { 10 }))
        .collect();
    let csv = write_csv(dir.path(), &vols);
    let total: u64 = vols.iter().map(|v| v.1).sum();

    let mut reached = Vec::new();
    for n in [1usize, 2, 3, 5] {
        let o = plan_ranges(&csv, &["--target", "3%", "--max-ranges", &n.to_string()]);
        assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
        let out = stdout(&o);
        let ranges = ranges_of(&out);
        assert!(ranges.len() <= n, "--max-ranges {n}:\n{out}");
        let (sum, _) = covered(&vols, &ranges);
        assert!(u128::from(sum) * 100 <= u128::from(total) * 3, "{out}");
        reached.push((ranges.len(), sum));
    }
    // 3% of 499,800 is 14,994; each piece holds at most 4,990.
    assert_eq!(reached[0], (1, 4_990), "{reached:?}");
    assert_eq!(reached[1].0, 2, "{reached:?}");
    assert_eq!(reached[2].0, 3, "{reached:?}");
    assert!(
        reached[1].1 > reached[0].1 && reached[2].1 >= reached[1].1,
        "{reached:?}"
    );
    // Within a point once three ranges are allowed; more allowed ranges are not spent
    // for nothing.
    assert!(
        u128::from(reached[2].1) * 100 >= u128::from(total) * 2,
        "{reached:?}"
    );
    assert_eq!(reached[3], reached[2], "{reached:?}");

    let o = plan_ranges(&csv, &["--target", "3%", "--max-ranges", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("error: --max-ranges 0:"),
        "{}",
        stderr(&o)
    );
}

/// A minimal graylane.yaml whose rules.yaml has one rule: the fragment under `when:`.
#[test]
fn graylane_check_accepts_the_fragment() {
    let dir = tempfile::tempdir().unwrap();
    let plain = generate(20_000);
    let split: Vec<(u64, u64)> = (0..3_000u64)
        .map(|i| (7_000_000 + 3 * i, if i % 300 == 150 { 50_000 } else { 7 }))
        .collect();
    for (name, vols, target) in [("plain", plain, "3%"), ("split", split, "2.5%")] {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        let csv = write_csv(&sub, &vols);
        let o = plan_ranges(&csv, &["--target", target]);
        assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
        let fragment = stdout(&o);
        let indented: String = fragment.lines().map(|l| format!("      {l}\n")).collect();
        std::fs::write(
            sub.join("rules.yaml"),
            format!("rules:\n  - name: r\n    when:\n{indented}    route: gray\n"),
        )
        .unwrap();
        std::fs::write(
            sub.join("graylane.yaml"),
            "listeners:\n  - name: im\n    bind: \"127.0.0.1:0\"\nadmin: { bind: \"127.0.0.1:0\" }\nrules_file: rules.yaml\nservices:\n  - name: chat\n    match: { path_prefix: /chat }\n    pools:\n      stable: { endpoints: [\"127.0.0.1:1\"] }\n      gray: { endpoints: [\"127.0.0.1:2\"] }\n",
        )
        .unwrap();
        let o = graylane()
            .arg("check")
            .arg("--config")
            .arg(sub.join("graylane.yaml"))
            .output()
            .expect("graylane runs");
        assert_eq!(
            o.status.code(),
            Some(0),
            "{name}: check rejected\n{fragment}\nstderr: {}",
            stderr(&o)
        );
    }
}

#[test]
fn a_bad_line_fails_with_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("volumes.csv");
    let mut text = String::from("uid,requests\n");
    for uid in 1..=15 {
        text.push_str(&format!("{uid},{}\n", uid * 10));
    }
    text.push_str("abc\n16,160\n");
    std::fs::write(&csv, text).unwrap();
    let o = plan_ranges(&csv, &["--target", "3%"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
    assert_eq!(
        stderr(&o),
        format!(
            "error: {}:17: expected \"uid,requests\", got \"abc\"\n",
            csv.display()
        )
    );

    std::fs::write(&csv, "1,10\n2,ten\n").unwrap();
    let o = plan_ranges(&csv, &["--target", "3%"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("volumes.csv:2: requests \"ten\""),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_arguments_and_a_missing_file_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.csv");
    let o = plan_ranges(&missing, &["--target", "3%"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with("error: cannot read ") && err.contains("missing.csv"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let csv = dir.path().join("volumes.csv");
    std::fs::write(&csv, "1,10\n").unwrap();
    for (target, why) in [
        ("0%", "more than 0"),
        ("120%", "more than 100%"),
        ("3", "write 3% for percent"),
        ("three", "expected a share"),
    ] {
        let o = plan_ranges(&csv, &["--target", target]);
        assert_eq!(o.status.code(), Some(1), "{target}");
        let err = stderr(&o);
        assert!(
            err.starts_with(&format!("error: --target {target:?}: ")),
            "{err}"
        );
        assert!(err.contains(why), "{err}");
    }
}

#[test]
fn nothing_fits_exits_1_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("volumes.csv");
    // Ten users with 10% each: no one fits under 3%.
    let text: String = (1..=10).map(|uid| format!("{uid},1000\n")).collect();
    std::fs::write(&csv, text).unwrap();
    let o = plan_ranges(&csv, &["--target", "3%"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("nothing fits"), "{err}");
    assert!(err.contains("the smallest has 1,000"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    for (text, why) in [
        ("uid,requests\n\n", "nothing to plan"),
        ("1,0\n2,0\n", "have 0 requests"),
    ] {
        std::fs::write(&csv, text).unwrap();
        let o = plan_ranges(&csv, &["--target", "3%"]);
        assert_eq!(o.status.code(), Some(1), "{text:?}");
        assert!(o.stdout.is_empty());
        assert!(stderr(&o).contains(why), "{}", stderr(&o));
    }
}
