//! graylane's HTTP/1.1 upstream client against a scripted upstream that writes raw bytes:
//! the framings of RFC 9112 (chunked, close-delimited, HEAD, 1xx), heads split across
//! reads, keep-alive connections the upstream drops, invalid heads, an early answer.
// Tests run on runtimes with tokio's time driver and may use its timers.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A raw upstream: answers each request by its path (see `answer`), counts connections.
struct Raw {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw_upstream() -> Raw {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(s));
        }
    });
    Raw { addr, conns, task }
}

/// Reads until `buf` holds `upto` bytes; `None` when the connection ends first.
async fn need(s: &mut TcpStream, buf: &mut Vec<u8>, upto: usize) -> Option<()> {
    while buf.len() < upto {
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(())
}

/// The Content-Length of a lowercased request head, 0 without one.
fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads requests (head, then a Content-Length body) and answers them until a script
/// closes the connection.
async fn serve(mut s: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let more = buf.len() + 1;
            if need(&mut s, &mut buf, more).await.is_none() {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let mut words = head.split_whitespace();
        let method = words.next().unwrap_or("").to_owned();
        let path = words.next().unwrap_or("").to_owned();
        if path == "/duplex" {
            // Answer at once, then echo the body as it arrives, one chunk per read.
            duplex(s, &head, buf.split_off(head_end)).await;
            return;
        }
        if path == "/ws" {
            // Switch protocols and speak first, in the same write as the 101.
            let _ = s
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nHELLO")
                .await;
            let mut chunk = [0u8; 1024];
            while let Ok(n) = s.read(&mut chunk).await {
                if n == 0 || s.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
            }
            return;
        }
        if head.contains("transfer-encoding: chunked") {
            // Decode the chunked body and answer what arrived: its length and trailers.
            let Some((body, trailers, end)) = read_chunked(&mut s, &mut buf, head_end).await else {
                return;
            };
            buf.drain(..end);
            let text = format!("{} bytes; trailers: {}", body.len(), trailers.join(", "));
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                text.len()
            );
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        if path == "/early" {
            // Answer on the head alone, while the client is still uploading.
            let _ = s
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbig!")
                .await;
            return;
        }
        let length = content_length(&head);
        if need(&mut s, &mut buf, head_end + length).await.is_none() {
            return;
        }
        buf.drain(..head_end + length);
        let keep = answer(&mut s, &method, &path).await;
        if !keep {
            return;
        }
    }
}

/// Reads a chunked body starting at `buf[pos..]`: its data, its trailer lines, and where
/// it ends in `buf`.
async fn read_chunked(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    mut pos: usize,
) -> Option<(Vec<u8>, Vec<String>, usize)> {
    async fn line(s: &mut TcpStream, buf: &mut Vec<u8>, pos: usize) -> Option<(String, usize)> {
        loop {
            if let Some(i) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
                let text = String::from_utf8_lossy(&buf[pos..pos + i]).into_owned();
                return Some((text, pos + i + 2));
            }
            let len = buf.len();
            need(s, buf, len + 1).await?;
        }
    }
    let mut body = Vec::new();
    loop {
        let (size_line, next) = line(s, buf, pos).await?;
        pos = next;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            let mut trailers = Vec::new();
            loop {
                let (t, next) = line(s, buf, pos).await?;
                pos = next;
                if t.is_empty() {
                    return Some((body, trailers, pos));
                }
                trailers.push(t.to_ascii_lowercase());
            }
        }
        need(s, buf, pos + size + 2).await?;
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

/// Echoes a Content-Length request body back as chunks while it arrives.
async fn duplex(mut s: TcpStream, head: &str, mut got: Vec<u8>) {
    let length = content_length(head);
    if s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut seen = 0;
    loop {
        if !got.is_empty() {
            let chunk = format!("{:x}\r\n", got.len());
            let _ = s.write_all(chunk.as_bytes()).await;
            let _ = s.write_all(&got).await;
            let _ = s.write_all(b"\r\n").await;
            seen += got.len();
            got.clear();
        }
        if seen >= length {
            let _ = s.write_all(b"0\r\n\r\n").await;
            return;
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Writes the scripted answer for `path`; `false` closes the connection after it.
async fn answer(s: &mut TcpStream, method: &str, path: &str) -> bool {
    let w = |b: &'static [u8]| b;
    let (bytes, keep): (&[u8], bool) = match path {
        "/chunked" => (
            w(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-trailer\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n"),
            true,
        ),
        "/eof" => (w(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"), false),
        "/continue" => (
            w(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            true,
        ),
        "/head" if method == "head" => (w(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"), true),
        // Dropped after the answer, without saying so (a keep-alive timeout).
        "/close-after" => (w(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"), false),
        // The largest length there is, and then the connection ends.
        "/huge-length" => (
            w(b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551615\r\n\r\nok"),
            false,
        ),
        // More bytes than the length says, as a broken upstream might send.
        "/extra" => (w(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA"), true),
        "/bad-length" => (w(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\nok"), false),
        "/hop" => (
            w(b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5, max=100\r\nx-kept: yes\r\ncontent-length: 2\r\n\r\nok"),
            true,
        ),
        "/hop-named" => (
            w(b"HTTP/1.1 200 OK\r\nconnection: keep-alive, x-secret\r\nx-secret: 1\r\nkeep-alive: timeout=5\r\nx-kept: yes\r\ncontent-length: 2\r\n\r\nok"),
            true,
        ),
        "/split" => {
            // Head and body cut across several reads.
            for piece in [&b"HTTP/1.1 200 OK\r\ncont"[..], b"ent-length: 5\r\n\r\nhel", b"lo"] {
                if s.write_all(piece).await.is_err() {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return true;
        }
        _ => (w(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"), true),
    };
    s.write_all(bytes).await.is_ok() && keep
}

async fn proxy_to(raw: &Raw) -> Proxy {
    spawn_proxy(&simple_config(raw.addr, raw.addr, ""), "rules: []\n").await
}

#[tokio::test]
async fn chunked_close_delimited_and_split_bodies_arrive_whole() {
    let raw = raw_upstream().await;
    let p = proxy_to(&raw).await;
    let c = client();
    let (st, h, body) = get(&c, &p.url("/chunked"), &[]).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "hello, world"));
    // Re-framed for the client: no length known up front, so chunked again.
    assert_eq!(
        h.get("transfer-encoding").map(|v| v.as_bytes()),
        Some(&b"chunked"[..])
    );
    // A client that accepts trailers gets the upstream's.
    let req = http::Request::get(p.url("/chunked"))
        .header("te", "trailers")
        .body(BodyExt::boxed(
            http_body_util::Empty::new().map_err(|n| match n {}),
        ))
        .unwrap();
    let resp = c.request(req).await.expect("response");
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    assert_eq!(
        trailers.get("x-trailer").map(|v| v.as_bytes()),
        Some(&b"t"[..])
    );
    assert_eq!(collected.to_bytes(), "hello, world");
    // The chunked bodies left the connection reusable.
    let (_, _, body) = get(&c, &p.url("/"), &[]).await;
    assert_eq!(body, "ok");
    assert_eq!(raw.conns.load(Ordering::SeqCst), 1);

    let (st, _, body) = get(&c, &p.url("/eof"), &[]).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "until the end"));
    let (st, _, body) = get(&c, &p.url("/split"), &[]).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "hello"));
    assert!(p.stop().await);
}

/// The upstream's hop-by-hop fields stay on its side, whether `Connection` names only
/// `keep-alive` or other fields too; the connection is kept for the next request.
#[tokio::test]
async fn hop_by_hop_response_fields_stay_upstream() {
    let raw = raw_upstream().await;
    let p = proxy_to(&raw).await;
    let c = client();
    for path in ["/hop", "/hop-named", "/hop"] {
        let (st, h, body) = get(&c, &p.url(path), &[]).await;
        assert_eq!((st.as_u16(), body.as_str()), (200, "ok"), "{path}");
        assert_eq!(h.get("x-kept").map(|v| v.as_bytes()), Some(&b"yes"[..]));
        for gone in ["keep-alive", "x-secret"] {
            assert!(!h.contains_key(gone), "{path}: {gone} reached the client");
        }
        let connection = h
            .get("connection")
            .map(|v| v.as_bytes().to_ascii_lowercase());
        assert!(
            connection.as_ref().is_none_or(|v| v == b"keep-alive"),
            "{path}: connection {connection:?}"
        );
    }
    assert_eq!(
        raw.conns.load(Ordering::SeqCst),
        1,
        "one upstream connection"
    );
    p.stop().await;
}

#[tokio::test]
async fn interim_answers_are_skipped_and_head_has_no_body() {
    let raw = raw_upstream().await;
    let p = proxy_to(&raw).await;
    let c = client();
    let (st, _, body) = get(&c, &p.url("/continue"), &[]).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "ok"));
    let (st, h, body) = send(&c, "HEAD", &p.url("/head"), &[], Bytes::new()).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, ""));
    assert_eq!(h["content-length"], "100");
    // HEAD's answer has no body however long it says it is: the next request on the
    // same connection reads its own answer.
    let (_, _, body) = get(&c, &p.url("/"), &[]).await;
    assert_eq!(body, "ok");
    assert_eq!(raw.conns.load(Ordering::SeqCst), 1);
    assert!(p.stop().await);
}

#[tokio::test]
async fn a_keep_alive_connection_the_upstream_dropped_is_not_used() {
    let raw = raw_upstream().await;
    let p = proxy_to(&raw).await;
    let c = client();
    let (st, _, _) = send(&c, "POST", &p.url("/close-after"), &[], Bytes::from("x")).await;
    assert_eq!(st.as_u16(), 200);
    // The upstream closed the idle connection; a POST (never retried once sent) must
    // go out on a new one.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (st, _, body) = send(&c, "POST", &p.url("/"), &[], Bytes::from("y")).await;
    assert_eq!((st.as_u16(), body.as_str()), (200, "ok"));
    assert_eq!(raw.conns.load(Ordering::SeqCst), 2);
    assert!(p.stop().await);
}

/// The client gets the body its length says and nothing after it; a connection with
/// bytes left over is not used again (they would be read as the next answer's head).
#[tokio::test]
async fn bytes_past_a_bodys_length_are_dropped_with_their_connection() {
    let raw = raw_upstream().await;
    let p = proxy_to(&raw).await;
    let c = client();
    for path in ["/extra", "/"] {
        let (st, h, body) = get(&c, &p.url(path), &[]).await;
        assert_eq!((st.as_u16(), body.as_str()), (200, "ok"), "{path}");
        assert_eq!(h["content-length"], "2", "{path}");
    }
    assert_eq!(raw.conns.load(Ordering::SeqCst), 2);
    // An answer that ends where its length says leaves the connection to the next.
    let (_, _, body) = get(&c, &p.url("/"), &[]).await;
    assert_eq!(body, "ok");
    assert_eq!(raw.conns.load(Ordering::SeqCst), 2);
    assert!(p.stop().await);
}

/// A length as large as a `u64` goes: the head is relayed, and the body, which breaks
/// off, ends the client's connection (never a crash of the connection's task).
#[tokio::test]
async fn the_largest_length_is_relayed_and_its_short_body_cuts_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let raw = raw_upstream().await;
    let p = proxy_to(&raw).await;
    let mut s = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET /huge-length HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("the connection ended")
        .ok();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    assert!(
        got.contains("content-length: 18446744073709551615"),
        "{got:?}"
    );
    assert!(p.stop().await);
}

#[tokio::test]
async fn an_invalid_head_is_a_502() {
    let raw = raw_upstream().await;
    let p = proxy_to(&raw).await;
    let (st, _, _) = get(&client(), &p.url("/bad-length"), &[]).await;
    assert_eq!(st.as_u16(), 502);
    assert!(p.stop().await);
}

#[tokio::test]
async fn an_answer_before_the_upload_ends_reaches_the_client() {
    let raw = raw_upstream().await;
    let p = proxy_to(&raw).await;
    // One piece of the body, then nothing more for as long as the test runs.
    let first = futures_util::stream::iter([Ok::<_, hyper::Error>(Frame::data(Bytes::from(
        "x".repeat(1000),
    )))]);
    let body = BodyExt::boxed(StreamBody::new(
        first.chain(futures_util::stream::pending()),
    ));
    let req = http::Request::post(p.url("/early"))
        .header("content-length", "1000000")
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client().request(req))
        .await
        .expect("an answer while the upload is still open")
        .expect("response");
    assert_eq!(resp.status().as_u16(), 413);
    let body = resp.into_body().collect().await.map(|b| b.to_bytes());
    assert_eq!(body.ok().as_deref(), Some(&b"big!"[..]));
    assert!(p.stop().await);
}

#[tokio::test]
async fn an_upstream_answering_while_it_reads_gets_the_whole_body() {
    let raw = raw_upstream().await;
    let p = proxy_to(&raw).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let pieces = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, hyper::Error>(Frame::data(b)), rx))
    });
    let req = http::Request::post(p.url("/duplex"))
        .header("content-length", "10")
        .body(BodyExt::boxed(StreamBody::new(pieces)))
        .unwrap();
    let c = client();
    let pending = tokio::spawn(async move { c.request(req).await });
    tx.send(Bytes::from("hello"))
        .await
        .expect("first piece taken");
    let within = Duration::from_secs(5);
    let resp = tokio::time::timeout(within, pending)
        .await
        .expect("the head arrives while the upload is open")
        .expect("task")
        .expect("response");
    assert_eq!(resp.status().as_u16(), 200);
    let mut body = resp.into_body();
    let mut echoed = Vec::new();
    // The first piece comes back before the second is sent: the upload goes on after
    // the upstream's early answer, and both directions move at once.
    while echoed.len() < 5 {
        let frame = tokio::time::timeout(within, body.frame())
            .await
            .expect("echo of the first piece")
            .expect("a frame")
            .expect("no error");
        echoed.extend_from_slice(frame.data_ref().map_or(&b""[..], |d| &d[..]));
    }
    assert_eq!(echoed, b"hello");
    tx.send(Bytes::from("world"))
        .await
        .expect("second piece taken");
    drop(tx);
    let rest = tokio::time::timeout(within, body.collect())
        .await
        .expect("the rest of the echo")
        .expect("body");
    echoed.extend_from_slice(&rest.to_bytes());
    assert_eq!(echoed, b"helloworld");
    assert!(p.stop().await);
}

#[tokio::test]
async fn a_body_of_unknown_length_goes_up_chunked_with_its_trailers() {
    let raw = raw_upstream().await;
    let p = proxy_to(&raw).await;
    // Three pieces, then trailers; no Content-Length, so the client sends it chunked too.
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
    let frames = [
        Frame::data(Bytes::from(vec![b'a'; 3000])),
        Frame::data(Bytes::from(vec![b'b'; 20_000])),
        Frame::data(Bytes::from_static(b"c")),
        Frame::trailers(trailers),
    ];
    let body = StreamBody::new(futures_util::stream::iter(
        frames.map(Ok::<_, hyper::Error>),
    ));
    // hyper sends only the trailer fields its message declares.
    let req = http::Request::post(p.url("/upload"))
        .header("trailer", "x-checksum")
        .body(BodyExt::boxed(body))
        .unwrap();
    let resp = client().request(req).await.expect("response");
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.into_body().collect().await.map(|b| b.to_bytes());
    assert_eq!(
        text.ok().as_deref(),
        Some(&b"23001 bytes; trailers: x-checksum: abc"[..])
    );
    assert!(p.stop().await);
}

#[tokio::test]
async fn bytes_right_after_a_101_reach_the_client() {
    let raw = raw_upstream().await;
    let p = proxy_to(&raw).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nhost: chat\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    // The 101's head, then the upstream's first bytes, then an echo of ours.
    let mut got = Vec::new();
    while !got.windows(5).any(|w| w == b"HELLO") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("the upstream's first bytes arrive")
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .expect("echo")
        .unwrap();
    assert_eq!(&echo, b"ping");
    drop(s);
    assert!(p.stop().await);
}
