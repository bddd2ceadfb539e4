//! The load-balancing choice made for every request: round robin, power of two choices,
//! or a consistent-hash ring on the uid. Lock-free and allocation-free.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::endpoint::Endpoint;
use super::pool::Snapshot;
use crate::worker;

/// Virtual nodes per endpoint on the hash ring: enough for ~±8 % load spread, small enough
/// that the ring of a large headless service stays in cache.
pub(super) const VNODES: u64 = 160;

/// Points depend only on each endpoint's label, never on list order, so a DNS answer in
/// another order moves no key and a new endpoint takes ~1/n of the keys from the others.
pub(super) fn build_ring(endpoints: &[Arc<Endpoint>]) -> Vec<(u64, u32)> {
    let mut ring = Vec::with_capacity(endpoints.len() * VNODES as usize);
    for (i, ep) in endpoints.iter().enumerate() {
        let Ok(i) = u32::try_from(i) else { break };
        for v in 0..VNODES {
            ring.push((xxh3_64_with_seed(ep.label.as_bytes(), v), i));
        }
    }
    ring.sort_unstable();
    ring
}

// === choice ===

/// Round robin from `start`, skipping unavailable endpoints (the next one takes their turn,
/// as in nginx).
pub(super) fn pick_rr(
    eps: &[Arc<Endpoint>],
    start: usize,
    ok: &mut impl FnMut(&Endpoint) -> bool,
) -> Option<usize> {
    let n = eps.len();
    (0..n)
        .map(|k| start.wrapping_add(k) % n)
        .find(|&i| eps.get(i).is_some_and(|e| ok(e)))
}

/// Power of two choices: two distinct random endpoints, the one with fewer requests in
/// flight wins. Avoids the herd on "the" least-loaded endpoint that a full scan causes
/// when many requests pick at once.
pub(super) fn pick_p2c(
    eps: &[Arc<Endpoint>],
    cursor: &AtomicUsize,
    ok: &mut impl FnMut(&Endpoint) -> bool,
) -> Option<usize> {
    let n = eps.len();
    if n < 2 {
        return pick_rr(eps, 0, ok);
    }
    let r = worker::random();
    let a = (r as usize) % n;
    let b = (a + 1 + ((r >> 32) as usize) % (n - 1)) % n;
    let a_ok = eps.get(a).is_some_and(|e| ok(e));
    let b_ok = eps.get(b).is_some_and(|e| ok(e));
    match (a_ok, b_ok) {
        (true, true) => {
            let load = |i: usize| eps.get(i).map_or(usize::MAX, |e| e.in_flight());
            Some(if load(b) < load(a) { b } else { a })
        }
        (true, false) => Some(a),
        (false, true) => Some(b),
        (false, false) => pick_rr(eps, cursor.fetch_add(1, Ordering::Relaxed), ok),
    }
}

/// Consistent hashing: the first ring point at or after the key's point; an unusable
/// endpoint passes its keys to the next usable one on the ring, so only its keys move.
pub(super) fn pick_hash(
    snap: &Snapshot,
    key: u64,
    ok: &mut impl FnMut(&Endpoint) -> bool,
) -> Option<usize> {
    let ring = &snap.ring;
    if ring.is_empty() {
        return None;
    }
    let point = xxh3_64(&key.to_le_bytes());
    let start = ring.partition_point(|&(p, _)| p < point);
    let mut last = u32::MAX;
    for k in 0..ring.len() {
        let Some(&(_, i)) = ring.get((start + k) % ring.len()) else {
            break;
        };
        if i == last {
            continue;
        }
        last = i;
        let i = i as usize;
        if snap.endpoints.get(i).is_some_and(|e| ok(e)) {
            return Some(i);
        }
    }
    None
}
