//! HTTP/1.1 heads in their usual shape, read in one pass: the request heads graylane's
//! own loop serves and the response heads its HTTP/1.1 client reads.
//!
//! httparse stays the reference for what a head may be. This scanner takes only a head in
//! the shape clients and upstreams send (CRLF line ends, one space between the parts of
//! the first line, an ASCII target, `HTTP/1.0` or `HTTP/1.1`, no folded or empty-named
//! field) and finds in it exactly what httparse finds; every other head — cut short,
//! with a bare LF, a byte httparse refuses or reads leniently, more fields than there is
//! room for — gets `None`, and the caller asks httparse, whose answer then decides. So
//! the scanner adds no shape graylane accepts; `tests` and the `h1_head` fuzz target
//! hold it to httparse's answers.
//!
//! Why not httparse alone: on the load benchmark's heads (5 fields) httparse, plus the
//! lowercasing of the names that followed it, took ~1,700 instructions a head of the
//! ~21,000 a proxied request costs; this pass, which lowercases the names as it reads
//! them and checks values eight bytes at a time, takes a third of that
//! (`benches/load/instructions.sh`).

/// Where a field is in the head: name start and end, value start and end. Heads are
/// scanned only within `u32` positions (the callers' head limits are far below).
pub(crate) type Span = [u32; 4];

/// A request line: where the method and the target are, and the minor version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestLine {
    pub(crate) method: [u32; 2],
    pub(crate) target: [u32; 2],
    pub(crate) minor: u8,
}

/// A status line's code (three digits, so 0–999) and minor version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatusLine {
    pub(crate) code: u16,
    pub(crate) minor: u8,
}

/// The lowercase of each byte a field name may hold (RFC 9110 §5.6.2 `tchar`, which is
/// httparse's set), 0 for every other byte.
static NAME: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric()
            || matches!(c, b'!' | b'#' | b'$' | b'%' | b'&' | b'\'')
            || matches!(
                c,
                b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            )
        {
            t[b] = c.to_ascii_lowercase();
        }
        b += 1;
    }
    t
};

/// Whether `b` may be in a field name as HTTP/2 requires it: a token character that is
/// not an uppercase letter.
pub(crate) fn lowercase_name_byte(b: u8) -> bool {
    b != 0 && NAME[b as usize] == b
}

/// Each byte a field value (or a reason phrase) may hold: HTAB, SP, VCHAR, obs-text —
/// httparse's set, and HTTP/2's.
pub(crate) fn value_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` below `n` (n ≤ 0x80). A byte's borrow can only mark
/// the bytes above it, so the lowest mark is always exact.
fn below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES * n as u64) & !x & HIGHS
}

/// The high bit of each control byte (HTAB included) or DEL in `x`: 0 exactly when all
/// eight are value bytes other than HTAB (see [`below`] for why any mark is a real one
/// or above one).
pub(crate) fn controls(x: u64) -> u64 {
    below(x, 0x20) | below(x ^ (ONES * 0x7f), 1)
}

/// The eight bytes at `at`, when there are eight.
fn word(buf: &[u8], at: usize) -> Option<u64> {
    let bytes = buf.get(at..at + 8)?;
    bytes.try_into().ok().map(u64::from_le_bytes)
}

/// Moves `at` to the first byte that is not a value byte, eight at a time while no byte
/// in the word is a control byte or DEL (a tab is one: it is then stepped over byte by
/// byte). `None` where the buffer ends first.
fn skip_value(buf: &[u8], mut at: usize) -> Option<usize> {
    loop {
        if let Some(x) = word(buf, at) {
            let marks = controls(x);
            if marks == 0 {
                at += 8;
                continue;
            }
            at += (marks.trailing_zeros() / 8) as usize;
        }
        if !value_byte(*buf.get(at)?) {
            return Some(at);
        }
        at += 1;
    }
}

/// Reads a request head at the front of `buf`, lowercasing its field names in place,
/// and gives each field's span to `put` (which answers false when it has no room);
/// returns the request line and the head's length. `None`: httparse decides.
pub(crate) fn request(
    buf: &mut [u8],
    put: impl FnMut(Span) -> bool,
) -> Option<(RequestLine, usize)> {
    let buf = cap(buf);
    let mut at = 0;
    while NAME[*buf.get(at)? as usize] != 0 {
        at += 1;
    }
    if at == 0 || buf[at] != b' ' {
        return None;
    }
    let method = [0, at as u32];
    at += 1;
    let start = at;
    // The target: `!` to `~`, up to a space; httparse takes obs-text too, left to it.
    loop {
        if let Some(x) = word(buf, at) {
            let marks = below(x, 0x21) | ((x | x.wrapping_add(ONES)) & HIGHS);
            if marks == 0 {
                at += 8;
                continue;
            }
            at += (marks.trailing_zeros() / 8) as usize;
        }
        let b = *buf.get(at)?;
        if !(b'!'..=b'~').contains(&b) {
            break;
        }
        at += 1;
    }
    if at == start || buf[at] != b' ' {
        return None;
    }
    let target = [start as u32, at as u32];
    let minor = match buf.get(at + 1..at + 11)? {
        b"HTTP/1.1\r\n" => 1,
        b"HTTP/1.0\r\n" => 0,
        _ => return None,
    };
    let len = fields(buf, at + 11, put)?;
    let line = RequestLine {
        method,
        target,
        minor,
    };
    Some((line, len))
}

/// Reads a response head at the front of `buf` as [`request`] does a request's.
pub(crate) fn response(
    buf: &mut [u8],
    put: impl FnMut(Span) -> bool,
) -> Option<(StatusLine, usize)> {
    let buf = cap(buf);
    let minor = match buf.get(..9)? {
        b"HTTP/1.1 " => 1,
        b"HTTP/1.0 " => 0,
        _ => return None,
    };
    let mut code = 0u16;
    for &d in buf.get(9..12)? {
        if !d.is_ascii_digit() {
            return None;
        }
        code = code * 10 + u16::from(d - b'0');
    }
    let mut at = 12;
    if *buf.get(at)? == b' ' {
        // The reason phrase, which nothing reads: the same bytes as a value.
        at = skip_value(buf, at + 1)?;
    }
    if buf.get(at..at + 2)? != b"\r\n" {
        return None;
    }
    let len = fields(buf, at + 2, put)?;
    Some((StatusLine { code, minor }, len))
}

/// Heads are read within the first 4 GiB of a buffer, so positions fit in `u32`.
fn cap(buf: &mut [u8]) -> &mut [u8] {
    let end = buf.len().min(u32::MAX as usize);
    &mut buf[..end]
}

/// Reads the fields from `at` to the empty line; returns the head's length.
fn fields(buf: &mut [u8], mut at: usize, mut put: impl FnMut(Span) -> bool) -> Option<usize> {
    loop {
        let name_start = at;
        loop {
            let b = *buf.get(at)?;
            let lower = NAME[b as usize];
            if lower == 0 {
                break;
            }
            buf[at] = lower;
            at += 1;
        }
        if at == name_start {
            // The empty line, or what httparse must judge (a folded line, a bare LF).
            return (buf.get(at..at + 2)? == b"\r\n").then_some(at + 2);
        }
        if buf[at] != b':' {
            return None;
        }
        let name_end = at;
        at += 1;
        while matches!(*buf.get(at)?, b' ' | b'\t') {
            at += 1;
        }
        let value_start = at;
        at = skip_value(buf, at)?;
        if buf.get(at..at + 2)? != b"\r\n" {
            return None;
        }
        let mut value_end = at;
        while value_end > value_start && matches!(buf[value_end - 1], b' ' | b'\t') {
            value_end -= 1;
        }
        let span = [name_start, name_end, value_start, value_end];
        if !put(span.map(|i| i as u32)) {
            return None;
        }
        at += 2;
    }
}

/// httparse's fields with their names lowercased, as the scanner leaves them.
fn lowered<'b>(headers: &[httparse::Header<'b>]) -> Vec<(String, &'b [u8])> {
    headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value))
        .collect()
}

/// Holds the scanner to httparse on `data` taken as a request head and as a response
/// head: where the scanner reads a head, httparse must read the same one (length,
/// first line, fields); names aside, the scanner must leave the bytes as they were. And
/// where it leaves the head to httparse, httparse must read what the scanner left (some
/// names lowercased) as it reads `data`. The error says what differs.
pub(crate) fn agrees_with_httparse(data: &[u8]) -> Result<(), String> {
    // Room for as many fields as httparse is given below.
    fn collect(spans: &mut Vec<Span>) -> impl FnMut(Span) -> bool + '_ {
        spans.clear();
        move |s| {
            spans.push(s);
            spans.len() <= 64
        }
    }
    let mut spans = Vec::new();
    let mut ours = data.to_vec();
    if let Some((line, len)) = request(&mut ours, collect(&mut spans)) {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut fields);
        let theirs = req.parse(data);
        let at = |[s, e]: [u32; 2]| &ours[s as usize..e as usize];
        let same_line = req.method.map(str::as_bytes) == Some(at(line.method))
            && req.path.map(str::as_bytes) == Some(at(line.target))
            && req.version == Some(line.minor);
        if theirs != Ok(httparse::Status::Complete(len)) || !same_line {
            return Err(format!(
                "request: httparse {theirs:?}, {req:?}; scanner {line:?}, {len}"
            ));
        }
        same_fields(data, &ours, &spans, req.headers)?;
    } else {
        let read = |bytes: &[u8]| {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut fields);
            let status = req.parse(bytes);
            let fields = lowered(req.headers);
            format!(
                "{status:?} {:?} {:?} {:?} {fields:?}",
                req.method, req.path, req.version
            )
        };
        if read(data) != read(&ours) {
            return Err(format!(
                "request left to httparse: {} / {}",
                read(data),
                read(&ours)
            ));
        }
    }
    let mut ours = data.to_vec();
    if let Some((line, len)) = response(&mut ours, collect(&mut spans)) {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut fields);
        let theirs = resp.parse(data);
        let same_line = resp.code == Some(line.code) && resp.version == Some(line.minor);
        if theirs != Ok(httparse::Status::Complete(len)) || !same_line {
            return Err(format!(
                "response: httparse {theirs:?}, {resp:?}; scanner {line:?}, {len}"
            ));
        }
        same_fields(data, &ours, &spans, resp.headers)?;
    } else {
        let read = |bytes: &[u8]| {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut fields);
            let status = resp.parse(bytes);
            let fields = lowered(resp.headers);
            format!("{status:?} {:?} {:?} {fields:?}", resp.code, resp.version)
        };
        if read(data) != read(&ours) {
            return Err(format!(
                "response left to httparse: {} / {}",
                read(data),
                read(&ours)
            ));
        }
    }
    Ok(())
}

/// Whether the fields at `spans` in `ours` (the scanned copy of `data`) are httparse's
/// `theirs`, and `ours` is `data` with only the names lowercased.
fn same_fields(
    data: &[u8],
    ours: &[u8],
    spans: &[Span],
    theirs: &[httparse::Header<'_>],
) -> Result<(), String> {
    if spans.len() != theirs.len() {
        return Err(format!("{} fields, httparse {}", spans.len(), theirs.len()));
    }
    let mut expected = data.to_vec();
    for (&[ns, ne, vs, ve], h) in spans.iter().zip(theirs) {
        let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
        let name_at = h.name.as_ptr() as usize - data.as_ptr() as usize;
        let value_at = h.value.as_ptr() as usize - data.as_ptr() as usize;
        if (name_at, h.name.len(), h.value.len()) != (ns, ne - ns, ve - vs)
            || (value_at != vs && !h.value.is_empty())
        {
            return Err(format!("field {:?} at {ns}..{ne}, {vs}..{ve}", h.name));
        }
        expected[ns..ne].make_ascii_lowercase();
    }
    if ours != expected {
        return Err("bytes other than the names changed".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &[u8] = b"GET /chat/send?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\
        User-Agent: wrk-graylane-bench\r\nAccept: */*\r\nxdw-kefu-uid: 10000007\r\n\
        X-Empty:\r\nX-Spaces:  \t a  b \t \r\n\r\nBODY";
    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\
        Date: Mon, 07 Dec 2026 10:25:34 GMT\r\nContent-Type: text/plain\r\n\
        Content-Length: 7\r\nConnection: keep-alive\r\n\r\nstable\n";

    /// The request line, the head's length and the fields as text.
    type Scan = (RequestLine, usize, Vec<(String, String)>);

    fn scan_request(data: &[u8]) -> Option<Scan> {
        let mut buf = data.to_vec();
        let mut spans = Vec::new();
        let (line, len) = request(&mut buf, |s| {
            spans.push(s);
            true
        })?;
        Some((line, len, named(&buf, &spans)))
    }

    fn named(buf: &[u8], spans: &[Span]) -> Vec<(String, String)> {
        let text = |s: u32, e: u32| String::from_utf8_lossy(&buf[s as usize..e as usize]).into();
        spans
            .iter()
            .map(|&[ns, ne, vs, ve]| (text(ns, ne), text(vs, ve)))
            .collect()
    }

    #[test]
    fn usual_heads_are_read_with_names_lowercased() {
        let (line, len, fields) = scan_request(REQUEST).unwrap();
        assert_eq!(&REQUEST[len..], b"BODY");
        assert_eq!(line.minor, 1);
        assert_eq!(
            &REQUEST[line.target[0] as usize..line.target[1] as usize],
            b"/chat/send?x=1"
        );
        assert_eq!(
            fields[1],
            ("user-agent".into(), "wrk-graylane-bench".into())
        );
        assert_eq!(fields[4], ("x-empty".into(), "".into()));
        assert_eq!(fields[5], ("x-spaces".into(), "a  b".into()));
        let mut buf = RESPONSE.to_vec();
        let mut count = 0;
        let (status, len) = response(&mut buf, |_| {
            count += 1;
            true
        })
        .unwrap();
        assert_eq!((status.code, status.minor, count), (200, 1, 5));
        assert_eq!(&buf[len..], b"stable\n");
        assert!(buf.starts_with(b"HTTP/1.1 200 OK\r\nserver: nginx"));
        assert!(agrees_with_httparse(REQUEST).is_ok() && agrees_with_httparse(RESPONSE).is_ok());
    }

    #[test]
    fn unusual_shapes_are_left_to_httparse() {
        for odd in [
            &b"GET / HTTP/1.1\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"\r\nGET / HTTP/1.1\r\n\r\n",
            b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\x7fb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
        ] {
            assert!(
                scan_request(odd).is_none(),
                "{:?}",
                String::from_utf8_lossy(odd)
            );
        }
        let mut room = 2;
        let mut buf = REQUEST.to_vec();
        assert!(request(&mut buf, |_| {
            room -= 1;
            room >= 0
        })
        .is_none());
        for odd in [
            &b"HTTP/1.1 200 OK\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
        ] {
            assert!(response(&mut odd.to_vec(), |_| true).is_none());
        }
    }

    /// Every head one byte away from the usual ones (each byte replaced by each of the
    /// bytes that matter to a parser, or cut off there): where the scanner reads one,
    /// httparse reads the same.
    #[test]
    fn what_the_scanner_reads_httparse_reads_alike() {
        let bytes = [
            0u8, b'\t', b'\n', b'\r', b' ', b'!', b'"', b'(', b',', b'/', b':', b';', b'A', b'Z',
            b'a', b'~', 0x7f, 0x80, 0xc3, 0xff,
        ];
        let mut scanned = 0;
        for seed in [REQUEST, RESPONSE] {
            for i in 0..seed.len() {
                if let Err(e) = agrees_with_httparse(&seed[..i]) {
                    panic!("cut at {i}: {e}");
                }
                for &b in &bytes {
                    let mut data = seed.to_vec();
                    data[i] = b;
                    if let Err(e) = agrees_with_httparse(&data) {
                        panic!("{:?}: {e}", String::from_utf8_lossy(&data));
                    }
                    scanned += usize::from(scan_request(&data).is_some());
                }
            }
        }
        // Most single-byte changes keep a head the scanner reads (the check bites).
        assert!(scanned > 1000, "{scanned}");
    }
}
