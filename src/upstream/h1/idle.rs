//! Idle upstream connections, per endpoint address and per worker thread: a thread-local
//! map, so taking and returning a connection takes no lock.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::Method;
use tokio::net::TcpStream;

use super::codec::{parse_head, Head};
use super::{H1Error, READ_CHUNK};

/// Idle connections kept per endpoint and worker; more are closed. At least the requests
/// a worker has in flight at its peaks (an HTTP/2 client alone may have hundreds of
/// streams): fewer means closing connections after one burst and connecting again for
/// the next, which cost HTTP/2 over TLS up to a fifth of its CPU. The sweep closes the
/// ones no longer needed after a minute, so a burst's connections do not stay forever.
pub(super) const MAX_IDLE: usize = 1024;
/// How often a worker sweeps its idle connections: closes those their upstream closed
/// (no task watches an idle connection, so they would otherwise wait in CLOSE_WAIT until
/// taken) and those idle for [`IDLE_SWEEPS`] sweeps.
pub(super) const SWEEP_TICK: Duration = Duration::from_secs(5);
/// An idle upstream connection is closed after this many sweeps (55–60 s), below the
/// usual upstream keep-alive timeouts (nginx 75 s, Node 5 s is caught by the sweep's
/// readiness check or when taken).
pub(super) const IDLE_SWEEPS: u32 = 12;
/// Buffers larger than these (after a huge head or body piece) are not kept with an idle
/// connection.
pub(super) const KEEP_RBUF: usize = 64 * 1024;
pub(super) const KEEP_WBUF: usize = 32 * 1024;

/// Idle connections by endpoint address. The map is per worker and its keys are
/// addresses from the configuration and DNS, not from clients, so the hash needs no
/// flood resistance: SipHash (std's default) cost more than the rest of a pool lookup.
pub(super) type IdleMap = HashMap<SocketAddr, Vec<Conn>, BuildHasherDefault<AddrHasher>>;

/// A multiply-rotate hash (the "Fx" hash of rustc) over the few words a `SocketAddr`
/// writes.
#[derive(Default)]
pub(super) struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

thread_local! {
    pub(super) static IDLE: RefCell<IdleMap> = RefCell::new(IdleMap::default());
    /// Sweeps so far on this worker: an idle connection's age without a clock read.
    pub(super) static SWEEPS: Cell<u32> = const { Cell::new(0) };
}

/// One upstream connection with its buffers, which keep their capacity between requests.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) io: TcpStream,
    /// Bytes read and not consumed yet.
    pub(super) rbuf: BytesMut,
    /// The request head being written.
    pub(super) wbuf: Vec<u8>,
    /// The worker's sweep count when the connection went idle.
    pub(super) idle_since: u32,
}

impl Conn {
    pub(super) fn new(io: TcpStream) -> Self {
        Self {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: Vec::with_capacity(512),
            idle_since: 0,
        }
    }

    /// Whether an idle connection can take a request: the upstream neither closed it
    /// nor sent anything while it was idle. Costs a syscall only when the reactor saw the
    /// socket become readable.
    pub(super) fn idle_usable(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more into `rbuf`; `Ok(0)` is end of stream.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
    }

    /// Reads until a complete response head is buffered, and parses it.
    pub(super) fn poll_head(
        &mut self,
        method: &Method,
        raw: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Head, H1Error>> {
        loop {
            if !self.rbuf.is_empty() {
                if let Some(head) = parse_head(&mut self.rbuf, method, raw)? {
                    return Poll::Ready(Ok(head));
                }
            }
            match std::task::ready!(self.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Err(H1Error::Closed)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(H1Error::Io(e))),
            }
        }
    }
}

pub(super) fn take(addr: SocketAddr) -> Option<Conn> {
    IDLE.with(|m| m.borrow_mut().get_mut(&addr).and_then(Vec::pop))
}

pub(super) fn put(addr: SocketAddr, mut c: Conn) {
    if c.rbuf.capacity() > KEEP_RBUF {
        c.rbuf = BytesMut::with_capacity(READ_CHUNK);
    }
    if c.wbuf.capacity() > KEEP_WBUF {
        c.wbuf = Vec::with_capacity(512);
    }
    c.idle_since = SWEEPS.with(Cell::get);
    IDLE.with(|m| {
        let mut m = m.borrow_mut();
        let idle = m.entry(addr).or_default();
        if idle.len() < MAX_IDLE {
            idle.push(c);
        }
    });
}

/// Sweeps this worker's idle connections every [`SWEEP_TICK`] for as long as the worker
/// runs; spawned once per worker runtime.
pub(crate) async fn sweep_idle() {
    let mut tick = crate::timer::interval(SWEEP_TICK);
    loop {
        tick.tick().await;
        let now = SWEEPS.with(|n| {
            let v = n.get().wrapping_add(1);
            n.set(v);
            v
        });
        sweep(now);
    }
}

/// Closes the idle connections their upstream closed, and those idle since before
/// `now - IDLE_SWEEPS` sweeps.
pub(super) fn sweep(now: u32) {
    IDLE.with(|m| {
        m.borrow_mut().retain(|_, idle| {
            idle.retain(|c| now.wrapping_sub(c.idle_since) < IDLE_SWEEPS && c.idle_usable());
            !idle.is_empty()
        });
    });
}
