//! The guard's packed words: each piece of shared state that must change as a whole lives
//! in one `AtomicU64`, so the request path reads and updates it with one atomic operation.

/// State word: mode in the low 2 bits, round generation in the next 20, and for Open the
/// time it opens until (milliseconds since the guard's origin) in the top 42 (139 years).
pub(super) const MODE_BITS: u32 = 2;
pub(super) const GEN_BITS: u32 = 20;
pub(super) const GEN_MASK: u64 = (1 << GEN_BITS) - 1;
pub(super) const TIME_MAX: u64 = (1 << (64 - MODE_BITS - GEN_BITS)) - 1;
pub(super) const MODE_CLOSED: u64 = 0;
pub(super) const MODE_OPEN: u64 = 1;
pub(super) const MODE_HALF_OPEN: u64 = 2;

/// Bucket word: truncated bucket number in the top 28 bits, requests and failures in 18
/// bits each. A bucket that fills up is halved, which keeps its failure share.
pub(super) const COUNT_BITS: u32 = 18;
pub(super) const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
pub(super) const STAMP_BITS: u32 = 64 - 2 * COUNT_BITS;
pub(super) const STAMP_MASK: u64 = (1 << STAMP_BITS) - 1;

/// Half-open tickets word: generation in the top 20 bits, requests seen in the rest.
pub(super) const TICKET_BITS: u32 = 64 - GEN_BITS;
pub(super) const TICKET_MASK: u64 = (1 << TICKET_BITS) - 1;

/// Probe outcomes word: generation in the top 20 bits, outcomes and failures in 22 each.
pub(super) const PROBE_BITS: u32 = (64 - GEN_BITS) / 2;
pub(super) const PROBE_MAX: u64 = (1 << PROBE_BITS) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Closed,
    /// Until this many milliseconds after the origin.
    Open(u64),
    HalfOpen,
}

/// The breaker's state. `gen` names a half-open round: the probe counters carry the
/// generation they count for, so a new round needs no separate reset step that could race
/// with the round's first outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct State {
    pub(super) mode: Mode,
    pub(super) gen: u64,
}

impl State {
    pub(super) fn pack(self) -> u64 {
        let (mode, time) = match self.mode {
            Mode::Closed => (MODE_CLOSED, 0),
            Mode::Open(until) => (MODE_OPEN, until.min(TIME_MAX)),
            Mode::HalfOpen => (MODE_HALF_OPEN, 0),
        };
        (time << (MODE_BITS + GEN_BITS)) | ((self.gen & GEN_MASK) << MODE_BITS) | mode
    }

    pub(super) fn unpack(w: u64) -> State {
        let gen = (w >> MODE_BITS) & GEN_MASK;
        let mode = match w & ((1 << MODE_BITS) - 1) {
            MODE_OPEN => Mode::Open(w >> (MODE_BITS + GEN_BITS)),
            MODE_HALF_OPEN => Mode::HalfOpen,
            _ => Mode::Closed,
        };
        State { mode, gen }
    }

    pub(super) fn tripped(self) -> bool {
        self.mode != Mode::Closed
    }
}

pub(super) fn next_gen(gen: u64) -> u64 {
    gen.wrapping_add(1) & GEN_MASK
}

/// How `ours` relates to a generation found in a counter word: the same, newer (the word
/// is from an earlier round: start afresh) or older (this thread's view is stale).
pub(super) fn gen_order(ours: u64, found: u64) -> std::cmp::Ordering {
    let d = ours.wrapping_sub(found) & GEN_MASK;
    if d == 0 {
        std::cmp::Ordering::Equal
    } else if d < (1 << (GEN_BITS - 1)) {
        std::cmp::Ordering::Greater
    } else {
        std::cmp::Ordering::Less
    }
}

pub(super) fn pack_bucket(stamp: u64, requests: u64, failures: u64) -> u64 {
    ((stamp & STAMP_MASK) << (2 * COUNT_BITS)) | (requests << COUNT_BITS) | failures
}

pub(super) fn unpack_bucket(w: u64) -> (u64, u64, u64) {
    (
        w >> (2 * COUNT_BITS),
        (w >> COUNT_BITS) & COUNT_MAX,
        w & COUNT_MAX,
    )
}

/// Keeps a hot word off the cache line of its neighbours: the state word is read by every
/// gray-routed request and must not bounce with the bucket being counted into.
#[repr(align(64))]
#[derive(Default)]
pub(super) struct Padded<T>(pub(super) T);
