//! Plain HTTP/1 reads of the proxies: readiness, and graylane's WebSocket gauge, which
//! must agree with the links this run holds open.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One GET on a fresh connection, bounded at 5 s so a proxy that stops answering fails
/// the run instead of hanging it.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let go = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), go)
        .await
        .map_err(|_| format!("{addr} did not answer within 5 s"))?
}

/// The gauge in total and per pool: a link counted under the wrong pool is a routing bug
/// even when the total is right.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Gauge {
    pub(crate) total: u64,
    pub(crate) gray: u64,
    pub(crate) stable: u64,
}

/// Sums `graylane_websocket_connections` over its label sets.
pub(crate) async fn websocket_gauge(admin: SocketAddr) -> Result<Gauge, String> {
    let (status, body) = http_get(admin, "/metrics").await?;
    if status != 200 {
        return Err(format!("/metrics answered {status}"));
    }
    let mut g = Gauge::default();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("graylane_websocket_connections{") else {
            continue;
        };
        let v = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        g.total += v;
        if rest.contains("pool=\"gray\"") {
            g.gray += v;
        } else if rest.contains("pool=\"stable\"") {
            g.stable += v;
        }
    }
    Ok(g)
}

/// Polls the gauge until it reads `want` or `within` passes; returns the last reading.
pub(crate) async fn wait_gauge(admin: SocketAddr, want: u64, within: Duration) -> Option<u64> {
    let deadline = Instant::now() + within;
    loop {
        let got = websocket_gauge(admin).await.ok().map(|g| g.total);
        if got == Some(want) || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
