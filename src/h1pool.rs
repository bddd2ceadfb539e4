//! graylane's HTTP/1.1 upstream client: idle connections per endpoint address, per
//! worker thread, and the exchange driven from the request's own task.
//!
//! Why not hyper's client connection: it runs every upstream connection as a task of its
//! own, fed through a channel, and hands the response back through another; each request
//! then costs two task wake-ups, two channel hand-offs and the dispatcher around them (in
//! the load benchmark's profile, a tenth of a worker's CPU sat in that connection task).
//! Here the request's task writes the head, streams the body and parses the response
//! head (httparse, as hyper does); the response body reads the socket itself when the
//! client side polls it, and puts the connection back into this worker's pool (a
//! thread-local map: no lock, a worker is one thread) when the body ends.
//!
//! An idle connection has no task watching it. Whether its upstream closed it is read
//! off the reactor's readiness when it is taken (no syscall unless the socket became
//! readable while idle), so a keep-alive connection the upstream dropped is never used;
//! a per-worker sweep ([`sweep_idle`]) closes the ones nobody takes.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, IoSlice, Write as _};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::error::UpstreamErrorKind;
use crate::upstream::UpBody;

/// Idle connections kept per endpoint and worker; more are closed.
const MAX_IDLE: usize = 128;
/// Most header fields a response head may carry (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Most trailer fields a chunked body may end with.
const MAX_TRAILERS: usize = 32;
/// Largest response head (or chunk-size line and trailer section) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Free space ensured in a connection's read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;
/// How often a worker sweeps its idle connections: closes those their upstream closed
/// (no task watches an idle connection, so they would otherwise wait in CLOSE_WAIT until
/// taken) and those idle for [`IDLE_SWEEPS`] sweeps.
const SWEEP_TICK: Duration = Duration::from_secs(5);
/// An idle upstream connection is closed after this many sweeps (55–60 s), below the
/// usual upstream keep-alive timeouts (nginx 75 s, Node 5 s is caught by the sweep's
/// readiness check or when taken).
const IDLE_SWEEPS: u32 = 12;
/// Buffers larger than these (after a huge head or body piece) are not kept with an idle
/// connection.
const KEEP_RBUF: usize = 64 * 1024;
const KEEP_WBUF: usize = 32 * 1024;

/// Idle connections by endpoint address. The map is per worker and its keys are
/// addresses from the configuration and DNS, not from clients, so the hash needs no
/// flood resistance: SipHash (std's default) cost more than the rest of a pool lookup.
type IdleMap = HashMap<SocketAddr, Vec<Conn>, BuildHasherDefault<AddrHasher>>;

/// A multiply-rotate hash (the "Fx" hash of rustc) over the few words a `SocketAddr`
/// writes.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

thread_local! {
    static IDLE: RefCell<IdleMap> = RefCell::new(IdleMap::default());
    /// Sweeps so far on this worker: an idle connection's age without a clock read.
    static SWEEPS: Cell<u32> = const { Cell::new(0) };
}

/// Why an exchange failed, with the cause.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The TCP connect failed: nothing was sent.
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    /// The TCP connect did not finish within `timeouts.connect`: nothing was sent.
    #[error("connect timed out")]
    ConnectTimeout,
    /// Reading or writing the upstream connection failed.
    #[error("upstream connection: {0}")]
    Io(#[source] io::Error),
    /// The upstream closed the connection before the response was complete.
    #[error("upstream closed the connection before the response was complete")]
    Closed,
    /// The upstream's response is not valid HTTP/1.1.
    #[error("invalid response from upstream: {0}")]
    Parse(&'static str),
    /// Reading the client's request body failed (the client went away mid-upload).
    #[error("reading the client's request body: {0}")]
    RequestBody(#[source] hyper::Error),
}

impl H1Error {
    /// The SPEC §3 kind.
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            // Only a connect that timed out is a timeout; an established connection
            // that the kernel gave up on (retransmits) was reset, as far as a retry cares.
            H1Error::Connect(e) if e.kind() == io::ErrorKind::TimedOut => {
                UpstreamErrorKind::Timeout
            }
            H1Error::Connect(_) => UpstreamErrorKind::Connect,
            H1Error::ConnectTimeout => UpstreamErrorKind::Timeout,
            H1Error::Io(_) | H1Error::Closed | H1Error::RequestBody(_) => UpstreamErrorKind::Reset,
            H1Error::Parse(_) => UpstreamErrorKind::Protocol,
        }
    }
}

/// A failed exchange, with the request handed back: its head is unchanged (the body may
/// be partly sent), so a further attempt reuses it instead of a copy made in advance.
#[derive(Debug)]
pub struct SendFailure {
    /// What went wrong.
    pub error: H1Error,
    /// The request as it was given.
    pub request: Request<UpBody>,
}

/// One upstream connection with its buffers, which keep their capacity between requests.
#[derive(Debug)]
struct Conn {
    io: TcpStream,
    /// Bytes read and not consumed yet.
    rbuf: BytesMut,
    /// The request head being written.
    wbuf: Vec<u8>,
    /// The worker's sweep count when the connection went idle.
    idle_since: u32,
}

impl Conn {
    fn new(io: TcpStream) -> Self {
        Self {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: Vec::with_capacity(512),
            idle_since: 0,
        }
    }

    /// Whether an idle connection can take a request: the upstream neither closed it
    /// nor sent anything while it was idle. Costs a syscall only when the reactor saw the
    /// socket become readable.
    fn idle_usable(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more into `rbuf`; `Ok(0)` is end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }

    /// Reads until a complete response head is buffered, and parses it.
    fn poll_head(&mut self, method: &Method, cx: &mut Context<'_>) -> Poll<Result<Head, H1Error>> {
        loop {
            if !self.rbuf.is_empty() {
                if let Some(head) = parse_head(&mut self.rbuf, method)? {
                    return Poll::Ready(Ok(head));
                }
            }
            match std::task::ready!(self.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Err(H1Error::Closed)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(H1Error::Io(e))),
            }
        }
    }
}

fn take(addr: SocketAddr) -> Option<Conn> {
    IDLE.with(|m| m.borrow_mut().get_mut(&addr).and_then(Vec::pop))
}

fn put(addr: SocketAddr, mut c: Conn) {
    if c.rbuf.capacity() > KEEP_RBUF {
        c.rbuf = BytesMut::with_capacity(READ_CHUNK);
    }
    if c.wbuf.capacity() > KEEP_WBUF {
        c.wbuf = Vec::with_capacity(512);
    }
    c.idle_since = SWEEPS.with(Cell::get);
    IDLE.with(|m| {
        let mut m = m.borrow_mut();
        let idle = m.entry(addr).or_default();
        if idle.len() < MAX_IDLE {
            idle.push(c);
        }
    });
}

/// Sweeps this worker's idle connections every [`SWEEP_TICK`] for as long as the worker
/// runs; spawned once per worker runtime.
pub async fn sweep_idle() {
    let mut tick = tokio::time::interval(SWEEP_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = SWEEPS.with(|n| {
            let v = n.get().wrapping_add(1);
            n.set(v);
            v
        });
        sweep(now);
    }
}

/// Closes the idle connections their upstream closed, and those idle since before
/// `now - IDLE_SWEEPS` sweeps.
fn sweep(now: u32) {
    IDLE.with(|m| {
        m.borrow_mut().retain(|_, idle| {
            idle.retain(|c| now.wrapping_sub(c.idle_since) < IDLE_SWEEPS && c.idle_usable());
            !idle.is_empty()
        });
    });
}

/// Sends `req` (origin-form URI, `Host` set) to `addr` on an idle connection of this
/// worker, or a new one. The response body reads the rest from the connection and puts
/// it back into the pool when it ends; a `101` hands it over through
/// [`H1Body::into_tunnel`].
pub async fn send(
    addr: SocketAddr,
    req: Request<UpBody>,
    connect_timeout: Duration,
) -> Result<Response<H1Body>, SendFailure> {
    let (parts, mut body) = req.into_parts();
    while let Some(conn) = take(addr) {
        if !conn.idle_usable() {
            continue;
        }
        match exchange(conn, addr, &parts, &mut body).await {
            Ok(resp) => return Ok(resp),
            // Nothing of the request went out (the upstream closed an idle keep-alive
            // connection as it was taken): try the next one.
            Err(Exchange::Unsent(_)) => continue,
            Err(Exchange::Failed(error)) => return Err(SendFailure::new(error, parts, body)),
        }
    }
    // The cold path (connect) lives in its own boxed future: inlined, its state would
    // make every request's future larger, and futures are moved (copied) whole as they
    // are pinned.
    let conn = match Box::pin(connect(addr, connect_timeout)).await {
        Ok(c) => c,
        Err(error) => return Err(SendFailure::new(error, parts, body)),
    };
    match exchange(conn, addr, &parts, &mut body).await {
        Ok(resp) => Ok(resp),
        Err(Exchange::Unsent(error) | Exchange::Failed(error)) => {
            Err(SendFailure::new(error, parts, body))
        }
    }
}

impl SendFailure {
    fn new(error: H1Error, parts: Parts, body: UpBody) -> Self {
        Self {
            error,
            request: Request::from_parts(parts, body),
        }
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, H1Error> {
    let io = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(H1Error::ConnectTimeout),
        Ok(Err(e)) => return Err(H1Error::Connect(e)),
        Ok(Ok(s)) => s,
    };
    let _ = io.set_nodelay(true);
    Ok(Conn::new(io))
}

enum Exchange {
    /// Failed before any byte of the request was written.
    Unsent(H1Error),
    Failed(H1Error),
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    None,
    Length,
    Chunked,
}

/// Writes the request, streams its body while watching for an early response, and reads
/// the response head.
async fn exchange(
    mut conn: Conn,
    addr: SocketAddr,
    parts: &Parts,
    body: &mut UpBody,
) -> Result<Response<H1Body>, Exchange> {
    let framing = match body {
        UpBody::Empty => ReqFraming::None,
        UpBody::Reclaimable(_) if parts.headers.contains_key(header::CONTENT_LENGTH) => {
            ReqFraming::Length
        }
        UpBody::Reclaimable(_) => ReqFraming::Chunked,
    };
    encode_head(&mut conn.wbuf, parts, framing == ReqFraming::Chunked);
    let mut body_done = framing == ReqFraming::None;
    // Once a piece of the body is taken, the request cannot be handed back unsent.
    let mut took_body = false;
    // A body piece taken but too large to copy behind the head.
    let mut first = None;
    if !body_done {
        // A first piece that is ready now goes out with the head, in one write.
        let polled =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await;
        if let Poll::Ready(frame) = polled {
            // An empty body's end takes nothing that a retry would miss.
            took_body = frame.is_some();
            let mut ending = Cow::Borrowed(LAST_CHUNK);
            match frame.map(|f| f.map(Frame::into_data)) {
                None => body_done = true,
                Some(Err(e)) => return Err(Exchange::Failed(H1Error::RequestBody(e))),
                Some(Ok(Err(trailers))) => {
                    // Trailers end a body.
                    if let Ok(t) = trailers.into_trailers() {
                        ending = Cow::Owned(trailer_block(&t));
                    }
                    body_done = true;
                }
                Some(Ok(Ok(data))) if data.len() <= INLINE_BODY => {
                    put_chunk(&mut conn.wbuf, &data, framing);
                }
                Some(Ok(Ok(data))) => first = Some(data),
            }
            if first.is_none() && !body_done && body.is_end_stream() {
                body_done = true;
            }
            if body_done && framing == ReqFraming::Chunked {
                conn.wbuf.extend_from_slice(&ending);
            }
        }
    }
    // The first write tells whether a kept-alive connection still takes requests.
    let written =
        std::future::poll_fn(|cx| Pin::new(&mut conn.io).poll_write(cx, &conn.wbuf)).await;
    let unsent = |e| {
        if took_body {
            Exchange::Failed(e)
        } else {
            Exchange::Unsent(e)
        }
    };
    match written {
        Ok(0) => return Err(unsent(H1Error::Closed)),
        Ok(n) => {
            if n < conn.wbuf.len() {
                conn.io
                    .write_all(&conn.wbuf[n..])
                    .await
                    .map_err(|e| Exchange::Failed(H1Error::Io(e)))?;
            }
        }
        Err(e) => return Err(unsent(H1Error::Io(e))),
    }

    // The rest of the body goes out while the head is awaited, and after it if the
    // upstream answers early: it may answer and stop reading (413), or answer and keep
    // reading (a streaming echo), so sending goes on until the body ends or a write fails.
    let mut upload = (!body_done).then(|| {
        let mut up = Upload::new(std::mem::replace(body, UpBody::Empty), framing);
        if let Some(data) = first {
            let last = up.body.is_end_stream();
            up.stage(data, last);
        }
        up
    });
    let head = std::future::poll_fn(|cx| {
        if let Some(up) = upload.as_mut() {
            match up.poll_send(&mut conn.io, cx) {
                Poll::Ready(Err(e @ H1Error::RequestBody(_))) => return Poll::Ready(Err(e)),
                // The upstream stopped taking the body: it may have answered why.
                Poll::Ready(Err(_)) => up.failed = true,
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        conn.poll_head(&parts.method, cx)
    })
    .await
    .map_err(Exchange::Failed)?;
    let upload = upload.filter(|u| !u.sent());
    Ok(head.into_response(conn, addr, upload))
}

/// Body pieces up to this size are copied behind the head (one write for both); larger
/// ones are written from their own buffer.
const INLINE_BODY: usize = 8 * 1024;

const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The last chunk with trailer fields (a client's, passed on as it sent them, but for
/// the fields that may not be trailers: framing, routing and connection control).
fn trailer_block(trailers: &HeaderMap) -> Vec<u8> {
    const NOT_TRAILERS: [HeaderName; 6] = [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::HOST,
        header::CONNECTION,
        header::TE,
        header::TRAILER,
    ];
    let mut out = b"0\r\n".to_vec();
    for (name, value) in trailers {
        if NOT_TRAILERS.contains(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The request line and header fields, lowercase names as hyper writes them.
fn encode_head(out: &mut Vec<u8>, parts: &Parts, chunked: bool) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The chunk-size line for `len` bytes of data.
fn chunk_line(len: usize) -> ([u8; 20], usize) {
    let mut line = [0u8; 20];
    let mut cursor = std::io::Cursor::new(&mut line[..]);
    // 16 hex digits and CRLF always fit in 20 bytes.
    let _ = write!(cursor, "{len:x}\r\n");
    let n = cursor.position() as usize;
    (line, n)
}

/// Appends a body piece, framed.
fn put_chunk(out: &mut Vec<u8>, data: &[u8], framing: ReqFraming) {
    if data.is_empty() {
        return;
    }
    if framing == ReqFraming::Chunked {
        let (line, n) = chunk_line(data.len());
        out.extend_from_slice(&line[..n]);
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// The rest of a request body, written as the upstream takes it: polled while the
/// response head is awaited and then, if the head came first, from the response body.
#[derive(Debug)]
struct Upload {
    body: UpBody,
    framing: ReqFraming,
    /// Framed bytes not yet written: chunk-size line, data, then CRLF and maybe the last
    /// chunk (any may be empty).
    out: [Bytes; 3],
    /// The body ended: once `out` is written, all of it is sent.
    ended: bool,
    /// A write failed: the upstream stopped reading.
    failed: bool,
}

impl Upload {
    fn new(body: UpBody, framing: ReqFraming) -> Self {
        Self {
            body,
            framing,
            out: Default::default(),
            ended: false,
            failed: false,
        }
    }

    /// Whether all of the body went out.
    fn sent(&self) -> bool {
        self.ended && !self.failed && self.out.iter().all(Bytes::is_empty)
    }

    /// Frames `data` for writing; `last` ends the body.
    fn stage(&mut self, data: Bytes, last: bool) {
        let chunked = self.framing == ReqFraming::Chunked;
        let line = if chunked && !data.is_empty() {
            let (line, n) = chunk_line(data.len());
            Bytes::copy_from_slice(&line[..n])
        } else {
            Bytes::new()
        };
        let tail: &'static [u8] = match (chunked, data.is_empty(), last) {
            (false, _, _) => b"",
            (true, true, true) => LAST_CHUNK,
            (true, true, false) => b"",
            (true, false, true) => b"\r\n0\r\n\r\n",
            (true, false, false) => b"\r\n",
        };
        self.out = [line, data, Bytes::from_static(tail)];
        self.ended = last;
    }

    /// Writes what the body has so far; ready once all of it is written (or on error).
    fn poll_send(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), H1Error>> {
        if self.failed {
            return Poll::Ready(Err(H1Error::Closed));
        }
        loop {
            while self.out.iter().any(|b| !b.is_empty()) {
                let slices = [
                    IoSlice::new(&self.out[0]),
                    IoSlice::new(&self.out[1]),
                    IoSlice::new(&self.out[2]),
                ];
                let mut n =
                    match std::task::ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices)) {
                        Ok(0) => Err(io::Error::from(io::ErrorKind::WriteZero)),
                        Ok(n) => Ok(n),
                        Err(e) => Err(e),
                    }
                    .map_err(|e| {
                        self.failed = true;
                        H1Error::Io(e)
                    })?;
                for b in &mut self.out {
                    let k = n.min(b.len());
                    b.advance(k);
                    n -= k;
                }
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            match std::task::ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => self.stage(Bytes::new(), true),
                Some(Err(e)) => {
                    self.failed = true;
                    return Poll::Ready(Err(H1Error::RequestBody(e)));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        // A body that knows it is done is not polled again (which would
                        // wait for the client's connection to say so).
                        let last = self.body.is_end_stream();
                        self.stage(data, last);
                    }
                    // Trailers end the body; they go out only with chunked framing.
                    Err(frame) => {
                        let block = match (self.framing, frame.into_trailers()) {
                            (ReqFraming::Chunked, Ok(t)) => Bytes::from(trailer_block(&t)),
                            _ => Bytes::new(),
                        };
                        self.out = [block, Bytes::new(), Bytes::new()];
                        self.ended = true;
                    }
                },
            }
        }
    }
}

/// A parsed response head, before it becomes a [`Response`].
#[derive(Debug)]
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    reusable: bool,
}

impl Head {
    fn into_response(
        self,
        conn: Conn,
        addr: SocketAddr,
        upload: Option<Upload>,
    ) -> Response<H1Body> {
        let mut body = H1Body {
            conn: Some(conn),
            addr,
            framing: self.framing,
            reusable: self.reusable,
            upload,
        };
        // A body that is empty from the start is never polled: it is complete now.
        if matches!(body.framing, Framing::Done | Framing::Length(0)) {
            body.framing = Framing::Done;
            body.finish();
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status;
        *resp.version_mut() = self.version;
        *resp.headers_mut() = self.headers;
        resp
    }
}

/// Parses a complete head at the front of `buf` and consumes it; `None` when more bytes
/// are needed. Interim (1xx) responses other than `101` are skipped.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, H1Error> {
    loop {
        let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(H1Error::Parse("response head too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(H1Error::Parse("too many header fields"))
            }
            Err(_) => return Err(H1Error::Parse("malformed response head")),
        };
        let code = resp.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| H1Error::Parse("invalid status code"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            buf.advance(len);
            if buf.is_empty() {
                return Ok(None);
            }
            continue;
        }
        let version = if resp.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Field positions first: names and values become slices of the head's bytes
        // once those are split off the buffer, which `fields` still borrows.
        let base = buf.as_ptr() as usize;
        let mut spans = [[0u32; 4]; MAX_HEADERS];
        let count = resp.headers.len();
        for (span, f) in spans.iter_mut().zip(resp.headers.iter()) {
            let name = f.name.as_ptr() as usize - base;
            let value = f.value.as_ptr() as usize - base;
            // The head is at most MAX_HEAD bytes past the buffer start, which fits.
            *span = [
                name as u32,
                (name + f.name.len()) as u32,
                value as u32,
                (value + f.value.len()) as u32,
            ];
        }
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        // The fields that frame the body are noted as the map is built: looking them up
        // afterwards would hash their names again.
        let mut facts = FramingFacts::default();
        for &[ns, ne, vs, ve] in spans.iter().take(count) {
            let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
                .map_err(|_| H1Error::Parse("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
                .map_err(|_| H1Error::Parse("invalid header value"))?;
            facts.note(&name, value.as_bytes());
            headers.append(name, value);
        }
        let (framing, definite) = response_framing(status, version, method, &facts)?;
        if matches!(framing, Framing::Chunked(_)) && facts.length.is_some() {
            // Transfer-Encoding won: a Content-Length passed on would misframe the
            // client's copy (RFC 9112 §6.3).
            headers.remove(header::CONTENT_LENGTH);
        }
        let reusable = definite && facts.keeps_alive(version);
        return Ok(Some(Head {
            status,
            version,
            headers,
            framing,
            reusable,
        }));
    }
}

/// What a response head says about its body's framing and its connection.
#[derive(Debug, Default)]
struct FramingFacts {
    /// `Transfer-Encoding` present; whether the last coding of its last field is chunked.
    chunked_last: Option<bool>,
    /// `Content-Length`: the one value all fields agree on, or why there is none.
    length: Option<Result<u64, &'static str>>,
    /// `Connection` tokens.
    close: bool,
    keep_alive: bool,
}

impl FramingFacts {
    fn note(&mut self, name: &HeaderName, value: &[u8]) {
        let tokens = || value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
        if name == header::TRANSFER_ENCODING {
            let last = tokens().next_back().unwrap_or_default();
            self.chunked_last = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONTENT_LENGTH {
            for part in tokens() {
                let n = Some(part)
                    .filter(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit))
                    .and_then(|p| std::str::from_utf8(p).ok())
                    .and_then(|p| p.parse::<u64>().ok())
                    .ok_or("invalid content-length");
                self.length = Some(match (self.length.take(), n) {
                    (_, Err(e)) | (Some(Err(e)), _) => Err(e),
                    (Some(Ok(l)), Ok(n)) if l != n => Err("conflicting content-length values"),
                    (_, Ok(n)) => Ok(n),
                });
            }
        } else if name == header::CONNECTION {
            for t in tokens() {
                self.close |= t.eq_ignore_ascii_case(b"close");
                self.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }

    /// Whether the connection may carry another request after this response.
    fn keeps_alive(&self, version: Version) -> bool {
        if version == Version::HTTP_10 {
            self.keep_alive
        } else {
            !self.close
        }
    }
}

/// The body's framing (RFC 9112 §6.3), and whether it leaves the connection reusable.
fn response_framing(
    status: StatusCode,
    version: Version,
    method: &Method,
    facts: &FramingFacts,
) -> Result<(Framing, bool), H1Error> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok((Framing::Upgrade, false));
    }
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Done, true));
    }
    if let Some(chunked_last) = facts.chunked_last {
        // HTTP/1.0 has no Transfer-Encoding: the framing is unknown, so the body runs
        // until the upstream closes (RFC 9112 §6.1).
        if version == Version::HTTP_10 {
            return Ok((Framing::Eof, false));
        }
        // With both, Transfer-Encoding wins and the connection is closed afterwards.
        let with_length = facts.length.is_some();
        return Ok(if chunked_last {
            (Framing::Chunked(Chunked::Size), !with_length)
        } else {
            (Framing::Eof, false)
        });
    }
    match facts.length {
        Some(Ok(n)) => Ok((Framing::Length(n), true)),
        Some(Err(e)) => Err(H1Error::Parse(e)),
        None => Ok((Framing::Eof, false)),
    }
}

/// Where a response body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Complete.
    Done,
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes the connection.
    Eof,
    /// `101`: no body; the connection now speaks another protocol.
    Upgrade,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk: this many data bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// An upstream response body, read from the connection as the client side polls it.
#[derive(Debug)]
pub struct H1Body {
    conn: Option<Conn>,
    addr: SocketAddr,
    framing: Framing,
    reusable: bool,
    /// The rest of a request body the upstream answered before receiving.
    upload: Option<Upload>,
}

impl H1Body {
    /// The connection of a `101` response, with any bytes the upstream sent after the
    /// head; `None` for every other response.
    pub fn into_tunnel(mut self) -> Option<Tunnel> {
        if self.framing != Framing::Upgrade {
            return None;
        }
        let conn = self.conn.take()?;
        // Copied out (usually nothing) so that the connection's read buffer is freed: a
        // long link lives for hours, and idle links are counted in KiB each.
        Some(Tunnel {
            io: conn.io,
            pending: Bytes::copy_from_slice(&conn.rbuf),
        })
    }

    /// The body ended: a reusable connection goes back to the pool (not while a request
    /// body is still going out on it).
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.reusable && self.upload.is_none() && conn.rbuf.is_empty() {
                put(self.addr, conn);
            }
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // The upstream answered before it had the whole request body: keep sending
            // it alongside (a streaming echo needs the rest to finish its answer).
            if let Some(up) = self.upload.as_mut() {
                match up.poll_send(&mut conn.io, cx) {
                    Poll::Ready(Ok(())) => self.upload = None,
                    // Not reusable: the upload stays unfinished.
                    Poll::Ready(Err(e)) => {
                        tracing::debug!(error = %e, "request body not sent in full after an early answer");
                        self.reusable = false;
                        self.upload = None;
                    }
                    Poll::Pending => {}
                }
            }
            let buf = &mut conn.rbuf;
            match self.framing {
                Framing::Done | Framing::Upgrade => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    continue;
                }
                Framing::Length(rem) if !buf.is_empty() => {
                    let n = rem.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    self.framing = Framing::Length(rem - n);
                    if rem == n {
                        // Back to the pool before the last piece is handed on, so the
                        // next request can already use the connection.
                        self.framing = Framing::Done;
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Eof if !buf.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(buf.split().freeze()))));
                }
                Framing::Chunked(state) if !buf.is_empty() => match chunk_step(buf, state) {
                    Err(e) => {
                        self.conn = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Ok(ChunkStep::More) => {}
                    Ok(ChunkStep::Next(next, data)) => {
                        self.framing = next.map_or(Framing::Done, Framing::Chunked);
                        if let Some(data) = data {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        continue;
                    }
                    Ok(ChunkStep::Trailers(trailers)) => {
                        self.framing = Framing::Done;
                        self.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                },
                _ => {}
            }
            // More bytes needed.
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(H1Error::Io(e))));
                }
                Poll::Ready(Ok(0)) => {
                    self.conn = None;
                    return Poll::Ready(match self.framing {
                        Framing::Eof => None,
                        _ => Some(Err(H1Error::Closed)),
                    });
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }
}

enum ChunkStep {
    /// Not enough bytes buffered for the next step.
    More,
    /// The next state (`None`: the body is complete), and data to hand on.
    Next(Option<Chunked>, Option<Bytes>),
    /// The body is complete, with these trailer fields.
    Trailers(HeaderMap),
}

/// Where the line at the front of `buf` ends (its LF); `None` until one is buffered.
fn line_end(buf: &[u8]) -> Result<Option<usize>, H1Error> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => Ok(Some(i)),
        None if buf.len() > MAX_HEAD => Err(H1Error::Parse("chunk line too long")),
        None => Ok(None),
    }
}

/// One step of decoding a chunked body from the front of `buf` (not empty).
fn chunk_step(buf: &mut BytesMut, state: Chunked) -> Result<ChunkStep, H1Error> {
    match state {
        Chunked::Data(rem) => {
            let n = rem.min(buf.len() as u64);
            let data = buf.split_to(n as usize).freeze();
            let next = if rem == n {
                Chunked::DataEnd
            } else {
                Chunked::Data(rem - n)
            };
            Ok(ChunkStep::Next(Some(next), Some(data)))
        }
        Chunked::DataEnd => {
            // CRLF; a bare LF is accepted as hyper does.
            match buf.as_ref() {
                [b'\n', ..] => buf.advance(1),
                [b'\r', b'\n', ..] => buf.advance(2),
                [b'\r'] => return Ok(ChunkStep::More),
                _ => return Err(H1Error::Parse("chunk data not followed by CRLF")),
            }
            Ok(ChunkStep::Next(Some(Chunked::Size), None))
        }
        Chunked::Size => {
            let Some(eol) = line_end(buf)? else {
                return Ok(ChunkStep::More);
            };
            let line = buf[..eol].strip_suffix(b"\r").unwrap_or(&buf[..eol]);
            let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            if digits == 0 || digits > 16 {
                return Err(H1Error::Parse("invalid chunk size"));
            }
            // After the size: optional whitespace, then the end or an extension. A stray
            // byte (or CR) here could mean the two sides disagree on the framing.
            let rest = &line[digits..];
            let rest = &rest[rest
                .iter()
                .take_while(|b| matches!(b, b' ' | b'\t'))
                .count()..];
            if !(rest.is_empty() || rest[0] == b';') || rest.contains(&b'\r') {
                return Err(H1Error::Parse("invalid chunk size line"));
            }
            let size = line[..digits].iter().fold(0u64, |acc, &b| {
                let d = (b as char).to_digit(16).unwrap_or(0);
                (acc << 4) | u64::from(d)
            });
            buf.advance(eol + 1);
            Ok(ChunkStep::Next(
                Some(if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                }),
                None,
            ))
        }
        Chunked::Trailers => {
            match buf.as_ref() {
                [b'\n', ..] => {
                    buf.advance(1);
                    return Ok(ChunkStep::Next(None, None));
                }
                [b'\r', b'\n', ..] => {
                    buf.advance(2);
                    return Ok(ChunkStep::Next(None, None));
                }
                [b'\r'] => return Ok(ChunkStep::More),
                _ => {}
            }
            // A trailer section: fields up to an empty line, parsed as a head's are.
            let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
            let len = match httparse::parse_headers(buf, &mut fields) {
                Ok(httparse::Status::Complete((n, _))) => n,
                Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                    return Err(H1Error::Parse("trailer section too large"))
                }
                Ok(httparse::Status::Partial) => return Ok(ChunkStep::More),
                Err(_) => return Err(H1Error::Parse("malformed trailer section")),
            };
            let mut trailers = HeaderMap::new();
            for f in fields.iter().take_while(|f| !f.name.is_empty()) {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| H1Error::Parse("invalid trailer name"))?;
                let value = HeaderValue::from_bytes(f.value)
                    .map_err(|_| H1Error::Parse("invalid trailer value"))?;
                trailers.append(name, value);
            }
            buf.advance(len);
            Ok(ChunkStep::Trailers(trailers))
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.get_mut().poll_next(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.framing, Framing::Done | Framing::Upgrade)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) if self.conn.is_some() => SizeHint::with_exact(n),
            Framing::Done | Framing::Upgrade | Framing::Length(_) => SizeHint::with_exact(0),
            Framing::Chunked(_) | Framing::Eof => SizeHint::default(),
        }
    }
}

/// An upstream connection after `101 Switching Protocols`: the bytes already read after
/// the head come first.
#[derive(Debug)]
pub struct Tunnel {
    io: TcpStream,
    pending: Bytes,
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pending.is_empty() {
            let n = this.pending.len().min(buf.remaining());
            buf.put_slice(&this.pending.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8], method: &Method) -> Result<Option<Head>, H1Error> {
        let mut buf = BytesMut::from(raw);
        parse_head(&mut buf, method)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let get = Method::GET;
        let h = |raw: &str| {
            head(raw.as_bytes(), &get)
                .ok()
                .flatten()
                .map(|h| (h.framing, h.reusable))
        };
        assert_eq!(
            h("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            Some((Framing::Length(5), true))
        );
        assert_eq!(
            h("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            Some((Framing::Chunked(Chunked::Size), true))
        );
        assert_eq!(
            h("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"),
            Some((Framing::Chunked(Chunked::Size), false))
        );
        let both = head(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
            &get,
        );
        assert!(
            matches!(both, Ok(Some(ref h)) if !h.headers.contains_key("content-length")),
            "{both:?}"
        );
        assert_eq!(h("HTTP/1.1 200 OK\r\n\r\n"), Some((Framing::Eof, false)));
        assert_eq!(
            h("HTTP/1.1 204 No Content\r\n\r\n"),
            Some((Framing::Done, true))
        );
        assert_eq!(
            h("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n"),
            Some((Framing::Length(5), false))
        );
        assert_eq!(
            h("HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n"),
            Some((Framing::Length(5), false))
        );
        assert_eq!(
            h("HTTP/1.0 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\n"),
            Some((Framing::Length(5), true))
        );
        let head_req = head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            &Method::HEAD,
        );
        assert!(matches!(
            head_req,
            Ok(Some(Head {
                framing: Framing::Done,
                ..
            }))
        ));
    }

    #[test]
    fn bad_heads_are_protocol_errors() {
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            "HTTP/1.1 999x OK\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            let r = head(raw.as_bytes(), &Method::GET);
            assert!(
                matches!(r, Err(ref e) if e.kind() == UpstreamErrorKind::Protocol),
                "{raw:?}: {r:?}"
            );
        }
        // Repeated equal lengths are one length (RFC 9110 §8.6).
        let r = head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n",
            &Method::GET,
        );
        assert!(matches!(
            r,
            Ok(Some(Head {
                framing: Framing::Length(5),
                ..
            }))
        ));
    }

    #[test]
    fn interim_responses_are_skipped_and_values_kept() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 2\r\n\r\nok"[..],
        );
        let h = parse_head(&mut buf, &Method::POST).ok().flatten();
        let h = h.as_ref();
        assert_eq!(h.map(|h| h.status), Some(StatusCode::CREATED));
        let values: Vec<_> = h
            .map(|h| h.headers.get_all("x-a").iter().cloned().collect())
            .unwrap_or_default();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(&buf[..], b"ok");
        // The head limit is on the head, not on the body bytes read along with it.
        let mut big = b"HTTP/1.1 200 OK\r\ncontent-length: 70000\r\n\r\n".to_vec();
        big.resize(big.len() + 70_000, b'x');
        assert!(matches!(head(&big, &Method::GET), Ok(Some(_))));
        let mut endless = b"HTTP/1.1 200 OK\r\nx-a: ".to_vec();
        endless.resize(MAX_HEAD + 10, b'a');
        assert!(matches!(
            head(&endless, &Method::GET),
            Err(H1Error::Parse(_))
        ));
        // A head cut short needs more bytes.
        assert!(matches!(
            head(b"HTTP/1.1 200 OK\r\nx-a:", &Method::GET),
            Ok(None)
        ));
    }

    /// Decodes as far as `wire` goes: body, state (`None`: complete), bytes left, and
    /// the trailer fields as `name=value` strings.
    type Decoded = (Vec<u8>, Option<Chunked>, usize, Vec<String>);

    fn decode(wire: &[u8]) -> Result<Decoded, H1Error> {
        let mut buf = BytesMut::from(wire);
        let mut state = Some(Chunked::Size);
        let mut out = Vec::new();
        let mut trailers = Vec::new();
        while let Some(s) = state {
            if buf.is_empty() {
                break;
            }
            match chunk_step(&mut buf, s)? {
                ChunkStep::More => break,
                ChunkStep::Next(next, data) => {
                    out.extend_from_slice(&data.unwrap_or_default());
                    state = next;
                }
                ChunkStep::Trailers(t) => {
                    for (k, v) in &t {
                        trailers.push(format!("{k}={}", v.to_str().unwrap_or("?")));
                    }
                    state = None;
                }
            }
        }
        Ok((out, state, buf.len(), trailers))
    }

    #[test]
    fn chunked_bodies_decode() {
        let (body, state, left, trailers) =
            decode(b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: t\r\nx-b: 2\r\n\r\nNEXT")
                .unwrap_or_default();
        assert_eq!(body, b"hello, world");
        assert_eq!(state, None);
        assert_eq!(left, 4, "bytes after the body stay in the buffer");
        assert_eq!(trailers, ["x-trailer=t", "x-b=2"]);
        // Without trailers, the last chunk ends at its empty line.
        let ended = decode(b"1\r\nx\r\n0\r\n\r\n").map(|(b, s, l, t)| (b, s, l, t.len()));
        assert!(
            matches!(ended, Ok((ref b, None, 0, 0)) if b == b"x"),
            "{ended:?}"
        );
        // Cut anywhere, decoding stops and waits for more.
        let (body, state, _, _) = decode(b"5\r\nhel").unwrap_or_default();
        assert_eq!(body, b"hel");
        assert_eq!(state, Some(Chunked::Data(2)));
        assert!(matches!(decode(b"zz\r\n"), Err(H1Error::Parse(_))));
        // Only whitespace or an extension may follow the size.
        for bad in [
            &b"5 junk\r\nhello\r\n"[..],
            b"5\rX\nhello\r\n",
            b"5\r\r\nhello\r\n",
        ] {
            assert!(matches!(decode(bad), Err(H1Error::Parse(_))), "{bad:?}");
        }
        let (body, _, _, _) = decode(b"5 ;a=b\r\nhello\r\n").unwrap_or_default();
        assert_eq!(body, b"hello");
        // A size line that never ends is cut off.
        assert!(matches!(
            decode(&[b'1'; MAX_HEAD + 1]),
            Err(H1Error::Parse(_))
        ));
        assert!(matches!(decode(b"5\r\nhelloXX"), Err(H1Error::Parse(_))));
    }

    #[tokio::test]
    async fn the_sweep_closes_dropped_and_old_idle_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let idle = |addr| IDLE.with(|m| m.borrow().get(&addr).map_or(0, Vec::len));
        let mut upstream_sides = Vec::new();
        for _ in 0..2 {
            let c = TcpStream::connect(addr).await.unwrap();
            upstream_sides.push(listener.accept().await.unwrap().0);
            put(addr, Conn::new(c));
        }
        assert_eq!(idle(addr), 2);
        // The upstream closes one; the reactor sees its FIN.
        drop(upstream_sides.pop());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = SWEEPS.with(Cell::get);
        sweep(start + 1);
        assert_eq!(idle(addr), 1, "the closed one is gone, the open one stays");
        sweep(start + IDLE_SWEEPS - 1);
        assert_eq!(idle(addr), 1, "not idle long enough yet");
        sweep(start + IDLE_SWEEPS);
        assert_eq!(idle(addr), 0);
        assert!(
            IDLE.with(|m| !m.borrow().contains_key(&addr)),
            "empty lists are dropped"
        );
    }

    #[test]
    fn addresses_hash_apart() {
        use std::hash::BuildHasher;
        let h = |a: &str| {
            let addr: SocketAddr = a.parse().unwrap();
            BuildHasherDefault::<AddrHasher>::default().hash_one(addr)
        };
        let all = [
            h("10.0.0.1:80"),
            h("10.0.0.1:81"),
            h("10.0.0.2:80"),
            h("[::1]:80"),
            h("[::2]:80"),
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|b| b != a), "{all:?}");
        }
    }

    #[test]
    fn client_trailers_pass_but_for_control_fields() {
        let mut t = HeaderMap::new();
        t.insert("x-checksum", HeaderValue::from_static("abc"));
        t.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1"));
        t.insert(header::HOST, HeaderValue::from_static("evil"));
        assert_eq!(
            String::from_utf8_lossy(&trailer_block(&t)),
            "0\r\nx-checksum: abc\r\n\r\n"
        );
    }

    #[test]
    fn request_heads_are_framed() {
        let req = Request::post("/chat/send?x=1")
            .header("host", "a")
            .header("x-custom", "v")
            .body(())
            .map(|r| r.into_parts().0);
        let Ok(parts) = req else {
            panic!("request builds")
        };
        let mut out = Vec::new();
        encode_head(&mut out, &parts, true);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST /chat/send?x=1 HTTP/1.1\r\nhost: a\r\nx-custom: v\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }
}
