//! An answer's head as an HTTP/2 header block, from its fields as they are (a header
//! map's, or an HTTP/1.1 upstream's head as received).

use super::hpack::{encode_field, encode_status};

/// What [`head_block`] saw among the fields (lowercase names, as both sources give them),
/// for what the caller adds after them.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Seen {
    pub(crate) length: bool,
    pub(crate) date: bool,
}

/// Writes `:status` and every field but those that concern one HTTP/1.1 connection only
/// (RFC 9113 §8.2.2: Connection and the fields it names, Keep-Alive, Proxy-Connection,
/// Transfer-Encoding, Upgrade), which an HTTP/2 client treats as malformed. Names are
/// written lowercase, as HTTP/2 requires (§8.2.1). `fields` gives the fields each time it
/// is called: twice, and once more per field when there is a Connection field.
pub(crate) fn head_block<'a, I>(status: u16, fields: impl Fn() -> I, out: &mut Vec<u8>) -> Seen
where
    I: Iterator<Item = (&'a [u8], &'a [u8])>,
{
    let mut seen = Seen::default();
    let mut has_connection = false;
    for (n, _) in fields() {
        seen.date |= n == b"date";
        seen.length |= n == b"content-length";
        has_connection |= n.eq_ignore_ascii_case(b"connection");
    }
    encode_status(status, out);
    let mut lower = Vec::new();
    for (name, value) in fields() {
        if connection_specific(name) {
            continue;
        }
        if has_connection && named_by_connection(fields(), name) {
            continue;
        }
        if name.iter().any(u8::is_ascii_uppercase) {
            lower.clear();
            lower.extend(name.iter().map(u8::to_ascii_lowercase));
            encode_field(&lower, value, out);
        } else {
            encode_field(name, value, out);
        }
    }
    seen
}

fn connection_specific(name: &[u8]) -> bool {
    let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
    match name.len() {
        7 => is(b"upgrade"),
        10 => is(b"connection") || is(b"keep-alive"),
        16 => is(b"proxy-connection"),
        17 => is(b"transfer-encoding"),
        _ => false,
    }
}

/// Whether a Connection field among `fields` lists `name`.
fn named_by_connection<'a>(
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    name: &[u8],
) -> bool {
    fields
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(name))
}
