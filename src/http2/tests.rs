//! The wire format against RFC 7541's and RFC 9113's own examples and rules.

use super::frame::{self, flag, kind, Head, Reason, Settings};
use super::hpack::{encode_field, encode_status, Decoder};
use super::huffman::{self, CANON, CODES};
use super::HpackError;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn decode(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
    let mut out = Vec::new();
    d.decode(block, |n, v| {
        out.push((
            String::from_utf8(n.to_vec()).unwrap(),
            String::from_utf8(v.to_vec()).unwrap(),
        ))
    })?;
    Ok(out)
}

fn fields(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// The test-side Huffman encoder, from RFC 7541 Appendix B's codes.
fn huffman_encode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u64, 0u32);
    for &b in s {
        let len = u32::from(huffman::length_of(usize::from(b)));
        acc = (acc << len) | u64::from(CODES[usize::from(b)]);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
    }
    out
}

// === RFC 7541 Appendix C ===

const REQUESTS: [&[(&str, &str)]; 3] = [
    &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ],
    &[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
        ("cache-control", "no-cache"),
    ],
    &[
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ],
];

const RESPONSES: [&[(&str, &str)]; 3] = [
    &[
        (":status", "302"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("location", "https://www.example.com"),
    ],
    &[
        (":status", "307"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("location", "https://www.example.com"),
    ],
    &[
        (":status", "200"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
        ("location", "https://www.example.com"),
        ("content-encoding", "gzip"),
        (
            "set-cookie",
            "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
        ),
    ],
];

fn run_sequence(limit: usize, blocks: [&str; 3], want: [&[(&str, &str)]; 3]) -> Decoder {
    let mut d = Decoder::new(limit);
    for (block, want) in blocks.iter().zip(want) {
        assert_eq!(
            decode(&mut d, &hex(block)).unwrap(),
            fields(want),
            "{block}"
        );
    }
    d
}

#[test]
fn requests_without_huffman_c3() {
    let d = run_sequence(
        4096,
        [
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ],
        REQUESTS,
    );
    // C.3.3: three entries, newest first, 164 bytes.
    assert_eq!(
        d.table_for_tests(),
        (164, vec!["custom-key", "cache-control", ":authority"])
    );
}

#[test]
fn requests_with_huffman_c4() {
    let d = run_sequence(
        4096,
        [
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ],
        REQUESTS,
    );
    assert_eq!(d.table_for_tests().0, 164);
}

#[test]
fn responses_with_eviction_c5() {
    // The peer sized the table to 256 bytes: :status 307 evicts :status 302, and the
    // third response evicts three more entries.
    let mut d = Decoder::new(4096);
    decode(&mut d, &[0x3f, 0xe1, 0x01]).unwrap(); // size update to 256
    let blocks = [
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
    ];
    for (block, want) in blocks.iter().zip(RESPONSES) {
        assert_eq!(decode(&mut d, &hex(block)).unwrap(), fields(want));
    }
    assert_eq!(
        d.table_for_tests(),
        (215, vec!["set-cookie", "content-encoding", "date"])
    );
}

#[test]
fn responses_with_huffman_c6() {
    let mut d = Decoder::new(256);
    let blocks = [
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    ];
    for (block, want) in blocks.iter().zip(RESPONSES) {
        assert_eq!(decode(&mut d, &hex(block)).unwrap(), fields(want));
    }
    assert_eq!(d.table_for_tests().0, 215);
}

#[test]
fn literal_forms_c2() {
    // C.2.1 with indexing, C.2.2 without, C.2.3 never indexed, C.2.4 indexed.
    let mut d = Decoder::new(4096);
    let got = decode(
        &mut d,
        &hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"),
    )
    .unwrap();
    assert_eq!(got, fields(&[("custom-key", "custom-header")]));
    assert_eq!(d.table_for_tests(), (55, vec!["custom-key"]));
    let got = decode(&mut d, &hex("040c 2f73 616d 706c 652f 7061 7468")).unwrap();
    assert_eq!(got, fields(&[(":path", "/sample/path")]));
    let got = decode(&mut d, &hex("1008 7061 7373 776f 7264 0673 6563 7265 74")).unwrap();
    assert_eq!(got, fields(&[("password", "secret")]));
    assert_eq!(
        decode(&mut d, &hex("82")).unwrap(),
        fields(&[(":method", "GET")])
    );
    assert_eq!(
        d.table_for_tests(),
        (55, vec!["custom-key"]),
        "only C.2.1 indexes"
    );
}

// === the decoder's refusals ===

#[test]
fn malformed_blocks_are_compression_errors() {
    let cases: &[(&str, &[u8], HpackError)] = &[
        ("index 0", &[0x80], HpackError::Index(0)),
        ("past the table", &[0xbe], HpackError::Index(62)),
        (
            "name index past the table",
            &[0x7e, 0x00],
            HpackError::Index(62),
        ),
        (
            "string longer than the block",
            &[0x40, 0x05, b'a'],
            HpackError::Truncated,
        ),
        (
            "integer without its end",
            &[0xff, 0x80],
            HpackError::Truncated,
        ),
        (
            "integer past 2^28",
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0x0f],
            HpackError::Integer,
        ),
        (
            "size update above the limit",
            &[0x3f, 0xe2, 0x1f],
            HpackError::SizeUpdate,
        ),
        (
            "size update after a field",
            &[0x82, 0x20],
            HpackError::SizeUpdate,
        ),
    ];
    for (what, block, want) in cases {
        let mut d = Decoder::new(4096);
        assert_eq!(decode(&mut d, block), Err(*want), "{what}");
    }
}

#[test]
fn huffman_padding_and_eos_are_checked() {
    let mut out = Vec::new();
    // 'a' is 00011 (5 bits): three one bits of padding are right...
    assert_eq!(huffman::decode(&[0b0001_1111], &mut out), Ok(()));
    assert_eq!(out, b"a");
    // ... zero bits are not a prefix of EOS ...
    assert_eq!(
        huffman::decode(&[0b0001_1000], &mut Vec::new()),
        Err(HpackError::Huffman)
    );
    // ... nor is a whole byte of padding allowed (more than 7 bits) ...
    assert_eq!(
        huffman::decode(&[0xff], &mut Vec::new()),
        Err(HpackError::Huffman)
    );
    assert_eq!(
        huffman::decode(&[0b0001_1111, 0xff], &mut Vec::new()),
        Err(HpackError::Huffman)
    );
    // ... and EOS (30 one bits) may not be sent.
    assert_eq!(
        huffman::decode(&[0xff, 0xff, 0xff, 0xfc], &mut Vec::new()),
        Err(HpackError::Huffman)
    );
}

#[test]
fn huffman_tables_match_the_rfc_codes_and_round_trip_every_byte() {
    for (sym, &code) in CODES.iter().enumerate() {
        let len = usize::from(huffman::length_of(sym));
        let rank = CANON.syms[usize::from(CANON.base[len])..]
            .iter()
            .position(|&s| usize::from(s) == sym)
            .unwrap();
        assert_eq!(CANON.first[len] + rank as u32, code, "symbol {sym}");
    }
    let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let mut out = Vec::new();
    huffman::decode(&huffman_encode(&all), &mut out).unwrap();
    assert_eq!(out, all);
    for s in [
        &b""[..],
        b"www.example.com",
        b"no-cache",
        b"custom-key\x00\xff",
    ] {
        let mut out = Vec::new();
        huffman::decode(&huffman_encode(s), &mut out).unwrap();
        assert_eq!(out, s);
    }
}

#[test]
fn huffman_coded_literals_decode_into_the_table() {
    let name = huffman_encode(b"custom-key");
    let mut block = vec![0x40, 0x80 | name.len() as u8];
    block.extend(name);
    let value = huffman_encode(b"custom-value");
    block.push(0x80 | value.len() as u8);
    block.extend(value);
    block.push(0xbe); // and indexed right after
    let mut d = Decoder::new(4096);
    assert_eq!(
        decode(&mut d, &block).unwrap(),
        fields(&[
            ("custom-key", "custom-value"),
            ("custom-key", "custom-value")
        ])
    );
}

#[test]
fn an_entry_larger_than_the_table_empties_it() {
    let mut d = Decoder::new(4096);
    decode(
        &mut d,
        &hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"),
    )
    .unwrap();
    // Size update to 60, then a 55-byte entry fits; a 70-byte one evicts all and stays out.
    let mut block = vec![0x3f, 60 - 31];
    block.extend(hex(
        "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
    ));
    decode(&mut d, &block).unwrap();
    assert_eq!(d.table_for_tests(), (55, vec!["custom-key"]));
    let mut block = vec![0x40, 0x0a];
    block.extend(b"custom-key");
    block.push(28);
    block.extend([b'v'; 28]);
    decode(&mut d, &block).unwrap();
    assert_eq!(d.table_for_tests(), (0, vec![]));
    // A field naming an entry it evicts while being inserted keeps the name.
    let mut d = Decoder::new(4096);
    decode(&mut d, &[0x3f, 70 - 31]).unwrap();
    decode(
        &mut d,
        &hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"),
    )
    .unwrap();
    let got = decode(&mut d, &[0x7e, 0x01, b'x']).unwrap();
    assert_eq!(got, fields(&[("custom-key", "x")]));
    assert_eq!(d.table_for_tests(), (43, vec!["custom-key"]));
}

// === the encoder ===

#[test]
fn encoded_answers_decode_to_what_was_encoded() {
    let mut block = Vec::new();
    encode_status(200, &mut block);
    encode_status(302, &mut block);
    let long = "v".repeat(300);
    let list = [
        ("content-type", "text/plain"),
        ("date", "Mon, 07 Dec 2026 05:00:00 GMT"),
        ("x-graylane-pool", "gray"),
        ("set-cookie", ""),
        ("x-long", long.as_str()),
    ];
    for (n, v) in list {
        encode_field(n.as_bytes(), v.as_bytes(), &mut block);
    }
    let mut d = Decoder::new(4096);
    let mut want = fields(&[(":status", "200"), (":status", "302")]);
    want.extend(fields(&list));
    assert_eq!(decode(&mut d, &block).unwrap(), want);
    assert_eq!(d.table_for_tests(), (0, vec![]), "nothing indexed");
    assert_eq!(&block[..2], &[0x88, 0x08], "200 indexed, 302 a literal");
    assert_eq!(
        &block[6..8],
        &[0x0f, 16],
        "content-type by its static index, 31 = 15 + 16"
    );
}

// === frames ===

#[test]
fn frame_heads_round_trip_and_drop_the_reserved_bit() {
    let h = Head {
        len: 0x12_3456,
        kind: kind::HEADERS,
        flags: flag::END_HEADERS | flag::END_STREAM,
        stream: 0x7fff_ffff,
    };
    let mut out = Vec::new();
    h.write(&mut out);
    assert_eq!(out.len(), frame::HEAD_LEN);
    let bytes: [u8; 9] = out.try_into().unwrap();
    assert_eq!(Head::parse(&bytes), h);
    let mut reserved = bytes;
    reserved[5] |= 0x80;
    assert_eq!(Head::parse(&reserved).stream, 0x7fff_ffff);
}

#[test]
fn padding_and_priority_fields_come_off() {
    assert_eq!(frame::unpad(0, b"abc"), Ok(&b"abc"[..]));
    assert_eq!(frame::unpad(flag::PADDED, b"\x02abc\0\0"), Ok(&b"abc"[..]));
    // Padding as long as the rest leaves nothing, which is allowed; longer is not.
    assert_eq!(frame::unpad(flag::PADDED, b"\x03ab\0"), Ok(&b""[..]));
    assert_eq!(frame::unpad(flag::PADDED, b"\x03ab"), Err(Reason::Protocol));
    assert_eq!(frame::unpad(flag::PADDED, b""), Err(Reason::FrameSize));
    let payload = b"\x03\x00\x00\x00\x05\x10blockpad";
    let (fragment, dep) = frame::headers_fragment(flag::PADDED | flag::PRIORITY, payload).unwrap();
    assert_eq!((fragment, dep), (&b"block"[..], Some(5)));
    assert_eq!(
        frame::headers_fragment(flag::PRIORITY, b"\0\0\0"),
        Err(Reason::FrameSize)
    );
}

#[test]
fn settings_are_read_and_range_checked() {
    let mut out = Vec::new();
    frame::settings(
        &mut out,
        &[(0x3, 100), (0x4, 1 << 20), (0x5, 32768), (0xff, 7)],
    );
    let s = Settings::parse(&out[frame::HEAD_LEN..]).unwrap();
    assert_eq!(s.max_concurrent_streams, Some(100));
    assert_eq!(s.initial_window_size, Some(1 << 20));
    assert_eq!(s.max_frame_size, Some(32768));
    assert_eq!(s.header_table_size, None);
    let one = |id: u16, v: u32| {
        let mut p = id.to_be_bytes().to_vec();
        p.extend(v.to_be_bytes());
        Settings::parse(&p)
    };
    assert_eq!(one(0x2, 2), Err(Reason::Protocol));
    assert_eq!(one(0x4, 1 << 31), Err(Reason::FlowControl));
    assert_eq!(one(0x5, 16_383), Err(Reason::Protocol));
    assert_eq!(one(0x5, 1 << 24), Err(Reason::Protocol));
    assert_eq!(Settings::parse(&[0; 5]), Err(Reason::FrameSize));
}

#[test]
fn a_large_header_block_is_split_into_continuation_frames() {
    let block: Vec<u8> = (0..40u8).collect();
    let mut out = Vec::new();
    frame::headers(&mut out, 3, &block, true, 16);
    let mut frames = Vec::new();
    let mut rest = &out[..];
    while !rest.is_empty() {
        let head = Head::parse(rest[..9].try_into().unwrap());
        frames.push((head.kind, head.flags, head.len));
        rest = &rest[9 + head.len..];
    }
    assert_eq!(
        frames,
        [
            (kind::HEADERS, flag::END_STREAM, 16),
            (kind::CONTINUATION, 0, 16),
            (kind::CONTINUATION, flag::END_HEADERS, 8),
        ]
    );
    let mut out = Vec::new();
    frame::headers(&mut out, 1, b"ab", false, 16);
    assert_eq!(&out[3..5], &[kind::HEADERS, flag::END_HEADERS]);
}

// === requests ===

use super::request::{Assembler, Refused};
use crate::fields::{Fields, Received};

fn assemble(list: &[(&str, &str)]) -> Result<(super::request::Request, Received), Refused> {
    let mut a = Assembler::new(16_384);
    for (n, v) in list {
        a.field(n.as_bytes(), v.as_bytes());
    }
    let mut received = Received::default();
    a.finish(&mut received).map(|r| (r, received))
}

fn lines(r: &Received) -> String {
    let mut out = Vec::new();
    r.write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn a_browser_request_becomes_parts_and_http1_field_lines() {
    let (req, received) = assemble(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "console.example:8443"),
        (":path", "/api/chat?x=1"),
        ("accept", "*/*"),
        ("cookie", "xdw-kefu-uid=42"),
        ("xdw-kefu-group", "staff"),
        ("cookie", "theme=dark"),
        ("te", "trailers"),
    ])
    .unwrap();
    assert_eq!(req.parts.method, http::Method::GET);
    assert_eq!(req.parts.uri, "https://console.example:8443/api/chat?x=1");
    assert_eq!(req.parts.version, http::Version::HTTP_2);
    assert_eq!(req.content_length, None);
    // Cookies joined into one field (RFC 9113 §8.2.3), :authority as Host.
    assert_eq!(
        lines(&received),
        "accept: */*\r\nxdw-kefu-group: staff\r\nte: trailers\r\n\
         cookie: xdw-kefu-uid=42; theme=dark\r\nhost: console.example:8443\r\n"
    );
    let f = Fields::Received(&received);
    assert_eq!(
        f.get(&http::header::COOKIE),
        Some(&b"xdw-kefu-uid=42; theme=dark"[..])
    );
    assert_eq!(f.host(), (Some(&b"console.example:8443"[..]), false));
}

#[test]
fn a_host_field_is_kept_and_none_added() {
    let (req, received) = assemble(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/up"),
        ("host", "im.example"),
        ("content-length", "5"),
        ("content-length", "5"),
    ])
    .unwrap();
    assert_eq!(req.parts.uri, "/up", "no :authority: origin form");
    assert_eq!(req.content_length, Some(5));
    assert_eq!(
        lines(&received),
        "host: im.example\r\ncontent-length: 5\r\ncontent-length: 5\r\n"
    );
}

#[test]
fn malformed_requests_are_refused() {
    let base = [(":method", "GET"), (":scheme", "https"), (":path", "/")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut l = base.to_vec();
        l.extend_from_slice(extra);
        assemble(&l).err()
    };
    let m = |why| Some(Refused::Malformed(why));
    assert_eq!(with(&[]), None);
    assert_eq!(with(&[("Accept", "x")]), m("invalid field name"));
    assert_eq!(with(&[("acc ept", "x")]), m("invalid field name"));
    assert_eq!(with(&[("accept", "a\r\nb")]), m("invalid field value"));
    assert_eq!(with(&[("accept", " x")]), m("invalid field value"));
    assert_eq!(with(&[("accept", "x\t")]), m("invalid field value"));
    assert_eq!(
        with(&[("connection", "close")]),
        m("connection-specific field")
    );
    assert_eq!(
        with(&[("transfer-encoding", "chunked")]),
        m("connection-specific field")
    );
    assert_eq!(
        with(&[("upgrade", "websocket")]),
        m("connection-specific field")
    );
    assert_eq!(with(&[("te", "gzip")]), m("te other than trailers"));
    assert_eq!(
        with(&[("accept", "x"), (":authority", "a")]),
        m("pseudo-header field after a regular field")
    );
    assert_eq!(
        with(&[(":status", "200")]),
        m("unknown pseudo-header field")
    );
    assert_eq!(
        with(&[(":path", "/again")]),
        m("repeated pseudo-header field")
    );
    assert_eq!(
        with(&[("content-length", "1"), ("content-length", "2")]),
        m("content-length fields differ")
    );
    assert_eq!(
        with(&[("content-length", "+1")]),
        m("invalid content-length")
    );
    let only = |l: &[(&str, &str)]| assemble(l).err();
    assert_eq!(
        only(&[(":scheme", "https"), (":path", "/")]),
        m("no :method")
    );
    assert_eq!(
        only(&[(":method", "GET"), (":scheme", "https")]),
        m("no :path")
    );
    assert_eq!(only(&[(":method", "GET"), (":path", "/")]), m("no :scheme"));
    assert_eq!(
        only(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", ""),
            (":path", "/")
        ]),
        m("empty :authority")
    );
    assert_eq!(
        only(&[(":method", "GET"), (":scheme", "https"), (":path", "x")]),
        m("invalid :path")
    );
    assert_eq!(
        only(&[
            (":method", "CONNECT"),
            (":authority", "a:1"),
            (":path", "/")
        ]),
        m("CONNECT with :scheme or :path")
    );
    let (connect, _) = assemble(&[(":method", "CONNECT"), (":authority", "a:1")]).unwrap();
    assert_eq!(connect.parts.uri, "a:1");
    let (star, _) =
        assemble(&[(":method", "OPTIONS"), (":scheme", "https"), (":path", "*")]).unwrap();
    assert_eq!(star.parts.uri, "*");
}

#[test]
fn an_oversized_list_is_431_and_the_assembler_starts_over() {
    let mut a = Assembler::new(200);
    a.field(b":method", b"GET");
    a.field(b"x-big", &[b'a'; 160]);
    a.field(b"Bad", b"never looked at");
    let mut received = Received::default();
    assert_eq!(a.finish(&mut received).err(), Some(Refused::TooLarge));
    for (n, v) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        ("a", "b"),
    ] {
        a.field(n.as_bytes(), v.as_bytes());
    }
    assert!(a.finish(&mut received).is_ok());
    assert_eq!(lines(&received), "a: b\r\n");
}

// === answers ===

#[test]
fn an_answer_head_leaves_out_what_concerns_one_http1_connection() {
    let head: [(&[u8], &[u8]); 8] = [
        (b"Content-Type", b"text/plain"),
        (b"connection", b"keep-alive, X-Hop"),
        (b"keep-alive", b"timeout=5"),
        (b"x-hop", b"1"),
        (b"transfer-encoding", b"chunked"),
        (b"Upgrade", b"h2c"),
        (b"proxy-connection", b"close"),
        (b"set-cookie", b"a=b"),
    ];
    let mut block = Vec::new();
    super::response::head_block(404, || head.into_iter(), &mut block);
    let got = decode(&mut Decoder::new(4096), &block).unwrap();
    assert_eq!(
        got,
        fields(&[
            (":status", "404"),
            ("content-type", "text/plain"),
            ("set-cookie", "a=b")
        ])
    );
    let mut plain = Vec::new();
    super::response::head_block(
        200,
        || [(&b"vary"[..], &b"accept"[..])].into_iter(),
        &mut plain,
    );
    let got = decode(&mut Decoder::new(4096), &plain).unwrap();
    assert_eq!(got, fields(&[(":status", "200"), ("vary", "accept")]));
}

#[test]
fn the_eight_byte_value_check_agrees_with_the_byte_by_byte_one() {
    let reference = |v: &[u8]| {
        let ws = |b: &u8| *b == b' ' || *b == b'\t';
        v.iter().all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
            && !v.first().is_some_and(ws)
            && !v.last().is_some_and(ws)
    };
    // Every byte value at every position of a printable value, and a pseudo-random mix.
    let base = b"abcdefghijklmnopqrstuvwx".to_vec();
    for pos in 0..base.len() {
        for b in 0..=255u8 {
            let mut v = base.clone();
            v[pos] = b;
            assert_eq!(super::request::valid_value(&v), reference(&v), "{v:?}");
        }
    }
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..20_000 {
        let len = (x % 40) as usize;
        let v: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Mostly printable, now and then anything.
                if x.is_multiple_of(16) {
                    (x >> 8) as u8
                } else {
                    0x20 + ((x >> 8) % 95) as u8
                }
            })
            .collect();
        assert_eq!(super::request::valid_value(&v), reference(&v), "{v:?}");
    }
}

/// A field name is lowercase token characters and nothing else, byte by byte.
#[test]
fn field_names_are_lowercase_tokens() {
    for b in 0..=255u8 {
        let token = b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b);
        let name = [b'x', b, b'y'];
        assert_eq!(
            super::request::regular_field(&name, b"v").is_ok(),
            token,
            "{name:?}"
        );
    }
    assert!(super::request::regular_field(b"", b"v").is_err());
}

#[test]
fn trailers_follow_the_rules_of_request_fields() {
    use super::request::trailer_ok;
    assert!(trailer_ok(b"x-sum", b"1"));
    assert!(trailer_ok(b"grpc-status", b"0"));
    for (n, v) in [
        (&b":path"[..], &b"/x"[..]),
        (b"X-Sum", b"1"),
        (b"upgrade", b"websocket"),
        (b"connection", b"close"),
        (b"keep-alive", b"5"),
        (b"proxy-connection", b"x"),
        (b"transfer-encoding", b"chunked"),
        (b"te", b"gzip"),
        (b"x-sum", b"a\rb"),
        (b"x-sum", b" 1"),
        (b"", b"1"),
    ] {
        assert!(!trailer_ok(n, v), "{:?}", String::from_utf8_lossy(n));
    }
}

// === request bodies: small DATA held and copied together ===

mod bodies {
    use std::pin::Pin;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use bytes::Bytes;
    use futures_util::FutureExt;
    use http_body::Body;

    use crate::http2::body::{channel, OwnBody, Returned};

    /// The next data chunk the request path gets, if one is queued.
    fn take(body: &mut OwnBody) -> Option<Bytes> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
            .now_or_never()
            .flatten()
            .and_then(|f| f.ok())
            .and_then(|f| f.into_data().ok())
    }

    #[test]
    fn small_frames_reach_the_reader_as_one_chunk_in_order() {
        let (mut tx, mut rx) = channel(Arc::new(Returned::default()), None);
        for b in [&b"ab"[..], b"c", b"de"] {
            assert!(tx.data(Bytes::copy_from_slice(b)));
        }
        assert!(take(&mut rx).is_none(), "held until released");
        assert!(tx.release());
        assert!(tx.data(Bytes::from(vec![b'x'; 2000])));
        assert!(tx.data(Bytes::from_static(b"f")));
        tx.flush();
        let got: Vec<Bytes> = std::iter::from_fn(|| take(&mut rx)).collect();
        assert_eq!(got, [&b"abcde"[..], &[b'x'; 2000][..], b"f"]);
    }

    #[test]
    fn held_bytes_wait_while_the_reader_is_behind() {
        let (mut tx, mut rx) = channel(Arc::new(Returned::default()), None);
        for _ in 0..8 {
            assert!(tx.data(Bytes::from(vec![b'L'; 1024])));
        }
        assert!(tx.data(Bytes::from_static(b"s")));
        assert!(!tx.release(), "eight chunks untaken: keep holding");
        assert!(take(&mut rx).is_some());
        assert!(tx.release(), "seven untaken: queue it");
        let rest: Vec<Bytes> = std::iter::from_fn(|| take(&mut rx)).collect();
        assert_eq!(rest.len(), 8);
        assert_eq!(rest[7], &b"s"[..]);
    }

    #[test]
    fn held_bytes_nobody_will_read_go_back_to_the_windows() {
        let returned = Arc::new(Returned::default());
        let (mut tx, rx) = channel(returned.clone(), None);
        for _ in 0..8 {
            assert!(tx.data(Bytes::from(vec![b'L'; 1024])));
        }
        assert!(tx.data(Bytes::from_static(b"abc")));
        drop(rx);
        // The reader went away behind: what it never took and what was held, at once.
        assert!(tx.release());
        assert_eq!(returned.bytes.load(Ordering::Relaxed), 8 * 1024 + 3);
        assert_eq!(tx.take_taken(), 8 * 1024 + 3);
        assert!(
            !tx.data(Bytes::from_static(b"d")),
            "a closed body takes nothing"
        );

        let returned = Arc::new(Returned::default());
        let (mut tx, _rx) = channel(returned.clone(), None);
        assert!(tx.data(Bytes::from_static(b"abcd")));
        drop(tx);
        assert_eq!(returned.bytes.load(Ordering::Relaxed), 4, "a reset stream");
    }
}
