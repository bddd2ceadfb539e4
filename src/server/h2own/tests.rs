//! A stream whose handling panics is reset alone: the connection and its other streams
//! go on. The panic is asked for by a path only this module's hook knows (compiled into
//! test builds only), since no request makes the request path panic.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::super::conn::ConnState;
use super::Conn;
use crate::http2::frame::{self, kind, Head, Reason, HEAD_LEN};
use crate::http2::hpack::encode_field;
use crate::state::{ConnCtx, ConnSlot};

const PANIC_PATH: &str = "/chat/panic-in-test";

/// Whether the request asks the test hook to panic.
pub(super) fn asks_to_panic(parts: &http::request::Parts) -> bool {
    parts.uri.path() == PANIC_PATH
}

/// `handle`, panicking first when asked to: inside the stream's future, where a real
/// panic of the request path would happen.
pub(super) async fn panic_if<F: Future>(panics: bool, handle: F) -> F::Output {
    assert!(!panics, "the test hook's panic");
    handle.await
}

fn request(stream: u32, path: &str, out: &mut Vec<u8>) {
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "t"),
        (":path", path),
    ] {
        encode_field(n.as_bytes(), v.as_bytes(), &mut block);
    }
    frame::headers(out, stream, &block, true, 16_384);
}

/// Reads frames until each of `streams` is answered (HEADERS) or reset, in whatever
/// order; `Err(code)` for a reset.
async fn outcomes(client: &mut DuplexStream, streams: &[u32]) -> HashMap<u32, Result<(), u32>> {
    let mut seen = HashMap::new();
    while seen.len() < streams.len() {
        let mut head = [0u8; HEAD_LEN];
        client.read_exact(&mut head).await.expect("a frame");
        let h = Head::parse(&head);
        let mut payload = vec![0u8; h.len];
        client.read_exact(&mut payload).await.expect("its payload");
        if !streams.contains(&h.stream) || seen.contains_key(&h.stream) {
            continue;
        }
        match h.kind {
            kind::HEADERS => {
                seen.insert(h.stream, Ok(()));
            }
            kind::RST_STREAM => {
                let code = payload.get(..4).and_then(|b| b.try_into().ok());
                seen.insert(h.stream, Err(code.map_or(u32::MAX, u32::from_be_bytes)));
            }
            _ => {}
        }
    }
    seen
}

#[tokio::test]
async fn a_panicking_stream_is_reset_alone() {
    let shared = crate::testing::shared_with_rules("rules: []\n");
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("address");
    let gauge = prometheus::IntGauge::new("test_connections", "test").expect("gauge");
    let ctx = Arc::new(ConnCtx {
        listener: 0,
        peer,
        peer_value: crate::proxy::headers::peer_value(peer.ip()),
        trusted: true,
        slot: Arc::new(ConnSlot::new(Arc::new(AtomicUsize::new(0)), gauge)),
    });
    let state = Arc::new(ConnState::new(tokio::time::Instant::now()));
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let conn = tokio::spawn(Conn::new(server, shared, ctx, state));
    let mut out = frame::PREFACE.to_vec();
    frame::settings(&mut out, &[]);
    // The upstream (MIN_CONFIG's 127.0.0.1:1) refuses: the other streams get a 502.
    request(1, PANIC_PATH, &mut out);
    request(3, "/chat/a", &mut out);
    client.write_all(&out).await.expect("send");
    let within = Duration::from_secs(10);
    let seen = tokio::time::timeout(within, outcomes(&mut client, &[1, 3]))
        .await
        .expect("streams 1 and 3 ended");
    assert_eq!(seen[&1], Err(Reason::Internal as u32));
    assert_eq!(seen[&3], Ok(()));
    // A stream opened after the panic is served on the same connection.
    out.clear();
    request(5, "/chat/b", &mut out);
    client.write_all(&out).await.expect("send");
    let seen = tokio::time::timeout(within, outcomes(&mut client, &[5]))
        .await
        .expect("stream 5 ended");
    assert_eq!(seen[&5], Ok(()));
    assert!(!conn.is_finished(), "the connection ended");
    conn.abort();
}
