//! The response as the client receives it: the head written as hyper's HTTP/1.1 server
//! writes it, the body framed by length or in chunks.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body::Body;
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::has_token;
use crate::fields::LineCopy;
use crate::proxy::Answer;
use crate::server::conn::ConnIo;
use crate::upstream::h1::RawFields;
use crate::upstream::{DownBody, DownBodyError};

/// Body bytes gathered before they are written; a larger data frame is written as it is.
const GATHER_MAX: usize = 16 * 1024;

/// How the response body is framed toward the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
}

/// Writes a response head as hyper's HTTP/1.1 server would for the same response and
/// request, and returns the body's framing and whether the connection ends after it.
fn encode_head(
    out: &mut Vec<u8>,
    resp: &http::response::Parts,
    raw: Option<&RawFields>,
    body: &DownBody,
    head_only: bool,
    close: bool,
) -> Option<(Framing, bool)> {
    let status = resp.status;
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let no_content = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let can_body = !head_only && !no_content;
    // `None`: no body at all; `Some(None)`: a body of unknown length.
    let len = (!body.is_end_stream()).then(|| body.size_hint().exact());
    let mut seen = Seen {
        framing: None,
        wrote_date: false,
        close,
        wrote_close: false,
    };
    // An HTTP/1.1 upstream's fields as received come first (copied a run of lines at a
    // time, as the request's are), then what graylane added.
    if let Some(raw) = raw {
        let mut lines = LineCopy::new(raw.head());
        for span in raw.spans() {
            let (name, value) = raw.field(span);
            if seen.field(name, value, len, head_only)? {
                lines.field(out, span);
            }
        }
        lines.finish(out);
    }
    for (name, value) in &resp.headers {
        let (name, value) = (name.as_str().as_bytes(), value.as_bytes());
        if seen.field(name, value, len, head_only)? {
            crate::fields::put(out, name, value);
        }
    }
    let Seen {
        framing,
        wrote_date,
        mut close,
        wrote_close,
    } = seen;
    let framing = match (framing, len) {
        (Some(f), _) => f,
        (None, Some(None)) if can_body => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        }
        (None, Some(None)) => Framing::Length(0),
        (None, None | Some(Some(0))) => {
            if !no_content && !head_only {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            Framing::Length(0)
        }
        (None, Some(Some(n))) if !no_content => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(crate::markers::itoa(n, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
            Framing::Length(n)
        }
        (None, Some(Some(_))) => Framing::Length(0),
    };
    let framing = if can_body {
        framing
    } else {
        Framing::Length(0)
    };
    // A 1xx other than a 101 never comes back from the upstream client; a 101 to a
    // request that asked for no upgrade leaves nothing to serve after it.
    close |= status.is_informational();
    if close && !wrote_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        super::super::date::extend(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Some((framing, close))
}

/// What the fields written so far said about framing, `Date` and the connection.
struct Seen {
    framing: Option<Framing>,
    wrote_date: bool,
    close: bool,
    /// A `Connection` field saying `close` is already written.
    wrote_close: bool,
}

impl Seen {
    /// Notes what one field says and whether it is written as it is (its name
    /// lowercased, as hyper writes names); `None` for a `Content-Length` that frames
    /// nothing readable.
    fn field(
        &mut self,
        name: &[u8],
        value: &[u8],
        len: Option<Option<u64>>,
        head_only: bool,
    ) -> Option<bool> {
        // Names come lowercase: a map's, and those kept as received (lowercased as the
        // upstream's head was read).
        let is = |n: &str| name == n.as_bytes();
        match name.len() {
            14 if is("content-length") => {
                if self.framing.is_some() {
                    return Some(false);
                }
                let n = match len {
                    Some(Some(n)) => n,
                    Some(None) => std::str::from_utf8(value).ok()?.parse().ok()?,
                    // No body: the field is kept only in an answer to HEAD, where it
                    // tells the length a GET would have had.
                    None if head_only => 0,
                    None => return Some(false),
                };
                self.framing = Some(Framing::Length(n));
            }
            // The framing toward the client is graylane's to choose.
            17 if is("transfer-encoding") => return Some(false),
            10 if is("connection") && has_token(value, b"close") => {
                self.close = true;
                self.wrote_close = true;
            }
            4 if is("date") => self.wrote_date = true,
            _ => {}
        }
        Some(true)
    }
}

/// Writes the response and its body; returns whether the connection may serve another
/// request. A body that fails or ends short of its length ends the connection, so the
/// client sees a cut message rather than a wrong one.
pub(super) async fn write_response<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut ConnIo<S>,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    resp: Answer,
    head_only: bool,
    close: bool,
) -> bool {
    out.clear();
    let (parts, mut body) = (*resp).into_parts();
    let raw = body.take_raw();
    let Some((framing, close)) = encode_head(out, &parts, raw.as_deref(), &body, head_only, close)
    else {
        tracing::debug!("response with an invalid content-length; closing");
        return false;
    };
    drop((parts, raw));
    let complete = match framing {
        Framing::Length(0) => true,
        _ => match write_body(io, buf, out, &mut body, framing).await {
            Ok(complete) => complete,
            Err(e) => {
                tracing::debug!(error = %e, "writing a response to the client failed");
                return false;
            }
        },
    };
    if !out.is_empty() && io.write_all(out).await.is_err() {
        return false;
    }
    if io.flush().await.is_err() {
        return false;
    }
    complete && !close
}

/// Streams the body, gathering what is ready into `out` behind the head so a short
/// answer leaves in one write. `Ok(false)`: the body failed or ended short (the client
/// must see the connection end); the bytes gathered are still to be written. `buf`
/// takes what the client sends meanwhile (see [`next_frame`]).
async fn write_body<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut ConnIo<S>,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    body: &mut DownBody,
    framing: Framing,
) -> io::Result<bool> {
    // A short body already whole in memory (the usual answer: it came in the head's
    // read) joins the head without being handed on frame by frame.
    if let Framing::Length(n) = framing {
        // `n` is the upstream's to say (up to `u64::MAX`): compared, not added to.
        if n <= GATHER_MAX.saturating_sub(out.len()) as u64 && body.take_whole_into(out, n) {
            return Ok(true);
        }
    }
    let mut left = match framing {
        Framing::Length(n) => n,
        Framing::Chunked => u64::MAX,
    };
    loop {
        let ready = poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(f) => Poll::Ready(Some(f)),
            Poll::Pending => Poll::Ready(None),
        })
        .await;
        let frame = match ready {
            Some(f) => f,
            None => {
                // Nothing more yet: what is gathered goes out while the upstream sends.
                if !out.is_empty() {
                    io.write_all(out).await?;
                    out.clear();
                }
                io.flush().await?;
                next_frame(io, buf, body).await?
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "upstream body failed; closing the client connection");
                return Ok(false);
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                // Trailers: this loop serves no request that said `TE: trailers`, and
                // hyper sends none without it either.
                Err(_) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        match framing {
            Framing::Length(_) => {
                // Never more than the length said (as hyper's encoder): the client
                // would read the rest as the next answer.
                let n = left.min(data.len() as u64);
                left -= n;
                put(io, out, &data.slice(..n as usize)).await?;
                if left == 0 {
                    // Done when the length is written, not when the body says it ended
                    // (an HTTP/2 upstream may send its end of stream later).
                    break;
                }
            }
            Framing::Chunked => {
                chunk_size(out, data.len());
                put(io, out, &data).await?;
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    match framing {
        Framing::Length(_) => Ok(left == 0),
        Framing::Chunked => {
            out.extend_from_slice(b"0\r\n\r\n");
            Ok(true)
        }
    }
}

/// The body's next frame. As hyper's server does, a client that closes (or fails) while
/// it waits ends the answer (`Err`): nobody would read the rest, and the upstream
/// exchange is dropped with it. A byte of a next request stops the watch; it waits in
/// `buf`.
async fn next_frame<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut ConnIo<S>,
    buf: &mut BytesMut,
    body: &mut DownBody,
) -> io::Result<Option<Result<Frame<Bytes>, DownBodyError>>> {
    let frame = |cx: &mut Context<'_>| Pin::new(&mut *body).poll_frame(cx);
    let mut frame = poll_fn(frame);
    while buf.is_empty() {
        tokio::select! {
            biased;
            f = &mut frame => return Ok(f),
            r = io.read_buf(buf) => match r {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) => return Err(e),
            },
        }
    }
    Ok(frame.await)
}

/// A chunk's size line: hex digits and CRLF.
fn chunk_size(out: &mut Vec<u8>, n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = HEX[v & 0xf];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Appends `data` to what is gathered, or writes both when `data` is large.
async fn put<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut ConnIo<S>,
    out: &mut Vec<u8>,
    data: &Bytes,
) -> io::Result<()> {
    if data.len() + out.len() <= GATHER_MAX {
        out.extend_from_slice(data);
        return Ok(());
    }
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    io.write_all(data).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderName, HeaderValue};
    use http::Response;

    fn head_of(status: u16, fields: &[(&str, &str)], body: &str, head_only: bool) -> String {
        let mut r = Response::new(DownBody::full(body.to_owned()));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in fields {
            r.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let (parts, body) = r.into_parts();
        let mut out = Vec::new();
        encode_head(&mut out, &parts, None, &body, head_only, false).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn heads_are_framed_as_hyper_frames_them() {
        // A length the body knows is written; the date is added when missing.
        let h = head_of(200, &[("x-a", "1")], "hello", false);
        assert!(h.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\ndate: "));
        assert!(h.ends_with(" GMT\r\n\r\n"), "{h}");
        // An upstream's own Date stays the only one.
        let h = head_of(404, &[("date", "x")], "", false);
        assert_eq!(
            h,
            "HTTP/1.1 404 Not Found\r\ndate: x\r\ncontent-length: 0\r\n\r\n"
        );
        // 204 and 304 get no length; a HEAD answer tells the length a GET would get.
        let h = head_of(204, &[("date", "x")], "", false);
        assert_eq!(h, "HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n");
        let h = head_of(304, &[("date", "x")], "", false);
        assert_eq!(h, "HTTP/1.1 304 Not Modified\r\ndate: x\r\n\r\n");
        let h = head_of(200, &[("date", "x")], "hello", true);
        assert_eq!(h, "HTTP/1.1 200 OK\r\ndate: x\r\ncontent-length: 5\r\n\r\n");
        // A Transfer-Encoding from elsewhere never frames the client's copy.
        let h = head_of(
            200,
            &[("date", "x"), ("transfer-encoding", "chunked")],
            "ab",
            false,
        );
        assert_eq!(h, "HTTP/1.1 200 OK\r\ndate: x\r\ncontent-length: 2\r\n\r\n");
        // A `Connection: close` already there is not written twice.
        let h = head_of(200, &[("date", "x"), ("connection", "close")], "", false);
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\ndate: x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        );
        // A status without a canonical reason still gets one.
        let h = head_of(599, &[("date", "x")], "", false);
        assert!(h.starts_with("HTTP/1.1 599 <none>\r\n"), "{h}");
    }

    /// An upstream's fields kept as received are written as they came, a run of lines in
    /// the form graylane writes copied whole, any other line rewritten; what graylane
    /// leaves out (hop-by-hop fields) splits a run.
    #[test]
    fn fields_kept_as_received_are_written_as_fields_are() {
        let raw = crate::upstream::h1::raw_fields(
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: x\r\nContent-Type: text/plain\r\n\
              Content-Length: 5\r\nConnection: keep-alive\r\nX-Clean: 1\r\nX-Odd:  spaced \r\n\
              X-Tail:v\r\nKeep-Alive: timeout=5\r\nX-Last: 1\r\nX-After: 2\r\n\r\n",
        );
        let (parts, body) = Response::new(DownBody::full("hello")).into_parts();
        let mut out = Vec::new();
        let (framing, close) =
            encode_head(&mut out, &parts, Some(&raw), &body, false, false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nserver: nginx\r\ndate: x\r\ncontent-type: text/plain\r\n\
             content-length: 5\r\nx-clean: 1\r\nx-odd: spaced\r\nx-tail: v\r\nx-last: 1\r\n\
             x-after: 2\r\n\r\n"
        );
        assert_eq!((framing, close), (Framing::Length(5), false));
    }

    #[test]
    fn chunk_sizes_are_hex() {
        for (n, want) in [
            (0, "0\r\n"),
            (10, "a\r\n"),
            (255, "ff\r\n"),
            (65536, "10000\r\n"),
        ] {
            let mut out = Vec::new();
            chunk_size(&mut out, n);
            assert_eq!(out, want.as_bytes());
        }
    }
}
