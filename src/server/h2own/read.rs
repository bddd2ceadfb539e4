//! Reading: the preface, frames, and what each does to the connection and its streams.

use std::panic::AssertUnwindSafe;

use bytes::{Buf, Bytes};
use futures_util::future::{AbortHandle, Abortable};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    close_stream, Conn, Stream, CONN_WINDOW, EARLY_RESETS, RESET_WINDOW_MS, STREAM_WINDOW,
};
use crate::fields::Received;
use crate::http2::body::{self, BodyCut, BodySender};
use crate::http2::frame::{self, flag, kind, Head, Reason, Settings};
use crate::http2::request::Refused;
use crate::http2::response::head_block;
use crate::proxy;
use crate::server::conn::InFlight;

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    // === reading ===

    /// Handles every whole frame in the read buffer.
    pub(super) fn read_frames(&mut self) -> Result<(), Reason> {
        if self.preface {
            if self.rbuf.len() < frame::PREFACE.len() {
                return Ok(());
            }
            if &self.rbuf[..frame::PREFACE.len()] != frame::PREFACE {
                return Err(Reason::Protocol);
            }
            self.rbuf.advance(frame::PREFACE.len());
            self.preface = false;
        }
        while self.failed.is_none() && self.rbuf.len() >= frame::HEAD_LEN {
            let mut h = [0; frame::HEAD_LEN];
            h.copy_from_slice(&self.rbuf[..frame::HEAD_LEN]);
            let head = Head::parse(&h);
            if head.len > frame::DEFAULT_MAX_FRAME as usize {
                return Err(Reason::FrameSize);
            }
            if self.rbuf.len() < frame::HEAD_LEN + head.len {
                self.rbuf
                    .reserve(frame::HEAD_LEN + head.len - self.rbuf.len());
                return Ok(());
            }
            self.rbuf.advance(frame::HEAD_LEN);
            let payload = self.rbuf.split_to(head.len).freeze();
            if self.first_settings && head.kind != kind::SETTINGS {
                return Err(Reason::Protocol);
            }
            if let Some((id, _, _, _)) = &self.cont {
                if head.kind != kind::CONTINUATION || head.stream != *id {
                    return Err(Reason::Protocol);
                }
            }
            self.frame(head, payload)?;
        }
        Ok(())
    }

    fn frame(&mut self, head: Head, payload: Bytes) -> Result<(), Reason> {
        let id = head.stream;
        match head.kind {
            kind::DATA => self.data(head, payload)?,
            kind::HEADERS => {
                if id == 0 || id.is_multiple_of(2) {
                    return Err(Reason::Protocol);
                }
                let (fragment, dep) = frame::headers_fragment(head.flags, &payload)?;
                let end_stream = head.flags & flag::END_STREAM != 0;
                let to = if self.streams.contains_key(&id) {
                    BlockFor::Trailers
                } else if id > self.last_id {
                    self.last_id = id;
                    BlockFor::New {
                        self_dep: dep == Some(id),
                    }
                } else if self.reset_sent.contains(&id) {
                    // Sent before the client saw graylane's RST_STREAM (trailers after an
                    // early answer): decoded, for the HPACK table, and ignored (§5.1).
                    BlockFor::Trailers
                } else {
                    // A stream id that is not new may not open a stream (§5.1.1).
                    return Err(Reason::Protocol);
                };
                if head.flags & flag::END_HEADERS != 0 {
                    self.block(id, end_stream, fragment, to)?;
                } else {
                    self.cont = Some((id, end_stream, to, fragment.to_vec()));
                }
            }
            kind::CONTINUATION => {
                let Some((cid, end_stream, to, mut block)) = self.cont.take() else {
                    return Err(Reason::Protocol);
                };
                block.extend_from_slice(&payload);
                if block.len() > self.block_limit {
                    return Err(Reason::EnhanceYourCalm);
                }
                if head.flags & flag::END_HEADERS != 0 {
                    self.block(cid, end_stream, &block, to)?;
                } else {
                    self.cont = Some((cid, end_stream, to, block));
                }
            }
            kind::PRIORITY => {
                if id == 0 {
                    return Err(Reason::Protocol);
                }
                if payload.len() != 5 && self.streams.contains_key(&id) {
                    self.client_fault(id, Reason::FrameSize)?;
                }
            }
            kind::RST_STREAM => {
                if payload.len() != 4 {
                    return Err(Reason::FrameSize);
                }
                if id == 0 || id > self.last_id {
                    return Err(Reason::Protocol);
                }
                if let Some(s) = self.streams.remove(&id) {
                    let answered = s.answered;
                    close_stream(s, BodyCut::Reset);
                    if !answered {
                        self.count_reset()?;
                    }
                }
            }
            kind::SETTINGS => {
                if id != 0 {
                    return Err(Reason::Protocol);
                }
                if head.flags & flag::ACK != 0 {
                    if !payload.is_empty() {
                        return Err(Reason::FrameSize);
                    }
                } else {
                    self.settings(Settings::parse(&payload)?)?;
                    frame::settings_ack(&mut self.wbuf);
                    self.first_settings = false;
                }
            }
            kind::PING => {
                if payload.len() != 8 {
                    return Err(Reason::FrameSize);
                }
                if id != 0 {
                    return Err(Reason::Protocol);
                }
                if head.flags & flag::ACK == 0 {
                    let mut data = [0; 8];
                    data.copy_from_slice(&payload);
                    frame::ping_ack(&mut self.wbuf, &data);
                }
            }
            kind::GOAWAY => {
                if id != 0 {
                    return Err(Reason::Protocol);
                }
                // The client opens no more streams; those open finish.
                self.goaway = true;
            }
            kind::WINDOW_UPDATE => self.window_update(id, &payload)?,
            kind::PUSH_PROMISE => return Err(Reason::Protocol),
            _ => {} // unknown frame types are ignored (§4.1)
        }
        Ok(())
    }

    /// A stream's trailers: held to the header list size as a request's fields are, and
    /// ending its body, whose length must then add up (RFC 9113 §8.1.1).
    fn trailers(&mut self, id: u32, end_stream: bool, block: &[u8]) -> Result<(), Reason> {
        let mut trailers = HeaderMap::new();
        let (mut size, mut bad) = (0usize, false);
        let limit = self.list_limit;
        self.decoder
            .decode(block, |n, v| {
                size += n.len() + v.len() + 32;
                // Trailers follow the rules of a request's fields (RFC 9113 §8.1): no
                // pseudo-header, no connection-specific field.
                if bad || size > limit || !crate::http2::request::trailer_ok(n, v) {
                    bad = true;
                    return;
                }
                match (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
                    (Ok(n), Ok(v)) => bad |= trailers.try_append(n, v).is_err(),
                    _ => bad = true,
                }
            })
            .map_err(|_| Reason::Compression)?;
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if s.recv_closed {
            // Half-closed (remote): RFC 9113 §5.1 names the error.
            return self.client_fault(id, Reason::StreamClosed);
        }
        let short = s.length.is_some_and(|n| n != s.got);
        if bad || !end_stream || short {
            return self.client_fault(id, Reason::Protocol);
        }
        s.recv_closed = true;
        if let Some(tx) = s.body.take() {
            tx.trailers(trailers);
        }
        Ok(())
    }

    fn settings(&mut self, s: Settings) -> Result<(), Reason> {
        if let Some(w) = s.initial_window_size {
            let delta = i64::from(w) - self.peer_window;
            self.peer_window = i64::from(w);
            for st in self.streams.values_mut() {
                st.send_window += delta;
                if st.send_window > i64::from(frame::MAX_WINDOW) {
                    return Err(Reason::FlowControl);
                }
            }
        }
        if let Some(f) = s.max_frame_size {
            self.peer_frame = f as usize;
        }
        if let Some(size) = s.header_table_size {
            // The client's decoder waits for a size update at the start of the next
            // block once its table's size changed (RFC 7541 §4.2); graylane's table is
            // empty at any size, so the update says 0.
            if size != self.peer_table {
                self.peer_table = size;
                self.table_update = true;
            }
        }
        Ok(())
    }

    /// A stream error the client provoked: counted with its resets, since a client can
    /// make a server abandon work this way as well as with RST_STREAM.
    fn client_fault(&mut self, id: u32, reason: Reason) -> Result<(), Reason> {
        self.reset(id, reason);
        self.count_reset()
    }

    /// Counts a stream ended before its answer, by the client or by its fault: more than
    /// `EARLY_RESETS` within `RESET_WINDOW_MS` ends the connection (rapid reset,
    /// CVE-2023-44487; "MadeYouReset", CVE-2025-8671). A browser that cancels a few
    /// fetches now and then stays far below.
    fn count_reset(&mut self) -> Result<(), Reason> {
        let now = crate::clock::coarse_ms();
        if now.saturating_sub(self.resets.0) > RESET_WINDOW_MS {
            self.resets = (now, 0);
        }
        self.resets.1 += 1;
        if self.resets.1 > EARLY_RESETS {
            return Err(Reason::EnhanceYourCalm);
        }
        Ok(())
    }

    fn window_update(&mut self, id: u32, payload: &[u8]) -> Result<(), Reason> {
        let [a, b, c, d] = <[u8; 4]>::try_from(payload).map_err(|_| Reason::FrameSize)?;
        let inc = i64::from(u32::from_be_bytes([a, b, c, d]) & frame::MAX_WINDOW);
        if id == 0 {
            if inc == 0 {
                return Err(Reason::Protocol);
            }
            self.send_window += inc;
            if self.send_window > i64::from(frame::MAX_WINDOW) {
                return Err(Reason::FlowControl);
            }
            self.resume_parked();
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return if id > self.last_id {
                Err(Reason::Protocol)
            } else {
                Ok(())
            };
        };
        if inc == 0 {
            return self.client_fault(id, Reason::Protocol);
        }
        s.send_window += inc;
        if s.send_window > i64::from(frame::MAX_WINDOW) {
            return self.client_fault(id, Reason::FlowControl);
        }
        self.resume(id);
        Ok(())
    }

    fn data(&mut self, head: Head, payload: Bytes) -> Result<(), Reason> {
        let id = head.stream;
        if id == 0 {
            return Err(Reason::Protocol);
        }
        let len = payload.len() as u64;
        self.recv_window -= len as i64;
        if self.recv_window < 0 {
            return Err(Reason::FlowControl);
        }
        let data = frame::unpad(head.flags, &payload)?;
        let data = payload.slice_ref(data);
        let end = head.flags & flag::END_STREAM != 0;
        let Some(s) = self.streams.get_mut(&id) else {
            if id > self.last_id {
                return Err(Reason::Protocol);
            }
            // A stream already closed: DATA still in flight when it was.
            self.conn_unacked += len;
            return Ok(());
        };
        if s.recv_closed {
            self.conn_unacked += len;
            return self.client_fault(id, Reason::StreamClosed);
        }
        s.recv_window -= len as i64;
        if s.recv_window < 0 {
            self.conn_unacked += len;
            return self.client_fault(id, Reason::FlowControl);
        }
        s.got += data.len() as u64;
        let short = end && s.length.is_some_and(|n| n != s.got);
        if s.length.is_some_and(|n| s.got > n) || short {
            // RFC 9113 §8.1.1: DATA that does not add up to content-length is malformed.
            self.conn_unacked += len;
            return self.client_fault(id, Reason::Protocol);
        }
        // Padding, and data nobody reads any more, go back to the client at once (what
        // a body still held when it is dropped gives back itself, see `OwnBody` and
        // `BodySender`).
        let padding = len - data.len() as u64;
        let delivered = data.is_empty() || s.body.as_mut().is_some_and(|tx| tx.data(data));
        let back = if delivered { padding } else { len };
        self.conn_unacked += back;
        s.unacked += back;
        if end {
            s.recv_closed = true;
            if let Some(mut tx) = s.body.take() {
                tx.flush();
            }
        } else if !s.listed && s.body.as_ref().is_some_and(BodySender::holding) {
            s.listed = true;
            self.held.push(id);
        }
        self.credit_pending |= back > 0;
        Ok(())
    }

    /// Queues the small DATA the streams hold (see `http2::body`), once a batch of frames
    /// is handled; a stream whose request path is behind keeps holding until it takes
    /// what is queued (which wakes the connection).
    /// True when some was queued (the request paths that take it are to be polled).
    pub(super) fn release_held(&mut self) -> bool {
        let before = self.held.len();
        let mut i = 0;
        while i < self.held.len() {
            let id = self.held[i];
            let done = match self.streams.get_mut(&id) {
                Some(s) => {
                    let done = s.body.as_mut().is_none_or(BodySender::release);
                    s.listed = !done;
                    done
                }
                None => true,
            };
            if done {
                self.held.swap_remove(i);
            } else {
                i += 1;
            }
        }
        self.held.len() < before
    }

    /// A whole header block: a new request, or a stream's trailers.
    fn block(
        &mut self,
        id: u32,
        end_stream: bool,
        block: &[u8],
        to: BlockFor,
    ) -> Result<(), Reason> {
        let self_dep = match to {
            BlockFor::New { self_dep } => self_dep,
            BlockFor::Trailers => return self.trailers(id, end_stream, block),
        };
        let assembler = &mut self.assembler;
        self.decoder
            .decode(block, |n, v| assembler.field(n, v))
            .map_err(|_| Reason::Compression)?;
        let mut received = Received::default();
        let request = self.assembler.finish(&mut received);
        if self.goaway {
            self.rst(id, Reason::RefusedStream);
            return Ok(());
        }
        if self_dep {
            self.rst(id, Reason::Protocol);
            return Ok(());
        }
        if self.streams.len() >= super::super::H2_MAX_STREAMS as usize {
            self.rst(id, Reason::RefusedStream);
            return Ok(());
        }
        let request = match request {
            Ok(r) => r,
            Err(Refused::Malformed(why)) => {
                tracing::debug!(peer = %self.ctx.peer, stream = id, why, "malformed HTTP/2 request");
                self.rst(id, Reason::Protocol);
                return Ok(());
            }
            Err(Refused::TooLarge) => {
                self.start_block();
                head_block(431, std::iter::empty, &mut self.block);
                frame::headers(&mut self.wbuf, id, &self.block, true, self.peer_frame);
                if !end_stream {
                    self.rst(id, Reason::NoError);
                }
                return Ok(());
            }
        };
        if end_stream && request.content_length.is_some_and(|n| n != 0) {
            self.rst(id, Reason::Protocol);
            return Ok(());
        }
        self.start(id, request, received, end_stream);
        Ok(())
    }

    fn start(
        &mut self,
        id: u32,
        request: crate::http2::request::Request,
        received: Received,
        end_stream: bool,
    ) {
        let inflight = InFlight::new(self.state.clone());
        let (tx, rx) = if end_stream {
            (None, None)
        } else {
            let (tx, rx) = body::channel(self.returned.clone(), request.content_length);
            (Some(tx), Some(rx))
        };
        let shared = self.shared.clone();
        let ctx = self.ctx.clone();
        let parts = request.parts;
        let peer = self.ctx.peer;
        // The stream's whole future (4.5 KiB) in one allocation, written straight into it:
        // built on the stack and then boxed, it was copied whole into its box, the largest
        // `memcpy` under load.
        let (handler, registration) = AbortHandle::new_pair();
        self.handlers.push(boxed_in_place(move || async move {
            #[cfg(test)]
            let panics = super::tests::asks_to_panic(&parts);
            let handle = proxy::handle_own_h2(parts, received, rx, &shared, &ctx);
            #[cfg(test)]
            let handle = super::tests::panic_if(panics, handle);
            // A request whose handling panics is reset alone (its answer `None`); the
            // connection and its other streams go on.
            let answer =
                match Abortable::new(AssertUnwindSafe(handle).catch_unwind(), registration).await {
                    Ok(Ok(answer)) => Some(answer),
                    Ok(Err(_)) => {
                        tracing::error!(%peer, stream = id, "request handling panicked");
                        None
                    }
                    Err(_aborted) => None,
                };
            (id, answer, inflight)
        }));
        self.streams.insert(
            id,
            Stream {
                body: tx,
                recv_closed: end_stream,
                recv_window: i64::from(STREAM_WINDOW),
                unacked: 0,
                length: request.content_length,
                got: 0,
                send_window: self.peer_window,
                handler,
                listed: false,
                body_next: None,
                parked: None,
                answered: false,
            },
        );
    }

    /// WINDOW_UPDATEs for what the request path took, once half a window's worth. The
    /// streams are looked at only when some body was read (or a stream's DATA was given
    /// back at once) since the last look: a connection of bodiless requests skips them.
    pub(super) fn return_windows(&mut self) {
        let taken = self
            .returned
            .bytes
            .swap(0, std::sync::atomic::Ordering::Relaxed);
        self.conn_unacked += taken;
        if self.conn_unacked >= u64::from(CONN_WINDOW / 2) {
            frame::window_update(&mut self.wbuf, 0, self.conn_unacked as u32);
            self.recv_window += self.conn_unacked as i64;
            self.conn_unacked = 0;
        }
        if taken == 0 && !std::mem::take(&mut self.credit_pending) {
            return;
        }
        for (&id, s) in self.streams.iter_mut() {
            if let Some(tx) = &s.body {
                s.unacked += tx.take_taken();
            }
            if !s.recv_closed && s.unacked >= u64::from(STREAM_WINDOW / 2) {
                frame::window_update(&mut self.wbuf, id, s.unacked as u32);
                s.recv_window += s.unacked as i64;
                s.unacked = 0;
            }
        }
    }
}

/// What a header block is for, known from its HEADERS frame.
#[derive(Debug, Clone, Copy)]
pub(super) enum BlockFor {
    /// A new stream's request; `self_dep`: its priority fields named itself (§5.3.1).
    New { self_dep: bool },
    /// The trailers of a stream's request body.
    Trailers,
}

/// The allocation made before the value is: the value can then be written straight into
/// it instead of being built on the stack and copied.
#[inline(always)]
fn boxed_in_place<F>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    let slot = Box::new_uninit();
    Box::into_pin(Box::write(slot, make()))
}
