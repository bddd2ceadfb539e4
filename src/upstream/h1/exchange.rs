//! One request on one connection: the head and the first body piece in one write, the
//! rest of the body streamed while the response head is awaited.

use std::borrow::Cow;
use std::io::{self, IoSlice, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Response;
use http_body::{Body, Frame};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::body::H1Body;
use super::idle::Conn;
use super::{H1Error, Outgoing};
use crate::fields::{put, Fields, Received};
use crate::upstream::body::UpBody;

pub(super) enum Exchange {
    /// Failed before any byte of the request was written.
    Unsent(H1Error),
    Failed(H1Error),
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReqFraming {
    None,
    Length,
    Chunked,
}

/// Writes the request, streams its body while watching for an early response, and reads
/// the response head.
pub(super) async fn exchange(
    mut conn: Conn,
    addr: SocketAddr,
    origin: &str,
    req: &Outgoing<'_>,
    received: Option<&Received>,
    added: &[(&HeaderName, &HeaderValue)],
    body: &mut UpBody,
) -> Result<Response<Box<H1Body>>, Exchange> {
    let raw = received.is_some();
    let fields = Fields::of(&req.headers, received);
    let framing = match body {
        UpBody::Empty => ReqFraming::None,
        // The fields as the client sent them: hyper's map, or the head as received.
        UpBody::Reclaimable(_) if fields.get(&header::CONTENT_LENGTH).is_some() => {
            ReqFraming::Length
        }
        UpBody::Reclaimable(_) => ReqFraming::Chunked,
    };
    encode_head(
        &mut conn.wbuf,
        req.method,
        req.target,
        fields,
        added,
        framing == ReqFraming::Chunked,
        origin,
    );
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
        conn.poll_head(req.method, raw, cx)
    })
    .await
    .map_err(Exchange::Failed)?;
    let upload = upload.filter(|u| !u.sent()).map(Box::new);
    Ok(head.into_response(conn, addr, upload))
}

/// Body pieces up to this size are copied behind the head (one write for both); larger
/// ones are written from their own buffer.
pub(super) const INLINE_BODY: usize = 8 * 1024;

pub(super) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The last chunk with trailer fields (a client's, passed on as it sent them, but for
/// the fields that may not be trailers: framing, routing and connection control).
pub(super) fn trailer_block(trailers: &HeaderMap) -> Vec<u8> {
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
        put(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The request line and header fields, names lowercase as hyper writes them: a map's,
/// or a received head's (lowercased as it was read), whose lines otherwise go on as the
/// client wrote them.
pub(super) fn encode_head(
    out: &mut Vec<u8>,
    method: &http::Method,
    target: &str,
    fields: Fields<'_>,
    added: &[(&HeaderName, &HeaderValue)],
    chunked: bool,
    origin: &str,
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = match fields {
        Fields::Received(r) => {
            r.write(out);
            fields.host().0.is_some()
        }
        Fields::Map(m) => {
            let mut host = false;
            for (name, value) in m {
                host |= *name == header::HOST;
                put(out, name.as_str().as_bytes(), value.as_bytes());
            }
            host
        }
    };
    for (name, value) in added {
        put(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !host {
        // An HTTP/1.0 request may come without `Host` (and an HTTP/2 one without
        // `:authority`); it goes on as HTTP/1.1, which must carry one (RFC 9112 §3.2), so
        // it names the endpoint as configured, as a health check does.
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(origin.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The chunk-size line for `len` bytes of data.
pub(super) fn chunk_line(len: usize) -> ([u8; 20], usize) {
    let mut line = [0u8; 20];
    let mut cursor = std::io::Cursor::new(&mut line[..]);
    // 16 hex digits and CRLF always fit in 20 bytes.
    let _ = write!(cursor, "{len:x}\r\n");
    let n = cursor.position() as usize;
    (line, n)
}

/// Appends a body piece, framed.
pub(super) fn put_chunk(out: &mut Vec<u8>, data: &[u8], framing: ReqFraming) {
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
pub(super) struct Upload {
    pub(super) body: UpBody,
    pub(super) framing: ReqFraming,
    /// Framed bytes not yet written: chunk-size line, data, then CRLF and maybe the last
    /// chunk (any may be empty).
    pub(super) out: [Bytes; 3],
    /// The body ended: once `out` is written, all of it is sent.
    pub(super) ended: bool,
    /// A write failed: the upstream stopped reading.
    pub(super) failed: bool,
}

impl Upload {
    pub(super) fn new(body: UpBody, framing: ReqFraming) -> Self {
        Self {
            body,
            framing,
            out: Default::default(),
            ended: false,
            failed: false,
        }
    }

    /// Whether all of the body went out.
    pub(super) fn sent(&self) -> bool {
        self.ended && !self.failed && self.out.iter().all(Bytes::is_empty)
    }

    /// Frames `data` for writing; `last` ends the body.
    pub(super) fn stage(&mut self, data: Bytes, last: bool) {
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
    pub(super) fn poll_send(
        &mut self,
        io: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), H1Error>> {
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
