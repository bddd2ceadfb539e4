//! graylane's own HTTP/2 server connection: frames read and written by `crate::http2`,
//! each stream's request handed to the request path with its fields as HTTP/1.1 field
//! lines (no header map), each answer framed from its fields as they came from the
//! upstream. One future per connection: it reads (`read`), runs its streams in its own
//! task, and writes everything it has in one go per wake-up (`write`).
//!
//! What hyper's HTTP/2 server held against hostile clients holds here too: a header
//! block is bounded as it arrives (CONTINUATION), and as it decodes (HPACK bombs: the
//! list size); streams reset before their answer count against the connection (rapid
//! reset); output waiting for the client stops the reading (SETTINGS and PING floods).

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::{ConnState, InFlight};
use crate::http2::body::{BodyCut, BodySender, Returned};
use crate::http2::frame::{self, Reason};
use crate::http2::hpack::Decoder;
use crate::http2::request::Assembler;
use crate::proxy::Answer;
use crate::state::{ConnCtx, Shared};
use crate::upstream::DownBody;

mod read;
#[cfg(test)]
mod tests;
mod write;

use write::NextFrame;

/// The receive windows graylane opens: per stream (SETTINGS_INITIAL_WINDOW_SIZE) and for
/// the connection, as hyper's server does by default.
const STREAM_WINDOW: u32 = 1 << 20;
const CONN_WINDOW: u32 = 1 << 20;
/// Output held for the client beyond which the connection stops reading and stops
/// taking answer bodies, until the client reads.
const WRITE_HIGH: usize = 256 * 1024;
/// Streams a client may end before their answer (resetting them, or provoking graylane
/// to) within `RESET_WINDOW_MS` before the connection is refused: rapid reset
/// (CVE-2023-44487) and its "MadeYouReset" variant (CVE-2025-8671). A browser that
/// cancels fetches now and then stays far below.
const EARLY_RESETS: usize = 200;
/// The window `EARLY_RESETS` is counted in.
const RESET_WINDOW_MS: u64 = 10_000;
/// How many of the streams graylane reset last are remembered, for the client's frames
/// still in flight on them.
const RESETS_KEPT: usize = 32;

/// A stream's handler as the connection polls it: its answer, and the mark that keeps
/// the connection from idling out while the stream lives. Boxed where it is made: the
/// request path's future is several KiB, and moved unboxed into the connection's list it
/// was copied at each step (+10,000 instructions per request, measured).
type Running = Pin<Box<dyn Future<Output = (u32, Option<Answer>, InFlight)> + Send>>;
type Guarded = DownBody<InFlight>;

/// Why the connection ended with an error.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error("client connection: {0}")]
    Io(#[from] io::Error),
    #[error("HTTP/2 connection error {0:?}")]
    Protocol(Reason),
}

struct Stream {
    /// The request body's sender while the client may still send DATA.
    body: Option<BodySender>,
    /// The stream is in the connection's list of streams holding DATA.
    listed: bool,
    /// The client sent END_STREAM (or the stream was refused).
    recv_closed: bool,
    recv_window: i64,
    /// Bytes taken off this stream's window not yet given back.
    unacked: u64,
    length: Option<u64>,
    got: u64,
    send_window: i64,
    /// The request's handler, and then its answer's body, until each is done.
    handler: AbortHandle,
    body_next: Option<AbortHandle>,
    /// Answer data the windows had no room for, with the body it came from.
    parked: Option<(Box<Guarded>, Bytes, bool)>,
    answered: bool,
}

/// Hashes a stream id with one multiplication (Fibonacci hashing) instead of SipHash's
/// rounds: four lookups per request cost ~800 instructions with SipHash. The ids are
/// the client's to choose, but at most `H2_MAX_STREAMS` are in the map at once, which
/// bounds what colliding ids could cost.
#[derive(Default)]
struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        // The product's well-mixed high half where the table takes its bucket (the low
        // bits: an odd id times an odd constant always ends in 1).
        self.0.rotate_left(32)
    }
}

/// One HTTP/2 connection, from the client's preface on.
pub(super) struct Conn<S> {
    io: S,
    shared: Arc<Shared>,
    ctx: Arc<ConnCtx>,
    state: Arc<ConnState>,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    written: usize,
    /// Reading the preface, then the client's first SETTINGS, then frames.
    preface: bool,
    first_settings: bool,
    decoder: Decoder,
    assembler: Assembler,
    /// A header block still arriving in CONTINUATION frames.
    cont: Option<(u32, bool, read::BlockFor, Vec<u8>)>,
    /// The header list size graylane announces, and what an encoded block may reach.
    list_limit: usize,
    block_limit: usize,
    streams: HashMap<u32, Stream, BuildHasherDefault<StreamIdHasher>>,
    /// Streams that hold small DATA not yet queued for their request path.
    held: Vec<u32>,
    /// The last streams graylane reset, newest at `reset_next - 1`.
    reset_sent: [u32; RESETS_KEPT],
    reset_next: usize,
    last_id: u32,
    handlers: FuturesUnordered<Running>,
    bodies: FuturesUnordered<Abortable<NextFrame>>,
    send_window: i64,
    peer_window: i64,
    peer_frame: usize,
    recv_window: i64,
    conn_unacked: u64,
    /// DATA was given back to a window at once (padding, a body nobody reads): the
    /// streams are looked at for WINDOW_UPDATE even though no body was read.
    credit_pending: bool,
    returned: Arc<Returned>,
    /// GOAWAY sent: no new streams; the connection ends when its streams have.
    goaway: bool,
    /// A connection error: what is written goes out, then the connection ends.
    failed: Option<Reason>,
    read_closed: bool,
    /// Streams ended early in the current window: (its start, coarse ms; how many).
    resets: (u64, usize),
    /// The client's HPACK table size, and whether its decoder waits for a size update.
    peer_table: u32,
    table_update: bool,
    /// Some stream may have an answer parked for want of window.
    maybe_parked: bool,
    block: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(super) fn new(
        io: S,
        shared: Arc<Shared>,
        ctx: Arc<ConnCtx>,
        state: Arc<ConnState>,
    ) -> Self {
        let list = super::h2_header_list(&shared) as usize;
        let mut wbuf = Vec::with_capacity(4096);
        frame::settings(
            &mut wbuf,
            &[
                (
                    frame::setting::MAX_CONCURRENT_STREAMS,
                    super::H2_MAX_STREAMS,
                ),
                (frame::setting::INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (frame::setting::MAX_HEADER_LIST_SIZE, list as u32),
            ],
        );
        frame::window_update(&mut wbuf, 0, CONN_WINDOW - frame::DEFAULT_WINDOW);
        Self {
            io,
            shared,
            ctx,
            state,
            rbuf: BytesMut::with_capacity(16 * 1024),
            wbuf,
            written: 0,
            preface: true,
            first_settings: true,
            decoder: Decoder::new(4096),
            assembler: Assembler::new(list),
            cont: None,
            list_limit: list,
            block_limit: list.max(16 * 1024),
            streams: HashMap::default(),
            held: Vec::new(),
            reset_sent: [0; RESETS_KEPT],
            reset_next: 0,
            last_id: 0,
            handlers: FuturesUnordered::new(),
            bodies: FuturesUnordered::new(),
            send_window: i64::from(frame::DEFAULT_WINDOW),
            peer_window: i64::from(frame::DEFAULT_WINDOW),
            peer_frame: frame::DEFAULT_MAX_FRAME as usize,
            recv_window: i64::from(CONN_WINDOW),
            conn_unacked: 0,
            credit_pending: false,
            returned: Arc::new(Returned::default()),
            goaway: false,
            failed: None,
            read_closed: false,
            resets: (0, 0),
            peer_table: 4096,
            table_update: false,
            maybe_parked: false,
            block: Vec::new(),
        }
    }

    /// Sends GOAWAY: streams open now finish, new ones are refused, and the connection
    /// ends once they have.
    pub(super) fn graceful_shutdown(&mut self) {
        if !self.goaway {
            self.goaway = true;
            frame::goaway(&mut self.wbuf, self.last_id, Reason::NoError);
            self.returned.waker.wake();
        }
    }

    /// RST_STREAM for `id`, noted: frames the client sent before it saw it are ignored
    /// (RFC 9113 §5.1), and a header block among them must not read as a stream id
    /// reused.
    fn rst(&mut self, id: u32, reason: Reason) {
        frame::rst_stream(&mut self.wbuf, id, reason);
        self.reset_sent[self.reset_next % RESETS_KEPT] = id;
        self.reset_next = self.reset_next.wrapping_add(1);
    }

    fn fail(&mut self, reason: Reason) {
        if self.failed.is_none() {
            self.failed = Some(reason);
            frame::goaway(&mut self.wbuf, self.last_id, reason);
            for (_, s) in self.streams.drain() {
                close_stream(s, BodyCut::Closed);
            }
        }
    }

    fn reset(&mut self, id: u32, reason: Reason) {
        self.rst(id, reason);
        if let Some(s) = self.streams.remove(&id) {
            close_stream(s, BodyCut::Reset);
        }
    }
}

fn close_stream(s: Stream, why: BodyCut) {
    s.handler.abort();
    if let Some(h) = s.body_next {
        h.abort();
    }
    if let Some(tx) = s.body {
        tx.cut(why);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for Conn<S> {
    type Output = Result<(), ConnError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.returned.waker.register(cx.waker());
        // Bounded, so that a client that keeps sending cannot hold the worker.
        for _ in 0..32 {
            let mut progress = false;
            if this.failed.is_none() && !this.read_closed && this.wbuf.len() < WRITE_HIGH {
                if this.rbuf.capacity() - this.rbuf.len() < 4096 {
                    this.rbuf.reserve(16 * 1024);
                }
                match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.rbuf) {
                    Poll::Ready(Ok(0)) => {
                        this.read_closed = true;
                        progress = true;
                    }
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => {}
                }
                if let Err(reason) = this.read_frames() {
                    this.fail(reason);
                }
            }
            while let Poll::Ready(Some((id, answer, inflight))) = this.handlers.poll_next_unpin(cx)
            {
                this.answer(id, answer, inflight);
                progress = true;
            }
            while this.wbuf.len() < WRITE_HIGH {
                match this.bodies.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(polled))) => {
                        this.body_frame(polled);
                        progress = true;
                    }
                    Poll::Ready(Some(Err(_aborted))) => progress = true,
                    _ => break,
                }
            }
            if this.failed.is_none() {
                if !this.held.is_empty() && this.release_held() {
                    progress = true;
                }
                this.return_windows();
            }
            if !this.wbuf.is_empty() {
                match this.poll_write(cx) {
                    Poll::Ready(Ok(())) => {
                        progress = true;
                        this.resume_parked();
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => {}
                }
            }
            let idle = this.streams.is_empty() && this.wbuf.is_empty();
            if let Some(reason) = this.failed.filter(|_| this.wbuf.is_empty()) {
                return Poll::Ready(Err(ConnError::Protocol(reason)));
            }
            if idle && (this.goaway || this.read_closed) {
                // TLS's close_notify (and TCP's FIN) after the last frame; a client that
                // does not take it is cut by the connection's timeouts.
                return match Pin::new(&mut this.io).poll_shutdown(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(_) => Poll::Ready(Ok(())),
                };
            }
            if this.read_closed && !this.streams.is_empty() {
                // The client is gone (HTTP/2 has no half-close): its streams' work stops,
                // and what is already written goes out before the connection ends.
                for (_, s) in this.streams.drain() {
                    close_stream(s, BodyCut::Closed);
                }
                progress = true;
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
