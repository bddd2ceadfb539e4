//! The load generator's side of the links: opening them with a bounded number of
//! handshakes in flight, the closed-loop echo phase that also checks routing, and closing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::run::Target;

type Ws = WebSocketStream<TcpStream>;

pub(crate) struct Link {
    pub(crate) pool: &'static str,
    ws: Ws,
}

pub(crate) struct Opened {
    pub(crate) links: Vec<Link>,
    pub(crate) errors: Vec<String>,
    pub(crate) took: Duration,
}

/// Opens a link per `(uid, pool)`, `concurrency` handshakes at a time: unbounded, the
/// proxy's accept queue overflows and the dropped SYNs' 1 s retransmits would be timed as
/// the proxy's handshake cost.
pub(crate) async fn open_many(
    plan: &[(u64, &'static str)],
    concurrency: usize,
    target: Target,
    cfg: WebSocketConfig,
) -> Opened {
    let start = Instant::now();
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut set = JoinSet::new();
    for &(uid, pool) in plan {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let addr = target.addr(pool);
        set.spawn(async move {
            let r = open_link(addr, uid, cfg).await;
            drop(permit);
            r.map(|ws| Link { pool, ws })
        });
    }
    let mut links = Vec::with_capacity(plan.len());
    let mut errors = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(l)) => links.push(l),
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("task: {e}")),
        }
    }
    Opened {
        links,
        errors,
        took: start.elapsed(),
    }
}

async fn open_link(addr: SocketAddr, uid: u64, cfg: WebSocketConfig) -> Result<Ws, String> {
    let go = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let mut req = format!("ws://{addr}/im")
            .into_client_request()
            .map_err(|e| e.to_string())?;
        req.headers_mut()
            .insert("xdw-kefu-uid", http::HeaderValue::from(uid));
        let (ws, resp) = tokio_tungstenite::client_async_with_config(req, tcp, Some(cfg))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(format!("handshake answered {}", resp.status()));
        }
        Ok(ws)
    };
    tokio::time::timeout(Duration::from_secs(15), go)
        .await
        .map_err(|_| "handshake took over 15 s".to_owned())?
}

#[derive(Default)]
pub(crate) struct EchoStats {
    /// Round-trips completed within the phase.
    pub(crate) count: u64,
    /// Replies that came from the other pool's upstream.
    pub(crate) wrong_pool: u64,
    pub(crate) errors: u64,
    /// Round-trip times in microseconds.
    latencies_us: Vec<u32>,
}

impl EchoStats {
    fn merge(&mut self, o: EchoStats) {
        self.count += o.count;
        self.wrong_pool += o.wrong_pool;
        self.errors += o.errors;
        self.latencies_us.extend(o.latencies_us);
    }

    pub(crate) fn latency(&self) -> String {
        let mut l = self.latencies_us.clone();
        if l.is_empty() {
            return "n/a".into();
        }
        l.sort_unstable();
        let at = |q: f64| l[((l.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
        format!("{:.0} / {:.0} / {:.0} ms", at(0.5), at(0.99), at(1.0))
    }
}

pub(crate) struct Echoed {
    pub(crate) links: Vec<Link>,
    pub(crate) stats: EchoStats,
}

/// Closed loop on every link at once: send a short text frame, wait for its echo, repeat,
/// until `len` has passed. Round-trips that finish after the deadline are not counted.
pub(crate) async fn echo(links: Vec<Link>, len: Duration) -> Echoed {
    let deadline = Instant::now() + len;
    let mut set = JoinSet::new();
    for (i, mut link) in links.into_iter().enumerate() {
        set.spawn(async move {
            let mut st = EchoStats::default();
            let mut seq = 0u64;
            while Instant::now() < deadline {
                seq += 1;
                let msg = format!("{i}:{seq}");
                let sent = Instant::now();
                if link.ws.send(Message::text(msg.clone())).await.is_err() {
                    st.errors += 1;
                    break;
                }
                let reply = tokio::time::timeout_at(deadline + Duration::from_secs(5), async {
                    loop {
                        match link.ws.next().await {
                            Some(Ok(Message::Text(t))) => return Some(t),
                            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                            Some(Ok(_)) => continue,
                        }
                    }
                })
                .await;
                let done = Instant::now();
                match reply {
                    Ok(Some(t)) => {
                        let from_own_pool = t
                            .as_str()
                            .strip_prefix(link.pool)
                            .and_then(|r| r.strip_prefix(':'))
                            == Some(msg.as_str());
                        if !from_own_pool {
                            st.wrong_pool += 1;
                        } else if done <= deadline {
                            st.count += 1;
                            let us = (done - sent).as_micros().min(u32::MAX as u128) as u32;
                            st.latencies_us.push(us);
                        }
                    }
                    _ => {
                        st.errors += 1;
                        break;
                    }
                }
            }
            (link, st)
        });
    }
    let mut links = Vec::with_capacity(set.len());
    let mut stats = EchoStats::default();
    while let Some(r) = set.join_next().await {
        match r {
            Ok((l, st)) => {
                links.push(l);
                stats.merge(st);
            }
            Err(_) => stats.errors += 1,
        }
    }
    Echoed { links, stats }
}

/// Closes every link with a Close frame and waits (briefly) for the other side's answer.
pub(crate) async fn close_all(links: Vec<Link>) {
    let mut set = JoinSet::new();
    for mut link in links {
        set.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let _ = link.ws.close(None).await;
                while let Some(Ok(_)) = link.ws.next().await {}
            })
            .await;
        });
    }
    while set.join_next().await.is_some() {}
}
