//! How the guard moves on what it sees: the judge's verdicts on the Closed windows, the
//! half-open probes, and the one ERROR line with the evidence at each trip.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::judge::{Evidence, Reason};
use super::window::Counts;
use super::word::*;
use super::{round3, GuardState, LATENCY_CHECK_MS, PROBE_EVERY};

impl GuardState {
    /// After a gray failure in Closed: trips if the judge says gray's failures are worse.
    pub(super) fn evaluate_errors(&self, st: State, now: Instant) {
        let e = self.evidence(Reason::ErrorRate, now, None);
        let verdict = self.judge.errors(&e.gray, &e.stable, self.cfg.min_requests);
        if verdict.trips {
            self.trip_on(st, now, Evidence { z: verdict.z, ..e });
        }
    }

    /// After a slow gray answer in Closed, at most every [`LATENCY_CHECK_MS`]: trips if
    /// the judge says gray's p95 is worse.
    pub(super) fn evaluate_latency(&self, st: State, now: Instant) {
        if !self.judge.latency_on() {
            return;
        }
        let ms = self.ms(now);
        let due = self.next_latency_check.load(Ordering::Acquire);
        if ms < due
            || self
                .next_latency_check
                .compare_exchange(
                    due,
                    ms + LATENCY_CHECK_MS,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
        {
            return;
        }
        let e = self.evidence(Reason::Latency, now, None);
        if self
            .judge
            .latency(&e.gray, &e.stable, self.cfg.min_requests)
        {
            self.trip_on(st, now, e);
        }
    }

    /// Closed or HalfOpen → Open on `evidence`, with its one ERROR line.
    pub(super) fn trip_on(&self, st: State, now: Instant, evidence: Evidence) {
        let log = evidence.clone();
        if !self.transition(st, self.open_until(now), now, Some(evidence)) {
            return; // another outcome tripped it, or an operator acted
        }
        let (g, s) = (&log.gray, &log.stable);
        tracing::error!(
            service = %self.service,
            reason = log.reason.label(),
            gray_requests = g.requests,
            gray_failures = g.failures,
            gray_share = round3(g.share()),
            gray_p95_ms = g.p95_ms.map(round3),
            stable_requests = s.requests,
            stable_failures = s.failures,
            stable_share = round3(s.share()),
            stable_p95_ms = s.p95_ms.map(round3),
            z = log.z.map(round3),
            z_needed = round3(log.z_needed),
            "gray tripped for service {} ({}): gray {} of {} failed ({}), p95 {} ms; \
             stable {} of {} failed ({}), p95 {} ms; {}; sending gray traffic to stable \
             for {}",
            self.service,
            log.reason.label(),
            g.failures,
            g.requests,
            round3(g.share()),
            g.p95_ms.map_or_else(|| "-".to_owned(), |p| round3(p).to_string()),
            s.failures,
            s.requests,
            round3(s.share()),
            s.p95_ms.map_or_else(|| "-".to_owned(), |p| round3(p).to_string()),
            self.test_outcome(&log),
            humantime::format_duration(self.cfg.cooldown),
        );
    }

    /// The comparison's outcome in words, for the log line.
    pub(super) fn test_outcome(&self, e: &Evidence) -> String {
        match (e.reason, e.z) {
            (Reason::Latency, _) => format!(
                "gray p95 above {} x stable's and {}",
                self.cfg.max_latency_ratio.unwrap_or(0.0),
                humantime::format_duration(self.cfg.min_latency)
            ),
            (_, Some(z)) => format!(
                "worse than stable beyond chance (z {} > {} for confidence {})",
                round3(z),
                round3(e.z_needed),
                self.cfg.confidence
            ),
            (_, None) if self.cfg.compare_to_stable => format!(
                "above max_error_rate {} (stable under min_requests: not compared)",
                self.cfg.max_error_rate
            ),
            (_, None) => format!(
                "above max_error_rate {} (compare_to_stable off)",
                self.cfg.max_error_rate
            ),
        }
    }

    /// Takes a half-open ticket for round `gen`: `true` for the probe share.
    pub(super) fn take_ticket(&self, gen: u64) -> bool {
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
    pub(super) fn record_probe(&self, st: State, failed: bool, now: Instant) {
        let Some((outcomes, failures)) = self.count_probe(st.gen, failed) else {
            return;
        };
        let needed = self.probes_needed;
        let stable = self.stable.0.counts(self.stable.0.number(self.slot(now)));
        let probes = Counts {
            requests: outcomes,
            failures,
            p95_ms: None,
        };
        // Even if every outstanding probe succeeds, the share ends above the bound: decide
        // now, unless stable fails alike (then wait for the round to end).
        let doomed = Counts {
            requests: needed,
            ..probes
        };
        let verdict = self.judge.errors(&doomed, &stable, needed);
        if verdict.trips {
            let e = Evidence {
                gray: probes,
                ..self.evidence(Reason::Probes, now, verdict.z)
            };
            self.trip_on(st, now, e);
            return;
        }
        if outcomes < needed {
            return;
        }
        // The round is complete and its failures pass: the latency of the probes (gray's
        // window holds nothing older) decides the rest.
        let e = self.evidence(Reason::Latency, now, None);
        if self.judge.latency(&e.gray, &e.stable, needed) {
            self.trip_on(st, now, e);
            return;
        }
        if self.transition(st, Mode::Closed, now, None) {
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

    /// Adds one outcome to round `gen`'s probe counters and returns them, or `None` if a
    /// newer round has begun since this thread read the state.
    pub(super) fn count_probe(&self, gen: u64, failed: bool) -> Option<(u64, u64)> {
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
