//! Writes gathered per wake-up: the lever "larger batches per wake-up" applied to the
//! writes, which epoll cannot batch (every `send` is a system call of its own, and every
//! system call a return to user space the kernel does with interrupts off). A write copies
//! its bytes into the thread's batch and is done; before the runtime sleeps (tokio's
//! `on_thread_park`) the batch goes to the kernel as io_uring send submissions, all
//! connections' writes in one `io_uring_enter`. Reads stay on epoll: a read submitted to
//! io_uring before its data is there arms a poll inside the kernel, which is where the
//! io_uring relay (`uring.rs`) lost its kernel time.
//!
//! On loopback a send with room in the socket's buffer completes within the submission,
//! so the completions are there to reap right after it. One that does not (a full send
//! buffer) completes later; its buffer is kept until then and it is counted, since a later
//! write to the same socket could overtake it (the relay writes once per request and
//! direction, after the previous one's answer, so none does here).

use std::cell::RefCell;
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};

const ENTRIES: u32 = 4096;

struct Batch {
    ring: IoUring,
    /// Writes not yet submitted: the socket and the slot holding their bytes.
    pending: Vec<(RawFd, usize)>,
    /// Bytes of writes pending or in the kernel, by slot (the submission's `user_data`).
    slots: Vec<Option<Vec<u8>>>,
    free_slots: Vec<usize>,
    spare: Vec<Vec<u8>>,
    submits: u64,
    sends: u64,
    late: u64,
}

thread_local! {
    static BATCH: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

/// Sets up this thread's ring; call once on the runtime's thread.
pub fn init() -> std::io::Result<()> {
    let ring = IoUring::new(ENTRIES)?;
    BATCH.with(|b| {
        *b.borrow_mut() = Some(Batch {
            ring,
            pending: Vec::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            spare: Vec::new(),
            submits: 0,
            sends: 0,
            late: 0,
        })
    });
    Ok(())
}

/// Queues `bytes` to be sent on `fd` before the thread next sleeps.
pub fn send(fd: RawFd, bytes: &[u8]) {
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        let Some(b) = b.as_mut() else {
            eprintln!("graylane-floor: batch::send before batch::init");
            return;
        };
        let mut buf = b.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(bytes);
        let slot = match b.free_slots.pop() {
            Some(i) => {
                b.slots[i] = Some(buf);
                i
            }
            None => {
                b.slots.push(Some(buf));
                b.slots.len() - 1
            }
        };
        b.pending.push((fd, slot));
    });
}

/// Submits what is queued and reaps what has completed: one `io_uring_enter` per call
/// with anything queued, none otherwise.
pub fn flush() {
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        let Some(b) = b.as_mut() else { return };
        reap(b);
        while !b.pending.is_empty() {
            let n = b.pending.len().min(ENTRIES as usize);
            let batch: Vec<(RawFd, usize)> = b.pending.drain(..n).collect();
            {
                let mut sq = b.ring.submission();
                for &(fd, slot) in &batch {
                    let Some(buf) = b.slots[slot].as_ref() else {
                        continue;
                    };
                    let e = opcode::Send::new(types::Fd(fd), buf.as_ptr(), buf.len() as u32)
                        .flags(libc::MSG_WAITALL | libc::MSG_NOSIGNAL)
                        .build()
                        .user_data(slot as u64);
                    // SAFETY: the buffer stays in `slots` until its completion is reaped.
                    if unsafe { sq.push(&e) }.is_err() {
                        eprintln!("graylane-floor: submission queue full");
                    }
                }
            }
            if let Err(e) = b.ring.submit() {
                eprintln!("graylane-floor: io_uring_enter: {e}");
            }
            b.submits += 1;
            b.sends += batch.len() as u64;
            reap(b);
            // Still held after the reap: sends their submission did not complete (a send
            // that stays out over several flushes is counted at each).
            b.late += (b.slots.len() - b.free_slots.len() - b.pending.len()) as u64;
            if b.submits.is_multiple_of(1 << 16) {
                eprintln!(
                    "graylane-floor: {} sends in {} submissions, {} not done within theirs",
                    b.sends, b.submits, b.late
                );
            }
        }
    });
}

fn reap(b: &mut Batch) {
    let done: Vec<(u64, i32)> = b
        .ring
        .completion()
        .map(|c| (c.user_data(), c.result()))
        .collect();
    for (slot, res) in done {
        let slot = slot as usize;
        if let Some(buf) = b.slots.get_mut(slot).and_then(Option::take) {
            if res < 0 || res as usize != buf.len() {
                eprintln!("graylane-floor: batched send: {res} of {} bytes", buf.len());
            }
            b.spare.push(buf);
            b.free_slots.push(slot);
        }
    }
}
