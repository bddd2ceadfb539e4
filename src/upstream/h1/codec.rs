//! Response heads and chunked bodies as RFC 9112 frames them: a head in the usual shape
//! read by `crate::head`'s one pass, any other by httparse.

use std::mem::MaybeUninit;
use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};

use super::body::H1Body;
use super::exchange::Upload;
use super::idle::Conn;
use super::raw::{self, Kind, RawFields, RAW_MAX};
use super::{H1Error, MAX_HEAD, MAX_HEADERS, MAX_TRAILERS};
use crate::head;

/// A parsed response head, before it becomes a [`Response`].
#[derive(Debug)]
pub(super) struct Head {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
    pub(super) framing: Framing,
    pub(super) reusable: bool,
    /// The fields kept as received instead of in `headers` (see `raw`).
    pub(super) raw: Option<Box<RawFields>>,
}

impl Head {
    pub(super) fn into_response(
        self,
        conn: Conn,
        addr: SocketAddr,
        upload: Option<Box<Upload>>,
    ) -> Response<Box<H1Body>> {
        let mut body = H1Body {
            conn: Some(conn),
            addr,
            framing: self.framing,
            reusable: self.reusable,
            upload,
            raw: self.raw,
        };
        // A body that is empty from the start is never polled: it is complete now.
        if matches!(body.framing, Framing::Done | Framing::Length(0)) {
            body.framing = Framing::Done;
            body.finish();
        }
        let mut resp = Response::new(Box::new(body));
        *resp.status_mut() = self.status;
        *resp.version_mut() = self.version;
        *resp.headers_mut() = self.headers;
        resp
    }
}

/// Parses a complete head at the front of `buf` and consumes it; `None` when more bytes
/// are needed. Interim (1xx) responses other than `101` are skipped. `raw`: keep the
/// fields as received where that can be done (not for a `101`, nor for a head with
/// over [`RAW_MAX`] fields), for a client that graylane's own loop serves.
pub(super) fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    raw: bool,
) -> Result<Option<Head>, H1Error> {
    if raw {
        let mut spans = [[0u32; 4]; RAW_MAX];
        let mut count = 0;
        let limit = buf.len().min(MAX_HEAD);
        let scanned = head::response(&mut buf[..limit], |span| {
            let Some(slot) = spans.get_mut(count) else {
                return false;
            };
            *slot = span;
            count += 1;
            true
        });
        // Interim responses and `101` take the long way below.
        if let Some((line, len)) = scanned.filter(|(line, _)| line.code >= 200) {
            let status = StatusCode::from_u16(line.code)
                .map_err(|_| H1Error::Parse("invalid status code"))?;
            let version = if line.minor == 0 {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            let head = buf.split_to(len).freeze();
            return raw::head(head, &spans[..count], status, version, method).map(Some);
        }
    }
    loop {
        let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut fields,
        ) {
            // The limit holds for a head that arrived whole in one read, too.
            Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
                return Err(H1Error::Parse("response head too large"))
            }
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(H1Error::Parse("response head too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(H1Error::Parse("too many header fields"))
            }
            Err(_) => return Err(H1Error::Parse("malformed response head")),
        };
        let code = resp.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| H1Error::Parse("invalid status code"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            buf.advance(len);
            if buf.is_empty() {
                return Ok(None);
            }
            continue;
        }
        let version = if resp.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let mut spans = [[0u32; 4]; MAX_HEADERS];
        let count = resp.headers.len();
        field_spans(buf, resp.headers, &mut spans);
        if raw && count <= RAW_MAX && status != StatusCode::SWITCHING_PROTOCOLS {
            lowercase_names(buf, &spans[..count]);
            let head = buf.split_to(len).freeze();
            return raw::head(head, &spans[..count], status, version, method).map(Some);
        }
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        // The fields that frame the body are noted as the map is built: looking them up
        // afterwards would hash their names again.
        let mut facts = FramingFacts::default();
        for &[ns, ne, vs, ve] in spans.iter().take(count) {
            let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
                .map_err(|_| H1Error::Parse("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
                .map_err(|_| H1Error::Parse("invalid header value"))?;
            facts.note(&name, value.as_bytes());
            if status != StatusCode::SWITCHING_PROTOCOLS && only_keep_alive(&name, &value) {
                continue;
            }
            headers.append(name, value);
        }
        let (framing, definite) = response_framing(status, version, method, &facts)?;
        if matches!(framing, Framing::Chunked(_)) && facts.length.is_some() {
            // Transfer-Encoding won: a Content-Length passed on would misframe the
            // client's copy (RFC 9112 §6.3).
            headers.remove(header::CONTENT_LENGTH);
        }
        let reusable = definite && facts.keeps_alive(version);
        return Ok(Some(Head {
            status,
            version,
            headers,
            framing,
            reusable,
            raw: None,
        }));
    }
}

/// The positions in `buf` of the `fields` httparse found in it (name start and end,
/// value start and end), taken first: names and values become slices of the head's bytes
/// once those are split off the buffer, which the fields still borrow. Heads are limited
/// far below 4 GiB (the callers make sure), so positions fit in `u32`, and an array of
/// 100 is then small enough to be cleared without `rep stosb`.
pub(crate) fn field_spans(buf: &[u8], fields: &[httparse::Header<'_>], out: &mut [[u32; 4]]) {
    let base = buf.as_ptr() as usize;
    for (span, f) in out.iter_mut().zip(fields) {
        let name = f.name.as_ptr() as usize - base;
        let value = f.value.as_ptr() as usize - base;
        *span = [
            name as u32,
            (name + f.name.len()) as u32,
            value as u32,
            (value + f.value.len()) as u32,
        ];
    }
}

/// Lowercases the names at `spans` in place, as a header map has them and as hyper
/// writes them: a head kept as received then compares names byte for byte.
pub(crate) fn lowercase_names(buf: &mut [u8], spans: &[[u32; 4]]) {
    for &[ns, ne, _, _] in spans {
        if let Some(name) = buf.get_mut(ns as usize..ne as usize) {
            lowercase(name);
        }
    }
}

/// `make_ascii_lowercase` eight bytes at a time. Names are mostly 4–14 bytes, where a
/// byte loop spends more on its branches than on the bytes (every request and response
/// head has its names lowercased). Lowercasing twice changes nothing, so the last word
/// may overlap the one before it.
fn lowercase(name: &mut [u8]) {
    let n = name.len();
    if n >= 8 {
        let mut at = 0;
        while at + 8 <= n {
            lower_word::<8>(&mut name[at..at + 8]);
            at += 8;
        }
        if at < n {
            lower_word::<8>(&mut name[n - 8..]);
        }
    } else if n >= 4 {
        lower_word::<4>(&mut name[..4]);
        lower_word::<4>(&mut name[n - 4..]);
    } else {
        name.make_ascii_lowercase();
    }
}

/// Lowercases `N` (4 or 8) bytes as one word: a byte gets 0x20 added where it is `A`–`Z`.
/// Each byte's low seven bits plus 0x3f reach 0x80 from `A` on, plus 0x25 from `[` on;
/// neither sum carries into the next byte.
fn lower_word<const N: usize>(bytes: &mut [u8]) {
    let mut word = [0u8; 8];
    word[..N].copy_from_slice(&bytes[..N]);
    let x = u64::from_le_bytes(word);
    let low7 = x & 0x7f7f_7f7f_7f7f_7f7f;
    let from_a = low7 + 0x3f3f_3f3f_3f3f_3f3f;
    let past_z = low7 + 0x2525_2525_2525_2525;
    let upper = (from_a ^ past_z) & !x & 0x8080_8080_8080_8080;
    let lowered = (x | (upper >> 2)).to_le_bytes();
    bytes[..N].copy_from_slice(&lowered[..N]);
}

/// `Keep-Alive`, or a `Connection` that names nothing but `keep-alive`: hop-by-hop
/// fields (RFC 9110 §7.6.1) that the proxy would strip from the client's copy anyway,
/// left out of the map as it is built. The usual keep-alive response then has no
/// hop-by-hop field left, and stripping it finds nothing to remove (a hash lookup and a
/// removal per field saved). Any other `Connection` is kept for the strip, which also
/// removes the fields it names.
fn only_keep_alive(name: &HeaderName, value: &HeaderValue) -> bool {
    if *name == header::CONNECTION {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .all(|t| t.trim_ascii().eq_ignore_ascii_case(b"keep-alive"))
    } else {
        name.as_str() == "keep-alive"
    }
}

/// What a response head says about its body's framing and its connection.
#[derive(Debug, Default)]
pub(super) struct FramingFacts {
    /// `Transfer-Encoding` present; whether the last coding of its last field is chunked.
    pub(super) chunked_last: Option<bool>,
    /// `Content-Length`: the one value all fields agree on, or why there is none.
    pub(super) length: Option<Result<u64, &'static str>>,
    /// `Connection` tokens.
    pub(super) close: bool,
    pub(super) keep_alive: bool,
}

impl FramingFacts {
    pub(super) fn note(&mut self, name: &HeaderName, value: &[u8]) {
        let kind = if name == header::TRANSFER_ENCODING {
            Kind::TransferEncoding
        } else if name == header::CONTENT_LENGTH {
            Kind::ContentLength
        } else if name == header::CONNECTION {
            Kind::Connection
        } else {
            return;
        };
        self.note_kind(kind, value);
    }

    pub(super) fn note_kind(&mut self, kind: Kind, value: &[u8]) {
        // Most values hold one item, for which splitting costs more than the rest of the
        // reading.
        if !value.contains(&b',') {
            return self.note_item(kind, value.trim_ascii());
        }
        for item in raw::tokens(value) {
            self.note_item(kind, item);
        }
    }

    /// One item of a framing field's comma-separated value.
    fn note_item(&mut self, kind: Kind, item: &[u8]) {
        match kind {
            // The last coding decides: this one is the last so far.
            Kind::TransferEncoding => {
                self.chunked_last = Some(item.eq_ignore_ascii_case(b"chunked"))
            }
            Kind::ContentLength => {
                // Digits only (RFC 9110 §8.6), as a marker's id is read: a UTF-8
                // check and `str::parse` cost ~120 instructions more per response.
                let n = crate::markers::parse_u64(item).ok_or("invalid content-length");
                self.length = Some(match (self.length.take(), n) {
                    (_, Err(e)) | (Some(Err(e)), _) => Err(e),
                    (Some(Ok(l)), Ok(n)) if l != n => Err("conflicting content-length values"),
                    (_, Ok(n)) => Ok(n),
                });
            }
            Kind::Connection => {
                self.close |= item.eq_ignore_ascii_case(b"close");
                self.keep_alive |= item.eq_ignore_ascii_case(b"keep-alive");
            }
            Kind::Other | Kind::HopByHop => {}
        }
    }

    /// Whether the connection may carry another request after this response.
    pub(super) fn keeps_alive(&self, version: Version) -> bool {
        if version == Version::HTTP_10 {
            self.keep_alive
        } else {
            !self.close
        }
    }
}

/// The body's framing (RFC 9112 §6.3), and whether it leaves the connection reusable.
pub(super) fn response_framing(
    status: StatusCode,
    version: Version,
    method: &Method,
    facts: &FramingFacts,
) -> Result<(Framing, bool), H1Error> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok((Framing::Upgrade, false));
    }
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Done, true));
    }
    if let Some(chunked_last) = facts.chunked_last {
        // HTTP/1.0 has no Transfer-Encoding: the framing is unknown, so the body runs
        // until the upstream closes (RFC 9112 §6.1).
        if version == Version::HTTP_10 {
            return Ok((Framing::Eof, false));
        }
        // With both, Transfer-Encoding wins and the connection is closed afterwards.
        let with_length = facts.length.is_some();
        return Ok(if chunked_last {
            (Framing::Chunked(Chunked::Size), !with_length)
        } else {
            (Framing::Eof, false)
        });
    }
    match facts.length {
        Some(Ok(n)) => Ok((Framing::Length(n), true)),
        Some(Err(e)) => Err(H1Error::Parse(e)),
        None => Ok((Framing::Eof, false)),
    }
}

/// Where a response body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// Complete.
    Done,
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes the connection.
    Eof,
    /// `101`: no body; the connection now speaks another protocol.
    Upgrade,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk: this many data bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

pub(super) enum ChunkStep {
    /// Not enough bytes buffered for the next step.
    More,
    /// The next state (`None`: the body is complete), and data to hand on.
    Next(Option<Chunked>, Option<Bytes>),
    /// The body is complete, with these trailer fields.
    Trailers(HeaderMap),
}

/// Where the line at the front of `buf` ends (its LF); `None` until one is buffered.
pub(super) fn line_end(buf: &[u8]) -> Result<Option<usize>, H1Error> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => Ok(Some(i)),
        None if buf.len() > MAX_HEAD => Err(H1Error::Parse("chunk line too long")),
        None => Ok(None),
    }
}

/// One step of decoding a chunked body from the front of `buf` (not empty).
pub(super) fn chunk_step(buf: &mut BytesMut, state: Chunked) -> Result<ChunkStep, H1Error> {
    match state {
        Chunked::Data(rem) => {
            let n = rem.min(buf.len() as u64);
            let data = buf.split_to(n as usize).freeze();
            let next = if rem == n {
                Chunked::DataEnd
            } else {
                Chunked::Data(rem - n)
            };
            Ok(ChunkStep::Next(Some(next), Some(data)))
        }
        Chunked::DataEnd => {
            // CRLF; a bare LF is accepted as hyper does.
            match buf.as_ref() {
                [b'\n', ..] => buf.advance(1),
                [b'\r', b'\n', ..] => buf.advance(2),
                [b'\r'] => return Ok(ChunkStep::More),
                _ => return Err(H1Error::Parse("chunk data not followed by CRLF")),
            }
            Ok(ChunkStep::Next(Some(Chunked::Size), None))
        }
        Chunked::Size => {
            let Some(eol) = line_end(buf)? else {
                return Ok(ChunkStep::More);
            };
            let line = buf[..eol].strip_suffix(b"\r").unwrap_or(&buf[..eol]);
            let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            if digits == 0 || digits > 16 {
                return Err(H1Error::Parse("invalid chunk size"));
            }
            // After the size: optional whitespace, then the end or an extension. A stray
            // byte (or CR) here could mean the two sides disagree on the framing.
            let rest = &line[digits..];
            let rest = &rest[rest
                .iter()
                .take_while(|b| matches!(b, b' ' | b'\t'))
                .count()..];
            if !(rest.is_empty() || rest[0] == b';') || rest.contains(&b'\r') {
                return Err(H1Error::Parse("invalid chunk size line"));
            }
            let size = line[..digits].iter().fold(0u64, |acc, &b| {
                let d = (b as char).to_digit(16).unwrap_or(0);
                (acc << 4) | u64::from(d)
            });
            buf.advance(eol + 1);
            Ok(ChunkStep::Next(
                Some(if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                }),
                None,
            ))
        }
        Chunked::Trailers => {
            match buf.as_ref() {
                [b'\n', ..] => {
                    buf.advance(1);
                    return Ok(ChunkStep::Next(None, None));
                }
                [b'\r', b'\n', ..] => {
                    buf.advance(2);
                    return Ok(ChunkStep::Next(None, None));
                }
                [b'\r'] => return Ok(ChunkStep::More),
                _ => {}
            }
            // A trailer section: fields up to an empty line, parsed as a head's are.
            let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
            let len = match httparse::parse_headers(buf, &mut fields) {
                Ok(httparse::Status::Complete((n, _))) => n,
                Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                    return Err(H1Error::Parse("trailer section too large"))
                }
                Ok(httparse::Status::Partial) => return Ok(ChunkStep::More),
                Err(_) => return Err(H1Error::Parse("malformed trailer section")),
            };
            let mut trailers = HeaderMap::new();
            for f in fields.iter().take_while(|f| !f.name.is_empty()) {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| H1Error::Parse("invalid trailer name"))?;
                let value = HeaderValue::from_bytes(f.value)
                    .map_err(|_| H1Error::Parse("invalid trailer value"))?;
                trailers.append(name, value);
            }
            buf.advance(len);
            Ok(ChunkStep::Trailers(trailers))
        }
    }
}
