//! Helpers for the hardening suite (`tests/hardening.rs`): the shared hostile byte
//! sequences of `tools/hostile/cases.json`, a raw recording upstream that parses requests
//! by their own framing and can answer with scripted raw bytes, a hand-written HTTP/2
//! client (preface, SETTINGS, HPACK literals, frames read back), and small metric and
//! socket checks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::raw::{find, End};
use super::{admin_get, Proxy};

// === the shared cases file ===

/// One case of `tools/hostile/cases.json`.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub rfc: String,
    pub request: Vec<u8>,
    /// What the upstream answers to `/resp/NAME`, raw.
    pub response: Option<Vec<u8>>,
    pub expect: serde_json::Value,
}

/// The bytes a cases-file value stands for: a Latin-1 string, a `{repeat, times}` object,
/// or a list of those.
pub fn case_bytes(v: &serde_json::Value) -> Vec<u8> {
    match v {
        serde_json::Value::String(s) => s
            .chars()
            .map(|c| u8::try_from(u32::from(c)).expect("cases.json: characters are Latin-1"))
            .collect(),
        serde_json::Value::Array(parts) => parts.iter().flat_map(case_bytes).collect(),
        serde_json::Value::Object(o) => {
            let unit = case_bytes(&o["repeat"]);
            let times = o["times"].as_u64().expect("times") as usize;
            unit.repeat(times)
        }
        other => panic!("cases.json: unexpected value {other}"),
    }
}

/// Every case of `tools/hostile/cases.json`, by name.
pub fn cases() -> HashMap<String, Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/hostile/cases.json");
    let text = std::fs::read_to_string(path).expect("read tools/hostile/cases.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("cases.json is JSON");
    v["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let name = c["name"].as_str().expect("name").to_owned();
            let case = Case {
                name: name.clone(),
                rfc: c["rfc"].as_str().unwrap_or_default().to_owned(),
                request: case_bytes(&c["request"]),
                response: c.get("response").map(case_bytes),
                expect: c["expect"].clone(),
            };
            (name, case)
        })
        .collect()
}

/// One case by name.
pub fn case(name: &str) -> Case {
    cases()
        .remove(name)
        .unwrap_or_else(|| panic!("no case {name} in cases.json"))
}

/// The scripted upstream answers of every case that has one, by request target.
pub fn case_responses() -> HashMap<String, Vec<u8>> {
    cases()
        .into_values()
        .filter_map(|c| c.response.map(|r| (format!("/resp/{}", c.name), r)))
        .collect()
}

// === reading answers off a raw connection ===

/// The HTTP/1.1 answers read off one connection, in order.
#[derive(Debug, Default)]
pub struct Answers {
    /// Each answer's status, head (lowercased) and body.
    pub answers: Vec<(u16, String, Vec<u8>)>,
    /// Everything read, raw.
    pub raw: Vec<u8>,
    /// How reading ended.
    pub end: Option<End>,
}

impl Answers {
    pub fn statuses(&self) -> Vec<u16> {
        self.answers.iter().map(|a| a.0).collect()
    }
    /// The first status, or 0 when the connection gave none.
    pub fn first(&self) -> u16 {
        self.answers.first().map_or(0, |a| a.0)
    }
}

/// Splits what a connection returned into HTTP/1.1 answers (Content-Length, chunked or
/// until close).
pub fn split_answers(raw: &[u8]) -> Vec<(u16, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < raw.len() {
        let Some(end) = find(&raw[at..], b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&raw[at..at + end]).to_ascii_lowercase();
        let status = super::raw::status_of(&raw[at..]).unwrap_or(0);
        let body_at = at + end + 4;
        let field = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        if (100..200).contains(&status) {
            out.push((status, head, raw[body_at..].to_vec()));
            if status == 101 {
                break;
            }
            at = body_at;
            continue;
        }
        if field("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
            let mut p = body_at;
            let mut body = Vec::new();
            loop {
                let Some(eol) = find(&raw[p..], b"\r\n") else {
                    p = raw.len();
                    break;
                };
                let line = String::from_utf8_lossy(&raw[p..p + eol]).into_owned();
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .unwrap_or(0);
                p += eol + 2;
                if size == 0 {
                    // Trailers, then the empty line.
                    match find(&raw[p..], b"\r\n") {
                        Some(0) => p += 2,
                        _ => {
                            p = find(&raw[p..], b"\r\n\r\n").map_or(raw.len(), |e| p + e + 4);
                        }
                    }
                    break;
                }
                let stop = (p + size).min(raw.len());
                body.extend_from_slice(&raw[p..stop]);
                p = (stop + 2).min(raw.len());
            }
            out.push((status, head, body));
            at = p;
        } else if let Some(len) = field("content-length:").and_then(|v| v.parse::<usize>().ok()) {
            let stop = (body_at + len).min(raw.len());
            out.push((status, head, raw[body_at..stop].to_vec()));
            at = stop;
        } else {
            out.push((status, head, raw[body_at..].to_vec()));
            break;
        }
    }
    out
}

/// Writes `req` on a new connection (keeping the write side open) and reads until the
/// proxy closes or stays quiet for `quiet` (after at least one byte) or `within` passes.
pub async fn exchange_quiet(
    addr: SocketAddr,
    req: &[u8],
    quiet: Duration,
    within: Duration,
) -> Answers {
    let s = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    let req = req.to_vec();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&req).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(wr);
    });
    let deadline = Instant::now() + within;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let end = loop {
        let until = if raw.is_empty() {
            deadline
        } else {
            (Instant::now() + quiet).min(deadline)
        };
        match tokio::time::timeout_at(until, rd.read(&mut buf)).await {
            Err(_) => break End::Open,
            Ok(Ok(0)) => break End::Eof,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break End::Reset,
        }
    };
    writer.abort();
    Answers {
        answers: split_answers(&raw),
        raw,
        end: Some(end),
    }
}

// === a raw recording upstream ===

/// What the recording upstream saw of one request, parsed by its own framing.
#[derive(Debug, Clone)]
pub struct RawSeen {
    pub method: String,
    pub target: String,
    /// Field names lowercased, values raw.
    pub headers: Fields,
    pub body: Vec<u8>,
    /// The data chunks of a chunked body (0 otherwise).
    pub chunks: usize,
}

impl RawSeen {
    /// Every value of a field, as text.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }
    /// The first value of a field.
    pub fn header(&self, name: &str) -> Option<String> {
        self.all(name).into_iter().next()
    }
    /// The path of the target (absolute form reduced to its path).
    pub fn path(&self) -> String {
        let t = self.target.as_str();
        let t = t
            .strip_prefix("http://")
            .map_or(t, |rest| rest.find('/').map_or("/", |i| &rest[i..]));
        t.split('?').next().unwrap_or(t).to_owned()
    }
}

/// A raw upstream that records every request it parses. It answers `/resp/NAME` with the
/// scripted bytes given, a request carrying `Upgrade` with `101` and then `TUNNEL-OPEN`
/// (what a naive backend would do: it lets a proxy that forwards `Upgrade` open a
/// tunnel), and anything else with `200`, body = the request target, plus `Vary: V` when
/// the target carries `vary=V`.
pub struct Recorder {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<RawSeen>>>,
    pub conns: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    pub fn seen(&self) -> Vec<RawSeen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
    pub fn targets(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.target).collect()
    }
    pub fn last(&self) -> RawSeen {
        self.seen().pop().expect("the upstream saw no request")
    }
}

pub async fn spawn_recorder(responses: HashMap<String, Vec<u8>>) -> Recorder {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<RawSeen>>> = Arc::default();
    let conns: Arc<AtomicUsize> = Arc::default();
    let (seen2, conns2) = (seen.clone(), conns.clone());
    let responses = Arc::new(responses);
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            conns2.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(record_conn(s, seen2.clone(), responses.clone()));
        }
    });
    Recorder {
        addr,
        seen,
        conns,
        task,
    }
}

/// Reads more bytes into `buf`; false when the connection ended.
async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Reads one request head off `s` (bytes past it stay in `buf`); `None` at the end.
pub async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = buf[..end + 4].to_vec();
            buf.drain(..end + 4);
            return Some(head);
        }
        if buf.len() > 1 << 20 || !fill(s, buf).await {
            return None;
        }
    }
}

/// Field lines as parsed: names lowercased, values raw.
pub type Fields = Vec<(String, Vec<u8>)>;

/// Parses a request head leniently: request line and `name: value` lines.
pub fn parse_request_head(head: &[u8]) -> Option<(String, String, Fields)> {
    let text = &head[..head.len().saturating_sub(4)];
    let mut lines = text
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let line = String::from_utf8_lossy(lines.next()?).into_owned();
    let mut parts = line.split(' ');
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    for l in lines {
        let colon = l.iter().position(|&b| b == b':')?;
        let name = String::from_utf8_lossy(&l[..colon])
            .trim()
            .to_ascii_lowercase();
        let mut v = &l[colon + 1..];
        while let [b' ' | b'\t', rest @ ..] = v {
            v = rest;
        }
        while let [rest @ .., b' ' | b'\t'] = v {
            v = rest;
        }
        headers.push((name, v.to_vec()));
    }
    Some((method, target, headers))
}

/// Reads a body framed as the head says (chunked or Content-Length); `None` on a framing
/// error or an early end.
async fn read_body(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    headers: &[(String, Vec<u8>)],
) -> Option<(Vec<u8>, usize)> {
    let field = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase())
    };
    if field("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut body = Vec::new();
        let mut chunks = 0;
        loop {
            let eol = loop {
                if let Some(e) = find(buf, b"\r\n") {
                    break e;
                }
                if !fill(s, buf).await {
                    return None;
                }
            };
            let line = String::from_utf8_lossy(&buf[..eol]).into_owned();
            buf.drain(..eol + 2);
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                // Trailer fields up to the empty line.
                loop {
                    let e = loop {
                        if let Some(e) = find(buf, b"\r\n") {
                            break e;
                        }
                        if !fill(s, buf).await {
                            return None;
                        }
                    };
                    buf.drain(..e + 2);
                    if e == 0 {
                        return Some((body, chunks));
                    }
                }
            }
            while buf.len() < size + 2 {
                if !fill(s, buf).await {
                    return None;
                }
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
            chunks += 1;
        }
    }
    let len: usize = match field("content-length") {
        Some(v) => v.trim().parse().ok()?,
        None => 0,
    };
    while buf.len() < len {
        if !fill(s, buf).await {
            return None;
        }
    }
    Some((buf.drain(..len).collect(), 0))
}

async fn record_conn(
    mut s: TcpStream,
    seen: Arc<Mutex<Vec<RawSeen>>>,
    responses: Arc<HashMap<String, Vec<u8>>>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(head) = read_head(&mut s, &mut buf).await else {
            return;
        };
        let Some((method, target, headers)) = parse_request_head(&head) else {
            return;
        };
        let Some((body, chunks)) = read_body(&mut s, &mut buf, &headers).await else {
            return;
        };
        let req = RawSeen {
            method,
            target,
            headers,
            body,
            chunks,
        };
        if let Ok(mut v) = seen.lock() {
            v.push(req.clone());
        }
        let path = req.path();
        if let Some(r) = responses.get(&path) {
            if s.write_all(r).await.is_err() {
                return;
            }
            continue;
        }
        if let Some(proto) = req.header("upgrade") {
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {proto}\r\n\r\nTUNNEL-OPEN"
                    )
                    .as_bytes(),
                )
                .await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            return;
        }
        let vary = req
            .target
            .split_once("vary=")
            .map(|(_, v)| format!("Vary: {}\r\n", v.split('&').next().unwrap_or(v)))
            .unwrap_or_default();
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nx-upstream: recorder\r\n{vary}\r\n{}",
            req.target.len(),
            req.target
        );
        if s.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A plain `GET /after` on a fresh connection is answered `200` within a few seconds.
pub async fn still_serves(addr: SocketAddr) {
    still_serves_at(addr, "/after").await;
}

/// A plain `GET path` on a fresh connection is answered `200` within a few seconds.
pub async fn still_serves_at(addr: SocketAddr, path: &str) {
    let a = exchange_quiet(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        Duration::from_millis(300),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        a.first(),
        200,
        "graylane no longer serves a normal request: {}",
        super::raw::show(&a.raw)
    );
}

// === metrics ===

/// The sum of every series of `family` whose labels contain all of `labels`
/// (`pool="gray"`, ...).
pub async fn metric_sum(p: &Proxy, family: &str, labels: &[&str]) -> f64 {
    let (_, text) = admin_get(p, "/metrics").await;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(family)?;
            if !(rest.is_empty() || rest.starts_with('{')) {
                return None;
            }
            labels
                .iter()
                .all(|want| rest.contains(want))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Whether `family` has any series at all in /metrics.
pub async fn metric_exists(p: &Proxy, family: &str) -> bool {
    let (_, text) = admin_get(p, "/metrics").await;
    text.lines()
        .any(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
}

// === sockets in /proc ===

/// How many TCP sockets of this network namespace to `remote` are in CLOSE_WAIT
/// (`/proc/net/tcp`, state 08): the peer closed, the owner did not.
pub fn close_wait_to(remote: SocketAddr) -> usize {
    let port = format!("{:04X}", remote.port());
    let Ok(text) = std::fs::read_to_string("/proc/net/tcp") else {
        return 0;
    };
    text.lines()
        .skip(1)
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && cols[2].ends_with(&format!(":{port}")) && cols[3] == "08"
        })
        .count()
}

// === a hand-written HTTP/2 client (RFC 9113, HPACK RFC 7541) ===

pub mod h2 {
    use super::*;

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    /// RST_STREAM / GOAWAY error codes.
    pub const CANCEL: u32 = 0x8;

    /// One frame: 9-byte header, then the payload.
    pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        assert!(len < 1 << 24);
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
        f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An HPACK integer with an `n`-bit prefix, the prefix byte's high bits `flags`.
    pub fn int(n: u8, flags: u8, mut v: usize, out: &mut Vec<u8>) {
        let max = (1usize << n) - 1;
        if v < max {
            out.push(flags | v as u8);
            return;
        }
        out.push(flags | max as u8);
        v -= max;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
    }

    /// An HPACK string literal, not Huffman-coded.
    pub fn string(s: &[u8], out: &mut Vec<u8>) {
        int(7, 0, s.len(), out);
        out.extend_from_slice(s);
    }

    /// Literal field without indexing, new name (RFC 7541 §6.2.2).
    pub fn literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
        out.push(0x00);
        string(name, out);
        string(value, out);
    }

    /// Literal field without indexing, name from the static table.
    pub fn literal_indexed_name(index: usize, value: &[u8], out: &mut Vec<u8>) {
        int(4, 0x00, index, out);
        string(value, out);
    }

    /// A header block for `GET path` with `:authority t`, then `extra` fields as
    /// literals (static-table names: `:method GET` 2, `:path` 4, `:scheme http` 6,
    /// `:authority` 1).
    pub fn get_block(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        request_block("GET", path, extra)
    }

    /// A header block for `METHOD path` with `:authority t` and `extra` literals.
    pub fn request_block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        if method == "GET" {
            b.push(0x82);
        } else {
            literal_indexed_name(2, method.as_bytes(), &mut b);
        }
        b.push(0x86);
        literal_indexed_name(4, path.as_bytes(), &mut b);
        literal_indexed_name(1, b"t", &mut b);
        for (n, v) in extra {
            literal(n.as_bytes(), v.as_bytes(), &mut b);
        }
        b
    }

    /// A received frame.
    #[derive(Debug, Clone)]
    pub struct Frame {
        pub ty: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// The error code of a RST_STREAM or GOAWAY.
        pub fn error_code(&self) -> Option<u32> {
            let at = match self.ty {
                RST_STREAM => 0,
                GOAWAY => 4,
                _ => return None,
            };
            let b = self.payload.get(at..at + 4)?;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
    }

    /// What came back for one stream.
    #[derive(Debug, Default)]
    pub struct Outcome {
        pub status: Option<u16>,
        pub data: Vec<u8>,
        pub reset: Option<u32>,
        pub goaway: Option<u32>,
        /// The connection ended (EOF or reset) before the stream did.
        pub closed: bool,
        pub ended: bool,
    }

    /// A raw h2c connection with prior knowledge.
    pub struct Conn {
        pub s: TcpStream,
        buf: Vec<u8>,
        /// Every frame read so far.
        pub frames: Vec<Frame>,
    }

    impl Conn {
        /// Connects, sends the preface and an empty SETTINGS, and waits for (and ACKs)
        /// the server's SETTINGS.
        pub async fn open(addr: SocketAddr) -> Conn {
            Conn::open_in_pieces(addr, &[]).await
        }

        /// As [`Conn::open`], with the preface sent in pieces cut at `cuts` (byte
        /// offsets), a short pause after each.
        pub async fn open_in_pieces(addr: SocketAddr, cuts: &[usize]) -> Conn {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let mut from = 0;
            for &cut in cuts {
                s.write_all(&PREFACE[from..cut])
                    .await
                    .expect("preface piece");
                tokio::time::sleep(Duration::from_millis(50)).await;
                from = cut;
            }
            let mut rest = PREFACE[from..].to_vec();
            rest.extend(frame(SETTINGS, 0, 0, &[]));
            s.write_all(&rest).await.expect("preface");
            let mut c = Conn {
                s,
                buf: Vec::new(),
                frames: Vec::new(),
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let f = c.next_until(deadline).await.expect("the server's SETTINGS");
                if f.ty == SETTINGS && f.flags & ACK == 0 {
                    break;
                }
            }
            c
        }

        pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            self.s.write_all(bytes).await
        }

        /// The next frame; answers SETTINGS and PING on the way. `Err` when the
        /// connection ended or the deadline passed.
        pub async fn next_until(&mut self, deadline: Instant) -> Result<Frame, End> {
            loop {
                if self.buf.len() >= 9 {
                    let len = (usize::from(self.buf[0]) << 16)
                        | (usize::from(self.buf[1]) << 8)
                        | usize::from(self.buf[2]);
                    if self.buf.len() >= 9 + len {
                        let f = Frame {
                            ty: self.buf[3],
                            flags: self.buf[4],
                            stream: u32::from_be_bytes([
                                self.buf[5],
                                self.buf[6],
                                self.buf[7],
                                self.buf[8],
                            ]) & 0x7fff_ffff,
                            payload: self.buf[9..9 + len].to_vec(),
                        };
                        self.buf.drain(..9 + len);
                        if f.ty == SETTINGS && f.flags & ACK == 0 {
                            let _ = self.s.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
                        }
                        if f.ty == PING && f.flags & ACK == 0 {
                            let _ = self.s.write_all(&frame(PING, ACK, 0, &f.payload)).await;
                        }
                        self.frames.push(f.clone());
                        return Ok(f);
                    }
                }
                let mut chunk = [0u8; 16 * 1024];
                match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                    Err(_) => return Err(End::Open),
                    Ok(Ok(0)) => return Err(End::Eof),
                    Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                    Ok(Err(_)) => return Err(End::Reset),
                }
            }
        }

        /// Reads until `stream` ends (END_STREAM or RST_STREAM), a GOAWAY, the
        /// connection's end, or `within`.
        pub async fn outcome(&mut self, stream: u32, within: Duration) -> Outcome {
            let deadline = Instant::now() + within;
            let mut o = Outcome::default();
            loop {
                let f = match self.next_until(deadline).await {
                    Ok(f) => f,
                    Err(End::Open) => return o,
                    Err(_) => {
                        o.closed = true;
                        return o;
                    }
                };
                match f.ty {
                    GOAWAY => {
                        o.goaway = f.error_code();
                        // The stream may still end (a GOAWAY lets open streams finish).
                        if o.ended {
                            return o;
                        }
                    }
                    RST_STREAM if f.stream == stream => {
                        o.reset = f.error_code();
                        return o;
                    }
                    HEADERS if f.stream == stream => {
                        if o.status.is_none() {
                            o.status = status(&f.payload);
                        }
                        if f.flags & END_STREAM != 0 {
                            o.ended = true;
                            return o;
                        }
                    }
                    DATA if f.stream == stream => {
                        o.data.extend_from_slice(&f.payload);
                        if f.flags & END_STREAM != 0 {
                            o.ended = true;
                            return o;
                        }
                    }
                    _ => {}
                }
            }
        }

        /// Reads frames until the connection ends or `within` passes; returns how it
        /// ended and whether a GOAWAY came (with its code).
        pub async fn drain(&mut self, within: Duration) -> (End, Option<u32>) {
            let deadline = Instant::now() + within;
            loop {
                match self.next_until(deadline).await {
                    Ok(_) => {}
                    Err(end) => {
                        let goaway = self
                            .frames
                            .iter()
                            .rev()
                            .find(|f| f.ty == GOAWAY)
                            .and_then(Frame::error_code);
                        return (end, goaway);
                    }
                }
            }
        }
    }

    /// The `:status` of a response header block, when it is the first field (as servers
    /// send it) and is either a static-table entry or a literal value (plain or
    /// Huffman-coded digits). A status only in the dynamic table is not decoded.
    pub fn status(block: &[u8]) -> Option<u16> {
        let mut i = 0;
        // Dynamic table size updates (001xxxxx) may come first.
        while i < block.len() && block[i] & 0xe0 == 0x20 {
            let (_, n) = read_int(&block[i..], 5)?;
            i += n;
        }
        let b = *block.get(i)?;
        if b & 0x80 != 0 {
            let (idx, _) = read_int(&block[i..], 7)?;
            return match idx {
                8 => Some(200),
                9 => Some(204),
                10 => Some(206),
                11 => Some(304),
                12 => Some(400),
                13 => Some(404),
                14 => Some(500),
                _ => None,
            };
        }
        let prefix = if b & 0xc0 == 0x40 { 6 } else { 4 };
        let (name, n) = read_int(&block[i..], prefix)?;
        if name != 8 {
            return None;
        }
        i += n;
        let huffman = *block.get(i)? & 0x80 != 0;
        let (len, n) = read_int(&block[i..], 7)?;
        i += n;
        let raw = block.get(i..i + len)?;
        let digits = if huffman {
            huffman_digits(raw)?
        } else {
            String::from_utf8(raw.to_vec()).ok()?
        };
        digits.parse().ok()
    }

    fn read_int(b: &[u8], n: u8) -> Option<(usize, usize)> {
        let max = (1usize << n) - 1;
        let mut v = usize::from(*b.first()?) & max;
        if v < max {
            return Some((v, 1));
        }
        let mut shift = 0;
        for (k, &byte) in b[1..].iter().enumerate() {
            v += usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                return Some((v, k + 2));
            }
        }
        None
    }

    /// Huffman-decodes a string of decimal digits (RFC 7541 Appendix B: `0`–`2` are
    /// the 5-bit codes 0–2, `3`–`9` the 6-bit codes 0x19–0x1f).
    fn huffman_digits(raw: &[u8]) -> Option<String> {
        let bits: Vec<u8> = raw
            .iter()
            .flat_map(|b| (0..8).rev().map(move |k| (b >> k) & 1))
            .collect();
        let mut out = String::new();
        let mut i = 0;
        let take = |i: usize, n: usize| -> Option<u32> {
            let s = bits.get(i..i + n)?;
            Some(s.iter().fold(0u32, |acc, &b| (acc << 1) | u32::from(b)))
        };
        while i < bits.len() {
            let rest = &bits[i..];
            if rest.len() < 8 && rest.iter().all(|&b| b == 1) {
                break;
            }
            match take(i, 5)? {
                v @ 0..=2 => {
                    out.push(char::from(b'0' + v as u8));
                    i += 5;
                }
                _ => match take(i, 6)? {
                    v @ 0x19..=0x1f => {
                        out.push(char::from(b'3' + (v - 0x19) as u8));
                        i += 6;
                    }
                    _ => return None,
                },
            }
        }
        Some(out)
    }
}
