//! The tunnel of one long link: bytes relayed both ways, unbuffered, from the upstream's
//! `101` until either side closes, the link is closed on purpose, or it idles too long.
//!
//! A close on purpose (a re-home, the end of a drain, `long_link_idle`) is a WebSocket
//! close, not a cut: each direction finishes the frame it is in, then the client gets a
//! Close frame (1012 "service restart" for a re-home, 1001 "going away" otherwise) and
//! the upstream a masked one with the same code, so browsers report a clean close rather
//! than 1006 (which client code treats as a network failure).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::frames::{close_frame, Frames};
use super::{Closer, Handshake, LinkGuard, Links, GOING_AWAY};
use crate::upstream::h1::Tunnel;

/// Relay buffer per direction, allocated for the link's life. IM frames are small; small
/// buffers keep an idle link's memory low (the target is < 16 KiB per idle link, see
/// `tools/ws-scale`); a large frame just takes a few more reads.
const RELAY_BUF: usize = 2048;

/// How long a closing link may take to reach a frame boundary and send its Close frames
/// before it is cut anyway (a peer stalled mid-frame must not hold it open).
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// Starts relaying once both sides have switched protocols. The link is registered
/// before the 101 reaches the client, so a reload right after it already sees the link.
/// `keep` (the connection's place under `max_connections`) lives as long as the link.
pub(crate) fn open(
    links: &Links,
    client: OnUpgrade,
    upstream: Tunnel,
    hs: Handshake,
    gauge: prometheus::IntGauge,
    idle: Option<Duration>,
    keep: impl Send + 'static,
) {
    let (guard, closer) = links.register(hs, gauge);
    tokio::spawn(async move {
        let _keep = keep;
        match client.await {
            Ok(c) => relay(c, upstream, closer, idle, guard).await,
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
}

/// Relays bytes both ways until either side closes, the link is closed on purpose, or it
/// idles past `idle`. Half-close propagates: EOF from one side shuts down writing to the
/// other, and the relay goes on until both directions are done.
async fn relay(
    client: Upgraded,
    mut upstream: Tunnel,
    closer: Arc<Closer>,
    idle: Option<Duration>,
    _guard: LinkGuard,
) {
    let mut client = TokioIo::new(client);
    let last = AtomicU64::new(0);
    let base = Instant::now();
    let mut to_upstream = Pump::new(&last, base);
    let mut to_client = Pump::new(&last, base);
    let idle_check = async {
        match idle {
            None => std::future::pending::<()>().await,
            Some(limit) => loop {
                let seen = base + Duration::from_millis(last.load(Ordering::Relaxed));
                let due = seen + limit;
                if Instant::now() >= due {
                    return;
                }
                crate::timer::sleep_until(due).await;
            },
        }
    };
    let code = {
        let pumping = poll_fn(|cx| {
            pump_both(
                cx,
                &mut to_upstream,
                &mut to_client,
                &mut client,
                &mut upstream,
            )
        });
        tokio::select! {
            r = pumping => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "long link ended with an error");
                }
                return;
            }
            code = closer.closed() => code,
            _ = idle_check => {
                tracing::debug!("long link idle past long_link_idle; closing");
                GOING_AWAY
            }
        }
    };
    // Close on a frame boundary with a Close frame each way, within a bound.
    let mask = crate::worker::random().to_le_bytes();
    to_client.close_with(close_frame(code, None));
    to_upstream.close_with(close_frame(
        code,
        Some([mask[0], mask[1], mask[2], mask[3]]),
    ));
    let closing = poll_fn(|cx| {
        pump_both(
            cx,
            &mut to_upstream,
            &mut to_client,
            &mut client,
            &mut upstream,
        )
    });
    if crate::timer::timeout(CLOSE_WITHIN, closing).await.is_err() {
        tracing::debug!("long link did not reach a frame boundary in time; cut");
    }
}

/// Polls both directions; ready when both are done (or one failed).
fn pump_both(
    cx: &mut Context<'_>,
    up: &mut Pump<'_>,
    down: &mut Pump<'_>,
    client: &mut TokioIo<Upgraded>,
    upstream: &mut Tunnel,
) -> Poll<io::Result<()>> {
    let a = up.poll(cx, client, upstream)?;
    let b = down.poll(cx, upstream, client)?;
    if a.is_ready() && b.is_ready() {
        Poll::Ready(Ok(()))
    } else {
        Poll::Pending
    }
}

/// One direction of the relay.
struct Pump<'a> {
    buf: Box<[u8]>,
    /// Bytes `buf[start..end]` are read and not yet written.
    start: usize,
    end: usize,
    frames: Frames,
    /// The source said EOF.
    eof: bool,
    /// Closing: read only up to the next frame boundary, then write `close` and stop.
    closing: bool,
    close: Option<([u8; 8], usize)>,
    /// The write side is shut down: this direction is done.
    done: bool,
    /// The time of the last byte read in either direction (ms since `base`), for
    /// `long_link_idle`.
    last: &'a AtomicU64,
    base: Instant,
}

impl<'a> Pump<'a> {
    fn new(last: &'a AtomicU64, base: Instant) -> Self {
        Self {
            buf: vec![0u8; RELAY_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            frames: Frames::default(),
            eof: false,
            closing: false,
            close: None,
            done: false,
            last,
            base,
        }
    }

    fn close_with(&mut self, frame: ([u8; 8], usize)) {
        self.closing = true;
        self.close = Some(frame);
    }

    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            while self.start < self.end {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
            }
            (self.start, self.end) = (0, 0);
            if self.closing && (self.frames.at_boundary() || self.eof) {
                if let Some((frame, n)) = self.close.take() {
                    if !self.eof {
                        self.buf[..n].copy_from_slice(&frame[..n]);
                        self.end = n;
                        continue;
                    }
                }
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            if self.eof {
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            let mut rb = ReadBuf::new(&mut self.buf);
            ready!(Pin::new(&mut *r).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                self.eof = true;
                continue;
            }
            self.last
                .store(crate::millis(self.base.elapsed()), Ordering::Relaxed);
            // Closing: what follows the boundary is not passed on (the Close frame is).
            self.end = self.frames.advance(&self.buf[..n], self.closing);
        }
    }
}
