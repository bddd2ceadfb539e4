//! Long links (WebSocket, SPEC §4): the tunnel relay, and the registry that lets a
//! reload move a link into its new pool on purpose and a drain close links last.
//!
//! A link keeps the pool its handshake was routed to. After a reload, every open link's
//! handshake is decided again; a link whose pool changed is closed after
//! `long_links.rehome_grace`, so its client reconnects into the right pool. The registry
//! is touched at link open, close and reload only, never per frame or per HTTP request.

//!
//! - this file: the registry of open links, and re-homing after a reload;
//! - `relay`: the tunnel itself, from the upstream's `101` to the close.

mod frames;
mod relay;

pub(crate) use relay::open;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::markers::Markers;

/// The WebSocket close code of a re-home: "service restart", reconnect (RFC 6455 §7.4,
/// IANA registry): the client should come back, into its new pool.
pub(crate) const SERVICE_RESTART: u16 = 1012;
/// The close code of a drain or an idle link: "going away".
pub(crate) const GOING_AWAY: u16 = 1001;

/// How a relay is told to close, and with which code.
#[derive(Debug, Default)]
pub(crate) struct Closer {
    code: std::sync::atomic::AtomicU16,
    notify: Notify,
}

impl Closer {
    /// Asks the relay to close with `code` (the first request wins).
    fn close(&self, code: u16) {
        let _ = self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.notify.notify_one();
    }

    /// Resolves with the code once a close is asked for.
    pub(crate) async fn closed(&self) -> u16 {
        loop {
            let notified = self.notify.notified();
            match self.code.load(Ordering::Acquire) {
                0 => notified.await,
                code => return code,
            }
        }
    }
}

/// What re-deciding a link's handshake needs.
#[derive(Debug)]
pub(crate) struct Handshake {
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
    close: Arc<Closer>,
    /// A re-home is scheduled; set so a second reload does not schedule another.
    rehoming: bool,
}

/// The open long links. Cloning shares the registry: every relay's guard holds one.
#[derive(Default, Clone)]
pub(crate) struct Links(Arc<Registry>);

#[derive(Default)]
struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
    /// Woken when the last link closes (drain waits on it).
    empty: Notify,
}

/// What re-homing needs from the rest of the proxy. `state::Shared` implements it, so
/// this module decides nothing itself and depends on no routing code.
pub(crate) trait Rehome: Send + Sync + 'static {
    /// The registry of open links.
    fn links(&self) -> &Links;
    /// How long a link whose decision changed stays open (`None`: never re-homed).
    fn rehome_grace(&self) -> Option<Duration>;
    /// The window after the grace over which the closes of one reload are spread.
    fn rehome_spread(&self) -> Duration;
    /// The pool a handshake would get now; `None` when it no longer reaches its service.
    fn pool_now(&self, hs: &Handshake) -> Option<usize>;
    /// Counts (and logs) a link closed to move from `hs.pool` to `to`.
    fn rehomed(&self, hs: &Handshake, to: usize);
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("open", &self.len())
            .finish_non_exhaustive()
    }
}

/// Unregisters a link when its relay ends, however it ends.
pub(crate) struct LinkGuard {
    links: Links,
    id: u64,
    gauge: prometheus::IntGauge,
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        self.gauge.dec();
        let links = &self.links.0;
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
    pub(crate) fn len(&self) -> usize {
        self.0.open.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no link is open.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers an open link counted in `gauge`; the returned guard and notifier belong
    /// to its relay.
    pub(crate) fn register(
        &self,
        hs: Handshake,
        gauge: prometheus::IntGauge,
    ) -> (LinkGuard, Arc<Closer>) {
        let links = &self.0;
        let id = links.next.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Closer::default());
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
                links: self.clone(),
                id,
                gauge,
            },
            close,
        )
    }

    /// Closes every open link now (the end of a drain).
    pub(crate) fn close_all(&self) {
        if let Ok(m) = self.0.open.lock() {
            for e in m.values() {
                e.close.close(GOING_AWAY);
            }
        }
    }

    /// Waits until no link is open, at most `within`.
    pub(crate) async fn wait_empty(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let notified = self.0.empty.notified();
            if self.is_empty() {
                return true;
            }
            if crate::timer::timeout_at(deadline, notified).await.is_err() {
                return self.is_empty();
            }
        }
    }
}

/// After a reload: schedule a re-home for every link whose decision changed.
pub(crate) fn on_reload<S: Rehome>(shared: &Arc<S>) {
    let Some(grace) = shared.rehome_grace() else {
        return;
    };
    // Decide outside the lock: with thousands of links, new handshakes must not wait for
    // the whole scan.
    let candidates: Vec<(u64, Arc<Handshake>)> = match shared.links().0.open.lock() {
        Ok(m) => m
            .iter()
            .filter(|(_, e)| !e.rehoming)
            .map(|(id, e)| (*id, e.handshake.clone()))
            .collect(),
        Err(_) => return,
    };
    let moved: Vec<u64> = candidates
        .into_iter()
        .filter(|(_, hs)| shared.pool_now(hs).is_some_and(|p| p != hs.pool))
        .map(|(id, _)| id)
        .collect();
    let mut due = Vec::with_capacity(moved.len());
    if let Ok(mut m) = shared.links().0.open.lock() {
        for id in moved {
            if let Some(e) = m.get_mut(&id) {
                if !e.rehoming {
                    e.rehoming = true;
                    due.push(id);
                }
            }
        }
    }
    // Spread over `rehome_spread` after the grace, so a large staff group moved by one
    // edit does not reconnect in the same millisecond.
    let spread = crate::millis(shared.rehome_spread());
    for id in due {
        let shared = shared.clone();
        let jitter = if spread == 0 {
            0
        } else {
            crate::worker::random() % spread
        };
        tokio::spawn(async move {
            crate::timer::sleep(grace + Duration::from_millis(jitter)).await;
            rehome(&*shared, id);
        });
    }
}

/// At the end of the grace: close the link if its decision is still different (a user
/// moved out and back within the grace keeps their link).
fn rehome<S: Rehome>(shared: &S, id: u64) {
    let Ok(mut m) = shared.links().0.open.lock() else {
        return;
    };
    let Some(e) = m.get_mut(&id) else {
        return;
    };
    e.rehoming = false;
    let hs = e.handshake.clone();
    match shared.pool_now(&hs) {
        Some(to) if to != hs.pool => {
            shared.rehomed(&hs, to);
            e.close.close(SERVICE_RESTART);
        }
        _ => {}
    }
}
