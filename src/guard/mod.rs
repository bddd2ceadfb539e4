//! The automatic rollback guard: a circuit breaker over one service's gray pool that trips
//! when gray is worse than stable, not merely when something fails (SPEC §3 "Guard",
//! §9.1, §5 `/guard`).
//!
//! # Where it sits
//!
//! For every request the rules send to gray, the proxy asks [`GuardState::admit`]; `false`
//! means "send it to stable" (fallback reason `guard_tripped`). Every request that did go
//! to gray reports its outcome and latency with [`GuardState::record_gray`], every request
//! to the service's stable pool with [`GuardState::record_stable`]. Both run on the
//! request path, so they touch nothing but atomics: no lock, no allocation; a Closed
//! `admit` is one atomic load and a record two compare-and-swaps (counts and latency).
//!
//! # States
//!
//! - **Closed**: gray serves. Both pools' outcomes go into sliding windows (`window`).
//!   Gray trips to Open (one ERROR line with the evidence) when the judge (`judge`) says
//!   its failures or its latency are worse than stable's.
//! - **Open** until `cooldown` has passed: nothing goes to gray. Gray's window is cleared
//!   at the trip, so what follows is about gray after the cooldown only.
//! - **HalfOpen**: one in [`PROBE_EVERY`] gray-routed requests goes to gray as a probe.
//!   After `min(min_requests, `[`MAX_PROBES`]`)` probe outcomes the judge decides on the
//!   probes against stable: it closes (one INFO line, a fresh window) or re-opens for
//!   another cooldown (one ERROR line); as soon as the probes' failures are too many for
//!   their share to end within `max_error_rate` and worse than stable's, it re-opens at
//!   once.
//!
//! `graylane_gray_tripped{service}` is 1 while Open *and* HalfOpen: gray is not taking its
//! full share of traffic until the probes have cleared it. Ramps hold their step from the
//! moment gray left Closed ([`GuardState::held_since`]).
//!
//! # Time
//!
//! Time is an explicit argument (`now`), so tests drive the guard with exact instants (the
//! crate does not enable tokio's `test-util`, so paused time is not an option), and the
//! request path reads the clock once for the latency and the bucket. `tokio::time::Instant`
//! rather than `std`'s so that, should `test-util` ever be enabled, a paused runtime clock
//! drives the plain forms too.

mod judge;
mod transitions;
mod window;
mod word;

pub(crate) use judge::{Evidence, Reason};
pub(crate) use window::Counts;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use prometheus::IntGauge;
use tokio::time::Instant;

use crate::config::Guard;
use judge::Judge;
use window::Window;
use word::*;

/// Buckets in a sliding window: ten keeps the window's edge within 10 % of `window` while
/// the whole window is still read with ten loads.
pub(crate) const BUCKETS: u64 = 10;

/// In HalfOpen, one gray-routed request in this many is a probe (5 %): small enough that a
/// still-broken gray hurts few users, large enough to decide within seconds at modest load.
/// The first request after the cooldown is always a probe, so a quiet service gets one too.
pub(crate) const PROBE_EVERY: u64 = 20;

/// Most probe outcomes a half-open round waits for. Twenty makes a 5 % bound meaningful
/// (one failure in twenty passes, two do not); a service with a smaller `min_requests`
/// decides after that many, as its operator asked for decisions on that little traffic.
pub(crate) const MAX_PROBES: u64 = 20;

/// The latency judge reads 500 words; it runs at most this often per guard (and only when
/// a slow answer arrives), so a busy gray pool does not pay it per request.
const LATENCY_CHECK_MS: u64 = 100;

/// The guard's state as `/guard` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Closed,
    Open,
    HalfOpen,
}

impl Phase {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::Open => "open",
            Phase::HalfOpen => "half_open",
        }
    }
}

/// What `GET /guard` answers.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    pub(crate) phase: Phase,
    /// When the phase began.
    pub(crate) since: SystemTime,
    /// Both pools' windows now.
    pub(crate) gray: Counts,
    pub(crate) stable: Counts,
    /// What the last trip was decided on.
    pub(crate) last_trip: Option<Arc<Evidence>>,
}

// === impl GuardState ===

/// One service's gray breaker, shared by every connection that routes to the service.
///
/// Built once per service with a `guard:` block; lives as long as the config (rule
/// reloads do not touch it, so a trip survives them).
pub(crate) struct GuardState {
    /// Names the service in log lines.
    service: String,
    /// The configured bounds, kept for the log lines.
    cfg: Guard,
    /// The decision, with the confidence's z worked out once.
    judge: Judge,
    /// `graylane_gray_tripped{service}`, resolved once so a transition only stores into it.
    tripped_gauge: IntGauge,
    /// Zero of the guard's millisecond clock; packed times are relative to it.
    origin: Instant,
    /// The wall clock at `origin`, for the times `/guard` shows and ramps hold at.
    origin_wall: SystemTime,
    /// Width of one bucket in milliseconds (at least 1).
    bucket_ms: u64,
    /// `cooldown` in milliseconds (at least 1).
    cooldown_ms: u64,
    /// Probe outcomes a half-open round waits for.
    probes_needed: u64,
    /// The packed [`State`]; read by every `admit`.
    state: Padded<AtomicU64>,
    /// When the state last changed, in ms since `origin`.
    changed_ms: AtomicU64,
    /// One more than the ms since `origin` at which gray last left Closed; 0 while Closed.
    held_ms: AtomicU64,
    /// The earliest ms since `origin` at which the latency judge runs again.
    next_latency_check: AtomicU64,
    gray: Padded<Window>,
    stable: Padded<Window>,
    /// Half-open requests seen this round, to admit one in [`PROBE_EVERY`].
    tickets: Padded<AtomicU64>,
    /// Half-open probe outcomes and failures this round.
    probes: Padded<AtomicU64>,
    /// The evidence of the last trip; written at a trip only (a pointer swap, no lock).
    last_trip: ArcSwapOption<Evidence>,
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
    /// Starts Closed with empty windows and sets `tripped_gauge` (the service's
    /// `graylane_gray_tripped` child) to 0, so the series reads 0 rather than a stale value.
    pub(crate) fn new(service: String, cfg: Guard, tripped_gauge: IntGauge) -> Self {
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
            judge: Judge::new(&cfg),
            service,
            cfg,
            tripped_gauge,
            origin,
            origin_wall: SystemTime::now(),
            state: Padded(AtomicU64::new(
                State {
                    mode: Mode::Closed,
                    gen: 0,
                }
                .pack(),
            )),
            changed_ms: AtomicU64::new(0),
            held_ms: AtomicU64::new(0),
            next_latency_check: AtomicU64::new(0),
            gray: Padded::default(),
            stable: Padded::default(),
            tickets: Padded::default(),
            probes: Padded::default(),
            last_trip: ArcSwapOption::empty(),
        }
    }

    /// Should this gray-routed request go to gray? `false` sends it to stable with reason
    /// `guard_tripped`. Closed: always `true`, at the cost of one atomic load (no clock
    /// read). HalfOpen: `true` for the probe share.
    pub(crate) fn admit(&self) -> bool {
        if self.load_state().mode == Mode::Closed {
            return true;
        }
        self.admit_at(Instant::now())
    }

    /// [`admit`](Self::admit) at a given instant, for tests and for callers that already
    /// read the clock for this request.
    pub(crate) fn admit_at(&self, now: Instant) -> bool {
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
                        self.changed_ms.store(self.ms(now), Ordering::Release);
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
    /// (connect, timeout, reset, protocol); `latency` until its response head, for an
    /// answered request. Outcomes that arrive while Open (requests admitted before the
    /// trip) are dropped.
    pub(crate) fn record_gray(&self, failed: bool, latency: Option<Duration>, now: Instant) {
        let st = self.load_state();
        match st.mode {
            Mode::Open(_) => {}
            Mode::HalfOpen => {
                self.gray
                    .0
                    .record(self.gray_number(now), failed, micros(latency));
                self.record_probe(st, failed, now);
            }
            Mode::Closed => {
                let v = self.gray_number(now);
                self.gray.0.record(v, failed, micros(latency));
                // The share can newly exceed the bound only by gaining a failure or by
                // losing successes off the window's end; the latter with no new failure
                // means gray is answering well now, so checking on failures alone suffices
                // and keeps the successful path to its compare-and-swaps.
                if failed {
                    self.evaluate_errors(st, now);
                } else if latency.is_some_and(|l| l >= self.cfg.min_latency) {
                    self.evaluate_latency(st, now);
                }
            }
        }
    }

    /// Outcome of a request that went to the service's stable pool: the baseline gray is
    /// compared with. It never trips anything by itself.
    pub(crate) fn record_stable(&self, failed: bool, latency: Option<Duration>, now: Instant) {
        let v = self.stable.0.number(self.slot(now));
        self.stable.0.record(v, failed, micros(latency));
    }

    /// Trips gray by hand (`POST /guard/trip`): Open for one cooldown, then the usual
    /// half-open probing. Returns the new tripped state, always `true`.
    pub(crate) fn trip(&self) -> bool {
        self.trip_at(Instant::now())
    }

    /// [`trip`](Self::trip) at a given instant, for tests.
    pub(crate) fn trip_at(&self, now: Instant) -> bool {
        let until = self.ms(now).saturating_add(self.cooldown_ms);
        let evidence = self.evidence(Reason::Manual, now, None);
        self.update_state(|st| State {
            mode: Mode::Open(until),
            gen: next_gen(st.gen),
        });
        self.entered(Mode::Open(until), now, Some(evidence));
        tracing::error!(
            service = %self.service,
            "gray tripped by hand for service {}; sending gray traffic to stable for {}",
            self.service,
            humantime::format_duration(self.cfg.cooldown),
        );
        true
    }

    /// Closes the guard by hand (`POST /guard/reset`) with an empty window, so failures
    /// from before the reset cannot trip it again at once. Returns the new tripped state,
    /// always `false`.
    pub(crate) fn reset(&self) -> bool {
        self.gray.0.clear();
        self.update_state(|st| State {
            mode: Mode::Closed,
            gen: next_gen(st.gen),
        });
        self.entered(Mode::Closed, Instant::now(), None);
        tracing::info!(
            service = %self.service,
            "gray guard reset by hand for service {}; gray serves again",
            self.service,
        );
        false
    }

    /// Whether gray is held back (Open or HalfOpen), for the admin answer and `/explain`.
    /// Does not move the state: an Open guard whose cooldown is over reads as tripped until
    /// the next gray-routed request starts the probes.
    pub(crate) fn is_tripped(&self) -> bool {
        self.load_state().tripped()
    }

    /// When gray last left Closed, while it is held back: the instant a ramp of this
    /// service stays at until the guard closes. `None` while Closed.
    pub(crate) fn held_since(&self) -> Option<SystemTime> {
        match self.held_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(self.origin_wall + Duration::from_millis(ms - 1)),
        }
    }

    /// The state, both windows and the last trip's evidence, for `GET /guard`.
    pub(crate) fn status(&self) -> Status {
        let now = Instant::now();
        let phase = match self.load_state().mode {
            Mode::Closed => Phase::Closed,
            Mode::Open(_) => Phase::Open,
            Mode::HalfOpen => Phase::HalfOpen,
        };
        Status {
            phase,
            since: self.wall(self.changed_ms.load(Ordering::Acquire)),
            gray: self.gray.0.counts(self.gray_number(now)),
            stable: self.stable.0.counts(self.stable.0.number(self.slot(now))),
            last_trip: self.last_trip.load_full(),
        }
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

    /// Moves from `st` to `mode` in the same round unless another thread (or an
    /// operator) moved first. `true` when this call moved it.
    fn transition(&self, st: State, mode: Mode, now: Instant, evidence: Option<Evidence>) -> bool {
        let moved = self.cas_state(st, State { mode, gen: st.gen });
        if moved {
            self.entered(mode, now, evidence);
        }
        moved
    }

    /// Bookkeeping after this thread moved the state into `mode`: gray's window starts
    /// afresh at a trip and at a close, the times `/guard` and ramps read, the evidence,
    /// and the gauge.
    fn entered(&self, mode: Mode, now: Instant, evidence: Option<Evidence>) {
        let ms = self.ms(now);
        self.changed_ms.store(ms, Ordering::Release);
        match mode {
            Mode::Open(_) => {
                self.gray.0.clear();
                // From Closed the hold starts now; from HalfOpen it goes on.
                let _ =
                    self.held_ms
                        .compare_exchange(0, ms + 1, Ordering::AcqRel, Ordering::Acquire);
            }
            Mode::Closed => {
                self.gray.0.clear();
                self.held_ms.store(0, Ordering::Release);
            }
            Mode::HalfOpen => {}
        }
        if let Some(e) = evidence {
            self.last_trip.store(Some(Arc::new(e)));
        }
        self.sync_gauge();
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

    fn wall(&self, ms: u64) -> SystemTime {
        self.origin_wall + Duration::from_millis(ms)
    }

    fn slot(&self, now: Instant) -> u64 {
        self.ms(now) / self.bucket_ms
    }

    fn gray_number(&self, now: Instant) -> u64 {
        self.gray.0.number(self.slot(now))
    }

    fn open_until(&self, now: Instant) -> Mode {
        Mode::Open(self.ms(now).saturating_add(self.cooldown_ms))
    }

    /// Both windows now, as a trip is decided on them.
    fn evidence(&self, reason: Reason, now: Instant, z: Option<f64>) -> Evidence {
        Evidence {
            reason,
            at: self.wall(self.ms(now)),
            gray: self.gray.0.counts(self.gray_number(now)),
            stable: self.stable.0.counts(self.stable.0.number(self.slot(now))),
            z,
            z_needed: self.judge.z_needed,
        }
    }
}

#[cfg(test)]
impl GuardState {
    /// A gray outcome without latency, for tests that count failures only.
    fn record_gray_at(&self, failed: bool, now: Instant) {
        self.record_gray(failed, None, now);
    }

    /// Gray's requests and failures in the window at `now`.
    fn gray_counts(&self, now: Instant) -> (u64, u64) {
        let c = self.gray.0.counts(self.gray_number(now));
        (c.requests, c.failures)
    }
}

#[cfg(test)]
mod tests;

/// Whole microseconds, for the latency histogram.
fn micros(latency: Option<Duration>) -> Option<u64> {
    latency.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A rate as a reader wants it in a log line: 0.42, 0.051, not 0.42000000000000004.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
