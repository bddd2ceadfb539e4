use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::IntGauge;

use super::endpoint::*;
use super::health::*;
use super::pool::*;
use super::resolve::*;
use super::*;
use crate::config::{Health, LbPolicy, Pool};
use crate::metrics::EndpointGauges;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::AtomicU16;
use std::sync::Mutex;

use crate::config::OnUnavailable;

// --- helpers ---

const EVERY_LB: [LbPolicy; 3] = [
    LbPolicy::RoundRobin,
    LbPolicy::LeastRequest,
    LbPolicy::HashUid,
];

/// A fresh round-robin pool of one endpoint (10.0.0.1:80) reporting to `g`, and it.
fn single_endpoint(g: &Gauges) -> (PoolEndpoints, Arc<Endpoint>) {
    let p = PoolEndpoints::new(
        &pool_cfg(&["10.0.0.1:80"], LbPolicy::RoundRobin),
        g.callbacks(),
    )
    .unwrap();
    let e = Arc::clone(&p.endpoints()[0]);
    (p, e)
}

fn pool_cfg(endpoints: &[&str], lb: LbPolicy) -> Pool {
    Pool {
        name: "stable".into(),
        id: 0,
        endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
        retries: 1,
        protocol: Protocol::Http1,
        on_unavailable: OnUnavailable::Fallback,
        lb,
        resolve_interval: Duration::from_secs(30),
    }
}

#[derive(Clone, Default)]
struct Gauges {
    made: Arc<Mutex<HashMap<String, IntGauge>>>,
    removed: Arc<Mutex<Vec<String>>>,
}

impl Gauges {
    fn callbacks(&self) -> EndpointGauges {
        let made = Arc::clone(&self.made);
        let removed = Arc::clone(&self.removed);
        EndpointGauges {
            make: Arc::new(move |label| {
                let g = IntGauge::new("graylane_endpoint_up", "test").unwrap();
                made.lock().unwrap().insert(label.to_owned(), g.clone());
                g
            }),
            remove: Arc::new(move |label| removed.lock().unwrap().push(label.to_owned())),
        }
    }

    fn value(&self, label: &str) -> i64 {
        self.made.lock().unwrap()[label].get()
    }
}

fn pool_of(endpoints: &[&str], lb: LbPolicy) -> PoolEndpoints {
    PoolEndpoints::new(&pool_cfg(endpoints, lb), Gauges::default().callbacks()).unwrap()
}

fn ips(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("10.0.0.{i}:80")).collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn at(ms: u64) -> Now {
    Now(Some(ms))
}

fn counts(
    p: &PoolEndpoints,
    n: usize,
    key: impl Fn(usize) -> Option<u64>,
) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for i in 0..n {
        let e = p.pick(key(i), None).unwrap();
        *c.entry(e.label().to_owned()).or_default() += 1;
    }
    c
}

fn eject(e: &Endpoint, now: u64) {
    for _ in 0..CONNECT_FAILURES_TO_EJECT {
        e.report_at(Outcome::ConnectFailure, &mut at(now));
    }
}

// --- load balancing ---

#[test]
fn round_robin_spreads_evenly_and_skips_unavailable() {
    let p = pool_of(
        &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
        LbPolicy::RoundRobin,
    );
    let c = counts(&p, 300, |_| None);
    assert_eq!(c.len(), 3);
    assert!(c.values().all(|&n| n == 100), "{c:?}");

    let eps = p.endpoints();
    eject(&eps[1], clock_ms());
    let c = counts(&p, 300, |_| None);
    assert_eq!(c.get("10.0.0.2:80"), None, "{c:?}");
    assert_eq!(c.values().sum::<usize>(), 300);
}

#[test]
fn least_request_prefers_the_less_loaded() {
    let p = pool_of(
        &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
        LbPolicy::LeastRequest,
    );
    let eps = p.endpoints();
    let _busy: Vec<_> = (0..10).map(|_| eps[0].start()).collect();
    let _some: Vec<_> = (0..5).map(|_| eps[1].start()).collect();
    assert_eq!(eps[0].in_flight(), 10);
    let c = counts(&p, 3000, |_| None);
    // Two distinct candidates: the busiest can never win.
    assert_eq!(c.get("10.0.0.1:80"), None, "{c:?}");
    // (A,B) → B, (A,C) → C, (B,C) → C: C takes about twice what B takes.
    assert!(c["10.0.0.3:80"] * 2 > c["10.0.0.2:80"] * 3, "{c:?}");
    drop(_busy);
    assert_eq!(eps[0].in_flight(), 0);
    let c = counts(&p, 3000, |_| None);
    assert!(
        c["10.0.0.1:80"] > 1000,
        "the idle endpoint takes most: {c:?}"
    );
}

#[test]
fn hash_is_stable_per_key_and_falls_back_to_round_robin_without_one() {
    let eps = ips(5);
    let p = pool_of(&refs(&eps), LbPolicy::HashUid);
    for uid in [1u64, 112233, 88000001] {
        let first = p.pick(Some(uid), None).unwrap();
        for _ in 0..20 {
            assert_eq!(p.pick(Some(uid), None).unwrap().addr(), first.addr());
        }
    }
    // Sequential uids spread over every endpoint (the key is mixed before the ring).
    let c = counts(&p, 10_000, |i| Some(i as u64));
    assert_eq!(c.len(), 5);
    assert!(c.values().all(|&n| n > 1000 && n < 3500), "{c:?}");
    let c = counts(&p, 500, |_| None);
    assert!(c.values().all(|&n| n == 100), "{c:?}");
    // Same endpoints in another order: same ring, same choices.
    let mut rev = eps.clone();
    rev.reverse();
    let q = pool_of(&refs(&rev), LbPolicy::HashUid);
    for uid in 0..1000u64 {
        assert_eq!(
            p.pick(Some(uid), None).unwrap().addr(),
            q.pick(Some(uid), None).unwrap().addr()
        );
    }
}

#[test]
fn hash_moves_about_one_nth_of_keys_when_an_endpoint_is_added() {
    let before = pool_of(&refs(&ips(10)), LbPolicy::HashUid);
    let after = pool_of(&refs(&ips(11)), LbPolicy::HashUid);
    let keys = 10_000u64;
    let moved = (0..keys)
        .filter(|&k| {
            before.pick(Some(k), None).unwrap().addr() != after.pick(Some(k), None).unwrap().addr()
        })
        .count();
    let frac = moved as f64 / keys as f64;
    let n = 11.0;
    assert!(frac > 0.5 / n && frac < 2.0 / n, "moved {frac}");
    // And every moved key went to the new endpoint.
    for k in 0..keys {
        let (a, b) = (
            before.pick(Some(k), None).unwrap(),
            after.pick(Some(k), None).unwrap(),
        );
        if a.addr() != b.addr() {
            assert_eq!(b.label(), "10.0.0.11:80");
        }
    }
}

#[test]
fn hash_walks_past_an_unavailable_endpoint_and_only_its_keys_move() {
    let p = pool_of(&refs(&ips(4)), LbPolicy::HashUid);
    let home: Vec<_> = (0..2000u64)
        .map(|k| p.pick(Some(k), None).unwrap())
        .collect();
    let victim = Arc::clone(&p.endpoints()[2]);
    eject(&victim, clock_ms());
    for (k, h) in home.iter().enumerate() {
        let now = p.pick(Some(k as u64), None).unwrap();
        if h.addr() == victim.addr() {
            assert_ne!(now.addr(), victim.addr());
        } else {
            assert_eq!(now.addr(), h.addr());
        }
    }
}

#[test]
fn pick_skips_exclude_for_every_policy() {
    for lb in EVERY_LB {
        let p = pool_of(&["10.0.0.1:80", "10.0.0.2:80"], lb);
        let eps = p.endpoints();
        for k in 0..200u64 {
            for x in eps.iter() {
                let e = p.pick(Some(k), Some(x)).unwrap();
                assert_ne!(e.addr(), x.addr(), "{lb:?}");
            }
        }
        let single = pool_of(&["10.0.0.1:80"], lb);
        let only = Arc::clone(&single.endpoints()[0]);
        assert!(single.pick(Some(1), Some(&only)).is_none(), "{lb:?}");
        // Panic routing still returns the excluded endpoint when it is the only one.
        assert_eq!(
            single.pick_any(Some(1), Some(&only)).unwrap().addr(),
            only.addr()
        );
    }
}

#[test]
fn all_ejected_pick_none_but_pick_any_returns_one() {
    for lb in EVERY_LB {
        let p = pool_of(&["10.0.0.1:80", "10.0.0.2:80"], lb);
        let eps = p.endpoints();
        let now = clock_ms();
        eject(&eps[0], now);
        assert!(p.has_available());
        eject(&eps[1], now);
        assert!(!p.has_available());
        assert!(p.pick(Some(7), None).is_none(), "{lb:?}");
        assert!(p.pick_any(Some(7), None).is_some(), "{lb:?}");
        let e = p.pick_any(Some(7), Some(&eps[0])).unwrap();
        assert_eq!(e.addr(), eps[1].addr(), "{lb:?}");
    }
}

// --- passive ejection ---

#[test]
fn connect_failures_eject_with_growing_backoff_reset_by_success() {
    let g = Gauges::default();
    let (p, e) = single_endpoint(&g);
    assert_eq!(g.value("10.0.0.1:80"), 1);

    let t = 10_000;
    e.report_at(Outcome::ConnectFailure, &mut at(t));
    e.report_at(Outcome::ConnectFailure, &mut at(t));
    assert!(e.usable(&mut at(t)));
    e.report_at(Outcome::ConnectFailure, &mut at(t));
    assert!(!e.usable(&mut at(t)));
    assert_eq!(g.value("10.0.0.1:80"), 0);
    assert!(p.pick_at(None, None, true, &mut at(t + 999)).is_none());
    // Connect failures of requests already in flight do not extend the ejection.
    for _ in 0..10 {
        e.report_at(Outcome::ConnectFailure, &mut at(t + 500));
    }
    assert!(p.pick_at(None, None, true, &mut at(t + 1000)).is_some());
    assert_eq!(
        g.value("10.0.0.1:80"),
        1,
        "noticing the expiry republishes the gauge"
    );

    // Second consecutive ejection: 2 s.
    let t = t + 1000;
    eject(&e, t);
    assert!(!e.usable(&mut at(t + 1999)));
    assert!(e.usable(&mut at(t + 2000)));
    // Third: 4 s.
    let t = t + 2000;
    eject(&e, t);
    assert!(!e.usable(&mut at(t + 3999)));
    assert!(e.usable(&mut at(t + 4000)));
    // A connection made resets the backoff to 1 s.
    let t = t + 4000;
    e.report_at(Outcome::Connected, &mut at(t));
    eject(&e, t);
    assert!(!e.usable(&mut at(t + 999)));
    assert!(e.usable(&mut at(t + 1000)));
}

/// SPEC §3: only connect failures eject. Whatever the answers (5xx, resets, timeouts are
/// all reported as `Connected` once the connection was made), the endpoint stays.
#[test]
fn only_connect_failures_eject_and_a_connection_breaks_the_streak() {
    let p = pool_of(&["10.0.0.1:80"], LbPolicy::RoundRobin);
    let e = Arc::clone(&p.endpoints()[0]);
    let t = 5_000;
    for _ in 0..1000 {
        e.report_at(Outcome::Connected, &mut at(t));
    }
    assert!(e.usable(&mut at(t)));
    for _ in 0..CONNECT_FAILURES_TO_EJECT - 1 {
        e.report_at(Outcome::ConnectFailure, &mut at(t));
    }
    e.report_at(Outcome::Connected, &mut at(t));
    for _ in 0..CONNECT_FAILURES_TO_EJECT - 1 {
        e.report_at(Outcome::ConnectFailure, &mut at(t));
    }
    assert!(
        e.usable(&mut at(t)),
        "a connection in between breaks the streak"
    );
    e.report_at(Outcome::ConnectFailure, &mut at(t));
    assert!(!e.usable(&mut at(t)));
    assert!(e.usable(&mut at(t + 1000)));
}

#[test]
fn backoff_is_capped() {
    assert_eq!(eject_backoff(0), Duration::from_secs(1));
    assert_eq!(eject_backoff(3), Duration::from_secs(8));
    assert_eq!(eject_backoff(5), EJECT_MAX);
    assert_eq!(eject_backoff(u32::MAX), EJECT_MAX);
}

#[test]
fn in_flight_guard_counts_until_dropped() {
    let p = pool_of(&["10.0.0.1:80"], LbPolicy::LeastRequest);
    let e = p.pick(None, None).unwrap();
    let g1 = e.start();
    let g2 = e.start();
    assert_eq!(e.in_flight(), 2);
    assert_eq!(g1.0.addr(), e.addr());
    drop(g1);
    drop(g2);
    assert_eq!(e.in_flight(), 0);
}

// --- active checks ---

#[test]
fn check_thresholds_flip_state_after_consecutive_results() {
    let g = Gauges::default();
    let (p, e) = single_endpoint(&g);
    let (healthy, unhealthy) = (2, 3);
    assert_eq!(e.record_check(false, healthy, unhealthy), None);
    assert_eq!(e.record_check(false, healthy, unhealthy), None);
    assert_eq!(
        e.record_check(true, healthy, unhealthy),
        None,
        "a success breaks the streak"
    );
    assert_eq!(e.record_check(false, healthy, unhealthy), None);
    assert_eq!(e.record_check(false, healthy, unhealthy), None);
    assert!(e.available());
    assert_eq!(e.record_check(false, healthy, unhealthy), Some(false));
    assert!(!e.available());
    assert!(!p.has_available());
    assert_eq!(g.value("10.0.0.1:80"), 0);
    assert_eq!(e.record_check(true, healthy, unhealthy), None);
    assert_eq!(e.record_check(false, healthy, unhealthy), None);
    assert_eq!(e.record_check(true, healthy, unhealthy), None);
    assert_eq!(e.record_check(true, healthy, unhealthy), Some(true));
    assert!(e.available());
    assert_eq!(g.value("10.0.0.1:80"), 1);
}

/// An upstream answering every request with `status`, recording each `Host` (or h2
/// `:authority`) it sees. Serves HTTP/1.1 and h2c.
struct TestServer {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    hosts: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    async fn start() -> TestServer {
        use hyper::service::service_fn;
        use hyper_util::server::conn::auto;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let hosts = Arc::new(Mutex::new(Vec::new()));
        let (st, hs) = (Arc::clone(&status), Arc::clone(&hosts));
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let (st, hs) = (Arc::clone(&st), Arc::clone(&hs));
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let host = req
                            .headers()
                            .get(http::header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .map(str::to_owned)
                            .or_else(|| req.uri().authority().map(|a| a.to_string()))
                            .unwrap_or_default();
                        hs.lock()
                            .unwrap()
                            .push(format!("{host} {}", req.uri().path()));
                        let code = st.load(Ordering::SeqCst);
                        async move {
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .status(code)
                                    .body(Empty::<Bytes>::new())
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        TestServer {
            addr,
            status,
            hosts,
        }
    }

    fn hits(&self) -> usize {
        self.hosts.lock().unwrap().len()
    }
}

fn health(interval_ms: u64, timeout_ms: u64) -> Health {
    Health {
        path: "/healthz".into(),
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        healthy: 2,
        unhealthy: 3,
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn probe_speaks_http1_and_h2_with_the_configured_host() {
    let srv = TestServer::start().await;
    let origin = format!("localhost:{}", srv.addr.port());
    let gauges = Gauges::default().callbacks();
    let ep = Endpoint::new(
        srv.addr,
        Arc::from(origin.as_str()),
        Arc::from("stable"),
        &gauges,
    )
    .unwrap();
    assert_eq!(probe(&ep, "/healthz", Protocol::Http1).await.unwrap(), 200);
    srv.status.store(503, Ordering::SeqCst);
    assert_eq!(probe(&ep, "/healthz", Protocol::H2).await.unwrap(), 503);
    let hosts = srv.hosts.lock().unwrap().clone();
    assert_eq!(
        hosts,
        vec![format!("{origin} /healthz"), format!("{origin} /healthz")]
    );
}

#[tokio::test]
async fn active_checks_mark_down_on_500_and_up_again_on_200() {
    let srv = TestServer::start().await;
    let g = Gauges::default();
    let cfg = pool_cfg(&[&srv.addr.to_string()], LbPolicy::RoundRobin);
    let pool = Arc::new(PoolEndpoints::new(&cfg, g.callbacks()).unwrap());
    let ep = Arc::clone(&pool.endpoints()[0]);
    let tasks = spawn_tasks(Arc::clone(&pool), Some(health(20, 500)));

    wait_until("first checks", || srv.hits() >= 3).await;
    assert!(ep.available());
    srv.status.store(500, Ordering::SeqCst);
    let before = srv.hits();
    wait_until("down", || !ep.available()).await;
    assert!(
        srv.hits() - before >= 3,
        "down only after `unhealthy` failures"
    );
    assert!(!pool.has_available());
    assert!(pool.pick(None, None).is_none());
    assert_eq!(g.value(ep.label()), 0);

    srv.status.store(204, Ordering::SeqCst);
    let before = srv.hits();
    wait_until("up", || ep.available()).await;
    assert!(
        srv.hits() - before >= 2,
        "up only after `healthy` successes"
    );
    assert_eq!(g.value(ep.label()), 1);
    for t in tasks {
        t.abort();
    }
}

#[tokio::test]
async fn active_checks_mark_down_when_nothing_listens_or_nothing_answers() {
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    // Accepts connections and never answers: each check ends by `timeout`.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let cfg = pool_cfg(
        &[&closed.to_string(), &silent_addr.to_string()],
        LbPolicy::RoundRobin,
    );
    let pool = Arc::new(PoolEndpoints::new(&cfg, Gauges::default().callbacks()).unwrap());
    let eps = pool.endpoints();
    let tasks = spawn_tasks(Arc::clone(&pool), Some(health(20, 50)));
    wait_until("both down", || eps.iter().all(|e| !e.available())).await;
    assert!(pool.pick(None, None).is_none());
    assert!(pool.pick_any(None, None).is_some());
    for t in tasks {
        t.abort();
    }
}

// --- DNS ---

#[tokio::test]
async fn a_name_resolves_to_its_addresses() {
    let p = pool_of(&["localhost:4321", "127.0.0.1:4321"], LbPolicy::RoundRobin);
    let eps = p.endpoints();
    assert!(!eps.is_empty() && eps.len() <= 2, "{eps:?}");
    for e in eps.iter() {
        assert!(
            e.addr().ip().is_loopback() && e.addr().port() == 4321,
            "{e:?}"
        );
        assert_eq!(e.label(), e.addr().to_string());
        assert_eq!(e.authority().as_str(), e.label());
    }
    assert!(p.has_names());
    assert!(!pool_of(&["10.0.0.1:80", "[::1]:80"], LbPolicy::RoundRobin).has_names());
    p.refresh().await;
    assert_eq!(p.endpoints().len(), eps.len());
}

#[test]
fn a_name_that_does_not_resolve_at_start_is_an_error() {
    let cfg = pool_cfg(&["10.0.0.1:80", "nowhere.invalid:80"], LbPolicy::RoundRobin);
    let e = PoolEndpoints::new(&cfg, Gauges::default().callbacks()).unwrap_err();
    assert!(e.to_string().contains("nowhere.invalid:80"), "{e}");
    let empty: Resolver = Arc::new(|_: &str| Ok(Vec::new()));
    let e = PoolEndpoints::with_resolver(&cfg, Gauges::default().callbacks(), empty).unwrap_err();
    assert!(matches!(e, ResolveError::NoAddress { .. }), "{e}");
}

#[tokio::test]
async fn refresh_swaps_changes_keeps_state_and_survives_failures() {
    let answer: Arc<Mutex<io::Result<Vec<SocketAddr>>>> = Arc::new(Mutex::new(Ok(vec![
        "10.9.0.2:80".parse().unwrap(),
        "10.9.0.1:80".parse().unwrap(),
    ])));
    let a = Arc::clone(&answer);
    let resolver: Resolver = Arc::new(move |name: &str| {
        assert_eq!(name, "pods.svc:80");
        match &*a.lock().unwrap() {
            Ok(v) => Ok(v.clone()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
    });
    let g = Gauges::default();
    let cfg = pool_cfg(&["pods.svc:80", "10.0.0.1:80"], LbPolicy::HashUid);
    let p = PoolEndpoints::with_resolver(&cfg, g.callbacks(), resolver).unwrap();
    let labels = |p: &PoolEndpoints| {
        p.endpoints()
            .iter()
            .map(|e| e.label().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(labels(&p), ["10.9.0.1:80", "10.9.0.2:80", "10.0.0.1:80"]);
    let kept = Arc::clone(&p.endpoints()[1]);
    assert_eq!(&*kept.origin, "pods.svc:80");
    eject(&kept, clock_ms());

    // Same answer in another order: nothing changes.
    let before = p.endpoints();
    *answer.lock().unwrap() = Ok(vec![
        "10.9.0.1:80".parse().unwrap(),
        "10.9.0.2:80".parse().unwrap(),
    ]);
    p.refresh().await;
    assert!(Arc::ptr_eq(&before, &p.endpoints()));

    // A pod replaced: the survivor keeps its Arc and its ejection; the gone one's
    // series is removed; the new one gets a gauge.
    *answer.lock().unwrap() = Ok(vec![
        "10.9.0.2:80".parse().unwrap(),
        "10.9.0.3:80".parse().unwrap(),
    ]);
    p.refresh().await;
    assert_eq!(labels(&p), ["10.9.0.2:80", "10.9.0.3:80", "10.0.0.1:80"]);
    assert!(Arc::ptr_eq(&kept, &p.endpoints()[0]));
    assert!(!p.endpoints()[0].available());
    assert_eq!(*g.removed.lock().unwrap(), ["10.9.0.1:80"]);
    assert_eq!(g.value("10.9.0.3:80"), 1);
    // The ring follows the new set.
    for k in 0..500u64 {
        assert_ne!(p.pick(Some(k), None).unwrap().label(), "10.9.0.1:80");
    }

    // A failed lookup, then an empty answer: the last good set stays.
    let before = p.endpoints();
    *answer.lock().unwrap() = Err(io::Error::other("SERVFAIL"));
    p.refresh().await;
    assert!(Arc::ptr_eq(&before, &p.endpoints()));
    *answer.lock().unwrap() = Ok(Vec::new());
    p.refresh().await;
    assert!(Arc::ptr_eq(&before, &p.endpoints()));
    assert_eq!(g.removed.lock().unwrap().len(), 1);
}
