//! The traffic listeners: binding, the accept loop of each worker, `max_connections`, and
//! the drain of SPEC §8 (listeners close, connections finish, long links close last).
//!
//! - `conn`: one client connection: who serves it, and the watchdog that implements
//!   `request_header` (408) and `idle`.
//! - `lean`: graylane's own HTTP/1.1 loop, which serves requests without a body and hands
//!   a connection to hyper at the first request it leaves to hyper.
//! - `streams`: hyper's HTTP/2 server with a connection's streams polled in that
//!   connection's task, not a task each.
//! - `tls`: TLS termination, certificates re-read on SIGHUP.
//!
//! With `workers: N`, each worker is a single-threaded runtime on its own OS thread that
//! accepts from its own handle (a dup) of each listening socket, and a connection's whole
//! life (client side, upstream side, timers) stays on that thread: no work-stealing
//! bookkeeping and no cross-thread wake-ups on the request path. Worker 0 is the caller's
//! runtime, which also runs the admin API, reloads and health checks. One socket is bound
//! per listener (no `SO_REUSEPORT`), so a second instance on the same port fails to start
//! instead of quietly taking a share of the connections.

mod conn;
mod date;
mod gate;
mod h2own;
mod lean;
#[cfg(test)]
pub(crate) use lean::received;
mod sockio;
pub(crate) mod tls;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::Config;
use crate::proxy::headers::peer_value;
use crate::state::{ConnCtx, ConnSlot, Shared};
use tls::{TlsError, TlsTerminator};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not bind.
    #[error("cannot bind listener {name} on {addr}: {source}")]
    Bind {
        /// Listener name (`admin` for the admin listener).
        name: String,
        /// Address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A listener's certificate or key cannot be used.
    #[error("listener {listener}: {error}")]
    Tls {
        /// Listener name.
        listener: String,
        /// What is wrong with the files (in the message, so not also a `source`: a
        /// `{:#}` chain would print it twice).
        error: TlsError,
    },
}

/// What every accept loop of every worker shares.
struct Serving {
    shared: Arc<Shared>,
    builder: auto::Builder<TokioExecutor>,
    /// TLS per listener (`None` = plaintext), indexed like `config.listeners`.
    tls: Arc<[Option<TlsTerminator>]>,
    /// Open connections per listener, shared by its workers (`max_connections`).
    open: Vec<Arc<AtomicUsize>>,
}

/// The traffic listeners with every socket bound, ready to run. Binding first lets
/// callers (tests, `demo`) learn the real addresses of `:0` binds before serving.
pub(crate) struct Server {
    shared: Arc<Shared>,
    tls: Arc<[Option<TlsTerminator>]>,
    /// Worker 0's listeners, registered with the caller's runtime.
    listeners: Vec<TcpListener>,
    /// `[worker - 1][listener]`: registered later, inside each worker's own runtime.
    extra: Vec<Vec<std::net::TcpListener>>,
}

fn bind_std(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

/// Loads every TLS listener's certificate and key; `run` and `check` refuse a config
/// whose files cannot be used.
pub(crate) fn load_tls(cfg: &Config) -> Result<Vec<Option<TlsTerminator>>, ServerError> {
    cfg.listeners
        .iter()
        .map(|l| {
            l.tls
                .as_ref()
                .map(TlsTerminator::load)
                .transpose()
                .map_err(|error| ServerError::Tls {
                    listener: l.name.clone(),
                    error,
                })
        })
        .collect()
}

impl Server {
    /// Loads the certificates and binds every traffic listener (once per worker).
    pub(crate) fn bind(shared: Arc<Shared>) -> Result<Self, ServerError> {
        let tls: Arc<[Option<TlsTerminator>]> = load_tls(&shared.config)?.into();
        let workers = shared.config.workers.max(1);
        let mut listeners = Vec::with_capacity(shared.config.listeners.len());
        let mut extra: Vec<Vec<std::net::TcpListener>> = (1..workers).map(|_| Vec::new()).collect();
        for l in &shared.config.listeners {
            let err = |source| ServerError::Bind {
                name: l.name.clone(),
                addr: l.bind,
                source,
            };
            let first = bind_std(l.bind).map_err(err)?;
            for w in extra.iter_mut() {
                w.push(first.try_clone().map_err(err)?);
            }
            listeners.push(TcpListener::from_std(first).map_err(err)?);
        }
        Ok(Self {
            shared,
            tls,
            listeners,
            extra,
        })
    }

    /// The bound address of each traffic listener, in config order.
    pub(crate) fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Re-reads every listener's certificate and key (SIGHUP). A bad file keeps the old
    /// certificate serving and is logged with the reason.
    pub(crate) fn tls_reloader(&self) -> tls::Reloader {
        tls::Reloader::new(self.shared.clone(), self.tls.clone())
    }

    /// Serves until `shutdown` resolves, then drains (SPEC §8): `/readyz` turns 503, the
    /// listeners close, connections finish within `timeouts.drain`, long links close
    /// last. Returns `true` when every in-flight request finished in time.
    pub(crate) async fn run(self, shutdown: impl Future<Output = ()>) -> bool {
        let Server {
            shared,
            tls,
            listeners,
            extra,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let serving = Arc::new(Serving {
            builder: http_builder(&shared),
            open: listeners
                .iter()
                .map(|_| Arc::new(AtomicUsize::new(0)))
                .collect(),
            tls,
            shared: shared.clone(),
        });

        let mut accepts = JoinSet::new();
        for (idx, l) in listeners.into_iter().enumerate() {
            accepts.spawn(accept_loop(l, idx, serving.clone(), stop_rx.clone()));
        }
        let mut workers = Vec::new();
        for (w, socks) in extra.into_iter().enumerate() {
            let (serving, stop_rx) = (serving.clone(), stop_rx.clone());
            let (done_tx, done_rx) = oneshot::channel::<bool>();
            let (finish_tx, finish_rx) = oneshot::channel::<()>();
            let spawned = std::thread::Builder::new()
                .name(format!("graylane-worker-{}", w + 1))
                .spawn(move || worker(w + 1, socks, serving, stop_rx, done_tx, finish_rx));
            match spawned {
                Ok(h) => workers.push((h, done_rx, finish_tx)),
                Err(e) => tracing::error!(error = %e, "cannot start worker thread"),
            }
        }

        shutdown.await;
        tracing::info!("shutting down: draining connections");
        shared.draining.store(true, Ordering::SeqCst);
        let _ = stop_tx.send(true);

        let mut clean = true;
        while let Some(r) = accepts.join_next().await {
            if let Ok(ok) = r {
                clean &= ok;
            }
        }
        let mut finishers = Vec::new();
        for (h, done_rx, finish_tx) in workers {
            clean &= done_rx.await.unwrap_or(false);
            finishers.push((h, finish_tx));
        }
        // Long links close last, after in-flight HTTP requests.
        shared.links.close_all();
        if !shared.links.wait_empty(Duration::from_secs(5)).await {
            tracing::warn!(open = shared.links.len(), "long links still open at exit");
        }
        for (h, finish_tx) in finishers {
            let _ = finish_tx.send(());
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        if clean {
            tracing::info!("drained; exiting");
        } else {
            tracing::warn!(
                "drain time ({:?}) ran out; remaining connections were closed",
                shared.config.timeouts.drain
            );
        }
        clean
    }
}

/// Serves one client connection over any byte stream, as a plaintext listener `listener`
/// would: the connection fuzz target drives it over memory.
pub(crate) async fn serve_one<S>(shared: Arc<Shared>, listener: usize, stream: S, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let serving = Serving {
        builder: http_builder(&shared),
        tls: Arc::from(Vec::new()),
        open: vec![Arc::new(AtomicUsize::new(0))],
        shared,
    };
    let lm = serving.shared.metrics.listener(listener);
    let ctx = ConnCtx {
        listener,
        peer,
        peer_value: peer_value(peer.ip()),
        trusted: serving.shared.config.listeners[listener].trusts(peer.ip()),
        slot: Arc::new(ConnSlot::new(
            serving.open[0].clone(),
            lm.connections.clone(),
        )),
    };
    let (_stop_tx, stop_rx) = watch::channel(false);
    conn::serve(stream, ctx, &serving, stop_rx, Instant::now(), false).await;
}

/// One extra worker: a current-thread runtime serving its share of every listener. It
/// reports when its HTTP connections are drained, then keeps running (its long links
/// live on this runtime) until told to finish.
fn worker(
    id: usize,
    socks: Vec<std::net::TcpListener>,
    serving: Arc<Serving>,
    stop_rx: watch::Receiver<bool>,
    done_tx: oneshot::Sender<bool>,
    finish_rx: oneshot::Receiver<()>,
) {
    crate::worker::set_id(id);
    // No time driver: timers are `crate::timer`'s (see `runtime` in main.rs).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = id, error = %e, "cannot start worker runtime");
            let _ = done_tx.send(false);
            return;
        }
    };
    rt.block_on(async move {
        // Ends with the runtime, when the worker does.
        tokio::spawn(crate::upstream::h1::sweep_idle());
        let mut accepts = JoinSet::new();
        for (idx, sock) in socks.into_iter().enumerate() {
            match TcpListener::from_std(sock) {
                Ok(l) => {
                    accepts.spawn(accept_loop(l, idx, serving.clone(), stop_rx.clone()));
                }
                Err(e) => tracing::error!(worker = id, error = %e, "cannot register listener"),
            }
        }
        let mut clean = true;
        while let Some(r) = accepts.join_next().await {
            clean &= r.unwrap_or(false);
        }
        let _ = done_tx.send(clean);
        let _ = finish_rx.await;
    });
}

fn http_builder(shared: &Shared) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(crate::timer::HyperTimer)
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(shared.config.limits.max_header_bytes);
    b.http2()
        .timer(crate::timer::HyperTimer)
        .max_header_list_size(h2_header_list(shared))
        .max_concurrent_streams(H2_MAX_STREAMS);
    b
}

/// Streams one HTTP/2 client may have open at once.
const H2_MAX_STREAMS: u32 = 1024;

/// The header list an HTTP/2 client may send: the HTTP/1.1 head's limit.
fn h2_header_list(shared: &Shared) -> u32 {
    u32::try_from(shared.config.limits.max_header_bytes).unwrap_or(u32::MAX)
}

/// Accepts until told to stop, then drains this listener's connections. Returns whether
/// they all finished within the drain time.
async fn accept_loop(
    listener: TcpListener,
    idx: usize,
    serving: Arc<Serving>,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let mut conns = JoinSet::new();
    let shared = &serving.shared;
    let lm = shared.metrics.listener(idx);
    let max = shared.config.limits.max_connections;
    let lcfg = &shared.config.listeners[idx];
    let open = &serving.open[idx];
    loop {
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(listener = %lcfg.name, error = %e, "accept failed");
                crate::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= max {
            lm.rejected.inc();
            drop(stream);
            continue;
        }
        // A connection's first head is timed from here, also across a TLS handshake.
        let accepted = Instant::now();
        let _ = stream.set_nodelay(true);
        let ctx = ConnCtx {
            listener: idx,
            peer,
            peer_value: peer_value(peer.ip()),
            trusted: lcfg.trusts(peer.ip()),
            slot: Arc::new(ConnSlot::new(open.clone(), lm.connections.clone())),
        };
        let serving = serving.clone();
        let stop = stop.clone();
        match serving.tls[idx].as_ref().map(TlsTerminator::acceptor) {
            None => {
                conns.spawn(async move {
                    conn::serve(stream, ctx, &serving, stop, accepted, false).await;
                });
            }
            Some(acceptor) => {
                conns.spawn(async move {
                    // The handshake counts against the head timeout: a client that opens
                    // TLS and stalls is cut like one that stalls on a plaintext head.
                    let limit = serving.shared.config.timeouts.request_header;
                    match crate::timer::timeout(limit, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                            conn::serve(tls_stream, ctx, &serving, stop, accepted, h2).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %ctx.peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %ctx.peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    // New connections are refused from here on.
    drop(listener);
    let drain = shared.config.timeouts.drain;
    let all_done = async { while conns.join_next().await.is_some() {} };
    match crate::timer::timeout(drain, all_done).await {
        Ok(()) => true,
        Err(_) => {
            conns.abort_all();
            while conns.join_next().await.is_some() {}
            false
        }
    }
}
