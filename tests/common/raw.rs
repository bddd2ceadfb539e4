//! Raw-socket helpers: requests as bytes, answers read back byte for byte, for the cases
//! an HTTP client library would refuse to send or would tidy up.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Generous bound for anything that should take about a second.
pub const PATIENCE: Duration = Duration::from_secs(8);

/// How reading a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The peer closed (FIN).
    Eof,
    /// The peer reset the connection.
    Reset,
    /// Still open when the deadline passed.
    Open,
}

/// Reads until the peer closes or `within` passes; returns the bytes and how it ended.
pub async fn read_to_close<R: AsyncReadExt + Unpin>(s: &mut R, within: Duration) -> (Vec<u8>, End) {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (out, End::Open),
            Ok(Ok(0)) => return (out, End::Eof),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return (out, End::Reset),
        }
    }
}

/// One HTTP/1.1 response read off a connection that stays open.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// The head as text, lowercased (status line and fields).
    pub head: String,
    pub body: Vec<u8>,
}

/// Reads one HTTP/1.1 response (head + `content-length` body) and leaves the connection
/// open.
pub async fn read_one_response(s: &mut TcpStream) -> RawResponse {
    let deadline = Instant::now() + PATIENCE;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = find(&out, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().expect("content-length"))
                .expect("response has content-length");
            if out.len() >= end + 4 + len {
                let status = status_of(&out).expect("status line");
                let body = out[end + 4..end + 4 + len].to_vec();
                return RawResponse { status, head, body };
            }
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("response within the deadline")
            .expect("read");
        assert!(n > 0, "closed mid-response: {:?}", show(&out));
        out.extend_from_slice(&buf[..n]);
    }
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The status code of an HTTP/1.x response, if the bytes start with one.
pub fn status_of(resp: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(resp.get(..12)?).ok()?;
    let rest = s.strip_prefix("HTTP/1.")?;
    rest.get(2..5)?.parse().ok()
}

/// Sends `req` on a new connection (write errors ignored: the proxy may close early)
/// and reads what comes back until the proxy closes.
pub async fn exchange(addr: SocketAddr, req: Vec<u8>) -> (Vec<u8>, End) {
    let s = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&req).await;
        // Keep the write half open: a half-close could be taken as end of request.
        tokio::time::sleep(PATIENCE).await;
        drop(wr);
    });
    let answer = read_to_close(&mut rd, PATIENCE).await;
    writer.abort();
    answer
}

/// The first bytes of `b` as text, for assertion messages.
pub fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned()
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn garbage(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            (seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}
