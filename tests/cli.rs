//! The command line (SPEC §7) through the built binary: `check`, `explain`, `run` with
//! signals, and `demo`.
// Tests run on runtimes with tokio's time driver and may use its timers.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const PATIENCE: Duration = Duration::from_secs(20);

fn sample_config() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/config/graylane.yaml")
}

/// The binary with a quiet, predictable environment.
fn graylane() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_graylane"));
    c.env_remove("RUST_LOG").stdin(Stdio::null());
    c
}

fn output(args: &[&str]) -> Output {
    graylane().args(args).output().expect("graylane runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A config and rules file in a fresh directory; returns it and the config path.
fn write_dir(config: &str, rules: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("graylane.yaml"), config).unwrap();
    std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
    let cfg = dir.path().join("graylane.yaml");
    (dir, cfg)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// A config whose only service is `chat` on `/chat`; endpoints are never contacted by
/// `check` and `explain`.
fn chat_only_config() -> String {
    config_yaml(
        "  - name: chat\n    match: { path_prefix: /chat }\n    pools:\n      stable: { endpoints: [\"127.0.0.1:1\"] }\n      gray: { endpoints: [\"127.0.0.1:2\"] }\n",
        "",
    )
}

/// The one stderr line of a failed `check`, split into FILE, LINE, COLUMN and message.
/// Tolerates an `error: ` prefix so that positions are checked even while
/// `check_errors_are_bare_file_line_column` documents it.
fn located_error(o: &Output) -> (String, u32, u32, String) {
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(o));
    let err = stderr(o);
    assert_eq!(
        err.lines().count(),
        1,
        "exactly one line on stderr: {err:?}"
    );
    located(&err)
}

// === check ===

#[test]
fn check_accepts_the_sample_and_prints_a_summary() {
    let o = output(&["check", "--config", sample_config()]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    assert!(!out.trim().is_empty(), "no summary");
    assert!(out.to_lowercase().contains("rule"), "{out}");
    assert!(
        !stderr(&o).contains("error"),
        "stderr on success: {}",
        stderr(&o)
    );
}

/// Broken rulesets, the position of the offending key or value, and a word of the message.
const BROKEN_RULES: &[(&str, &str, u32, u32, &str)] = &[
    (
        "unknown pool",
        "rules:\n  - name: a\n    when: { uid: { in: [1] } }\n    route: canary\n",
        4,
        12,
        "canary",
    ),
    (
        "lo > hi",
        "rules:\n  - name: a\n    when:\n      uid: { ranges: [\"5-3\"] }\n    route: gray\n",
        4,
        23,
        "5-3",
    ),
    (
        "unknown key",
        "rules:\n  - name: a\n    bogus: 1\n    route: gray\n",
        3,
        5,
        "bogus",
    ),
    (
        "bad YAML",
        "rules:\n  - name: a\n    when: { uid: { in: [1 }\n    route: gray\n",
        3,
        27,
        "",
    ),
    (
        "missing in_file",
        "rules:\n  - name: a\n    when:\n      uid: { in_file: nope.txt }\n    route: gray\n",
        4,
        23,
        "nope.txt",
    ),
    (
        "duplicate name",
        "rules:\n  - name: a\n    route: gray\n  - name: a\n    route: stable\n",
        4,
        11,
        "a",
    ),
    (
        "bad percent",
        "rules:\n  - name: a\n    when:\n      percent: { of: uid, value: 12.345 }\n    route: gray\n",
        4,
        34,
        "12.345",
    ),
];

#[test]
fn check_warns_about_expired_rules_and_still_exits_0() {
    let rules = "rules:\n  - name: old\n    owner: im-team\n    expires: 2001-02-03\n    route: gray\n  - name: new\n    expires: 2999-01-01\n    route: stable\n";
    let (_dir, cfg) = write_dir(&chat_only_config(), rules);
    let o = output(&["check", "--config", path_str(&cfg)]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let err = stderr(&o);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(
        warnings,
        vec!["warning: rule old expired at 2001-02-04T00:00:00Z and still routes (owner: im-team); remove or renew it"],
        "{err}"
    );
}

#[test]
fn check_rejects_a_ramp_that_goes_down() {
    let rules = "rules:\n  - name: r\n    when: { percent: { of: uid, steps: [5, 1], every: 1m, start: \"2026-12-07T10:00:00Z\" } }\n    route: gray\n";
    let (_dir, cfg) = write_dir(&chat_only_config(), rules);
    let o = output(&["check", "--config", path_str(&cfg)]);
    let (file, line, _, msg) = located_error(&o);
    assert!(is_rules_yaml(&file), "{file}");
    assert_eq!(line, 3);
    assert!(msg.contains("must not go down"), "{msg}");
}

#[test]
fn check_reports_broken_rules_with_file_line_and_column() {
    let cfg = chat_only_config();
    for (what, rules, line, col, word) in BROKEN_RULES {
        let (_dir, cfg_path) = write_dir(&cfg, rules);
        let o = output(&["check", "--config", path_str(&cfg_path)]);
        let (file, l, c, msg) = located_error(&o);
        assert!(is_rules_yaml(&file), "{what}: {}", stderr(&o));
        assert_eq!((l, c), (*line, *col), "{what}: {}", stderr(&o));
        assert!(msg.contains(word), "{what}: {}", stderr(&o));
        assert!(
            stdout(&o).is_empty(),
            "{what}: summary printed for a bad file"
        );
    }
}

/// SPEC §7: `check` prints `FILE:LINE:COLUMN: message` (what editors and CI parse), and
/// SPEC §2 names FILE "as configured": here `rules.yaml`.
#[test]
fn check_errors_are_bare_file_line_column() {
    let (dir, _) = write_dir(&chat_only_config(), BROKEN_RULES[0].1);
    let o = graylane()
        .args(["check", "--config", "graylane.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("rules.yaml:4:12: "),
        "{:?}",
        stderr(&o)
    );
}

/// `check` must fail where `run` would: a TLS certificate that cannot be read.
#[test]
fn check_rejects_a_missing_tls_certificate_like_run() {
    let cfg = chat_only_config().replace(
        "    bind: \"127.0.0.1:0\"\n",
        "    bind: \"127.0.0.1:0\"\n    tls: { cert: nope.crt, key: nope.key }\n",
    );
    let (dir, _) = write_dir(&cfg, "rules: []\n");
    for cmd in ["check", "run"] {
        let o = graylane()
            .args([cmd, "--config", "graylane.yaml"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{cmd}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("listener im") && err.contains("nope.crt"),
            "{cmd}: {err}"
        );
        assert_eq!(
            err.matches("cannot read certificate").count(),
            1,
            "{cmd}: {err}"
        );
    }
}

#[test]
fn check_reports_a_bad_config_with_its_position() {
    let cfg = chat_only_config().replace(
        "    bind: \"127.0.0.1:0\"\n",
        "    bind: \"127.0.0.1:0\"\n    bogus: 1\n",
    );
    let line = cfg.lines().position(|l| l.contains("bogus")).unwrap() as u32 + 1;
    let (_dir, cfg_path) = write_dir(&cfg, "rules: []\n");
    let o = output(&["check", "--config", path_str(&cfg_path)]);
    let (file, l, c, msg) = located_error(&o);
    assert_eq!(file, path_str(&cfg_path), "{}", stderr(&o));
    assert_eq!((l, c), (line, 5), "{}", stderr(&o));
    assert!(msg.contains("bogus"), "{}", stderr(&o));

    // A top-level unknown key.
    let cfg = format!("{}bogus_top: 1\n", chat_only_config());
    let line = cfg.lines().position(|l| l.contains("bogus_top")).unwrap() as u32 + 1;
    let (_dir, cfg_path) = write_dir(&cfg, "rules: []\n");
    let o = output(&["check", "--config", path_str(&cfg_path)]);
    let (file, l, c, msg) = located_error(&o);
    assert_eq!(file, path_str(&cfg_path));
    assert_eq!((l, c), (line, 1), "{}", stderr(&o));
    assert!(msg.contains("bogus_top"), "{}", stderr(&o));
}

// === run with a bad config ===

#[test]
fn run_with_a_bad_config_prints_one_error_line_and_exits_1() {
    let good = chat_only_config();
    let cases = [
        (
            "bad rules",
            good.clone(),
            BROKEN_RULES[0].1.to_owned(),
            "rules.yaml:4:12: ",
        ),
        (
            "unknown config key",
            format!("{good}bogus: 1\n"),
            "rules: []\n".to_owned(),
            "graylane.yaml:",
        ),
        (
            "missing in_file",
            good.clone(),
            BROKEN_RULES[4].1.to_owned(),
            "rules.yaml:4:23: ",
        ),
    ];
    for (what, cfg, rules, position) in cases {
        let (_dir, cfg_path) = write_dir(&cfg, &rules);
        let o = output(&["run", "--config", path_str(&cfg_path)]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: one line: {err:?}");
        assert!(err.starts_with("error: "), "{what}: {err:?}");
        assert!(err.contains(position), "{what}: {err:?}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert!(stdout(&o).is_empty(), "{what}: {}", stdout(&o));
    }
    // A config file that does not exist.
    let o = output(&["run", "--config", "/nonexistent/graylane.yaml"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.starts_with("error: "), "{err:?}");
}

// === explain ===

#[test]
fn explain_prints_the_decision_for_the_sample() {
    let o = output(&[
        "explain",
        "--config",
        sample_config(),
        "-H",
        "xdw-kefu-uid: 10000042",
        "-H",
        "xdw-app-version: 5.3.0",
        "--listener",
        "im",
        "--path",
        "/chat/send",
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {k}: line in {out}"))
    };
    assert_eq!(field("service"), "chat");
    assert_eq!(field("pool"), "gray");
    assert_eq!(field("rule"), "low-volume-uid-ranges");
    let fallback = field("fallback");
    assert!(
        ["-", "null", "none", ""].contains(&fallback.as_str()),
        "{out}"
    );
}

#[test]
fn explain_json_prints_the_explain_object() {
    let o = output(&[
        "explain",
        "--config",
        sample_config(),
        "--listener",
        "im",
        "--path",
        "/chat/send",
        "-H",
        "xdw-kefu-uid: 10000042",
        "-H",
        "xdw-app-version: 5.3.0",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(v["service"], "chat");
    assert_eq!(v["pool"], "gray");
    assert_eq!(v["rule"], "low-volume-uid-ranges");
    assert!(v["fallback"].is_null(), "{v}");

    // The default decision: rule null, pool stable.
    let o = output(&[
        "explain",
        "--config",
        sample_config(),
        "--listener",
        "im",
        "--path",
        "/chat/send",
        "-H",
        "xdw-kefu-uid: 42",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(v["pool"], "stable");
    assert!(v["rule"].is_null(), "{v}");
}

#[test]
fn explain_reads_markers_from_cookies() {
    let o = output(&[
        "explain",
        "--config",
        sample_config(),
        "--listener",
        "console",
        "--path",
        "/api/x",
        "-H",
        "cookie: xdw-kefu-agent-gid=141338365001",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(v["service"], "console-api");
    assert_eq!(v["pool"], "gray");
    assert_eq!(v["rule"], "gray-staff-groups");
}

#[test]
fn explain_without_a_matching_service_exits_0() {
    let (_dir, cfg_path) = write_dir(&chat_only_config(), "rules: []\n");
    let o = output(&[
        "explain",
        "--config",
        path_str(&cfg_path),
        "--listener",
        "im",
        "--path",
        "/other",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    for k in ["service", "pool", "rule", "fallback"] {
        assert!(v[k].is_null(), "{k} in {v}");
    }
    let o = output(&[
        "explain",
        "--config",
        path_str(&cfg_path),
        "--listener",
        "im",
        "--path",
        "/other",
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    for k in ["service:", "pool:", "rule:", "fallback:"] {
        assert!(out.lines().any(|l| l.starts_with(k)), "{k} in {out}");
    }
    // Sanity: the same config does match /chat.
    let o = output(&[
        "explain",
        "--config",
        path_str(&cfg_path),
        "--listener",
        "im",
        "--path",
        "/chat/x",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["service"], "chat");
}

// === run and signals ===

/// A child process that is killed when the test ends, however it ends; its stderr is
/// drained into a buffer so that logging can never block it.
struct ChildGuard {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl ChildGuard {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn graylane");
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut e) = child.stderr.take() {
            let buf = stderr.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = e.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut b) = buf.lock() {
                        b.push_str(&String::from_utf8_lossy(&chunk[..n]));
                    }
                }
            });
        }
        Self { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Waits for the exit code, up to `within`.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return Some(st.code().unwrap_or(-1)),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(25))
                }
                _ => return None,
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A free loopback port: bind :0, read the port, release it. Another process could take
/// it in between; acceptable for a test.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A GET that returns `None` on a connection error instead of panicking.
async fn try_get(url: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let c: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut b = http::Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Empty::new()).ok()?;
    let resp = tokio::time::timeout(PATIENCE, c.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn wait_ready(admin: SocketAddr, child: &mut ChildGuard) {
    let url = format!("http://{admin}/readyz");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some((200, _)) = try_get(&url, &[]).await {
            return;
        }
        if let Some(code) = child.wait_exit(Duration::ZERO) {
            panic!("graylane exited with {code}: {}", child.stderr());
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never 200: {}",
            child.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `graylane run` on free ports in front of in-process upstreams.
struct Running {
    child: ChildGuard,
    listener: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
    stable: Upstream,
    _gray: Upstream,
}

async fn start_run() -> Running {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let listener: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = simple_config(stable.addr, gray.addr, "")
        .replacen("bind: \"127.0.0.1:0\"", &format!("bind: \"{listener}\""), 1)
        .replace(
            "admin: { bind: \"127.0.0.1:0\" }",
            &format!("admin: {{ bind: \"{admin}\" }}"),
        );
    let rules = "rules:\n  - name: gray-uid\n    when: { uid: { in: [42] } }\n    route: gray\n";
    let (dir, cfg_path) = write_dir(&cfg, rules);
    let mut cmd = graylane();
    cmd.args(["run", "--config", path_str(&cfg_path)]);
    let mut child = ChildGuard::spawn(cmd);
    wait_ready(admin, &mut child).await;
    Running {
        child,
        listener,
        admin,
        _dir: dir,
        stable,
        _gray: gray,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_serves_and_exits_0_on_sigterm() {
    let mut r = start_run().await;
    let (st, body) = try_get(
        &format!("http://{}/x", r.listener),
        &[("xdw-kefu-uid", "42")],
    )
    .await
    .expect("request through graylane run");
    assert_eq!((st, body.as_str()), (200, "gray"));
    let (st, body) = try_get(&format!("http://{}/x", r.listener), &[])
        .await
        .unwrap();
    assert_eq!((st, body.as_str()), (200, "stable"));
    r.child.signal("TERM");
    let code = r.child.wait_exit(PATIENCE);
    assert_eq!(code, Some(0), "stderr: {}", r.child.stderr());
    assert!(
        !r.child.stderr().contains("panicked"),
        "{}",
        r.child.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_exits_0_on_sigint() {
    let mut r = start_run().await;
    let (st, _) = try_get(&format!("http://{}/x", r.listener), &[])
        .await
        .unwrap();
    assert_eq!(st, 200);
    r.child.signal("INT");
    let code = r.child.wait_exit(PATIENCE);
    assert_eq!(code, Some(0), "stderr: {}", r.child.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn run_finishes_an_in_flight_request_after_sigterm() {
    let mut r = start_run().await;
    let url = format!("http://{}/slow?ms=2000", r.listener);
    let slow = tokio::spawn(async move { try_get(&url, &[]).await });
    let stable = &r.stable;
    assert!(
        eventually(PATIENCE, || async {
            stable.seen().iter().any(|s| s.uri.starts_with("/slow"))
        })
        .await,
        "the slow request never reached the upstream"
    );
    r.child.signal("TERM");
    // /readyz says 503 while the request is still in flight.
    let readyz = format!("http://{}/readyz", r.admin);
    assert!(
        eventually(PATIENCE, || async {
            matches!(try_get(&readyz, &[]).await, Some((503, _)))
        })
        .await,
        "/readyz did not turn 503 after SIGTERM"
    );
    let (st, body) = slow
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!((st, body.as_str()), (200, "stable"));
    let code = r.child.wait_exit(PATIENCE);
    assert_eq!(code, Some(0), "stderr: {}", r.child.stderr());
}

// === demo ===

/// One `curl` line of the demo tour with the pool its comment promises.
#[derive(Debug)]
struct Suggested {
    url: String,
    headers: Vec<(String, String)>,
    expect: Option<String>,
}

/// Splits a shell line into words, honouring single quotes (all the tour uses).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for ch in line.chars() {
        match ch {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(cur);
    }
    words
}

fn parse_tour(text: &str) -> Vec<Suggested> {
    let mut out = Vec::new();
    let mut expect = None;
    for line in text.lines().map(str::trim) {
        if let Some(comment) = line.strip_prefix('#') {
            expect = comment
                .rsplit_once("->")
                .map(|(_, pool)| pool.trim().to_owned());
            continue;
        }
        if !line.starts_with("curl ") || line.contains('|') {
            continue;
        }
        let words = shell_words(line);
        let Some(url) = words.iter().find(|w| w.starts_with("http://")).cloned() else {
            continue;
        };
        let mut headers = Vec::new();
        let mut it = words.iter();
        while let Some(w) = it.next() {
            match w.as_str() {
                "-H" | "--header" => {
                    if let Some((k, v)) = it.next().and_then(|h| h.split_once(':')) {
                        headers.push((k.trim().to_owned(), v.trim().to_owned()));
                    }
                }
                "--cookie" | "-b" => {
                    if let Some(c) = it.next() {
                        headers.push(("cookie".to_owned(), c.clone()));
                    }
                }
                _ => {}
            }
        }
        out.push(Suggested {
            url,
            headers,
            expect: expect.take(),
        });
    }
    out
}

/// Removes a directory when dropped.
struct RemoveDir(Option<PathBuf>);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

const DEMO_PORTS: [u16; 3] = [8080, 8081, 9901];

/// A request to the demo and the pool that must answer it.
type Probe = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

const DEMO_PROBES: &[Probe] = &[
    // a gray UID range with a new enough app
    (
        "http://127.0.0.1:8080/chat/send",
        &[("xdw-kefu-uid", "10000042"), ("xdw-app-version", "5.3.0")],
        "gray",
    ),
    // a gray staff group, as the browser sends it
    (
        "http://127.0.0.1:8081/api/tickets",
        &[("cookie", "xdw-kefu-agent-gid=141338365001, 141338365002")],
        "gray",
    ),
    (
        "http://127.0.0.1:8081/static/app.js",
        &[("cookie", "xdw-kefu-agent-gid=141338365002")],
        "gray",
    ),
    // the gray entry point
    (
        "http://127.0.0.1:8080/chat/send",
        &[("xdw-kefu-entryid", "121338361120")],
        "gray",
    ),
    // a plain user
    (
        "http://127.0.0.1:8080/chat/send",
        &[("xdw-kefu-uid", "42")],
        "stable",
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn demo_serves_the_sample_and_its_suggested_requests_work() {
    if let Some(busy) = DEMO_PORTS
        .iter()
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", **p)).is_err())
    {
        // The demo's ports are fixed (they are in README's curl lines). A busy port is a
        // skip only when asked for, so the test cannot pass silently without running.
        assert!(
            std::env::var_os("GRAYLANE_SKIP_DEMO_IF_BUSY").is_some(),
            "127.0.0.1:{busy} is in use, so the demo test cannot run; free it, or set \
             GRAYLANE_SKIP_DEMO_IF_BUSY=1 to skip this test"
        );
        println!("note: skipping the demo test: 127.0.0.1:{busy} is already in use");
        return;
    }
    let mut cmd = graylane();
    cmd.arg("demo");
    let mut child = ChildGuard::spawn(cmd);
    // Read stdout on a thread until the tour is complete; keep draining afterwards.
    let out = child.child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                // Keep reading so the demo never writes into a closed pipe.
                continue;
            }
        }
    });
    let deadline = Instant::now() + PATIENCE;
    let mut tour = String::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let done = line.contains("Ctrl-C");
                tour.push_str(&line);
                tour.push('\n');
                if done {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Some(code) = child.wait_exit(Duration::ZERO) {
            let err = child.stderr();
            if err.contains("cannot bind")
                && std::env::var_os("GRAYLANE_SKIP_DEMO_IF_BUSY").is_some()
            {
                println!("note: skipping the demo test: a demo port was taken meanwhile: {err}");
                return;
            }
            panic!("demo exited with {code}: {err}\nstdout: {tour}");
        }
        assert!(
            Instant::now() < deadline,
            "no tour printed; stdout: {tour}\nstderr: {}",
            child.stderr()
        );
    }

    // The demo writes its sample into a temp directory; remove it when done.
    let _cleanup = RemoveDir(
        tour.split_once("(rules: ")
            .and_then(|(_, rest)| rest.split_once("/rules.yaml"))
            .map(|(dir, _)| PathBuf::from(dir))
            .filter(|d| d.starts_with(std::env::temp_dir())),
    );

    // The requests the brief names, issued directly.
    for (url, headers, pool) in DEMO_PROBES {
        let (st, body) = try_get(url, headers)
            .await
            .unwrap_or_else(|| panic!("{url} {headers:?}: no answer; {}", child.stderr()));
        assert_eq!(st, 200, "{url} {headers:?}: {body}");
        assert!(
            body.starts_with(pool),
            "{url} {headers:?}: expected {pool}, got {body:?}"
        );
    }

    // Every request the tour suggests answers with the pool its comment promises.
    let suggested = parse_tour(&tour);
    let promised: Vec<&Suggested> = suggested.iter().filter(|s| s.expect.is_some()).collect();
    assert!(promised.len() >= 4, "tour lists too few requests: {tour}");
    for s in promised {
        let headers: Vec<(&str, &str)> = s
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (st, body) = try_get(&s.url, &headers)
            .await
            .unwrap_or_else(|| panic!("{s:?}: no answer"));
        let pool = s.expect.as_deref().unwrap_or_default();
        assert_eq!(st, 200, "{s:?}: {body}");
        assert!(body.starts_with(pool), "{s:?}: got {body:?}");
    }
    // The admin commands of the tour answer too.
    let (st, body) = try_get("http://127.0.0.1:9901/rules", &[]).await.unwrap();
    assert_eq!(st, 200, "{body}");

    child.signal("TERM");
    assert_eq!(
        child.wait_exit(PATIENCE),
        Some(0),
        "stderr: {}",
        child.stderr()
    );
}

#[test]
fn shell_words_and_tour_parsing() {
    assert_eq!(
        shell_words("curl -s http://h/p -H 'a: b c' --cookie 'x=1, 2'"),
        [
            "curl",
            "-s",
            "http://h/p",
            "-H",
            "a: b c",
            "--cookie",
            "x=1, 2"
        ]
    );
    let t = parse_tour(
        "  # old app -> stable\n  curl -s http://h/c -H 'u: 1'\n  curl -s http://a/m | grep x\n",
    );
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].expect.as_deref(), Some("stable"));
    assert_eq!(t[0].headers, [("u".to_owned(), "1".to_owned())]);
}
