//! One pool's sliding window: requests, failures and a latency histogram per time bucket,
//! each counter one `AtomicU64` that carries the bucket number it counts for, so starting
//! a fresh bucket and counting into it is one compare-and-swap and no count is lost to a
//! race. Nothing here allocates; a window is 2 KiB, fixed.
//!
//! The window is the current bucket plus the `BUCKETS - 1` before it, so an outcome counts
//! for between 0.9 × `window` and `window`, never longer. Clearing it shifts the bucket
//! numbering by `BUCKETS`, which puts every existing bucket out of the window at once; a
//! writer that still uses the old numbering writes into a bucket already out of it.

use std::sync::atomic::{AtomicU64, Ordering};

use super::word::{pack_bucket, unpack_bucket, COUNT_MAX, STAMP_BITS, STAMP_MASK};
use super::BUCKETS;

/// Upper bounds of the latency histogram's buckets in microseconds; one more bucket holds
/// everything slower. Roughly ×1.5 apart, so a p95 read off them is within a bucket's
/// width of the truth, which is far finer than the ratios a latency guard compares.
pub(super) const LATENCY_BOUNDS_US: [u64; 24] = [
    1_000, 2_000, 3_000, 5_000, 7_000, 10_000, 15_000, 20_000, 30_000, 50_000, 70_000, 100_000,
    150_000, 200_000, 300_000, 500_000, 700_000, 1_000_000, 1_500_000, 2_000_000, 3_000_000,
    5_000_000, 10_000_000, 30_000_000,
];
const LATENCY_SLOTS: usize = LATENCY_BOUNDS_US.len() + 1;

/// A latency cell: the truncated bucket number in the top bits (as in a bucket word),
/// the count in the low 36.
const CELL_COUNT_BITS: u32 = 64 - STAMP_BITS;
const CELL_COUNT_MAX: u64 = (1 << CELL_COUNT_BITS) - 1;

/// What a window holds right now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Counts {
    pub(crate) requests: u64,
    pub(crate) failures: u64,
    /// 95th percentile of the answered requests' latency in milliseconds; `None` without
    /// any.
    pub(crate) p95_ms: Option<f64>,
}

impl Counts {
    /// The failure share, 0 without requests.
    pub(crate) fn share(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.failures as f64 / self.requests as f64
        }
    }
}

#[derive(Default)]
pub(super) struct Window {
    /// Added to the bucket number; a clear adds `BUCKETS`.
    shift: AtomicU64,
    /// Requests and failures per bucket.
    buckets: [AtomicU64; BUCKETS as usize],
    /// Latency counts per bucket and latency slot.
    latency: [[AtomicU64; LATENCY_SLOTS]; BUCKETS as usize],
}

impl Window {
    /// The number of the bucket that time `slot` (milliseconds / bucket width) falls in.
    pub(super) fn number(&self, slot: u64) -> u64 {
        slot.wrapping_add(self.shift.load(Ordering::Acquire))
    }

    /// Empties the window at once.
    pub(super) fn clear(&self) {
        self.shift.fetch_add(BUCKETS, Ordering::AcqRel);
    }

    /// Counts one outcome into bucket number `v`; `latency_us` for an answered request.
    pub(super) fn record(&self, v: u64, failed: bool, latency_us: Option<u64>) {
        // The untruncated number picks the slot, so slots stay in step across the stamp's
        // wrap; the stamp only has to tell "this bucket", "older" and "newer" apart.
        let i = (v % BUCKETS) as usize;
        let stamp = v & STAMP_MASK;
        bump(&self.buckets[i], stamp, |w| {
            let (mut requests, mut failures) = w.map_or((0, 0), |w| {
                let (_, r, f) = unpack_bucket(w);
                (r, f)
            });
            if requests == COUNT_MAX {
                // A full bucket is halved, which keeps its failure share.
                requests /= 2;
                failures /= 2;
            }
            pack_bucket(stamp, requests + 1, failures + u64::from(failed))
        });
        if let Some(us) = latency_us {
            let slot = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
            bump(&self.latency[i][slot], stamp, |w| {
                let n = w.map_or(0, |w| w & CELL_COUNT_MAX);
                (stamp << CELL_COUNT_BITS) | (n + 1).min(CELL_COUNT_MAX)
            });
        }
    }

    /// Requests, failures and p95 in the window that ends with bucket number `v`.
    pub(super) fn counts(&self, v: u64) -> Counts {
        let stamp = v & STAMP_MASK;
        let live = |found: u64| stamp.wrapping_sub(found) & STAMP_MASK < BUCKETS;
        let (mut requests, mut failures) = (0, 0);
        let mut hist = [0u64; LATENCY_SLOTS];
        for (cell, row) in self.buckets.iter().zip(&self.latency) {
            let (found, r, f) = unpack_bucket(cell.load(Ordering::Acquire));
            if !live(found) {
                continue;
            }
            requests += r;
            failures += f;
            for (h, c) in hist.iter_mut().zip(row) {
                let w = c.load(Ordering::Acquire);
                if live(w >> CELL_COUNT_BITS) {
                    *h += w & CELL_COUNT_MAX;
                }
            }
        }
        Counts {
            requests,
            failures,
            p95_ms: p95_ms(&hist),
        }
    }
}

/// Applies `next` to a cell: its argument is the cell's word when the cell counts for
/// `stamp`, `None` when it holds an older bucket (which `next` replaces). A cell that
/// already holds a newer bucket is left alone: this thread read the clock or the shift
/// before another moved on, and its bucket is out of the window.
fn bump(cell: &AtomicU64, stamp: u64, next: impl Fn(Option<u64>) -> u64) {
    let mut cur = cell.load(Ordering::Acquire);
    loop {
        let found = cur >> (64 - STAMP_BITS);
        let age = stamp.wrapping_sub(found) & STAMP_MASK;
        let word = if age == 0 {
            next(Some(cur))
        } else if age < (1 << (STAMP_BITS - 1)) {
            next(None)
        } else {
            return;
        };
        match cell.compare_exchange_weak(cur, word, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(w) => cur = w,
        }
    }
}

/// The 95th percentile of a latency histogram in milliseconds, interpolated linearly
/// within its bucket (the open-ended last bucket reads as twice its lower bound).
fn p95_ms(hist: &[u64; LATENCY_SLOTS]) -> Option<f64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total as f64 * 0.95).ceil();
    let mut below = 0u64;
    for (i, &n) in hist.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let lo = if i == 0 { 0 } else { LATENCY_BOUNDS_US[i - 1] };
            let hi = LATENCY_BOUNDS_US.get(i).copied().unwrap_or(lo * 2);
            let within = (rank - below as f64) / n as f64;
            return Some((lo as f64 + (hi - lo) as f64 * within) / 1000.0);
        }
        below += n;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_p95_over_the_window() {
        let w = Window::default();
        for i in 0..100u64 {
            // 95 fast (1.5 ms), 5 slow (120 ms): p95 sits at the top of the fast ones.
            let us = if i < 95 { 1_500 } else { 120_000 };
            w.record(7, i % 10 == 0, Some(us));
        }
        let c = w.counts(7);
        assert_eq!((c.requests, c.failures), (100, 10));
        let p95 = c.p95_ms.unwrap();
        assert!((1.0..=2.0).contains(&p95), "{p95}");
        // All slow: p95 inside the 100–150 ms bucket.
        let w = Window::default();
        for _ in 0..20 {
            w.record(3, false, Some(120_000));
        }
        let p95 = w.counts(3).p95_ms.unwrap();
        assert!((100.0..=150.0).contains(&p95), "{p95}");
    }

    #[test]
    fn old_buckets_slide_out_and_a_clear_empties_it() {
        let w = Window::default();
        w.record(w.number(5), true, Some(1_000));
        assert_eq!(w.counts(w.number(5)).requests, 1);
        assert_eq!(w.counts(w.number(5 + BUCKETS - 1)).requests, 1);
        assert_eq!(w.counts(w.number(5 + BUCKETS)).requests, 0);
        assert_eq!(w.counts(w.number(5 + BUCKETS)).p95_ms, None);
        w.record(w.number(20), false, None);
        w.clear();
        assert_eq!(w.counts(w.number(20)), Counts::default());
    }

    #[test]
    fn a_slot_reused_by_a_newer_bucket_restarts_its_counts() {
        let w = Window::default();
        w.record(2, true, Some(500));
        w.record(2 + BUCKETS, false, Some(500));
        let c = w.counts(2 + BUCKETS);
        assert_eq!((c.requests, c.failures), (1, 0));
        // A writer still on the old bucket number writes nothing.
        w.record(2, true, Some(500));
        assert_eq!(w.counts(2 + BUCKETS).requests, 1);
    }
}
