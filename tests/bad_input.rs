//! Bad input (SPEC §2, §3 Limits): garbage bytes, invalid request lines, huge and
//! non-UTF-8 headers, slow heads, idle connections, broken rules files. Each case gets a
//! clear 4xx, a close or an error message, and the proxy keeps serving the next request.
// Tests run on runtimes with tokio's time driver and may use its timers.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const RULES: &str = "\
rules:
  - name: gray-uid
    when: { uid: { in: [42] } }
    route: gray
";

/// A normal request on a fresh connection still works, and the marker still routes.
async fn assert_still_serves(p: &Proxy) {
    let c = client();
    let (st, _, body) = get(&c, &p.url("/after"), &[]).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "stable"));
    let (st, _, body) = get(&c, &p.url("/after"), &[("xdw-kefu-uid", "42")]).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "gray"));
}

// === malformed requests ===

#[tokio::test]
async fn garbage_bytes_get_400_or_close() {
    let (_s, _g, p) = setup_simple("", RULES).await;
    for seed in [1u64, 7, 0x5eed, 0xdead_beef] {
        let bytes = garbage(4096, seed);
        let (resp, end) = exchange(p.addr(), bytes).await;
        assert_ne!(end, End::Open, "seed {seed}: connection left open");
        if !resp.is_empty() {
            assert_eq!(status_of(&resp), Some(400), "seed {seed}: {}", show(&resp));
        }
    }
    assert_still_serves(&p).await;
    assert!(p.stop().await);
}

#[tokio::test]
async fn invalid_request_lines_get_400_and_close() {
    let (stable, gray, p) = setup_simple("", RULES).await;
    let cases: &[&[u8]] = &[
        b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1 trailing\r\nHost: x\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET\x00 / HTTP/1.1\r\nHost: x\r\n\r\n",
        b" / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/x.y\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n",
    ];
    for req in cases {
        let (resp, end) = exchange(p.addr(), req.to_vec()).await;
        assert_eq!(
            status_of(&resp),
            Some(400),
            "{:?} -> {:?}",
            show(req),
            show(&resp)
        );
        assert_ne!(end, End::Open, "{:?}: connection left open", show(req));
    }
    assert!(
        stable.seen().is_empty() && gray.seen().is_empty(),
        "a malformed request reached an upstream"
    );
    assert_still_serves(&p).await;
    assert!(p.stop().await);
}

/// `GARBAGE` is a syntactically valid (extension) method token, so the request is
/// proxied as nginx and Envoy do, not rejected; the point is that nothing breaks.
#[tokio::test]
async fn an_unknown_method_token_is_proxied() {
    let (stable, _g, p) = setup_simple("", RULES).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GARBAGE / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let RawResponse { status, body, .. } = read_one_response(&mut s).await;
    assert_eq!((status, body.as_slice()), (200, &b"stable"[..]));
    assert_eq!(stable.last().method, "GARBAGE");
    assert_still_serves(&p).await;
    assert!(p.stop().await);
}

#[tokio::test]
async fn non_utf8_marker_values_route_stable_and_count_invalid() {
    let (_s, _g, p) = setup_simple("", RULES).await;
    let cases: &[&[u8]] = &[
        b"GET /x HTTP/1.1\r\nHost: x\r\nxdw-kefu-uid: \xff\xfe\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: x\r\nxdw-kefu-uid: 4\xff2\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: x\r\nCookie: a=\xff\xfe; xdw-kefu-uid=\xc3\x28\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: x\r\nxdw-device-id: \xff\xfe\r\nxdw-kefu-agent-gid: 7,\xff\r\n\r\n",
    ];
    for req in cases {
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        s.write_all(req).await.unwrap();
        let RawResponse { status, body, .. } = read_one_response(&mut s).await;
        // Answered, and routed as if the invalid marker were absent: to stable.
        assert!(
            status == 200 && body == b"stable",
            "{:?} -> {status} {:?}",
            show(req),
            show(&body)
        );
    }
    // Every invalid value is counted once, under its marker.
    for (marker, n) in [("uid", 3.0), ("device", 1.0), ("agent_gid", 1.0)] {
        let series = format!("graylane_marker_invalid_total{{marker=\"{marker}\"}}");
        assert_eq!(metric(&p, &series).await, n, "{series}");
    }
    assert_still_serves(&p).await;
    assert!(p.stop().await);
}

// === limits ===

#[tokio::test]
async fn ten_thousand_cookies_over_the_limit_get_431() {
    let (stable, gray, p) = setup_simple("", RULES).await;
    let cookie: String = (0..10_000)
        .map(|i| format!("cookie{i:05}=v{i:05}"))
        .collect::<Vec<_>>()
        .join("; ");
    assert!(cookie.len() > 100_000);
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nCookie: {cookie}; xdw-kefu-uid=42\r\n\r\n");
    let (resp, end) = exchange(p.addr(), req.into_bytes()).await;
    assert_eq!(status_of(&resp), Some(431), "{}", show(&resp));
    assert_ne!(end, End::Open, "431 must close the connection");
    assert!(stable.seen().is_empty() && gray.seen().is_empty());
    assert_still_serves(&p).await;
    assert!(p.stop().await);
}

#[tokio::test]
async fn five_thousand_cookies_under_the_limit_are_routed_by_the_marker_cookie() {
    let (_s, gray, p) = setup_simple("", RULES).await;
    let mut cookies: Vec<String> = (0..5_000).map(|i| format!("c{i}=1")).collect();
    cookies.insert(2_500, "xdw-kefu-uid=42".into());
    let cookie = cookies.join("; ");
    assert!(
        cookie.len() > 30_000 && cookie.len() < 60_000,
        "{}",
        cookie.len()
    );
    let (st, _, body) = get(&client(), &p.url("/c"), &[("cookie", &cookie)]).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "gray"));
    assert_eq!(gray.last().headers["cookie"], cookie.as_str());
    assert_still_serves(&p).await;
    assert!(p.stop().await);
}

#[tokio::test]
async fn request_heads_over_max_header_bytes_get_431_and_under_it_pass() {
    let (_s, _g, p) = setup_simple("", RULES).await;
    let value = "v".repeat(2_000);
    // 40 headers of ~2 kB: ~80 kB, over 65536, and well under any header-count limit.
    let mut req = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..40 {
        req.push_str(&format!("x-pad-{i}: {value}\r\n"));
    }
    req.push_str("\r\n");
    let (resp, end) = exchange(p.addr(), req.into_bytes()).await;
    assert_eq!(status_of(&resp), Some(431), "{}", show(&resp));
    assert_ne!(end, End::Open, "431 must close the connection");

    // 25 of them (~50 kB) fit.
    let headers: Vec<(String, String)> = (0..25)
        .map(|i| (format!("x-pad-{i}"), value.clone()))
        .collect();
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (st, _, body) = get(&client(), &p.url("/"), &refs).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "stable"));
    assert_still_serves(&p).await;
    assert!(p.stop().await);
}

#[tokio::test]
async fn a_smaller_max_header_bytes_is_enforced() {
    let (_s, _g, p) = setup_simple("limits: { max_header_bytes: 16384 }", RULES).await;
    let big = "b".repeat(20_000);
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nx-big: {big}\r\n\r\n");
    let (resp, end) = exchange(p.addr(), req.into_bytes()).await;
    assert_eq!(status_of(&resp), Some(431), "{}", show(&resp));
    assert_ne!(end, End::Open);
    let ok = "o".repeat(8_000);
    let (st, _, _) = get(&client(), &p.url("/"), &[("x-ok", &ok)]).await;
    assert_eq!(st.as_u16(), 200);
    assert_still_serves(&p).await;
    assert!(p.stop().await);
}

// === timeouts ===

#[tokio::test]
async fn a_head_dribbled_past_request_header_gets_408_and_close() {
    let (stable, _g, p) = setup_simple("timeouts: { request_header: 1s }", RULES).await;
    let s = TcpStream::connect(p.addr()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let started = Instant::now();
    // ~60 bytes at one byte per 200 ms would take 12 s; the head limit is 1 s.
    let head = b"GET /dribble HTTP/1.1\r\nHost: x\r\nx-a: aaaaaaaaaaaaaaaaaaaa\r\n\r\n".to_vec();
    let writer = tokio::spawn(async move {
        for b in head {
            if wr.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        wr
    });
    let deadline = Instant::now() + PATIENCE;
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let end = loop {
        match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Err(_) => break End::Open,
            Ok(Ok(0)) => break End::Eof,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break End::Reset,
        }
    };
    let took = started.elapsed();
    writer.abort();
    assert_eq!(status_of(&out), Some(408), "{}", show(&out));
    assert_ne!(end, End::Open, "408 must close the connection");
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert!(
        stable.seen().is_empty(),
        "the partial request was forwarded"
    );
    assert_still_serves(&p).await;
    assert!(p.stop().await);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_request_header() {
    let (_s, _g, p) = setup_simple("timeouts: { request_header: 1s }", RULES).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    let started = Instant::now();
    let (resp, end) = read_to_close(&mut s, PATIENCE).await;
    assert_ne!(end, End::Open, "a silent connection was kept open");
    assert!(started.elapsed() < Duration::from_secs(6));
    // Closing silently or with a 408 are both fine; anything else is not.
    assert!(
        resp.is_empty() || status_of(&resp) == Some(408),
        "{}",
        show(&resp)
    );
    assert_still_serves(&p).await;
    assert!(p.stop().await);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_idle() {
    let (_s, _g, p) = setup_simple("timeouts: { idle: 1s }", RULES).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let RawResponse { status, body, .. } = read_one_response(&mut s).await;
    assert_eq!((status, body.as_slice()), (200, &b"stable"[..]));
    // Keep-alive: a second request on the same connection works.
    s.write_all(b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let status = read_one_response(&mut s).await.status;
    assert_eq!(status, 200);
    let started = Instant::now();
    let (rest, end) = read_to_close(&mut s, PATIENCE).await;
    assert_ne!(end, End::Open, "idle keep-alive connection kept open");
    assert!(rest.is_empty(), "unexpected bytes: {}", show(&rest));
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_still_serves(&p).await;
    assert!(p.stop().await);
}

/// `request_header` counts from a head's first byte on every request of a keep-alive
/// connection, not only the first; a long `idle` must not stretch it.
#[tokio::test]
async fn a_stalled_second_head_on_keep_alive_gets_408_within_request_header() {
    let (stable, _g, p) = setup_simple("timeouts: { request_header: 1s, idle: 30s }", RULES).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let status = read_one_response(&mut s).await.status;
    assert_eq!(status, 200);
    // Past the first request's head deadline, start a second head and stall.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"GET /two HTTP/1.1\r\nHo").await.unwrap();
    let started = Instant::now();
    let (resp, end) = read_to_close(&mut s, PATIENCE).await;
    assert_eq!(status_of(&resp), Some(408), "{:?}: {}", end, show(&resp));
    assert_ne!(end, End::Open);
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(stable.seen().len(), 1, "the partial request was forwarded");
    assert_still_serves(&p).await;
    assert!(p.stop().await);
}

/// The 408 graylane writes itself must be a valid HTTP/1.1 message.
#[tokio::test]
async fn the_408_answer_is_well_formed() {
    let (_s, _g, p) = setup_simple("timeouts: { request_header: 1s }", RULES).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let (resp, end) = read_to_close(&mut s, PATIENCE).await;
    assert_ne!(end, End::Open);
    assert_eq!(status_of(&resp), Some(408), "{}", show(&resp));
    let head_end = find(&resp, b"\r\n\r\n").expect("complete head") + 4;
    let head = String::from_utf8_lossy(&resp[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("content-length");
    assert_eq!(len, resp.len() - head_end, "{}", show(&resp));
    assert!(head.contains("connection: close"), "{head}");
    assert!(p.stop().await);
}

// === broken rules and config ===

/// Broken rulesets, the position of the offending key or value, and a word of the message.
const BROKEN_RULES: &[(&str, &str, u32, u32, &str)] = &[
    (
        "bad YAML",
        "rules:\n  - name: a\n    when: { uid: { in: [1 }\n    route: gray\n",
        3,
        27,
        "",
    ),
    (
        "unknown key",
        "rules:\n  - name: a\n    bogus: 1\n    route: gray\n",
        3,
        5,
        "bogus",
    ),
    (
        "missing in_file",
        "rules:\n  - name: a\n    when:\n      uid: { in_file: nope.txt }\n    route: gray\n",
        4,
        23,
        "nope.txt",
    ),
    (
        "lo > hi",
        "rules:\n  - name: a\n    when:\n      uid: { ranges: [\"5-3\"] }\n    route: gray\n",
        4,
        23,
        "5-3",
    ),
    (
        "unknown pool",
        "rules:\n  - name: a\n    when: { uid: { in: [1] } }\n    route: canary\n",
        4,
        12,
        "canary",
    ),
];

#[tokio::test]
async fn broken_rules_at_start_are_refused_with_their_position() {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let cfg = simple_config(stable.addr, gray.addr, "");
    for (what, rules, line, col, word) in BROKEN_RULES {
        let err = match try_spawn_proxy(&cfg, rules).await {
            Ok(p) => {
                p.stop().await;
                panic!("{what}: the proxy started");
            }
            Err(e) => e,
        };
        let (file, l, c, msg) = located(&err);
        assert!(is_rules_yaml(&file), "{what}: {err}");
        assert_eq!((l, c), (*line, *col), "{what}: {err}");
        assert!(msg.contains(word), "{what}: {err}");
    }
}

/// SPEC §2: "FILE as configured" — `rules_file: rules.yaml` is reported as `rules.yaml`.
#[tokio::test]
async fn rules_errors_name_the_file_as_configured() {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let cfg = simple_config(stable.addr, gray.addr, "");
    let (_, rules, ..) = BROKEN_RULES[1];
    let err = match try_spawn_proxy(&cfg, rules).await {
        Ok(p) => {
            p.stop().await;
            panic!("the proxy started");
        }
        Err(e) => e,
    };
    assert!(err.starts_with("rules.yaml:3:5: "), "{err}");
}

#[tokio::test]
async fn an_unknown_config_key_at_start_is_refused_with_its_position() {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let cfg = simple_config(stable.addr, gray.addr, "timeouts: { idle: 1s, bogus: 2s }");
    let line = cfg
        .lines()
        .position(|l| l.starts_with("timeouts:"))
        .unwrap() as u32
        + 1;
    let err = match try_spawn_proxy(&cfg, RULES).await {
        Ok(p) => {
            p.stop().await;
            panic!("the proxy started");
        }
        Err(e) => e,
    };
    let (file, l, c, msg) = located(&err);
    assert!(file.ends_with("graylane.yaml"), "{err}");
    assert_eq!((l, c), (line, 23), "{err}");
    assert!(msg.contains("bogus"), "{err}");
}

#[tokio::test]
async fn broken_rules_at_reload_get_422_and_the_old_rules_keep_serving() {
    let (_s, _g, p) = setup_simple("", RULES).await;
    let c = client();
    for (what, rules, line, col, word) in BROKEN_RULES {
        write_atomic(&p.rules_path(), rules);
        let (st, body) = admin_post(&p, "/reload", &[]).await;
        assert_eq!(st.as_u16(), 422, "{what}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
        let err = v["error"].as_str().expect("error string");
        let (file, l, cc, msg) = located(err);
        assert!(is_rules_yaml(&file), "{what}: {err}");
        assert_eq!((l, cc), (*line, *col), "{what}: {err}");
        assert!(msg.contains(word), "{what}: {err}");
        // The live rules are the old ones.
        let (st, _, body) = get(&c, &p.url("/x"), &[("xdw-kefu-uid", "42")]).await;
        assert_eq!((st.as_u16(), body.as_str()), (200, "gray"), "{what}");
        let (_, rules_json) = admin_get(&p, "/rules").await;
        let v: serde_json::Value = serde_json::from_str(&rules_json).unwrap();
        assert!(v["last_error"].is_string(), "{what}: {rules_json}");
        assert_eq!(v["rules"], 1, "{what}: {rules_json}");
    }
    // A good file clears the error and goes live.
    write_atomic(
        &p.rules_path(),
        "rules:\n  - name: gray-43\n    when: { uid: { in: [43] } }\n    route: gray\n",
    );
    let (st, body) = admin_post(&p, "/reload", &[]).await;
    assert_eq!(st.as_u16(), 200, "{body}");
    let (_, rules_json) = admin_get(&p, "/rules").await;
    let v: serde_json::Value = serde_json::from_str(&rules_json).unwrap();
    assert!(v["last_error"].is_null(), "{rules_json}");
    let (_, _, body) = get(&c, &p.url("/x"), &[("xdw-kefu-uid", "43")]).await;
    assert_eq!(body, "gray");
    let (_, _, body) = get(&c, &p.url("/x"), &[("xdw-kefu-uid", "42")]).await;
    assert_eq!(body, "stable");
    assert!(metric(&p, "graylane_rules_reloads_total{result=\"error\"}").await >= 5.0);
    assert!(p.stop().await);
}

#[test]
fn located_parses_positions() {
    assert_eq!(
        located("rules.yaml:4:12: rules.0.route: unknown pool"),
        (
            "rules.yaml".into(),
            4,
            12,
            "rules.0.route: unknown pool".into()
        )
    );
    assert_eq!(status_of(b"HTTP/1.1 431 Too Large\r\n"), Some(431));
    assert_eq!(status_of(b"junk"), None);
}
