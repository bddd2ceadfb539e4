//! HTTP/1.1 requests served by graylane's own loop instead of hyper's.
//!
//! Almost every request on the IM and console listeners is a head with no body: for those
//! the loop reads the head straight from the connection's buffer (`crate::head`'s one
//! pass; httparse for a head of another shape), hands the request to the proxy, and
//! writes the response itself, skipping hyper's dispatcher and its per-request
//! buffering. Anything the loop does not serve exactly as hyper would
//! (a body, `Expect`, an upgrade, `TE`, HTTP/1.0, an absolute or `*` target, a head hyper
//! refuses, the HTTP/2 preface) is handed to hyper with the bytes read so far, and hyper
//! serves the rest of that connection: the rare shapes and every refusal keep one
//! implementation.

mod respond;

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::conn::{ConnIo, ConnState, InFlight};
use super::gate::Gate;
use crate::fields::{Received, Tally};
use crate::head::{self, RequestLine};
use crate::http2::frame::PREFACE;
use crate::proxy;
use crate::state::{ConnCtx, Shared};
use crate::upstream::h1::{field_spans, lowercase_names};
use respond::write_response;

/// hyper's limit on a request head's fields: a head with more is handed to hyper, which
/// answers it 431.
const MAX_FIELDS: usize = 100;

/// `http`'s limit on a field name's length.
const MAX_NAME: usize = (1 << 16) - 1;

/// How much room a read asks for.
const READ_CHUNK: usize = 8 * 1024;

/// Why the loop stopped.
pub(super) enum Exit<S> {
    /// The connection is done (closed by either side, failed, or drained).
    Closed,
    /// hyper serves the rest of the connection, starting with the bytes already read.
    Handoff(Prefixed<S>),
}

/// The client socket with bytes already read from it put back in front, for hyper.
pub(super) struct Prefixed<S> {
    prefix: Bytes,
    io: S,
}

/// Whether `buf` is the start of the HTTP/2 preface and not all of it: the rest is
/// waited for, so that the connection goes to graylane's HTTP/2 server (which takes it
/// only whole) rather than to hyper's HTTP/1.1 server as a bad head.
fn preface_cut_short(buf: &[u8]) -> bool {
    buf.len() < PREFACE.len() && PREFACE.starts_with(buf)
}

impl<S> Prefixed<S> {
    /// A socket nothing was read from yet (HTTP/2 negotiated by TLS).
    pub(super) fn bare(io: S) -> Self {
        Self {
            prefix: Bytes::new(),
            io,
        }
    }

    /// The bytes read so far hold the whole HTTP/2 preface: hyper's HTTP/2 server can
    /// take the connection without looking at its version again.
    pub(super) fn starts_h2(&self) -> bool {
        self.prefix.starts_with(PREFACE)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        if this.prefix.is_empty() {
            // An empty slice still holds the loop's whole read buffer: a WebSocket link
            // keeps this reader for hours, so let it go.
            this.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A connection served by the loop until it hands over to hyper (`make` builds hyper's
/// connection, `shutdown` starts its graceful end).
pub(super) struct Lean<F, H, M, D> {
    stage: Stage<F, H>,
    make: Option<M>,
    shutdown: D,
    state: Arc<ConnState>,
    /// The drain began before hyper took the connection over: hyper is told once it has
    /// read what it was handed (told at once, hyper's version detection would drop it).
    shutdown_due: bool,
}

enum Stage<F, H> {
    Own(Pin<Box<F>>),
    Hyper(Pin<Box<H>>),
}

impl<S, F, H, M, D, E> Lean<F, H, M, D>
where
    F: Future<Output = Exit<S>>,
    H: Future<Output = Result<(), E>>,
    M: FnOnce(Prefixed<S>) -> H + Unpin,
    D: Fn(Pin<&mut H>) + Unpin,
{
    pub(super) fn new(own: F, make: M, shutdown: D, state: Arc<ConnState>) -> Self {
        Self {
            stage: Stage::Own(Box::pin(own)),
            make: Some(make),
            shutdown,
            state,
            shutdown_due: false,
        }
    }

    /// Ends the connection after the response in progress (or now, between requests).
    pub(super) fn graceful_shutdown(self: Pin<&mut Self>) {
        let this = self.get_mut();
        this.state.stopping.store(true, Ordering::Relaxed);
        if let Stage::Hyper(h) = &mut this.stage {
            if !this.shutdown_due {
                (this.shutdown)(h.as_mut());
            }
        }
    }
}

impl<S, F, H, M, D, E> Future for Lean<F, H, M, D>
where
    F: Future<Output = Exit<S>>,
    H: Future<Output = Result<(), E>>,
    M: FnOnce(Prefixed<S>) -> H + Unpin,
    D: Fn(Pin<&mut H>) + Unpin,
{
    type Output = Result<(), E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.stage {
                Stage::Own(own) => {
                    let s = &this.state;
                    // Waiting for a new request with nothing of it read: nothing to finish.
                    if s.stopping.load(Ordering::Relaxed) && s.lean_idle.load(Ordering::Relaxed) {
                        return Poll::Ready(Ok(()));
                    }
                    let io = match own.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Exit::Closed) => return Poll::Ready(Ok(())),
                        Poll::Ready(Exit::Handoff(io)) => io,
                    };
                    let Some(make) = this.make.take() else {
                        return Poll::Ready(Ok(()));
                    };
                    this.shutdown_due = this.state.stopping.load(Ordering::Relaxed);
                    this.stage = Stage::Hyper(Box::pin(make(io)));
                }
                Stage::Hyper(h) => {
                    let r = h.as_mut().poll(cx);
                    if r.is_ready() || !this.shutdown_due {
                        return r;
                    }
                    // Polled once, hyper has read the bytes it was handed and taken the
                    // request in them: now the drain ends it after that request.
                    this.shutdown_due = false;
                    (this.shutdown)(h.as_mut());
                }
            }
        }
    }
}

/// A request head the loop serves itself.
struct Head {
    /// Method, target and version; the fields are in the loop's `Received`.
    parts: http::request::Parts,
    /// The client asked to close after this response (`Connection: close`).
    close: bool,
}

// Returned once per request and matched at once; a box would allocate on every request.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Lean(Head),
    Partial,
    /// hyper serves it: a shape the loop leaves to hyper, or a head hyper refuses.
    Hyper,
}

/// Serves the connection's requests until it closes or a request needs hyper.
pub(super) async fn serve<S>(
    mut io: ConnIo<S>,
    shared: Arc<Shared>,
    ctx: Arc<ConnCtx>,
    state: Arc<ConnState>,
) -> Exit<ConnIo<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Heads at least this long are hyper's (its 431); positions in a head fit in `u32`.
    let max = shared.config.limits.max_header_bytes.min(u32::MAX as usize);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(1024);
    let gate = Gate::new();
    // `upstream_response` for every request of the connection: set again per attempt,
    // it stays known to the timer thread (see `Forward::reuse_timer`).
    let mut timer = pin!(crate::timer::sleep(Duration::ZERO));
    // Each request's fields, kept for the next one's (its positions' allocation reused).
    let mut fields = Received::default();
    loop {
        let head = loop {
            if state.h2.load(Ordering::Relaxed) {
                return handoff(io, buf);
            }
            skip_empty_lines(&mut buf);
            if !buf.is_empty() {
                match parse(&mut buf, max, &mut fields) {
                    Parsed::Lean(h) => break h,
                    Parsed::Hyper => return handoff(io, buf),
                    Parsed::Partial => {}
                }
            }
            let idle = buf.is_empty();
            if idle && state.stopping.load(Ordering::Relaxed) {
                return Exit::Closed;
            }
            state.lean_idle.store(idle, Ordering::Relaxed);
            buf.reserve(READ_CHUNK);
            let n = io.read_buf(&mut buf).await;
            state.lean_idle.store(false, Ordering::Relaxed);
            match n {
                Ok(0) if buf.is_empty() => return Exit::Closed,
                // A head cut short: hyper answers it as it always has.
                Ok(0) => return handoff(io, buf),
                Ok(_) => {}
                Err(_) => return Exit::Closed,
            }
        };
        let inflight = InFlight::new(state.clone());
        let head_only = head.parts.method == Method::HEAD;
        let resp = {
            let resp =
                proxy::handle_bodiless(head.parts, &mut fields, timer.as_mut(), &shared, &ctx);
            tokio::pin!(resp);
            // As hyper does, a client that closes while its answer is awaited cancels the
            // request (a pipelined byte stops the watch: the buffer is not empty then).
            // The client's socket is looked at only when it woke the task, not on the
            // upstream's wake-ups too.
            gate.open();
            poll_fn(|cx| {
                if let Poll::Ready(r) = resp.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                if !buf.is_empty() {
                    return Poll::Pending;
                }
                gate.poll(cx, |cx| {
                    match tokio_util::io::poll_read_buf(Pin::new(&mut io), cx, &mut buf) {
                        Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(None),
                        Poll::Ready(Ok(_)) | Poll::Pending => Poll::Pending,
                    }
                })
            })
            .await
        };
        fields.release();
        let Some(resp) = resp else {
            return Exit::Closed;
        };
        let close = head.close || state.stopping.load(Ordering::Relaxed);
        let keep = write_response(&mut io, &mut buf, &mut out, resp, head_only, close).await;
        drop(inflight);
        if !keep {
            let _ = io.shutdown().await;
            return Exit::Closed;
        }
        skip_empty_lines(&mut buf);
        if !buf.is_empty() {
            // The next head is already (partly) here: its time runs from now.
            state.head_arrived();
        }
    }
}

/// RFC 9112 §2.2: empty lines before a request line are ignored (a client may send a
/// CRLF after a body); left in the buffer they would count as the start of a head.
fn skip_empty_lines(buf: &mut BytesMut) {
    let n = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    buf.advance(n);
}

/// Gives the connection to hyper with what was read and not yet served.
fn handoff<S>(io: ConnIo<S>, buf: BytesMut) -> Exit<ConnIo<S>> {
    Exit::Handoff(Prefixed {
        prefix: buf.freeze(),
        io,
    })
}

/// Parses the head at the front of `buf`; consumes it only when the loop serves it.
fn parse(buf: &mut BytesMut, max: usize, received: &mut Received) -> Parsed {
    // A head must end before `max` (which keeps positions within `u32`).
    let limit = buf.len().min(max.saturating_sub(1));
    let spans = received.spans_emptied();
    let scanned = head::request(&mut buf[..limit], |span| {
        spans.push(span);
        spans.len() <= MAX_FIELDS
    });
    let (line, len) = match scanned {
        Some(read) => read,
        None => match by_httparse(buf, max, received) {
            Ok(read) => read,
            Err(Wait::MoreBytes) => return Parsed::Partial,
            Err(Wait::Hyper) => return Parsed::Hyper,
        },
    };
    let at = |[s, e]: [u32; 2]| s as usize..e as usize;
    if line.minor != 1 || buf.get(at(line.target)).and_then(|t| t.first()) != Some(&b'/') {
        return Parsed::Hyper;
    }
    let Ok(method) = Method::from_bytes(&buf[at(line.method)]) else {
        return Parsed::Hyper;
    };
    if method == Method::CONNECT {
        return Parsed::Hyper;
    }
    let mut close = false;
    let mut length_seen = false;
    let mut tally = Tally::default();
    for (i, &[ns, ne, vs, ve]) in received.spans().iter().enumerate() {
        let (n, value) = (
            &buf[ns as usize..ne as usize],
            &buf[vs as usize..ve as usize],
        );
        tally.note(i, n);
        if n.len() > MAX_NAME {
            // Over what `http` takes as a name: hyper refuses it.
            return Parsed::Hyper;
        }
        // Names are lowercase: both readers lowercase them.
        match n {
            b"te" | b"expect" | b"upgrade" | b"transfer-encoding" => return Parsed::Hyper,
            b"connection" => close |= has_token(value, b"close"),
            b"content-length" => {
                // An empty body said outright; any other length is a body hyper reads.
                if length_seen || value != b"0" {
                    return Parsed::Hyper;
                }
                length_seen = true;
            }
            _ => {}
        }
    }
    let head = buf.split_to(len).freeze();
    match build(&head, method, line.target) {
        Some(parts) => {
            received.refill(head, tally);
            Parsed::Lean(Head { parts, close })
        }
        None => {
            // hyper refuses what `http` does not take: put the head back for it.
            let mut back = BytesMut::with_capacity(head.len() + buf.len());
            back.extend_from_slice(&head);
            back.extend_from_slice(buf);
            *buf = back;
            Parsed::Hyper
        }
    }
}

/// What the loop does with a head httparse did not give it whole.
enum Wait {
    /// Reads more: the head is not all there yet.
    MoreBytes,
    /// Hands it to hyper, which answers or refuses it.
    Hyper,
}

/// httparse's reading of a head the scanner left to it (see `head`), in the scanner's
/// terms: the fields' positions in `received`, names lowercased. `Err`: what the loop does
/// instead.
fn by_httparse(
    buf: &mut BytesMut,
    max: usize,
    received: &mut Received,
) -> Result<(RequestLine, usize), Wait> {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(n)) if n < max => n,
        Ok(httparse::Status::Partial) if buf.len() < max => return Err(Wait::MoreBytes),
        // The HTTP/2 preface cut short (prior knowledge, sent in pieces): waited for
        // whole, so that graylane's own HTTP/2 server takes the connection rather than
        // hyper's (which cannot tell HTTP/2 from a bad head before it has all 24 bytes).
        Err(_) if preface_cut_short(buf) => return Err(Wait::MoreBytes),
        _ => return Err(Wait::Hyper),
    };
    let (Some(method), Some(path), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(Wait::Hyper);
    };
    // `max` keeps heads below 4 GiB: positions fit in `u32` (see `field_spans`).
    let span = |s: &str| {
        let at = s.as_ptr() as usize - buf.as_ptr() as usize;
        [at as u32, (at + s.len()) as u32]
    };
    let line = RequestLine {
        method: span(method),
        target: span(path),
        minor,
    };
    let spans = received.spans_for(req.headers.len());
    field_spans(buf, req.headers, spans);
    lowercase_names(buf, spans);
    Ok((line, len))
}

/// The fields of the head `raw` as the loop keeps them after its own parse, for the
/// tests of what the request path does with them; `None` for a head it leaves to hyper.
#[cfg(test)]
pub(crate) fn received(raw: &str) -> Option<Received> {
    let mut buf = BytesMut::from(raw.as_bytes());
    let mut received = Received::default();
    match parse(&mut buf, usize::MAX, &mut received) {
        Parsed::Lean(_) => Some(received),
        Parsed::Partial | Parsed::Hyper => None,
    }
}

/// The request's method, target and version, the target a slice of `head` (no copy);
/// `None` where hyper's own parse would refuse the target. The fields stay as received:
/// the scanner or httparse took their names as tokens, which `http` takes too (the
/// length is checked above), and their values as `http` takes them.
fn build(head: &Bytes, method: Method, target: [u32; 2]) -> Option<http::request::Parts> {
    let at = |i: u32| i as usize;
    let uri = Uri::from_maybe_shared(head.slice(at(target[0])..at(target[1]))).ok()?;
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    Some(parts)
}

/// Whether a comma-separated list holds `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `parse` makes of `raw` under a head limit of `max`, by name, and the buffer
    /// it leaves.
    fn parsed(raw: &[u8], max: usize) -> (&'static str, BytesMut) {
        let mut b = BytesMut::from(raw);
        let what = match parse(&mut b, max, &mut Received::default()) {
            Parsed::Lean(_) => "lean",
            Parsed::Partial => "partial",
            Parsed::Hyper => "hyper",
        };
        (what, b)
    }

    #[test]
    fn only_plain_heads_are_served_by_the_loop() {
        for lean in [
            "GET / HTTP/1.1\r\nHost: t\r\n\r\n",
            "DELETE /x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert_eq!(parsed(lean.as_bytes(), 65536).0, "lean", "{lean:?}");
        }
        for hyper in [
            "GET / HTTP/1.0\r\nHost: t\r\n\r\n",
            "GET http://t/ HTTP/1.1\r\nHost: t\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
            "CONNECT t:443 HTTP/1.1\r\nHost: t\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx",
            "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            let (what, b) = parsed(hyper.as_bytes(), 65536);
            assert_eq!(what, "hyper", "{hyper:?}");
            // What hyper gets is every byte, the head included, its names lowercase
            // (the scanner lowercases as it reads), which hyper reads as any case.
            let names_lowered: String = hyper
                .split_inclusive("\r\n")
                .enumerate()
                .map(|(i, line)| match line.split_once(':') {
                    Some((name, rest)) if i > 0 => format!("{}:{rest}", name.to_lowercase()),
                    _ => line.to_string(),
                })
                .collect();
            assert_eq!(&b[..], names_lowered.as_bytes(), "{hyper:?}");
        }
        // A target `http` refuses (over 64 KiB) is put back whole for hyper's answer.
        let long = format!(
            "GET /{} HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\n",
            "a".repeat(70_000)
        );
        // (Its names lowercase by then, which hyper reads as it reads any case.)
        let (what, b) = parsed(long.as_bytes(), 1 << 20);
        assert_eq!(what, "hyper");
        assert_eq!(&b[..], long.replace("Host", "host").as_bytes());
        let unfinished = b"GET / HTTP/1.1\r\nHost: t\r\n";
        assert_eq!(parsed(unfinished, 65536).0, "partial");
        assert_eq!(parsed(unfinished, 16).0, "hyper");
    }

    /// The HTTP/2 preface is waited for whole, however it is cut, and then left to the
    /// connection's HTTP/2 server.
    #[test]
    fn a_preface_in_pieces_is_waited_for_whole() {
        for cut in 1..PREFACE.len() {
            assert_eq!(parsed(&PREFACE[..cut], 65536).0, "partial", "{cut} bytes");
        }
        assert_eq!(parsed(PREFACE, 65536).0, "hyper");
        // Not a preface: hyper's answer as before.
        assert_eq!(parsed(b"PRI * HTTP/2.1\r\n", 65536).0, "hyper");
    }
}
