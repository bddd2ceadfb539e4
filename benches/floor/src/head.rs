//! The per-request work every variant shares, on the bytes as received: parse the head
//! with httparse, pick the pool from the uid marker, and write the upstream head by
//! editing the received one (hop-by-hop fields out, `x-forwarded-*` in). No header map,
//! no copy of a field beyond the one into the outgoing head.

/// A head larger than this is refused (graylane's default `max_header_bytes` is 64 KiB).
pub const MAX_HEAD: usize = 64 * 1024;

/// The load benchmark's rule: uids 10000000–10499999 go to gray.
const GRAY: std::ops::RangeInclusive<u64> = 10_000_000..=10_499_999;

pub const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
pub const BAD_GATEWAY: &[u8] =
    b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

pub enum Parse<T> {
    Done(T),
    Partial,
    /// Malformed, or outside what the floor relays (chunked bodies, upgrades, 1xx): the
    /// benchmark sends none of these, so the floor answers 400/502 and closes.
    Bad,
}

pub struct Req {
    pub head_len: usize,
    pub body_len: usize,
    pub gray: bool,
    pub close: bool,
}

pub struct Resp {
    pub head_len: usize,
    pub body_len: usize,
    pub close: bool,
}

/// A marker value: ASCII digits only (leading zeros allowed), as graylane reads a uid.
fn number(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        let d = b.wrapping_sub(b'0');
        (d < 10).then_some(())?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn cookie_uid(v: &[u8]) -> Option<u64> {
    v.split(|&b| b == b';').find_map(|pair| {
        let pair = trim(pair);
        pair.strip_prefix(b"xdw-kefu-uid=").map(number)
    })?
}

fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

/// Parses the request head at the start of `buf`; when complete, writes the upstream
/// head into `out` (cleared first). `xff` is the client's address for x-forwarded-for.
pub fn request(buf: &[u8], xff: &[u8], out: &mut Vec<u8>) -> Parse<Req> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Request::new(&mut fields);
    let head_len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(_) => return Parse::Bad,
    };
    let (Some(method), Some(path), Some(version)) = (r.method, r.path, r.version) else {
        return Parse::Bad;
    };
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut close = version == 0;
    let mut body_len = None;
    let mut header_uid: Option<Option<u64>> = None;
    let mut from_cookie = None;
    for f in r.headers.iter() {
        let name = f.name.as_bytes();
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                match (body_len, number(f.value)) {
                    (None, Some(n)) => body_len = Some(n as usize),
                    _ => return Parse::Bad, // repeated or not a number
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return Parse::Bad,
            7 if name.eq_ignore_ascii_case(b"upgrade") => return Parse::Bad,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                if has_token(f.value, b"close") {
                    close = true;
                } else if has_token(f.value, b"keep-alive") {
                    close = false;
                }
                continue;
            }
            10 if name.eq_ignore_ascii_case(b"keep-alive") => continue,
            16 if name.eq_ignore_ascii_case(b"proxy-connection") => continue,
            2 if name.eq_ignore_ascii_case(b"te") => continue,
            7 if name.eq_ignore_ascii_case(b"trailer") => continue,
            15 if name.eq_ignore_ascii_case(b"x-forwarded-for") => continue,
            17 if name.eq_ignore_ascii_case(b"x-forwarded-proto") => continue,
            12 if name.eq_ignore_ascii_case(b"xdw-kefu-uid") => {
                // The header wins over the cookie, even when it is not a number.
                header_uid.get_or_insert(number(f.value));
            }
            6 if name.eq_ignore_ascii_case(b"cookie") && from_cookie.is_none() => {
                from_cookie = cookie_uid(f.value);
            }
            _ => {}
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(f.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    out.extend_from_slice(xff);
    out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n\r\n");
    let uid = header_uid.unwrap_or(from_cookie);
    Parse::Done(Req {
        head_len,
        body_len: body_len.unwrap_or(0),
        gray: uid.is_some_and(|u| GRAY.contains(&u)),
        close,
    })
}

/// Parses the upstream's response head at the start of `buf`; when complete, writes
/// the client's head into `out` (cleared first).
pub fn response(buf: &[u8], client_close: bool, out: &mut Vec<u8>) -> Parse<Resp> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut fields);
    let head_len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(_) => return Parse::Bad,
    };
    let (Some(code), Some(version)) = (r.code, r.version) else {
        return Parse::Bad;
    };
    if code < 200 {
        return Parse::Bad;
    }
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&buf[9..12]); // "HTTP/1.x " is 9 bytes; the code is 3 digits
    out.push(b' ');
    out.extend_from_slice(r.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut close = version == 0;
    let mut body_len = None;
    for f in r.headers.iter() {
        let name = f.name.as_bytes();
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => match (body_len, number(f.value))
            {
                (None, Some(n)) => body_len = Some(n as usize),
                _ => return Parse::Bad,
            },
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => return Parse::Bad,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                close |= has_token(f.value, b"close");
                continue;
            }
            10 if name.eq_ignore_ascii_case(b"keep-alive") => continue,
            _ => {}
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(f.value);
        out.extend_from_slice(b"\r\n");
    }
    if client_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let body_len = match body_len {
        Some(n) => n,
        None if code == 204 || code == 304 => 0,
        None => return Parse::Bad, // read-to-close bodies: not in the benchmark
    };
    Parse::Done(Resp {
        head_len,
        body_len,
        close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(head: &str) -> (bool, String) {
        let mut out = Vec::new();
        match request(head.as_bytes(), b"127.0.0.1", &mut out) {
            Parse::Done(r) => (r.gray, String::from_utf8(out).unwrap()),
            _ => panic!("not parsed: {head}"),
        }
    }

    #[test]
    fn routes_as_the_benchmark_rules_say() {
        let h = |v: &str| format!("GET / HTTP/1.1\r\nhost: t\r\n{v}\r\n\r\n");
        assert!(route(&h("xdw-kefu-uid: 10200000")).0);
        assert!(route(&h("xdw-kefu-uid: 0010000000")).0);
        assert!(!route(&h("xdw-kefu-uid: 104999990")).0);
        assert!(!route(&h("xdw-kefu-uid: abc\r\ncookie: xdw-kefu-uid=10200000")).0);
        assert!(route(&h("cookie: lang=zh; xdw-kefu-uid=10200000; theme=dark")).0);
        assert!(!route(&h("cookie: xdw-kefu-uid=60000000")).0);
        let (_, up) = route(&h("connection: keep-alive\r\nx-forwarded-proto: https"));
        assert!(!up.contains("keep-alive") && up.ends_with("x-forwarded-proto: http\r\n\r\n"));
    }
}
