//! One client connection: graylane's own loop serves its plain HTTP/1.1 requests (see
//! `lean`), hyper the rest (HTTP/2 over TLS from the start; h2c and HTTP/1.1 requests
//! with a body or an upgrade from where the loop hands over), and a small watchdog beside
//! it implements the timeouts of SPEC §3 in one place:
//! `request_header` (→ 408 and close) and `idle` (close), so hyper's own header timer is
//! off.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use super::gate::Gate;
use super::{lean, Serving};
use crate::error::Refusal;
use crate::http2::frame::PREFACE;
use crate::proxy;
use crate::state::{ConnCtx, Shared};

const NONE: u64 = u64::MAX;

/// What the watchdog needs to know about a connection, updated by the IO wrapper (reads)
/// and the service (requests in flight). Atomics because hyper's h2 streams may run on
/// other tasks (a connection the own loop hands to hyper's server); all
/// accesses are `Relaxed`: the watchdog re-checks before acting.
#[derive(Debug)]
pub(super) struct ConnState {
    /// When the connection was accepted: `at` turns the times below into instants.
    base: Instant,
    /// The coarse clock's milliseconds at `base`. The times below are read from it (see
    /// `crate::clock`): they are noted on every read and every request, and only ever
    /// compared with timeouts of seconds.
    base_ms: u64,
    /// Requests whose response is not finished yet.
    in_flight: AtomicUsize,
    /// When the current request head started (ms since `base`), or `NONE`.
    head_start: AtomicU64,
    /// Whether any byte of the current head has arrived (408 only then).
    head_bytes: AtomicBool,
    /// Last time a request finished or bytes arrived (ms since `base`).
    last_activity: AtomicU64,
    /// The client spoke the HTTP/2 preface: no head timeouts, only idle.
    pub(super) h2: AtomicBool,
    /// Set by the watchdog: the IO wrapper answers 408 and fails the read.
    timed_out: AtomicBool,
    /// Since when a write to the client has been waiting for room (ms since `base`), or
    /// `NONE`: a client that stops reading is cut after `idle` (a send timeout).
    write_stalled: AtomicU64,
    /// The drain asked the connection to end: graylane's own HTTP/1.1 loop closes after
    /// the response in progress, or at once between requests.
    pub(super) stopping: AtomicBool,
    /// That loop waits for a new request with nothing of it read yet (so nothing is in
    /// flight either).
    pub(super) lean_idle: AtomicBool,
}

impl ConnState {
    /// `accepted`: when the connection was accepted, the start of its first head's time.
    pub(super) fn new(accepted: Instant) -> Self {
        Self {
            base: accepted,
            base_ms: crate::clock::coarse_ms().saturating_sub(crate::millis(accepted.elapsed())),
            in_flight: AtomicUsize::new(0),
            // A connection's first request is timed from accept.
            head_start: AtomicU64::new(0),
            head_bytes: AtomicBool::new(false),
            last_activity: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            write_stalled: AtomicU64::new(NONE),
            stopping: AtomicBool::new(false),
            lean_idle: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        crate::clock::coarse_ms().saturating_sub(self.base_ms)
    }

    /// The watchdog's reading: it sleeps until an `Instant` and must find that time
    /// come when it wakes (the coarse clock may not have ticked yet). The times it
    /// compares are within a tick of it.
    fn precise_ms(&self) -> u64 {
        crate::millis(self.base.elapsed())
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    /// Bytes of a new head are here (read earlier, behind a pipelined request): its
    /// `request_header` time runs from now.
    pub(super) fn head_arrived(&self) {
        self.head_start.store(self.now_ms(), Ordering::Relaxed);
        self.head_bytes.store(true, Ordering::Relaxed);
    }
}

/// Marks a request in flight until dropped (with the response body).
#[derive(Debug)]
pub(super) struct InFlight(Arc<ConnState>);

impl InFlight {
    pub(super) fn new(s: Arc<ConnState>) -> Self {
        if s.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            // A stall noted by a flush that later went through is not this request's
            // (with others in flight it may be theirs, and stays).
            s.write_stalled.store(NONE, Ordering::Relaxed);
        }
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
pub(super) struct ConnIo<S> {
    stream: S,
    state: Arc<ConnState>,
    /// How many bytes of the HTTP/2 preface have been matched so far; all of them =
    /// HTTP/2, `usize::MAX` = decided (not HTTP/2). The preface may arrive split; until
    /// it is whole, the head timeout applies to it as to any head.
    preface: usize,
}

/// The `408` a head that took too long gets, written by [`ConnIo`] itself: hyper never
/// writes one.
static TIMEOUT_408: LazyLock<Vec<u8>> = LazyLock::new(|| Refusal::HeadTimeout.to_http1_close());

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
                let _ = Pin::new(&mut this.stream).poll_write(cx, &TIMEOUT_408);
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
            if this.preface < PREFACE.len() {
                for &b in &buf.filled()[before..] {
                    if this.preface == PREFACE.len() {
                        break;
                    }
                    if b == PREFACE[this.preface] {
                        this.preface += 1;
                    } else {
                        this.preface = usize::MAX;
                        break;
                    }
                }
                if this.preface == PREFACE.len() {
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

impl<S> ConnIo<S> {
    /// Notes whether a write went through or waits for the client to read.
    fn note_write<T>(&self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        let s = &self.state;
        if r.is_pending() {
            if s.write_stalled.load(Ordering::Relaxed) == NONE {
                s.write_stalled.store(s.now_ms(), Ordering::Relaxed);
            }
        } else if s.write_stalled.load(Ordering::Relaxed) != NONE {
            s.write_stalled.store(NONE, Ordering::Relaxed);
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
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.note_write(r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = super::sockio::poll_write_coalesced(&mut this.stream, cx, bufs);
        this.note_write(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_flush(cx);
        // Only a flush that waits is noted: a TLS stream takes every write into its
        // buffer and waits in the flush instead. A ready flush clears nothing, since a
        // socket's is always ready and would hide a stalled write.
        if r.is_pending() && this.state.write_stalled.load(Ordering::Relaxed) == NONE {
            this.state
                .write_stalled
                .store(this.state.now_ms(), Ordering::Relaxed);
        }
        r
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
    /// A response made no progress toward the client for `idle`: close.
    SendTimeout,
}

fn watch(state: &ConnState, shared: &Shared) -> Watch {
    let t = &shared.config.timeouts;
    let now = state.precise_ms();
    if state.in_flight.load(Ordering::Relaxed) > 0 {
        // A request in flight may take as long as the upstream needs; only a client that
        // stopped reading what it is sent is cut.
        let stalled = state.write_stalled.load(Ordering::Relaxed);
        if stalled != NONE {
            let due = stalled + crate::millis(t.idle);
            return if now >= due {
                Watch::SendTimeout
            } else {
                Watch::Until(state.at(due))
            };
        }
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

/// Serves one connection until it ends, times out, or the drain closes it. `h2`: TLS
/// negotiated HTTP/2 (ALPN), known before the first byte is read.
pub(super) async fn serve<S>(
    stream: S,
    ctx: ConnCtx,
    serving: &Serving,
    stop: watch::Receiver<bool>,
    accepted: Instant,
    h2: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::new(accepted));
    let io = ConnIo {
        stream,
        state: state.clone(),
        preface: 0,
    };
    let shared = &serving.shared;
    let peer = ctx.peer;
    let listener = ctx.listener;
    let ctx = Arc::new(ctx);
    let svc_shared = shared.clone();
    let svc_state = state.clone();
    let svc_ctx = ctx.clone();
    let respond = move |req| {
        let shared = svc_shared.clone();
        let ctx = svc_ctx.clone();
        let inflight = InFlight::new(svc_state.clone());
        async move {
            let resp = proxy::handle(req, &shared, &ctx).await;
            Ok::<_, std::convert::Infallible>(resp.map(|b| b.with_guard(inflight)))
        }
    };
    let watched = Watched {
        state: &state,
        shared,
        peer,
        listener,
    };
    // graylane's own HTTP/2 server connection (see `h2own`), its streams in this task.
    let h2_ctx = ctx.clone();
    let h2_conn = |io| super::h2own::Conn::new(io, shared.clone(), h2_ctx.clone(), state.clone());
    if h2 {
        let conn = h2_conn(lean::Prefixed::bare(io));
        tokio::pin!(conn);
        watched
            .run(conn, |c| c.get_mut().graceful_shutdown(), stop)
            .await;
    } else {
        // graylane's own loop serves the plain requests; hyper the rest of a connection
        // from the first request the loop leaves to it: h2c with prior knowledge as over
        // TLS, anything else through hyper's server that looks at the version itself.
        let own = lean::serve(io, shared.clone(), ctx, state.clone());
        let make = |io: lean::Prefixed<_>| {
            if io.starts_h2() {
                Handed::H2(h2_conn(io))
            } else {
                Handed::Auto(Box::pin(serving.builder.serve_connection_with_upgrades(
                    TokioIo::new(io),
                    service_fn(respond),
                )))
            }
        };
        let conn = lean::Lean::new(
            own,
            make,
            |c: Pin<&mut Handed<_, _>>| match c.get_mut() {
                Handed::Auto(a) => a.as_mut().graceful_shutdown(),
                Handed::H2(h) => h.graceful_shutdown(),
            },
            state.clone(),
        );
        tokio::pin!(conn);
        watched.run(conn, |c| c.graceful_shutdown(), stop).await;
    }
}

/// What serves a connection that graylane's own HTTP/1.1 loop handed over: graylane's
/// own HTTP/2 connection when the bytes read so far are the HTTP/2 preface (the loop
/// waits for all of it), else hyper's HTTP/1.1-or-2 server (any request the loop leaves
/// to hyper).
pub(super) enum Handed<A, C> {
    /// Boxed: hyper's connection is not `Unpin`; a hand-over happens once per
    /// connection at most.
    Auto(Pin<Box<A>>),
    H2(C),
}

type AnyError = Box<dyn std::error::Error + Send + Sync>;

impl<A, C, E> Future for Handed<A, C>
where
    A: Future<Output = Result<(), E>>,
    E: Into<AnyError>,
    C: Future<Output = Result<(), super::h2own::ConnError>> + Unpin,
{
    type Output = Result<(), AnyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Handed::Auto(a) => a.as_mut().poll(cx).map_err(Into::into),
            Handed::H2(h) => Pin::new(h).poll(cx).map_err(Into::into),
        }
    }
}

/// What woke the watchdog's wait.
enum Woke<E> {
    /// The connection ended, with its error if it failed.
    Ended(Option<E>),
    Timer,
    Stop,
}

/// What the watchdog beside a connection reads.
struct Watched<'a> {
    state: &'a ConnState,
    shared: &'a Shared,
    peer: std::net::SocketAddr,
    listener: usize,
}

impl Watched<'_> {
    /// Drives `conn` (hyper's connection future; `shutdown` starts its graceful end)
    /// while enforcing the timeouts and the drain.
    async fn run<C, E>(
        &self,
        mut conn: Pin<&mut C>,
        shutdown: impl Fn(Pin<&mut C>),
        mut stop: watch::Receiver<bool>,
    ) where
        C: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let Self {
            state,
            shared,
            peer,
            listener,
        } = *self;
        let mut stopping = *stop.borrow();
        if stopping {
            shutdown(conn.as_mut());
        }
        let sleep = crate::timer::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        // The watchdog is not told when a request ends or a head starts (that would cost a
        // wake-up per request); it looks again at least this often, so a deadline that moved
        // earlier is noticed at most this late.
        let t = &shared.config.timeouts;
        let recheck = (t.request_header.min(t.idle) / 4)
            .clamp(Duration::from_millis(100), Duration::from_millis(2500));
        // The timer and the drain signal are looked at only when they woke the task, not
        // on each of the connection's wake-ups (several per request).
        let gate = Gate::new();
        loop {
            match watch(state, shared) {
                Watch::Until(at) => sleep.as_mut().reset(at.min(Instant::now() + recheck)),
                Watch::HeadTimeout => {
                    tracing::debug!(%peer, "request header timeout");
                    state.timed_out.store(true, Ordering::Relaxed);
                    // Let hyper poll the read once more: ConnIo answers 408 and fails it.
                    let _ = crate::timer::timeout(Duration::from_millis(100), conn.as_mut()).await;
                    return;
                }
                Watch::SendTimeout => {
                    tracing::debug!(%peer, "client read nothing for the idle timeout; closing");
                    shared.metrics.listener(listener).send_timeouts.inc();
                    return;
                }
                Watch::Idle => {
                    if stopping {
                        return;
                    }
                    shutdown(conn.as_mut());
                    // Give an h2 GOAWAY a moment to go out, then close regardless.
                    let _ = crate::timer::timeout(Duration::from_millis(100), conn.as_mut()).await;
                    return;
                }
            }
            // A new deadline and a new `changed()`: both polled on the first poll.
            gate.open();
            let mut changed = pin!(stop.changed());
            let woke = poll_fn(|cx| {
                if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                    return Poll::Ready(Woke::Ended(r.err()));
                }
                gate.poll(cx, |cx| {
                    if sleep.as_mut().poll(cx).is_ready() {
                        Poll::Ready(Woke::Timer)
                    } else if !stopping && changed.as_mut().poll(cx).is_ready() {
                        Poll::Ready(Woke::Stop)
                    } else {
                        Poll::Pending
                    }
                })
            })
            .await;
            match woke {
                Woke::Ended(error) => {
                    if let Some(e) = error {
                        tracing::debug!(error = %e, "connection ended with error");
                    }
                    return;
                }
                Woke::Timer => {}
                Woke::Stop => {
                    stopping = true;
                    shutdown(conn.as_mut());
                }
            }
        }
    }
}
