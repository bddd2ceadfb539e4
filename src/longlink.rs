//! Long links (WebSocket, SPEC §4): the tunnel relay, and the registry that lets a
//! reload move a link into its new pool on purpose and a drain close links last.
//!
//! A link keeps the pool its handshake was routed to. After a reload, every open link's
//! handshake is decided again; a link whose pool changed is closed after
//! `long_links.rehome_grace`, so its client reconnects into the right pool. The registry
//! is touched at link open, close and reload only, never per frame or per HTTP request.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderMap;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::markers::Markers;
use crate::proxy::{Outcome, Shared};

/// Relay buffer per direction, allocated for the link's life. IM frames are small; small
/// buffers keep an idle link's memory low (the target is < 16 KiB per idle link, see
/// `benches/ws_scale.sh`); a large frame just takes a few more reads.
const RELAY_BUF: usize = 2048;

/// What re-deciding a link's handshake needs.
#[derive(Debug)]
pub struct Handshake {
    /// Listener index.
    pub listener: usize,
    /// Host without port, as routed.
    pub host: Option<String>,
    /// Path and query of the handshake.
    pub path: String,
    /// The handshake's headers (after marker stripping for untrusted peers).
    pub headers: HeaderMap,
    /// The markers read at the handshake.
    pub markers: Markers,
    /// Service index.
    pub service: usize,
    /// Pool index within the service that the link actually uses.
    pub pool: usize,
}

struct Entry {
    handshake: Arc<Handshake>,
    close: Arc<Notify>,
    /// A re-home is scheduled; set so a second reload does not schedule another.
    rehoming: bool,
}

/// The open long links.
#[derive(Default)]
pub struct Links {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
    /// Woken when the last link closes (drain waits on it).
    empty: Notify,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("open", &self.len())
            .finish_non_exhaustive()
    }
}

/// Unregisters a link when its relay ends, however it ends.
pub struct LinkGuard {
    links: Arc<Shared>,
    id: u64,
    gauge: prometheus::IntGauge,
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        self.gauge.dec();
        let links = &self.links.links;
        let now_empty = match links.open.lock() {
            Ok(mut m) => {
                m.remove(&self.id);
                m.is_empty()
            }
            Err(_) => false,
        };
        if now_empty {
            links.empty.notify_waiters();
        }
    }
}

impl Links {
    /// Number of open links.
    pub fn len(&self) -> usize {
        self.open.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no link is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers an open link; the returned guard and notifier belong to its relay.
    pub fn register(shared: &Arc<Shared>, hs: Handshake) -> (LinkGuard, Arc<Notify>) {
        let links = &shared.links;
        let id = links.next.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        let gauge = shared
            .metrics
            .route(hs.listener, hs.service, hs.pool)
            .websockets()
            .clone();
        gauge.inc();
        if let Ok(mut m) = links.open.lock() {
            m.insert(
                id,
                Entry {
                    handshake: Arc::new(hs),
                    close: close.clone(),
                    rehoming: false,
                },
            );
        }
        (
            LinkGuard {
                links: shared.clone(),
                id,
                gauge,
            },
            close,
        )
    }

    /// Closes every open link now (the end of a drain).
    pub fn close_all(&self) {
        if let Ok(m) = self.open.lock() {
            for e in m.values() {
                e.close.notify_one();
            }
        }
    }

    /// Waits until no link is open, at most `within`.
    pub async fn wait_empty(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let notified = self.empty.notified();
            if self.is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_empty();
            }
        }
    }
}

/// The pool index (within the service) a handshake would get now: the live rules, then
/// the guard and pool health, as for a new request (without the guard's probe share).
fn decide_again(shared: &Shared, hs: &Handshake) -> Option<usize> {
    let live = shared.live.load();
    match shared.decide(
        &live,
        hs.listener,
        hs.host.as_deref(),
        &hs.path,
        &hs.headers,
        &hs.markers,
    ) {
        Outcome::Routed {
            service,
            pool,
            fallback,
            ..
        } if service == hs.service => Some(shared.effective_pool(service, pool, fallback).0),
        _ => None,
    }
}

/// After a reload: schedule a re-home for every link whose decision changed.
pub fn on_reload(shared: &Arc<Shared>) {
    let Some(grace) = shared.config.long_links.rehome_grace else {
        return;
    };
    // Decide outside the lock: with thousands of links, new handshakes must not wait for
    // the whole scan.
    let candidates: Vec<(u64, Arc<Handshake>)> = match shared.links.open.lock() {
        Ok(m) => m
            .iter()
            .filter(|(_, e)| !e.rehoming)
            .map(|(id, e)| (*id, e.handshake.clone()))
            .collect(),
        Err(_) => return,
    };
    let moved: Vec<u64> = candidates
        .into_iter()
        .filter(|(_, hs)| decide_again(shared, hs).is_some_and(|p| p != hs.pool))
        .map(|(id, _)| id)
        .collect();
    let mut due = Vec::with_capacity(moved.len());
    if let Ok(mut m) = shared.links.open.lock() {
        for id in moved {
            if let Some(e) = m.get_mut(&id) {
                if !e.rehoming {
                    e.rehoming = true;
                    due.push(id);
                }
            }
        }
    }
    for id in due {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            rehome(&shared, id);
        });
    }
}

/// At the end of the grace: close the link if its decision is still different (a user
/// moved out and back within the grace keeps their link).
fn rehome(shared: &Shared, id: u64) {
    let Ok(mut m) = shared.links.open.lock() else {
        return;
    };
    let Some(e) = m.get_mut(&id) else {
        return;
    };
    e.rehoming = false;
    let hs = e.handshake.clone();
    match decide_again(shared, &hs) {
        Some(to) if to != hs.pool => {
            let svc = &shared.config.services[hs.service];
            tracing::info!(
                service = %svc.name,
                from = %svc.pools[hs.pool].name,
                to = %svc.pools[to].name,
                "closing long link so it reconnects into its new pool"
            );
            shared
                .metrics
                .service(hs.service)
                .rehomed(hs.pool, to)
                .inc();
            e.close.notify_one();
        }
        _ => {}
    }
}

/// Relays bytes both ways until either side closes, the link is closed on purpose, or it
/// idles past `idle`. Half-close propagates: EOF from one side shuts down writing to the
/// other, and the relay goes on until both directions are done.
pub async fn relay(
    client: Upgraded,
    upstream: crate::upstream::h1::Tunnel,
    close: Arc<Notify>,
    idle: Option<Duration>,
    _guard: LinkGuard,
) {
    let last = Arc::new(AtomicU64::new(0));
    let base = Instant::now();
    let mut c = Activity {
        io: TokioIo::new(client),
        last: last.clone(),
        base,
    };
    let mut u = Activity {
        io: upstream,
        last: last.clone(),
        base,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut c, &mut u, RELAY_BUF, RELAY_BUF);
    tokio::pin!(copy);
    let idle_check = async {
        match idle {
            None => std::future::pending::<()>().await,
            Some(limit) => loop {
                let seen = base + Duration::from_millis(last.load(Ordering::Relaxed));
                let due = seen + limit;
                if Instant::now() >= due {
                    return;
                }
                tokio::time::sleep_until(due).await;
            },
        }
    };
    tokio::select! {
        r = &mut copy => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "long link ended with an error");
            }
        }
        _ = close.notified() => {}
        _ = idle_check => {
            tracing::debug!("long link idle past long_link_idle; closing");
        }
    }
}

/// Notes the time of the last byte in either direction, for `long_link_idle`.
struct Activity<T> {
    io: T,
    last: Arc<AtomicU64>,
    base: Instant,
}

impl<T> Activity<T> {
    fn touch(&self) {
        self.last
            .store(crate::millis(self.base.elapsed()), Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
