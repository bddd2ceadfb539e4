//! TLS termination: ALPN h2 and http/1.1, per-stream routing over h2, certificate reload
//! on SIGHUP-equivalent without dropping open connections, bad files keep the old cert.
// Tests run on runtimes with tokio's time driver and may use its timers.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Cert {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn make_cert(name: &str) -> Cert {
    let ck =
        rcgen::generate_simple_self_signed(vec![name.to_owned(), "localhost".to_owned()]).unwrap();
    Cert {
        cert_pem: ck.cert.pem(),
        key_pem: ck.key_pair.serialize_pem(),
        der: ck.cert.der().clone(),
    }
}

fn connector(trust: &[&Cert], alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in trust {
        roots.add(c.der.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    TlsConnector::from(Arc::new(cfg))
}

async fn tls_proxy(cert: &Cert) -> (Upstream, Upstream, Proxy) {
    tls_proxy_with(cert, "").await
}

async fn tls_proxy_with(cert: &Cert, extra: &str) -> (Upstream, Upstream, Proxy) {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.crt"), &cert.cert_pem).unwrap();
    std::fs::write(dir.path().join("c.key"), &cert.key_pem).unwrap();
    let cfg = simple_config(stable.addr, gray.addr, extra).replace(
        "    bind: \"127.0.0.1:0\"\n",
        "    bind: \"127.0.0.1:0\"\n    tls: { cert: c.crt, key: c.key }\n",
    );
    std::fs::write(dir.path().join("graylane.yaml"), cfg).unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        "rules:\n  - name: g\n    when: { uid: { in: [1] } }\n    route: gray\n",
    )
    .unwrap();
    let p = start_in(dir).await.expect("proxy starts");
    (stable, gray, p)
}

type TlsIo = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

async fn tls_connect(p: &Proxy, trust: &Cert, alpn: &[&[u8]]) -> (TlsIo, Option<Vec<u8>>) {
    let tcp = TcpStream::connect(p.addr()).await.unwrap();
    let tls = connector(&[trust], alpn)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let proto = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
    (TokioIo::new(tls), proto)
}

/// Carries `Host` too: hyper's HTTP/1.1 client sends the absolute form without one, and
/// an HTTP/1.1 request without `Host` is a 400 (RFC 9112 §3.2).
fn req(uid: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get("https://localhost/x")
        .header("host", "localhost")
        .header("xdw-kefu-uid", uid)
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn h2_over_tls_routes_each_stream() {
    let cert = make_cert("console.test");
    let (_s, gray, p) = tls_proxy(&cert).await;
    let (io, proto) = tls_connect(&p, &cert, &[b"h2", b"http/1.1"]).await;
    assert_eq!(proto.as_deref(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    // A gray and a stable user multiplexed on one connection each reach their pool.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut s = sender.clone();
        tasks.push(tokio::spawn(async move {
            let uid = if i % 2 == 0 { "1" } else { "2" };
            let resp = s.send_request(req(uid)).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (uid, String::from_utf8_lossy(&body).into_owned())
        }));
    }
    for t in tasks {
        let (uid, body) = t.await.unwrap();
        assert_eq!(body, if uid == "1" { "gray" } else { "stable" });
    }
    assert_eq!(gray.last().headers["x-forwarded-proto"], "https");
    p.stop().await;
}

#[tokio::test]
async fn http1_over_tls() {
    let cert = make_cert("console.test");
    let (_s, _g, p) = tls_proxy(&cert).await;
    let (io, proto) = tls_connect(&p, &cert, &[b"http/1.1"]).await;
    assert_eq!(proto.as_deref(), Some(&b"http/1.1"[..]));
    let (mut s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let resp = s.send_request(req("1")).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "gray");
    p.stop().await;
}

/// SPEC §3: a connection's first head must arrive within `request_header` of *accept*;
/// a slow TLS handshake uses up that budget instead of getting a second one after it.
#[tokio::test]
async fn the_first_head_is_timed_from_accept_across_the_tls_handshake() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cert = make_cert("console.test");
    let (stable, _g, p) = tls_proxy_with(&cert, "timeouts: { request_header: 2s }").await;
    let accepted = std::time::Instant::now();
    let tcp = TcpStream::connect(p.addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut tls = connector(&[&cert], &[b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake within request_header");
    // Part of a head, then nothing: the 408 is due 2 s after accept, not after the
    // handshake (which would be 3.5 s).
    tls.write_all(b"GET /slow-head HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(6), tls.read_to_end(&mut out)).await;
    let took = accepted.elapsed();
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(took < Duration::from_millis(3200), "408 after {took:?}");
    assert!(stable.seen().is_empty());
    p.stop().await;
}

/// A client of one TLS version, HTTP/1.1, with a session store of its own.
fn connector_for(cert: &Cert, version: &'static rustls::SupportedProtocolVersion) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(cfg))
}

/// A returning client resumes its TLS session (a ticket), TLS 1.3 and TLS 1.2 alike, even
/// after 150 other clients and a SIGHUP (which also reloads the rules) came between: a
/// browser reopening the console skips the full handshake. (A stateful session cache of
/// rustls' default 256 entries, 2 per TLS 1.3 client, would have forgotten it.)
#[tokio::test]
async fn returning_clients_resume_their_session() {
    let cert = make_cert("console.test");
    let (_s, _g, p) = tls_proxy(&cert).await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        // One connector, one session store: what a browser keeps between connections.
        let connector = connector_for(&cert, version);
        let mut kinds = Vec::new();
        for uid in ["1", "2"] {
            let tcp = TcpStream::connect(p.addr()).await.unwrap();
            let tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .expect("TLS handshake");
            kinds.push(tls.get_ref().1.handshake_kind());
            let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            let task = tokio::spawn(conn);
            // Reading an answer also reads the tickets the server sent after the handshake.
            let resp = s.send_request(req(uid)).await.unwrap();
            resp.into_body().collect().await.unwrap();
            drop(s);
            let _ = task.await;
            if uid == "1" {
                for _ in 0..150 {
                    let tcp = TcpStream::connect(p.addr()).await.unwrap();
                    let other = connector_for(&cert, version)
                        .connect(ServerName::try_from("localhost").unwrap(), tcp)
                        .await
                        .expect("TLS handshake");
                    drop(other);
                }
                p.tls.reload();
            }
        }
        assert_eq!(
            kinds,
            [
                Some(rustls::HandshakeKind::Full),
                Some(rustls::HandshakeKind::Resumed)
            ],
            "{version:?}"
        );
    }
    p.stop().await;
}

#[tokio::test]
async fn certificate_reload_keeps_open_connections_and_rejects_bad_files() {
    let old = make_cert("console.test");
    let (_s, _g, p) = tls_proxy(&old).await;
    let (io, _) = tls_connect(&p, &old, &[b"http/1.1"]).await;
    let (mut open, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);

    // A broken certificate file: the reload is refused and the old certificate serves.
    std::fs::write(p.dir.path().join("c.crt"), "not a certificate").unwrap();
    p.tls.reload();
    tls_connect(&p, &old, &[b"http/1.1"]).await;

    // A renewed certificate: new connections get it, the open one keeps working.
    let new = make_cert("console.test");
    std::fs::write(p.dir.path().join("c.crt"), &new.cert_pem).unwrap();
    std::fs::write(p.dir.path().join("c.key"), &new.key_pem).unwrap();
    p.tls.reload();
    let (io, _) = tls_connect(&p, &new, &[b"http/1.1"]).await;
    drop(io);
    let tcp = TcpStream::connect(p.addr()).await.unwrap();
    let refused = connector(&[&old], &[b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await;
    assert!(
        refused.is_err(),
        "old certificate still served after reload"
    );
    let resp = open.send_request(req("2")).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "stable");
    p.stop().await;
}

#[tokio::test]
async fn bad_certificate_at_start_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.crt"), "junk").unwrap();
    std::fs::write(dir.path().join("c.key"), "junk").unwrap();
    let cfg = simple_config(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        "",
    )
    .replace(
        "    bind: \"127.0.0.1:0\"\n",
        "    bind: \"127.0.0.1:0\"\n    tls: { cert: c.crt, key: c.key }\n",
    );
    std::fs::write(dir.path().join("graylane.yaml"), cfg).unwrap();
    std::fs::write(dir.path().join("rules.yaml"), "rules: []\n").unwrap();
    let err = start_in(dir).await.err().expect("start fails");
    assert!(
        err.contains("listener im") && err.contains("c.crt"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// A TLS client that pipelines requests and never reads is cut after `idle`, as over
/// plaintext: TLS takes each answer into its buffer, so the wait shows in the flush, and
/// the flush that never ends is a stalled send.
#[tokio::test]
async fn a_tls_client_that_never_reads_is_cut_off_after_idle() {
    // Every request gets 10 KB: a few fill the client's small receive window.
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = up.accept().await {
            tokio::spawn(async move {
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: 10240\r\n\r\n{}",
                    "z".repeat(10240)
                );
                let mut buf = Vec::new();
                while hostile::read_head(&mut s, &mut buf).await.is_some() {
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let cert = make_cert("localhost");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.crt"), &cert.cert_pem).unwrap();
    std::fs::write(dir.path().join("c.key"), &cert.key_pem).unwrap();
    let cfg = simple_config(
        up_addr,
        up_addr,
        "timeouts: { request_header: 1s, idle: 2s }",
    )
    .replace(
        "    bind: \"127.0.0.1:0\"\n",
        "    bind: \"127.0.0.1:0\"\n    tls: { cert: c.crt, key: c.key }\n",
    );
    std::fs::write(dir.path().join("graylane.yaml"), cfg).unwrap();
    std::fs::write(dir.path().join("rules.yaml"), "rules: []\n").unwrap();
    let p = start_in(dir).await.expect("proxy starts");

    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(p.addr()).await.unwrap();
    let mut tls = connector(&[&cert], &[b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let burst = "GET /mid HTTP/1.1\r\nHost: t\r\n\r\n".repeat(1000);
    // The client's own sends may block once graylane stops reading: write in the
    // background and never read.
    let writer = tokio::spawn(async move {
        let _ = tls.write_all(burst.as_bytes()).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(tls);
    });
    let cut = eventually(Duration::from_secs(10), || async {
        metric(&p, "graylane_send_timeouts_total{listener=\"im\"}").await == 1.0
    })
    .await;
    writer.abort();
    assert!(
        cut,
        "the connection of a TLS client that never reads was not cut"
    );
    let open = eventually(Duration::from_secs(3), || async {
        metric(&p, "graylane_connections{listener=\"im\"}").await == 0.0
    })
    .await;
    assert!(open, "the cut connection is still counted open");
}
