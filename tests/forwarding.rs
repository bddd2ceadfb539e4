//! Forwarding: markers to pools, services, headers, streaming, upstream failures.
// Tests run on runtimes with tokio's time driver and may use its timers.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use common::*;

const RULES: &str = "\
rules:
  - name: gray-uid
    when: { uid: { in: [42] } }
    route: gray
  - name: gray-groups
    when: { agent_gid: { any: [7] } }
    route: gray
  - name: canary
    when: { uid: { in: [99] } }
    route: canary
";

#[tokio::test]
async fn markers_from_header_cookie_and_query_pick_the_pool() {
    let (_s, _g, p) = setup_two("/", "", RULES).await;
    let c = client();
    let (st, h, body) = get(&c, &p.url("/a"), &[("xdw-kefu-uid", "42")]).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "gray"));
    assert_eq!(h["x-upstream"], "gray");
    let (_, _, body) = get(&c, &p.url("/a"), &[("cookie", "a=1; xdw-kefu-uid=42")]).await;
    assert_eq!(body, "gray");
    let (_, _, body) = get(&c, &p.url("/a?xdw-kefu-uid=42"), &[]).await;
    assert_eq!(body, "gray");
    let (_, _, body) = get(&c, &p.url("/a"), &[("xdw-kefu-uid", "43")]).await;
    assert_eq!(body, "stable");
    // The header is present and decides, even though the cookie says otherwise.
    let (_, _, body) = get(
        &c,
        &p.url("/a"),
        &[("xdw-kefu-uid", "43"), ("cookie", "xdw-kefu-uid=42")],
    )
    .await;
    assert_eq!(body, "stable");
    // agent_gid with spaces and junk tokens
    let (_, _, body) = get(
        &c,
        &p.url("/a"),
        &[("cookie", "xdw-kefu-agent-gid=x, 5 , 7")],
    )
    .await;
    assert_eq!(body, "gray");
    p.stop().await;
}

#[tokio::test]
async fn invalid_marker_routes_stable_and_counts() {
    let (_s, _g, p) = setup_two("/", "", RULES).await;
    let c = client();
    let (st, _, body) = get(&c, &p.url("/a"), &[("xdw-kefu-uid", "42abc")]).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "stable"));
    // An invalid header does not fall through to the (valid) query parameter.
    let (_, _, body) = get(&c, &p.url("/a?xdw-kefu-uid=42"), &[("xdw-kefu-uid", "-1")]).await;
    assert_eq!(body, "stable");
    let n = metric(&p, "graylane_marker_invalid_total{marker=\"uid\"}").await;
    assert_eq!(n, 2.0);
    p.stop().await;
}

#[tokio::test]
async fn forwarded_headers_are_rewritten() {
    let (stable, gray, p) = setup_two("/", "", RULES).await;
    let c = client();
    let (_, _, body) = get(
        &c,
        &p.url("/x?q=1"),
        &[
            ("xdw-kefu-uid", "42"),
            ("x-forwarded-for", "10.9.9.9"),
            ("x-forwarded-proto", "https"),
            ("x-graylane-pool", "stable"),
            ("x-graylane-rule", "forged"),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9v"),
            ("te", "trailers"),
            ("host", "chat.example.com:8080"),
        ],
    )
    .await;
    assert_eq!(body, "gray");
    let seen = gray.last();
    assert_eq!(seen.uri, "/x?q=1");
    assert_eq!(seen.headers["host"], "chat.example.com:8080");
    assert_eq!(seen.headers["x-forwarded-for"], "10.9.9.9, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-graylane-pool"], "gray");
    assert_eq!(seen.headers["x-graylane-rule"], "gray-uid");
    assert_eq!(seen.headers["te"], "trailers");
    for gone in ["x-drop-me", "keep-alive", "proxy-authorization"] {
        assert!(!seen.headers.contains_key(gone), "{gone} was forwarded");
    }
    let set_by_graylane = [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-graylane-pool",
        "x-graylane-rule",
    ];
    // The client's own values were replaced, not sent beside graylane's.
    for name in set_by_graylane {
        assert_eq!(seen.headers.get_all(name).iter().count(), 1, "{name}");
    }
    // A client that sent none of them: graylane adds each once.
    get(&c, &p.url("/"), &[]).await;
    let seen = stable.last();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-graylane-pool"], "stable");
    assert_eq!(seen.headers["x-graylane-rule"], "default");
    for name in set_by_graylane {
        assert_eq!(seen.headers.get_all(name).iter().count(), 1, "{name}");
    }
    p.stop().await;
}

/// A config that gives the pool and rule headers one name: the upstream gets one field,
/// the pool (set last), as when each was inserted into the head in turn.
#[tokio::test]
async fn propagate_headers_of_one_name_arrive_once() {
    let extra = "propagate: { pool_header: x-gray, rule_header: x-gray }";
    let (_stable, gray, p) = setup_two("/", extra, RULES).await;
    let c = client();
    let (_, _, body) = get(&c, &p.url("/x"), &[("xdw-kefu-uid", "42")]).await;
    assert_eq!(body, "gray");
    let seen = gray.last();
    let all: Vec<_> = seen.headers.get_all("x-gray").iter().collect();
    assert_eq!(all, ["gray"]);
    p.stop().await;
}

#[tokio::test]
async fn untrusted_peers_are_routed_without_markers() {
    let (stable, _g, p) = setup_two("/", "", RULES).await;
    // Rebuild with a listener that trusts nobody.
    p.stop().await;
    let gray = spawn_upstream("gray").await;
    let cfg = two_services(stable.addr, gray.addr, "/", "").replace(
        "    bind: \"127.0.0.1:0\"\n",
        "    bind: \"127.0.0.1:0\"\n    trusted_cidrs: []\n",
    );
    let p = spawn_proxy(&cfg, RULES).await;
    let c = client();
    let (_, _, body) = get(
        &c,
        &p.url("/a?xdw-kefu-uid=42"),
        &[("xdw-kefu-uid", "42"), ("cookie", "xdw-kefu-uid=42")],
    )
    .await;
    assert_eq!(body, "stable");
    let seen = stable.last();
    assert!(!seen.headers.contains_key("xdw-kefu-uid"));
    assert_eq!(seen.headers["cookie"], "xdw-kefu-uid=42");
    assert_eq!(seen.uri, "/a?xdw-kefu-uid=42");
    p.stop().await;
}

#[tokio::test]
async fn missing_pool_falls_back_to_stable() {
    let (_s, _g, p) = setup_two("/", "", RULES).await;
    let (_, h, body) = get(&client(), &p.url("/"), &[("xdw-kefu-uid", "99")]).await;
    assert_eq!(body, "stable");
    assert_eq!(h["x-upstream"], "stable");
    let n = metric(
        &p,
        "graylane_fallbacks_total{from=\"canary\",reason=\"pool_missing\",service=\"chat\",to=\"stable\"}",
    )
    .await;
    assert_eq!(n, 1.0);
    p.stop().await;
}

#[tokio::test]
async fn services_by_host_and_longest_prefix_and_404() {
    let a = spawn_upstream("a").await;
    let b = spawn_upstream("b").await;
    let c_up = spawn_upstream("c").await;
    let cfg = config_yaml(
        &format!(
            "  - {{ name: chat, match: {{ path_prefix: /chat }}, pools: {{ stable: {{ endpoints: [\"{}\"] }} }} }}\n  - {{ name: chat-ws, match: {{ path_prefix: /chat/ws }}, pools: {{ stable: {{ endpoints: [\"{}\"] }} }} }}\n  - {{ name: console, match: {{ host: \"*.kefu.example.com\" }}, pools: {{ stable: {{ endpoints: [\"{}\"] }} }} }}\n",
            a.addr, b.addr, c_up.addr
        ),
        "",
    );
    let p = spawn_proxy(&cfg, "rules: []\n").await;
    let c = client();
    assert_eq!(get(&c, &p.url("/chat/x"), &[]).await.2, "a");
    assert_eq!(get(&c, &p.url("/chat/ws/1"), &[]).await.2, "b");
    assert_eq!(
        get(&c, &p.url("/chat"), &[("host", "console.kefu.example.com")])
            .await
            .2,
        "c"
    );
    let (st, _, body) = get(&c, &p.url("/chatroom"), &[]).await;
    assert_eq!(st.as_u16(), 404);
    assert_eq!(body, "graylane: no service for this request\n");
    let n = metric(
        &p,
        "graylane_requests_total{code=\"4xx\",listener=\"im\",pool=\"-\",service=\"-\"}",
    )
    .await;
    assert_eq!(n, 1.0);
    p.stop().await;
}

#[tokio::test]
async fn round_robin_over_endpoints() {
    let s1 = spawn_upstream("s1").await;
    let s2 = spawn_upstream("s2").await;
    let cfg = config_yaml(
        &format!(
            "  - {{ name: chat, match: {{ path_prefix: / }}, pools: {{ stable: {{ endpoints: [\"{}\", \"{}\"] }} }} }}\n",
            s1.addr, s2.addr
        ),
        "",
    );
    let p = spawn_proxy(&cfg, "rules: []\n").await;
    let c = client();
    let mut bodies = Vec::new();
    for _ in 0..4 {
        bodies.push(get(&c, &p.url("/"), &[]).await.2);
    }
    bodies.sort();
    assert_eq!(bodies, vec!["s1", "s1", "s2", "s2"]);
    p.stop().await;
}

#[tokio::test]
async fn h2c_clients_are_routed_per_stream() {
    let (_s, _g, p) = setup_two("/", "", RULES).await;
    let c = h2c_client();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        let url = p.url("/m");
        tasks.push(tokio::spawn(async move {
            let uid = if i % 2 == 0 { "42" } else { "1" };
            let (_, _, body) = get(&c, &url, &[("xdw-kefu-uid", uid)]).await;
            (uid, body)
        }));
    }
    for t in tasks {
        let (uid, body) = t.await.unwrap();
        assert_eq!(body, if uid == "42" { "gray" } else { "stable" });
    }
    p.stop().await;
}

/// On one keep-alive connection each request gets the whole of `upstream_response`,
/// counted from its own attempt, whether the previous request's deadline is still ahead,
/// passed while the connection was idle, or cut that request (the own loop keeps one
/// timer per connection and moves it).
#[tokio::test]
async fn each_request_on_a_connection_gets_the_whole_upstream_response_time() {
    async fn get_status(s: &mut tokio::net::TcpStream, path: &str) -> u16 {
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        read_one_response(s).await.status
    }
    /// A request the upstream would answer in 3 s is cut at `upstream_response` (1 s).
    async fn cut_in_time(s: &mut tokio::net::TcpStream) {
        let sent = std::time::Instant::now();
        assert_eq!(get_status(s, "/slow?ms=3000").await, 504);
        let waited = sent.elapsed();
        assert!(waited < Duration::from_millis(2500), "{waited:?}");
    }
    let up = spawn_upstream("slow").await;
    let p = spawn_proxy(
        &two_services(
            up.addr,
            up.addr,
            "/",
            "timeouts: { upstream_response: 1s, idle: 30s }\n",
        ),
        RULES,
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    assert_eq!(get_status(&mut s, "/slow?ms=0").await, 200);
    // The first request's deadline would pass 400 ms into this one.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get_status(&mut s, "/slow?ms=700").await, 200);
    cut_in_time(&mut s).await;
    // Idle past the last deadline: the next request is timed afresh.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(get_status(&mut s, "/slow?ms=300").await, 200);
    cut_in_time(&mut s).await;
    p.stop().await;
}

#[tokio::test]
async fn dead_upstream_is_502_and_slow_one_504() {
    let (_held, dead) = refused_addr();
    let slow = spawn_upstream("slow").await;
    // Stable is dead (nothing to fall back to), gray is slow.
    let p = spawn_proxy(
        &two_services(
            dead,
            slow.addr,
            "/",
            "timeouts: { upstream_response: 300ms }\n",
        ),
        RULES,
    )
    .await;
    let c = client();
    let (st, _, body) = get(&c, &p.url("/"), &[]).await;
    assert_eq!(st.as_u16(), 502, "{body}");
    assert_eq!(body, "graylane: upstream connect failed\n");
    let (st, _, _) = get(&c, &p.url("/slow?ms=2000"), &[("xdw-kefu-uid", "42")]).await;
    assert_eq!(st.as_u16(), 504);
    // One endpoint: there is no other endpoint to retry on (SPEC §3), so no retry.
    assert_eq!(
        metric(
            &p,
            "graylane_upstream_errors_total{kind=\"connect\",pool=\"stable\",service=\"chat\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &p,
            "graylane_upstream_retries_total{pool=\"stable\",service=\"chat\"}"
        )
        .await,
        0.0
    );
    assert_eq!(
        metric(
            &p,
            "graylane_upstream_errors_total{kind=\"timeout\",pool=\"gray\",service=\"chat\"}"
        )
        .await,
        1.0
    );
    // And the proxy still serves.
    let (st, _, _) = get(&c, &p.url("/"), &[("xdw-kefu-uid", "42")]).await;
    assert_eq!(st.as_u16(), 200);
    p.stop().await;
}

#[tokio::test]
async fn requests_and_rule_hits_are_counted() {
    let (_s, _g, p) = setup_two("/", "", RULES).await;
    let c = client();
    get(&c, &p.url("/"), &[("xdw-kefu-uid", "42")]).await;
    get(&c, &p.url("/"), &[]).await;
    let series =
        "graylane_requests_total{code=\"2xx\",listener=\"im\",pool=\"gray\",service=\"chat\"}";
    assert_eq!(metric(&p, series).await, 1.0);
    assert_eq!(
        metric(&p, "graylane_rule_hits_total{rule=\"gray-uid\"}").await,
        1.0
    );
    assert_eq!(
        metric(&p, "graylane_rule_hits_total{rule=\"default\"}").await,
        1.0
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    p.stop().await;
}

#[tokio::test]
async fn h2_upstream_pools_speak_http2() {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let cfg = config_yaml(
        &format!(
            "  - name: chat\n    match: {{ path_prefix: / }}\n    pools:\n      stable: {{ endpoints: [\"{}\"] }}\n      gray: {{ endpoints: [\"{}\"], protocol: h2 }}\n",
            stable.addr, gray.addr
        ),
        "",
    );
    let p = spawn_proxy(
        &cfg,
        "rules:\n  - { name: g, when: { uid: { in: [42] } }, route: gray }\n",
    )
    .await;
    let c = client();
    let (st, _, body) = get(
        &c,
        &p.url("/x"),
        &[("xdw-kefu-uid", "42"), ("host", "chat.test")],
    )
    .await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "gray"));
    let seen = gray.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    // HTTP/2 carries the host as :authority; the upstream sees it.
    assert!(
        seen.uri.contains("chat.test")
            || seen.headers.get("host").is_some_and(|h| h == "chat.test"),
        "{seen:?}"
    );
    // What graylane sets reaches an HTTP/2 upstream too, once each.
    for (name, value) in [
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("x-graylane-pool", "gray"),
        ("x-graylane-rule", "g"),
    ] {
        let all: Vec<_> = seen.headers.get_all(name).iter().collect();
        assert_eq!(all, [value], "{name}");
    }
    get(&c, &p.url("/x"), &[]).await;
    assert_eq!(stable.last().version, http::Version::HTTP_11);
    p.stop().await;
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let p = spawn_proxy(&simple_config(stable.addr, gray.addr, ""), "rules: []\n").await;
    let c = client();
    for i in 0..30 {
        let path = format!("/r{i}");
        let (st, _, body) = get(&c, &p.url(&path), &[]).await;
        assert_eq!((st.as_u16(), body.as_str()), (200, "stable"));
    }
    // Sequential requests: one connection serves them all (two workers may each open one).
    let n = stable.conns.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        n <= 2,
        "{n} upstream connections for 30 sequential requests"
    );
    // Bodies of every kind end cleanly and leave the connection reusable.
    for _ in 0..5 {
        let (st, _, _) = send(&c, "HEAD", &p.url("/"), &[], bytes::Bytes::new()).await;
        assert_eq!(st.as_u16(), 200);
        let (st, _, _) = get(&c, &p.url("/status/204"), &[]).await;
        assert_eq!(st.as_u16(), 204);
        let (st, _, body) = send(
            &c,
            "POST",
            &p.url("/echo"),
            &[],
            bytes::Bytes::from_static(b"abc"),
        )
        .await;
        assert_eq!((st.as_u16(), body.as_str()), (200, "abc"));
    }
    let n = stable.conns.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n <= 2, "{n} upstream connections after mixed requests");
    p.stop().await;
}
