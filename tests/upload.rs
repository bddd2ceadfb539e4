//! A 1 GiB upload streams through without growing memory. In a test binary of its own:
//! it measures the process's RSS, which other tests running alongside would disturb.
// Tests run on runtimes with tokio's time driver and may use its timers.
#![allow(clippy::disallowed_methods)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;

#[tokio::test]
async fn large_upload_streams_without_buffering() {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let p = spawn_proxy(&simple_config(stable.addr, gray.addr, ""), "rules: []\n").await;
    let c = client();
    // 1 GiB, streamed in 64 KiB chunks; the proxy holds at most a few chunks at a time.
    let total: u64 = 1 << 30;
    let req = http::Request::post(p.url("/count"))
        .body(streamed_body(total, 64 * 1024))
        .unwrap();
    let before = rss_kib();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, Bytes::from(total.to_string()));
    let after = rss_kib();
    // The test process holds client, proxy and upstream: if any of them buffered the
    // body, RSS would grow by up to 1 GiB.
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // A streamed echo comes back intact.
    let (st, _, echoed) = send(
        &c,
        "POST",
        &p.url("/echo"),
        &[],
        Bytes::from_static(b"ping"),
    )
    .await;
    assert_eq!((st.as_u16(), echoed.as_str()), (200, "ping"));
    p.stop().await;
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_client_cutting_its_upload_off_does_not_count_against_the_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (stable, _gray, p) =
        proxy_with_upstreams(|s, g| simple_config(s, g, ""), "rules: []\n").await;
    // Promise 100000 bytes, send 10, go away.
    let mut s = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"POST /count HTTP/1.1\r\nhost: chat\r\ncontent-length: 100000\r\n\r\n0123456789")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    drop(s);
    // The attempt has ended (graylane saw the body break off) before metrics are read.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        stable
            .seen()
            .iter()
            .any(|r| r.method == "POST" && r.uri == "/count"),
        "the upload reached the upstream before it broke off"
    );
    // No upstream error of any kind was counted for it.
    let (_, text) = admin_get(&p, "/metrics").await;
    let counted: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("graylane_upstream_errors_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(
        counted.is_empty(),
        "a client's broken upload is not an upstream error: {counted:?}"
    );
    // And the endpoint is still picked: the next request is served.
    let (st, _, body) = get(&client(), &p.url("/"), &[]).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "stable"));
    assert!(p.stop().await);
}
