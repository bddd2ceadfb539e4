//! The admin listener (SPEC §5) and the metric families of SPEC §6, plus the per-listener
//! connection gauge and the `max_connections` rejection counter.
// Tests run on runtimes with tokio's time driver and may use its timers.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RULES: &str = "\
version: \"2026-11-22.1\"
rules:
  - name: gray-uid
    when: { uid: { in: [42] } }
    route: gray
  - name: gray-groups
    when: { agent_gid: { any: [141338365001, 141338365002] } }
    route: gray
  - name: gray-header
    when: { header: { x-canary: { in: [\"yes\"] } } }
    route: gray
  - name: new-app
    when: { app_version: \">=5.2.0\" }
    route: gray
  - name: canary-uid
    when: { uid: { in: [99] } }
    route: canary
";

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `GET /explain?{query}`, expecting 200 and JSON.
async fn explain(p: &Proxy, query: &str) -> Value {
    let (st, body) = admin_get(p, &format!("/explain?{query}")).await;
    assert_eq!(st.as_u16(), 200, "/explain?{query}: {body}");
    json(&body)
}

/// The `/explain` JSON for a routed request.
fn routed(service: &str, pool: &str, rule: Option<&str>, fallback: Option<&str>) -> Value {
    serde_json::json!({ "service": service, "pool": pool, "rule": rule, "fallback": fallback })
}

// === /metrics, /healthz, /readyz ===

#[tokio::test]
async fn metrics_exports_every_family_in_prometheus_text() {
    let (_s, _g, p) = setup_two("/chat", "", RULES).await;
    // Some traffic first, so labelled series exist wherever the exporter needs them.
    let (st, _, _) = get(&client(), &p.url("/chat/x"), &[("xdw-kefu-uid", "42")]).await;
    assert_eq!(st.as_u16(), 200);

    let (st, headers, text) = get(&client(), &format!("http://{}/metrics", p.admin), &[]).await;
    assert_eq!(st.as_u16(), 200);
    let ctype = headers["content-type"].to_str().unwrap();
    assert!(ctype.starts_with("text/plain"), "content-type {ctype}");
    for (family, kind) in [
        ("requests_total", "counter"),
        ("rule_hits_total", "counter"),
        ("upstream_errors_total", "counter"),
        ("fallbacks_total", "counter"),
        ("marker_invalid_total", "counter"),
        ("rules_reloads_total", "counter"),
        ("connections_rejected_total", "counter"),
        ("long_links_rehomed_total", "counter"),
        ("upstream_retries_total", "counter"),
        ("request_duration_seconds", "histogram"),
        ("websocket_connections", "gauge"),
        ("connections", "gauge"),
        ("endpoint_up", "gauge"),
        ("gray_tripped", "gauge"),
        ("rules_info", "gauge"),
        ("rules_loaded_timestamp_seconds", "gauge"),
    ] {
        let type_line = format!("# TYPE graylane_{family} {kind}\n");
        assert!(
            text.contains(&type_line),
            "missing `{}`:\n{text}",
            type_line.trim()
        );
        let has_sample = text.lines().any(|l| {
            l.strip_prefix(&format!("graylane_{family}"))
                .is_some_and(|rest| rest.starts_with(['{', ' ', '_']))
        });
        assert!(has_sample, "graylane_{family} has no sample:\n{text}");
    }
    // Every sample line is `name{labels} value` with a numeric value, names prefixed.
    for l in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = l
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {l:?}"));
        assert!(series.starts_with("graylane_"), "unprefixed series {l:?}");
        assert!(value.parse::<f64>().is_ok(), "bad value in {l:?}");
    }
    // The request just made shows up with its route.
    let series =
        "graylane_requests_total{code=\"2xx\",listener=\"im\",pool=\"gray\",service=\"chat\"}";
    assert_eq!(metric(&p, series).await, 1.0);
    assert_eq!(
        metric(&p, "graylane_rule_hits_total{rule=\"gray-uid\"}").await,
        1.0
    );
    p.stop().await;
}

#[tokio::test]
async fn healthz_and_readyz_are_200() {
    let (_s, _g, p) = setup_two("/chat", "", RULES).await;
    assert_eq!(admin_get(&p, "/healthz").await.0.as_u16(), 200);
    assert_eq!(admin_get(&p, "/readyz").await.0.as_u16(), 200);
    p.stop().await;
}

// === /rules and POST /reload ===

#[tokio::test]
async fn rules_describes_the_live_ruleset() {
    let (_s, _g, p) = setup_two("/chat", "", RULES).await;
    let (st, body) = admin_get(&p, "/rules").await;
    assert_eq!(st.as_u16(), 200);
    let v = json(&body);
    assert_eq!(v["version"], "2026-11-22.1");
    assert_eq!(v["sha256"], sha256_hex(RULES.as_bytes()).as_str());
    assert_eq!(v["rules"], 5);
    assert_eq!(v["last_error"], Value::Null);
    let loaded_at = v["loaded_at"].as_str().expect("loaded_at is a string");
    assert!(loaded_at.ends_with('Z'), "loaded_at not UTC: {loaded_at}");
    let t = humantime::parse_rfc3339_weak(loaded_at)
        .unwrap_or_else(|e| panic!("loaded_at not RFC 3339 ({e}): {loaded_at}"));
    let age = SystemTime::now()
        .duration_since(t)
        .unwrap_or_else(|e| e.duration());
    assert!(
        age < Duration::from_secs(60),
        "loaded_at {loaded_at} is not now"
    );
    // loaded_at has whole seconds; the gauge may carry the fraction.
    let loaded_ts = metric(&p, "graylane_rules_loaded_timestamp_seconds").await;
    let loaded_at_ts = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (loaded_ts - loaded_at_ts).abs() < 1.0,
        "rules_loaded_timestamp_seconds {loaded_ts} vs loaded_at {loaded_at}"
    );
    p.stop().await;
}

#[tokio::test]
async fn rules_sha256_covers_in_files_in_order_of_first_mention() {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let rules = "\
rules:
  - name: b-first
    when: { uid: { in_file: b.txt } }
    route: gray
  - name: a-second
    when: { staff_uid: { in_file: a.txt }, uid: { in_file: b.txt } }
    route: gray
";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("graylane.yaml"),
        two_services(stable.addr, gray.addr, "/chat", ""),
    )
    .unwrap();
    std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
    std::fs::write(dir.path().join("a.txt"), "1\n").unwrap();
    std::fs::write(dir.path().join("b.txt"), "2\n").unwrap();
    let p = start_in(dir).await.expect("proxy starts");
    let v = json(&admin_get(&p, "/rules").await.1);
    assert_eq!(v["version"], Value::Null);
    assert_eq!(v["rules"], 2);
    let want = sha256_hex(&[rules.as_bytes(), b"2\n", b"1\n"].concat());
    assert_eq!(v["sha256"], want.as_str());
    p.stop().await;
}

#[tokio::test]
async fn post_reload_answers_rules_body_or_422_with_position() {
    let (_s, _g, p) = setup_two("/chat", "", RULES).await;
    // A version-less ruleset: 200 with the /rules body, version null.
    let next = "rules:\n  - name: only\n    when: { uid: { in: [7] } }\n    route: gray\n";
    std::fs::write(p.rules_path(), next).unwrap();
    let (st, body) = admin_post(&p, "/reload", &[]).await;
    assert_eq!(st.as_u16(), 200, "{body}");
    let v = json(&body);
    assert_eq!(v["version"], Value::Null);
    assert_eq!(v["rules"], 1);
    assert_eq!(v["sha256"], sha256_hex(next.as_bytes()).as_str());
    assert_eq!(v["last_error"], Value::Null);
    assert_eq!(v, json(&admin_get(&p, "/rules").await.1));

    // A route to a pool no service defines, at line 3.
    let broken = "rules:\n  - name: x\n    route: nowhere\n";
    std::fs::write(p.rules_path(), broken).unwrap();
    let (st, body) = admin_post(&p, "/reload", &[]).await;
    assert_eq!(st.as_u16(), 422, "{body}");
    let err = json(&body)["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string: {body}"))
        .to_owned();
    let (file, line, col, message) = located(&err);
    assert!(file.ends_with("rules.yaml"), "{err}");
    assert_eq!(line, 3, "{err}");
    assert!(
        col == 5 || col == 12,
        "column of neither key nor value: {err}"
    );
    assert!(message.contains("nowhere"), "{err}");
    let rules = json(&admin_get(&p, "/rules").await.1);
    assert_eq!(rules["last_error"], err.as_str());
    assert_eq!(rules["sha256"], v["sha256"], "the live ruleset changed");
    assert_eq!(
        metric(&p, "graylane_rules_reloads_total{result=\"error\"}").await,
        1.0
    );
    p.stop().await;
}

// === /explain ===

#[tokio::test]
async fn explain_names_service_pool_rule_and_fallback() {
    let (_s, _g, p) = setup_two("/chat", "", RULES).await;
    let chat = "listener=im&path=/chat/x";
    assert_eq!(
        explain(&p, &format!("{chat}&uid=42")).await,
        routed("chat", "gray", Some("gray-uid"), None)
    );
    assert_eq!(
        explain(&p, &format!("{chat}&uid=43")).await,
        routed("chat", "stable", None, None)
    );
    assert_eq!(
        explain(&p, chat).await,
        routed("chat", "stable", None, None)
    );
    // A cookie, with a junk token and spaces in the group list.
    assert_eq!(
        explain(
            &p,
            &format!("{chat}&cookie.xdw-kefu-agent-gid=x%2C%20141338365002")
        )
        .await,
        routed("chat", "gray", Some("gray-groups"), None)
    );
    // A header condition, and a marker carried in a header.
    assert_eq!(
        explain(&p, &format!("{chat}&header.x-canary=yes")).await,
        routed("chat", "gray", Some("gray-header"), None)
    );
    assert_eq!(
        explain(&p, &format!("{chat}&header.x-canary=no")).await,
        routed("chat", "stable", None, None)
    );
    assert_eq!(
        explain(&p, &format!("{chat}&header.xdw-kefu-uid=42")).await,
        routed("chat", "gray", Some("gray-uid"), None)
    );
    // app_version compares numerically.
    assert_eq!(
        explain(&p, &format!("{chat}&app_version=5.10.0")).await,
        routed("chat", "gray", Some("new-app"), None)
    );
    assert_eq!(
        explain(&p, &format!("{chat}&app_version=5.1.9")).await,
        routed("chat", "stable", None, None)
    );
    // `canary` exists only on `reports`: chat falls back, reports takes it.
    assert_eq!(
        explain(&p, &format!("{chat}&uid=99")).await,
        routed("chat", "stable", Some("canary-uid"), Some("pool_missing"))
    );
    assert_eq!(
        explain(&p, "listener=im&path=/reports/q&uid=99").await,
        routed("reports", "canary", Some("canary-uid"), None)
    );
    // No service for the path: all null.
    assert_eq!(
        explain(&p, "listener=im&path=/elsewhere&uid=42").await,
        serde_json::json!({ "service": null, "pool": null, "rule": null, "fallback": null })
    );
    // Unknown listener: 400 with an error message.
    let (st, body) = admin_get(&p, "/explain?listener=nope&path=/chat&uid=42").await;
    assert_eq!(st.as_u16(), 400, "{body}");
    assert!(json(&body)["error"].is_string(), "{body}");
    p.stop().await;
}

// === POST auth and guard switches ===

#[tokio::test]
async fn token_file_guards_post_endpoints_only() {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let cfg = two_services(stable.addr, gray.addr, "/chat", "").replace(
        "admin: { bind: \"127.0.0.1:0\" }",
        "admin: { bind: \"127.0.0.1:0\", token_file: admin.token }",
    );
    assert!(cfg.contains("token_file"), "harness config changed shape");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("graylane.yaml"), cfg).unwrap();
    std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
    // Surrounding whitespace is trimmed.
    std::fs::write(dir.path().join("admin.token"), "  s3cret-token \n").unwrap();
    let p = start_in(dir).await.expect("proxy starts");

    let denied: &[&[(&str, &str)]] = &[
        &[],
        &[("authorization", "Bearer wrong")],
        &[("authorization", "Bearer s3cret-token-and-more")],
        &[("authorization", "Basic czNjcmV0LXRva2Vu")],
        &[("authorization", "s3cret-token")],
    ];
    for headers in denied {
        let (st, body) = admin_post(&p, "/reload", headers).await;
        assert_eq!(st.as_u16(), 401, "{headers:?}: {body}");
        let (st, body) = admin_post(&p, "/guard/trip?service=chat", headers).await;
        assert_eq!(st.as_u16(), 401, "{headers:?}: {body}");
    }
    assert_eq!(
        metric(&p, "graylane_rules_reloads_total{result=\"unchanged\"}").await,
        0.0,
        "a refused POST reloaded"
    );
    let auth = [("authorization", "Bearer s3cret-token")];
    let (st, body) = admin_post(&p, "/reload", &auth).await;
    assert_eq!(st.as_u16(), 200, "{body}");
    assert_eq!(json(&body)["version"], "2026-11-22.1");
    assert_eq!(
        metric(&p, "graylane_rules_reloads_total{result=\"unchanged\"}").await,
        1.0
    );
    let (st, body) = admin_post(&p, "/guard/trip?service=unknown", &auth).await;
    assert_eq!(st.as_u16(), 404, "{body}");

    // GET endpoints stay open.
    for path in [
        "/metrics",
        "/healthz",
        "/readyz",
        "/rules",
        "/explain?listener=im&path=/chat&uid=42",
    ] {
        let (st, body) = admin_get(&p, path).await;
        assert_eq!(st.as_u16(), 200, "{path}: {body}");
    }
    p.stop().await;
}

#[tokio::test]
async fn guard_switches_404_for_unknown_or_unguarded_services() {
    let (_s, _g, p) = setup_two("/chat", "", RULES).await;
    for path in [
        "/guard/trip?service=unknown",
        "/guard/reset?service=unknown",
        // `chat` exists but has no `guard:`.
        "/guard/trip?service=chat",
        "/guard/reset?service=chat",
    ] {
        let (st, body) = admin_post(&p, path, &[]).await;
        assert_eq!(st.as_u16(), 404, "{path}: {body}");
    }
    assert_eq!(
        metric(&p, "graylane_gray_tripped{service=\"chat\"}").await,
        0.0
    );
    p.stop().await;
}

#[tokio::test]
async fn guard_trip_and_reset_by_hand() {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let guard =
        "    guard: { max_error_rate: 0.05, min_requests: 50, window: 30s, cooldown: 120s }\n";
    let cfg = two_services(stable.addr, gray.addr, "/chat", "").replacen(
        "  - name: reports\n",
        &format!("{guard}  - name: reports\n"),
        1,
    );
    assert!(cfg.contains("guard:"), "config changed shape");
    let p = spawn_proxy(&cfg, RULES).await;
    let c = client();
    let tripped = "graylane_gray_tripped{service=\"chat\"}";
    assert_eq!(
        get(&c, &p.url("/chat/x"), &[("xdw-kefu-uid", "42")])
            .await
            .2,
        "gray"
    );
    assert_eq!(metric(&p, tripped).await, 0.0);

    let (st, body) = admin_post(&p, "/guard/trip?service=chat", &[]).await;
    assert_eq!(st.as_u16(), 200, "{body}");
    assert_eq!(
        json(&body),
        serde_json::json!({ "service": "chat", "tripped": true })
    );
    assert_eq!(metric(&p, tripped).await, 1.0);
    assert_eq!(
        explain(&p, "listener=im&path=/chat/x&uid=42").await,
        routed("chat", "stable", Some("gray-uid"), Some("guard_tripped"))
    );
    assert_eq!(
        get(&c, &p.url("/chat/x"), &[("xdw-kefu-uid", "42")])
            .await
            .2,
        "stable"
    );
    let fallbacks = "graylane_fallbacks_total{from=\"gray\",reason=\"guard_tripped\",service=\"chat\",to=\"stable\"}";
    assert_eq!(metric(&p, fallbacks).await, 1.0);
    // `reports` has no guard: still 404.
    let (st, body) = admin_post(&p, "/guard/trip?service=reports", &[]).await;
    assert_eq!(st.as_u16(), 404, "{body}");

    let (st, body) = admin_post(&p, "/guard/reset?service=chat", &[]).await;
    assert_eq!(st.as_u16(), 200, "{body}");
    assert_eq!(
        json(&body),
        serde_json::json!({ "service": "chat", "tripped": false })
    );
    assert_eq!(metric(&p, tripped).await, 0.0);
    assert_eq!(
        explain(&p, "listener=im&path=/chat/x&uid=42").await,
        routed("chat", "gray", Some("gray-uid"), None)
    );
    assert_eq!(
        get(&c, &p.url("/chat/x"), &[("xdw-kefu-uid", "42")])
            .await
            .2,
        "gray"
    );
    p.stop().await;
}

// === connections ===

/// Opens a raw connection and gets one keep-alive response through it.
async fn open_served(p: &Proxy) -> TcpStream {
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET /chat/x HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let served = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = [0u8; 1024];
        while !String::from_utf8_lossy(&buf).ends_with("stable") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(
        served.is_ok(),
        "no answer: {}",
        String::from_utf8_lossy(&buf)
    );
    s
}

const CONNECTIONS: &str = "graylane_connections{listener=\"im\"}";

#[tokio::test]
async fn connections_gauge_follows_open_connections() {
    let (_s, _g, p) = setup_two("/chat", "", RULES).await;
    assert_eq!(metric(&p, CONNECTIONS).await, 0.0);
    let a = open_served(&p).await;
    let b = TcpStream::connect(p.addr()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            metric(&p, CONNECTIONS).await == 2.0
        })
        .await,
        "gauge is {} with two connections open",
        metric(&p, CONNECTIONS).await
    );
    drop(a);
    assert!(
        eventually(Duration::from_secs(3), || async {
            metric(&p, CONNECTIONS).await == 1.0
        })
        .await,
        "gauge is {} after one closed",
        metric(&p, CONNECTIONS).await
    );
    drop(b);
    assert!(
        eventually(Duration::from_secs(3), || async {
            metric(&p, CONNECTIONS).await == 0.0
        })
        .await,
        "gauge is {} after both closed",
        metric(&p, CONNECTIONS).await
    );
    p.stop().await;
}

#[tokio::test]
async fn over_max_connections_is_closed_at_once_and_counted() {
    let (_s, _g, p) = setup_two("/chat", "limits: { max_connections: 1 }\n", RULES).await;
    let rejected = "graylane_connections_rejected_total{listener=\"im\"}";
    assert_eq!(metric(&p, rejected).await, 0.0);
    let held = open_served(&p).await;
    assert_eq!(metric(&p, CONNECTIONS).await, 1.0);

    let mut second = TcpStream::connect(p.addr()).await.unwrap();
    let _ = second
        .write_all(b"GET /chat/x HTTP/1.1\r\nhost: a\r\n\r\n")
        .await;
    let mut buf = [0u8; 256];
    match tokio::time::timeout(Duration::from_secs(3), second.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "the second connection was served: {}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => panic!("the second connection was left open"),
    }
    assert_eq!(metric(&p, rejected).await, 1.0);
    assert_eq!(metric(&p, CONNECTIONS).await, 1.0);

    // Once the first closes, a new connection is served again.
    drop(held);
    assert!(
        eventually(Duration::from_secs(3), || async {
            metric(&p, CONNECTIONS).await == 0.0
        })
        .await
    );
    let third = open_served(&p).await;
    drop(third);
    assert_eq!(metric(&p, rejected).await, 1.0);
    p.stop().await;
}

#[tokio::test]
async fn a_second_instance_on_a_busy_port_does_not_start() {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let p = spawn_proxy(&simple_config(stable.addr, gray.addr, ""), "rules: []\n").await;
    let busy = simple_config(stable.addr, gray.addr, "").replace(
        "    bind: \"127.0.0.1:0\"\n",
        &format!("    bind: \"{}\"\n", p.addr()),
    );
    let err = try_spawn_proxy(&busy, "rules: []\n")
        .await
        .err()
        .expect("a second instance must not bind a port in use");
    assert!(err.contains("cannot bind listener im"), "{err}");
    p.stop().await;
}
