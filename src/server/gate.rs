//! [`Gate`]: futures polled only after something they wait on woke the task.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Polls what stands behind it only when its own waker fired since the last poll, not on
/// every wake-up of the task around it.
///
/// A connection's task wakes at least twice per request (the client's bytes, then the
/// upstream's answer), and a `select!` polls each branch on every wake-up. The branches
/// that wait on something rare (the client closing while its answer is awaited, the
/// watchdog's timer, a drain) then pay a readiness check, a timer check and a waker
/// registration per wake-up for nothing: about 1,000 instructions of a request's 24,500
/// (callgrind). Behind a gate they are polled with a waker that marks the gate before
/// waking the task, so a wake-up they did not cause skips them.
pub(super) struct Gate {
    flag: Arc<Flag>,
    /// `flag` as a waker, made once: what the gated futures register.
    waker: Waker,
}

struct Flag {
    woken: AtomicBool,
    /// The task's waker, registered on every poll (the task may move or change waker).
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Gate {
    /// An open gate: the first poll goes through.
    pub(super) fn new() -> Self {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(flag.clone());
        Self { flag, waker }
    }

    /// Lets the next poll through whatever woke the task: for a future that has not been
    /// polled yet (it has registered no waker that could open the gate).
    pub(super) fn open(&self) {
        self.flag.woken.store(true, Ordering::Release);
    }

    /// Runs `f` with the gate's waker if the gate was opened or woken since the last
    /// poll; `Pending` otherwise. Whatever `f` polls and leaves pending must have
    /// registered the waker it was given, as a future does.
    pub(super) fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        // Registered before the flag is read: a wake-up between the two still reaches
        // the task.
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        f(&mut Context::from_waker(&self.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::{poll_fn, Future};
    use std::pin::pin;
    use std::time::Duration;

    /// The gated future is polled once per wake-up it caused and not for the task's
    /// other wake-ups, and its result is not lost.
    #[tokio::test]
    async fn a_gated_future_is_polled_when_it_woke_the_task() {
        let gate = Gate::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let mut sleep = pin!(crate::timer::sleep(Duration::from_millis(300)));
        let mut polled = 0u32;
        let mut seen = Vec::new();
        let feeder = tokio::spawn(async move {
            for i in 0..3 {
                crate::timer::sleep(Duration::from_millis(20)).await;
                tx.send(i).ok();
            }
            // Held open until the timer behind the gate fires.
            crate::timer::sleep(Duration::from_secs(30)).await;
            drop(tx);
        });
        let waited = poll_fn(|cx| {
            // The task's own work: woken by the channel.
            while let Poll::Ready(Some(i)) = rx.poll_recv(cx) {
                seen.push(i);
            }
            gate.poll(cx, |cx| {
                polled += 1;
                sleep.as_mut().poll(cx)
            })
        });
        crate::timer::timeout(Duration::from_secs(10), waited)
            .await
            .expect("the timer behind the gate woke the task");
        feeder.abort();
        assert_eq!(seen, [0, 1, 2], "the task's own wake-ups were served");
        // Once when the gate was new, once when the timer fired; not on the three
        // wake-ups the channel caused.
        assert_eq!(polled, 2);
    }

    #[tokio::test]
    async fn an_opened_gate_lets_the_next_poll_through() {
        let gate = Gate::new();
        let mut calls = 0;
        let mut poll_once = || {
            let waker = Waker::noop();
            let mut cx = Context::from_waker(waker);
            gate.poll(&mut cx, |_| {
                calls += 1;
                Poll::<()>::Pending
            })
        };
        let _ = poll_once();
        let _ = poll_once();
        gate.open();
        let _ = poll_once();
        assert_eq!(calls, 2, "first poll and the poll after open()");
    }
}
