//! Timers kept by one thread of their own, so that no runtime needs tokio's time driver.
//!
//! With its time driver on, a tokio runtime reads the clock twice, looks through its timer
//! wheel and processes it at every park: ~1,000 instructions, paid twice per request on
//! the HTTP/1.1 path (the wait for the upstream's answer, the wait for the next request),
//! about 7% of all a request costs, while nearly every timer it keeps is moved later
//! before it is due (a connection's idle and response deadlines). Here a timer is an
//! atomic deadline that its owner moves without telling anyone; one thread sleeps until
//! the earliest deadline it knows, wakes the futures whose time has come, and finds the
//! moved ones still in the future. It is told only when a deadline becomes the earliest
//! (rare once connections are busy) or after many new timers (to take in them and drop
//! the finished ones). A due timer wakes its task from that thread, which costs a
//! cross-thread wake-up instead of an in-thread one; timers are nearly always moved or
//! dropped before they are due.
//!
//! Deadlines are whole milliseconds, rounded up, on the monotonic clock `Instant` reads,
//! and the thread wakes on a 10 ms grid (`SLOT_MS`): a timer never fires early, and late
//! by at most a slot and the thread's wake-up. The grid bounds the thread's wake-ups
//! whatever the number of timers (each wake-up reads every entry): ten thousand
//! connections' watchdogs, each due every few seconds, cost at most 100 wake-ups a
//! second, not one per watchdog. Like `clock`'s coarse clocks, these timers do not
//! follow tokio's paused test time.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

/// Set in an entry's state once the timer thread found its deadline passed and woke it.
const FIRED: u64 = 1 << 63;
/// An entry whose owner has no deadline published (reset and not polled since).
const UNSET: u64 = FIRED - 1;
/// The grid the thread wakes on, in milliseconds.
const SLOT_MS: u64 = 10;
/// New timers a thread makes before it nudges the timer thread to take them in and to
/// forget the dropped ones: bounds what waits in the channel and in the thread's list.
const NUDGE_EVERY: u32 = 1024;

/// Looks the thread has taken through its list: what the grid and the quiet lowering of
/// a deadline (see `wait`) keep down, and what a test can count.
#[cfg(test)]
static LOOKS: AtomicU64 = AtomicU64::new(0);

/// What the timer thread and a timer's owner share.
#[derive(Debug)]
struct Entry {
    /// The deadline (milliseconds since `Wheel::base`), `UNSET`, with `FIRED` once due.
    state: AtomicU64,
    waker: AtomicWaker,
}

/// The timer thread and how to reach it.
struct Wheel {
    /// The zero of every deadline.
    base: Instant,
    /// New entries, taken in when the thread wakes.
    new: Sender<Arc<Entry>>,
    /// The earliest deadline the thread will wake for (`u64::MAX`: none). An owner whose
    /// deadline is earlier lowers it and wakes the thread.
    armed: AtomicU64,
    thread: std::thread::Thread,
}

static WHEEL: LazyLock<Wheel> = LazyLock::new(|| {
    let (new, rx) = mpsc::channel();
    let base = Instant::now();
    let thread = std::thread::Builder::new()
        .name("graylane-timer".into())
        .stack_size(128 * 1024)
        .spawn(move || run(rx))
        .map(|h| h.thread().clone())
        // Without a thread no timer could fire: every timeout and interval would hang.
        .unwrap_or_else(|e| panic!("cannot start the timer thread: {e}"));
    Wheel {
        base,
        new,
        armed: AtomicU64::new(u64::MAX),
        thread,
    }
});

/// Starts the timer thread now, at start-up, rather than with the first timer: a process
/// that cannot start a thread stops before it serves, not on a request.
pub(crate) fn start() {
    LazyLock::force(&WHEEL);
}

/// Entries a thread keeps for its next timers.
const SPARE_MAX: usize = 256;

thread_local! {
    /// New timers made on this thread since it last nudged the timer thread.
    static MADE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// Entries of dropped timers, still known to the timer thread (which passes over them:
    /// no deadline), for this thread's next timers: a timer per request (an HTTP/2
    /// stream's response deadline) then neither allocates nor goes through the channel.
    static SPARE: std::cell::RefCell<Vec<Arc<Entry>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `d` since the wheel's base as whole milliseconds, rounded up (so never early).
fn ceil_ms(d: Duration) -> u64 {
    let ms = crate::millis(d);
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        ms
    } else {
        ms.saturating_add(1)
    }
    .min(UNSET - 1)
}

/// `at` in the wheel's milliseconds.
fn ms_of(at: Instant) -> u64 {
    ceil_ms(at.saturating_duration_since(WHEEL.base))
}

/// `d` from now in the wheel's milliseconds; a duration too long for an `Instant`
/// (`timeouts.drain: 100000000000h`) is a deadline that never comes, not a panic.
fn ms_after(d: Duration) -> u64 {
    ceil_ms(WHEEL.base.elapsed().saturating_add(d))
}

/// Now, in the wheel's milliseconds, rounded down: `deadline <= now_ms()` means due.
fn now_ms() -> u64 {
    crate::millis(WHEEL.base.elapsed())
}

/// The timer thread: wakes the due entries, forgets the dropped ones, sleeps until the
/// earliest deadline it saw or until nudged.
fn run(rx: Receiver<Arc<Entry>>) {
    let wheel = &*WHEEL;
    let mut entries: Vec<Arc<Entry>> = Vec::new();
    loop {
        // Before reading any deadline: an owner that publishes one after this store sees
        // `u64::MAX` and wakes the thread; one that published before is read below.
        wheel.armed.store(u64::MAX, Ordering::SeqCst);
        #[cfg(test)]
        LOOKS.fetch_add(1, Ordering::Relaxed);
        entries.extend(rx.try_iter());
        let now = now_ms();
        let mut next = u64::MAX;
        entries.retain(|e| {
            // Only this list holds it: its timer is gone.
            if Arc::strong_count(e) == 1 {
                return false;
            }
            let s = e.state.load(Ordering::SeqCst);
            if s & FIRED != 0 || s == UNSET {
                return true;
            }
            if s > now {
                next = next.min(s);
            } else if e
                .state
                .compare_exchange(s, s | FIRED, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                e.waker.wake();
            } else {
                // Moved while being read: look again at once.
                next = 0;
            }
            true
        });
        if entries.capacity() > 4 * entries.len().max(64) {
            entries.shrink_to(2 * entries.len());
        }
        wheel.armed.fetch_min(next, Ordering::SeqCst);
        wait(wheel);
    }
}

/// Sleeps until the slot of the earliest deadline the thread must wake for. An owner
/// that lowers that deadline wakes the thread only to sleep again until the new one;
/// a look through the list at once is asked for by lowering it to 0.
fn wait(wheel: &Wheel) {
    loop {
        let until = wheel.armed.load(Ordering::SeqCst);
        let slot = until.div_ceil(SLOT_MS).saturating_mul(SLOT_MS);
        match wheel.base.checked_add(Duration::from_millis(slot)) {
            Some(at) if until != u64::MAX => {
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return;
                }
                std::thread::park_timeout(left);
            }
            _ => std::thread::park(),
        }
    }
}

/// Makes sure the timer thread wakes by `deadline`.
fn arm(deadline: u64) {
    let wheel = &*WHEEL;
    // A load first: nearly always the thread already wakes earlier, and the line stays
    // shared between the threads that read it.
    if deadline < wheel.armed.load(Ordering::SeqCst)
        && deadline < wheel.armed.fetch_min(deadline, Ordering::SeqCst)
    {
        wheel.thread.unpark();
    }
}

/// Hands a new entry to the timer thread.
fn register(entry: Arc<Entry>) {
    let wheel = &*WHEEL;
    // The receiver lives as long as the process (the thread never ends).
    let _ = wheel.new.send(entry);
    let nudge = MADE.with(|m| {
        let n = m.get() + 1;
        m.set(if n >= NUDGE_EVERY { 0 } else { n });
        n >= NUDGE_EVERY
    });
    if nudge {
        wheel.armed.fetch_min(0, Ordering::SeqCst);
        wheel.thread.unpark();
    }
}

/// A future that completes at its deadline; it can be moved to another deadline and
/// polled again, like tokio's `Sleep`.
#[derive(Debug)]
pub(crate) struct Sleep {
    /// Milliseconds since the wheel's base.
    deadline: u64,
    /// Shared with the timer thread once first polled.
    entry: Option<Arc<Entry>>,
    /// Whether `entry` holds `deadline` (false after a reset until the next poll).
    published: bool,
}

/// A timer that completes at `at`.
pub(crate) fn sleep_until(at: impl Into<Instant>) -> Sleep {
    Sleep::at(ms_of(at.into()))
}

/// A timer that completes after `d`.
pub(crate) fn sleep(d: Duration) -> Sleep {
    Sleep::at(ms_after(d))
}

impl Sleep {
    fn at(deadline: u64) -> Self {
        Self {
            deadline,
            entry: None,
            published: false,
        }
    }

    /// Moves the timer to `at`; it completes there even if it completed before. Touches
    /// nothing shared: the next poll publishes the deadline.
    pub(crate) fn reset(&mut self, at: impl Into<Instant>) {
        self.move_to(ms_of(at.into()));
    }

    fn move_to(&mut self, deadline: u64) {
        self.deadline = deadline;
        self.published = false;
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.published {
            if let Some(e) = &this.entry {
                if e.state.load(Ordering::Acquire) & FIRED != 0 {
                    return Poll::Ready(());
                }
                e.waker.register(cx.waker());
                // The thread may have fired between the load and the register.
                if e.state.load(Ordering::Acquire) & FIRED != 0 {
                    return Poll::Ready(());
                }
                return Poll::Pending;
            }
        }
        // The clock is read only for a deadline the thread would have to be woken for
        // (seldom: most move later than the earliest one it already wakes at); one that
        // has passed is then answered here, not by a round trip through the thread.
        if this.deadline < WHEEL.armed.load(Ordering::Relaxed) && this.deadline <= now_ms() {
            return Poll::Ready(());
        }
        let e = match &this.entry {
            Some(e) => e,
            None => {
                let spare = SPARE
                    .try_with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop()))
                    .ok()
                    .flatten();
                let e = spare.unwrap_or_else(|| {
                    let e = Arc::new(Entry {
                        state: AtomicU64::new(UNSET),
                        waker: AtomicWaker::new(),
                    });
                    register(Arc::clone(&e));
                    e
                });
                this.entry.insert(e)
            }
        };
        e.waker.register(cx.waker());
        e.state.store(this.deadline, Ordering::SeqCst);
        this.published = true;
        arm(this.deadline);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        let Some(e) = self.entry.take() else {
            return;
        };
        // The thread may be firing the old deadline: it then wakes the waker taken here
        // or the next owner's, once, for nothing.
        e.state.store(UNSET, Ordering::SeqCst);
        drop(e.waker.take());
        // Beyond the spare list, or while the thread's locals go away: dropped, and the
        // timer thread forgets it at its next look.
        let _ = SPARE.try_with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                if s.len() < SPARE_MAX {
                    s.push(e);
                }
            }
        });
    }
}

impl hyper::rt::Sleep for Sleep {}

/// `fut` did not finish in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline elapsed")]
pub(crate) struct Elapsed;

/// Runs `fut` until `at`; `Err(Elapsed)` if it had not finished by then.
pub(crate) fn timeout_at<F: Future>(at: impl Into<Instant>, fut: F) -> Timeout<F> {
    Timeout {
        fut,
        timer: sleep_until(at),
    }
}

/// Runs `fut` for at most `d`; `Err(Elapsed)` if it had not finished by then.
pub(crate) fn timeout<F: Future>(d: Duration, fut: F) -> Timeout<F> {
    Timeout {
        fut,
        timer: sleep(d),
    }
}

pin_project_lite::pin_project! {
    /// A future with a deadline (a named type, not an `async fn`: the futures that await
    /// it stay provably `Send` where they hold borrows).
    pub(crate) struct Timeout<F> {
        #[pin]
        fut: F,
        timer: Sleep,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        Pin::new(this.timer).poll(cx).map(|()| Err(Elapsed))
    }
}

/// Ticks every `period`, the first tick at `start`; each next tick is counted from when
/// the last one was taken, so a late tick delays the rest and none come in a burst (as
/// tokio's `MissedTickBehavior::Delay`, which every caller wants).
#[derive(Debug)]
pub(crate) struct Interval {
    timer: Sleep,
    period: Duration,
}

/// An interval whose first tick is at once.
pub(crate) fn interval(period: Duration) -> Interval {
    interval_at(Instant::now(), period)
}

/// An interval whose first tick is at `start`.
pub(crate) fn interval_at(start: impl Into<Instant>, period: Duration) -> Interval {
    Interval {
        timer: sleep_until(start),
        period,
    }
}

impl Interval {
    /// Waits for the next tick.
    pub(crate) async fn tick(&mut self) {
        (&mut self.timer).await;
        self.timer.move_to(ms_after(self.period));
    }
}

/// hyper's timer, on this module's thread.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HyperTimer;

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, d: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(sleep(d))
    }

    fn sleep_until(&self, at: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(sleep_until(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `t` once, as a task would.
    async fn poll_once(t: &mut Sleep) -> Poll<()> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *t).poll(cx))).await
    }

    /// A current-thread runtime with no time driver, as the workers run.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_sleep_completes_at_its_deadline_never_before() {
        runtime().block_on(async {
            let t0 = Instant::now();
            sleep(Duration::from_millis(30)).await;
            let waited = t0.elapsed();
            assert!(waited >= Duration::from_millis(30), "woke after {waited:?}");
            assert!(waited < Duration::from_millis(500), "woke after {waited:?}");
        });
    }

    #[test]
    fn a_timer_moved_later_waits_for_the_later_deadline() {
        runtime().block_on(async {
            let t0 = Instant::now();
            let mut t = sleep(Duration::from_millis(20));
            // Published at 20 ms, then moved to 80 ms: the thread wakes at 20, finds it
            // not due, and must still fire it at 80.
            assert!(poll_once(&mut t).await.is_pending());
            t.reset(t0 + Duration::from_millis(80));
            (&mut t).await;
            let waited = t0.elapsed();
            assert!(waited >= Duration::from_millis(80), "woke after {waited:?}");
        });
    }

    #[test]
    fn a_timer_moved_earlier_fires_at_the_earlier_deadline() {
        runtime().block_on(async {
            let t0 = Instant::now();
            let mut t = sleep(Duration::from_secs(30));
            assert!(poll_once(&mut t).await.is_pending());
            t.reset(t0 + Duration::from_millis(40));
            // Not told of the earlier deadline, the thread would sleep the 30 s.
            (&mut t).await;
            let waited = t0.elapsed();
            assert!(waited >= Duration::from_millis(40), "woke after {waited:?}");
            assert!(waited < Duration::from_secs(2), "woke after {waited:?}");
        });
    }

    #[test]
    fn timers_due_within_a_slot_cost_one_look_not_one_each() {
        runtime().block_on(async {
            let before = LOOKS.load(Ordering::Relaxed);
            let t0 = Instant::now();
            // 100 ms of deadlines, 1 ms apart, each made earlier than the one before and
            // published 1 ms after it: every one lowers the thread's wake-up and unparks
            // it while it sleeps. Waking on the grid, and only to sleep again when a
            // deadline is lowered, the thread looks through its list about once per
            // 10 ms slot; woken at each deadline, or looking at each lowering, it would
            // look ~100 times (105 and 85, measured). Other tests' timers share the
            // thread, the grid bounding their looks too: 16–23 looks in all in full runs.
            let mut timers: Vec<Sleep> = (0..100u64)
                .rev()
                .map(|i| sleep_until(t0 + Duration::from_millis(250 + i)))
                .collect();
            for t in &mut timers {
                assert!(poll_once(t).await.is_pending());
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(
                t0.elapsed() < Duration::from_millis(250),
                "publishing took {:?}, past the first deadline",
                t0.elapsed()
            );
            for t in &mut timers {
                t.await;
            }
            let looks = LOOKS.load(Ordering::Relaxed) - before;
            assert!(looks <= 50, "{looks} looks for 100 ms of deadlines");
        });
    }

    #[test]
    fn a_fired_timer_reset_waits_again() {
        runtime().block_on(async {
            let mut t = sleep(Duration::from_millis(5));
            (&mut t).await;
            let t1 = Instant::now();
            t.reset(t1 + Duration::from_millis(30));
            assert!(poll_once(&mut t).await.is_pending());
            (&mut t).await;
            assert!(t1.elapsed() >= Duration::from_millis(30));
        });
    }

    #[test]
    fn a_dropped_timer_wakes_nobody_and_its_entry_serves_the_next() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let mut first = sleep(Duration::from_millis(10));
        assert!(Pin::new(&mut first).poll(&mut cx).is_pending());
        let entry = Arc::clone(first.entry.as_ref().expect("published"));
        drop(first);
        // Past its deadline and the thread's slot: a dropped timer must not wake its task.
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            0,
            "a dropped timer woke its task"
        );
        let mut second = sleep(Duration::from_secs(60));
        assert!(Pin::new(&mut second).poll(&mut cx).is_pending());
        let reused = second.entry.as_ref().expect("published");
        assert!(
            Arc::ptr_eq(&entry, reused),
            "the dropped timer's entry was not reused"
        );
    }

    #[test]
    fn a_duration_too_long_for_the_clock_never_comes() {
        runtime().block_on(async {
            assert_eq!(timeout(Duration::MAX, async { 3 }).await, Ok(3));
            let mut t = sleep(Duration::MAX);
            assert!(poll_once(&mut t).await.is_pending());
            let mut i = interval(Duration::MAX);
            i.tick().await;
            let second = timeout(Duration::from_millis(30), i.tick()).await;
            assert_eq!(second, Err(Elapsed));
        });
    }

    #[test]
    fn timeout_answers_elapsed_only_when_the_future_is_late() {
        runtime().block_on(async {
            assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Ok(7));
            let never = std::future::pending::<()>();
            assert_eq!(
                timeout(Duration::from_millis(20), never).await,
                Err(Elapsed)
            );
        });
    }

    #[test]
    fn an_interval_ticks_at_once_then_every_period() {
        runtime().block_on(async {
            let t0 = Instant::now();
            let mut i = interval(Duration::from_millis(25));
            i.tick().await;
            assert!(t0.elapsed() < Duration::from_millis(25));
            i.tick().await;
            i.tick().await;
            assert!(t0.elapsed() >= Duration::from_millis(50));
        });
    }

    #[test]
    fn timers_from_many_threads_all_fire() {
        // More timers than one nudge's worth, made and dropped across threads, while a
        // few wait: the dropped ones are forgotten, the waiting ones still fire.
        let handles: Vec<_> = (0..4)
            .map(|k| {
                std::thread::spawn(move || {
                    runtime().block_on(async move {
                        // Held at once, so that each takes a new entry.
                        let mut held = Vec::new();
                        for _ in 0..3 * NUDGE_EVERY {
                            let mut t = sleep(Duration::from_secs(60));
                            assert!(poll_once(&mut t).await.is_pending());
                            held.push(t);
                        }
                        drop(held);
                        let t0 = Instant::now();
                        sleep(Duration::from_millis(10 + 5 * k)).await;
                        t0.elapsed()
                    })
                })
            })
            .collect();
        for h in handles {
            let waited = h.join().expect("thread");
            assert!(waited >= Duration::from_millis(10), "woke after {waited:?}");
        }
    }
}
