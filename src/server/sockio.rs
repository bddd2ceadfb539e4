//! Socket writes in one `send` where a `writev` would carry a few small pieces.
//!
//! hyper hands a response over as a vectored write (head, then the body chunks). On Linux
//! `writev` on a socket goes through the VFS layer (file position lock, `rw_verify_area`,
//! LSM file hooks) before reaching TCP, while `send` goes straight to the socket: in the
//! load benchmark's profile that layer was ~3% of a worker's CPU. Copying a few hundred
//! bytes into one buffer costs far less, so small vectored writes are coalesced and sent
//! with one plain write (std's `TcpStream::write` is `send(2)`); large ones keep `writev`
//! and its zero-copy. Client connections write through it (`server::ConnIo`); the
//! upstream client (`h1pool`) builds each request head in one buffer itself.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// Vectored writes up to this many bytes are copied into one buffer (on the stack).
const COALESCE_MAX: usize = 2048;

/// Writes `bufs` as [`AsyncWrite::poll_write_vectored`] would, with one `poll_write` when
/// at most one piece is non-empty or the pieces are small together. Returns how many
/// bytes of the concatenation were written, as a vectored write does.
pub(super) fn poll_write_coalesced<S: AsyncWrite + Unpin>(
    s: &mut S,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let mut pieces = bufs.iter().filter(|b| !b.is_empty());
    let Some(first) = pieces.next() else {
        return Pin::new(s).poll_write(cx, &[]);
    };
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    if total == first.len() {
        return Pin::new(s).poll_write(cx, first);
    }
    if total > COALESCE_MAX {
        return Pin::new(s).poll_write_vectored(cx, bufs);
    }
    let mut joined = [0u8; COALESCE_MAX];
    let mut n = 0;
    for b in bufs {
        joined[n..n + b.len()].copy_from_slice(b);
        n += b.len();
    }
    Pin::new(s).poll_write(cx, &joined[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each write call: coalesced pieces must arrive as one write, in order.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        vectored_calls: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.vectored_calls += 1;
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = all.len();
            this.writes.push(all);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn write(r: &mut Recorder, bufs: &[&[u8]]) -> usize {
        let slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match poll_write_coalesced(r, &mut cx, &slices) {
            Poll::Ready(Ok(n)) => n,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn small_pieces_become_one_plain_write() {
        let mut r = Recorder::default();
        assert_eq!(
            write(&mut r, &[b"HTTP/1.1 200 OK\r\n\r\n", b"", b"stable\n"]),
            26
        );
        assert_eq!(r.writes, vec![b"HTTP/1.1 200 OK\r\n\r\nstable\n".to_vec()]);
        assert_eq!(r.vectored_calls, 0);
        // One non-empty piece among empty ones: written as it is.
        assert_eq!(write(&mut r, &[b"", b"only"]), 4);
        assert_eq!(r.writes[1], b"only");
        assert_eq!(r.vectored_calls, 0);
    }

    #[test]
    fn large_writes_stay_vectored() {
        let mut r = Recorder::default();
        let big = vec![b'x'; COALESCE_MAX];
        assert_eq!(write(&mut r, &[b"head", &big]), COALESCE_MAX + 4);
        assert_eq!(r.vectored_calls, 1);
        // Exactly the limit is still coalesced.
        let fits = vec![b'y'; COALESCE_MAX - 4];
        assert_eq!(write(&mut r, &[b"head", &fits]), COALESCE_MAX);
        assert_eq!(r.vectored_calls, 1);
        assert_eq!(r.writes[1].len(), COALESCE_MAX);
    }
}
