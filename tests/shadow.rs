//! The shadow ruleset (SPEC §9.4): a candidate decided beside the live rules on every
//! request, counted, never routing; a broken or missing candidate never touches routing.
// Tests run on runtimes with tokio's time driver and may use its timers.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::*;

/// Live: uids 1–100 to gray.
const LIVE: &str = "version: live\nrules:\n  - name: gray-a\n    when: { uid: { ranges: [\"1-100\"] } }\n    route: gray\n";
/// Candidate: uids 1–300 to gray (a widening), plus an exclusion of uid 50.
const CANDIDATE: &str = "version: next\nrules:\n  - name: keep-50\n    when: { uid: { in: [50] } }\n    route: stable\n  - name: gray-ab\n    when: { uid: { ranges: [\"1-300\"] } }\n    route: gray\n";

async fn setup(candidate: Option<&str>) -> (Upstream, Upstream, Proxy) {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("graylane.yaml"),
        simple_config(
            stable.addr,
            gray.addr,
            "shadow_rules_file: rules.next.yaml\n",
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("rules.yaml"), LIVE).unwrap();
    if let Some(c) = candidate {
        std::fs::write(dir.path().join("rules.next.yaml"), c).unwrap();
    }
    let p = start_in(dir).await.expect("proxy starts");
    (stable, gray, p)
}

fn next_path(p: &Proxy) -> std::path::PathBuf {
    p.rules_path().with_file_name("rules.next.yaml")
}

/// Sends uids 1..=n once each; returns how many reached gray.
async fn send_uids(p: &Proxy, n: u64) -> u64 {
    let c = client();
    let mut gray = 0;
    for uid in 1..=n {
        let (_, _, body) = get(&c, &p.url("/x"), &[("xdw-kefu-uid", &uid.to_string())]).await;
        gray += u64::from(body == "gray");
    }
    gray
}

#[tokio::test]
async fn shadow_counts_what_the_candidate_decides_while_live_rules_route() {
    let (_s, gray, p) = setup(Some(CANDIDATE)).await;
    // 400 users: live sends 1–100 to gray; the candidate would send 1–300 but 50.
    assert_eq!(
        send_uids(&p, 400).await,
        100,
        "routing follows the live rules"
    );
    assert_eq!(gray.seen().len(), 100);
    let v = json(&admin_get(&p, "/shadow").await.1);
    assert_eq!(v["requests"], 400, "{v}");
    assert_eq!(v["rules"]["keep-50"], 1, "{v}");
    assert_eq!(v["rules"]["gray-ab"], 299, "{v}");
    assert_eq!(v["rules"]["default"], 100, "{v}");
    assert_eq!(v["last_error"], serde_json::Value::Null, "{v}");
    let moves = v["moves"].as_array().unwrap();
    let find = |from: &str, to: &str| {
        moves
            .iter()
            .find(|m| m["from"] == from && m["to"] == to)
            .map_or(0, |m| m["requests"].as_u64().unwrap())
    };
    assert_eq!(find("stable", "gray"), 200, "{v}");
    assert_eq!(find("gray", "stable"), 1, "{v}");
    assert_eq!(
        metric(
            &p,
            "graylane_shadow_moves_total{from=\"stable\",service=\"chat\",to=\"gray\"}"
        )
        .await,
        200.0
    );
    assert_eq!(
        metric(&p, "graylane_shadow_rule_hits_total{rule=\"gray-ab\"}").await,
        299.0
    );
    // /explain shows both.
    let e = json(
        &admin_get(&p, "/explain?listener=im&path=/x&uid=250")
            .await
            .1,
    );
    assert_eq!(e["pool"], "stable", "{e}");
    assert_eq!(e["shadow"]["pool"], "gray", "{e}");
    assert_eq!(e["shadow"]["rule"], "gray-ab", "{e}");
}

#[tokio::test]
async fn a_broken_candidate_never_changes_routing_and_a_fixed_one_loads() {
    let (_s, _g, p) = setup(Some(CANDIDATE)).await;
    let before = json(&admin_get(&p, "/rules").await.1);
    write_atomic(
        &next_path(&p),
        "rules:\n  - name: x\n    when: { uid: { in: [1 } }\n    route: gray\n",
    );
    let broken = eventually(Duration::from_secs(5), || async {
        json(&admin_get(&p, "/shadow").await.1)["last_error"].is_string()
    })
    .await;
    assert!(broken, "the broken candidate was not noticed");
    let v = json(&admin_get(&p, "/shadow").await.1);
    assert!(
        v["last_error"]
            .as_str()
            .unwrap()
            .contains("rules.next.yaml:3:"),
        "{v}"
    );
    // Still the previous candidate, and the live rules untouched.
    assert_eq!(v["rules"]["gray-ab"], 0, "{v}");
    let after = json(&admin_get(&p, "/rules").await.1);
    assert_eq!(after["sha256"], before["sha256"]);
    assert_eq!(after["last_error"], serde_json::Value::Null, "{after}");
    assert_eq!(send_uids(&p, 150).await, 100);
    // Fixed: it loads and counts from then on.
    write_atomic(&next_path(&p), "version: n2\nrules:\n  - name: none\n    when: { uid: { in: [999999] } }\n    route: gray\n");
    let fixed = eventually(Duration::from_secs(5), || async {
        json(&admin_get(&p, "/shadow").await.1)["last_error"].is_null()
    })
    .await;
    assert!(fixed);
    send_uids(&p, 10).await;
    let v = json(&admin_get(&p, "/shadow").await.1);
    assert_eq!(
        v["requests"], 10,
        "counts start with the new candidate: {v}"
    );
    assert_eq!(v["rules"]["default"], 10, "{v}");
}

#[tokio::test]
async fn a_missing_candidate_is_reported_and_routing_works() {
    let (_s, _g, p) = setup(None).await;
    let v = json(&admin_get(&p, "/shadow").await.1);
    assert!(
        v["last_error"].as_str().unwrap().contains("cannot read"),
        "{v}"
    );
    assert_eq!(v["sha256"], serde_json::Value::Null);
    assert_eq!(send_uids(&p, 120).await, 100);
    // Created later, it is picked up.
    write_atomic(&next_path(&p), CANDIDATE);
    let loaded = eventually(Duration::from_secs(5), || async {
        json(&admin_get(&p, "/shadow").await.1)["sha256"].is_string()
    })
    .await;
    assert!(loaded);
}

#[tokio::test]
async fn shadow_is_404_without_a_shadow_rules_file() {
    let (_s, _g, p) = setup_simple("", LIVE).await;
    assert_eq!(admin_get(&p, "/shadow").await.0.as_u16(), 404);
}
