//! HPACK (RFC 7541): the decoder a connection keeps for its peer's header blocks, and
//! the encoder graylane answers with.
//!
//! The decoder hands each field to a callback as two borrowed slices (from the block,
//! from the table, or from a scratch buffer when the peer Huffman-coded it), so a
//! request's fields can be written straight into the HTTP/1.1 head the upstream gets:
//! nothing is allocated per field but what the peer asks to keep in the table.
//!
//! The encoder never indexes and never Huffman-codes: a field costs its bytes and a
//! length, and nothing is hashed or looked up per field but a name in the static table.
//! The table a peer keeps for graylane's answers stays empty, which RFC 7541 allows
//! (§2.3.2: an encoder decides what it inserts).

use std::collections::VecDeque;

use super::{huffman, HpackError};

/// The decoding context of one connection's received header blocks.
#[derive(Debug)]
pub(crate) struct Decoder {
    table: Table,
    /// The largest table the peer may ask for: graylane's SETTINGS_HEADER_TABLE_SIZE.
    limit: usize,
    /// Huffman-coded names and values, decoded; reused from field to field.
    name: Vec<u8>,
    value: Vec<u8>,
}

impl Decoder {
    /// A decoder whose table may grow to `limit` bytes (RFC 7541 §4.1's size), the value
    /// graylane sends as SETTINGS_HEADER_TABLE_SIZE (4,096 when it sends none).
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            table: Table::new(limit),
            limit,
            name: Vec::new(),
            value: Vec::new(),
        }
    }

    /// Decodes one whole header block (the fragments of a HEADERS frame and its
    /// CONTINUATION frames, joined), calling `field(name, value)` for each field in
    /// order. An error is a COMPRESSION_ERROR: the table can no longer be trusted, so the
    /// connection must end (RFC 9113 §4.3).
    pub(crate) fn decode(
        &mut self,
        mut block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut fields_seen = false;
        while let Some(&first) = block.first() {
            if first & 0x80 != 0 {
                // Indexed field (§6.1).
                let index = integer(&mut block, 7)?;
                let (n, v) = self.table.get(index).ok_or(HpackError::Index(index))?;
                field(n, v);
                fields_seen = true;
            } else if first & 0x40 != 0 {
                // Literal with incremental indexing (§6.2.1).
                self.literal(&mut block, 6, true, &mut field)?;
                fields_seen = true;
            } else if first & 0x20 != 0 {
                // Dynamic table size update (§6.3): only before the block's first field
                // (§4.2), and never above the limit graylane announced.
                if fields_seen {
                    return Err(HpackError::SizeUpdate);
                }
                let size = integer(&mut block, 5)?;
                if size > self.limit {
                    return Err(HpackError::SizeUpdate);
                }
                self.table.resize(size);
            } else {
                // Literal without indexing (§6.2.2) or never indexed (§6.2.3): for a
                // proxy that forwards over HTTP/1.1, the same.
                self.literal(&mut block, 4, false, &mut field)?;
                fields_seen = true;
            }
        }
        Ok(())
    }

    /// The dynamic table's size and its entries' names, newest first.
    #[cfg(test)]
    pub(super) fn table_for_tests(&self) -> (usize, Vec<&str>) {
        let names = self.table.entries.iter();
        let names = names.map(|e| std::str::from_utf8(&e.bytes[..e.name_len]).unwrap_or("?"));
        (self.table.size, names.collect())
    }

    fn literal(
        &mut self,
        block: &mut &[u8],
        prefix: u8,
        index: bool,
        field: &mut impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let name_index = integer(block, prefix)?;
        let Decoder {
            table,
            name: name_buf,
            value: value_buf,
            ..
        } = self;
        if name_index != 0 && !index {
            // The name of an entry, borrowed where it lies: nothing is inserted.
            let value = string(block, value_buf)?;
            let (name, _) = table.get(name_index).ok_or(HpackError::Index(name_index))?;
            field(name, value.unwrap_or(value_buf));
            return Ok(());
        }
        let name = if name_index == 0 {
            string(block, name_buf)?
        } else {
            // Copied: inserting this field may evict the entry that named it.
            let (n, _) = table.get(name_index).ok_or(HpackError::Index(name_index))?;
            name_buf.clear();
            name_buf.extend_from_slice(n);
            None
        };
        let value = string(block, value_buf)?;
        let name = name.unwrap_or(name_buf);
        let value = value.unwrap_or(value_buf);
        field(name, value);
        if index {
            table.insert(name, value);
        }
        Ok(())
    }
}

/// Reads an integer with an `prefix`-bit prefix (§5.1). Values past 2^28 are refused:
/// no length or index graylane accepts comes near, and the sum cannot overflow.
fn integer(block: &mut &[u8], prefix: u8) -> Result<usize, HpackError> {
    let max = (1usize << prefix) - 1;
    let (&first, mut rest) = block.split_first().ok_or(HpackError::Truncated)?;
    let mut value = usize::from(first) & max;
    if value == max {
        let mut shift = 0;
        loop {
            let (&b, r) = rest.split_first().ok_or(HpackError::Truncated)?;
            rest = r;
            if shift > 21 {
                return Err(HpackError::Integer);
            }
            value += usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    *block = rest;
    Ok(value)
}

/// Reads a string literal (§5.2): `Some` slice of the block when sent raw, `None` when
/// it was Huffman-coded and now lies decoded in `scratch`.
fn string<'b>(block: &mut &'b [u8], scratch: &mut Vec<u8>) -> Result<Option<&'b [u8]>, HpackError> {
    let huffman = block.first().is_some_and(|b| b & 0x80 != 0);
    let len = integer(block, 7)?;
    if len > block.len() {
        return Err(HpackError::Truncated);
    }
    let (s, rest) = block.split_at(len);
    *block = rest;
    if huffman {
        scratch.clear();
        huffman::decode(s, scratch)?;
        Ok(None)
    } else {
        Ok(Some(s))
    }
}

/// The static table and one connection's dynamic table, addressed as one index space
/// (§2.3.3): 1–61 static, 62 on the newest dynamic entry first.
#[derive(Debug)]
struct Table {
    entries: VecDeque<Entry>,
    /// The entries' size as §4.1 counts it (each entry's bytes plus 32).
    size: usize,
    max: usize,
}

#[derive(Debug)]
struct Entry {
    bytes: Box<[u8]>,
    name_len: usize,
}

/// §4.1: each entry is counted 32 bytes more than its name and value.
const ENTRY_OVERHEAD: usize = 32;

impl Table {
    fn new(max: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max,
        }
    }

    fn get(&self, index: usize) -> Option<(&[u8], &[u8])> {
        match index {
            0 => None,
            1..=STATIC_LEN => {
                let (n, v) = STATIC[index - 1];
                Some((n.as_bytes(), v.as_bytes()))
            }
            _ => {
                let e = self.entries.get(index - STATIC_LEN - 1)?;
                Some(e.bytes.split_at(e.name_len))
            }
        }
    }

    /// Adds an entry, evicting the oldest until it fits; one larger than the whole
    /// table empties it and is not kept (§4.4).
    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        self.evict_to(self.max.saturating_sub(size));
        if size > self.max {
            return;
        }
        let mut bytes = Vec::with_capacity(name.len() + value.len());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(value);
        self.entries.push_front(Entry {
            bytes: bytes.into_boxed_slice(),
            name_len: name.len(),
        });
        self.size += size;
    }

    fn resize(&mut self, max: usize) {
        self.max = max;
        self.evict_to(max);
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.bytes.len() + ENTRY_OVERHEAD,
                None => break,
            }
        }
    }
}

// === encoding ===

/// Appends `:status` (an indexed field for the seven codes the static table holds).
pub(crate) fn encode_status(code: u16, out: &mut Vec<u8>) {
    let index = match code {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => 0,
    };
    if index != 0 {
        out.push(0x80 | index);
        return;
    }
    // Literal without indexing, the name from the static table (8); three digits.
    let digits = [
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ];
    out.push(8);
    put_string(&digits, out);
}

/// Appends one field, literal without indexing (§6.2.2). `name` must be lowercase
/// (HTTP/2 refuses uppercase names, RFC 9113 §8.2.1).
pub(crate) fn encode_field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    match static_name(name) {
        Some(index) => put_integer(index, 4, 0, out),
        None => {
            out.push(0);
            put_string(name, out);
        }
    }
    put_string(value, out);
}

fn put_string(s: &[u8], out: &mut Vec<u8>) {
    put_integer(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

fn put_integer(mut value: usize, prefix: u8, flags: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The static table's index of a name (its first entry with that name).
fn static_name(name: &[u8]) -> Option<usize> {
    // By length first: most response fields miss after one comparison of lengths.
    let i = match name {
        b"age" => 21,
        b"via" => 60,
        b"date" => 33,
        b"etag" => 34,
        b"link" => 45,
        b"vary" => 59,
        b"allow" => 22,
        b"range" => 50,
        b"server" => 54,
        b"expect" => 35,
        b"cookie" => 32,
        b"refresh" => 52,
        b"expires" => 36,
        b"location" => 46,
        b"set-cookie" => 55,
        b"retry-after" => 53,
        b"content-type" => 31,
        b"accept-ranges" => 18,
        b"cache-control" => 24,
        b"last-modified" => 44,
        b"content-range" => 30,
        b"content-length" => 28,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-location" => 29,
        b"www-authenticate" => 61,
        b"proxy-authenticate" => 48,
        b"content-disposition" => 25,
        b"strict-transport-security" => 56,
        b"access-control-allow-origin" => 20,
        _ => return None,
    };
    Some(i)
}

const STATIC_LEN: usize = 61;

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); STATIC_LEN] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];
