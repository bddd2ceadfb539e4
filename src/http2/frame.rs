//! HTTP/2 frames (RFC 9113 §4, §6): the 9-byte head, what a payload holds once its
//! padding and priority fields are taken off, SETTINGS, and the frames graylane writes.
//! Everything here is a function of bytes; the connection decides what a frame means.

/// What a client sends first on every HTTP/2 connection (§3.4).
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes in a frame's head.
pub(crate) const HEAD_LEN: usize = 9;

/// The largest payload either side may send until told otherwise (§4.2), and the
/// smallest SETTINGS_MAX_FRAME_SIZE may be.
pub(crate) const DEFAULT_MAX_FRAME: u32 = 16_384;
/// The largest SETTINGS_MAX_FRAME_SIZE may be (§6.5.2).
const LARGEST_MAX_FRAME: u32 = (1 << 24) - 1;
/// Flow-control windows start at this (§6.9.2) and may not exceed 2^31 − 1.
pub(crate) const DEFAULT_WINDOW: u32 = 65_535;
pub(crate) const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Frame types (§6).
pub(crate) mod kind {
    pub(crate) const DATA: u8 = 0x0;
    pub(crate) const HEADERS: u8 = 0x1;
    pub(crate) const PRIORITY: u8 = 0x2;
    pub(crate) const RST_STREAM: u8 = 0x3;
    pub(crate) const SETTINGS: u8 = 0x4;
    pub(crate) const PUSH_PROMISE: u8 = 0x5;
    pub(crate) const PING: u8 = 0x6;
    pub(crate) const GOAWAY: u8 = 0x7;
    pub(crate) const WINDOW_UPDATE: u8 = 0x8;
    pub(crate) const CONTINUATION: u8 = 0x9;
}

/// Frame flags (§6): which apply depends on the type.
pub(crate) mod flag {
    pub(crate) const END_STREAM: u8 = 0x1;
    pub(crate) const ACK: u8 = 0x1;
    pub(crate) const END_HEADERS: u8 = 0x4;
    pub(crate) const PADDED: u8 = 0x8;
    pub(crate) const PRIORITY: u8 = 0x20;
}

/// Error codes (§7), carried by RST_STREAM and GOAWAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    NoError = 0x0,
    Protocol = 0x1,
    Internal = 0x2,
    FlowControl = 0x3,
    StreamClosed = 0x5,
    FrameSize = 0x6,
    RefusedStream = 0x7,
    Compression = 0x9,
    EnhanceYourCalm = 0xb,
}

/// A frame's head (§4.1). The reserved bit of the stream identifier is dropped, as the
/// receiver must (§4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) len: usize,
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) stream: u32,
}

impl Head {
    pub(crate) fn parse(b: &[u8; HEAD_LEN]) -> Self {
        Self {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & MAX_WINDOW,
        }
    }

    pub(crate) fn write(self, out: &mut Vec<u8>) {
        let len = (self.len as u32).to_be_bytes();
        out.extend_from_slice(&len[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&(self.stream & MAX_WINDOW).to_be_bytes());
    }
}

/// A DATA payload without its padding (§6.1). Padding as long as the payload is a
/// PROTOCOL_ERROR.
pub(crate) fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], Reason> {
    if flags & flag::PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload.split_first().ok_or(Reason::FrameSize)?;
    rest.len()
        .checked_sub(usize::from(pad))
        .map(|end| &rest[..end])
        .ok_or(Reason::Protocol)
}

/// A HEADERS payload's header block fragment, without padding and priority fields
/// (§6.2), and the stream the priority fields said it depends on, if any: a stream that
/// depends on itself is a stream error (§5.3.1).
pub(crate) fn headers_fragment(flags: u8, payload: &[u8]) -> Result<(&[u8], Option<u32>), Reason> {
    let payload = unpad(flags, payload)?;
    if flags & flag::PRIORITY == 0 {
        return Ok((payload, None));
    }
    if payload.len() < 5 {
        return Err(Reason::FrameSize);
    }
    let dep = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & MAX_WINDOW;
    Ok((&payload[5..], Some(dep)))
}

/// The values a SETTINGS frame carried; `None` for those it left alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) header_table_size: Option<u32>,
    pub(crate) enable_push: Option<bool>,
    pub(crate) max_concurrent_streams: Option<u32>,
    pub(crate) initial_window_size: Option<u32>,
    pub(crate) max_frame_size: Option<u32>,
    pub(crate) max_header_list_size: Option<u32>,
}

/// Setting identifiers (§6.5.2).
pub(crate) mod setting {
    pub(crate) const HEADER_TABLE_SIZE: u16 = 0x1;
    pub(crate) const ENABLE_PUSH: u16 = 0x2;
    pub(crate) const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub(crate) const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub(crate) const MAX_FRAME_SIZE: u16 = 0x5;
    pub(crate) const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

impl Settings {
    /// Reads a SETTINGS payload (not an ACK's, which must be empty). Unknown settings
    /// are ignored (§6.5.2); a value out of its range is the error §6.5.2 names.
    pub(crate) fn parse(payload: &[u8]) -> Result<Self, Reason> {
        if !payload.len().is_multiple_of(6) {
            return Err(Reason::FrameSize);
        }
        let mut s = Settings::default();
        for entry in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            match id {
                setting::HEADER_TABLE_SIZE => s.header_table_size = Some(value),
                setting::ENABLE_PUSH => {
                    s.enable_push = Some(match value {
                        0 => false,
                        1 => true,
                        _ => return Err(Reason::Protocol),
                    })
                }
                setting::MAX_CONCURRENT_STREAMS => s.max_concurrent_streams = Some(value),
                setting::INITIAL_WINDOW_SIZE if value > MAX_WINDOW => {
                    return Err(Reason::FlowControl)
                }
                setting::INITIAL_WINDOW_SIZE => s.initial_window_size = Some(value),
                setting::MAX_FRAME_SIZE
                    if !(DEFAULT_MAX_FRAME..=LARGEST_MAX_FRAME).contains(&value) =>
                {
                    return Err(Reason::Protocol)
                }
                setting::MAX_FRAME_SIZE => s.max_frame_size = Some(value),
                setting::MAX_HEADER_LIST_SIZE => s.max_header_list_size = Some(value),
                _ => {}
            }
        }
        Ok(s)
    }
}

// === writing ===

/// A SETTINGS frame with these (identifier, value) pairs.
pub(crate) fn settings(out: &mut Vec<u8>, values: &[(u16, u32)]) {
    head(out, values.len() * 6, kind::SETTINGS, 0, 0);
    for &(id, value) in values {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

pub(crate) fn settings_ack(out: &mut Vec<u8>) {
    head(out, 0, kind::SETTINGS, flag::ACK, 0);
}

/// The answer to a PING: its eight bytes back, with ACK (§6.7).
pub(crate) fn ping_ack(out: &mut Vec<u8>, data: &[u8; 8]) {
    head(out, 8, kind::PING, flag::ACK, 0);
    out.extend_from_slice(data);
}

pub(crate) fn window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    head(out, 4, kind::WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&(increment & MAX_WINDOW).to_be_bytes());
}

pub(crate) fn rst_stream(out: &mut Vec<u8>, stream: u32, reason: Reason) {
    head(out, 4, kind::RST_STREAM, 0, stream);
    out.extend_from_slice(&(reason as u32).to_be_bytes());
}

pub(crate) fn goaway(out: &mut Vec<u8>, last_stream: u32, reason: Reason) {
    head(out, 8, kind::GOAWAY, 0, 0);
    out.extend_from_slice(&(last_stream & MAX_WINDOW).to_be_bytes());
    out.extend_from_slice(&(reason as u32).to_be_bytes());
}

/// A header block as one HEADERS frame, or HEADERS and CONTINUATION frames when it is
/// larger than the peer's frame size (§4.3: nothing may come between them, which holds
/// because they are written here in one go).
pub(crate) fn headers(
    out: &mut Vec<u8>,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame: usize,
) {
    let mut chunks = block.chunks(max_frame.max(1));
    let first = chunks.next().unwrap_or(&[]);
    let mut rest = chunks.peekable();
    let mut flags = if end_stream { flag::END_STREAM } else { 0 };
    if rest.peek().is_none() {
        flags |= flag::END_HEADERS;
    }
    head(out, first.len(), kind::HEADERS, flags, stream);
    out.extend_from_slice(first);
    while let Some(chunk) = rest.next() {
        let flags = if rest.peek().is_none() {
            flag::END_HEADERS
        } else {
            0
        };
        head(out, chunk.len(), kind::CONTINUATION, flags, stream);
        out.extend_from_slice(chunk);
    }
}

/// A DATA frame's head; its `len` payload bytes follow.
pub(crate) fn data_head(out: &mut Vec<u8>, stream: u32, len: usize, end_stream: bool) {
    let flags = if end_stream { flag::END_STREAM } else { 0 };
    head(out, len, kind::DATA, flags, stream);
}

fn head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    Head {
        len,
        kind,
        flags,
        stream,
    }
    .write(out);
}
