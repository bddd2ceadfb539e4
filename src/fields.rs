//! A request head's fields as the request path reads and edits them: hyper's header map,
//! or, for a request graylane's own HTTP/1.1 loop read, the head as received. Building a
//! map costs a hashed insert and a name check (and, for a name outside the standard
//! set, an allocation) per field; a head forwarded almost as it came needs none of it,
//! so the loop's requests keep positions in the received bytes and mark what the
//! upstream head leaves out, as haproxy and nginx keep the received head and edit it.

use std::ops::Range;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The fields of a request head, in either form, read only. Names are lowercase in both
/// (the own loop lowercases them as it reads the head, as `http` does for a map).
#[derive(Debug, Clone, Copy)]
pub enum Fields<'a> {
    /// hyper's requests (and every request that is not the own loop's).
    Map(&'a HeaderMap),
    /// The own loop's requests.
    Received(&'a Received),
}

impl<'a> From<&'a HeaderMap> for Fields<'a> {
    fn from(map: &'a HeaderMap) -> Self {
        Fields::Map(map)
    }
}

impl<'a> Fields<'a> {
    /// A request's fields: the own loop's head when there is one, else the map.
    pub(crate) fn of(map: &'a HeaderMap, received: Option<&'a Received>) -> Self {
        match received {
            Some(r) => Fields::Received(r),
            None => Fields::Map(map),
        }
    }

    /// Every field as (name, value), in order.
    pub(crate) fn iter(self) -> Iter<'a> {
        match self {
            Fields::Map(m) => Iter::Map(m.iter()),
            Fields::Received(r) => Iter::Received {
                head: &r.head,
                spans: r.spans.iter(),
                extra: r.extra.iter(),
            },
        }
    }

    /// The first value of `name`, as `HeaderMap::get` gives it.
    pub(crate) fn get(self, name: &HeaderName) -> Option<&'a [u8]> {
        match self {
            Fields::Map(m) => m.get(name).map(HeaderValue::as_bytes),
            Fields::Received(_) => self.get_all(name.as_str()).next(),
        }
    }

    /// Every value of `name` (lowercase), in order.
    pub(crate) fn get_all<'n>(self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + 'n
    where
        'a: 'n,
    {
        let name = name.as_bytes();
        self.iter().filter(move |(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The first `Host` value and whether there is another.
    pub(crate) fn host(self) -> (Option<&'a [u8]>, bool) {
        match self {
            Fields::Map(m) => {
                let mut all = m.get_all(http::header::HOST).into_iter();
                (all.next().map(HeaderValue::as_bytes), all.next().is_some())
            }
            Fields::Received(r) => {
                // (Left out only if a marker header were named `host`.)
                let first = r.tally.host.and_then(|i| r.spans.get(i as usize));
                let kept = first.filter(|&&[ns, ne, _, _]| ns != ne);
                let value = kept.map(|&[_, _, vs, ve]| &r.head[vs as usize..ve as usize]);
                (value, r.tally.hosts > 1)
            }
        }
    }
}

/// What [`Fields::iter`] returns.
pub(crate) enum Iter<'a> {
    Map(http::header::Iter<'a, HeaderValue>),
    Received {
        head: &'a [u8],
        spans: std::slice::Iter<'a, [u32; 4]>,
        extra: std::slice::Iter<'a, (HeaderName, HeaderValue)>,
    },
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Map(it) => it
                .next()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
            Iter::Received { head, spans, extra } => {
                let at = |i: u32| i as usize;
                for &[ns, ne, vs, ve] in spans.by_ref() {
                    if ns != ne {
                        return Some((&head[at(ns)..at(ne)], &head[at(vs)..at(ve)]));
                    }
                }
                extra
                    .next()
                    .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
            }
        }
    }
}

/// A request head as the client sent it, with the edits its upstream copy gets: fields
/// left out, and fields graylane sets in their place, written after the kept ones.
#[derive(Debug, Default)]
pub struct Received {
    head: Bytes,
    /// Name start and end, value start and end, in `head`, in the order received; a
    /// field left out has an empty name (httparse gives none).
    spans: Vec<[u32; 4]>,
    /// Fields graylane set that are not positions in `head` (a joined `x-forwarded-for`).
    extra: Vec<(HeaderName, HeaderValue)>,
    /// What the names said as the head was read.
    tally: Tally,
}

/// What [`Received`] notes of the field names as a head is read, so that routing and the
/// hop-by-hop strip need not look at them again: the loop's parse notes each name while
/// it looks at it for its own checks.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    /// The first `Host` field (its index in `spans`) and how many there are: routing
    /// and the `Host` checks read them on every request.
    host: Option<u32>,
    hosts: u32,
    /// The lengths of the names: bit `n` set when a name is `n` bytes long (bit 63 for
    /// 63 and longer). The edits that look for a few names by name (the hop-by-hop
    /// strip, the `x-forwarded-*` fields) skip a head with no name of their lengths,
    /// the usual case, instead of comparing every name.
    lengths: u64,
}

/// Bit of a name `len` bytes long in [`Tally::lengths`].
fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

/// The bits of names `lens` bytes long, for [`Received::may_have_any`]: made once, for
/// names that are looked for in every request.
pub(crate) fn length_bits(lens: impl IntoIterator<Item = usize>) -> u64 {
    lens.into_iter().fold(0, |bits, len| bits | length_bit(len))
}

/// te, upgrade, connection and keep-alive, proxy-connection, transfer-encoding,
/// proxy-authenticate, proxy-authorization (`proxy::headers` holds the names).
const HOP_BY_HOP_LENGTHS: u64 = 1 << 2 | 1 << 7 | 1 << 10 | 1 << 16 | 1 << 17 | 1 << 18 | 1 << 19;

/// Whether a name this long could be a hop-by-hop field's: most names are ruled out by
/// their length alone, before any comparison.
pub(crate) fn hop_by_hop_length(len: usize) -> bool {
    HOP_BY_HOP_LENGTHS & length_bit(len) != 0
}

impl Tally {
    /// Notes field number `i`, named `name` in any case.
    pub(crate) fn note(&mut self, i: usize, name: &[u8]) {
        self.lengths |= length_bit(name.len());
        if name.len() == 4 && name.eq_ignore_ascii_case(b"host") {
            self.host = self.host.or(Some(i as u32));
            self.hosts += 1;
        }
    }
}

impl Received {
    /// Room for the positions of `count` fields, zeroed, for the next head of a
    /// connection: the loop keeps one `Received` and reuses its allocations.
    pub(crate) fn spans_for(&mut self, count: usize) -> &mut [[u32; 4]] {
        self.spans.clear();
        self.spans.resize(count, [0; 4]);
        &mut self.spans
    }

    /// The positions emptied (their allocation kept) for the next head's, which the head
    /// scanner pushes as it reads them.
    pub(crate) fn spans_emptied(&mut self) -> &mut Vec<[u32; 4]> {
        self.spans.clear();
        &mut self.spans
    }

    /// Each field's position, in the order received.
    pub(crate) fn spans(&self) -> &[[u32; 4]] {
        &self.spans
    }

    /// Takes `head`, whose fields are at the positions filled in since
    /// [`Received::spans_for`] or [`Received::spans_emptied`] (names read as tokens, which
    /// `http` takes too, shorter than 64 KiB and lowercase; values as httparse takes
    /// them), with what `tally` noted of their names.
    pub(crate) fn refill(&mut self, head: Bytes, tally: Tally) {
        self.head = head;
        self.extra.clear();
        self.tally = tally;
    }

    /// Lets go of the head and forgets its fields (the allocations for them stay): the
    /// connection's read buffer it was split from is then usually whole again (not while
    /// a mirror copy still holds the target), and reused rather than replaced for the
    /// next read.
    pub(crate) fn release(&mut self) {
        self.spans.clear();
        self.refill(Bytes::new(), Tally::default());
    }

    /// Whether a field may be hop-by-hop: when not, there is nothing to strip.
    pub(crate) fn maybe_hop_by_hop(&self) -> bool {
        self.tally.lengths & HOP_BY_HOP_LENGTHS != 0
    }

    /// Whether a field with a name of one of the lengths in `lengths` (see
    /// [`length_bits`]) may be among the fields: false only when no name received is as
    /// long (and graylane set none).
    pub(crate) fn may_have_any(&self, lengths: u64) -> bool {
        !self.extra.is_empty() || self.tally.lengths & lengths != 0
    }

    /// Leaves out of the upstream copy every field for which `f(name, value)` is true.
    pub(crate) fn drop_where(&mut self, mut f: impl FnMut(&[u8], &[u8]) -> bool) {
        let head = &self.head;
        for span in &mut self.spans {
            let at = |i: u32| i as usize;
            let [ns, ne, vs, ve] = *span;
            if ns != ne && f(&head[at(ns)..at(ne)], &head[at(vs)..at(ve)]) {
                span[1] = ns;
            }
        }
        self.extra
            .retain(|(n, v)| !f(n.as_str().as_bytes(), v.as_bytes()));
    }

    /// Sets a field graylane made (after the kept ones).
    pub(crate) fn push(&mut self, name: HeaderName, value: HeaderValue) {
        self.extra.push((name, value));
    }

    /// Writes the kept fields as HTTP/1.1 field lines. A run of kept lines that the
    /// client wrote as `name: value` CRLF, one after another, is copied as it came, in
    /// one piece: for most requests that is every line.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let mut lines = LineCopy::new(&self.head);
        for &span in self.spans.iter().filter(|&&[ns, ne, _, _]| ns != ne) {
            lines.field(out, span);
        }
        lines.finish(out);
        for (n, v) in &self.extra {
            put(out, n.as_str().as_bytes(), v.as_bytes());
        }
    }

    /// The fields as a header map, for where one is needed (an HTTP/2 upstream, a mirror
    /// copy): names and values were checked as the map checks them when they came in.
    pub(crate) fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.spans.len() + self.extra.len());
        for (n, v) in Fields::Received(self).iter() {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
                map.append(n, v);
            }
        }
        map
    }
}

/// Writes fields that sit in a received head as HTTP/1.1 field lines: a run of lines
/// written as `name: value` CRLF, one after another, is copied as it came, in one piece
/// (for most heads, every line); any other line is written anew. The request's head
/// (`Received::write`) and an upstream's response head kept as received go out so.
pub(crate) struct LineCopy<'h> {
    head: &'h [u8],
    /// The run of clean lines not yet copied.
    run: Range<usize>,
}

impl<'h> LineCopy<'h> {
    #[inline]
    pub(crate) fn new(head: &'h [u8]) -> Self {
        Self { head, run: 0..0 }
    }

    /// The field at `span` (name start and end, value start and end, in the head), after
    /// the ones before it. Inlined into each writer: called per field, as a call it cost
    /// ~100 instructions per request more than the loops it replaced.
    #[inline(always)]
    pub(crate) fn field(&mut self, out: &mut Vec<u8>, [ns, ne, vs, ve]: [u32; 4]) {
        let head = self.head;
        let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
        let clean = vs == ne + 2
            && head.get(ne..vs) == Some(b": ")
            && head.get(ve..ve + 2) == Some(b"\r\n");
        if clean && !self.run.is_empty() && self.run.end == ns {
            self.run.end = ve + 2;
            return;
        }
        out.extend_from_slice(&head[self.run.clone()]);
        if clean {
            self.run = ns..ve + 2;
        } else {
            self.run = 0..0;
            put(out, &head[ns..ne], &head[vs..ve]);
        }
    }

    /// Copies the run still open.
    #[inline]
    pub(crate) fn finish(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head[self.run]);
    }
}

/// One field line.
pub(crate) fn put(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A value as text when it is visible ASCII (and tabs), as `HeaderValue::to_str` takes it.
pub(crate) fn to_str(v: &[u8]) -> Option<&str> {
    v.iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        .then(|| std::str::from_utf8(v).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::received;

    #[test]
    fn received_fields_read_as_a_map_reads() {
        let mut r = received(
            "GET / HTTP/1.1\r\nHost: t\r\nCookie: a=1\r\nX-A: 1\r\ncookie: b=2\r\nx-a: 2\r\n\r\n",
        );
        let f = Fields::Received(&r);
        assert_eq!(f.get(&http::header::HOST), Some(&b"t"[..]));
        let xa = HeaderName::from_static("x-a");
        assert_eq!(f.get(&xa), Some(&b"1"[..]));
        let cookies: Vec<_> = f.get_all("cookie").collect();
        assert_eq!(cookies, [&b"a=1"[..], b"b=2"]);
        assert_eq!(f.get(&HeaderName::from_static("x-b")), None);

        r.drop_where(|n, _| n == b"x-a");
        r.push(xa.clone(), HeaderValue::from_static("3"));
        let f = Fields::Received(&r);
        assert_eq!(f.get_all("x-a").collect::<Vec<_>>(), [&b"3"[..]]);
        let names: Vec<_> = f.iter().map(|(n, _)| n).collect();
        assert_eq!(names, [&b"host"[..], b"cookie", b"cookie", b"x-a"]);
        let map = r.to_map();
        assert_eq!(map.len(), 4);
        assert_eq!(map.get_all("cookie").iter().count(), 2);
        assert_eq!(map.get("x-a").map(|v| v.as_bytes()), Some(&b"3"[..]));
        r.drop_where(|n, _| n == b"x-a");
        assert_eq!(Fields::Received(&r).iter().count(), 3);
    }

    /// The edits that look for a name skip a head only when no name is as long; a name
    /// of 63 bytes or more stands for every such length.
    #[test]
    fn names_are_looked_for_where_one_is_as_long() {
        let long = "x".repeat(70);
        let r = received(&format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 1.2.3.4\r\n{long}: 1\r\n\r\n"
        ));
        for (name, may) in [
            ("host", true),
            ("x-forwarded-for", true),
            ("x-forwarded-xyz", true),
            ("x-forwarded-proto", false),
            ("x-pool", false),
            ("te", false),
            (&"y".repeat(63), true),
            (&"y".repeat(64), true),
            (&"y".repeat(62), false),
        ] {
            assert_eq!(r.may_have_any(length_bits([name.len()])), may, "{name}");
        }
        assert!(!r.maybe_hop_by_hop());
        let mut r = received("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert!(r.maybe_hop_by_hop());
        let pool = length_bits(["x-pool".len()]);
        assert!(!r.may_have_any(pool));
        r.push(
            HeaderName::from_static("x-a"),
            HeaderValue::from_static("1"),
        );
        assert!(r.may_have_any(pool), "a field graylane set may be any");
    }

    #[test]
    fn text_is_visible_ascii() {
        assert_eq!(to_str(b"a b\t"), Some("a b\t"));
        assert_eq!(to_str("é".as_bytes()), None);
        assert_eq!(to_str(b"a\x7f"), None);
    }
}
