//! Listeners, the accept loop, per-connection limits and timeouts, and the drain.
//!
//! hyper serves each connection (HTTP/1.1 and h2c via `auto::Builder`). Around it sits a
//! small watchdog per connection that implements the timeouts of SPEC §3 in one place:
//! `request_header` (→ 408 and close), `idle` (close), so hyper's own header timer is off.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::proxy::{self, ConnCtx, Shared};
use crate::reload::Reloader;

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
}

/// A server with every socket bound, ready to run. Binding first lets callers (tests,
/// `demo`) learn the real addresses of `:0` binds before serving.
///
/// With `workers: N`, each worker is a single-threaded runtime on its own OS thread that
/// accepts from its own handle (a dup) of each listening socket, and a connection's whole
/// life (client side, upstream side, timers) stays on that thread: no work-stealing
/// bookkeeping and no cross-thread wake-ups on the request path. Worker 0 is the caller's
/// runtime, which also runs the admin API, reloads and health checks. One socket is bound
/// per listener (no `SO_REUSEPORT`), so a second instance on the same port fails to start
/// instead of quietly taking a share of the connections.
pub struct Server {
    shared: Arc<Shared>,
    reloader: Arc<Reloader>,
    /// Worker 0's listeners, registered with the caller's runtime.
    listeners: Vec<TcpListener>,
    /// `[worker - 1][listener]`: registered later, inside each worker's own runtime.
    extra: Vec<Vec<std::net::TcpListener>>,
    admin: TcpListener,
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

impl Server {
    /// Binds every traffic listener (once per worker) and the admin listener.
    pub async fn bind(shared: Arc<Shared>, reloader: Arc<Reloader>) -> Result<Self, ServerError> {
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
        let admin_addr = shared.config.admin.bind;
        let admin = TcpListener::bind(admin_addr)
            .await
            .map_err(|source| ServerError::Bind {
                name: "admin".into(),
                addr: admin_addr,
                source,
            })?;
        Ok(Self {
            shared,
            reloader,
            listeners,
            extra,
            admin,
        })
    }

    /// The bound address of each traffic listener, in config order.
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    /// Serves until `shutdown` resolves, then drains (SPEC §8). Returns `true` when every
    /// in-flight request finished within `timeouts.drain`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> bool {
        let Server {
            shared,
            reloader,
            listeners,
            extra,
            admin,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let builder = Arc::new(http_builder(&shared));
        let upstream_tasks = shared.upstreams.spawn_tasks(&shared.config);
        // Open connections per listener, shared by its workers (`max_connections`).
        let open: Vec<Arc<AtomicUsize>> = listeners
            .iter()
            .map(|_| Arc::new(AtomicUsize::new(0)))
            .collect();

        let mut accepts = JoinSet::new();
        for (idx, l) in listeners.into_iter().enumerate() {
            accepts.spawn(accept_loop(
                l,
                idx,
                shared.clone(),
                builder.clone(),
                stop_rx.clone(),
                open[idx].clone(),
            ));
        }
        let mut workers = Vec::new();
        for (w, socks) in extra.into_iter().enumerate() {
            let (shared, builder, stop_rx, open) = (
                shared.clone(),
                builder.clone(),
                stop_rx.clone(),
                open.clone(),
            );
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<bool>();
            let (finish_tx, finish_rx) = tokio::sync::oneshot::channel::<()>();
            let spawned = std::thread::Builder::new()
                .name(format!("graylane-worker-{}", w + 1))
                .spawn(move || {
                    worker(
                        w + 1,
                        socks,
                        shared,
                        builder,
                        stop_rx,
                        open,
                        done_tx,
                        finish_rx,
                    )
                });
            match spawned {
                Ok(h) => workers.push((h, done_rx, finish_tx)),
                Err(e) => tracing::error!(error = %e, "cannot start worker thread"),
            }
        }
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let admin_task = tokio::spawn(crate::admin::serve(
            admin,
            shared.clone(),
            reloader.clone(),
            admin_stop_rx,
        ));

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
        if !shared
            .links
            .wait_empty(std::time::Duration::from_secs(5))
            .await
        {
            tracing::warn!(open = shared.links.len(), "long links still open at exit");
        }
        for (h, finish_tx) in finishers {
            let _ = finish_tx.send(());
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        reloader.stop();
        for t in upstream_tasks {
            t.abort();
        }
        let _ = admin_stop_tx.send(true);
        let _ = admin_task.await;
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

/// One extra worker: a current-thread runtime serving its share of every listener. It
/// reports when its HTTP connections are drained, then keeps running (its long links
/// live on this runtime) until told to finish.
#[allow(clippy::too_many_arguments)]
fn worker(
    id: usize,
    socks: Vec<std::net::TcpListener>,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stop_rx: watch::Receiver<bool>,
    open: Vec<Arc<AtomicUsize>>,
    done_tx: tokio::sync::oneshot::Sender<bool>,
    finish_rx: tokio::sync::oneshot::Receiver<()>,
) {
    crate::worker::set_id(id);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
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
                    accepts.spawn(accept_loop(
                        l,
                        idx,
                        shared.clone(),
                        builder.clone(),
                        stop_rx.clone(),
                        open[idx].clone(),
                    ));
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
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(shared.config.limits.max_header_bytes);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(
            u32::try_from(shared.config.limits.max_header_bytes).unwrap_or(u32::MAX),
        )
        .max_concurrent_streams(1024);
    b
}

/// Accepts until told to stop, then drains this listener's connections. Returns whether
/// they all finished within the drain time.
async fn accept_loop(
    listener: TcpListener,
    idx: usize,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut stop: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
) -> bool {
    let mut conns = JoinSet::new();
    let lm = shared.metrics.listener(idx);
    let max = shared.config.limits.max_connections;
    let lcfg = &shared.config.listeners[idx];
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
                tokio::time::sleep(Duration::from_millis(50)).await;
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
        open.fetch_add(1, Ordering::Relaxed);
        lm.connections.inc();
        let ctx = ConnCtx {
            listener: idx,
            peer,
            peer_value: crate::proxy::headers::peer_value(peer.ip()),
            trusted: lcfg.trusts(peer.ip()),
            slot: Arc::new(ConnSlot {
                open: open.clone(),
                gauge: lm.connections.clone(),
            }),
        };
        match &shared.tls[idx] {
            None => {
                conns.spawn(serve_conn(
                    stream,
                    ctx,
                    shared.clone(),
                    builder.clone(),
                    stop.clone(),
                    accepted,
                ));
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                let (shared, builder, stop) = (shared.clone(), builder.clone(), stop.clone());
                conns.spawn(async move {
                    // The handshake counts against the head timeout: a client that opens
                    // TLS and stalls is cut like one that stalls on a plaintext head.
                    let limit = shared.config.timeouts.request_header;
                    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            serve_conn(tls_stream, ctx, shared, builder, stop, accepted).await
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
    match tokio::time::timeout(drain, all_done).await {
        Ok(()) => true,
        Err(_) => {
            conns.abort_all();
            while conns.join_next().await.is_some() {}
            false
        }
    }
}

/// One client connection counted against `max_connections` (and in `connections`). The
/// connection and every long link it became hold it: a WebSocket outlives hyper's
/// connection task, and must keep counting until the tunnel closes. Dropping the last
/// holder decrements, however it ends (including abort at the end of the drain).
#[derive(Debug)]
pub struct ConnSlot {
    open: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

// === connection ===

const NONE: u64 = u64::MAX;

/// What the watchdog needs to know about a connection, updated by the IO wrapper (reads)
/// and the service (requests in flight). Atomics because hyper's h2 streams run on other
/// tasks; all accesses are `Relaxed`: the watchdog re-checks before acting.
#[derive(Debug)]
struct ConnState {
    base: Instant,
    /// Requests whose response is not finished yet.
    in_flight: AtomicUsize,
    /// When the current request head started (ms since `base`), or `NONE`.
    head_start: AtomicU64,
    /// Whether any byte of the current head has arrived (408 only then).
    head_bytes: AtomicBool,
    /// Last time a request finished or bytes arrived (ms since `base`).
    last_activity: AtomicU64,
    /// The client spoke the HTTP/2 preface: no head timeouts, only idle.
    h2: AtomicBool,
    /// Set by the watchdog: the IO wrapper answers 408 and fails the read.
    timed_out: AtomicBool,
}

impl ConnState {
    /// `accepted`: when the connection was accepted, the start of its first head's time.
    fn new(accepted: Instant) -> Self {
        Self {
            base: accepted,
            in_flight: AtomicUsize::new(0),
            // A connection's first request is timed from accept.
            head_start: AtomicU64::new(0),
            head_bytes: AtomicBool::new(false),
            last_activity: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        crate::millis(self.base.elapsed())
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }
}

/// Marks a request in flight until dropped (with the response body).
#[derive(Debug)]
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(s: Arc<ConnState>) -> Self {
        s.in_flight.fetch_add(1, Ordering::Relaxed);
        s.head_start.store(NONE, Ordering::Relaxed);
        s.head_bytes.store(false, Ordering::Relaxed);
        Self(s)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        self.0.last_activity.store(now, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The client socket as hyper sees it: notes when bytes arrive, and answers 408 itself
/// when the watchdog says the head took too long (hyper never writes one).
struct ConnIo<S> {
    stream: S,
    state: Arc<ConnState>,
    /// How many bytes of the HTTP/2 preface's first four (`PRI `) have been matched so
    /// far; 4 = HTTP/2, `usize::MAX` = decided (not HTTP/2). The preface may arrive split.
    preface: usize,
}

const PREFACE_START: &[u8; 4] = b"PRI ";

const TIMEOUT_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 35\r\nconnection: close\r\n\r\ngraylane: request header timed out\n";

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ConnIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.timed_out.load(Ordering::Relaxed) {
            if this.state.head_bytes.load(Ordering::Relaxed)
                && !this.state.h2.load(Ordering::Relaxed)
            {
                // Best effort: the socket buffer is empty while we wait for a head, so
                // this small write does not block in practice.
                let _ = Pin::new(&mut this.stream).poll_write(cx, TIMEOUT_408);
                let _ = Pin::new(&mut this.stream).poll_flush(cx);
            }
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            let s = &this.state;
            let now = s.now_ms();
            s.last_activity.store(now, Ordering::Relaxed);
            if this.preface < PREFACE_START.len() {
                for &b in &buf.filled()[before..] {
                    if this.preface == PREFACE_START.len() {
                        break;
                    }
                    if b == PREFACE_START[this.preface] {
                        this.preface += 1;
                    } else {
                        this.preface = usize::MAX;
                        break;
                    }
                }
                if this.preface == PREFACE_START.len() {
                    s.h2.store(true, Ordering::Relaxed);
                }
            }
            if s.in_flight.load(Ordering::Relaxed) == 0 {
                if s.head_start.load(Ordering::Relaxed) == NONE {
                    s.head_start.store(now, Ordering::Relaxed);
                }
                s.head_bytes.store(true, Ordering::Relaxed);
            }
        }
        r
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ConnIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        crate::sockio::poll_write_coalesced(&mut self.get_mut().stream, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// What the watchdog decided.
enum Watch {
    /// Check again at this instant.
    Until(Instant),
    /// The head took too long: 408 (HTTP/1) and close.
    HeadTimeout,
    /// Idle too long: close.
    Idle,
}

fn watch(state: &ConnState, shared: &Shared) -> Watch {
    let t = &shared.config.timeouts;
    let now = state.now_ms();
    if state.in_flight.load(Ordering::Relaxed) > 0 {
        return Watch::Until(state.at(now) + t.idle);
    }
    let h2 = state.h2.load(Ordering::Relaxed);
    let head = state.head_start.load(Ordering::Relaxed);
    if !h2 && head != NONE {
        let due = head + crate::millis(t.request_header);
        return if now >= due {
            Watch::HeadTimeout
        } else {
            Watch::Until(state.at(due))
        };
    }
    let due = state.last_activity.load(Ordering::Relaxed) + crate::millis(t.idle);
    if now >= due {
        Watch::Idle
    } else {
        Watch::Until(state.at(due))
    }
}

async fn serve_conn<S>(
    stream: S,
    ctx: ConnCtx,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut stop: watch::Receiver<bool>,
    accepted: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::new(accepted));
    let io = ConnIo {
        stream,
        state: state.clone(),
        preface: 0,
    };
    let peer = ctx.peer;
    let ctx = Arc::new(ctx);
    let svc_shared = shared.clone();
    let svc_state = state.clone();
    let service = service_fn(move |req| {
        let shared = svc_shared.clone();
        let ctx = ctx.clone();
        let inflight = InFlight::new(svc_state.clone());
        async move {
            let resp = proxy::handle(req, &shared, &ctx).await;
            Ok::<_, std::convert::Infallible>(resp.map(|b| b.with_guard(inflight)))
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    // The watchdog is not told when a request ends or a head starts (that would cost a
    // wake-up per request); it looks again at least this often, so a deadline that moved
    // earlier is noticed at most this late.
    let t = &shared.config.timeouts;
    let recheck = (t.request_header.min(t.idle) / 4)
        .clamp(Duration::from_millis(100), Duration::from_millis(2500));
    loop {
        match watch(&state, &shared) {
            Watch::Until(at) => sleep.as_mut().reset(at.min(Instant::now() + recheck)),
            Watch::HeadTimeout => {
                tracing::debug!(%peer, "request header timeout");
                state.timed_out.store(true, Ordering::Relaxed);
                // Let hyper poll the read once more: ConnIo answers 408 and fails it.
                let _ = tokio::time::timeout(Duration::from_millis(100), conn.as_mut()).await;
                return;
            }
            Watch::Idle => {
                if stopping {
                    return;
                }
                conn.as_mut().graceful_shutdown();
                // Give an h2 GOAWAY a moment to go out, then close regardless.
                let _ = tokio::time::timeout(Duration::from_millis(100), conn.as_mut()).await;
                return;
            }
        }
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with error");
                }
                return;
            }
            _ = &mut sleep => {}
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
