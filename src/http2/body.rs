//! A request body that arrives in DATA frames: the connection pushes what it reads, the
//! request path pulls it, and what it pulls is counted back to the connection, which
//! opens the client's flow-control windows by that much. The client can then never have
//! more in flight than the windows graylane announced, however slow the upstream.
//!
//! Small DATA frames are copied together before they are queued: one entry per frame
//! would let a client turn the 1 MiB window into a million queue entries (a 1-byte
//! frame costs it 10 bytes on the wire; 1 MB of them took graylane from 17 to 140 MiB)
//! and a million one-byte writes upstream.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
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

/// A DATA frame shorter than this is copied into the stream's held bytes instead of
/// being queued as it is.
const SMALL: usize = 1024;
/// Held bytes are queued once they reach this.
const HOLD_MAX: usize = 16 * 1024;
/// Held bytes wait while the request path has this many chunks still to take: it wakes
/// the connection as it takes them, and the connection queues them then.
const QUEUED_MAX: usize = 8;

/// What one stream's two ends count together.
#[derive(Debug, Default)]
struct Counts {
    /// Bytes the request path took, not yet returned to the client.
    taken: AtomicU64,
    /// Chunks queued and not yet taken.
    queued: AtomicUsize,
}

/// Counts `n` bytes of a stream as taken, for the connection to return them to the
/// client's windows, and wakes it: what the request path reads, and what nobody will.
fn credit(counts: &Counts, returned: &Returned, n: u64) {
    counts.taken.fetch_add(n, Ordering::Relaxed);
    returned.bytes.fetch_add(n, Ordering::Relaxed);
    returned.waker.wake();
}

/// The connection's end of one stream's body.
#[derive(Debug)]
pub(crate) struct BodySender {
    tx: mpsc::UnboundedSender<Item>,
    counts: Arc<Counts>,
    returned: Arc<Returned>,
    /// Small DATA not queued yet (see `SMALL`).
    hold: BytesMut,
}

impl BodySender {
    /// Takes DATA for the request path; false when nobody reads the body any more. A
    /// small frame may be held: [`BodySender::release`] queues it, at the latest when
    /// the connection has handled what it read.
    pub(crate) fn data(&mut self, b: Bytes) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        if b.len() < SMALL {
            self.hold.extend_from_slice(&b);
            if self.hold.len() >= HOLD_MAX {
                self.flush();
            }
            return true;
        }
        self.flush();
        self.send(b)
    }

    /// Whether some DATA is held.
    pub(crate) fn holding(&self) -> bool {
        !self.hold.is_empty()
    }

    /// Queues the held DATA unless the request path is behind; true when nothing is
    /// held any more.
    pub(crate) fn release(&mut self) -> bool {
        if self.tx.is_closed() {
            // Nobody will read them: back to the windows now, not when the stream ends.
            let n = self.hold.len() as u64;
            self.hold = BytesMut::new();
            if n > 0 {
                self.give_back(n);
            }
            return true;
        }
        if self.counts.queued.load(Ordering::Relaxed) >= QUEUED_MAX {
            return !self.holding();
        }
        self.flush();
        true
    }

    /// Queues the held DATA now: what follows must come after it.
    pub(crate) fn flush(&mut self) {
        if !self.hold.is_empty() {
            // The chunk takes the whole buffer: `split` would leave its spare room held
            // by an idle stream.
            let b = std::mem::take(&mut self.hold).freeze();
            let n = b.len() as u64;
            if !self.send(b) {
                self.give_back(n);
            }
        }
    }

    fn send(&self, b: Bytes) -> bool {
        self.counts.queued.fetch_add(1, Ordering::Relaxed);
        self.tx.send(Item::Data(b)).is_ok()
    }

    /// Bytes that will never be read go back to the client's windows, as if taken.
    fn give_back(&self, n: u64) {
        credit(&self.counts, &self.returned, n);
    }

    /// Bytes the request path took from this stream since the last call.
    pub(crate) fn take_taken(&self) -> u64 {
        self.counts.taken.swap(0, Ordering::Relaxed)
    }

    pub(crate) fn trailers(mut self, t: HeaderMap) {
        self.flush();
        let _ = self.tx.send(Item::Trailers(t));
    }

    pub(crate) fn cut(self, why: BodyCut) {
        let _ = self.tx.send(Item::Cut(why));
    }
}

impl Drop for BodySender {
    /// Held DATA that was never queued (the stream was reset or refused) goes back.
    fn drop(&mut self) {
        if !self.hold.is_empty() {
            self.give_back(self.hold.len() as u64);
        }
    }
}

/// The request path's end: an [`http_body::Body`].
#[derive(Debug)]
pub(crate) struct OwnBody {
    rx: mpsc::UnboundedReceiver<Item>,
    counts: Arc<Counts>,
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
    let counts = Arc::new(Counts::default());
    (
        BodySender {
            tx,
            counts: counts.clone(),
            returned: returned.clone(),
            hold: BytesMut::new(),
        },
        OwnBody {
            rx,
            counts,
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
            credit(&self.counts, &self.returned, left);
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
                self.counts.queued.fetch_sub(1, Ordering::Relaxed);
                credit(&self.counts, &self.returned, n);
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
