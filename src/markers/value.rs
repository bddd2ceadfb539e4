//! The typed marker values and the byte parsing they share with the rules compiler.

use std::fmt;

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

    pub(super) fn parse_bytes(s: &[u8]) -> Option<Version> {
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

    pub(super) fn parse_bytes(s: &[u8]) -> Option<Device> {
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

// === byte helpers ===

/// Spaces and tabs around a value (HTTP's OWS) never matter.
pub(super) fn trim_ows(s: &[u8]) -> &[u8] {
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
pub(super) fn is_visible_ascii(b: u8) -> bool {
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

/// Decimal digits of `n`, without leading zeros, into `buf`: [`parse_u64`]'s inverse,
/// for ids hashed by their digits and lengths written into heads, without a `String`.
pub(crate) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
