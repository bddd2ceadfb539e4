//! The response body as the client side polls it, and the connection of a `101`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::codec::{chunk_step, ChunkStep, Framing};
use super::exchange::Upload;
use super::idle::{put, Conn};
use super::raw::RawFields;
use super::H1Error;

/// An upstream response body, read from the connection as the client side polls it.
#[derive(Debug)]
pub(crate) struct H1Body {
    pub(super) conn: Option<Conn>,
    pub(super) addr: SocketAddr,
    pub(super) framing: Framing,
    pub(super) reusable: bool,
    /// The rest of a request body the upstream answered before receiving. Boxed: it is
    /// rare, and inline it made every response, moved several times on its way to the
    /// client, 112 bytes larger.
    pub(super) upload: Option<Box<Upload>>,
    /// The head's fields kept as received, when the client side asked for them so.
    pub(super) raw: Option<Box<RawFields>>,
}

impl H1Body {
    /// The head's fields kept as received (the response's header map then holds none
    /// of them).
    pub(crate) fn take_raw(&mut self) -> Option<Box<RawFields>> {
        self.raw.take()
    }

    /// The connection of a `101` response, with any bytes the upstream sent after the
    /// head; `None` for every other response.
    pub(crate) fn into_tunnel(mut self) -> Option<Tunnel> {
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
    pub(super) fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.reusable && self.upload.is_none() && conn.rbuf.is_empty() {
                put(self.addr, conn);
            }
        }
    }

    /// Appends a body of `len` bytes that is already whole in the read buffer to `out`
    /// and ends it (the connection goes back to the pool): a short answer, most of them,
    /// then skips being handed on frame by frame. `false`, with nothing done, when the
    /// body is not that (not a length of `len`, bytes still to read, an upload still
    /// going out).
    pub(crate) fn take_whole_into(&mut self, out: &mut Vec<u8>, len: u64) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let Framing::Length(rem) = self.framing else {
            return false;
        };
        if rem != len || self.upload.is_some() || (conn.rbuf.len() as u64) < rem {
            return false;
        }
        // `rem <= rbuf.len()`: the cast cannot truncate.
        let n = rem as usize;
        out.extend_from_slice(&conn.rbuf[..n]);
        conn.rbuf.advance(n);
        self.framing = Framing::Done;
        self.finish();
        true
    }

    pub(super) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
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
pub(crate) struct Tunnel {
    pub(super) io: TcpStream,
    pub(super) pending: Bytes,
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Tunnel { io, pending } = self.get_mut();
        if pending.is_empty() {
            return Pin::new(io).poll_read(cx, buf);
        }
        let n = pending.len().min(buf.remaining());
        buf.put_slice(&pending.split_to(n));
        Poll::Ready(Ok(()))
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
