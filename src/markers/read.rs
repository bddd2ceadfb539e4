//! [`MarkerReader`]: every marker of a request in one pass per source.

use std::borrow::Cow;

use http::header::COOKIE;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::fields::Fields;

use super::value::trim_ows;
use super::{bit, InvalidSet, MarkerKind, MarkerNames, Markers, Outcome};

// === impl MarkerReader ===

/// Reads every marker of a request in one pass per source. Built once per config (names
/// resolved to [`HeaderName`]s and byte strings) so that the request path only compares
/// borrowed bytes.
#[derive(Debug, Clone)]
pub struct MarkerReader {
    /// Header of each marker, by [`MarkerKind`] index; `None` = source off.
    headers: [Option<HeaderName>; 6],
    /// Markers that have a header source.
    header_mask: u8,
    /// Bit `n` set when some marker header's name is `n` bytes long (`n` < 64; longer
    /// names set bit 63): a field whose name length is not here is no marker's, which
    /// rules out most fields (`host`, `accept`, `cookie`...) without comparing names.
    header_lens: u64,
    /// Distinct cookie names with the markers they feed (two markers may share a name).
    cookies: Vec<(Box<[u8]>, u8)>,
    /// Markers that have a cookie source at all, to skip the scan when none is wanted.
    cookie_mask: u8,
    /// Distinct query parameter names with the markers they feed.
    queries: Vec<(Box<[u8]>, u8)>,
    /// Markers that have a query source at all.
    query_mask: u8,
}

impl Default for MarkerReader {
    fn default() -> Self {
        Self::new(&MarkerNames::default())
    }
}

impl MarkerReader {
    /// Precomputes the names. A header name that is not a valid HTTP field name (config
    /// validation already rejects those) turns that source off rather than failing.
    pub fn new(names: &MarkerNames) -> Self {
        let mut headers: [Option<HeaderName>; 6] = Default::default();
        let mut cookies: Vec<(Box<[u8]>, u8)> = Vec::new();
        let mut queries: Vec<(Box<[u8]>, u8)> = Vec::new();
        let (mut cookie_mask, mut query_mask) = (0u8, 0u8);
        for kind in MarkerKind::ALL {
            let src = names.get(kind);
            if let Some(h) = &src.header {
                match HeaderName::from_bytes(h.as_bytes()) {
                    Ok(n) => headers[kind as usize] = Some(n),
                    Err(_) => {
                        tracing::warn!(marker = kind.name(), header = %h, "invalid marker header name ignored")
                    }
                }
            }
            if let Some(c) = src.cookie.as_deref().filter(|c| !c.is_empty()) {
                add_name(&mut cookies, c, kind);
                cookie_mask |= bit(kind);
            }
            if let Some(q) = src.query.as_deref().filter(|q| !q.is_empty()) {
                add_name(&mut queries, q, kind);
                query_mask |= bit(kind);
            }
        }
        let header_mask = MarkerKind::ALL
            .iter()
            .filter(|k| headers[**k as usize].is_some())
            .fold(0, |m, k| m | bit(*k));
        let header_lens = headers
            .iter()
            .flatten()
            .fold(0, |m, h| m | len_bit(h.as_str().len()));
        Self {
            headers,
            header_mask,
            header_lens,
            cookies,
            cookie_mask,
            queries,
            query_mask,
        }
    }

    /// Reads the markers of one request (SPEC §1): per marker, the first present source
    /// among header, cookie and query decides; an invalid value makes the marker absent
    /// and lands in the returned `InvalidSet`. `query` is the raw query string without
    /// `?`. Allocates nothing unless a matching query value is percent-encoded or a
    /// request carries more than eight group ids.
    pub fn read<'a>(
        &self,
        headers: impl Into<Fields<'a>>,
        query: Option<&str>,
    ) -> (Markers, InvalidSet) {
        let headers = headers.into();
        let mut m = Markers::default();
        let mut invalid = InvalidSet::default();
        // Each form of fields gets its own copy of the loops (one dispatch per request,
        // not per field).
        let (from_header, has_cookie) = match headers {
            Fields::Map(map) => self.scan(
                map.iter()
                    .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
            ),
            Fields::Received(_) => self.scan(headers.iter()),
        };
        // Markers no source has decided yet.
        let mut pending = 0u8;
        for kind in MarkerKind::ALL {
            let decided =
                from_header[kind as usize].is_some_and(|v| decide(&mut m, &mut invalid, kind, v));
            if !decided {
                pending |= bit(kind);
            }
        }

        let wanted = pending & self.cookie_mask;
        if wanted != 0 && has_cookie {
            let found = match headers {
                Fields::Map(map) => {
                    let values = map.get_all(COOKIE).into_iter().map(HeaderValue::as_bytes);
                    self.find_cookies(pairs(values), wanted)
                }
                Fields::Received(_) => self.find_cookies(cookie_pairs(headers), wanted),
            };
            for kind in MarkerKind::ALL {
                if let Some(v) = found[kind as usize] {
                    if decide(&mut m, &mut invalid, kind, v) {
                        pending &= !bit(kind);
                    }
                }
            }
        }

        let mut left = pending & self.query_mask;
        if let (true, Some(q)) = (left != 0, query) {
            for pair in q.as_bytes().split(|&b| b == b'&') {
                if pair.is_empty() {
                    continue;
                }
                let (name, value) = match pair.iter().position(|&b| b == b'=') {
                    Some(i) => (&pair[..i], &pair[i + 1..]),
                    None => (pair, &[][..]),
                };
                let name = form_decode(name);
                for (n, mask) in &self.queries {
                    let hit = mask & left;
                    if hit != 0 && **n == *name {
                        let value = form_decode(value);
                        for kind in MarkerKind::ALL {
                            // An empty value is "not present": a later occurrence may
                            // still decide, as with cookies.
                            if hit & bit(kind) != 0 && decide(&mut m, &mut invalid, kind, &value) {
                                left &= !bit(kind);
                            }
                        }
                    }
                }
                if left == 0 {
                    break;
                }
            }
        }
        (m, invalid)
    }

    /// Removes the configured marker headers, for requests from untrusted peers: the
    /// upstream must not act on identities graylane itself ignored. Cookies and query
    /// strings belong to the application and stay.
    pub fn remove_marker_headers(&self, headers: &mut HeaderMap) {
        for name in self.headers.iter().flatten() {
            headers.remove(name);
        }
    }

    /// One pass over the fields (a request has a handful) instead of a hashed lookup per
    /// marker: comparing names costs less than hashing six of them. A name seen first is
    /// its first value, as `HeaderMap::get` would give. Returns each marker's header value
    /// and whether there is a `Cookie` field.
    fn scan<'a>(
        &self,
        fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ) -> ([Option<&'a [u8]>; 6], bool) {
        let mut from_header: [Option<&[u8]>; 6] = [None; 6];
        let mut has_cookie = false;
        let mut left = self.header_mask;
        for (name, value) in fields {
            if name == b"cookie" {
                has_cookie = true;
            } else if left != 0 {
                if self.header_lens & len_bit(name.len()) == 0 {
                    continue;
                }
                for kind in MarkerKind::ALL {
                    if left & bit(kind) != 0 && self.is_header(kind, name) {
                        from_header[kind as usize] = Some(value);
                        left &= !bit(kind);
                    }
                }
            } else if has_cookie || self.cookie_mask == 0 {
                break;
            }
        }
        (from_header, has_cookie)
    }

    /// The first value of each `wanted` marker's cookie among `pairs`.
    fn find_cookies<'a>(
        &self,
        pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>,
        wanted: u8,
    ) -> [Option<&'a [u8]>; 6] {
        let mut found: [Option<&[u8]>; 6] = [None; 6];
        let mut left = wanted;
        for (name, value) in pairs {
            for (n, mask) in &self.cookies {
                let hit = mask & left;
                if hit != 0 && **n == *name {
                    for kind in MarkerKind::ALL {
                        if hit & bit(kind) != 0 {
                            found[kind as usize] = Some(value);
                        }
                    }
                    left &= !hit;
                }
            }
            if left == 0 {
                break;
            }
        }
        found
    }

    /// Whether `name` (lowercase) is some marker's header, for
    /// [`remove_marker_headers`](Self::remove_marker_headers) on a received head.
    pub(crate) fn is_marker_header(&self, name: &[u8]) -> bool {
        self.header_lens & len_bit(name.len()) != 0
            && MarkerKind::ALL.iter().any(|&k| self.is_header(k, name))
    }

    fn is_header(&self, kind: MarkerKind, name: &[u8]) -> bool {
        self.headers[kind as usize]
            .as_ref()
            .is_some_and(|h| h.as_str().as_bytes() == name)
    }
}

/// A name length's bit in [`MarkerReader::header_lens`].
fn len_bit(len: usize) -> u64 {
    1 << len.min(63)
}

/// Applies one source value; true when it decided the marker (set or invalid).
fn decide(m: &mut Markers, invalid: &mut InvalidSet, kind: MarkerKind, raw: &[u8]) -> bool {
    match m.apply(kind, raw) {
        Outcome::Empty => false,
        Outcome::Set => true,
        Outcome::Invalid => {
            invalid.insert(kind);
            true
        }
    }
}

fn add_name(list: &mut Vec<(Box<[u8]>, u8)>, name: &str, kind: MarkerKind) {
    match list.iter_mut().find(|(n, _)| **n == *name.as_bytes()) {
        Some((_, mask)) => *mask |= bit(kind),
        None => list.push((name.as_bytes().into(), bit(kind))),
    }
}

// === cookies ===

/// The first value of cookie `name` across all `Cookie` headers, surrounding double
/// quotes stripped; `rules` uses it for `cookie:` conditions. `None` when absent or when
/// that first value is not UTF-8 (it could not equal a configured value anyway).
pub(crate) fn cookie<'a>(headers: impl Into<Fields<'a>>, name: &str) -> Option<&'a str> {
    cookie_pairs(headers.into())
        .find(|(n, _)| *n == name.as_bytes())
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// Every `name=value` pair of every `Cookie` header, in order, leniently (RFC 6265 §5.4
/// as browsers and servers practise it): split on `;` only (so commas stay inside
/// values), spaces around `;` and `=` trimmed, surrounding double quotes stripped, no
/// percent-decoding; pairs without `=` or with an empty name are skipped.
fn cookie_pairs(headers: Fields<'_>) -> impl Iterator<Item = (&[u8], &[u8])> {
    pairs(headers.get_all("cookie"))
}

/// The `name=value` pairs of `Cookie` values (see [`cookie_pairs`]).
fn pairs<'a>(values: impl Iterator<Item = &'a [u8]>) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
    values.flat_map(|v| Pieces(Some(v))).filter_map(|piece| {
        let eq = memchr::memchr(b'=', piece)?;
        let name = trim_ows(&piece[..eq]);
        if name.is_empty() {
            return None;
        }
        let mut value = trim_ows(&piece[eq + 1..]);
        if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
            value = &value[1..value.len() - 1];
        }
        Some((name, value))
    })
}

/// The `;`-separated pieces of a `Cookie` value, as `split` gives them, found with
/// `memchr`: a browser's `Cookie` field runs to kilobytes, and a split that tests byte
/// by byte made most of the console's marker cost (~17 instructions a byte).
struct Pieces<'a>(Option<&'a [u8]>);

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.0?;
        match memchr::memchr(b';', rest) {
            Some(i) => {
                self.0 = Some(&rest[i + 1..]);
                Some(&rest[..i])
            }
            None => {
                self.0 = None;
                Some(rest)
            }
        }
    }
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space, `%XX` a byte, a stray
/// `%` itself), as `form_urlencoded` does, but on bytes and borrowing when there is
/// nothing to decode, so only encoded values allocate.
pub(super) fn form_decode(s: &[u8]) -> Cow<'_, [u8]> {
    if !s.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                s.get(i + 1).and_then(|&b| hex(b)),
                s.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
