//! While gray runs (SPEC §3 health, §9.1–§9.3, §9.6): the guard compares gray with stable,
//! passive ejection counts connect failures only, ramps step with the clock and hold while
//! the guard is tripped, expired rules are reported and keep routing, and every reload is
//! in `/rules/history`. Real upstreams on 127.0.0.1; their faults are switched on per test.
// Tests run on runtimes with tokio's time driver and may use its timers.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use serde_json::Value;

/// uids 1–1000 go to gray; everyone else to stable.
const RULES: &str = "\
version: v1
rules:
  - name: gray-users
    when: { uid: { ranges: [\"1-1000\"] } }
    route: gray
";

/// `chat` on `/` with stable and gray, and `guard` (YAML flow mapping) on it.
fn guarded(stable: std::net::SocketAddr, gray: std::net::SocketAddr, guard: &str) -> String {
    config_yaml(
        &format!(
            "  - name: chat\n    match: {{ path_prefix: / }}\n    pools:\n      stable: {{ endpoints: [\"{stable}\"] }}\n      gray: {{ endpoints: [\"{gray}\"] }}\n    guard: {guard}\n"
        ),
        "",
    )
}

async fn setup(guard: &str, rules: &str) -> (Upstream, Upstream, Proxy) {
    logs(); // capture from the start
    proxy_with_upstreams(|s, g| guarded(s, g, guard), rules).await
}

/// Sends `n` stable requests (uids 5000..) and `n` gray ones (uids 1..), interleaved with
/// stable first, `conc` at a time; returns the statuses of the gray ones.
async fn traffic(p: &Proxy, n: u64, conc: usize) -> Vec<u16> {
    let c = client();
    let mut gray = Vec::new();
    let mut i = 0;
    while i < n {
        let batch: Vec<u64> = (i..(i + conc as u64).min(n)).collect();
        let futs = batch.iter().map(|&k| {
            let c = c.clone();
            let url = p.url("/x");
            async move {
                let _ = get(&c, &url, &[("xdw-kefu-uid", &(5000 + k).to_string())]).await;
                let g = get(&c, &url, &[("xdw-kefu-uid", &(1 + k % 1000).to_string())]).await;
                g.0.as_u16()
            }
        });
        gray.extend(futures_util::future::join_all(futs).await);
        i += conc as u64;
    }
    gray
}

async fn guard_json(p: &Proxy) -> Value {
    let (st, body) = admin_get(p, "/guard?service=chat").await;
    assert_eq!(st.as_u16(), 200, "{body}");
    json(&body)
}

#[tokio::test]
async fn a_failure_shared_by_stable_and_gray_does_not_trip_gray() {
    let (stable, gray, p) = setup(
        "{ max_error_rate: 0.05, min_requests: 20, window: 30s }",
        RULES,
    )
    .await;
    stable.fail_with(500);
    gray.fail_with(500);
    let statuses = traffic(&p, 60, 4).await;
    assert!(statuses.iter().all(|&s| s == 500), "{statuses:?}");
    let g = guard_json(&p).await;
    assert_eq!(g["state"], "closed", "{g}");
    assert_eq!(g["window"]["gray"]["failures"], 60, "{g}");
    assert_eq!(
        metric(&p, "graylane_gray_tripped{service=\"chat\"}").await,
        0.0
    );
    // Every gray request reached gray: nothing was ejected, nothing fell back.
    assert_eq!(gray.seen().len(), 60);
    assert_eq!(
        metric(&p, "graylane_fallbacks_total{from=\"gray\",reason=\"guard_tripped\",service=\"chat\",to=\"stable\"}").await,
        0.0
    );
}

#[tokio::test]
async fn gray_failing_while_stable_is_healthy_trips_with_its_evidence() {
    let (_stable, gray, p) = setup(
        "{ max_error_rate: 0.05, min_requests: 20, window: 30s, cooldown: 60s }",
        RULES,
    )
    .await;
    gray.fail_with(503);
    let statuses = traffic(&p, 40, 1).await;
    // It trips after min_requests gray outcomes; what follows goes to stable.
    let failed = statuses.iter().filter(|&&s| s == 503).count();
    assert_eq!(failed, 20, "{statuses:?}");
    assert!(statuses[20..].iter().all(|&s| s == 200), "{statuses:?}");
    let g = guard_json(&p).await;
    assert_eq!(g["state"], "open", "{g}");
    assert_eq!(g["tripped"], true);
    let e = &g["last_trip"];
    assert_eq!(e["reason"], "error_rate", "{g}");
    assert_eq!(e["gray"]["requests"], 20, "{g}");
    assert_eq!(e["gray"]["failures"], 20, "{g}");
    assert!(e["stable"]["requests"].as_u64().unwrap() >= 19, "{g}");
    assert_eq!(e["stable"]["failures"], 0, "{g}");
    assert!(
        e["z"].as_f64().unwrap() > e["z_needed"].as_f64().unwrap(),
        "{g}"
    );
    let log = logs();
    let line = log
        .lines()
        .find(|l| l.contains("gray tripped for service chat (error_rate)"))
        .unwrap_or_else(|| panic!("no trip line in:\n{log}"));
    for field in [
        "gray 20 of 20 failed (1)",
        "stable 0 of",
        "worse than stable beyond chance",
        "gray_failures=20",
        "stable_failures=0",
        "z=",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    assert_eq!(
        metric(&p, "graylane_gray_tripped{service=\"chat\"}").await,
        1.0
    );
}

#[tokio::test]
async fn without_comparison_the_absolute_bound_alone_trips() {
    let (stable, gray, p) = setup(
        "{ max_error_rate: 0.05, min_requests: 20, window: 30s, compare_to_stable: false }",
        RULES,
    )
    .await;
    stable.fail_with(500);
    gray.fail_with(500);
    traffic(&p, 30, 1).await;
    let g = guard_json(&p).await;
    assert_eq!(g["state"], "open", "{g}");
    assert_eq!(g["last_trip"]["z"], Value::Null, "{g}");
}

#[tokio::test]
async fn nothing_trips_below_min_requests() {
    let (_stable, gray, p) = setup(
        "{ max_error_rate: 0.05, min_requests: 30, window: 30s }",
        RULES,
    )
    .await;
    gray.fail_with(500);
    let statuses = traffic(&p, 29, 1).await;
    assert!(statuses.iter().all(|&s| s == 500));
    assert_eq!(guard_json(&p).await["state"], "closed");
    assert_eq!(gray.seen().len(), 29);
}

/// SPEC §3: 5xx answers never eject an endpoint; without a guard a failing gray keeps
/// getting its requests (nothing else may decide about the version).
#[tokio::test]
async fn a_gray_answering_5xx_is_never_ejected_without_a_guard() {
    let (_stable, gray, p) = setup_simple("", RULES).await;
    gray.fail_with(500);
    let c = client();
    for i in 0..50 {
        let (st, _, body) = get(&c, &p.url("/x"), &[("xdw-kefu-uid", &(1 + i).to_string())]).await;
        assert_eq!((st.as_u16(), body.as_str()), (500, "gray"), "request {i}");
    }
    assert_eq!(gray.seen().len(), 50);
    let up = format!(
        "graylane_endpoint_up{{endpoint=\"{}\",pool=\"gray\",service=\"chat\"}}",
        gray.addr
    );
    assert_eq!(metric(&p, &up).await, 1.0);
}

/// Delays 30x apart so that a busy machine (one slow stable answer moves a p95 of 30
/// requests) cannot bring the two p95s within the 3x ratio.
#[tokio::test]
async fn a_gray_far_slower_trips_the_latency_guard() {
    let (stable, gray, p) = setup(
        "{ max_error_rate: 0.05, min_requests: 10, window: 30s, max_latency_ratio: 3, min_latency: 50ms }",
        RULES,
    )
    .await;
    stable.delay(10);
    gray.delay(300);
    let statuses = traffic(&p, 30, 10).await;
    assert!(
        statuses.iter().all(|&s| s == 200),
        "slow, not failing: {statuses:?}"
    );
    let g = guard_json(&p).await;
    assert_eq!(g["state"], "open", "{g}");
    let e = &g["last_trip"];
    assert_eq!(e["reason"], "latency", "{g}");
    let (gp, sp) = (
        e["gray"]["p95_ms"].as_f64().unwrap(),
        e["stable"]["p95_ms"].as_f64().unwrap(),
    );
    assert!(gp > 3.0 * sp && gp > 50.0, "gray p95 {gp} vs stable {sp}");
    assert!(logs().contains("gray tripped for service chat (latency)"));
}

#[tokio::test]
async fn guard_404s_for_unknown_or_guardless_services() {
    let (_s, _g, p) = setup("{ max_error_rate: 0.05 }", RULES).await;
    assert_eq!(admin_get(&p, "/guard?service=nope").await.0.as_u16(), 404);
    let (_s2, _g2, p2) = setup_simple("", RULES).await;
    assert_eq!(admin_get(&p2, "/guard?service=chat").await.0.as_u16(), 404);
}

// === ramps ===

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn ramp_rules(start: SystemTime, every: &str, steps: &str) -> String {
    format!(
        "rules:\n  - name: ramp\n    when:\n      percent: {{ of: uid, steps: {steps}, every: {every}, start: \"{}\" }}\n    route: gray\n",
        rfc3339(start)
    )
}

/// How many of uids 1..=n the proxy sends to gray.
async fn gray_count(p: &Proxy, n: u64) -> usize {
    let c = client();
    let mut k = 0;
    for uid in 1..=n {
        let (_, _, body) = get(&c, &p.url("/x"), &[("xdw-kefu-uid", &uid.to_string())]).await;
        k += usize::from(body == "gray");
    }
    k
}

#[tokio::test]
async fn a_ramp_serves_the_clocks_step() {
    let now = SystemTime::now();
    // Started 2.5 h ago, a step an hour: k = 2, the third step.
    let rules = ramp_rules(now - Duration::from_secs(9000), "1h", "[0, 1, 100]");
    let (_s, _g, p) = setup_simple("", &rules).await;
    assert_eq!(gray_count(&p, 50).await, 50);
    let r = json(&admin_get(&p, "/rules").await.1);
    assert_eq!(r["ramps"][0]["rule"], "ramp", "{r}");
    assert_eq!(r["ramps"][0]["percent_now"], 100.0, "{r}");
    assert_eq!(r["ramps"][0]["next_step_at"], Value::Null, "{r}");
    assert_eq!(
        metric(&p, "graylane_rule_percent{rule=\"ramp\"}").await,
        100.0
    );
    // Before its start nobody is in.
    let later = ramp_rules(now + Duration::from_secs(3600), "1h", "[50, 100]");
    write_atomic(&p.rules_path(), &later);
    let live = eventually(Duration::from_secs(5), || async {
        json(&admin_get(&p, "/rules").await.1)["ramps"][0]["percent_now"] == 0.0
    })
    .await;
    assert!(live);
    assert_eq!(gray_count(&p, 50).await, 0);
    let r = json(&admin_get(&p, "/rules").await.1);
    assert_eq!(
        r["ramps"][0]["next_step_at"],
        rfc3339(now + Duration::from_secs(3600)),
        "{r}"
    );
}

#[tokio::test]
async fn a_ramp_holds_while_the_guard_is_tripped_and_jumps_after_reset() {
    let start = SystemTime::now() + Duration::from_millis(1500);
    let rules = ramp_rules(start, "1s", "[100]");
    let (_s, _g, p) = setup(
        "{ max_error_rate: 0.5, min_requests: 1000, cooldown: 10m }",
        &rules,
    )
    .await;
    assert_eq!(gray_count(&p, 20).await, 0, "before start");
    // Tripped before the ramp starts: it stays at 0 % on this instance.
    assert_eq!(
        admin_post(&p, "/guard/trip?service=chat", &[])
            .await
            .0
            .as_u16(),
        200
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(SystemTime::now() > start);
    let held = json(&admin_get(&p, "/guard?service=chat").await.1);
    assert!(held["held_since"].is_string(), "{held}");
    // The gray share the ramp allows is 0 (held), so everyone is stable: not even the
    // guard's fallback is needed.
    assert_eq!(gray_count(&p, 20).await, 0);
    assert_eq!(
        metric(&p, "graylane_fallbacks_total{from=\"gray\",reason=\"guard_tripped\",service=\"chat\",to=\"stable\"}").await,
        0.0,
        "held at 0 %, no request even asked for gray"
    );
    // /rules shows the clock's step.
    assert_eq!(
        json(&admin_get(&p, "/rules").await.1)["ramps"][0]["percent_now"],
        100.0
    );
    // Reset: the ramp jumps to the clock's step.
    assert_eq!(
        admin_post(&p, "/guard/reset?service=chat", &[])
            .await
            .0
            .as_u16(),
        200
    );
    assert_eq!(gray_count(&p, 20).await, 20);
}

// === rule lifecycle ===

#[tokio::test]
async fn an_expired_rule_is_reported_and_keeps_routing() {
    let rules = "rules:\n  - name: old-gray\n    owner: \"im-team\"\n    expires: 2000-01-01\n    when: { uid: { in: [7] } }\n    route: gray\n  - name: fresh\n    expires: 2999-01-01\n    route: stable\n";
    let (_s, _g, p) = setup_simple("", rules).await;
    let (_, _, body) = get(&client(), &p.url("/x"), &[("xdw-kefu-uid", "7")]).await;
    assert_eq!(body, "gray");
    let r = json(&admin_get(&p, "/rules").await.1);
    assert_eq!(r["expired"].as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(r["expired"][0]["rule"], "old-gray", "{r}");
    assert_eq!(r["expired"][0]["owner"], "im-team", "{r}");
    assert_eq!(r["expired"][0]["expires"], "2000-01-02T00:00:00Z", "{r}");
    assert_eq!(
        metric(&p, "graylane_rule_expired{rule=\"old-gray\"}").await,
        1.0
    );
    let fresh = metric(&p, "graylane_rule_expired{rule=\"fresh\"}").await;
    assert_eq!(fresh, 0.0);
    assert!(logs().contains(
        "rule old-gray expired at 2000-01-02T00:00:00Z and still routes (owner: im-team)"
    ));
}

// === reload history ===

#[tokio::test]
async fn history_names_added_removed_and_changed_rules() {
    let v1 = "version: v1\nrules:\n  - name: a\n    when: { uid: { in: [1] } }\n    route: gray\n  - name: b\n    when: { uid: { in: [2] } }\n    route: gray\n";
    let (_s, _g, p) = setup_simple("", v1).await;
    let v2 = "version: v2\nrules:\n  - name: b\n    when: { uid: { in: [3] } }\n    route: gray\n  - name: c\n    route: stable\n";
    write_atomic(&p.rules_path(), v2);
    let (st, _) = admin_post(&p, "/reload", &[]).await;
    assert_eq!(st.as_u16(), 200);
    write_atomic(&p.rules_path(), "rules: [ broken");
    assert_eq!(admin_post(&p, "/reload", &[]).await.0.as_u16(), 422);
    let h = json(&admin_get(&p, "/rules/history").await.1);
    let h = h["history"].as_array().unwrap().clone();
    // Newest first: the error, the v2 load (once, whether the watcher or the POST got
    // there first), the start.
    assert_eq!(h[0]["result"], "error", "{h:?}");
    assert!(
        h[0]["error"].as_str().unwrap().contains("rules.yaml:"),
        "{h:?}"
    );
    let ok = h
        .iter()
        .find(|e| e["version"] == "v2" && e["result"] == "ok")
        .expect("v2 load");
    assert_eq!(ok["added"], serde_json::json!(["c"]));
    assert_eq!(ok["removed"], serde_json::json!(["a"]));
    assert_eq!(ok["changed"], serde_json::json!(["b"]));
    assert_eq!(h.last().unwrap()["trigger"], "start");
    assert_eq!(h.last().unwrap()["added"], serde_json::json!(["a", "b"]));
    assert!(h.len() <= 20);
    let log = logs();
    assert!(
        log.lines().any(|l| l.contains("rules reloaded: version v2")
            && l.contains("added [\"c\"], removed [\"a\"], changed [\"b\"]")),
        "{log}"
    );
}
