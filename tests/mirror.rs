//! Mirror (SPEC §9.5): a sticky share of stable-routed requests is copied to gray after
//! the real answer, never delaying or changing it; copies are marked, compared by status
//! class, and counted.
// Tests run on runtimes with tokio's time driver and may use its timers.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::*;

const RULES: &str = "rules: []\n";

fn config(stable: std::net::SocketAddr, gray: std::net::SocketAddr, mirror: &str) -> String {
    config_yaml(
        &format!(
            "  - name: chat\n    match: {{ path_prefix: / }}\n    pools:\n      stable: {{ endpoints: [\"{stable}\"] }}\n      gray: {{ endpoints: [\"{gray}\"] }}\n    mirror: {mirror}\n"
        ),
        "timeouts: { upstream_response: 1s }\n",
    )
}

async fn setup(mirror: &str) -> (Upstream, Upstream, Proxy) {
    proxy_with_upstreams(|s, g| config(s, g, mirror), RULES).await
}

async fn mirror_count(p: &Proxy, result: &str) -> f64 {
    metric(
        p,
        &format!("graylane_mirror_requests_total{{result=\"{result}\",service=\"chat\"}}"),
    )
    .await
}

#[tokio::test]
async fn copies_of_gets_reach_gray_marked_and_compared() {
    let (stable, gray, p) = setup("{ to: gray, percent: 100 }").await;
    let c = client();
    for i in 0..10 {
        let (st, _, body) = get(&c, &p.url(&format!("/page/{i}")), &[("xdw-kefu-uid", "7")]).await;
        assert_eq!(
            (st.as_u16(), body.as_str()),
            (200, "stable"),
            "the real answer"
        );
    }
    let all = eventually(Duration::from_secs(5), || async { gray.seen().len() == 10 }).await;
    assert!(all, "gray saw {} copies", gray.seen().len());
    for s in gray.seen() {
        assert_eq!(s.headers["x-graylane-mirror"], "1");
        assert_eq!(s.headers["x-graylane-pool"], "gray");
        // A copy carries what graylane set on the real request.
        assert_eq!(s.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(s.headers["x-forwarded-proto"], "http");
        assert_eq!(s.method, "GET");
    }
    assert_eq!(stable.seen().len(), 10);
    assert!(stable
        .seen()
        .iter()
        .all(|s| !s.headers.contains_key("x-graylane-mirror")));
    let matched = eventually(Duration::from_secs(3), || async {
        mirror_count(&p, "match").await == 10.0
    })
    .await;
    assert!(matched);
    // Gray failing: the copies mismatch; the real answers are untouched.
    gray.fail_with(500);
    for _ in 0..3 {
        let (st, _, _) = get(&c, &p.url("/again"), &[]).await;
        assert_eq!(st.as_u16(), 200);
    }
    let mismatched = eventually(Duration::from_secs(3), || async {
        mirror_count(&p, "mismatch").await == 3.0
    })
    .await;
    assert!(mismatched);
}

#[tokio::test]
async fn posts_and_bodies_are_never_copied() {
    let (_stable, gray, p) = setup("{ to: gray, percent: 100 }").await;
    let c = client();
    let (st, _, _) = send(&c, "POST", &p.url("/form"), &[], "a=1".into()).await;
    assert_eq!(st.as_u16(), 200);
    // A listed method with a body is not copied either.
    let (p2_stable, p2_gray, p2) = setup("{ to: gray, percent: 100, methods: [PUT] }").await;
    let (st, _, _) = send(&c, "PUT", &p2.url("/doc"), &[], "body".into()).await;
    assert_eq!(st.as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(gray.seen().is_empty(), "a POST was copied");
    assert!(p2_gray.seen().is_empty(), "a body was copied");
    assert_eq!(p2_stable.seen().len(), 1);
}

#[tokio::test]
async fn the_share_is_sticky_on_uid() {
    let (_stable, gray, p) = setup("{ to: gray, percent: 30 }").await;
    let c = client();
    for uid in 1..=200u64 {
        get(&c, &p.url("/x"), &[("xdw-kefu-uid", &uid.to_string())]).await;
    }
    let first: std::collections::BTreeSet<String> = eventually_seen(&gray).await;
    let n = first.len();
    assert!((30..=90).contains(&n), "about 30% of 200 users, got {n}");
    for uid in 1..=200u64 {
        get(&c, &p.url("/x"), &[("xdw-kefu-uid", &uid.to_string())]).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let uids: std::collections::BTreeSet<String> = gray
        .seen()
        .iter()
        .map(|s| s.headers["xdw-kefu-uid"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(uids, first, "the same users are copied every time");
    assert_eq!(gray.seen().len(), 2 * n);
}

async fn eventually_seen(gray: &Upstream) -> std::collections::BTreeSet<String> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    gray.seen()
        .iter()
        .map(|s| s.headers["xdw-kefu-uid"].to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_hanging_mirror_target_adds_no_latency_and_is_counted() {
    let (_stable, gray, p) = setup("{ to: gray, percent: 100, max_in_flight: 2 }").await;
    gray.delay(3000);
    let c = client();
    let mut worst = Duration::ZERO;
    for _ in 0..6 {
        let t = Instant::now();
        let (st, _, body) = get(&c, &p.url("/fast"), &[]).await;
        worst = worst.max(t.elapsed());
        assert_eq!((st.as_u16(), body.as_str()), (200, "stable"));
    }
    // A request held by its copy would take the copy's 1 s upstream_response at least;
    // the bound leaves a busy machine room below that.
    assert!(
        worst < Duration::from_millis(700),
        "a real request took {worst:?}"
    );
    // Two copies hang until upstream_response (1 s) and end as errors; the rest were
    // dropped at once for max_in_flight.
    assert_eq!(mirror_count(&p, "dropped").await, 4.0);
    let errors = eventually(Duration::from_secs(4), || async {
        mirror_count(&p, "error").await == 2.0
    })
    .await;
    assert!(errors, "error count {}", mirror_count(&p, "error").await);
}

#[tokio::test]
async fn a_dead_mirror_target_is_an_error_not_a_delay() {
    let stable = spawn_upstream("stable").await;
    let (_held, dead) = refused_addr();
    let p = spawn_proxy(
        &config(stable.addr, dead, "{ to: gray, percent: 100 }"),
        RULES,
    )
    .await;
    let c = client();
    let t = Instant::now();
    let (st, _, _) = get(&c, &p.url("/x"), &[]).await;
    assert_eq!(st.as_u16(), 200);
    assert!(t.elapsed() < Duration::from_millis(300));
    let errors = eventually(Duration::from_secs(3), || async {
        mirror_count(&p, "error").await == 1.0
    })
    .await;
    assert!(errors);
}
