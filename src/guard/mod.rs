//! The automatic rollback guard: a circuit breaker over one service's gray pool
//! (SPEC §3 "Guard", §5 `/guard/*`).
//!
//! # Where it sits
//!
//! For every request the rules send to gray, the proxy asks [`GuardState::admit`]; `false`
//! means "send it to stable" (fallback reason `guard_tripped`). Every request that did go
//! to gray reports its outcome with [`GuardState::record`]. Both run on the request path,
//! so they touch nothing but atomics: no lock, no allocation, and on the common path
//! (breaker closed) `admit` is one atomic load and `record` one compare-and-swap.
//!
//! # States
//!
//! - **Closed**: gray serves. Outcomes go into a sliding window. When a failure arrives
//!   and the window holds at least `min_requests` with a failure share above
//!   `max_error_rate`, the guard trips to Open (one ERROR line).
//! - **Open** until `cooldown` has passed: nothing goes to gray.
//! - **HalfOpen**: one in [`PROBE_EVERY`] gray-routed requests goes to gray as a probe.
//!   After `min(min_requests, `[`MAX_PROBES`]`)` probe outcomes with a failure share within
//!   `max_error_rate` the guard closes (one INFO line) with an empty window; as soon as the
//!   probes' failures are too many for the share to end within the bound, it re-opens for
//!   another cooldown (one ERROR line).
//!
//! `graylane_gray_tripped{service}` is 1 while Open *and* HalfOpen: gray is not taking its
//! full share of traffic until the probes have cleared it.
//!
//! # Time
//!
//! Time is an explicit argument: every method that needs it has an `_at(now)` form, and the
//! plain form passes `tokio::time::Instant::now()`. Tests drive the guard with exact
//! instants (the crate does not enable tokio's `test-util`, so paused time is not an
//! option), and callers that already hold an `Instant` for the request avoid a second
//! clock read. `tokio::time::Instant` rather than `std`'s so that, should `test-util` ever
//! be enabled, a paused runtime clock drives the plain forms too.
//!
//! # The window
//!
//! [`BUCKETS`] buckets of `window / BUCKETS` each, keyed by bucket number. The window is
//! the current bucket plus the `BUCKETS - 1` before it, so an outcome counts for between
//! 0.9 × `window` and `window`, never longer. A bucket is one `AtomicU64` holding its
//! (truncated) bucket number, requests and failures together, so starting a fresh bucket
//! and counting into it is a single compare-and-swap and no count is lost to a race.
//! Clearing the window (on close and on a manual reset) shifts the bucket numbering by
//! `BUCKETS`, which puts every existing bucket out of the window at once; a writer that
//! still uses the old numbering writes into a bucket that is already out of the window.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::time::Instant;

use crate::config::Guard;

/// Buckets in the sliding window: ten keeps the window's edge within 10 % of `window`
/// while the whole window is still read with ten loads.
mod word;

use word::*;

pub(crate) const BUCKETS: u64 = 10;

/// In HalfOpen, one gray-routed request in this many is a probe (5 %): small enough that a
/// still-broken gray hurts few users, large enough to decide within seconds at modest load.
/// The first request after the cooldown is always a probe, so a quiet service gets one too.
pub(crate) const PROBE_EVERY: u64 = 20;

/// Most probe outcomes a half-open round waits for. Twenty makes a 5 % bound meaningful
/// (one failure in twenty passes, two do not); a service with a smaller `min_requests`
/// decides after that many, as its operator asked for decisions on that little traffic.
pub(crate) const MAX_PROBES: u64 = 20;

// === impl GuardState ===

/// One service's gray breaker, shared by every connection that routes to the service.
///
/// Built once per service with a `guard:` block; lives as long as the config (rule
/// reloads do not touch it, so a trip survives them).
pub struct GuardState {
    /// Names the service in log lines.
    service: String,
    /// The configured bound, kept for the decision and the log lines.
    cfg: Guard,
    /// `graylane_gray_tripped{service}`, resolved once so a transition only stores into it.
    tripped_gauge: IntGauge,
    /// Zero of the guard's millisecond clock; packed times are relative to it.
    origin: Instant,
    /// Width of one bucket in milliseconds (at least 1).
    bucket_ms: u64,
    /// `cooldown` in milliseconds (at least 1).
    cooldown_ms: u64,
    /// Probe outcomes a half-open round waits for.
    probes_needed: u64,
    /// The packed [`State`]; read by every `admit`.
    state: Padded<AtomicU64>,
    /// Added to the bucket number; clearing the window adds [`BUCKETS`]. Read by every
    /// Closed `record`, written only on a clear.
    shift: Padded<AtomicU64>,
    /// The sliding window.
    buckets: Padded<[AtomicU64; BUCKETS as usize]>,
    /// Half-open requests seen this round, to admit one in [`PROBE_EVERY`].
    tickets: Padded<AtomicU64>,
    /// Half-open probe outcomes and failures this round.
    probes: Padded<AtomicU64>,
}

impl fmt::Debug for GuardState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardState")
            .field("service", &self.service)
            .field("cfg", &self.cfg)
            .field("state", &self.load_state())
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl GuardState {
    /// Starts Closed with an empty window and sets `tripped_gauge` (the service's
    /// `graylane_gray_tripped` child) to 0, so the series reads 0 rather than a stale value.
    pub fn new(service: String, cfg: Guard, tripped_gauge: IntGauge) -> Self {
        Self::with_origin(service, cfg, tripped_gauge, Instant::now())
    }

    /// `origin` is the zero of the guard's clock; tests pick it so bucket edges fall where
    /// they expect.
    fn with_origin(service: String, cfg: Guard, tripped_gauge: IntGauge, origin: Instant) -> Self {
        tripped_gauge.set(0);
        let cfg = Guard {
            // The validated config already guarantees this; a hand-built one must not make
            // an empty window look decisive.
            min_requests: cfg.min_requests.max(1),
            ..cfg
        };
        GuardState {
            bucket_ms: (millis(cfg.window) / BUCKETS).max(1),
            cooldown_ms: millis(cfg.cooldown).max(1),
            probes_needed: cfg.min_requests.min(MAX_PROBES),
            service,
            cfg,
            tripped_gauge,
            origin,
            state: Padded(AtomicU64::new(
                State {
                    mode: Mode::Closed,
                    gen: 0,
                }
                .pack(),
            )),
            shift: Padded::default(),
            buckets: Padded::default(),
            tickets: Padded::default(),
            probes: Padded::default(),
        }
    }

    /// Should this gray-routed request go to gray? `false` sends it to stable with reason
    /// `guard_tripped`. Closed: always `true`, at the cost of one atomic load (no clock
    /// read). HalfOpen: `true` for the probe share.
    pub fn admit(&self) -> bool {
        if self.load_state().mode == Mode::Closed {
            return true;
        }
        self.admit_at(Instant::now())
    }

    /// [`admit`](Self::admit) at a given instant, for tests and for callers that already
    /// read the clock for this request.
    pub fn admit_at(&self, now: Instant) -> bool {
        loop {
            let st = self.load_state();
            match st.mode {
                Mode::Closed => return true,
                Mode::HalfOpen => return self.take_ticket(st.gen),
                Mode::Open(until) if self.ms(now) < until => return false,
                Mode::Open(_) => {
                    let next = State {
                        mode: Mode::HalfOpen,
                        gen: next_gen(st.gen),
                    };
                    if self.cas_state(st, next) {
                        tracing::info!(
                            service = %self.service,
                            "gray guard half-open for service {}: cooldown of {} over, \
                             probing with 1 in {PROBE_EVERY} gray requests",
                            self.service,
                            humantime::format_duration(self.cfg.cooldown),
                        );
                        return self.take_ticket(next.gen);
                    }
                    // Another request moved the state first; act on what it left.
                }
            }
        }
    }

    /// Outcome of a request that went to gray. `failed` = a 5xx answer or an upstream error
    /// (connect, timeout, reset, protocol). Outcomes that arrive while Open (requests
    /// admitted before the trip) are dropped: the window is cleared before gray serves
    /// again anyway.
    pub fn record(&self, failed: bool) {
        if let Mode::Open(_) = self.load_state().mode {
            return;
        }
        self.record_at(failed, Instant::now());
    }

    /// [`record`](Self::record) at a given instant, for tests and for callers that already
    /// read the clock for this request.
    pub fn record_at(&self, failed: bool, now: Instant) {
        let st = self.load_state();
        match st.mode {
            Mode::Open(_) => {}
            Mode::HalfOpen => self.record_probe(st, failed, now),
            Mode::Closed => {
                let v = self.bucket_number(now);
                self.count(v, failed);
                // The share can newly exceed the bound only by gaining a failure or by
                // losing successes off the window's end; the latter with no new failure
                // means gray is answering well now, so checking on failures alone suffices
                // and keeps the successful path to one compare-and-swap.
                if failed {
                    self.evaluate(st, v, now);
                }
            }
        }
    }

    /// Trips gray by hand (`POST /guard/trip`): Open for one cooldown, then the usual
    /// half-open probing. Returns the new tripped state, always `true`.
    pub fn trip(&self) -> bool {
        self.trip_at(Instant::now())
    }

    /// [`trip`](Self::trip) at a given instant, for tests.
    pub fn trip_at(&self, now: Instant) -> bool {
        let until = self.ms(now).saturating_add(self.cooldown_ms);
        self.update_state(|st| State {
            mode: Mode::Open(until),
            gen: next_gen(st.gen),
        });
        tracing::error!(
            service = %self.service,
            "gray tripped by hand for service {}; sending gray traffic to stable for {}",
            self.service,
            humantime::format_duration(self.cfg.cooldown),
        );
        self.sync_gauge();
        true
    }

    /// Closes the guard by hand (`POST /guard/reset`) with an empty window, so failures
    /// from before the reset cannot trip it again at once. Returns the new tripped state,
    /// always `false`.
    pub fn reset(&self) -> bool {
        self.clear_window();
        self.update_state(|st| State {
            mode: Mode::Closed,
            gen: next_gen(st.gen),
        });
        tracing::info!(
            service = %self.service,
            "gray guard reset by hand for service {}; gray serves again",
            self.service,
        );
        self.sync_gauge();
        false
    }

    /// Whether gray is held back (Open or HalfOpen), for the admin answer and `/explain`.
    /// Does not move the state: an Open guard whose cooldown is over reads as tripped until
    /// the next gray-routed request starts the probes.
    pub fn is_tripped(&self) -> bool {
        self.load_state().tripped()
    }

    // --- internals ---

    fn load_state(&self) -> State {
        State::unpack(self.state.0.load(Ordering::Acquire))
    }

    /// Moves from exactly `from` to `to`; `false` if another thread moved first.
    fn cas_state(&self, from: State, to: State) -> bool {
        self.state
            .0
            .compare_exchange(from.pack(), to.pack(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Unconditional transition (the manual switches), computed from the current state.
    fn update_state(&self, f: impl Fn(State) -> State) {
        let mut cur = self.state.0.load(Ordering::Acquire);
        loop {
            let next = f(State::unpack(cur)).pack();
            match self
                .state
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(w) => cur = w,
            }
        }
    }

    /// Brings the gauge in line with the state. Transitions by different threads may set
    /// the gauge out of order; re-reading until the state held still while we set means
    /// the thread of the last transition leaves the right value.
    fn sync_gauge(&self) {
        loop {
            let t = self.is_tripped();
            self.tripped_gauge.set(i64::from(t));
            if self.is_tripped() == t {
                return;
            }
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        millis(now.saturating_duration_since(self.origin)).min(TIME_MAX)
    }

    fn bucket_number(&self, now: Instant) -> u64 {
        (self.ms(now) / self.bucket_ms).wrapping_add(self.shift.0.load(Ordering::Acquire))
    }

    fn clear_window(&self) {
        self.shift.0.fetch_add(BUCKETS, Ordering::AcqRel);
    }

    /// Counts one outcome into bucket number `v`.
    fn count(&self, v: u64, failed: bool) {
        // The untruncated number picks the slot, so slots stay in step across the stamp's
        // wrap; the stamp only has to tell "this bucket", "older" and "newer" apart.
        let cell = &self.buckets.0[(v % BUCKETS) as usize];
        let stamp = v & STAMP_MASK;
        let mut cur = cell.load(Ordering::Acquire);
        loop {
            let (found, requests, failures) = unpack_bucket(cur);
            let age = stamp.wrapping_sub(found) & STAMP_MASK;
            let (mut requests, mut failures) = if age == 0 {
                (requests, failures)
            } else if age < (1 << (STAMP_BITS - 1)) {
                (0, 0)
            } else {
                // The slot already holds a newer bucket: this thread read the clock or the
                // shift before another thread moved on, and its bucket is out of the window.
                return;
            };
            if requests == COUNT_MAX {
                requests /= 2;
                failures /= 2;
            }
            requests += 1;
            failures += u64::from(failed);
            let next = pack_bucket(stamp, requests, failures);
            match cell.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(w) => cur = w,
            }
        }
    }

    /// Requests and failures in the window that ends with bucket number `v`.
    fn window_counts(&self, v: u64) -> (u64, u64) {
        let stamp = v & STAMP_MASK;
        self.buckets.0.iter().fold((0, 0), |(r, f), cell| {
            let (found, requests, failures) = unpack_bucket(cell.load(Ordering::Acquire));
            if stamp.wrapping_sub(found) & STAMP_MASK < BUCKETS {
                (r + requests, f + failures)
            } else {
                (r, f)
            }
        })
    }

    /// Trips if the window ending with bucket `v` is over the bound; `st` is the Closed
    /// state the outcome was counted under.
    fn evaluate(&self, st: State, v: u64, now: Instant) {
        let (requests, failures) = self.window_counts(v);
        if requests < self.cfg.min_requests
            || failures as f64 <= self.cfg.max_error_rate * requests as f64
        {
            return;
        }
        if !self.transition(st, self.open_until(now)) {
            return; // another failure tripped it, or an operator acted
        }
        let rate = failures as f64 / requests as f64;
        tracing::error!(
            service = %self.service,
            error_rate = rate,
            requests,
            failures,
            "gray tripped for service {}: error rate {} over {} ({failures} of {requests} \
             requests) exceeds {}; sending gray traffic to stable for {}",
            self.service,
            round3(rate),
            humantime::format_duration(self.cfg.window),
            self.cfg.max_error_rate,
            humantime::format_duration(self.cfg.cooldown),
        );
    }

    /// Open for a cooldown from `now`.
    fn open_until(&self, now: Instant) -> Mode {
        Mode::Open(self.ms(now).saturating_add(self.cooldown_ms))
    }

    /// Moves from `st` to `mode` in the same round unless another thread (or an
    /// operator) moved first; the gauge follows. `true` when this call moved it.
    fn transition(&self, st: State, mode: Mode) -> bool {
        let moved = self.cas_state(st, State { mode, gen: st.gen });
        if moved {
            self.sync_gauge();
        }
        moved
    }

    /// Takes a half-open ticket for round `gen`: `true` for the probe share.
    fn take_ticket(&self, gen: u64) -> bool {
        let mut cur = self.tickets.0.load(Ordering::Acquire);
        loop {
            let found = cur >> TICKET_BITS;
            let ticket = match gen_order(gen, found) {
                std::cmp::Ordering::Equal => cur & TICKET_MASK,
                std::cmp::Ordering::Greater => 0,
                // A newer round has begun since this thread read the state: stay safe.
                std::cmp::Ordering::Less => return false,
            };
            let next = (gen << TICKET_BITS) | (ticket.wrapping_add(1) & TICKET_MASK);
            match self.tickets.0.compare_exchange_weak(
                cur,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return ticket % PROBE_EVERY == 0,
                Err(w) => cur = w,
            }
        }
    }

    /// Counts a half-open outcome and closes or re-opens once it is decided.
    fn record_probe(&self, st: State, failed: bool, now: Instant) {
        let Some((outcomes, failures)) = self.count_probe(st.gen, failed) else {
            return;
        };
        let needed = self.probes_needed;
        if failures as f64 > self.cfg.max_error_rate * needed as f64 {
            // Even if every outstanding probe succeeds, the share ends above the bound.
            if self.transition(st, self.open_until(now)) {
                tracing::error!(
                    service = %self.service,
                    probes = outcomes,
                    failures,
                    "gray tripped again for service {}: {failures} of {outcomes} probes \
                     failed, more than the {} that {} of {needed} allows; sending gray \
                     traffic to stable for {}",
                    self.service,
                    (self.cfg.max_error_rate * needed as f64).floor(),
                    self.cfg.max_error_rate,
                    humantime::format_duration(self.cfg.cooldown),
                );
            }
        } else if outcomes >= needed {
            // Clear first: outcomes counted under the old numbering by requests that see
            // Closed before the shift would otherwise mix with what led to the trip.
            self.clear_window();
            if self.transition(st, Mode::Closed) {
                tracing::info!(
                    service = %self.service,
                    probes = outcomes,
                    failures,
                    "gray guard closed for service {}: {failures} of {outcomes} probes \
                     failed, within {}; gray serves again",
                    self.service,
                    self.cfg.max_error_rate,
                );
            }
        }
    }

    /// Adds one outcome to round `gen`'s probe counters and returns them, or `None` if a
    /// newer round has begun since this thread read the state.
    fn count_probe(&self, gen: u64, failed: bool) -> Option<(u64, u64)> {
        let mut cur = self.probes.0.load(Ordering::Acquire);
        loop {
            let found = cur >> TICKET_BITS;
            let (outcomes, failures) = match gen_order(gen, found) {
                std::cmp::Ordering::Equal => ((cur >> PROBE_BITS) & PROBE_MAX, cur & PROBE_MAX),
                std::cmp::Ordering::Greater => (0, 0),
                std::cmp::Ordering::Less => return None,
            };
            let outcomes = (outcomes + 1).min(PROBE_MAX);
            let failures = (failures + u64::from(failed)).min(outcomes);
            let next = (gen << TICKET_BITS) | (outcomes << PROBE_BITS) | failures;
            match self.probes.0.compare_exchange_weak(
                cur,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some((outcomes, failures)),
                Err(w) => cur = w,
            }
        }
    }
}

/// A rate as a reader wants it in a log line: 0.42, 0.051, not 0.42000000000000004.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    const WINDOW: Duration = Duration::from_secs(30);
    const COOLDOWN: Duration = Duration::from_secs(120);

    fn cfg(max_error_rate: f64, min_requests: u64) -> Guard {
        Guard {
            max_error_rate,
            min_requests,
            window: WINDOW,
            cooldown: COOLDOWN,
        }
    }

    fn gauge() -> IntGauge {
        IntGauge::new("graylane_gray_tripped", "test").unwrap()
    }

    /// A guard whose clock starts at the returned instant, with its gauge.
    fn guard_with(c: Guard) -> (GuardState, IntGauge, Instant) {
        let g = gauge();
        let t0 = Instant::now();
        (
            GuardState::with_origin("chat".into(), c, g.clone(), t0),
            g,
            t0,
        )
    }

    fn secs(t0: Instant, s: f64) -> Instant {
        t0 + Duration::from_secs_f64(s)
    }

    /// Records `n` outcomes at `now`, the `i`th failed when `fail(i)`.
    fn feed(g: &GuardState, now: Instant, n: u64, fail: impl Fn(u64) -> bool) {
        for i in 0..n {
            g.record_at(fail(i), now);
        }
    }

    /// Log lines written while `f` runs.
    fn logs(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::with_default(sub, f);
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn state_word_round_trips() {
        for st in [
            State {
                mode: Mode::Closed,
                gen: 0,
            },
            State {
                mode: Mode::Open(TIME_MAX),
                gen: GEN_MASK,
            },
            State {
                mode: Mode::HalfOpen,
                gen: 12345,
            },
        ] {
            assert_eq!(State::unpack(st.pack()), st);
        }
    }

    #[test]
    fn low_traffic_never_trips() {
        let (g, gauge, t0) = guard_with(cfg(0.05, 50));
        feed(&g, t0, 49, |_| true);
        assert!(!g.is_tripped());
        assert!(g.admit_at(t0));
        assert_eq!(gauge.get(), 0);
        // Once those are a window old: one a second never fills a window with 50,
        // however long it runs.
        for s in 30..600 {
            g.record_at(true, secs(t0, f64::from(s)));
        }
        assert!(!g.is_tripped());
    }

    #[test]
    fn trips_above_bound_with_enough_requests_and_says_why_once() {
        let (g, gauge, t0) = guard_with(cfg(0.05, 50));
        feed(&g, t0, 45, |_| false);
        let out = logs(|| {
            feed(&g, t0, 4, |_| true);
            assert!(!g.is_tripped(), "49 requests are below min_requests");
            g.record_at(true, t0); // 5 of 50 = 0.1 > 0.05
            assert!(g.is_tripped());
            feed(&g, t0, 20, |_| true); // stragglers: no second line
        });
        assert_eq!(gauge.get(), 1);
        assert!(!g.admit_at(t0));
        assert!(!g.admit_at(secs(t0, 119.9)));
        let errors: Vec<&str> = out.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{out}");
        assert!(
            errors[0].contains(
                "gray tripped for service chat: error rate 0.1 over 30s (5 of 50 requests) \
                 exceeds 0.05; sending gray traffic to stable for 2m"
            ),
            "{out}"
        );
    }

    #[test]
    fn at_or_below_bound_never_trips() {
        let (g, _, t0) = guard_with(cfg(0.05, 50));
        // Exactly one in twenty fails, and never more than that share at any point.
        for s in 0..100 {
            feed(&g, secs(t0, f64::from(s)), 100, |i| i % 20 == 19);
        }
        assert!(!g.is_tripped());
    }

    #[test]
    fn old_failures_slide_out_of_the_window() {
        // Control: 40 failures and 10 successes within 30 s, then a failure: trips.
        let (g, _, t0) = guard_with(cfg(0.05, 50));
        feed(&g, t0, 40, |_| true);
        feed(&g, secs(t0, 29.0), 10, |_| false);
        g.record_at(true, secs(t0, 29.999));
        assert!(g.is_tripped());

        // The same, but the last failure comes when the first 40 are a window old.
        let (g, _, t0) = guard_with(cfg(0.05, 50));
        feed(&g, t0, 40, |_| true);
        feed(&g, secs(t0, 29.0), 10, |_| false);
        g.record_at(true, secs(t0, 30.0));
        assert!(!g.is_tripped());
        assert_eq!(g.window_counts(g.bucket_number(secs(t0, 30.0))), (11, 1));
    }

    #[test]
    fn half_open_admits_the_probe_share() {
        let (g, gauge, t0) = guard_with(cfg(0.05, 50));
        assert!(g.trip_at(t0));
        assert!((0..100).all(|_| !g.admit_at(secs(t0, 119.999))));
        let after = secs(t0, 120.0);
        let admitted = (0..1000).filter(|_| g.admit_at(after)).count();
        assert_eq!(admitted as u64, 1000 / PROBE_EVERY);
        assert!(g.is_tripped(), "half-open still holds gray back");
        assert_eq!(gauge.get(), 1);
    }

    #[test]
    fn first_request_after_cooldown_is_a_probe() {
        let (g, _, t0) = guard_with(cfg(0.05, 50));
        g.trip_at(t0);
        assert!(g.admit_at(secs(t0, 500.0)));
        assert!(!g.admit_at(secs(t0, 500.0)));
    }

    #[test]
    fn healthy_probes_close_it_with_a_fresh_window() {
        // Cooldown shorter than the window: the failures that tripped it are still inside
        // the window when it closes, and must not count again.
        let c = Guard {
            cooldown: Duration::from_secs(10),
            ..cfg(0.05, 50)
        };
        let (g, gauge, t0) = guard_with(c);
        feed(&g, t0, 50, |_| true);
        assert!(g.is_tripped());
        let t = secs(t0, 10.0);
        let mut probes = 0;
        let out = logs(|| {
            for _ in 0..10_000 {
                if !g.is_tripped() {
                    break;
                }
                if g.admit_at(t) {
                    probes += 1;
                    // One failure in twenty is within 0.05.
                    g.record_at(probes == 7, t);
                }
            }
        });
        assert_eq!(probes, MAX_PROBES);
        assert!(!g.is_tripped());
        assert_eq!(gauge.get(), 0);
        assert!(g.admit_at(t));
        assert!(out.contains("INFO"), "{out}");
        assert!(
            out.contains("gray guard closed for service chat: 1 of 20 probes failed"),
            "{out}"
        );
        assert!(!out.contains("ERROR"), "{out}");
        g.record_at(true, t);
        assert!(!g.is_tripped());
        assert_eq!(g.window_counts(g.bucket_number(t)), (1, 1));
    }

    #[test]
    fn failing_probes_reopen_it() {
        let (g, gauge, t0) = guard_with(cfg(0.05, 50));
        g.trip_at(t0);
        let t = secs(t0, 120.0);
        let out = logs(|| {
            assert!(g.admit_at(t));
            g.record_at(true, t);
            assert!(g.is_tripped());
            assert_eq!(
                g.load_state().mode,
                Mode::HalfOpen,
                "one failure of 20 is within 0.05"
            );
            g.record_at(true, t);
        });
        // Two of twenty can no longer end within 0.05: open again at once.
        assert_eq!(g.load_state().mode, Mode::Open(240_000));
        assert_eq!(gauge.get(), 1);
        assert!(!g.admit_at(secs(t0, 239.9)));
        let errors: Vec<&str> = out.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{out}");
        assert!(
            errors[0].contains("gray tripped again for service chat: 2 of 2 probes failed"),
            "{out}"
        );
        // A new round after the second cooldown starts from zero.
        let t = secs(t0, 240.0);
        assert!(g.admit_at(t));
        for _ in 0..MAX_PROBES {
            g.record_at(false, t);
        }
        assert!(!g.is_tripped());
    }

    #[test]
    fn small_min_requests_decides_on_fewer_probes() {
        let (g, _, t0) = guard_with(cfg(0.5, 4));
        g.trip_at(t0);
        let t = secs(t0, 120.0);
        assert!(g.admit_at(t));
        for failed in [true, false, true] {
            g.record_at(failed, t);
        }
        assert!(g.is_tripped());
        g.record_at(false, t); // 2 of 4 = 0.5, within the bound
        assert!(!g.is_tripped());
    }

    #[test]
    fn manual_trip_and_reset() {
        let (g, gauge, t0) = guard_with(cfg(0.05, 50));
        feed(&g, t0, 40, |_| true);
        let out = logs(|| assert!(g.trip_at(t0)));
        assert!(
            out.contains("ERROR") && out.contains("tripped by hand"),
            "{out}"
        );
        assert!(g.is_tripped());
        assert_eq!(gauge.get(), 1);
        assert!(!g.admit_at(t0));
        // Tripping again restarts the cooldown.
        g.trip_at(secs(t0, 60.0));
        assert!(!g.admit_at(secs(t0, 150.0)));

        assert!(!g.reset());
        assert!(!g.is_tripped());
        assert_eq!(gauge.get(), 0);
        assert!(g.admit_at(t0));
        // The 40 failures before the reset are gone: 10 more do not reach min_requests.
        feed(&g, t0, 10, |_| true);
        assert!(!g.is_tripped());
        // Reset while half-open closes too.
        g.trip_at(t0);
        assert!(g.admit_at(secs(t0, 120.0)));
        assert!(!g.reset());
        assert!(g.admit_at(secs(t0, 120.0)));
    }

    #[test]
    fn outcomes_while_open_are_ignored() {
        let (g, _, t0) = guard_with(cfg(0.05, 50));
        g.trip_at(t0);
        feed(&g, secs(t0, 1.0), 100, |_| true);
        assert_eq!(g.probes.0.load(Ordering::Acquire), 0);
        assert_eq!(g.window_counts(g.bucket_number(secs(t0, 1.0))), (0, 0));
    }

    #[test]
    fn a_full_bucket_is_halved_and_keeps_its_share() {
        let (g, _, t0) = guard_with(cfg(1.0, 50));
        let n = COUNT_MAX + 1000;
        feed(&g, t0, n, |i| i % 4 == 0);
        let (r, f) = g.window_counts(g.bucket_number(t0));
        assert!(r <= COUNT_MAX && r > COUNT_MAX / 2, "{r}");
        let share = f as f64 / r as f64;
        assert!((share - 0.25).abs() < 0.01, "{share}");
    }

    #[test]
    fn concurrent_records_all_count() {
        let (g, _, t0) = guard_with(cfg(1.0, 50)); // a share above 1.0 is impossible
        let g = Arc::new(g);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let g = Arc::clone(&g);
                std::thread::spawn(move || feed(&g, t0, 10_000, |i| i % 4 == 0))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(g.window_counts(g.bucket_number(t0)), (80_000, 20_000));
    }

    #[test]
    fn concurrent_transitions_smoke() {
        let c = Guard {
            window: Duration::from_millis(50),
            cooldown: Duration::from_millis(5),
            ..cfg(0.05, 10)
        };
        let gauge = gauge();
        let g = Arc::new(GuardState::new("chat".into(), c, gauge.clone()));
        let threads: Vec<_> = (0..8u64)
            .map(|n| {
                let g = Arc::clone(&g);
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        if g.admit() {
                            g.record((i * 7 + n) % 13 == 0);
                        }
                        if i % 5000 == 4999 && n == 0 {
                            g.trip();
                        }
                        if i % 7001 == 7000 && n == 1 {
                            g.reset();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(gauge.get(), i64::from(g.is_tripped()));
        g.reset();
        assert_eq!(gauge.get(), 0);
        assert!(g.admit());
    }
}
