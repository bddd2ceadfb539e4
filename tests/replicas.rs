//! Replicas share nothing at run time (SPEC §11): three graylane instances on one rules
//! directory, updated the way the kubelet updates a ConfigMap volume (a `..data` symlink
//! swap), all serve the new ruleset within a second and decide alike for 10,000 users,
//! percentages and a ramp included; `graylane status` sees them agree, and sees a replica
//! on other rules disagree.
// Tests run on runtimes with tokio's time driver and may use its timers.
#![allow(clippy::disallowed_methods)]

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::*;

const RULES_V1: &str = "\
version: \"cm-1\"
rules:
  - name: staff
    when: { staff_uid: { in_file: staff.txt } }
    route: gray
  - name: entry-5pct
    when: { entry_id: { in: [121338361120] }, percent: { of: uid, value: 5 } }
    route: gray
";

/// v2 widens the entry split, adds UID ranges for new apps and a ramp whose step is 20%
/// for the whole test (started 90 minutes ago, one step an hour), and edits the in_file.
fn rules_v2() -> String {
    let start = humantime::format_rfc3339_seconds(SystemTime::now() - Duration::from_secs(5400));
    format!(
        "\
version: \"cm-2\"
rules:
  - name: vip
    when: {{ uid: {{ in: [10000007, 10000042] }} }}
    route: stable
  - name: staff
    when: {{ staff_uid: {{ in_file: staff.txt }} }}
    route: gray
  - name: new-app-ranges
    when: {{ uid: {{ ranges: [\"10000000-10999999\"] }}, app_version: \">=5.2.0\" }}
    route: gray
  - name: entry-20pct
    when: {{ entry_id: {{ in: [121338361120] }}, percent: {{ of: uid, value: 20 }} }}
    route: gray
  - name: entry-ramp
    when: {{ entry_id: {{ in: [121338361121] }}, percent: {{ of: uid, steps: [5, 20, 50], every: 1h, start: \"{start}\" }} }}
    route: gray
"
    )
}

/// A ConfigMap-style directory holding `rules.yaml` and `staff.txt` behind `..data`.
fn configmap(v1: &str, staff: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    k8s_publish(
        dir.path(),
        "..2026_12_06_00_00_00.1",
        &[("rules.yaml", v1), ("staff.txt", staff)],
    );
    symlink("..data/rules.yaml", dir.path().join("rules.yaml")).unwrap();
    symlink("..data/staff.txt", dir.path().join("staff.txt")).unwrap();
    dir
}

/// One replica: its own config directory, the rules from `rules_dir`.
async fn replica(stable: &Upstream, gray: &Upstream, rules_dir: &Path) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let cfg = simple_config(stable.addr, gray.addr, "").replace(
        "rules_file: rules.yaml",
        &format!("rules_file: {}", rules_dir.join("rules.yaml").display()),
    );
    std::fs::write(dir.path().join("graylane.yaml"), cfg).unwrap();
    start_in(dir).await.expect("replica starts")
}

async fn sha(p: &Proxy) -> String {
    json(&admin_get(p, "/rules").await.1)["sha256"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A user as `/explain` parameters: deterministic, spread over the rules' inputs.
fn user(i: u64) -> Vec<(&'static str, String)> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5851_F42D;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let uid = match next(500) {
        0 => 10_000_042,
        _ => 9_500_000 + next(2_000_000),
    };
    let mut q = vec![("uid", uid.to_string())];
    match next(4) {
        0 => q.push(("entry_id", "121338361120".into())),
        1 => q.push(("entry_id", "121338361121".into())),
        2 => q.push(("staff_uid", (9000 + next(8)).to_string())),
        _ => {}
    }
    let versions = ["5.1.9", "5.2.0", "5.10.1", "6"];
    q.push(("app_version", versions[next(4) as usize].into()));
    q
}

/// `pool rule` of `/explain` for one user.
async fn decide(c: &HttpClient, admin: std::net::SocketAddr, q: &[(&str, String)]) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("listener", "im")
        .append_pair("path", "/chat/send")
        .extend_pairs(q.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    let (st, _, body) = get(c, &format!("http://{admin}/explain?{query}"), &[]).await;
    assert_eq!(st.as_u16(), 200, "{body}");
    let v = json(&body);
    format!(
        "{} {}",
        v["pool"].as_str().unwrap_or("?"),
        v["rule"].as_str().unwrap_or("default")
    )
}

const USERS: u64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_one_configmap_serve_and_decide_alike() {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let cm = configmap(RULES_V1, "9001\n9002\n");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(&stable, &gray, cm.path()).await);
    }
    let v1 = sha(&replicas[0]).await;
    for r in &replicas {
        assert_eq!(sha(r).await, v1);
    }

    // The ConfigMap changes: every replica serves the new files within a second.
    let v2 = rules_v2();
    let t = Instant::now();
    k8s_publish(
        cm.path(),
        "..2026_12_06_00_01_00.2",
        &[("rules.yaml", &v2), ("staff.txt", "9001\n9003\n9005\n")],
    );
    let mut live_after = Vec::new();
    for r in &replicas {
        let turned = eventually(Duration::from_secs(5), || async { sha(r).await != v1 }).await;
        assert!(turned, "a replica still serves the old rules after 5 s");
        live_after.push(t.elapsed());
    }
    eprintln!("replicas live on the new rules after {live_after:?}");
    assert!(
        live_after.iter().all(|d| *d < Duration::from_secs(1)),
        "SPEC §2: live within 1 s; took {live_after:?}"
    );
    let v2_sha = sha(&replicas[0]).await;
    for r in &replicas {
        assert_eq!(sha(r).await, v2_sha, "replicas serve different rules");
    }

    // 10,000 users, asked of every replica at once: identical answers.
    let mut tasks = tokio::task::JoinSet::new();
    for (i, r) in replicas.iter().enumerate() {
        let admin = r.admin;
        tasks.spawn(async move {
            let c = client();
            let mut out = Vec::with_capacity(USERS as usize);
            for u in 0..USERS {
                out.push(decide(&c, admin, &user(u)).await);
            }
            (i, out)
        });
    }
    let mut answers = vec![Vec::new(); 3];
    while let Some(done) = tasks.join_next().await {
        let (i, out) = done.expect("decision task");
        answers[i] = out;
    }
    for i in 1..3 {
        let differ = (0..USERS as usize)
            .filter(|&u| answers[i][u] != answers[0][u])
            .collect::<Vec<_>>();
        assert!(
            differ.is_empty(),
            "replica {i} decides {} users otherwise, e.g. user {:?}: {} vs {}",
            differ.len(),
            user(differ[0] as u64),
            answers[i][differ[0]],
            answers[0][differ[0]]
        );
    }
    // Every rule decided some of them, so the agreement covers each kind of condition.
    for rule in [
        "vip",
        "staff",
        "new-app-ranges",
        "entry-20pct",
        "entry-ramp",
        "default",
    ] {
        let n = answers[0]
            .iter()
            .filter(|a| a.ends_with(&format!(" {rule}")))
            .count();
        assert!(n > 0, "no user reached {rule}");
    }
    // The ramp is at its second step (20%) on every replica: about a fifth of its entry.
    let entry = |a: &[String], pool: &str| {
        (0..USERS as usize)
            .filter(|&u| {
                user(u as u64)
                    .iter()
                    .any(|(k, v)| *k == "entry_id" && v == "121338361121")
            })
            .filter(|&u| {
                !answers[0][u].ends_with(" vip") && !answers[0][u].ends_with(" new-app-ranges")
            })
            .filter(|&u| a[u].starts_with(pool))
            .count() as f64
    };
    let share =
        entry(&answers[0], "gray") / (entry(&answers[0], "gray") + entry(&answers[0], "stable"));
    assert!((0.15..0.25).contains(&share), "ramp share {share}");

    // Real requests go where /explain said, on every replica.
    let c = client();
    for u in 0..200u64 {
        let q = user(u);
        let headers: Vec<(String, String)> = q
            .iter()
            .map(|(k, v)| {
                let name = match *k {
                    "uid" => "xdw-kefu-uid",
                    "entry_id" => "xdw-kefu-entryid",
                    "staff_uid" => "xdw-kefu-agent-uid",
                    _ => "xdw-app-version",
                };
                (name.to_owned(), v.clone())
            })
            .collect();
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let want = answers[0][u as usize]
            .split(' ')
            .next()
            .unwrap_or("?")
            .to_owned();
        for r in &replicas {
            let (_, resp, _) = get(&c, &r.url("/chat/send"), &h).await;
            assert_eq!(resp["x-upstream"], want.as_str(), "user {q:?}");
        }
    }

    // `graylane status` across the three: they agree.
    let admins: Vec<String> = replicas
        .iter()
        .map(|r| format!("http://{}", r.admin))
        .collect();
    let (code, out) = status(&admins).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("3 replicas agree."), "{out}");
    assert!(out.contains("cm-2") && out.contains(&v2_sha[..12]), "{out}");

    // A fourth replica on other files: they disagree, and the table says where.
    let other = configmap(RULES_V1, "9001\n");
    let lagging = replica(&stable, &gray, other.path()).await;
    let mut with_lagging = admins.clone();
    with_lagging.push(format!("http://{}", lagging.admin));
    let (code, out) = status(&with_lagging).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("DISAGREE: rules sha256 differs"), "{out}");
    assert!(
        out.contains("DISAGREE: rules version differs: cm-2 on"),
        "{out}"
    );
    assert!(
        out.contains(&format!("cm-1 on http://{}", lagging.admin)),
        "{out}"
    );
    drop(other);
    drop(cm);
}

/// Runs `graylane status --admin ...`; its exit code and stdout (stderr appended).
async fn status(admins: &[String]) -> (Option<i32>, String) {
    let admins = Arc::new(admins.to_vec());
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_graylane"));
        cmd.arg("status");
        for a in admins.iter() {
            cmd.args(["--admin", a]);
        }
        let out = cmd.output().expect("graylane status runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    })
    .await
    .expect("status task")
}

#[tokio::test]
async fn status_says_which_replica_does_not_answer() {
    let (_s, _g, p) = setup_simple("", "rules: []\n").await;
    // A port nothing listens on: bound, then released.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let admins = vec![format!("http://{}", p.admin), format!("http://{gone}")];
    let (code, out) = status(&admins).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("DISAGREE: http://{gone} did not answer: connect")),
        "{out}"
    );
    let (code, out) = status(&["https://127.0.0.1:1".to_owned()]).await;
    assert_eq!(code, Some(1));
    assert!(
        out.contains("error: --admin \"https://127.0.0.1:1\": only http://"),
        "{out}"
    );
}
