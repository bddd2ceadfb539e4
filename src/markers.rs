//! Identity markers: typed values read from a request's headers, cookies and query.
//!
//! This runs on every request, so [`MarkerReader::read`] decides from borrowed bytes: one
//! lookup per marker header, one scan over the `Cookie` headers for all markers at once,
//! one scan over the query string, and no allocation unless a matching query value is
//! percent-encoded.

use std::borrow::Cow;
use std::fmt;

use http::header::COOKIE;
use http::{HeaderMap, HeaderName};

use crate::config::MarkerNames;

/// The six built-in markers, in a fixed order that indexes per-marker tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MarkerKind {
    /// The end user's UID (C-end), `xdw-kefu-uid`.
    Uid = 0,
    /// The staff member's UID (B-end), `xdw-kefu-agent-uid`.
    StaffUid = 1,
    /// The staff member's group ids, `xdw-kefu-agent-gid`.
    AgentGid = 2,
    /// The entry point the conversation came in through, `xdw-kefu-entryid`.
    EntryId = 3,
    /// The client app's version, `xdw-app-version`.
    AppVersion = 4,
    /// The device kind, `xdw-device-id`.
    Device = 5,
}

impl MarkerKind {
    /// Every marker, in index order.
    pub const ALL: [MarkerKind; 6] = [
        MarkerKind::Uid,
        MarkerKind::StaffUid,
        MarkerKind::AgentGid,
        MarkerKind::EntryId,
        MarkerKind::AppVersion,
        MarkerKind::Device,
    ];

    /// The marker's name in rules, config, `/explain` and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            MarkerKind::Uid => "uid",
            MarkerKind::StaffUid => "staff_uid",
            MarkerKind::AgentGid => "agent_gid",
            MarkerKind::EntryId => "entry_id",
            MarkerKind::AppVersion => "app_version",
            MarkerKind::Device => "device",
        }
    }

    /// The default header, cookie and query parameter name.
    pub fn default_source(self) -> &'static str {
        match self {
            MarkerKind::Uid => "xdw-kefu-uid",
            MarkerKind::StaffUid => "xdw-kefu-agent-uid",
            MarkerKind::AgentGid => "xdw-kefu-agent-gid",
            MarkerKind::EntryId => "xdw-kefu-entryid",
            MarkerKind::AppVersion => "xdw-app-version",
            MarkerKind::Device => "xdw-device-id",
        }
    }

    /// Looks a marker up by its name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

// === impl Version ===

/// A client version as rules compare it: up to four numeric parts, missing parts 0, so
/// `5.2` = `5.2.0` = `5.2.0.0` and `5.10.0 > 5.9.0` (parts compare as numbers, not text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version(pub [u32; 4]);

impl Version {
    /// Parses `5.2.0`, `v5.2` (or `V5.2`), `6`, `5.2.0-beta+42` (the suffix after `-` or `+` is
    /// ignored: app stores append build tags that must not change the comparison).
    /// `None` for anything else (empty parts, non-digits, more than four parts, a part
    /// over `u32::MAX`).
    pub fn parse(s: &str) -> Option<Version> {
        Self::parse_bytes(s.as_bytes())
    }

    fn parse_bytes(s: &[u8]) -> Option<Version> {
        let s = trim_ows(s);
        let s = match s.first() {
            Some(b'v') | Some(b'V') => &s[1..],
            _ => s,
        };
        let end = s
            .iter()
            .position(|&b| b == b'-' || b == b'+')
            .unwrap_or(s.len());
        let s = &s[..end];
        if s.is_empty() {
            return None;
        }
        let mut parts = [0u32; 4];
        for (i, part) in s.split(|&b| b == b'.').enumerate() {
            let slot = parts.get_mut(i)?;
            let n = parse_u64(part)?;
            *slot = u32::try_from(n).ok()?;
        }
        Some(Version(parts))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a}.{b}.{c}.{d}")
    }
}

// === impl Device ===

/// The longest device value we keep; longer ones are invalid (SPEC §1).
const DEVICE_MAX: usize = 64;

/// A device name, lowercased, stored inline so that reading it from a request never
/// allocates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Device {
    len: u8,
    buf: [u8; DEVICE_MAX],
}

impl Device {
    /// Trims surrounding spaces and tabs and lowercases; `None` when the result is empty,
    /// longer than 64 bytes, or holds a byte outside printable ASCII (0x20–0x7E): such a
    /// value can never equal a configured device name.
    pub fn parse(s: &str) -> Option<Device> {
        Self::parse_bytes(s.as_bytes())
    }

    fn parse_bytes(s: &[u8]) -> Option<Device> {
        let s = trim_ows(s);
        if s.is_empty() || s.len() > DEVICE_MAX || !s.iter().all(|&b| (0x20..=0x7e).contains(&b)) {
            return None;
        }
        let mut buf = [0u8; DEVICE_MAX];
        for (d, &b) in buf.iter_mut().zip(s) {
            *d = b.to_ascii_lowercase();
        }
        Some(Device {
            len: s.len() as u8,
            buf,
        })
    }

    /// The lowercased name; also the `percent` key for `of: device`.
    pub fn as_str(&self) -> &str {
        // Only printable ASCII is ever stored, so this cannot fail.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

// === impl GidList ===

/// How many group ids fit without a heap allocation; staff rarely belong to more.
const GID_INLINE: usize = 8;

/// The staff member's group ids, in request order. Inline up to eight ids so that the
/// common request allocates nothing; spills to the heap beyond.
#[derive(Clone)]
pub struct GidList(GidRepr);

#[derive(Clone)]
enum GidRepr {
    Inline { len: u8, ids: [u64; GID_INLINE] },
    Heap(Vec<u64>),
}

impl Default for GidList {
    fn default() -> Self {
        GidList(GidRepr::Inline {
            len: 0,
            ids: [0; GID_INLINE],
        })
    }
}

impl GidList {
    /// Appends a group id; used while parsing and by tests that build markers by hand.
    pub fn push(&mut self, id: u64) {
        match &mut self.0 {
            GidRepr::Inline { len, ids } => {
                let n = usize::from(*len);
                if n < GID_INLINE {
                    ids[n] = id;
                    *len += 1;
                } else {
                    let mut v = Vec::with_capacity(GID_INLINE * 2);
                    v.extend_from_slice(ids);
                    v.push(id);
                    self.0 = GidRepr::Heap(v);
                }
            }
            GidRepr::Heap(v) => v.push(id),
        }
    }

    /// The ids, so that rules can test "any of them".
    pub fn as_slice(&self) -> &[u64] {
        match &self.0 {
            GidRepr::Inline { len, ids } => &ids[..usize::from(*len)],
            GidRepr::Heap(v) => v,
        }
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// No ids: the marker is absent.
    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// Empties the list, keeping nothing on the heap.
    pub fn clear(&mut self) {
        *self = GidList::default();
    }
}

impl PartialEq for GidList {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for GidList {}

impl fmt::Debug for GidList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl FromIterator<u64> for GidList {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        let mut l = GidList::default();
        for id in iter {
            l.push(id);
        }
        l
    }
}

// === impl Markers ===

/// The markers of one request, typed. `None` (or an empty `agent_gid`) means absent:
/// not sent, sent empty, or sent invalid; every rule condition on it is false.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Markers {
    /// `uid`.
    pub uid: Option<u64>,
    /// `staff_uid`.
    pub staff_uid: Option<u64>,
    /// `agent_gid`: the valid tokens, in request order.
    pub agent_gid: GidList,
    /// `entry_id`.
    pub entry_id: Option<u64>,
    /// `app_version`.
    pub app_version: Option<Version>,
    /// `device`, lowercased.
    pub device: Option<Device>,
}

/// A marker value that does not parse. `/explain` reports it; the request path counts it
/// in `graylane_marker_invalid_total` instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for marker {}", .0.name())]
pub struct InvalidMarker(pub MarkerKind);

/// What one source value did to a marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Empty after trimming: not present, the next source may decide.
    Empty,
    /// Parsed and stored.
    Set,
    /// Present but invalid: the marker is absent (valid `agent_gid` tokens excepted) and
    /// no later source is consulted.
    Invalid,
}

impl Markers {
    /// Sets one marker from text exactly as a request value would be parsed, for
    /// `/explain` and `graylane explain`, where markers are given by name. An empty value
    /// leaves the marker unset and is `Ok`. On an invalid value the marker is unset and
    /// `Err` is returned, except that the valid tokens of an `agent_gid` list are kept
    /// (as on the request path).
    pub fn set_from_str(&mut self, kind: MarkerKind, raw: &str) -> Result<(), InvalidMarker> {
        match self.apply(kind, raw.as_bytes()) {
            Outcome::Empty | Outcome::Set => Ok(()),
            Outcome::Invalid => Err(InvalidMarker(kind)),
        }
    }

    /// Clears `kind`, then parses `raw` into it.
    fn apply(&mut self, kind: MarkerKind, raw: &[u8]) -> Outcome {
        self.clear(kind);
        let raw = trim_ows(raw);
        if raw.is_empty() {
            return Outcome::Empty;
        }
        if !raw.iter().all(|&b| is_visible_ascii(b)) {
            return Outcome::Invalid;
        }
        let ok = match kind {
            MarkerKind::Uid => set(&mut self.uid, parse_u64(raw)),
            MarkerKind::StaffUid => set(&mut self.staff_uid, parse_u64(raw)),
            MarkerKind::EntryId => set(&mut self.entry_id, parse_u64(raw)),
            MarkerKind::AppVersion => set(&mut self.app_version, Version::parse_bytes(raw)),
            MarkerKind::Device => set(&mut self.device, Device::parse_bytes(raw)),
            MarkerKind::AgentGid => {
                let mut bad = false;
                for token in raw.split(|&b| b == b',') {
                    let token = trim_ows(token);
                    if token.is_empty() {
                        // `1,2,` and `1, ,2`: a stray separator is not a wrong id.
                        continue;
                    }
                    match parse_u64(token) {
                        Some(id) => self.agent_gid.push(id),
                        None => bad = true,
                    }
                }
                // Only separators (`,`) is as invalid as a junk token.
                !bad && !self.agent_gid.is_empty()
            }
        };
        if ok {
            Outcome::Set
        } else {
            Outcome::Invalid
        }
    }

    fn clear(&mut self, kind: MarkerKind) {
        match kind {
            MarkerKind::Uid => self.uid = None,
            MarkerKind::StaffUid => self.staff_uid = None,
            MarkerKind::AgentGid => self.agent_gid.clear(),
            MarkerKind::EntryId => self.entry_id = None,
            MarkerKind::AppVersion => self.app_version = None,
            MarkerKind::Device => self.device = None,
        }
    }
}

fn set<T>(slot: &mut Option<T>, v: Option<T>) -> bool {
    let ok = v.is_some();
    *slot = v;
    ok
}

// === impl InvalidSet ===

/// The markers a request sent with an invalid value: each counts once in
/// `graylane_marker_invalid_total{marker}`. A bitset so that reading markers stays
/// allocation-free.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InvalidSet(u8);

impl InvalidSet {
    /// Adds a marker.
    pub fn insert(&mut self, kind: MarkerKind) {
        self.0 |= bit(kind);
    }

    /// Whether `kind` was invalid.
    pub fn contains(&self, kind: MarkerKind) -> bool {
        self.0 & bit(kind) != 0
    }

    /// No invalid marker: the common case, checked before touching any counter.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// The invalid markers, in [`MarkerKind`] order.
    pub fn iter(&self) -> impl Iterator<Item = MarkerKind> + '_ {
        let bits = self.0;
        MarkerKind::ALL
            .into_iter()
            .filter(move |&k| bits & bit(k) != 0)
    }
}

fn bit(kind: MarkerKind) -> u8 {
    1 << (kind as u8)
}

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
        Self {
            headers,
            header_mask,
            cookies,
            cookie_mask,
            queries,
            query_mask,
        }
    }

    /// Reads the markers of one request (SPEC §1): per marker, the first present source
    /// among header, cookie and query decides; an invalid value makes the marker absent
    /// and lands in the returned [`InvalidSet`]. `query` is the raw query string without
    /// `?`. Allocates nothing unless a matching query value is percent-encoded or a
    /// request carries more than eight group ids.
    pub fn read(&self, headers: &HeaderMap, query: Option<&str>) -> (Markers, InvalidSet) {
        let mut m = Markers::default();
        let mut invalid = InvalidSet::default();
        // One pass over the fields (a request has a handful) instead of a hashed lookup
        // per marker: comparing names costs less than hashing six of them. A name seen
        // first is its first value, as `HeaderMap::get` would give.
        let mut from_header: [Option<&[u8]>; 6] = [None; 6];
        let mut has_cookie = false;
        let mut left = self.header_mask;
        for (name, value) in headers {
            if *name == COOKIE {
                has_cookie = true;
            } else if left != 0 {
                for kind in MarkerKind::ALL {
                    if left & bit(kind) != 0 && self.headers[kind as usize].as_ref() == Some(name) {
                        from_header[kind as usize] = Some(value.as_bytes());
                        left &= !bit(kind);
                    }
                }
            } else if has_cookie || self.cookie_mask == 0 {
                break;
            }
        }
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
            let mut found: [Option<&[u8]>; 6] = [None; 6];
            let mut left = wanted;
            for (name, value) in cookie_pairs(headers) {
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
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookie_pairs(headers)
        .find(|(n, _)| *n == name.as_bytes())
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// Every `name=value` pair of every `Cookie` header, in order, leniently (RFC 6265 §5.4
/// as browsers and servers practise it): split on `;` only (so commas stay inside
/// values), spaces around `;` and `=` trimmed, surrounding double quotes stripped, no
/// percent-decoding; pairs without `=` or with an empty name are skipped.
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(|piece| {
            let eq = piece.iter().position(|&b| b == b'=')?;
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

// === byte helpers ===

/// Spaces and tabs around a value (HTTP's OWS) never matter.
fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &s[start..end]
}

/// What `http` calls visible ASCII: a header value outside it is not text we can trust.
fn is_visible_ascii(b: u8) -> bool {
    (0x20..0x7f).contains(&b) || b == b'\t'
}

/// Decimal digits only (leading zeros fine, no sign), fitting u64. Shared with the rules
/// compiler, so an id in `rules.yaml` or an `in_file` parses exactly like a marker.
pub(crate) fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d))?;
    }
    Some(n)
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space, `%XX` a byte, a stray
/// `%` itself), as `form_urlencoded` does, but on bytes and borrowing when there is
/// nothing to decode, so only encoded values allocate.
fn form_decode(s: &[u8]) -> Cow<'_, [u8]> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MarkerSource;
    use http::HeaderValue;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn read(pairs: &[(&str, &str)], query: Option<&str>) -> (Markers, InvalidSet) {
        MarkerReader::default().read(&hm(pairs), query)
    }

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn versions_parse_and_order_numerically() {
        assert_eq!(v("5.2"), Version([5, 2, 0, 0]));
        assert_eq!(v("5.2"), v("5.2.0"));
        assert_eq!(v("6"), Version([6, 0, 0, 0]));
        assert_eq!(v("v5.2.0"), v("5.2.0"));
        assert_eq!(v("5.2.0-beta.1+42"), v("5.2.0"));
        assert_eq!(v("5.2.0+build"), v("5.2"));
        assert_eq!(v("1.2.3.4"), Version([1, 2, 3, 4]));
        assert_eq!(v("007.01"), Version([7, 1, 0, 0]));
        assert!(v("5.10.0") > v("5.9.0"));
        assert!(v("5.2.0.1") > v("5.2"));
        assert!(v("10") > v("9.99.99.99"));
        for bad in [
            "",
            "v",
            "5.",
            ".5",
            "5..1",
            "a",
            "5.a",
            "1.2.3.4.5",
            "4294967296",
            "-1",
            "+1",
            "5 .2",
            "٥",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad:?}");
        }
        assert_eq!(v("4294967295").0[0], u32::MAX);
    }

    #[test]
    fn devices_are_trimmed_lowercased_and_bounded() {
        assert_eq!(Device::parse("  iOS ").unwrap().as_str(), "ios");
        assert_eq!(
            Device::parse("Huawei Mate 60").unwrap().as_str(),
            "huawei mate 60"
        );
        assert_eq!(Device::parse(""), None);
        assert_eq!(Device::parse("   "), None);
        let max = "A".repeat(64);
        assert_eq!(Device::parse(&max).unwrap().as_str(), "a".repeat(64));
        assert_eq!(Device::parse(&"a".repeat(65)), None);
        assert_eq!(Device::parse("i\tos"), None);
        assert_eq!(Device::parse("iÖS"), None);
        assert_eq!(format!("{:?}", Device::parse("X").unwrap()), "\"x\"");
    }

    #[test]
    fn gid_list_spills_beyond_eight() {
        let mut l = GidList::default();
        assert!(l.is_empty());
        for i in 0..8 {
            l.push(i);
        }
        assert!(matches!(l.0, GidRepr::Inline { .. }));
        l.push(8);
        l.push(9);
        assert!(matches!(l.0, GidRepr::Heap(_)));
        assert_eq!(l.as_slice(), (0..10).collect::<Vec<_>>());
        assert_eq!(l, (0..10).collect::<GidList>());
        l.clear();
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn numbers_are_decimal_u64_with_leading_zeros() {
        let (m, inv) = read(&[("xdw-kefu-uid", "007")], None);
        assert_eq!(m.uid, Some(7));
        assert!(inv.is_empty());
        let (m, _) = read(&[("xdw-kefu-uid", "18446744073709551615")], None);
        assert_eq!(m.uid, Some(u64::MAX));
        for bad in [
            "18446744073709551616",
            "+5",
            "-5",
            "5x",
            "0x10",
            "1 2",
            "1.0",
            "1e3",
        ] {
            let (m, inv) = read(&[("xdw-kefu-uid", bad)], None);
            assert_eq!(m.uid, None, "{bad}");
            assert!(inv.contains(MarkerKind::Uid), "{bad}");
            assert_eq!(inv.iter().collect::<Vec<_>>(), vec![MarkerKind::Uid]);
        }
    }

    #[test]
    fn every_marker_reads_from_its_default_header() {
        let (m, inv) = read(
            &[
                ("xdw-kefu-uid", "112233"),
                ("xdw-kefu-agent-uid", "9001"),
                ("xdw-kefu-agent-gid", "141338365001, 141338365002"),
                ("xdw-kefu-entryid", "121338361120"),
                ("xdw-app-version", "5.2.0"),
                ("xdw-device-id", "iOS"),
            ],
            None,
        );
        assert!(inv.is_empty());
        assert_eq!(m.uid, Some(112233));
        assert_eq!(m.staff_uid, Some(9001));
        assert_eq!(m.agent_gid.as_slice(), &[141338365001, 141338365002]);
        assert_eq!(m.entry_id, Some(121338361120));
        assert_eq!(m.app_version, Some(v("5.2.0")));
        assert_eq!(
            m.device.map(|d| d.as_str().to_owned()).as_deref(),
            Some("ios")
        );
    }

    #[test]
    fn precedence_is_header_then_cookie_then_query() {
        let q = Some("xdw-kefu-uid=3");
        let (m, _) = read(&[("xdw-kefu-uid", "1"), ("cookie", "xdw-kefu-uid=2")], q);
        assert_eq!(m.uid, Some(1));
        let (m, _) = read(&[("cookie", "xdw-kefu-uid=2")], q);
        assert_eq!(m.uid, Some(2));
        let (m, _) = read(&[], q);
        assert_eq!(m.uid, Some(3));
        // Empty counts as not present: the next source decides.
        let (m, inv) = read(&[("xdw-kefu-uid", ""), ("cookie", "xdw-kefu-uid=")], q);
        assert_eq!(m.uid, Some(3));
        assert!(inv.is_empty());
        let (m, inv) = read(&[("xdw-kefu-uid", " "), ("cookie", "xdw-kefu-uid=\"\"")], q);
        assert_eq!(m.uid, Some(3));
        assert!(inv.is_empty());
    }

    #[test]
    fn invalid_first_source_decides_and_counts_once() {
        let q = Some("xdw-kefu-uid=3");
        let (m, inv) = read(&[("xdw-kefu-uid", "abc"), ("cookie", "xdw-kefu-uid=2")], q);
        assert_eq!(m.uid, None);
        assert_eq!(inv.iter().collect::<Vec<_>>(), vec![MarkerKind::Uid]);
        let (m, inv) = read(&[("cookie", "xdw-kefu-uid=abc")], q);
        assert_eq!(m.uid, None);
        assert!(inv.contains(MarkerKind::Uid));
        let (m, inv) = read(&[], Some("xdw-kefu-uid=abc"));
        assert_eq!(m.uid, None);
        assert!(inv.contains(MarkerKind::Uid));
        // Several invalid markers each count once.
        let (_, inv) = read(
            &[
                ("xdw-kefu-uid", "x"),
                ("xdw-app-version", "five"),
                ("xdw-device-id", &"d".repeat(65)),
            ],
            None,
        );
        assert_eq!(
            inv.iter().collect::<Vec<_>>(),
            vec![MarkerKind::Uid, MarkerKind::AppVersion, MarkerKind::Device]
        );
        assert!(!inv.contains(MarkerKind::StaffUid));
    }

    #[test]
    fn header_sent_twice_uses_the_first() {
        let (m, inv) = read(&[("xdw-kefu-uid", "1"), ("xdw-kefu-uid", "2")], None);
        assert_eq!(m.uid, Some(1));
        assert!(inv.is_empty());
        let (m, inv) = read(&[("xdw-kefu-uid", "1"), ("xdw-kefu-uid", "junk")], None);
        assert_eq!(m.uid, Some(1));
        assert!(inv.is_empty());
    }

    #[test]
    fn underscore_header_names_are_not_dashes() {
        let (m, _) = read(&[("xdw_kefu_uid", "1")], None);
        assert_eq!(m.uid, None);
    }

    #[test]
    fn non_ascii_header_values_are_invalid() {
        let mut h = HeaderMap::new();
        h.insert("xdw-kefu-uid", HeaderValue::from_bytes(b"12\xff").unwrap());
        h.insert(
            "xdw-device-id",
            HeaderValue::from_bytes("iÖS".as_bytes()).unwrap(),
        );
        h.insert(
            "xdw-kefu-agent-gid",
            HeaderValue::from_bytes(b"1,\xc3\xa9,2").unwrap(),
        );
        h.insert(
            "cookie",
            HeaderValue::from_static("xdw-kefu-uid=5; xdw-device-id=ios"),
        );
        let (m, inv) = MarkerReader::default().read(&h, None);
        assert_eq!(m.uid, None);
        assert_eq!(m.device, None);
        assert!(m.agent_gid.is_empty());
        assert_eq!(
            inv.iter().collect::<Vec<_>>(),
            vec![MarkerKind::Uid, MarkerKind::AgentGid, MarkerKind::Device]
        );
    }

    #[test]
    fn agent_gid_skips_junk_tokens_and_counts_once() {
        let (m, inv) = read(&[("xdw-kefu-agent-gid", " 1 ,2,  x ,, 3 ,-4, ")], None);
        assert_eq!(m.agent_gid.as_slice(), &[1, 2, 3]);
        assert_eq!(inv.iter().collect::<Vec<_>>(), vec![MarkerKind::AgentGid]);
        let (m, inv) = read(&[("xdw-kefu-agent-gid", "1, 2,")], None);
        assert_eq!(m.agent_gid.as_slice(), &[1, 2]);
        assert!(inv.is_empty());
        let (m, inv) = read(&[("xdw-kefu-agent-gid", ",")], None);
        assert!(m.agent_gid.is_empty());
        assert!(inv.contains(MarkerKind::AgentGid));
        // Invalid tokens do not fall through to the cookie.
        let (m, _) = read(
            &[
                ("xdw-kefu-agent-gid", "x"),
                ("cookie", "xdw-kefu-agent-gid=7"),
            ],
            None,
        );
        assert!(m.agent_gid.is_empty());
        let many: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        let (m, _) = read(&[("xdw-kefu-agent-gid", &many.join(","))], None);
        assert_eq!(m.agent_gid.as_slice(), (0..20).collect::<Vec<u64>>());
        // Commas inside a cookie value are fine.
        let (m, inv) = read(&[("cookie", "a=1; xdw-kefu-agent-gid=\"5, 6\"; b=2")], None);
        assert_eq!(m.agent_gid.as_slice(), &[5, 6]);
        assert!(inv.is_empty());
    }

    #[test]
    fn cookies_are_parsed_leniently() {
        let h = hm(&[
            ("cookie", "a=1;b=2 ;  xdw-kefu-uid = \"42\" ; c"),
            (
                "cookie",
                "xdw-kefu-uid=7; xdw-device-id=Android%20X; xdw-app-version=5.9.0",
            ),
        ]);
        let (m, inv) = MarkerReader::default().read(&h, None);
        assert_eq!(m.uid, Some(42), "first occurrence wins");
        // No percent-decoding in cookies: `%` is not printable-invalid, just kept.
        assert_eq!(
            m.device.map(|d| d.as_str().to_owned()).as_deref(),
            Some("android%20x")
        );
        assert_eq!(m.app_version, Some(v("5.9")));
        assert!(inv.is_empty());

        assert_eq!(cookie(&h, "a"), Some("1"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "xdw-kefu-uid"), Some("42"));
        assert_eq!(cookie(&h, "c"), None, "no '=': skipped");
        assert_eq!(cookie(&h, "A"), None, "names are case-sensitive");
        assert_eq!(cookie(&h, "missing"), None);

        let h = hm(&[("cookie", "x=\"a,b; \"; y=\"\"; z=\"; w= v w ")]);
        assert_eq!(cookie(&h, "x"), Some("\"a,b"));
        assert_eq!(cookie(&h, "y"), Some(""));
        assert_eq!(cookie(&h, "z"), Some("\""));
        assert_eq!(cookie(&h, "w"), Some("v w"));

        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            HeaderValue::from_bytes(b"bin=\xff; ok=1").unwrap(),
        );
        assert_eq!(cookie(&h, "bin"), None);
        assert_eq!(cookie(&h, "ok"), Some("1"));
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            HeaderValue::from_bytes(b"xdw-kefu-uid=\xff1").unwrap(),
        );
        let (m, inv) = MarkerReader::default().read(&h, Some("xdw-kefu-uid=3"));
        assert_eq!(m.uid, None);
        assert!(inv.contains(MarkerKind::Uid));
    }

    #[test]
    fn ten_thousand_cookies() {
        let mut s = String::new();
        for i in 0..10_000 {
            s.push_str(&format!("c{i}=v{i}; "));
        }
        s.push_str("xdw-kefu-uid=99; xdw-kefu-entryid=5");
        let h = hm(&[("cookie", &s)]);
        let (m, inv) = MarkerReader::default().read(&h, None);
        assert_eq!(m.uid, Some(99));
        assert_eq!(m.entry_id, Some(5));
        assert!(inv.is_empty());
        assert_eq!(cookie(&h, "c9999"), Some("v9999"));
        // Split across many headers, as HTTP/2 clients send them.
        let mut h = HeaderMap::new();
        for i in 0..10_000 {
            h.append(
                "cookie",
                HeaderValue::from_str(&format!("c{i}=v{i}")).unwrap(),
            );
        }
        h.append("cookie", HeaderValue::from_static("xdw-kefu-uid=1"));
        assert_eq!(MarkerReader::default().read(&h, None).0.uid, Some(1));
    }

    #[test]
    fn query_values_are_form_decoded() {
        let (m, inv) = read(
            &[],
            Some("a=%zz&&xdw-device-id=Huawei+Mate%2060&xdw-kefu-uid=%31%32&xdw%2Dkefu%2Dentryid=9&xdw-kefu-uid=5"),
        );
        assert_eq!(
            m.device.map(|d| d.as_str().to_owned()).as_deref(),
            Some("huawei mate 60")
        );
        assert_eq!(m.uid, Some(12), "first occurrence wins");
        assert_eq!(m.entry_id, Some(9), "names are decoded too");
        assert!(inv.is_empty());
        let (m, inv) = read(
            &[],
            Some("xdw-kefu-uid&xdw-kefu-agent-uid=&xdw-app-version=%FF"),
        );
        assert_eq!(m.uid, None);
        assert_eq!(m.staff_uid, None);
        assert_eq!(inv.iter().collect::<Vec<_>>(), vec![MarkerKind::AppVersion]);
    }

    #[test]
    fn form_decode_agrees_with_form_urlencoded() {
        for s in [
            "a",
            "a+b",
            "%41%4a%4A",
            "%",
            "%4",
            "%zz",
            "100%",
            "x%2By",
            "%e4%b8%ad",
            "+%20+",
        ] {
            let ours = form_decode(s.as_bytes());
            let theirs: Vec<_> = form_urlencoded::parse(s.as_bytes()).collect();
            assert_eq!(String::from_utf8_lossy(&ours), theirs[0].0, "{s}");
        }
        assert!(matches!(form_decode(b"plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn configured_names_and_disabled_sources() {
        let mut names = MarkerNames::default();
        names.sources[MarkerKind::Uid as usize] = MarkerSource {
            header: Some("x-user".into()),
            cookie: None,
            query: Some("u".into()),
        };
        // Two markers may share a source name.
        names.sources[MarkerKind::StaffUid as usize] = MarkerSource {
            header: None,
            cookie: Some("id".into()),
            query: Some("u".into()),
        };
        names.sources[MarkerKind::EntryId as usize] = MarkerSource {
            header: None,
            cookie: Some("id".into()),
            query: None,
        };
        let r = MarkerReader::new(&names);
        let h = hm(&[
            ("xdw-kefu-uid", "1"),
            ("cookie", "xdw-kefu-uid=2; id=8"),
            ("X-User", ""),
        ]);
        let (m, _) = r.read(&h, Some("u=3"));
        assert_eq!(m.uid, Some(3), "header empty, cookie off, query decides");
        assert_eq!(m.staff_uid, Some(8));
        assert_eq!(m.entry_id, Some(8));
        let (m, _) = r.read(&hm(&[("x-user", "4")]), Some("u=3"));
        assert_eq!(m.uid, Some(4));
        assert_eq!(m.staff_uid, Some(3));
    }

    #[test]
    fn marker_headers_are_removed_for_untrusted_peers() {
        let mut h = hm(&[
            ("xdw-kefu-uid", "1"),
            ("xdw-kefu-uid", "2"),
            ("xdw-device-id", "ios"),
            ("cookie", "xdw-kefu-uid=1"),
            ("x-other", "y"),
        ]);
        MarkerReader::default().remove_marker_headers(&mut h);
        assert_eq!(h.len(), 2);
        assert!(h.contains_key("cookie") && h.contains_key("x-other"));
    }

    #[test]
    fn set_from_str_parses_like_requests() {
        let mut m = Markers::default();
        assert_eq!(m.set_from_str(MarkerKind::Uid, "007"), Ok(()));
        assert_eq!(m.uid, Some(7));
        assert_eq!(m.set_from_str(MarkerKind::Uid, ""), Ok(()));
        assert_eq!(m.uid, None);
        assert_eq!(
            m.set_from_str(MarkerKind::Uid, "x"),
            Err(InvalidMarker(MarkerKind::Uid))
        );
        assert_eq!(m.uid, None);
        assert_eq!(
            m.set_from_str(MarkerKind::AgentGid, "1, x, 2"),
            Err(InvalidMarker(MarkerKind::AgentGid))
        );
        assert_eq!(m.agent_gid.as_slice(), &[1, 2]);
        assert_eq!(m.set_from_str(MarkerKind::AppVersion, "v5.10"), Ok(()));
        assert_eq!(m.app_version, Some(Version([5, 10, 0, 0])));
        assert_eq!(m.set_from_str(MarkerKind::Device, "IOS"), Ok(()));
        assert_eq!(m.device, Device::parse("ios"));
        assert_eq!(
            InvalidMarker(MarkerKind::EntryId).to_string(),
            "invalid value for marker entry_id"
        );
    }

    #[test]
    fn no_markers_no_work() {
        let (m, inv) = read(&[("host", "x")], None);
        assert_eq!(m, Markers::default());
        assert!(inv.is_empty());
    }

    #[test]
    fn empty_query_value_lets_a_later_one_decide() {
        let r = MarkerReader::new(&crate::config::MarkerNames::default());
        let (m, inv) = r.read(&HeaderMap::new(), Some("xdw-kefu-uid=&xdw-kefu-uid=5"));
        assert_eq!(m.uid, Some(5));
        assert!(inv.is_empty());
        let (m, _) = r.read(&HeaderMap::new(), Some("xdw-kefu-uid=7&xdw-kefu-uid=5"));
        assert_eq!(m.uid, Some(7));
    }
}
