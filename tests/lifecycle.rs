//! The drain (SPEC §8): `/readyz` turns 503 at once, traffic listeners stop accepting,
//! idle keep-alive connections close, in-flight requests finish up to `timeouts.drain`.
// Tests run on runtimes with tokio's time driver and may use its timers.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const PATIENCE: Duration = Duration::from_secs(10);

/// A GET that reports failure instead of panicking: `Err` when the connection broke.
fn spawn_get(url: String) -> JoinHandle<Result<(u16, String), String>> {
    tokio::spawn(async move {
        let c: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let resp = c
            .get(url.parse().unwrap())
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
}

/// Waits until the upstream has seen a request whose URI starts with `prefix`.
async fn upstream_saw(u: &Upstream, prefix: &str) {
    let seen = eventually(PATIENCE, || async {
        u.seen().iter().any(|s| s.uri.starts_with(prefix))
    })
    .await;
    assert!(seen, "the upstream never saw {prefix}");
}

async fn readyz(p: &Proxy) -> u16 {
    admin_get(p, "/readyz").await.0.as_u16()
}

async fn refuses_connections(addr: SocketAddr) -> bool {
    eventually(PATIENCE, || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await
}

/// Takes the run() future's handle to await the end of the drain.
fn run_handle(p: &mut Proxy) -> JoinHandle<bool> {
    p.handle.take().expect("proxy is running")
}

#[tokio::test]
async fn in_flight_request_completes_while_readyz_says_503() {
    let (stable, _g, mut p) = setup_simple("", "rules: []\n").await;
    assert_eq!(readyz(&p).await, 200);
    let slow = spawn_get(p.url("/slow?ms=2500"));
    upstream_saw(&stable, "/slow").await;

    p.begin_stop();
    assert!(
        eventually(PATIENCE, || async { readyz(&p).await == 503 }).await,
        "/readyz did not turn 503"
    );
    assert!(
        !slow.is_finished(),
        "the slow request ended before /readyz said 503"
    );
    // New connections to the traffic listener are refused from now on.
    assert!(
        refuses_connections(p.addr()).await,
        "the listener still accepts"
    );
    assert!(!slow.is_finished(), "the slow request ended early");
    // The admin listener is still up while the drain runs.
    assert_eq!(admin_get(&p, "/healthz").await.0.as_u16(), 200);

    let (status, body) = slow
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!((status, body.as_str()), (200, "stable"));
    let clean = tokio::time::timeout(PATIENCE, run_handle(&mut p))
        .await
        .expect("run() returns after the drain")
        .unwrap();
    assert!(clean, "every request finished, so the drain is clean");
    // The admin listener closes last, with the process.
    assert!(TcpStream::connect(p.admin).await.is_err());
}

#[tokio::test]
async fn in_flight_h2_request_completes_during_the_drain() {
    let (stable, _g, mut p) = setup_simple("", "rules: []\n").await;
    let c = h2c_client();
    let url = p.url("/slow?ms=1500");
    let slow = tokio::spawn(async move { get(&c, &url, &[]).await });
    upstream_saw(&stable, "/slow").await;
    p.begin_stop();
    assert!(eventually(PATIENCE, || async { readyz(&p).await == 503 }).await);
    let (status, _, body) = slow.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "stable"));
    let clean = tokio::time::timeout(PATIENCE, run_handle(&mut p))
        .await
        .expect("run() returns after the drain")
        .unwrap();
    assert!(clean);
}

#[tokio::test]
async fn drain_time_running_out_returns_false_without_waiting_for_the_request() {
    let (stable, _g, mut p) = setup_simple("timeouts: { drain: 300ms }", "rules: []\n").await;
    let slow = spawn_get(p.url("/slow?ms=5000"));
    upstream_saw(&stable, "/slow").await;
    let started = Instant::now();
    p.begin_stop();
    let clean = tokio::time::timeout(PATIENCE, run_handle(&mut p))
        .await
        .expect("run() returns")
        .unwrap();
    let took = started.elapsed();
    assert!(
        !clean,
        "the drain cannot be clean with a 5 s request in flight"
    );
    assert!(took < Duration::from_secs(3), "drain took {took:?}");
    // The cut request fails on the client side rather than hanging.
    let r = tokio::time::timeout(PATIENCE, slow)
        .await
        .expect("the cut request ends")
        .unwrap();
    assert!(r.is_err(), "the request was not cut: {r:?}");
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_when_the_drain_begins() {
    let (_s, _g, mut p) = setup_simple("", "rules: []\n").await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let resp = read_one_response(&mut s).await;
    assert_eq!(
        (resp.status, resp.body.as_slice()),
        (200, &b"stable"[..]),
        "{resp:?}"
    );

    let started = Instant::now();
    p.begin_stop();
    // idle is 60 s by default: only the drain can close this connection now.
    let mut buf = [0u8; 256];
    let r = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .expect("the idle connection is closed by the drain");
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "expected EOF, got {:?}",
        r.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    );
    let clean = tokio::time::timeout(PATIENCE, run_handle(&mut p))
        .await
        .expect("run() returns")
        .unwrap();
    assert!(clean);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn busy_keep_alive_connection_closes_after_its_current_response() {
    let (stable, _g, mut p) = setup_simple("", "rules: []\n").await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    upstream_saw(&stable, "/slow").await;
    p.begin_stop();
    let resp = read_one_response(&mut s).await;
    assert_eq!(
        (resp.status, resp.body.as_slice()),
        (200, &b"stable"[..]),
        "{resp:?}"
    );
    // Then the connection closes instead of waiting for another request.
    let mut buf = [0u8; 256];
    let r = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .expect("closed after the response");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    let clean = tokio::time::timeout(PATIENCE, run_handle(&mut p))
        .await
        .expect("run() returns")
        .unwrap();
    assert!(clean);
}

#[tokio::test]
async fn stop_without_traffic_is_clean_and_quick() {
    let (_s, _g, mut p) = setup_simple("", "rules: []\n").await;
    let (st, _, _) = get(&client(), &p.url("/"), &[]).await;
    assert_eq!(st.as_u16(), 200);
    let started = Instant::now();
    p.begin_stop();
    let clean = tokio::time::timeout(PATIENCE, run_handle(&mut p))
        .await
        .expect("run() returns")
        .unwrap();
    assert!(clean);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(TcpStream::connect(p.addr()).await.is_err());
}
