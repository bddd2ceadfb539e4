//! Upstream resilience: health checks, passive ejection, fallback, retries, balancing,
//! DNS names, the automatic rollback guard, and a dead gray pool under load.
// Tests run on runtimes with tokio's time driver and may use its timers.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

const OK: u8 = 0;
const FAIL_500: u8 = 1;
const HANG: u8 = 2;
const RESET: u8 = 3;

/// An upstream whose behaviour can be switched at run time, and killed outright
/// (listener and every open connection).
struct Faulty {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    hits: Arc<AtomicU64>,
    health_fails: Arc<AtomicU8>,
    tasks: Arc<std::sync::Mutex<JoinSet<()>>>,
}

impl Faulty {
    async fn start(name: &'static str) -> Faulty {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(OK));
        let hits = Arc::new(AtomicU64::new(0));
        let health_fails = Arc::new(AtomicU8::new(0));
        let tasks = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let (m, h, hf, t) = (
            mode.clone(),
            hits.clone(),
            health_fails.clone(),
            tasks.clone(),
        );
        tasks.lock().unwrap().spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let (m, h, hf) = (m.clone(), h.clone(), hf.clone());
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (m, h, hf) = (m.clone(), h.clone(), hf.clone());
                    async move {
                        if req.uri().path() == "/healthz" {
                            let code = if hf.load(Ordering::SeqCst) == 1 {
                                500
                            } else {
                                200
                            };
                            let mut r = Response::new(Full::new(Bytes::from_static(b"hc")));
                            *r.status_mut() = StatusCode::from_u16(code).unwrap();
                            return Ok(r);
                        }
                        h.fetch_add(1, Ordering::SeqCst);
                        match m.load(Ordering::SeqCst) {
                            FAIL_500 => {
                                let mut r = Response::new(Full::new(Bytes::from(name)));
                                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                                Ok(r)
                            }
                            HANG => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                Ok(Response::new(Full::new(Bytes::new())))
                            }
                            // An error from the service makes hyper close the connection
                            // without an answer: a reset before the response head.
                            RESET => Err("reset"),
                            _ => {
                                let _ = req.into_body().collect().await;
                                Ok(Response::new(Full::new(Bytes::from(name))))
                            }
                        }
                    }
                });
                if let Ok(mut set) = t.lock() {
                    set.spawn(async move {
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(s), svc)
                            .await;
                    });
                }
            }
        });
        Faulty {
            addr,
            mode,
            hits,
            health_fails,
            tasks,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops listening and drops every open connection.
    fn kill(&self) {
        if let Ok(mut t) = self.tasks.lock() {
            t.abort_all();
        }
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.kill();
    }
}

fn pools_config(
    stable: &[SocketAddr],
    gray: &[SocketAddr],
    svc_extra: &str,
    gray_extra: &str,
    extra: &str,
) -> String {
    let list = |a: &[SocketAddr]| {
        a.iter()
            .map(|x| format!("\"{x}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    config_yaml(
        &format!(
            "  - name: chat\n    match: {{ path_prefix: / }}\n    pools:\n      stable: {{ endpoints: [{}] }}\n      gray: {{ endpoints: [{}] {gray_extra} }}\n{svc_extra}",
            list(stable),
            list(gray)
        ),
        extra,
    )
}

const GRAY_42: &str = "rules:\n  - name: g\n    when: { uid: { in: [42] } }\n    route: gray\n";

#[tokio::test]
async fn active_health_check_marks_gray_down_and_traffic_falls_back() {
    let s = Faulty::start("stable").await;
    let g = Faulty::start("gray").await;
    let cfg = pools_config(
        &[s.addr],
        &[g.addr],
        "    health: { path: /healthz, interval: 100ms, timeout: 500ms, healthy: 2, unhealthy: 2 }\n",
        "",
        "",
    );
    let p = spawn_proxy(&cfg, GRAY_42).await;
    let c = client();
    assert_eq!(
        get(&c, &p.url("/"), &[("xdw-kefu-uid", "42")]).await.2,
        "gray"
    );
    g.health_fails.store(1, Ordering::SeqCst);
    let up = format!(
        "graylane_endpoint_up{{endpoint=\"{}\",pool=\"gray\",service=\"chat\"}}",
        g.addr
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&p, &up).await == 0.0
        })
        .await
    );
    let (st, _, body) = get(&c, &p.url("/"), &[("xdw-kefu-uid", "42")]).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "stable"));
    let (_, explain) = admin_get(&p, "/explain?listener=im&path=/&uid=42").await;
    assert!(
        explain.contains("\"fallback\": \"pool_unhealthy\""),
        "{explain}"
    );
    assert!(explain.contains("\"pool\": \"stable\""), "{explain}");
    assert_eq!(
        metric(&p, "graylane_fallbacks_total{from=\"gray\",reason=\"pool_unhealthy\",service=\"chat\",to=\"stable\"}").await,
        1.0
    );
    // Healthy again after `healthy` good checks.
    g.health_fails.store(0, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(&p, &up).await == 1.0
        })
        .await
    );
    assert_eq!(
        get(&c, &p.url("/"), &[("xdw-kefu-uid", "42")]).await.2,
        "gray"
    );
    p.stop().await;
}

#[tokio::test]
async fn on_unavailable_fail_answers_503() {
    let s = Faulty::start("stable").await;
    let (_held, dead) = refused_addr();
    let cfg = pools_config(
        &[s.addr],
        &[dead],
        "",
        ", on_unavailable: fail, retries: 0",
        "",
    );
    let p = spawn_proxy(&cfg, GRAY_42).await;
    let c = client();
    // `fail` means no fallback at all: the connect failures surface as 502 until three of
    // them have ejected the endpoint (passive ejection); from then on the pool is
    // unavailable and answers 503.
    for _ in 0..3 {
        let (st, _, body) = get(&c, &p.url("/"), &[("xdw-kefu-uid", "42")]).await;
        assert_eq!(
            (st.as_u16(), body.as_str()),
            (502, "graylane: upstream connect failed\n")
        );
    }
    let (st, _, _) = get(&c, &p.url("/"), &[("xdw-kefu-uid", "42")]).await;
    assert_eq!(st.as_u16(), 503);
    p.stop().await;
}

#[tokio::test]
async fn reset_idempotent_requests_are_retried_on_another_endpoint_and_posts_are_not() {
    let bad = Faulty::start("bad").await;
    let good = Faulty::start("good").await;
    bad.set(RESET);
    let cfg = pools_config(&[bad.addr, good.addr], &[good.addr], "", "", "");
    let p = spawn_proxy(&cfg, "rules: []\n").await;
    let c = client();
    for _ in 0..4 {
        let (st, _, body) = get(&c, &p.url("/"), &[]).await;
        assert_eq!((st.as_u16(), body.as_str()), (200, "good"));
    }
    let retries = metric(
        &p,
        "graylane_upstream_retries_total{pool=\"stable\",service=\"chat\"}",
    )
    .await;
    assert!(retries >= 1.0, "retries {retries}");
    // A POST with a body that reached the bad endpoint is never retried.
    let bad_before = bad.hits();
    let mut saw_502 = false;
    for _ in 0..4 {
        let (st, _, _) = send(&c, "POST", &p.url("/"), &[], Bytes::from_static(b"payload")).await;
        if st.as_u16() == 502 {
            saw_502 = true;
        }
    }
    assert!(
        saw_502,
        "a POST hitting the resetting endpoint must fail, not be replayed"
    );
    assert!(bad.hits() > bad_before);
    p.stop().await;
}

#[tokio::test]
async fn hash_uid_keeps_a_user_on_one_endpoint() {
    let a = Faulty::start("a").await;
    let b = Faulty::start("b").await;
    let c3 = Faulty::start("c").await;
    let cfg = pools_config(&[a.addr, b.addr, c3.addr], &[a.addr], "", "", "").replace(
        &format!("\"{}\"] }}\n      gray", c3.addr),
        &format!("\"{}\"], lb: hash_uid }}\n      gray", c3.addr),
    );
    assert!(cfg.contains("lb: hash_uid"), "{cfg}");
    let p = spawn_proxy(&cfg, "rules: []\n").await;
    let c = client();
    let mut spread = std::collections::HashSet::new();
    for uid in 1..30 {
        let uid = uid.to_string();
        let first = get(&c, &p.url("/"), &[("xdw-kefu-uid", &uid)]).await.2;
        for _ in 0..3 {
            assert_eq!(
                get(&c, &p.url("/"), &[("xdw-kefu-uid", &uid)]).await.2,
                first
            );
        }
        spread.insert(first);
    }
    assert!(spread.len() >= 2, "hashing put every uid on one endpoint");
    p.stop().await;
}

#[tokio::test]
async fn endpoints_by_dns_name() {
    let s = Faulty::start("stable").await;
    let cfg = config_yaml(
        &format!(
            "  - name: chat\n    match: {{ path_prefix: / }}\n    pools:\n      stable: {{ endpoints: [\"localhost:{}\"], resolve_interval: 1s }}\n",
            s.addr.port()
        ),
        "",
    );
    let p = spawn_proxy(&cfg, "rules: []\n").await;
    let (st, _, body) = get(&client(), &p.url("/"), &[]).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "stable"));
    p.stop().await;
}

#[tokio::test]
async fn guard_trips_on_gray_errors_and_sre_can_reset() {
    let s = Faulty::start("stable").await;
    let g = Faulty::start("gray").await;
    let cfg = pools_config(
        &[s.addr],
        &[g.addr],
        "    guard: { max_error_rate: 0.2, min_requests: 10, window: 10s, cooldown: 60s }\n",
        "",
        "",
    );
    let p = spawn_proxy(&cfg, GRAY_42).await;
    let c = client();
    // Low traffic never trips: a few failures below min_requests.
    g.set(FAIL_500);
    for _ in 0..5 {
        get(&c, &p.url("/"), &[("xdw-kefu-uid", "42")]).await;
    }
    assert_eq!(
        metric(&p, "graylane_gray_tripped{service=\"chat\"}").await,
        0.0
    );
    // Past min_requests with a 100% error rate the guard trips. (Passive ejection of the
    // failing endpoint also kicks in after 5 consecutive 5xx; the guard still sees the
    // requests gray gets whenever the ejection backoff ends.)
    let tripped = eventually(Duration::from_secs(8), || {
        let c = c.clone();
        let url = p.url("/");
        let p = &p;
        async move {
            get(&c, &url, &[("xdw-kefu-uid", "42")]).await;
            metric(p, "graylane_gray_tripped{service=\"chat\"}").await == 1.0
        }
    })
    .await;
    assert!(tripped, "guard never tripped");
    let (st, _, body) = get(&c, &p.url("/"), &[("xdw-kefu-uid", "42")]).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "stable"));
    let (_, explain) = admin_get(&p, "/explain?listener=im&path=/&uid=42").await;
    assert!(explain.contains("guard_tripped"), "{explain}");
    assert!(
        metric(&p, "graylane_fallbacks_total{from=\"gray\",reason=\"guard_tripped\",service=\"chat\",to=\"stable\"}").await
            >= 1.0
    );
    // The SRE fixes gray and resets by hand.
    g.set(OK);
    let (st, body) = admin_post(&p, "/guard/reset?service=chat", &[]).await;
    assert_eq!(st.as_u16(), 200);
    assert!(body.contains("\"tripped\": false"), "{body}");
    assert_eq!(
        metric(&p, "graylane_gray_tripped{service=\"chat\"}").await,
        0.0
    );
    // Gray serves again once the passive ejection of its endpoint has run out too.
    let back = eventually(Duration::from_secs(20), || {
        let c = c.clone();
        let url = p.url("/");
        async move { get(&c, &url, &[("xdw-kefu-uid", "42")]).await.2 == "gray" }
    })
    .await;
    assert!(back, "gray never came back after the reset");
    let (st, body) = admin_post(&p, "/guard/trip?service=chat", &[]).await;
    assert_eq!(st.as_u16(), 200);
    assert!(body.contains("\"tripped\": true"), "{body}");
    assert_eq!(
        get(&c, &p.url("/"), &[("xdw-kefu-uid", "42")]).await.2,
        "stable"
    );
    let (st, _) = admin_post(&p, "/guard/trip?service=nope", &[]).await;
    assert_eq!(st.as_u16(), 404);
    p.stop().await;
}

#[tokio::test]
async fn hanging_gray_is_a_504_and_not_retried() {
    let s = Faulty::start("stable").await;
    let g = Faulty::start("gray").await;
    g.set(HANG);
    let cfg = pools_config(
        &[s.addr],
        &[g.addr],
        "",
        "",
        "timeouts: { upstream_response: 300ms }\n",
    );
    let p = spawn_proxy(&cfg, GRAY_42).await;
    let (st, _, _) = get(&client(), &p.url("/"), &[("xdw-kefu-uid", "42")]).await;
    assert_eq!(st.as_u16(), 504);
    assert_eq!(g.hits(), 1);
    p.stop().await;
}

/// An address whose connects hang: a listener that never accepts, its accept queue full.
/// The kernel then drops every further SYN, so a connect retransmits for minutes unless
/// someone's timeout ends it. Returned with the listener and the connections that fill it.
async fn unanswered_addr() -> (TcpListener, Vec<tokio::net::TcpStream>, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut filling = Vec::new();
    for _ in 0..64 {
        let connect = tokio::net::TcpStream::connect(addr);
        match tokio::time::timeout(Duration::from_millis(300), connect).await {
            Ok(Ok(s)) => filling.push(s),
            Ok(Err(e)) => panic!("connect to the listener failed: {e}"),
            Err(_) => return (listener, filling, addr),
        }
    }
    panic!("64 connections did not fill an accept queue of backlog 0");
}

/// SPEC §3: a connect timeout is a 504 counted as `timeout`, for an HTTP/1.1 pool (our
/// own connect) and an HTTP/2 pool (hyper's client, whose connector we wrap) alike, and
/// it is neither retried (stable has a second endpoint to retry on) nor sent on to
/// stable.
#[tokio::test]
async fn connects_that_hang_are_a_504_on_either_protocol() {
    let (_l1, _filling1, a) = unanswered_addr().await;
    let (_l2, _filling2, b) = unanswered_addr().await;
    let cfg = pools_config(
        &[a, b],
        &[a],
        "",
        ", protocol: h2",
        "timeouts: { connect: 300ms }\n",
    );
    let p = spawn_proxy(&cfg, GRAY_42).await;
    let c = client();
    let timeouts = |pool: &str| {
        format!(
            "graylane_upstream_errors_total{{kind=\"timeout\",pool=\"{pool}\",service=\"chat\"}}"
        )
    };
    for (pool, uid) in [("stable", "1"), ("gray", "42")] {
        // Without a connect timeout the kernel's SYN retries would run for minutes.
        let (url, marker) = (p.url("/"), [("xdw-kefu-uid", uid)]);
        let (st, _, body) = tokio::time::timeout(Duration::from_secs(10), get(&c, &url, &marker))
            .await
            .unwrap_or_else(|_| panic!("{pool}: no answer within 10 s"));
        assert_eq!(
            (st.as_u16(), body.as_str()),
            (504, "graylane: upstream timed out\n"),
            "{pool}"
        );
        assert_eq!(metric(&p, &timeouts(pool)).await, 1.0, "{pool}");
    }
    // One try each: a retry on stable's other endpoint, or the gray request sent on to
    // stable, would be a second stable timeout.
    assert_eq!(metric(&p, &timeouts("stable")).await, 1.0);
    assert_eq!(
        metric(
            &p,
            "graylane_upstream_retries_total{pool=\"stable\",service=\"chat\"}"
        )
        .await,
        0.0
    );
    p.stop().await;
}

/// Kill every gray endpoint under continuous load of idempotent GETs and
/// count the failures the clients see after the first detection. Target: zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_gray_pool_costs_no_request() {
    let s = Faulty::start("stable").await;
    let g1 = Faulty::start("gray").await;
    let g2 = Faulty::start("gray").await;
    let cfg = pools_config(&[s.addr], &[g1.addr, g2.addr], "", "", "");
    let p = spawn_proxy(&cfg, GRAY_42).await;
    let url = p.url("/");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (url, stop, failures, served) =
            (url.clone(), stop.clone(), failures.clone(), served.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::SeqCst) {
                let (st, _, _) = get(&c, &url, &[("xdw-kefu-uid", "42")]).await;
                if st.as_u16() != 200 {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                served.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The load really goes to gray before it dies, or the test would prove nothing.
    let gray_before = g1.hits() + g2.hits();
    assert!(gray_before > 0, "uid 42 never reached gray");
    let served_before = served.load(Ordering::SeqCst);
    g1.kill();
    g2.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let failed = failures.load(Ordering::SeqCst);
    println!(
        "dead gray pool: {} requests, {failed} client-visible failures",
        served.load(Ordering::SeqCst)
    );
    assert_eq!(failed, 0);
    // Requests kept being answered after the kill, by stable.
    assert!(served.load(Ordering::SeqCst) > served_before + 20);
    assert!(s.hits() > 0);
    p.stop().await;
}

#[tokio::test]
async fn least_request_prefers_the_idle_endpoint() {
    let busy = Faulty::start("busy").await;
    let idle = Faulty::start("idle").await;
    busy.set(HANG);
    let cfg = pools_config(
        &[busy.addr, idle.addr],
        &[idle.addr],
        "",
        "",
        "timeouts: { upstream_response: 5s }\n",
    )
    .replace(
        &format!("\"{}\"] }}\n      gray", idle.addr),
        &format!("\"{}\"], lb: least_request }}\n      gray", idle.addr),
    );
    assert!(cfg.contains("least_request"));
    let p = spawn_proxy(&cfg, "rules: []\n").await;
    let c = client();
    // Park a few requests on the hanging endpoint.
    let mut parked = Vec::new();
    for _ in 0..6 {
        let (c, url) = (c.clone(), p.url("/"));
        parked.push(tokio::spawn(async move { get(&c, &url, &[]).await }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut idle_hits = 0;
    for _ in 0..10 {
        let r = tokio::time::timeout(Duration::from_millis(1000), get(&c, &p.url("/"), &[])).await;
        if matches!(r, Ok((_, _, ref b)) if b == "idle") {
            idle_hits += 1;
        }
    }
    assert!(
        idle_hits >= 8,
        "least_request sent only {idle_hits}/10 to the idle endpoint"
    );
    for t in parked {
        t.abort();
    }
    p.stop().await;
}

#[tokio::test]
async fn a_post_whose_connect_failed_is_replayed_with_its_body() {
    let (_held, dead) = refused_addr();
    let stable = spawn_upstream("stable").await;
    // Stable: a dead endpoint and a live one; gray: dead only.
    let cfg = pools_config(&[dead, stable.addr], &[dead], "", "", "");
    let p = spawn_proxy(&cfg, GRAY_42).await;
    let c = client();
    for uid in ["1", "42"] {
        for _ in 0..3 {
            let (st, _, body) = send(
                &c,
                "POST",
                &p.url("/count"),
                &[("xdw-kefu-uid", uid), ("x-trace", "t-1")],
                Bytes::from_static(b"0123456789"),
            )
            .await;
            // Nothing was sent on the refused connect, so the body goes, whole, elsewhere,
            // with the head the failed attempt handed back (a request with a body is read
            // by hyper and forwarded from a header map: not the own loop's head).
            assert_eq!((st.as_u16(), body.as_str()), (200, "10"), "uid {uid}");
            let h = stable.last().headers;
            assert_eq!(h["x-trace"], "t-1", "uid {uid}: {h:?}");
            assert_eq!(h["xdw-kefu-uid"], uid, "uid {uid}");
            assert_eq!(h["content-length"], "10", "uid {uid}: {h:?}");
        }
    }
    p.stop().await;
}

/// Every path that sends a request again (retry after a reset, fallback to stable after
/// a reset or a refused connect) must send the whole head: graylane moves the head into
/// an attempt and gets it back from a failed one, so a lost field would show here.
#[tokio::test]
async fn replayed_requests_keep_every_header() {
    let (_held, dead) = refused_addr();
    let resetting = Faulty::start("resetting").await;
    resetting.set(RESET);
    let stable = spawn_upstream("stable").await;
    let c = client();
    /// A GET for a gray uid that must end on stable, once, with its whole head.
    async fn served_by_stable_whole(c: &HttpClient, p: &Proxy, stable: &Upstream, what: &str) {
        let before = stable.seen().len();
        let (st, _, body) = get(
            c,
            &p.url("/q?a=1"),
            &[("xdw-kefu-uid", "42"), ("x-trace", "t-1")],
        )
        .await;
        assert_eq!((st.as_u16(), body.as_str()), (200, "stable"), "{what}");
        assert_eq!(stable.seen().len(), before + 1, "{what}");
        let seen = stable.last();
        let h = &seen.headers;
        assert_eq!(h["x-trace"], "t-1", "{what}: {h:?}");
        assert_eq!(h["xdw-kefu-uid"], "42", "{what}");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{what}");
        assert_eq!(h["x-forwarded-proto"], "http", "{what}");
        assert_eq!(h["x-graylane-pool"], "stable", "{what}");
        // Set once on the attempt that got through, not once per attempt.
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-graylane-pool",
            "x-graylane-rule",
        ] {
            assert_eq!(h.get_all(name).iter().count(), 1, "{what}: {name} {h:?}");
        }
        assert_eq!(seen.uri, "/q?a=1", "{what}");
    }
    // gray: one refused endpoint (connect failure -> stable);
    // then stable itself: a resetting endpoint before the good one (retry in the pool).
    let cases = [
        (
            vec![stable.addr],
            vec![dead],
            "42",
            "gray refused -> stable",
        ),
        (
            vec![resetting.addr, stable.addr],
            vec![dead],
            "7",
            "stable reset -> other stable endpoint",
        ),
    ];
    for (s, g, rule_uid, what) in cases {
        let rules = format!(
            "rules:\n  - name: g\n    when: {{ uid: {{ in: [{rule_uid}] }} }}\n    route: gray\n"
        );
        let p = spawn_proxy(&pools_config(&s, &g, "", "", ""), &rules).await;
        for _ in 0..3 {
            served_by_stable_whole(&c, &p, &stable, what).await;
        }
        p.stop().await;
    }
    assert!(resetting.hits() > 0);

    // gray: one endpoint that resets. A GET is tried once more; with no other gray
    // endpoint left it goes to stable, whole (SPEC §3: a dying gray pool costs no
    // request). A POST whose body was sent is answered 502, never re-sent.
    let rules = "rules:\n  - name: g\n    when: { uid: { in: [42] } }\n    route: gray\n";
    let cfg = pools_config(&[stable.addr], &[resetting.addr], "", "", "");
    let p = spawn_proxy(&cfg, rules).await;
    let tried = resetting.hits();
    served_by_stable_whole(&c, &p, &stable, "gray reset -> stable").await;
    assert!(resetting.hits() > tried, "gray was tried before stable");
    let hits = resetting.hits();
    let before = stable.seen().len();
    let (st, _, _) = send(
        &c,
        "POST",
        &p.url("/q"),
        &[("xdw-kefu-uid", "42")],
        Bytes::from_static(b"payload"),
    )
    .await;
    assert_eq!(st.as_u16(), 502);
    assert_eq!(stable.seen().len(), before, "a sent POST went to stable");
    assert_eq!(resetting.hits(), hits + 1);
    p.stop().await;
}
