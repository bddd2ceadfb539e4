use std::cell::Cell;
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode};

use super::codec::*;
use super::exchange::*;
use super::idle::*;
use super::*;

fn head(raw: &[u8], method: &Method) -> Result<Option<Head>, H1Error> {
    let mut buf = BytesMut::from(raw);
    parse_head(&mut buf, method, false)
}

#[test]
fn framing_follows_rfc_9112() {
    let get = Method::GET;
    let h = |raw: &str| {
        head(raw.as_bytes(), &get)
            .ok()
            .flatten()
            .map(|h| (h.framing, h.reusable))
    };
    assert_eq!(
        h("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
        Some((Framing::Length(5), true))
    );
    assert_eq!(
        h("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
        Some((Framing::Chunked(Chunked::Size), true))
    );
    assert_eq!(
        h("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"),
        Some((Framing::Chunked(Chunked::Size), false))
    );
    let both = head(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
        &get,
    );
    assert!(
        matches!(both, Ok(Some(ref h)) if !h.headers.contains_key("content-length")),
        "{both:?}"
    );
    assert_eq!(h("HTTP/1.1 200 OK\r\n\r\n"), Some((Framing::Eof, false)));
    assert_eq!(
        h("HTTP/1.1 204 No Content\r\n\r\n"),
        Some((Framing::Done, true))
    );
    assert_eq!(
        h("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n"),
        Some((Framing::Length(5), false))
    );
    assert_eq!(
        h("HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n"),
        Some((Framing::Length(5), false))
    );
    assert_eq!(
        h("HTTP/1.0 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\n"),
        Some((Framing::Length(5), true))
    );
    let head_req = head(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
        &Method::HEAD,
    );
    assert!(matches!(
        head_req,
        Ok(Some(Head {
            framing: Framing::Done,
            ..
        }))
    ));
}

#[test]
fn bad_heads_are_protocol_errors() {
    for raw in [
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 5a\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551616\r\n\r\n",
        "HTTP/1.1 999x OK\r\n\r\n",
        "garbage\r\n\r\n",
    ] {
        let r = head(raw.as_bytes(), &Method::GET);
        assert!(
            matches!(r, Err(ref e) if e.kind() == UpstreamErrorKind::Protocol),
            "{raw:?}: {r:?}"
        );
    }
    // Repeated equal lengths are one length (RFC 9110 §8.6).
    let r = head(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n",
        &Method::GET,
    );
    assert!(matches!(
        r,
        Ok(Some(Head {
            framing: Framing::Length(5),
            ..
        }))
    ));
}

#[test]
fn content_length_digits_read_as_str_parse_reads_them() {
    for v in [
        "0",
        "7",
        "0042",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999",
        "",
        "+1",
        "-1",
        "1 2",
        "1_0",
        "٣",
        "0x10",
    ] {
        let std = Some(v)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok());
        assert_eq!(crate::markers::parse_u64(v.as_bytes()), std, "{v:?}");
    }
}

#[test]
fn interim_responses_are_skipped_and_values_kept() {
    let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 2\r\n\r\nok"[..],
        );
    let h = parse_head(&mut buf, &Method::POST, false).ok().flatten();
    let h = h.as_ref();
    assert_eq!(h.map(|h| h.status), Some(StatusCode::CREATED));
    let values: Vec<_> = h
        .map(|h| h.headers.get_all("x-a").iter().cloned().collect())
        .unwrap_or_default();
    assert_eq!(values, ["1", "2"]);
    assert_eq!(&buf[..], b"ok");
    // The head limit is on the head, not on the body bytes read along with it.
    let mut big = b"HTTP/1.1 200 OK\r\ncontent-length: 70000\r\n\r\n".to_vec();
    big.resize(big.len() + 70_000, b'x');
    assert!(matches!(head(&big, &Method::GET), Ok(Some(_))));
    let mut endless = b"HTTP/1.1 200 OK\r\nx-a: ".to_vec();
    endless.resize(MAX_HEAD + 10, b'a');
    assert!(matches!(
        head(&endless, &Method::GET),
        Err(H1Error::Parse(_))
    ));
    // A head cut short needs more bytes.
    assert!(matches!(
        head(b"HTTP/1.1 200 OK\r\nx-a:", &Method::GET),
        Ok(None)
    ));
}

/// Decodes as far as `wire` goes: body, state (`None`: complete), bytes left, and
/// the trailer fields as `name=value` strings.
type Decoded = (Vec<u8>, Option<Chunked>, usize, Vec<String>);

fn decode(wire: &[u8]) -> Result<Decoded, H1Error> {
    let mut buf = BytesMut::from(wire);
    let mut state = Some(Chunked::Size);
    let mut out = Vec::new();
    let mut trailers = Vec::new();
    while let Some(s) = state {
        if buf.is_empty() {
            break;
        }
        match chunk_step(&mut buf, s)? {
            ChunkStep::More => break,
            ChunkStep::Next(next, data) => {
                out.extend_from_slice(&data.unwrap_or_default());
                state = next;
            }
            ChunkStep::Trailers(t) => {
                for (k, v) in &t {
                    trailers.push(format!("{k}={}", v.to_str().unwrap_or("?")));
                }
                state = None;
            }
        }
    }
    Ok((out, state, buf.len(), trailers))
}

#[test]
fn chunked_bodies_decode() {
    let (body, state, left, trailers) =
        decode(b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: t\r\nx-b: 2\r\n\r\nNEXT")
            .unwrap_or_default();
    assert_eq!(body, b"hello, world");
    assert_eq!(state, None);
    assert_eq!(left, 4, "bytes after the body stay in the buffer");
    assert_eq!(trailers, ["x-trailer=t", "x-b=2"]);
    // Without trailers, the last chunk ends at its empty line.
    let ended = decode(b"1\r\nx\r\n0\r\n\r\n").map(|(b, s, l, t)| (b, s, l, t.len()));
    assert!(
        matches!(ended, Ok((ref b, None, 0, 0)) if b == b"x"),
        "{ended:?}"
    );
    // Cut anywhere, decoding stops and waits for more.
    let (body, state, _, _) = decode(b"5\r\nhel").unwrap_or_default();
    assert_eq!(body, b"hel");
    assert_eq!(state, Some(Chunked::Data(2)));
    assert!(matches!(decode(b"zz\r\n"), Err(H1Error::Parse(_))));
    // Only whitespace or an extension may follow the size.
    for bad in [
        &b"5 junk\r\nhello\r\n"[..],
        b"5\rX\nhello\r\n",
        b"5\r\r\nhello\r\n",
    ] {
        assert!(matches!(decode(bad), Err(H1Error::Parse(_))), "{bad:?}");
    }
    let (body, _, _, _) = decode(b"5 ;a=b\r\nhello\r\n").unwrap_or_default();
    assert_eq!(body, b"hello");
    // A size line that never ends is cut off.
    assert!(matches!(
        decode(&[b'1'; MAX_HEAD + 1]),
        Err(H1Error::Parse(_))
    ));
    assert!(matches!(decode(b"5\r\nhelloXX"), Err(H1Error::Parse(_))));
}

#[tokio::test]
async fn the_sweep_closes_dropped_and_old_idle_connections() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let idle = |addr| IDLE.with(|m| m.borrow().get(&addr).map_or(0, Vec::len));
    let mut upstream_sides = Vec::new();
    for _ in 0..2 {
        let c = TcpStream::connect(addr).await.unwrap();
        upstream_sides.push(listener.accept().await.unwrap().0);
        put(addr, Conn::new(c));
    }
    assert_eq!(idle(addr), 2);
    // The upstream closes one; the reactor sees its FIN.
    drop(upstream_sides.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = SWEEPS.with(Cell::get);
    sweep(start + 1);
    assert_eq!(idle(addr), 1, "the closed one is gone, the open one stays");
    sweep(start + IDLE_SWEEPS - 1);
    assert_eq!(idle(addr), 1, "not idle long enough yet");
    sweep(start + IDLE_SWEEPS);
    assert_eq!(idle(addr), 0);
    assert!(
        IDLE.with(|m| !m.borrow().contains_key(&addr)),
        "empty lists are dropped"
    );
}

#[test]
fn addresses_hash_apart() {
    use std::hash::BuildHasher;
    let h = |a: &str| {
        let addr: SocketAddr = a.parse().unwrap();
        BuildHasherDefault::<AddrHasher>::default().hash_one(addr)
    };
    let all = [
        h("10.0.0.1:80"),
        h("10.0.0.1:81"),
        h("10.0.0.2:80"),
        h("[::1]:80"),
        h("[::2]:80"),
    ];
    for (i, a) in all.iter().enumerate() {
        assert!(all[i + 1..].iter().all(|b| b != a), "{all:?}");
    }
}

#[test]
fn client_trailers_pass_but_for_control_fields() {
    let mut t = HeaderMap::new();
    t.insert("x-checksum", HeaderValue::from_static("abc"));
    t.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1"));
    t.insert(header::HOST, HeaderValue::from_static("evil"));
    assert_eq!(
        String::from_utf8_lossy(&trailer_block(&t)),
        "0\r\nx-checksum: abc\r\n\r\n"
    );
}

#[test]
fn request_heads_are_framed() {
    let req = Request::post("/chat/send?x=1")
        .header("host", "a")
        .header("x-custom", "v")
        .body(())
        .map(|r| r.into_parts().0);
    let Ok(parts) = req else {
        panic!("request builds")
    };
    let mut out = Vec::new();
    let (name, value) = (
        http::HeaderName::from_static("x-forwarded-proto"),
        http::HeaderValue::from_static("http"),
    );
    encode_head(
        &mut out,
        &parts.method,
        "/chat/send?x=1",
        (&parts.headers).into(),
        &[(&name, &value)],
        true,
        "chat-gray:8080",
    );
    assert_eq!(
            String::from_utf8_lossy(&out),
            "POST /chat/send?x=1 HTTP/1.1\r\nhost: a\r\nx-custom: v\r\nx-forwarded-proto: http\r\ntransfer-encoding: chunked\r\n\r\n"
        );
}

/// An HTTP/1.0 request may come without `Host`; what goes upstream is HTTP/1.1, which
/// must have one (RFC 9112 §3.2), or an upstream answers 400 (nginx does).
#[test]
fn a_request_without_host_names_the_endpoint() {
    let Ok(parts) = Request::get("/").body(()).map(|r| r.into_parts().0) else {
        panic!("request builds")
    };
    let mut out = Vec::new();
    encode_head(
        &mut out,
        &parts.method,
        "/",
        (&parts.headers).into(),
        &[],
        false,
        "chat-gray:8080",
    );
    assert_eq!(
        String::from_utf8_lossy(&out),
        "GET / HTTP/1.1\r\nhost: chat-gray:8080\r\n\r\n"
    );
}

/// `Keep-Alive`, and a `Connection` naming only `keep-alive`, never enter the response's
/// map (the proxy strips them anyway); any other `Connection` stays for the strip, which
/// removes what it names; a `101` keeps its fields whole (the tunnel needs them).
#[test]
fn plain_keep_alive_fields_are_left_out() {
    let names = |raw: &str| -> Vec<String> {
        let h = head(raw.as_bytes(), &Method::GET).ok().flatten();
        let h = h.map(|h| h.headers).unwrap_or_default();
        h.keys().map(|k| k.as_str().to_owned()).collect()
    };
    assert_eq!(
        names("HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\ncontent-length: 0\r\nx-kept: 1\r\n\r\n"),
        ["content-length", "x-kept"]
    );
    assert_eq!(
        names("HTTP/1.1 200 OK\r\nconnection: keep-alive, x-secret\r\nx-secret: 1\r\ncontent-length: 0\r\n\r\n"),
        ["connection", "x-secret", "content-length"]
    );
    assert_eq!(
        names("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"),
        ["connection", "content-length"]
    );
    assert_eq!(
        names("HTTP/1.1 101 Switching Protocols\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\nupgrade: websocket\r\n\r\n"),
        ["connection", "keep-alive", "upgrade"]
    );
}

/// A head kept as received leaves out what the header-map path strips before the
/// client's copy is written, keeps the rest in order, and frames the body the same.
#[test]
fn raw_heads_keep_what_the_map_path_keeps() {
    let heads = [
        "HTTP/1.1 200 OK\r\nServer: u\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\n",
        "HTTP/1.1 200 OK\r\nConnection: close, X-Secret\r\nx-secret: 1\r\nX-Kept: 2\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
        "HTTP/1.1 404 Not Found\r\nProxy-Connection: keep-alive\r\nProxy-Authenticate: Basic\r\nUpgrade: h2c\r\nTE: trailers\r\nVary: a\r\nvary: b\r\n\r\n",
        "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\n",
    ];
    for h in heads {
        let mut buf = BytesMut::from(h);
        let mapped = parse_head(&mut buf, &Method::GET, false).unwrap().unwrap();
        let mut buf = BytesMut::from(h);
        let kept = parse_head(&mut buf, &Method::GET, true).unwrap().unwrap();
        assert!(kept.headers.is_empty(), "{h}");
        assert_eq!(
            (kept.framing, kept.reusable, kept.status),
            (mapped.framing, mapped.reusable, mapped.status),
            "{h}"
        );
        let mut want = mapped.headers;
        crate::proxy::headers::strip_hop_by_hop(&mut want, false, &[]);
        // The map path answers a TE field with `te: trailers`; a response's TE means
        // nothing (it is a request field) and the copy kept as received drops it.
        want.remove(header::TE);
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let got: Vec<(String, String)> = kept
            .raw
            .as_deref()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).to_ascii_lowercase(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        let mut sorted_want = want.clone();
        let mut sorted_got = got.clone();
        sorted_want.sort();
        sorted_got.sort();
        assert_eq!(sorted_got, sorted_want, "{h}");
        // Same order for fields of one name (a map groups them; the wire keeps order).
        for name in ["set-cookie", "vary"] {
            let of = |v: &[(String, String)]| {
                v.iter()
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(of(&got), of(&want), "{h}");
        }
    }
    // A 101 and a head with more fields than kept as received build the map as before.
    let mut buf = BytesMut::from(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    );
    let h = parse_head(&mut buf, &Method::GET, true).unwrap().unwrap();
    assert!(h.raw.is_none() && h.headers.contains_key(header::UPGRADE));
    let many: String = (0..40).map(|i| format!("x-{i}: {i}\r\n")).collect();
    let mut buf =
        BytesMut::from(format!("HTTP/1.1 200 OK\r\n{many}content-length: 0\r\n\r\n").as_str());
    let h = parse_head(&mut buf, &Method::GET, true).unwrap().unwrap();
    assert!(h.raw.is_none() && h.headers.len() == 41);
    // Errors are the map path's.
    for bad in [
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    ] {
        let mut buf = BytesMut::from(bad);
        assert!(parse_head(&mut buf, &Method::GET, true).is_err(), "{bad}");
    }
}

/// The word-at-a-time lowercasing against the byte loop it stands for: every byte value
/// at every position of names 0 to 20 bytes long (the lengths that take each branch),
/// with bytes around the name that must stay as they are.
#[test]
fn names_are_lowercased_as_make_ascii_lowercase_does() {
    let base = b"Ab-Zz@[`{XyZ-Content-AZaz";
    for len in 0..=20usize {
        for pos in 0..len.max(1) {
            for b in 0..=255u8 {
                let mut name = base[..len].to_vec();
                if len > 0 {
                    name[pos] = b;
                }
                let mut buf = [b"Q:".as_slice(), &name, b"\xc0Z".as_slice()].concat();
                let end = 2 + len as u32;
                lowercase_names(&mut buf, &[[2, end, end, end]]);
                let mut want = [b"Q:".as_slice(), &name, b"\xc0Z".as_slice()].concat();
                want[2..2 + len].make_ascii_lowercase();
                assert_eq!(buf, want, "length {len}, byte {b:#04x} at {pos}");
            }
        }
    }
}
