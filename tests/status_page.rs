//! The status page (SPEC §10): `GET /status` counts what the proxy did, and `GET /`, loaded
//! in a real headless Chromium, draws it from nothing but itself and refreshes on its own.
// Tests run on runtimes with tokio's time driver and may use its timers.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::cdp::{chromium_or_skip, Browser};
use common::*;
use serde_json::{json, Value};

const RULES: &str = "version: \"status-1\"\nrules:\n  - name: gray-range\n    when: { uid: { ranges: [\"1000-1999\"] } }\n    route: gray\n";

/// `chat` on `/` with a guard, so the page has a guard to show.
fn guarded(stable: std::net::SocketAddr, gray: std::net::SocketAddr) -> String {
    config_yaml(
        &format!(
            "  - name: chat\n    match: {{ path_prefix: / }}\n    pools:\n      stable: {{ endpoints: [\"{stable}\"] }}\n      gray: {{ endpoints: [\"{gray}\"] }}\n    guard: {{ min_requests: 1000 }}\n"
        ),
        "",
    )
}

/// 30 gray users (uid 1000–1029) and 70 stable ones, one request each; gray answers
/// 500 to the first 6.
async fn traffic(p: &Proxy, gray: &Upstream) {
    let c = client();
    gray.fail_with(500);
    for uid in 1000..1006 {
        get(&c, &p.url("/x"), &[("xdw-kefu-uid", &uid.to_string())]).await;
    }
    gray.fail_with(0);
    for uid in (1006..1030).chain(5000..5070) {
        let (st, _, _) = get(&c, &p.url("/x"), &[("xdw-kefu-uid", &uid.to_string())]).await;
        assert_eq!(st.as_u16(), 200);
    }
}

fn pool<'a>(svc: &'a Value, name: &str) -> &'a Value {
    svc["pools"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no pool {name} in {svc}"))
}

#[tokio::test]
async fn status_counts_shares_errors_and_rules() {
    let (_stable, gray, p) = proxy_with_upstreams(guarded, RULES).await;
    traffic(&p, &gray).await;
    let (st, body) = admin_get(&p, "/status").await;
    assert_eq!(st.as_u16(), 200);
    let s = json(&body);
    assert_eq!(s["rules"]["version"], "status-1");
    assert_eq!(s["sample_every_seconds"], 10);
    let chat = &s["services"][0];
    assert_eq!(chat["name"], "chat");
    assert_eq!(chat["requests"], 100);
    assert_eq!(chat["gray_share"], 0.3);
    assert_eq!(
        chat["listeners"],
        json!([{ "listener": "im", "requests": 100, "gray_share": 0.3 }])
    );
    let g = pool(chat, "gray");
    assert_eq!(g["requests"], 30);
    assert_eq!(g["error_share"], 0.2);
    assert_eq!(pool(chat, "stable")["error_share"], 0.0);
    assert!(g["p95_ms"].as_f64().is_some_and(|v| v > 0.0), "{g}");
    assert_eq!(
        (g["endpoints_up"].clone(), g["endpoints_down"].clone()),
        (json!(1), json!(0))
    );
    assert_eq!(chat["guard"]["state"], "closed");
    assert!(chat["mirror"].is_null());
    let hits: Vec<(String, u64)> = s["rule_hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rule"].as_str().unwrap().to_owned(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        hits,
        vec![("gray-range".to_owned(), 30), ("default".to_owned(), 70)]
    );
    // The counters since the start sample make the newest chart point.
    let h = &chat["history"];
    let n = h["at"].as_array().map_or(0, Vec::len);
    assert!(n >= 1, "{h}");
    assert_eq!(h["gray_share"][n - 1], 0.3);
    assert!(s["shadow"].is_null());
}

#[tokio::test]
async fn the_page_is_html_that_fetches_nothing() {
    let (_s, _g, p) = setup_simple("", RULES).await;
    let (st, headers, body) = get(&client(), &format!("http://{}/", p.admin), &[]).await;
    assert_eq!(st.as_u16(), 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(body.starts_with("<!DOCTYPE html>"));
    // The one link is an empty inline icon, which spares the browser a /favicon.ico.
    let icon = "<link rel=\"icon\" href=\"data:,\">";
    assert_eq!(body.matches(icon).count(), 1, "no inline icon");
    let rest = body.replace(icon, "");
    for needle in ["<script", "<link", " src=", "@import", "url("] {
        assert!(!rest.contains(needle), "{needle} in the page");
    }
}

// ---------------------------------------------------------------------------------------
// In a browser.

/// What the test reads off the rendered page, in one evaluation.
const READ_DOM: &str = r#"(() => {
  const q = (s) => document.querySelector(s);
  const chat = q('section[data-service="chat"]');
  if (!chat) return null;
  const pool = (n) => chat.querySelector(`tr[data-pool="${n}"]`);
  return {
    version: q('#version').textContent,
    sha: q('#sha256').textContent,
    lastError: q('#last-error').className + ' ' + q('#last-error').textContent,
    grayShare: chat.querySelector('.gray-share').textContent,
    listener: chat.querySelector('.listener-share[data-listener="im"]').textContent,
    guard: chat.querySelector('[data-guard]').dataset.guard,
    evidence: (chat.querySelector('.guard .evidence') || {}).textContent || null,
    grayErrors: pool('gray').querySelector('.error-share').textContent,
    stableErrors: pool('stable').querySelector('.error-share').textContent,
    charts: [...chat.querySelectorAll('figure[data-chart] svg')].map(s => ({
      title: s.parentElement.dataset.chart,
      marks: s.querySelectorAll('polyline, circle').length,
      width: s.getBoundingClientRect().width })),
    rules: [...document.querySelectorAll('#rule-hits tr')].slice(1)
      .map(r => [...r.cells].map(c => c.textContent)),
    refresh: q('meta[http-equiv="refresh"]').content,
  };
})()"#;

#[tokio::test]
async fn chromium_renders_the_page_from_nothing_but_itself() {
    let Some(exe) = chromium_or_skip("tests/status_page.rs") else {
        return;
    };
    let (_stable, gray, p) = proxy_with_upstreams(guarded, RULES).await;
    traffic(&p, &gray).await;
    assert_eq!(
        admin_post(&p, "/guard/trip?service=chat", &[])
            .await
            .0
            .as_u16(),
        200
    );
    write_atomic(&p.rules_path(), "rules: [ nope\n");
    let failed = eventually(Duration::from_secs(5), || async {
        json(&admin_get(&p, "/rules").await.1)["last_error"].is_string()
    })
    .await;
    assert!(failed, "the bad rules were not noticed");
    let sha = json(&admin_get(&p, "/rules").await.1)["sha256"]
        .as_str()
        .unwrap()
        .to_owned();

    let browser = Browser::launch(&exe, &[]).await.expect("chromium starts");
    let mut cdp = browser.connect().await.expect("devtools");
    let tab = cdp.new_page().await.expect("tab");
    cdp.call(Some(&tab.session), "Network.enable", json!({}))
        .await
        .expect("Network.enable");
    let origin = format!("http://{}", p.admin);
    cdp.navigate(&tab, &format!("{origin}/"))
        .await
        .expect("navigate");
    let dom = cdp
        .wait_for(&tab, READ_DOM, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", browser.log_tail(20)));

    assert_eq!(dom["version"], "status-1");
    assert_eq!(dom["sha"].as_str(), sha.get(..12));
    let last_error = dom["lastError"].as_str().unwrap_or("");
    assert!(
        last_error.starts_with("err ") && last_error.contains("rules.yaml:"),
        "{last_error}"
    );
    assert_eq!(dom["grayShare"], "30.0%");
    assert_eq!(dom["listener"], "im 30.0%");
    assert_eq!(dom["guard"], "open");
    assert_eq!(dom["evidence"], "manual");
    assert_eq!(dom["grayErrors"], "20.0%");
    assert_eq!(dom["stableErrors"], "0.0%");
    let charts = dom["charts"].as_array().cloned().unwrap_or_default();
    let titles: Vec<&str> = charts.iter().filter_map(|c| c["title"].as_str()).collect();
    assert_eq!(titles, ["gray share", "error share", "p95", "long links"]);
    for c in &charts {
        assert!(c["marks"].as_u64().unwrap_or(0) >= 1, "an empty chart: {c}");
        assert!(
            c["width"].as_f64().unwrap_or(0.0) > 100.0,
            "not laid out: {c}"
        );
    }
    let rules = dom["rules"].as_array().cloned().unwrap_or_default();
    assert_eq!(rules[0][0], "gray-range");
    assert_eq!(rules[0][4], "30");
    assert_eq!(rules[1][0], "default");
    assert_eq!(dom["refresh"], "10");

    // Everything the page loaded came from the admin listener: the page itself.
    let urls: Vec<String> = cdp
        .take_events()
        .iter()
        .filter(|e| e["method"] == "Network.requestWillBeSent")
        .filter_map(|e| e["params"]["request"]["url"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        urls,
        vec![format!("{origin}/")],
        "the page fetched more than itself"
    );

    // It refreshes itself: a mark left in the window is gone after the next load, which
    // shows the guard's reset.
    cdp.evaluate(&tab, "window.mark = 1").await.expect("mark");
    assert_eq!(
        admin_post(&p, "/guard/reset?service=chat", &[])
            .await
            .0
            .as_u16(),
        200
    );
    let refreshed = cdp
        .wait_for(
            &tab,
            "window.mark === undefined && document.querySelector('[data-guard]') \
             && document.querySelector('[data-guard]').dataset.guard",
            Duration::from_secs(25),
        )
        .await
        .expect("the page reloads by itself");
    assert_eq!(refreshed, "closed");
}
