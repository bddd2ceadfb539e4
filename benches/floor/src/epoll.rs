//! The relay on tokio (epoll): one task per client connection, one upstream connection
//! per pool and client connection, kept for the client connection's life.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::batch;
use crate::head::{self, Parse, BAD_GATEWAY, BAD_REQUEST, MAX_HEAD};

pub fn run(
    listen: SocketAddr,
    upstreams: [SocketAddr; 2],
    eager: bool,
    batched: bool,
) -> io::Result<()> {
    let mut b = tokio::runtime::Builder::new_current_thread();
    b.enable_io();
    if batched {
        batch::init()?;
        b.on_thread_park(batch::flush);
    }
    let rt = b.build()?;
    rt.block_on(async move {
        let l = TcpListener::bind(listen).await?;
        loop {
            let (s, peer) = l.accept().await?;
            s.set_nodelay(true)?;
            tokio::spawn(async move {
                if let Err(e) = serve(s, peer, upstreams, eager, batched).await {
                    if e.kind() != io::ErrorKind::ConnectionReset {
                        eprintln!("graylane-floor: {peer}: {e}");
                    }
                }
            });
        }
    })
}

static EAGER_TRIES: AtomicU64 = AtomicU64::new(0);
static EAGER_HITS: AtomicU64 = AtomicU64::new(0);

/// One `recv(MSG_DONTWAIT)` straight after a write, before waiting for readiness: the
/// lever "read after write without a readiness round trip". Counts how often the answer
/// was already there (a hit saves an epoll wake-up; a miss costs a system call).
fn eager_read(s: &TcpStream, buf: &mut Vec<u8>) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(4096);
    }
    let spare = buf.spare_capacity_mut();
    // SAFETY: recv writes at most `spare.len()` bytes into memory the Vec owns; the
    // length is raised by what the kernel reports written.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    let tries = EAGER_TRIES.fetch_add(1, Ordering::Relaxed) + 1;
    if n > 0 {
        // SAFETY: the kernel initialised these `n` bytes.
        unsafe { buf.set_len(buf.len() + n as usize) };
        EAGER_HITS.fetch_add(1, Ordering::Relaxed);
    }
    if tries.is_multiple_of(1 << 16) {
        let hits = EAGER_HITS.load(Ordering::Relaxed);
        eprintln!("graylane-floor: eager reads: {hits} of {tries} found data");
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(4096);
    }
    s.read_buf(buf).await
}

/// A write: at once, or into the thread's batch (`--io batch`).
async fn write(s: &mut TcpStream, bytes: &[u8], batched: bool) -> io::Result<()> {
    if batched {
        batch::send(s.as_raw_fd(), bytes);
        Ok(())
    } else {
        s.write_all(bytes).await
    }
}

/// Sends what is batched before the connection's sockets close: dropped before them.
struct FlushFirst(bool);

impl Drop for FlushFirst {
    fn drop(&mut self) {
        if self.0 {
            batch::flush();
        }
    }
}

async fn serve(
    mut c: TcpStream,
    peer: SocketAddr,
    upstreams: [SocketAddr; 2],
    eager: bool,
    batched: bool,
) -> io::Result<()> {
    let xff = peer.ip().to_string().into_bytes();
    let mut cin = Vec::with_capacity(16 * 1024);
    let mut uin = Vec::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(4096);
    let mut pool: [Option<TcpStream>; 2] = [None, None];
    // Declared last, dropped first: before `pool` and `c` close their sockets.
    let _flush = FlushFirst(batched);
    loop {
        let req = loop {
            match head::request(&cin, &xff, &mut out) {
                Parse::Done(r) => break r,
                Parse::Bad => return c.write_all(BAD_REQUEST).await,
                Parse::Partial if cin.len() >= MAX_HEAD => return c.write_all(BAD_REQUEST).await,
                Parse::Partial => {
                    if read_more(&mut c, &mut cin).await? == 0 {
                        return Ok(());
                    }
                }
            }
        };
        cin.drain(..req.head_len);
        let i = usize::from(req.gray);
        let u = match &mut pool[i] {
            Some(u) => u,
            slot => {
                let s = TcpStream::connect(upstreams[i]).await?;
                s.set_nodelay(true)?;
                slot.insert(s)
            }
        };
        // The body bytes already read go in the same write as the head.
        let now = req.body_len.min(cin.len());
        out.extend_from_slice(&cin[..now]);
        cin.drain(..now);
        write(u, &out, batched).await?;
        let mut left = req.body_len - now;
        while left > 0 {
            if read_more(&mut c, &mut cin).await? == 0 {
                return Ok(());
            }
            let k = left.min(cin.len());
            write(u, &cin[..k], batched).await?;
            cin.drain(..k);
            left -= k;
        }
        uin.clear();
        if eager {
            eager_read(u, &mut uin);
        }
        let resp = loop {
            match head::response(&uin, req.close, &mut out) {
                Parse::Done(r) => break r,
                Parse::Partial if uin.len() < MAX_HEAD => {
                    if read_more(u, &mut uin).await? == 0 {
                        return c.write_all(BAD_GATEWAY).await;
                    }
                }
                _ => return c.write_all(BAD_GATEWAY).await,
            }
        };
        let now = resp.body_len.min(uin.len() - resp.head_len);
        out.extend_from_slice(&uin[resp.head_len..resp.head_len + now]);
        write(&mut c, &out, batched).await?;
        let mut left = resp.body_len - now;
        while left > 0 {
            uin.clear();
            if read_more(u, &mut uin).await? == 0 {
                return Ok(());
            }
            let k = left.min(uin.len());
            write(&mut c, &uin[..k], batched).await?;
            left -= k;
        }
        if resp.close {
            // Its request went out before its answer came back: nothing of it is batched.
            pool[i] = None;
        }
        if req.close {
            return Ok(());
        }
        if eager && cin.is_empty() {
            eager_read(&c, &mut cin);
        }
    }
}
