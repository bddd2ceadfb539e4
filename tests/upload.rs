//! A 1 GiB upload streams through without growing memory. In a test binary of its own:
//! it measures the process's RSS, which other tests running alongside would disturb.

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
