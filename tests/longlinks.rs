//! Long links: WebSocket routed on handshake markers, relayed both ways, sticky for life,
//! re-homed on purpose after a reload, counted exactly, closed last in a drain.
// Tests run on runtimes with tokio's time driver and may use its timers.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(p: &Proxy, path: &str, headers: &[(&str, &str)]) -> Ws {
    let mut req = format!("ws://{}{}", p.addr(), path)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("handshake");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

async fn roundtrip(ws: &mut Ws, text: &str) -> Option<String> {
    ws.send(Message::text(text)).await.ok()?;
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => Some(t.to_string()),
        _ => None,
    }
}

/// Waits until the server side closes the link (a Close frame, EOF or an error).
async fn closed_within(ws: &mut Ws, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return false,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

const RULES: &str = "\
version: a
rules:
  - name: gray-users
    when: { uid: { in: [1, 2] } }
    route: gray
";

#[tokio::test]
async fn websocket_is_routed_on_handshake_markers_and_relayed() {
    let p = setup_ws("", RULES).await;
    let mut g = connect(&p, "/im", &[("xdw-kefu-uid", "1")]).await;
    let mut s = connect(&p, "/im", &[("xdw-kefu-uid", "9")]).await;
    // Browsers cannot set headers on a handshake: cookie and query parameter work too.
    let mut c = connect(&p, "/im", &[("cookie", "xdw-kefu-uid=2")]).await;
    let mut q = connect(&p, "/im?xdw-kefu-uid=2", &[]).await;
    for i in 0..3 {
        assert_eq!(
            roundtrip(&mut g, &format!("m{i}")).await.as_deref(),
            Some(&*format!("gray:m{i}"))
        );
        assert_eq!(roundtrip(&mut s, "x").await.as_deref(), Some("stable:x"));
    }
    assert_eq!(roundtrip(&mut c, "c").await.as_deref(), Some("gray:c"));
    assert_eq!(roundtrip(&mut q, "q").await.as_deref(), Some("gray:q"));
    let gauge = "graylane_websocket_connections{listener=\"im\",pool=\"gray\",service=\"chat\"}";
    assert_eq!(metric(&p, gauge).await, 3.0);
    let stable_gauge =
        "graylane_websocket_connections{listener=\"im\",pool=\"stable\",service=\"chat\"}";
    assert_eq!(metric(&p, stable_gauge).await, 1.0);
    assert_eq!(
        metric(
            &p,
            "graylane_requests_total{code=\"1xx\",listener=\"im\",pool=\"gray\",service=\"chat\"}"
        )
        .await,
        3.0
    );
    // Close from the client side: the gauge goes back down exactly.
    g.close(None).await.unwrap();
    c.close(None).await.unwrap();
    drop((g, c));
    assert!(
        eventually(Duration::from_secs(3), || async {
            metric(&p, gauge).await == 1.0
        })
        .await
    );
    q.close(None).await.unwrap();
    drop(q);
    assert!(
        eventually(Duration::from_secs(3), || async {
            metric(&p, gauge).await == 0.0
        })
        .await
    );
    assert_eq!(metric(&p, stable_gauge).await, 1.0);
    drop(s);
    assert!(
        eventually(Duration::from_secs(3), || async {
            metric(&p, stable_gauge).await == 0.0
        })
        .await
    );
    p.stop().await;
}

#[tokio::test]
async fn idle_long_links_outlive_the_http_idle_timeout() {
    let p = setup_ws("timeouts: { idle: 300ms }\n", RULES).await;
    let mut ws = connect(&p, "/im", &[("xdw-kefu-uid", "1")]).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        roundtrip(&mut ws, "still").await.as_deref(),
        Some("gray:still")
    );
    p.stop().await;
}

#[tokio::test]
async fn long_link_idle_closes_quiet_links() {
    let p = setup_ws("timeouts: { long_link_idle: 400ms }\n", RULES).await;
    let mut ws = connect(&p, "/im", &[("xdw-kefu-uid", "1")]).await;
    assert_eq!(roundtrip(&mut ws, "a").await.as_deref(), Some("gray:a"));
    assert!(
        closed_within(&mut ws, Duration::from_secs(3)).await,
        "idle link was not closed"
    );
    p.stop().await;
}

#[tokio::test]
async fn reload_rehomes_only_the_moved_user() {
    let p = setup_ws(
        "long_links: { rehome_grace: 200ms, rehome_spread: 0 }\n",
        RULES,
    )
    .await;
    let mut moved = connect(&p, "/im", &[("xdw-kefu-uid", "1")]).await;
    let mut kept = connect(&p, "/im", &[("xdw-kefu-uid", "2")]).await;
    let mut stable = connect(&p, "/im", &[("xdw-kefu-uid", "3")]).await;
    assert_eq!(roundtrip(&mut moved, "a").await.as_deref(), Some("gray:a"));
    // Narrow the gray scope: uid 1 leaves gray.
    std::fs::write(
        p.rules_path(),
        "version: b\nrules:\n  - name: gray-users\n    when: { uid: { in: [2] } }\n    route: gray\n",
    )
    .unwrap();
    let (st, _) = admin_post(&p, "/reload", &[]).await;
    assert_eq!(st.as_u16(), 200);
    assert!(
        closed_within(&mut moved, Duration::from_secs(3)).await,
        "moved user's link stayed open"
    );
    // The others were not touched.
    assert_eq!(roundtrip(&mut kept, "k").await.as_deref(), Some("gray:k"));
    assert_eq!(
        roundtrip(&mut stable, "s").await.as_deref(),
        Some("stable:s")
    );
    let series = "graylane_long_links_rehomed_total{from=\"gray\",service=\"chat\",to=\"stable\"}";
    assert_eq!(metric(&p, series).await, 1.0);
    // Reconnecting lands in the new pool.
    let mut again = connect(&p, "/im", &[("xdw-kefu-uid", "1")]).await;
    assert_eq!(
        roundtrip(&mut again, "b").await.as_deref(),
        Some("stable:b")
    );
    p.stop().await;
}

#[tokio::test]
async fn rehome_grace_zero_never_closes() {
    let p = setup_ws("long_links: { rehome_grace: 0 }\n", RULES).await;
    let mut ws = connect(&p, "/im", &[("xdw-kefu-uid", "1")]).await;
    std::fs::write(p.rules_path(), "rules: []\n").unwrap();
    let (st, _) = admin_post(&p, "/reload", &[]).await;
    assert_eq!(st.as_u16(), 200);
    // The decision changed (gray -> stable), yet the link stays where it is. (That 0 is
    // "never" and not the 30 s default is checked in config's unit tests.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(roundtrip(&mut ws, "x").await.as_deref(), Some("gray:x"));
    let series = "graylane_long_links_rehomed_total{from=\"gray\",service=\"chat\",to=\"stable\"}";
    assert_eq!(metric(&p, series).await, 0.0);
    p.stop().await;
}

#[tokio::test]
async fn non_101_answers_are_relayed_as_responses() {
    // A plain HTTP upstream answers the handshake with 200: no tunnel, a normal response.
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let p = spawn_proxy(&simple_config(stable.addr, gray.addr, ""), RULES).await;
    let req = format!("ws://{}/im", p.addr())
        .into_client_request()
        .unwrap();
    let err = tokio_tungstenite::connect_async(req)
        .await
        .expect_err("no upgrade");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status().as_u16(), 200)
        }
        other => panic!("unexpected {other:?}"),
    }
    // The upstream saw the Upgrade header.
    assert_eq!(stable.last().headers["upgrade"], "websocket");
    p.stop().await;
}

#[tokio::test]
async fn drain_closes_long_links_last() {
    let (ws_stable, ws_gray) = (
        spawn_ws_upstream("stable").await,
        spawn_ws_upstream("gray").await,
    );
    let http = spawn_upstream("http").await;
    let cfg = config_yaml(
        &format!(
            "  - name: chat\n    match: {{ path_prefix: /im }}\n    pools:\n      stable: {{ endpoints: [\"{ws_stable}\"] }}\n      gray: {{ endpoints: [\"{ws_gray}\"] }}\n  - name: api\n    match: {{ path_prefix: /slow }}\n    pools:\n      stable: {{ endpoints: [\"{}\"] }}\n",
            http.addr
        ),
        "timeouts: { drain: 5s }\n",
    );
    let mut p = spawn_proxy(&cfg, RULES).await;
    let mut ws = connect(&p, "/im", &[("xdw-kefu-uid", "1")]).await;
    assert_eq!(roundtrip(&mut ws, "a").await.as_deref(), Some("gray:a"));
    let slow = {
        let url = p.url("/slow?ms=1500");
        tokio::spawn(async move { get(&client(), &url, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.begin_stop();
    // While an HTTP request is still in flight, the link keeps relaying.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!slow.is_finished());
    assert_eq!(roundtrip(&mut ws, "b").await.as_deref(), Some("gray:b"));
    let (st, _, body) = slow.await.unwrap();
    assert_eq!((st.as_u16(), body.as_str()), (200, "http"));
    // Then the link is closed promptly, not after the 5 s drain limit.
    assert!(closed_within(&mut ws, Duration::from_secs(3)).await);
    let handle = p.handle.take().unwrap();
    assert!(handle.await.unwrap());
}

/// A raw upstream: answers any handshake with 101, echoes until the client half-closes,
/// then sends "bye" and closes.
async fn raw_upgrade_upstream() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(b[0]);
        }
        let _ = s
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
            .await;
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = s.write_all(&buf[..n]).await;
                }
            }
        }
        let _ = s.write_all(b"bye").await;
        let _ = s.shutdown().await;
    });
    addr
}

#[tokio::test]
async fn half_close_propagates_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = raw_upgrade_upstream().await;
    let p = spawn_proxy(&simple_config(up, up, ""), RULES).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(
        b"GET /im HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "closed during the handshake"
        );
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(b"hello").await.unwrap();
    // Half-close: we are done sending, but still read what the upstream says.
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("upstream's close did not reach the client")
        .unwrap();
    assert_eq!(rest, b"hellobye");
    p.stop().await;
}

/// A WebSocket link is still a client connection: it counts in `connections` and against
/// `max_connections` for its whole life, not only until hyper hands it to the tunnel.
#[tokio::test]
async fn open_links_count_against_max_connections() {
    let p = setup_ws("limits: { max_connections: 2 }\n", RULES).await;
    let gauge = "graylane_connections{listener=\"im\"}";
    let rejected = "graylane_connections_rejected_total{listener=\"im\"}";
    let mut a = connect(&p, "/chat", &[]).await;
    let mut b = connect(&p, "/chat", &[]).await;
    assert_eq!(roundtrip(&mut a, "a").await.as_deref(), Some("stable:a"));
    assert_eq!(roundtrip(&mut b, "b").await.as_deref(), Some("stable:b"));
    assert_eq!(metric(&p, gauge).await, 2.0);

    // A third connection is over the limit: closed at once, counted.
    let third = format!("ws://{}/chat", p.addr());
    assert!(tokio_tungstenite::connect_async(third).await.is_err());
    assert_eq!(metric(&p, rejected).await, 1.0);

    // Closing the links frees their places.
    drop(a);
    drop(b);
    assert!(
        eventually(Duration::from_secs(3), || async {
            metric(&p, gauge).await == 0.0
        })
        .await
    );
    let mut c = connect(&p, "/chat", &[]).await;
    assert_eq!(roundtrip(&mut c, "c").await.as_deref(), Some("stable:c"));
    p.stop().await;
}
