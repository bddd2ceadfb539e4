//! A request body that arrives in DATA frames: the connection pushes what it reads, the
//! request path pulls it, and what it pulls is counted back to the connection, which
//! opens the client's flow-control windows by that much. The client can then never have
//! more in flight than the windows graylane announced, however slow the upstream.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// Why a request body ended before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyCut {
    #[error("the client reset the stream")]
    Reset,
    #[error("the connection ended")]
    Closed,
}

enum Item {
    Data(Bytes),
    Trailers(HeaderMap),
    Cut(BodyCut),
}

/// What the bodies of one connection hand back: bytes taken, per connection and per
/// stream, and the connection's task to wake so that it sends WINDOW_UPDATE.
#[derive(Debug, Default)]
pub(crate) struct Returned {
    pub(crate) bytes: AtomicU64,
    pub(crate) waker: AtomicWaker,
}

/// The connection's end of one stream's body.
#[derive(Debug)]
pub(crate) struct BodySender {
    tx: mpsc::UnboundedSender<Item>,
    /// Bytes the request path took from this stream, not yet returned to the client.
    pub(crate) taken: Arc<AtomicU64>,
}

impl BodySender {
    /// Queues DATA for the request path; false when nobody reads the body any more.
    pub(crate) fn data(&self, b: Bytes) -> bool {
        self.tx.send(Item::Data(b)).is_ok()
    }

    pub(crate) fn trailers(&self, t: HeaderMap) {
        let _ = self.tx.send(Item::Trailers(t));
    }

    pub(crate) fn cut(self, why: BodyCut) {
        let _ = self.tx.send(Item::Cut(why));
    }
}

/// The request path's end: an [`http_body::Body`].
#[derive(Debug)]
pub(crate) struct OwnBody {
    rx: mpsc::UnboundedReceiver<Item>,
    taken: Arc<AtomicU64>,
    returned: Arc<Returned>,
    length: Option<u64>,
    ended: bool,
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Item::Data(b) => write!(f, "Data({})", b.len()),
            Item::Trailers(_) => f.write_str("Trailers"),
            Item::Cut(why) => write!(f, "Cut({why:?})"),
        }
    }
}

/// A body for one stream; `length` its content-length, if it has one.
pub(crate) fn channel(returned: Arc<Returned>, length: Option<u64>) -> (BodySender, OwnBody) {
    let (tx, rx) = mpsc::unbounded_channel();
    let taken = Arc::new(AtomicU64::new(0));
    (
        BodySender {
            tx,
            taken: taken.clone(),
        },
        OwnBody {
            rx,
            taken,
            returned,
            length,
            ended: false,
        },
    )
}

impl Drop for OwnBody {
    /// What was queued but never taken goes back to the client's windows: a body
    /// dropped halfway (the upstream answered early, the request was refused, the stream
    /// was reset) must not shrink the connection's window for good.
    fn drop(&mut self) {
        self.rx.close();
        let mut left = 0;
        while let Ok(item) = self.rx.try_recv() {
            if let Item::Data(b) = item {
                left += b.len() as u64;
            }
        }
        if left > 0 {
            self.taken.fetch_add(left, Ordering::Relaxed);
            self.returned.bytes.fetch_add(left, Ordering::Relaxed);
            self.returned.waker.wake();
        }
    }
}

impl Body for OwnBody {
    type Data = Bytes;
    type Error = BodyCut;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyCut>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match std::task::ready!(self.rx.poll_recv(cx)) {
            Some(Item::Data(b)) => {
                let n = b.len() as u64;
                self.taken.fetch_add(n, Ordering::Relaxed);
                self.returned.bytes.fetch_add(n, Ordering::Relaxed);
                self.returned.waker.wake();
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Some(Item::Trailers(t)) => {
                self.ended = true;
                Poll::Ready(Some(Ok(Frame::trailers(t))))
            }
            Some(Item::Cut(why)) => {
                self.ended = true;
                Poll::Ready(Some(Err(why)))
            }
            None => {
                self.ended = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
