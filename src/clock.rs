//! The kernel's coarse clocks, for what is counted in milliseconds or seconds.
//!
//! A precise clock read (`Instant::now`, `SystemTime::now`: `CLOCK_MONOTONIC`,
//! `CLOCK_REALTIME`) reads the CPU's time-stamp counter, ~30 ns on this project's
//! machine; the coarse clocks return the time of the kernel's last tick (1–10 ms old,
//! `CONFIG_HZ`) from the vDSO page, ~10 ns. A request of the own HTTP/1.1 loop read the
//! precise clock five times itself (tokio reads it at its wake-ups too); the watchdog's
//! bookkeeping (counted in whole milliseconds against timeouts of seconds) and the `Date`
//! field (whole seconds) need no more than the tick, as nginx reads its clock once per
//! event-loop turn for the same reasons. Request latency and the upstream's deadline keep
//! the precise clock.
//!
//! These clocks do not follow tokio's paused test time: what reads them is tested with
//! real time (the watchdog's tests wait for real timeouts). Where the kernel has no
//! coarse clocks (not Linux, Android or FreeBSD), the precise ones stand in.

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
mod imp {
    use rustix::time::{clock_gettime, ClockId};

    pub(super) fn coarse_ms() -> u64 {
        let t = clock_gettime(ClockId::MonotonicCoarse);
        // Both fields are non-negative for this clock (time since boot).
        let secs = u64::try_from(t.tv_sec).unwrap_or(0);
        let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
        secs.saturating_mul(1000).saturating_add(nanos / 1_000_000)
    }

    pub(super) fn coarse_unix_secs() -> u64 {
        u64::try_from(clock_gettime(ClockId::RealtimeCoarse).tv_sec).unwrap_or(0)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
mod imp {
    use std::sync::LazyLock;
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

    pub(super) fn coarse_ms() -> u64 {
        crate::millis(BASE.elapsed())
    }

    pub(super) fn coarse_unix_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// Milliseconds on the coarse monotonic clock (the same clock as `Instant`'s, up to a
/// tick behind it), for differences between two readings.
pub(crate) fn coarse_ms() -> u64 {
    imp::coarse_ms()
}

/// Whole seconds since the Unix epoch on the coarse real-time clock.
pub(crate) fn coarse_unix_secs() -> u64 {
    imp::coarse_unix_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    #[test]
    fn the_coarse_clocks_keep_within_a_tick_of_the_precise_ones() {
        // A tick is at most 10 ms (CONFIG_HZ ≥ 100); the margin covers a descheduled
        // thread between the two reads.
        let slack = 50;
        let before = coarse_ms();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_millis(120));
        let after = coarse_ms();
        let precise = crate::millis(t0.elapsed());
        assert!(
            after >= before + 100,
            "coarse clock moved {} ms",
            after - before
        );
        assert!(
            after - before <= precise + slack,
            "{} vs {precise}",
            after - before
        );

        // Read first, the coarse clock can only be behind the precise one.
        let coarse = coarse_unix_secs();
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(coarse + 1 >= unix && coarse <= unix, "{coarse} vs {unix}");
    }
}
