//! What each worker thread keeps for itself. A worker is one single-threaded runtime on
//! its own OS thread (see `server`); what lives here is read on the request path without
//! a lock or a shared cache line. (The idle HTTP/1.1 upstream connections are per worker
//! too; they live with their client in `upstream::h1`.)

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    /// The worker this thread serves (0 on the main runtime); picks the worker's own
    /// HTTP/2 client so pooled connections stay on the thread that made them.
    static WORKER: Cell<usize> = const { Cell::new(0) };
    /// xorshift64* state: load-balancing picks need spread, not quality, and must not
    /// contend.
    static RANDOM: Cell<u64> = Cell::new(RandomState::new().build_hasher().finish() | 1);
}

/// Marks the current thread as worker `id`.
pub(crate) fn set_id(id: usize) {
    WORKER.with(|w| w.set(id));
}

/// The worker the current thread serves.
pub(crate) fn id() -> usize {
    WORKER.with(Cell::get)
}

/// The next number of this thread's xorshift64* sequence.
pub(crate) fn random() -> u64 {
    RANDOM.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}
