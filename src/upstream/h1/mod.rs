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
//!
//! - `idle`: the per-worker pool of idle connections and its sweep.
//! - `exchange`: writing the request head and body, reading the response head.
//! - `codec`: parsing response heads and chunked bodies (RFC 9112).
//! - `raw`: response heads kept as received, for clients served by graylane's own loop.
//! - `body`: the response body handed to the client side, and `101` tunnels.

mod body;
mod codec;
mod exchange;
mod idle;
mod raw;

pub(crate) use body::{H1Body, Tunnel};
pub(crate) use codec::{field_spans, lowercase_names};
pub(crate) use idle::sweep_idle;
pub(crate) use raw::RawFields;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response};
use tokio::net::TcpStream;

use super::body::UpBody;
use crate::error::UpstreamErrorKind;
use crate::fields::Received;
use exchange::{exchange, Exchange};
use idle::{take, Conn};

/// A response head's fields as the client of the own loop gets them kept, read from
/// `wire` (a whole head) as an exchange reads them, for tests of how they are written.
#[cfg(test)]
pub(crate) fn raw_fields(wire: &[u8]) -> Box<RawFields> {
    let mut buf = bytes::BytesMut::from(wire);
    let head = codec::parse_head(&mut buf, &http::Method::GET, true);
    head.ok()
        .flatten()
        .and_then(|h| h.raw)
        .expect("a head kept as received")
}

/// Most header fields a response head may carry (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Most trailer fields a chunked body may end with.
const MAX_TRAILERS: usize = 32;
/// Largest response head (or chunk-size line and trailer section) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Free space ensured in a connection's read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;

/// Why an exchange failed, with the cause.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H1Error {
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
    RequestBody(#[source] crate::upstream::ClientBodyError),
}

impl H1Error {
    /// Whether it failed before a connection was made (passive ejection counts these).
    pub(crate) fn at_connect(&self) -> bool {
        matches!(self, H1Error::Connect(_) | H1Error::ConnectTimeout)
    }

    /// The SPEC §3 kind.
    pub(crate) fn kind(&self) -> UpstreamErrorKind {
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

/// A failed exchange, with the request's fields handed back: they are unchanged (the
/// body may be partly sent), so a further attempt reuses them instead of a copy made in
/// advance.
#[derive(Debug)]
pub(crate) struct SendFailure {
    /// What went wrong.
    pub error: H1Error,
    /// The fields of the request as they were given.
    pub headers: HeaderMap,
}

/// The head of a request to an HTTP/1.1 upstream. Method and target are the client's,
/// borrowed: an `http::Request` built per attempt only to carry them cost its
/// construction, its moves into the exchange and its drop.
#[derive(Debug)]
pub(crate) struct Outgoing<'a> {
    pub method: &'a Method,
    /// Origin form: path and query ([`origin_form`]).
    pub target: &'a str,
    /// Written before graylane's added fields; empty when the own loop's head is
    /// written instead (`received`).
    pub headers: HeaderMap,
}

/// A URI's origin form (RFC 9112 §3.2.1), the target an HTTP/1.1 upstream is sent: its
/// path and query, `/` when it has none.
pub(crate) fn origin_form(uri: &http::Uri) -> &str {
    uri.path_and_query().map_or("/", |pq| pq.as_str())
}

/// Sends `req` with `body` (without `Host`, `origin` is sent as one) to `addr` on an
/// idle connection of this worker, or a new one. The response body reads the rest from
/// the connection and puts it back into the pool when it ends; a `101` hands it over
/// through [`H1Body::into_tunnel`].
/// `added`: fields written after the request's own (see `proxy::headers::Added`).
/// `received`: the own loop's request head, written in place of `req`'s (empty) fields;
/// then the response head's fields are wanted as received ([`H1Body::take_raw`]) too.
pub(crate) async fn send(
    addr: SocketAddr,
    origin: &str,
    req: Outgoing<'_>,
    mut body: UpBody,
    added: &[(&HeaderName, &HeaderValue)],
    connect_timeout: Duration,
    received: Option<&Received>,
) -> Result<Response<Box<H1Body>>, SendFailure> {
    let failed = |error, req: Outgoing<'_>| SendFailure {
        error,
        headers: req.headers,
    };
    while let Some(conn) = take(addr) {
        if !conn.idle_usable() {
            continue;
        }
        match exchange(conn, addr, origin, &req, received, added, &mut body).await {
            Ok(resp) => return Ok(resp),
            // Nothing of the request went out (the upstream closed an idle keep-alive
            // connection as it was taken): try the next one.
            Err(Exchange::Unsent(_)) => continue,
            Err(Exchange::Failed(error)) => return Err(failed(error, req)),
        }
    }
    // The cold path (connect) lives in its own boxed future: inlined, its state would
    // make every request's future larger, and futures are moved (copied) whole as they
    // are pinned.
    let conn = match Box::pin(connect(addr, connect_timeout)).await {
        Ok(c) => c,
        Err(error) => return Err(failed(error, req)),
    };
    match exchange(conn, addr, origin, &req, received, added, &mut body).await {
        Ok(resp) => Ok(resp),
        Err(Exchange::Unsent(error) | Exchange::Failed(error)) => Err(failed(error, req)),
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, H1Error> {
    let io = match crate::timer::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(H1Error::ConnectTimeout),
        Ok(Err(e)) => return Err(H1Error::Connect(e)),
        Ok(Ok(s)) => s,
    };
    let _ = io.set_nodelay(true);
    Ok(Conn::new(io))
}

/// Parses `data` as one upstream response (head, then a chunked body when it says so),
/// as the client would: for the fuzz target, which must find no input that panics or
/// loops.
pub(crate) fn parse_response_for_fuzzing(data: &[u8]) {
    use codec::{chunk_step, parse_head, ChunkStep, Framing};
    let mut buf = bytes::BytesMut::from(data);
    let Ok(Some(head)) = parse_head(&mut buf, &http::Method::GET, false) else {
        return;
    };
    let Framing::Chunked(mut state) = head.framing else {
        return;
    };
    while !buf.is_empty() {
        match chunk_step(&mut buf, state) {
            Ok(ChunkStep::Next(Some(next), _)) => state = next,
            Ok(ChunkStep::More | ChunkStep::Next(None, _) | ChunkStep::Trailers(_)) | Err(_) => {
                return
            }
        }
    }
}

#[cfg(test)]
mod tests;
