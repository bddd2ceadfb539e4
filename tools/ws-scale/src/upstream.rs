//! The WebSocket echo upstreams, in this process: one per pool, each tagging its replies
//! with its pool name so the load generator can tell where a link was routed.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Small buffers on both ends: this process holds twice as many sockets as the proxy.
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// A WebSocket upstream that answers every text frame with `{name}:{text}`.
pub(crate) async fn echo_upstream(
    name: &'static str,
    cfg: WebSocketConfig,
) -> Result<SocketAddr, String> {
    // A deep accept queue: a dropped SYN costs the proxy a 1 s retransmit, which is its
    // default connect timeout.
    let l = tokio::net::TcpSocket::new_v4()
        .and_then(|s| {
            s.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            s.listen(4096)
        })
        .map_err(|e| format!("upstream bind: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        loop {
            let s = match l.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    eprintln!("ws-scale: {name} upstream accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(s, Some(cfg)).await
                else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    let reply = match m {
                        Message::Text(t) => Message::text(format!("{name}:{t}")),
                        Message::Binary(b) => Message::Binary(b),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        return;
                    }
                }
                // Flush the answer to the client's close (tungstenite queued it) and hang up.
                let _ = ws.close(None).await;
            });
        }
    });
    Ok(addr)
}
