//! A request's decoded header block, made into what the request path takes from
//! graylane's own HTTP/1.1 loop: `Parts` from the pseudo-header fields, and a
//! [`Received`] whose head holds the regular fields as HTTP/1.1 field lines
//! (`name: value` CRLF), so that forwarding to an HTTP/1.1 upstream copies them as they
//! are instead of building a header map and writing it out again.
//!
//! The checks are RFC 9113 §8.2 and §8.3's, held as strictly as the HTTP/1.1 loop holds
//! its heads: names are lowercase tokens, values carry no control characters and no
//! whitespace at either end, the pseudo-header fields are the four a request has, once
//! each and before the others, and the fields that only mean something to one HTTP/1.1
//! connection are not there. A request that fails them is malformed: a stream error
//! (PROTOCOL_ERROR), not an answer.

use bytes::{Bytes, BytesMut};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Uri, Version};

use crate::fields::{Received, Tally};
use crate::head::{controls, lowercase_name_byte, value_byte};

/// Why a header block is not a request graylane passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Malformed (RFC 9113 §8.1.1): the stream is reset with PROTOCOL_ERROR.
    Malformed(&'static str),
    /// Larger than the header list size graylane announced: answered 431, as an
    /// HTTP/1.1 head over `max_header_bytes` is.
    TooLarge,
}

/// What the pseudo-header fields said, and the body's declared length.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) parts: http::request::Parts,
    pub(crate) content_length: Option<u64>,
}

/// Collects one header block's fields as the decoder hands them over.
#[derive(Debug)]
pub(crate) struct Assembler {
    /// The regular fields as HTTP/1.1 lines, and where each name and value lies.
    lines: BytesMut,
    spans: Vec<[u32; 4]>,
    tally: Tally,
    /// `cookie` fields, joined with "; " (RFC 9113 §8.2.3) into one line at the end.
    cookie: Vec<u8>,
    /// The pseudo-header fields' values, side by side, and where each lies.
    pseudo: Vec<u8>,
    method: Option<(usize, usize)>,
    scheme: Option<(usize, usize)>,
    authority: Option<(usize, usize)>,
    path: Option<(usize, usize)>,
    content_length: Option<u64>,
    has_host: bool,
    /// The list's size as RFC 9113 §6.5.2 counts it, against `limit`.
    size: usize,
    limit: usize,
    /// The first reason the block is refused: the decoder still reads the rest of it,
    /// so that the connection's table stays right.
    refused: Option<Refused>,
}

impl Assembler {
    /// An assembler for blocks of at most `limit` bytes (name, value and 32 per field).
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            lines: BytesMut::with_capacity(LINES_HINT),
            spans: Vec::new(),
            tally: Tally::default(),
            cookie: Vec::new(),
            pseudo: Vec::with_capacity(PSEUDO_HINT),
            method: None,
            scheme: None,
            authority: None,
            path: None,
            content_length: None,
            has_host: false,
            size: 0,
            limit,
            refused: None,
        }
    }

    /// Takes one field; the decoder's callback.
    pub(crate) fn field(&mut self, name: &[u8], value: &[u8]) {
        self.size += name.len() + value.len() + 32;
        if self.refused.is_some() {
            return;
        }
        if self.size > self.limit {
            self.refused = Some(Refused::TooLarge);
            return;
        }
        if let Err(why) = self.take(name, value) {
            self.refused = Some(Refused::Malformed(why));
        }
    }

    fn take(&mut self, name: &[u8], value: &[u8]) -> Result<(), &'static str> {
        if !valid_value(value) {
            return Err("invalid field value");
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if !self.spans.is_empty() || !self.cookie.is_empty() {
                return Err("pseudo-header field after a regular field");
            }
            let slot = match pseudo {
                b"method" => &mut self.method,
                b"scheme" => &mut self.scheme,
                b"authority" => &mut self.authority,
                b"path" => &mut self.path,
                _ => return Err("unknown pseudo-header field"),
            };
            if slot.is_some() {
                return Err("repeated pseudo-header field");
            }
            *slot = Some((self.pseudo.len(), self.pseudo.len() + value.len()));
            self.pseudo.extend_from_slice(value);
            return Ok(());
        }
        match regular_field(name, value)? {
            Regular::Cookie => {
                if !self.cookie.is_empty() {
                    self.cookie.extend_from_slice(b"; ");
                }
                self.cookie.extend_from_slice(value);
                return Ok(());
            }
            Regular::ContentLength => {
                let n = crate::markers::parse_u64(value).ok_or("invalid content-length")?;
                if self.content_length.is_some_and(|m| m != n) {
                    return Err("content-length fields differ");
                }
                self.content_length = Some(n);
            }
            Regular::Host => self.has_host = true,
            Regular::Other => {}
        }
        self.line(name, value);
        Ok(())
    }

    fn line(&mut self, name: &[u8], value: &[u8]) {
        let ns = self.lines.len();
        self.lines.extend_from_slice(name);
        self.lines.extend_from_slice(b": ");
        let vs = self.lines.len();
        self.lines.extend_from_slice(value);
        let ve = self.lines.len();
        self.lines.extend_from_slice(b"\r\n");
        self.tally.note(self.spans.len(), name);
        // A block is limited far below 4 GiB (`limit`): positions fit in `u32`.
        self.spans
            .push([ns as u32, (ns + name.len()) as u32, vs as u32, ve as u32]);
    }

    /// The request, its regular fields moved into `received`; the assembler is ready
    /// for the connection's next block.
    pub(crate) fn finish(&mut self, received: &mut Received) -> Result<Request, Refused> {
        let result = self.request(received);
        self.lines.clear();
        self.spans.clear();
        self.tally = Tally::default();
        self.cookie.clear();
        self.pseudo.clear();
        (self.method, self.scheme, self.authority, self.path) = (None, None, None, None);
        self.content_length = None;
        self.has_host = false;
        self.size = 0;
        self.refused = None;
        result
    }

    fn request(&mut self, received: &mut Received) -> Result<Request, Refused> {
        if let Some(refused) = self.refused {
            return Err(refused);
        }
        let malformed = Refused::Malformed;
        // The values go with the request (its target is a slice of them); the next
        // request's get one allocation rather than growing theirs field by field.
        let pseudo = Bytes::from(std::mem::replace(
            &mut self.pseudo,
            Vec::with_capacity(PSEUDO_HINT),
        ));
        let get = |slot: Option<(usize, usize)>| slot.map(|(s, e)| pseudo.slice(s..e));
        let method = get(self.method).ok_or(malformed("no :method"))?;
        let method = Method::from_bytes(&method).map_err(|_| malformed("invalid :method"))?;
        // RFC 9113 §8.3.1: present, it must not be empty.
        let authority = get(self.authority);
        if authority.as_ref().is_some_and(|a| a.is_empty()) {
            return Err(malformed("empty :authority"));
        }
        let mut uri = http::uri::Parts::default();
        if method == Method::CONNECT {
            // RFC 9113 §8.5: :authority only (extended CONNECT is not offered).
            if self.scheme.is_some() || self.path.is_some() {
                return Err(malformed("CONNECT with :scheme or :path"));
            }
            let authority = authority.ok_or(malformed("CONNECT without :authority"))?;
            uri.authority = Some(
                Authority::from_maybe_shared(authority)
                    .map_err(|_| malformed("invalid :authority"))?,
            );
        } else {
            let scheme = get(self.scheme).ok_or(malformed("no :scheme"))?;
            let path = get(self.path)
                .filter(|p| !p.is_empty())
                .ok_or(malformed("no :path"))?;
            if path[0] != b'/' && !(&path[..] == b"*" && method == Method::OPTIONS) {
                return Err(malformed("invalid :path"));
            }
            uri.scheme =
                Some(Scheme::try_from(&scheme[..]).map_err(|_| malformed("invalid :scheme"))?);
            uri.authority = match authority {
                Some(a) => Some(
                    Authority::from_maybe_shared(a).map_err(|_| malformed("invalid :authority"))?,
                ),
                // `http` wants an authority beside a scheme; the Host field then names
                // the target, as in HTTP/1.1.
                None => None,
            };
            if uri.authority.is_none() {
                uri.scheme = None;
            }
            uri.path_and_query = Some(
                PathAndQuery::from_maybe_shared(path).map_err(|_| malformed("invalid :path"))?,
            );
        }
        let uri = Uri::from_parts(uri).map_err(|_| malformed("invalid target"))?;
        if !self.cookie.is_empty() {
            let cookie = std::mem::take(&mut self.cookie);
            self.line(b"cookie", &cookie);
            self.cookie = cookie;
        }
        if !self.has_host {
            // The upstream's HTTP/1.1 head needs a Host (RFC 9112 §3.2): :authority's.
            if let Some(a) = uri.authority() {
                self.line(b"host", a.as_str().as_bytes());
            }
        }
        let lines = self.lines.split().freeze();
        // The next request's lines in one allocation, not grown field by field (the
        // bytes just split off go with the request).
        self.lines.reserve(LINES_HINT);
        received.spans_emptied().extend_from_slice(&self.spans);
        received.refill(lines, self.tally);
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = method;
        parts.uri = uri;
        parts.version = Version::HTTP_2;
        Ok(Request {
            parts,
            content_length: self.content_length,
        })
    }
}

/// What a regular field is to the assembler.
pub(crate) enum Regular {
    Cookie,
    ContentLength,
    Host,
    Other,
}

/// RFC 9113 §8.2.1–§8.2.2 for a field that is not a pseudo-header, in a request's fields
/// and in its trailers alike: a lowercase token name, no connection-specific field, `te`
/// only as `trailers`; and what the field is, from the same look at its name. (The value
/// is checked by the caller: a request's first of all.)
#[inline(always)]
pub(crate) fn regular_field(name: &[u8], value: &[u8]) -> Result<Regular, &'static str> {
    if name.is_empty() || !name.iter().all(|&b| lowercase_name_byte(b)) {
        return Err("invalid field name");
    }
    match name {
        b"connection" | b"proxy-connection" | b"keep-alive" | b"transfer-encoding" | b"upgrade" => {
            Err("connection-specific field")
        }
        b"te" if !value.eq_ignore_ascii_case(b"trailers") => Err("te other than trailers"),
        b"cookie" => Ok(Regular::Cookie),
        b"content-length" => Ok(Regular::ContentLength),
        b"host" => Ok(Regular::Host),
        _ => Ok(Regular::Other),
    }
}

/// Whether a trailer field may pass on: a regular field with a valid value.
pub(crate) fn trailer_ok(name: &[u8], value: &[u8]) -> bool {
    valid_value(value) && regular_field(name, value).is_ok()
}

/// Room made for a request's field lines before its first field: a browser's request
/// with its cookies fits.
const LINES_HINT: usize = 2048;

/// Room for a request's pseudo-header values (method, scheme, authority, path): a path
/// longer than what is left grows it once.
const PSEUDO_HINT: usize = 256;

/// RFC 9113 §8.2.1 with HTTP's field value rules: no NUL, CR, LF or other control
/// character but HTAB, and no whitespace at either end. Inlined into the request's field
/// check as into the trailers': a call per field cost ~170 instructions per request.
#[inline(always)]
pub(super) fn valid_value(v: &[u8]) -> bool {
    let ws = |b: &u8| *b == b' ' || *b == b'\t';
    if v.first().is_some_and(ws) || v.last().is_some_and(ws) {
        return false;
    }
    // Eight bytes at a time while none is a control byte, the usual case; a chunk with
    // one is looked at byte by byte (a tab is allowed).
    let mut chunks = v.chunks_exact(8);
    for chunk in &mut chunks {
        let plain = <[u8; 8]>::try_from(chunk).is_ok_and(|a| controls(u64::from_le_bytes(a)) == 0);
        if !plain && !chunk.iter().all(|&b| value_byte(b)) {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| value_byte(b))
}
