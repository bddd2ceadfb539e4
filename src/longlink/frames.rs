//! Where a WebSocket byte stream stands between frames (RFC 6455 §5.2), so a link can be
//! closed on a frame boundary: a Close frame written into the middle of another frame
//! would corrupt the stream, and the peer would see a protocol error instead of a close.
//! Only the frame headers are read; payloads pass through untouched.

/// The position in one direction's stream.
#[derive(Debug, Default)]
pub(super) struct Frames {
    /// The header being read: at most 2 + 8 (extended length) + 4 (mask) bytes.
    header: [u8; 14],
    /// Header bytes read so far; 0 between frames and inside a payload.
    have: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
}

impl Frames {
    /// Between two frames.
    pub(super) fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    /// Moves over `data`, all of it, or with `stop_at_boundary` only up to the first
    /// frame boundary (0 bytes when already at one). Returns the bytes moved over.
    pub(super) fn advance(&mut self, data: &[u8], stop_at_boundary: bool) -> usize {
        let mut i = 0;
        while i < data.len() {
            if stop_at_boundary && self.at_boundary() {
                return i;
            }
            if self.payload_left > 0 {
                let n = self.payload_left.min((data.len() - i) as u64);
                self.payload_left -= n;
                i += n as usize;
                continue;
            }
            self.header[self.have] = data[i];
            self.have += 1;
            i += 1;
            if let Some((len, payload)) = self.header_done() {
                debug_assert_eq!(len, self.have);
                self.have = 0;
                self.payload_left = payload;
            }
        }
        i
    }

    /// The header's length and its payload length once all of it is read.
    fn header_done(&self) -> Option<(usize, u64)> {
        if self.have < 2 {
            return None;
        }
        let masked = self.header[1] & 0x80 != 0;
        let len7 = self.header[1] & 0x7f;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let total = 2 + ext + if masked { 4 } else { 0 };
        if self.have < total {
            return None;
        }
        let payload = match ext {
            2 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(b)
            }
            _ => u64::from(len7),
        };
        Some((total, payload))
    }
}

/// A Close frame with `code` and no reason: unmasked from a server (to the client),
/// masked with `mask` from a client (to the upstream), as RFC 6455 §5.3 requires.
pub(super) fn close_frame(code: u16, mask: Option<[u8; 4]>) -> ([u8; 8], usize) {
    let [hi, lo] = code.to_be_bytes();
    match mask {
        None => ([0x88, 0x02, hi, lo, 0, 0, 0, 0], 4),
        Some(m) => (
            [0x88, 0x82, m[0], m[1], m[2], m[3], hi ^ m[0], lo ^ m[1]],
            8,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame with `payload` bytes of payload, masked or not.
    fn frame(payload: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x81];
        let m = if masked { 0x80 } else { 0 };
        match payload {
            0..=125 => f.push(m | payload as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(payload as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(payload as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'x', payload));
        f
    }

    #[test]
    fn boundaries_of_every_length_form() {
        for (len, masked) in [
            (0, false),
            (5, true),
            (125, false),
            (126, true),
            (70_000, false),
        ] {
            let f = frame(len, masked);
            let mut t = Frames::default();
            assert!(t.at_boundary());
            // Byte by byte: a boundary only at the end.
            for (i, b) in f.iter().enumerate() {
                assert_eq!(t.advance(std::slice::from_ref(b), false), 1);
                assert_eq!(t.at_boundary(), i + 1 == f.len(), "{len} {masked} at {i}");
            }
        }
    }

    #[test]
    fn stopping_at_the_first_boundary() {
        let mut data = frame(10, false);
        let first = data.len();
        data.extend(frame(3, false));
        let mut t = Frames::default();
        // Mid-frame: moves to the end of the frame, not past it.
        assert_eq!(t.advance(&data[..4], false), 4);
        assert_eq!(t.advance(&data[4..], true), first - 4);
        assert!(t.at_boundary());
        assert_eq!(t.advance(&data[first..], true), 0);
    }

    #[test]
    fn close_frames_carry_the_code() {
        let (f, n) = close_frame(1012, None);
        assert_eq!(&f[..n], &[0x88, 0x02, 0x03, 0xf4]);
        let (f, n) = close_frame(1001, Some([9, 8, 7, 6]));
        assert_eq!(&f[..n], &[0x88, 0x82, 9, 8, 7, 6, 0x03 ^ 9, 0xe9 ^ 8]);
    }
}
