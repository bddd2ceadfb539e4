//! The relay on monoio's io_uring driver: the same steps as `epoll.rs`, each read and
//! write a submission instead of a readiness wait plus a system call.

use std::io;
use std::net::SocketAddr;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use crate::head::{self, Parse, BAD_GATEWAY, BAD_REQUEST, MAX_HEAD};

pub fn run(listen: SocketAddr, upstreams: [SocketAddr; 2]) -> io::Result<()> {
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(4096)
        .build()?;
    rt.block_on(async move {
        let l = TcpListener::bind(listen)?;
        loop {
            let (s, peer) = l.accept().await?;
            s.set_nodelay(true)?;
            monoio::spawn(async move {
                if let Err(e) = serve(s, peer, upstreams).await {
                    if e.kind() != io::ErrorKind::ConnectionReset {
                        eprintln!("graylane-floor: {peer}: {e}");
                    }
                }
            });
        }
    })
}

/// Appends what one read returns to `buf`; the buffer travels into the kernel and back.
async fn read_more(s: &mut TcpStream, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(4096);
    }
    let len = buf.len();
    let (r, slice) = s.read(buf.slice_mut(len..)).await;
    (r, slice.into_inner())
}

async fn write_all(s: &mut TcpStream, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    let (r, buf) = s.write_all(buf).await;
    (r.map(drop), buf)
}

async fn write_part(s: &mut TcpStream, buf: Vec<u8>, n: usize) -> (io::Result<()>, Vec<u8>) {
    let (r, slice) = s.write_all(buf.slice(..n)).await;
    (r.map(drop), slice.into_inner())
}

async fn serve(mut c: TcpStream, peer: SocketAddr, upstreams: [SocketAddr; 2]) -> io::Result<()> {
    let xff = peer.ip().to_string().into_bytes();
    let mut cin = Vec::with_capacity(16 * 1024);
    let mut uin = Vec::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(4096);
    let mut pool: [Option<TcpStream>; 2] = [None, None];
    loop {
        let req = loop {
            match head::request(&cin, &xff, &mut out) {
                Parse::Done(r) => break r,
                Parse::Partial if cin.len() < MAX_HEAD => {
                    let (r, b) = read_more(&mut c, cin).await;
                    cin = b;
                    if r? == 0 {
                        return Ok(());
                    }
                }
                _ => return write_all(&mut c, BAD_REQUEST.to_vec()).await.0,
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
        let now = req.body_len.min(cin.len());
        out.extend_from_slice(&cin[..now]);
        cin.drain(..now);
        let (r, b) = write_all(u, out).await;
        out = b;
        r?;
        let mut left = req.body_len - now;
        while left > 0 {
            let (r, b) = read_more(&mut c, cin).await;
            cin = b;
            if r? == 0 {
                return Ok(());
            }
            let k = left.min(cin.len());
            let (r, b) = write_part(u, cin, k).await;
            cin = b;
            r?;
            cin.drain(..k);
            left -= k;
        }
        uin.clear();
        let resp = loop {
            match head::response(&uin, req.close, &mut out) {
                Parse::Done(r) => break r,
                Parse::Partial if uin.len() < MAX_HEAD => {
                    let (r, b) = read_more(u, uin).await;
                    uin = b;
                    if r? == 0 {
                        return write_all(&mut c, BAD_GATEWAY.to_vec()).await.0;
                    }
                }
                _ => return write_all(&mut c, BAD_GATEWAY.to_vec()).await.0,
            }
        };
        let now = resp.body_len.min(uin.len() - resp.head_len);
        out.extend_from_slice(&uin[resp.head_len..resp.head_len + now]);
        let (r, b) = write_all(&mut c, out).await;
        out = b;
        r?;
        let mut left = resp.body_len - now;
        while left > 0 {
            uin.clear();
            let (r, b) = read_more(u, uin).await;
            uin = b;
            if r? == 0 {
                return Ok(());
            }
            let k = left.min(uin.len());
            let (r, b) = write_part(&mut c, uin, k).await;
            uin = b;
            r?;
            left -= k;
        }
        if resp.close {
            pool[i] = None;
        }
        if req.close {
            return Ok(());
        }
    }
}
