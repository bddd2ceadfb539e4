//! Bodies through graylane's own HTTP/2 server (h2c with prior knowledge): uploads and
//! downloads larger than every flow-control window on either side, several at once on
//! one connection, and the framing the HTTP/1.1 upstream gets for them.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// An h2c client whose windows are HTTP/2's smallest default (65,535 bytes): graylane
/// must wait for its WINDOW_UPDATEs to send a large answer.
fn narrow_h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .http2_initial_stream_window_size(65_535)
        .http2_initial_connection_window_size(65_535)
        .build_http()
}

#[tokio::test]
async fn uploads_and_downloads_larger_than_every_window_come_through_whole() {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let p = spawn_proxy(&simple_config(stable.addr, gray.addr, ""), "rules: []\n").await;
    let c = narrow_h2c_client();

    // 4 MiB streamed up (graylane's windows are 1 MiB: it must give them back as the
    // upstream takes the body) and echoed down (the client's are 64 KiB).
    let total: u64 = 4 << 20;
    let req = http::Request::post(p.url("/echo"))
        .body(streamed_body(total, 16 * 1024))
        .unwrap();
    let echo = async {
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        resp.into_body().collect().await.unwrap().to_bytes()
    };
    let body = tokio::time::timeout(std::time::Duration::from_secs(20), echo)
        .await
        .expect("the echo stalled");
    assert_eq!(body.len() as u64, total);
    assert!(body.iter().all(|&b| b == b'x'));
    // A streamed body has no length: the upstream gets it chunked.
    let seen = stable.last();
    assert_eq!(
        seen.headers.get("transfer-encoding").map(|v| v.as_bytes()),
        Some(&b"chunked"[..])
    );

    // A body with a content-length keeps it, and is not chunked as well.
    let (st, _, n) = send(
        &c,
        "POST",
        &p.url("/count"),
        &[],
        Bytes::from(vec![b'y'; 3 << 20]),
    )
    .await;
    assert_eq!((st.as_u16(), n.as_str()), (200, "3145728"));
    let seen = stable.last();
    assert_eq!(
        seen.headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"3145728"[..])
    );
    assert!(
        seen.headers.get("transfer-encoding").is_none(),
        "{:?}",
        seen.headers
    );
    p.stop().await;
}

#[tokio::test]
async fn streams_share_the_connection_window_without_stalling() {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let p = spawn_proxy(&simple_config(stable.addr, gray.addr, ""), "rules: []\n").await;
    let c = narrow_h2c_client();
    // Eight 768 KiB uploads at once on one connection: together six times graylane's
    // connection window, each under its stream window.
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let c = c.clone();
        let url = p.url("/count");
        tasks.push(tokio::spawn(async move {
            let n = (768 << 10) + i;
            let req = http::Request::post(url)
                .body(streamed_body(n, 8 * 1024))
                .unwrap();
            let resp = c.request(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (n, String::from_utf8_lossy(&body).into_owned())
        }));
    }
    for t in tasks {
        let (n, counted) = tokio::time::timeout(std::time::Duration::from_secs(20), t)
            .await
            .expect("an upload stalled")
            .unwrap();
        assert_eq!(counted, n.to_string());
    }
    p.stop().await;
}

#[tokio::test]
async fn answers_waiting_on_the_connection_window_resume_when_it_opens() {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let p = spawn_proxy(&simple_config(stable.addr, gray.addr, ""), "rules: []\n").await;
    // Stream windows of 4 MiB but a connection window of 64 KiB: the answers wait on the
    // connection's window, which the client opens as it reads.
    let c: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .http2_initial_stream_window_size(4 << 20)
        .http2_initial_connection_window_size(65_535)
        .build_http();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = c.clone();
        let url = p.url("/echo");
        tasks.push(tokio::spawn(async move {
            let req = http::Request::post(url)
                .body(streamed_body(1 << 20, 16 * 1024))
                .unwrap();
            let resp = c.request(req).await.unwrap();
            resp.into_body().collect().await.unwrap().to_bytes().len()
        }));
    }
    for t in tasks {
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), t)
            .await
            .expect("an answer stalled")
            .unwrap();
        assert_eq!(n, 1 << 20);
    }
    p.stop().await;
}
