//! Writing: answers framed as they come, within the client's flow-control windows.

use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::future::abortable;
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Conn, Guarded, WRITE_HIGH};
use crate::http2::body::BodyCut;
use crate::http2::frame::{self, Reason};
use crate::http2::hpack::encode_field;
use crate::http2::response::head_block;
use crate::proxy::Answer;
use crate::server::conn::InFlight;
use crate::upstream::{DownBody, DownBodyError};

/// Polls an answer body for its next frame.
pub(super) struct NextFrame {
    id: u32,
    body: Option<Box<Guarded>>,
}

/// A body's next frame; `Err` when polling it panicked.
pub(super) type Polled = (
    u32,
    Box<Guarded>,
    Result<Option<Result<Frame<Bytes>, DownBodyError>>, Panicked>,
);

#[derive(Debug)]
pub(super) struct Panicked;

impl Future for NextFrame {
    type Output = Polled;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Polled> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Pending;
        };
        let polled =
            std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(body.as_mut()).poll_frame(cx)));
        // A body that panics ends its stream (reset) as one that fails does.
        let frame = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(frame)) => Ok(frame),
            Err(_) => Err(Panicked),
        };
        match self.body.take() {
            Some(body) => Poll::Ready((self.id, body, frame)),
            None => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    // === writing ===

    pub(super) fn answer(&mut self, id: u32, answer: Option<Answer>, inflight: InFlight) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let Some(mut answer) = answer else {
            self.reset(id, Reason::Internal);
            return;
        };
        s.answered = true;
        let raw = answer.body_mut().take_raw();
        let status = answer.status().as_u16();
        let end = answer.body().is_end_stream();
        self.start_block();
        let map = answer.headers();
        let fields = || {
            let raw = raw.iter().flat_map(|r| r.spans().map(|span| r.field(span)));
            raw.chain(
                map.iter()
                    .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
            )
        };
        let seen = head_block(status, fields, &mut self.block);
        if !end && !seen.length {
            if let Some(n) = answer.body().size_hint().exact() {
                let mut digits = [0; 20];
                let n = crate::markers::itoa(n, &mut digits);
                encode_field(b"content-length", n, &mut self.block);
            }
        }
        if !seen.date {
            // graylane's own answers (and an upstream's without one), as hyper dated them.
            encode_field(b"date", &crate::server::date::now(), &mut self.block);
        }
        frame::headers(&mut self.wbuf, id, &self.block, end, self.peer_frame);
        if end || self.send_whole(id, answer.body_mut()) {
            self.sent_all(id);
            return;
        }
        let body = Box::new((*answer).into_body().with_guard(inflight));
        self.next_frame(id, body);
    }

    /// Frames a body already whole in memory (the usual short answer, read with its
    /// head) as one DATA frame that ends the stream, when the windows and the frame size
    /// take it whole, rather than polling it as a stream; `false`, with nothing written,
    /// otherwise.
    fn send_whole(&mut self, id: u32, body: &mut DownBody) -> bool {
        let Some(n) = body.size_hint().exact() else {
            return false;
        };
        let Some(s) = self.streams.get_mut(&id) else {
            return false;
        };
        let room = self.send_window.min(s.send_window).max(0) as u64;
        if n == 0 || n > room || n > self.peer_frame as u64 {
            return false;
        }
        let mark = self.wbuf.len();
        // `n <= peer_frame`, a `usize`: the cast cannot truncate.
        frame::data_head(&mut self.wbuf, id, n as usize, true);
        if !body.take_whole_into(&mut self.wbuf, n) {
            self.wbuf.truncate(mark);
            return false;
        }
        self.send_window -= n as i64;
        s.send_window -= n as i64;
        true
    }

    fn next_frame(&mut self, id: u32, body: Box<Guarded>) {
        let (fut, handle) = abortable(NextFrame {
            id,
            body: Some(body),
        });
        if let Some(s) = self.streams.get_mut(&id) {
            s.body_next = Some(handle);
            self.bodies.push(fut);
        }
    }

    pub(super) fn body_frame(&mut self, (id, body, frame): Polled) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.body_next = None;
        let Ok(frame) = frame else {
            tracing::error!(stream = id, "answer body panicked");
            self.reset(id, Reason::Internal);
            return;
        };
        match frame {
            None => {
                frame::data_head(&mut self.wbuf, id, 0, true);
                self.sent_all(id);
            }
            Some(Err(e)) => {
                tracing::debug!(stream = id, error = %e, "answer body failed");
                self.reset(id, Reason::Internal);
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(data) => {
                    let end = body.is_end_stream();
                    self.send_data(id, body, data, end);
                }
                Err(f) => {
                    self.start_block();
                    if let Ok(t) = f.into_trailers() {
                        for (n, v) in &t {
                            encode_field(n.as_str().as_bytes(), v.as_bytes(), &mut self.block);
                        }
                    }
                    frame::headers(&mut self.wbuf, id, &self.block, true, self.peer_frame);
                    self.sent_all(id);
                }
            },
        }
    }

    /// Writes as much of `data` as the windows allow; parks the rest with its body.
    fn send_data(&mut self, id: u32, body: Box<Guarded>, mut data: Bytes, end: bool) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if data.is_empty() && end {
            // An upstream body may end with an empty frame: END_STREAM all the same.
            frame::data_head(&mut self.wbuf, id, 0, true);
        }
        while !data.is_empty() {
            let room = self.send_window.min(s.send_window).max(0) as usize;
            let n = data.len().min(room).min(self.peer_frame);
            if n == 0 {
                s.parked = Some((body, data, end));
                self.maybe_parked = true;
                return;
            }
            let last = n == data.len() && end;
            frame::data_head(&mut self.wbuf, id, n, last);
            self.wbuf.extend_from_slice(&data[..n]);
            data.advance(n);
            self.send_window -= n as i64;
            s.send_window -= n as i64;
        }
        if end {
            self.sent_all(id);
        } else {
            self.next_frame(id, body);
        }
    }

    /// Starts a header block, with the table size update the client's decoder waits for
    /// after a change of its table's size (RFC 7541 §4.2).
    pub(super) fn start_block(&mut self) {
        self.block.clear();
        if std::mem::take(&mut self.table_update) {
            self.block.push(0x20);
        }
    }

    /// Resumes parked answers while the connection's window and the output buffer have
    /// room; what is left waits for the next WINDOW_UPDATE or write.
    pub(super) fn resume_parked(&mut self) {
        if !self.maybe_parked {
            return;
        }
        let parked: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| s.parked.is_some())
            .map(|(&id, _)| id)
            .collect();
        let mut left = false;
        for id in parked {
            if self.send_window <= 0 || self.wbuf.len() >= WRITE_HIGH {
                left = true;
                break;
            }
            self.resume(id);
        }
        self.maybe_parked = left || self.streams.values().any(|s| s.parked.is_some());
    }

    pub(super) fn resume(&mut self, id: u32) {
        if let Some((body, data, end)) = self.streams.get_mut(&id).and_then(|s| s.parked.take()) {
            self.send_data(id, body, data, end);
        }
    }

    /// The answer is all out: the stream ends, and a client still sending is told to
    /// stop (RFC 9113 §8.1: RST_STREAM with NO_ERROR).
    fn sent_all(&mut self, id: u32) {
        if let Some(s) = self.streams.remove(&id) {
            if !s.recv_closed {
                self.rst(id, Reason::NoError);
            }
            if let Some(tx) = s.body {
                tx.cut(BodyCut::Reset);
            }
        }
    }

    pub(super) fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.wbuf.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.wbuf.clear();
        if self.wbuf.capacity() > 2 * WRITE_HIGH {
            // A burst's buffer is not kept for the connection's life.
            self.wbuf.shrink_to(WRITE_HIGH);
        }
        self.written = 0;
        Pin::new(&mut self.io).poll_flush(cx)
    }
}
