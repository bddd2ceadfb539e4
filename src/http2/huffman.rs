//! HPACK's Huffman code (RFC 7541 §5.2, Appendix B): decoding only. graylane sends its
//! strings raw, which costs a few bytes per field and no work per byte; what it receives
//! a peer may have coded.
//!
//! The code is canonical (within one length, codes count up in symbol order, and each
//! length starts where the shorter ones left off, doubled), so a symbol is found from
//! three small tables per length instead of a tree: its rank among the codes of that
//! length is `code - first[len]` when that is below `count[len]`.

use super::HpackError;

/// Decodes `src` onto the end of `out`. The padding must be the shortest possible prefix
/// of EOS (at most 7 one bits), and EOS itself must not appear (RFC 7541 §5.2).
/// Inlined into its one caller (`hpack::string`): left out of line by the compiler it
/// measured ~180 instructions more per HTTP/2 request.
#[inline]
pub(super) fn decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &byte in src {
        acc = (acc << 8) | u64::from(byte);
        bits += 8;
        // Every whole symbol now in `acc`; what is left is shorter than its code.
        'symbols: while bits >= MIN_LEN {
            if bits >= 8 {
                // Codes of up to 8 bits (letters, digits, space and `%&*,-./:;=_`,
                // most of what paths and field values are made of) in one lookup.
                let entry = FAST[((acc >> (bits - 8)) & 0xff) as usize];
                let len = u32::from(entry >> 8);
                if len != 0 {
                    out.push(entry as u8);
                    bits -= len;
                    continue;
                }
            }
            let mut len = MIN_LEN;
            loop {
                if len > bits {
                    break 'symbols;
                }
                if len > MAX_LEN {
                    return Err(HpackError::Huffman);
                }
                let code = ((acc >> (bits - len)) & ((1 << len) - 1)) as u32;
                let l = len as usize;
                let rank = code.wrapping_sub(CANON.first[l]);
                if rank < u32::from(CANON.count[l]) {
                    let sym = CANON.syms[usize::from(CANON.base[l]) + rank as usize];
                    let Ok(b) = u8::try_from(sym) else {
                        return Err(HpackError::Huffman); // EOS
                    };
                    out.push(b);
                    bits -= len;
                    break;
                }
                len += 1;
            }
        }
        acc &= (1u64 << bits) - 1;
    }
    let ones = (1u64 << bits) - 1;
    if bits > 7 || acc != ones {
        return Err(HpackError::Huffman);
    }
    Ok(())
}

const MIN_LEN: u32 = 5;
const MAX_LEN: u32 = 30;
/// EOS, the 257th symbol: 30 one bits.
const EOS: u16 = 256;

/// The canonical code's decoding tables, indexed by code length.
pub(super) struct Canon {
    /// The first (smallest) code of each length.
    pub(super) first: [u32; 31],
    /// How many codes have each length.
    pub(super) count: [u16; 31],
    /// Where each length's symbols start in `syms`.
    pub(super) base: [u16; 31],
    /// The symbols by code length, then symbol value (EOS last).
    pub(super) syms: [u16; 257],
}

pub(super) const fn length_of(sym: usize) -> u8 {
    if sym == EOS as usize {
        MAX_LEN as u8
    } else {
        LENGTHS[sym]
    }
}

const fn canon() -> Canon {
    let mut c = Canon {
        first: [0; 31],
        count: [0; 31],
        base: [0; 31],
        syms: [0; 257],
    };
    let mut n = 0;
    let mut code: u32 = 0;
    let mut len = 1;
    while len <= MAX_LEN as usize {
        c.first[len] = code;
        c.base[len] = n as u16;
        let mut sym = 0;
        while sym < 257 {
            if length_of(sym) as usize == len {
                c.syms[n] = sym as u16;
                n += 1;
                c.count[len] += 1;
            }
            sym += 1;
        }
        code = (code + c.count[len] as u32) << 1;
        len += 1;
    }
    c
}

pub(super) static CANON: Canon = canon();

/// For each value of the next 8 bits, the symbol whose code of at most 8 bits begins
/// them and that code's length (`len << 8 | symbol`); 0 where the code is longer. Most
/// symbols decode with this one lookup instead of a walk over the lengths.
static FAST: [u16; 256] = fast();

const fn fast() -> [u16; 256] {
    let c = canon();
    let mut t = [0u16; 256];
    let mut bits = 0;
    while bits < 256 {
        let mut len = MIN_LEN as usize;
        while len <= 8 {
            let code = (bits >> (8 - len)) as u32;
            let rank = code.wrapping_sub(c.first[len]);
            if rank < c.count[len] as u32 {
                let sym = c.syms[c.base[len] as usize + rank as usize];
                t[bits] = ((len as u16) << 8) | sym;
                break;
            }
            len += 1;
        }
        bits += 1;
    }
    t
}

/// RFC 7541 Appendix B: each byte's code (right-aligned) ... (decoding needs only the
/// lengths: the tests encode with these, and hold the tables built from the lengths to
/// them)
#[cfg(test)]
pub(super) const CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8,
    0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed,
    0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4,
    0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8,
    0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
    0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0,
    0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75,
    0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe,
    0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4,
    0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb,
    0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda,
    0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd,
    0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0,
    0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4,
    0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
    0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
    0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7,
    0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4,
    0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb,
    0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb,
    0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];

/// ... and its length in bits.
const LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];
