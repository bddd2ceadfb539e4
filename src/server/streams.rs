//! An HTTP/2 connection's streams polled inside the connection's own task.
//!
//! hyper hands each HTTP/2 stream to an executor; with tokio's, every stream is a task of
//! its own: a task cell allocated and scheduled per request, and each answer reaches the
//! client only after the stream's task has woken the connection's task. `StreamExec`
//! queues the streams instead, and `InTask` polls them where it polls the connection:
//! streams woken by their upstreams first, then the connection (which takes their answers
//! and reads new streams), then the streams it just accepted, up to their first wait.
//! The queue is std's channel, which wakes nobody: hyper calls `execute` only from inside
//! this task's polls (the connection's, for a new stream; a stream's, for the sender of a
//! CONNECT tunnel it answered 2xx), and `InTask` polls what it queued until the queue
//! stays empty.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};

use futures_util::future::CatchUnwind;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;

/// Boxed: hyper hands over futures of two types (a stream's, and a CONNECT tunnel's
/// sender), each naming the executor's type in its own.
type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A new executor for one connection, and the queue its `InTask` reads.
pub(super) fn queue() -> (StreamExec, Queue) {
    let (tx, rx) = mpsc::channel();
    (StreamExec(tx), Queue(rx))
}

/// The streams hyper has handed over and no poll has taken yet.
pub(super) struct Queue(mpsc::Receiver<Stream>);

/// hyper's executor for one HTTP/2 connection: queues what it is given for that
/// connection's `InTask`.
#[derive(Clone)]
pub(super) struct StreamExec(mpsc::Sender<Stream>);

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        // The receiver lives in the `InTask` whose connection is calling: it cannot be
        // gone while this runs.
        if self.0.send(Box::pin(fut)).is_err() {
            tracing::debug!("HTTP/2 stream arrived after its connection ended");
        }
    }
}

/// Drives an HTTP/2 connection and its streams in one task. It ends when the connection
/// has ended and every stream it accepted has finished (as hyper's connection does under
/// a graceful shutdown, whose streams run to their end).
pub(super) struct InTask<C> {
    conn: Pin<Box<C>>,
    queued: Queue,
    /// Each caught: a stream that panics resets that stream (hyper's handle of it is
    /// dropped), as its own task would, not its neighbours.
    streams: FuturesUnordered<CatchUnwind<AssertUnwindSafe<Stream>>>,
    /// The connection's result once it has ended, while streams are still running.
    ended: Option<hyper::Result<()>>,
}

impl<C> InTask<C> {
    /// `conn`: built with the executor that feeds `queued`.
    pub(super) fn new(conn: C, queued: Queue) -> Self {
        Self {
            conn: Box::pin(conn),
            queued,
            streams: FuturesUnordered::new(),
            ended: None,
        }
    }

    /// The connection proper, for a graceful shutdown.
    pub(super) fn conn(self: Pin<&mut Self>) -> Pin<&mut C> {
        self.get_mut().conn.as_mut()
    }

    /// Polls every stream that is due, the queued ones too, until polling them queues
    /// nothing more.
    fn poll_streams(&mut self, cx: &mut Context<'_>) {
        loop {
            while let Ok(s) = self.queued.0.try_recv() {
                self.streams.push(AssertUnwindSafe(s).catch_unwind());
            }
            while let Poll::Ready(Some(done)) = self.streams.poll_next_unpin(cx) {
                if done.is_err() {
                    tracing::error!("an HTTP/2 stream panicked; it was reset");
                }
            }
            // Polling a stream may have queued a future of its own (a CONNECT tunnel's
            // sender): polled in this round too.
            match self.queued.0.try_recv() {
                Ok(s) => self.streams.push(AssertUnwindSafe(s).catch_unwind()),
                Err(_) => return,
            }
        }
    }
}

impl<C> Future for InTask<C>
where
    C: Future<Output = hyper::Result<()>>,
{
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.get_mut();
        me.poll_streams(cx);
        if me.ended.is_none() {
            if let Poll::Ready(r) = me.conn.as_mut().poll(cx) {
                me.ended = Some(r);
            }
            me.poll_streams(cx);
        }
        match me.ended.take() {
            Some(r) if me.streams.is_empty() => Poll::Ready(r),
            ended => {
                me.ended = ended;
                Poll::Pending
            }
        }
    }
}

/// What serves a connection that graylane's own HTTP/1.1 loop handed over: hyper's
/// HTTP/2 server with its streams in this task when the bytes read so far are the
/// HTTP/2 preface, else hyper's HTTP/1.1-or-2 server (which looks at the version
/// itself: a preface that arrived in pieces, or any request the loop leaves to hyper).
pub(super) enum Handed<A, C> {
    /// Boxed: hyper's connection is not `Unpin`; a hand-over happens once per
    /// connection at most.
    Auto(Pin<Box<A>>),
    H2(InTask<C>),
}

type AnyError = Box<dyn std::error::Error + Send + Sync>;

impl<A, C, E> Future for Handed<A, C>
where
    A: Future<Output = Result<(), E>>,
    E: Into<AnyError>,
    C: Future<Output = hyper::Result<()>>,
{
    type Output = Result<(), AnyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Handed::Auto(a) => a.as_mut().poll(cx).map_err(Into::into),
            Handed::H2(h) => Pin::new(h).poll(cx).map_err(Into::into),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::pin::pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use hyper::rt::Executor;

    use super::*;

    #[tokio::test]
    async fn streams_run_in_the_task_until_done_and_a_panic_stays_in_its_stream() {
        let (exec, queued) = queue();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let started = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicBool::new(false));
        let tunnel = Arc::new(AtomicBool::new(false));
        let (s, f, t) = (started.clone(), finished.clone(), tunnel.clone());
        let from_stream = exec.clone();
        // Stands for hyper's connection: hands three streams to the executor as it reads
        // them, then ends (as a connection under a graceful shutdown does). The third
        // hands over a future of its own, as hyper does with a CONNECT tunnel's sender.
        let conn = async move {
            exec.execute(async { panic!("a stream's bug") });
            exec.execute(async move {
                s.store(true, Ordering::SeqCst);
                let _ = released.await;
                f.store(true, Ordering::SeqCst);
            });
            exec.execute(async move {
                from_stream.execute(async move { t.store(true, Ordering::SeqCst) });
            });
            Ok(())
        };
        let mut task = pin!(InTask::new(conn, queued));
        let first = poll_fn(|cx| Poll::Ready(task.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "ended with a stream still running");
        assert!(
            started.load(Ordering::SeqCst),
            "a stream accepted by a poll runs to its first wait in that poll"
        );
        assert!(
            tunnel.load(Ordering::SeqCst),
            "a future a stream hands over runs in the same poll"
        );
        assert!(!finished.load(Ordering::SeqCst));
        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the released stream woke the task")
            .unwrap();
        assert!(finished.load(Ordering::SeqCst));
    }
}
