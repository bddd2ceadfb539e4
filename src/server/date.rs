//! The `Date` value, formatted once a second per thread (as hyper caches it).

use std::cell::RefCell;
use std::time::{Duration, UNIX_EPOCH};

/// `Sun, 06 Nov 1994 08:49:37 GMT`
const LEN: usize = 29;

thread_local! {
    static CACHED: RefCell<(u64, [u8; LEN])> = const { RefCell::new((u64::MAX, [0; LEN])) };
}

/// Appends the current `Date` value.
pub(super) fn extend(out: &mut Vec<u8>) {
    out.extend_from_slice(&now());
}

/// The current `Date` value.
pub(super) fn now() -> [u8; LEN] {
    // Whole seconds: the kernel's last tick is enough (see `crate::clock`).
    let secs = crate::clock::coarse_unix_secs();
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let s = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
            if s.len() == LEN {
                c.1.copy_from_slice(s.as_bytes());
                c.0 = secs;
            }
        }
        c.1
    })
}
