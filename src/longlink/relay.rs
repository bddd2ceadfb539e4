//! The tunnel of one long link: bytes relayed both ways, unbuffered, from the upstream's
//! `101` until either side closes, the link is closed on purpose, or it idles too long.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Handshake, LinkGuard, Links};
use crate::upstream::h1::Tunnel;

/// Relay buffer per direction, allocated for the link's life. IM frames are small; small
/// buffers keep an idle link's memory low (the target is < 16 KiB per idle link, see
/// `tools/ws-scale`); a large frame just takes a few more reads.
const RELAY_BUF: usize = 2048;

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
    let (guard, close) = links.register(hs, gauge);
    tokio::spawn(async move {
        let _keep = keep;
        match client.await {
            Ok(c) => relay(c, upstream, close, idle, guard).await,
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
}

/// Relays bytes both ways until either side closes, the link is closed on purpose, or it
/// idles past `idle`. Half-close propagates: EOF from one side shuts down writing to the
/// other, and the relay goes on until both directions are done.
async fn relay(
    client: Upgraded,
    upstream: Tunnel,
    close: Arc<Notify>,
    idle: Option<Duration>,
    _guard: LinkGuard,
) {
    let last = Arc::new(AtomicU64::new(0));
    let base = Instant::now();
    let mut c = Activity {
        io: TokioIo::new(client),
        last: last.clone(),
        base,
    };
    let mut u = Activity {
        io: upstream,
        last: last.clone(),
        base,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut c, &mut u, RELAY_BUF, RELAY_BUF);
    tokio::pin!(copy);
    let idle_check = async {
        match idle {
            None => std::future::pending::<()>().await,
            Some(limit) => loop {
                let seen = base + Duration::from_millis(last.load(Ordering::Relaxed));
                let due = seen + limit;
                if Instant::now() >= due {
                    return;
                }
                tokio::time::sleep_until(due).await;
            },
        }
    };
    tokio::select! {
        r = &mut copy => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "long link ended with an error");
            }
        }
        _ = close.notified() => {}
        _ = idle_check => {
            tracing::debug!("long link idle past long_link_idle; closing");
        }
    }
}

/// Notes the time of the last byte in either direction, for `long_link_idle`.
struct Activity<T> {
    io: T,
    last: Arc<AtomicU64>,
    base: Instant,
}

impl<T> Activity<T> {
    fn touch(&self) {
        self.last
            .store(crate::millis(self.base.elapsed()), Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
