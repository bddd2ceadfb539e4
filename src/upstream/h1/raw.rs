//! Response heads kept as received, for clients that graylane's own HTTP/1.1 loop
//! serves: the fields their copy keeps are positions in the head's bytes, and the loop
//! copies them on, so no header map is built for a head that leaves as it came.
//!
//! What is left out is what the header-map path strips (`proxy::headers::
//! strip_hop_by_hop` on a response that is not a `101`): the hop-by-hop fields, the
//! fields `Connection` names, and a `Content-Length` that `Transfer-Encoding` overrides.

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Method, StatusCode, Version};

use super::codec::{response_framing, Framing, FramingFacts, Head};
use super::H1Error;

/// Most fields a head kept as received may carry; a head with more builds a map.
pub(super) const RAW_MAX: usize = 32;

/// The fields of a response head the client's copy keeps, in the order received.
#[derive(Debug)]
pub(crate) struct RawFields {
    head: Bytes,
    count: usize,
    /// Name start and end, value start and end, in `head`.
    spans: [[u32; 4]; RAW_MAX],
}

impl RawFields {
    /// Each kept field as (name, value), the name lowercase.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans().map(|span| self.field(span))
    }

    /// Where each kept field sits in [`RawFields::head`]: name start and end, value start
    /// and end.
    pub(crate) fn spans(&self) -> impl Iterator<Item = [u32; 4]> + '_ {
        self.spans[..self.count].iter().copied()
    }

    /// The field at `span` as (name, value), the name lowercase.
    pub(crate) fn field(&self, [ns, ne, vs, ve]: [u32; 4]) -> (&[u8], &[u8]) {
        let at = |i: u32| i as usize;
        (&self.head[at(ns)..at(ne)], &self.head[at(vs)..at(ve)])
    }

    /// The head the fields are in.
    pub(crate) fn head(&self) -> &[u8] {
        &self.head
    }
}

/// What a field is to framing and forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Other,
    ContentLength,
    TransferEncoding,
    Connection,
    /// Any other hop-by-hop field: never forwarded.
    HopByHop,
}

/// Classifies a field name (lowercase): by its length first, which rules out most names
/// without a comparison.
pub(super) fn kind(name: &[u8]) -> Kind {
    let is = |n: &str| name == n.as_bytes();
    match name.len() {
        2 if is("te") => Kind::HopByHop,
        7 if is("upgrade") => Kind::HopByHop,
        10 if is("connection") => Kind::Connection,
        10 if is("keep-alive") => Kind::HopByHop,
        14 if is("content-length") => Kind::ContentLength,
        16 if is("proxy-connection") => Kind::HopByHop,
        17 if is("transfer-encoding") => Kind::TransferEncoding,
        18 if is("proxy-authenticate") => Kind::HopByHop,
        19 if is("proxy-authorization") => Kind::HopByHop,
        _ => Kind::Other,
    }
}

/// The head whose fields are at `spans` in `head` (already split off the read buffer),
/// kept as received. `spans.len()` is at most [`RAW_MAX`]; the status is not `101`.
pub(super) fn head(
    head: Bytes,
    spans: &[[u32; 4]],
    status: StatusCode,
    version: Version,
    method: &Method,
) -> Result<Head, H1Error> {
    let field = |[ns, ne, vs, ve]: [u32; 4]| {
        let at = |i: u32| i as usize;
        (&head[at(ns)..at(ne)], &head[at(vs)..at(ve)])
    };
    let mut kinds = [Kind::Other; RAW_MAX];
    let mut facts = FramingFacts::default();
    // Whether a `Connection` names fields other than its own options.
    let mut names_fields = false;
    for (k, &sp) in kinds.iter_mut().zip(spans) {
        let (name, value) = field(sp);
        *k = kind(name);
        if *k != Kind::Other {
            facts.note_kind(*k, value);
        }
        if *k == Kind::Connection {
            names_fields |= tokens(value).any(|t| {
                !t.is_empty()
                    && !t.eq_ignore_ascii_case(b"close")
                    && !t.eq_ignore_ascii_case(b"keep-alive")
            });
        }
    }
    let (framing, definite) = response_framing(status, version, method, &facts)?;
    let chunked = matches!(framing, Framing::Chunked(_));
    let named = |name: &[u8]| {
        names_fields
            && spans.iter().zip(&kinds).any(|(&sp, &k)| {
                k == Kind::Connection && tokens(field(sp).1).any(|t| t.eq_ignore_ascii_case(name))
            })
    };
    let mut raw = Box::new(RawFields {
        head: head.clone(),
        count: 0,
        spans: [[0; 4]; RAW_MAX],
    });
    for (&sp, &k) in spans.iter().zip(&kinds) {
        let keep = match k {
            Kind::Other => !named(field(sp).0),
            // Transfer-Encoding won: a Content-Length passed on would misframe the
            // client's copy (RFC 9112 §6.3).
            Kind::ContentLength => !chunked,
            Kind::TransferEncoding | Kind::Connection | Kind::HopByHop => false,
        };
        if keep {
            raw.spans[raw.count] = sp;
            raw.count += 1;
        }
    }
    let reusable = definite && facts.keeps_alive(version);
    Ok(Head {
        status,
        version,
        headers: HeaderMap::new(),
        framing,
        reusable,
        raw: Some(raw),
    })
}

/// The items of a comma-separated field value, trimmed.
pub(super) fn tokens(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}
