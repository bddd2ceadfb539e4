//! Bodies through graylane's own HTTP/2 server (h2c with prior knowledge): uploads and
//! downloads larger than every flow-control window on either side, several at once on
//! one connection, and the framing the HTTP/1.1 upstream gets for them.
// Tests run on runtimes with tokio's time driver and may use its timers.
#![allow(clippy::disallowed_methods)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// An h2c client whose windows are HTTP/2's smallest default (65,535 bytes): graylane
/// must wait for its WINDOW_UPDATEs to send a large answer.
fn narrow_h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .http2_initial_stream_window_size(65_535)
        .http2_initial_connection_window_size(65_535)
        .build_http()
}

#[tokio::test]
async fn uploads_and_downloads_larger_than_every_window_come_through_whole() {
    let (stable, _gray, p) = served("rules: []\n").await;
    let c = narrow_h2c_client();

    // 4 MiB streamed up (graylane's windows are 1 MiB: it must give them back as the
    // upstream takes the body) and echoed down (the client's are 64 KiB).
    let total: u64 = 4 << 20;
    let req = http::Request::post(p.url("/echo"))
        .body(streamed_body(total, 16 * 1024))
        .unwrap();
    let echo = async {
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        resp.into_body().collect().await.unwrap().to_bytes()
    };
    let body = tokio::time::timeout(std::time::Duration::from_secs(20), echo)
        .await
        .expect("the echo stalled");
    assert_eq!(body.len() as u64, total);
    assert!(body.iter().all(|&b| b == b'x'));
    // A streamed body has no length: the upstream gets it chunked.
    let seen = stable.last();
    assert_eq!(
        seen.headers.get("transfer-encoding").map(|v| v.as_bytes()),
        Some(&b"chunked"[..])
    );

    // A body with a content-length keeps it, and is not chunked as well.
    let (st, _, n) = send(
        &c,
        "POST",
        &p.url("/count"),
        &[],
        Bytes::from(vec![b'y'; 3 << 20]),
    )
    .await;
    assert_eq!((st.as_u16(), n.as_str()), (200, "3145728"));
    let seen = stable.last();
    assert_eq!(
        seen.headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"3145728"[..])
    );
    assert!(
        seen.headers.get("transfer-encoding").is_none(),
        "{:?}",
        seen.headers
    );
    p.stop().await;
}

#[tokio::test]
async fn streams_share_the_connection_window_without_stalling() {
    let (_stable, _gray, p) = served("rules: []\n").await;
    let c = narrow_h2c_client();
    // Eight 768 KiB uploads at once on one connection: together six times graylane's
    // connection window, each under its stream window.
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let c = c.clone();
        let url = p.url("/count");
        tasks.push(tokio::spawn(async move {
            let n = (768 << 10) + i;
            let req = http::Request::post(url)
                .body(streamed_body(n, 8 * 1024))
                .unwrap();
            let resp = c.request(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (n, String::from_utf8_lossy(&body).into_owned())
        }));
    }
    for t in tasks {
        let (n, counted) = tokio::time::timeout(std::time::Duration::from_secs(20), t)
            .await
            .expect("an upload stalled")
            .unwrap();
        assert_eq!(counted, n.to_string());
    }
    p.stop().await;
}

#[tokio::test]
async fn answers_waiting_on_the_connection_window_resume_when_it_opens() {
    let (_stable, _gray, p) = served("rules: []\n").await;
    // Stream windows of 4 MiB but a connection window of 64 KiB: the answers wait on the
    // connection's window, which the client opens as it reads.
    let c: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .http2_initial_stream_window_size(4 << 20)
        .http2_initial_connection_window_size(65_535)
        .build_http();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = c.clone();
        let url = p.url("/echo");
        tasks.push(tokio::spawn(async move {
            let req = http::Request::post(url)
                .body(streamed_body(1 << 20, 16 * 1024))
                .unwrap();
            let resp = c.request(req).await.unwrap();
            resp.into_body().collect().await.unwrap().to_bytes().len()
        }));
    }
    for t in tasks {
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), t)
            .await
            .expect("an answer stalled")
            .unwrap();
        assert_eq!(n, 1 << 20);
    }
    p.stop().await;
}

// === frames written by hand ===

use common::hostile::h2::{self as h2raw, Conn as H2Conn, Outcome};
use std::time::Duration;

/// A header block ending stream `id` in one HEADERS frame (END_HEADERS, END_STREAM).
fn whole_block(id: u32, block: &[u8]) -> Vec<u8> {
    h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_HEADERS | h2raw::END_STREAM,
        id,
        block,
    )
}

/// graylane with `rules` in front of a stable and a gray upstream, stable's first.
async fn served(rules: &str) -> (Upstream, Upstream, Proxy) {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let p = spawn_proxy(&simple_config(stable.addr, gray.addr, ""), rules).await;
    (stable, gray, p)
}

/// graylane (no rules) in front of two recording upstreams, stable's first, and an h2c
/// connection to it.
async fn recorded() -> (
    common::hostile::Recorder,
    common::hostile::Recorder,
    Proxy,
    H2Conn,
) {
    let stable = common::hostile::spawn_recorder(Default::default()).await;
    let gray = common::hostile::spawn_recorder(Default::default()).await;
    let p = spawn_proxy(&simple_config(stable.addr, gray.addr, ""), "rules: []\n").await;
    let c = H2Conn::open(p.addr()).await;
    (stable, gray, p, c)
}

fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in pairs {
        p.extend(id.to_be_bytes());
        p.extend(v.to_be_bytes());
    }
    h2raw::frame(h2raw::SETTINGS, 0, 0, &p)
}

/// RFC 9113 §8.1.1: a body whose DATA does not add up to its content-length is
/// malformed, and trailers end it as END_STREAM on DATA does: the stream is reset, and
/// the upstream never gets a request whose body is shorter than its length says.
#[tokio::test]
async fn trailers_do_not_end_a_body_short_of_its_length() {
    let o = post_abc_then_trailers("10", 0, 0, b"x-sum").await;
    assert_eq!(o.reset, Some(0x1), "{o:?}");
    assert!(o.status.is_none_or(|s| s != 200), "{o:?}");
}

/// RFC 9113 §5.1: a stream the client has ended is half-closed (remote), and a HEADERS
/// frame on it is a stream error of type STREAM_CLOSED (the upstream is slow so that the
/// stream is still open when the frame arrives).
#[tokio::test]
async fn headers_on_a_stream_the_client_ended_reset_it_stream_closed() {
    let o = post_abc_then_trailers("3", h2raw::END_STREAM, 2000, b"x-sum").await;
    assert_eq!(o.reset, Some(0x5), "{o:?}");
}

/// RFC 9113 §8.1, §8.2.2: trailers follow the rules of a request's fields; one with a
/// connection-specific field is malformed, reset, and never reaches the upstream
/// (whose HTTP/1.1 chunked trailer section would carry it on).
#[tokio::test]
async fn trailers_with_a_connection_specific_field_are_refused() {
    let o = post_abc_then_trailers("3", 0, 0, b"upgrade").await;
    assert_eq!(o.reset, Some(0x1), "{o:?}");
    assert!(o.status.is_none_or(|s| s != 200), "{o:?}");
}

/// A trailer block (`x-sum: 1`) ending stream `id`.
fn trailers_ending(id: u32) -> Vec<u8> {
    trailer_ending(id, b"x-sum")
}

/// A trailer block of one field named `name` (value `1`) ending stream `id`.
fn trailer_ending(id: u32, name: &[u8]) -> Vec<u8> {
    let mut trailer = Vec::new();
    h2raw::literal(name, b"1", &mut trailer);
    whole_block(id, &trailer)
}

/// On one h2c connection: a POST with `content-length`, DATA `abc` with `data_flags`,
/// then a trailer block of one field `trailer` ending the stream; what became of the
/// stream. The upstream answers after `delay_ms`.
async fn post_abc_then_trailers(
    length: &str,
    data_flags: u8,
    delay_ms: u64,
    trailer: &[u8],
) -> Outcome {
    let (stable, _gray, p) = served("rules: []\n").await;
    stable.delay(delay_ms);
    let mut c = H2Conn::open(p.addr()).await;
    let block = h2raw::request_block("POST", "/count", &[("content-length", length)]);
    let mut out = h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, 1, &block);
    out.extend(h2raw::frame(h2raw::DATA, data_flags, 1, b"abc"));
    out.extend(trailer_ending(1, trailer));
    c.send(&out).await.unwrap();
    let o = c.outcome(1, Duration::from_secs(3)).await;
    p.stop().await;
    o
}

/// RFC 9113 §5.1: frames the client sent before it saw graylane's RST_STREAM are
/// ignored. Here the upstream answers an upload at once, graylane ends the stream with
/// RST_STREAM(NO_ERROR), and the client's trailers arrive after: they are decoded and
/// dropped, and the connection goes on serving. A stream that ended otherwise is not
/// reopened by a header block.
#[tokio::test]
async fn trailers_after_an_early_answer_leave_the_connection_serving() {
    let (_stable, _gray, p) = served("rules: []\n").await;
    let mut c = H2Conn::open(p.addr()).await;
    let block = h2raw::request_block("POST", "/status/413", &[]);
    let mut out = h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, 1, &block);
    out.extend(h2raw::frame(h2raw::DATA, 0, 1, b"abc"));
    c.send(&out).await.unwrap();
    let o = c.outcome(1, Duration::from_secs(3)).await;
    assert_eq!((o.status, o.ended), (Some(413), true), "{o:?}");
    let mut out = trailers_ending(1);
    out.extend(whole_block(3, &h2raw::get_block("/after", &[])));
    c.send(&out).await.unwrap();
    let o = c.outcome(3, Duration::from_secs(3)).await;
    assert_eq!((o.status, o.goaway), (Some(200), None), "{o:?}");
    // Stream 3 ended without a reset: a header block on it reuses a stream id, a
    // connection error (§5.1.1), END_STREAM or not.
    c.send(&whole_block(3, &h2raw::get_block("/again", &[])))
        .await
        .unwrap();
    let o = c.outcome(3, Duration::from_secs(3)).await;
    assert_eq!(o.goaway, Some(0x1), "{o:?}");
    p.stop().await;
}

/// RFC 9113 §8.3.1: a request whose Host names another authority than its `:authority`
/// is malformed: routing reads `:authority`, and a name-based virtual host behind
/// graylane must not be sent elsewhere by the Host an HTTP/1.1 upstream gets. The same
/// Host (any case) goes through; without `:authority` the client's Host is the one.
#[tokio::test]
async fn a_host_other_than_the_authority_is_refused() {
    let (stable, _gray, p, mut c) = recorded().await;
    let mut bare = vec![0x82, 0x86, 0x84]; // GET, http, / and no :authority
    h2raw::literal(b"host", b"h.test", &mut bare);
    let authority = |a: &[u8]| {
        let mut b = vec![0x82, 0x86, 0x84];
        h2raw::literal(b":authority", a, &mut b);
        b
    };
    // `request_block` sends `:authority: t`.
    for (id, block, status) in [
        (
            1,
            h2raw::get_block("/a", &[("host", "elsewhere.test")]),
            400,
        ),
        (3, h2raw::get_block("/b", &[("host", "T")]), 200),
        (5, bare, 200),
        (7, h2raw::get_block("/c", &[("host", "t:8080")]), 400),
        (9, authority(b"u@t"), 400),
        (11, authority(b"t:abc"), 400),
        (13, authority(b"t:8080"), 200),
    ] {
        c.send(&whole_block(id, &block)).await.unwrap();
        let o = c.outcome(id, Duration::from_secs(3)).await;
        assert_eq!(o.status, Some(status), "stream {id}: {o:?}");
    }
    let hosts: Vec<Vec<String>> = stable.seen().iter().map(|s| s.all("host")).collect();
    assert_eq!(hosts, [["T"], ["h.test"], ["t:8080"]]);
    p.stop().await;
}

/// A rule's `header: host` reads `:authority` over HTTP/2: a browser sends no Host field
/// there, and the request is the one an HTTP/1.1 upstream will get, Host included.
#[tokio::test]
async fn a_host_rule_reads_the_authority() {
    let rules =
        "rules:\n  - name: h\n    when: { header: { host: { in: [t] } } }\n    route: gray\n";
    let (_stable, _gray, p) = served(rules).await;
    let mut c = H2Conn::open(p.addr()).await;
    // `request_block` sends `:authority: t`.
    let block = h2raw::get_block("/a", &[]);
    c.send(&whole_block(1, &block)).await.unwrap();
    let o = c.outcome(1, Duration::from_secs(3)).await;
    assert_eq!(
        (o.status, o.data.as_slice()),
        (Some(200), &b"gray"[..]),
        "{o:?}"
    );
    p.stop().await;
}

/// A body sent as thousands of tiny DATA frames reaches the upstream whole and in order,
/// in a few chunks: one queue entry (and one upstream write) per frame would let a
/// client turn the 1 MiB window into a million entries.
#[tokio::test]
async fn tiny_data_frames_reach_the_upstream_whole_in_few_chunks() {
    let (stable, _gray, p, mut c) = recorded().await;
    let block = h2raw::request_block("POST", "/tiny", &[]);
    let mut out = h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, 1, &block);
    let mut want = Vec::new();
    for i in 0..5000u32 {
        let b = [b'a' + (i % 26) as u8];
        out.extend(h2raw::frame(h2raw::DATA, 0, 1, &b));
        want.extend_from_slice(&b);
    }
    // A large frame between small ones keeps its place.
    let big = vec![b'Z'; 4096];
    out.extend(h2raw::frame(h2raw::DATA, 0, 1, &big));
    want.extend_from_slice(&big);
    for i in 0..3000u32 {
        let b = [b'0' + (i % 10) as u8];
        out.extend(h2raw::frame(h2raw::DATA, 0, 1, &b));
        want.extend_from_slice(&b);
    }
    out.extend(trailers_ending(1));
    c.send(&out).await.unwrap();
    let o = c.outcome(1, Duration::from_secs(5)).await;
    assert_eq!(o.status, Some(200), "{o:?}");
    let seen = stable.last();
    assert!(
        seen.body == want,
        "{} bytes of {}",
        seen.body.len(),
        want.len()
    );
    assert!(
        seen.chunks <= 20,
        "{} chunks for 8,001 DATA frames",
        seen.chunks
    );
    p.stop().await;
}

/// A client may change its settings at any time: a larger initial window resumes an
/// answer that waited on the old one (§6.9.2), and a new HPACK table size is
/// acknowledged at the start of the next header block (RFC 7541 §4.2).
#[tokio::test]
async fn settings_changes_resume_answers_and_update_the_table_size() {
    let (_stable, _gray, p) = served("rules: []\n").await;
    let mut c = H2Conn::open(p.addr()).await;
    // No room for any answer data, and a smaller table.
    c.send(&settings(&[(0x4, 0), (0x1, 0)])).await.unwrap();
    c.send(&whole_block(1, &h2raw::get_block("/", &[])))
        .await
        .unwrap();
    let o = c.outcome(1, Duration::from_millis(800)).await;
    assert!(
        o.data.is_empty() && !o.ended,
        "data sent without window: {o:?}"
    );
    let head = c
        .frames
        .iter()
        .find(|f| f.ty == h2raw::HEADERS && f.stream == 1)
        .expect("the answer's head");
    assert_eq!(
        head.payload.first(),
        Some(&0x20),
        "no table size update first"
    );
    c.send(&settings(&[(0x4, 65_535)])).await.unwrap();
    let o = c.outcome(1, Duration::from_secs(3)).await;
    assert!(o.ended, "the answer did not resume: {o:?}");
    assert_eq!(o.data, b"stable");
    p.stop().await;
}

/// What the request path never read of a body (refused before it, or the upstream
/// answered first) goes back to the client's windows: later uploads on the connection
/// do not stall.
#[tokio::test]
async fn bodies_left_unread_give_their_window_back() {
    let (_stable, _gray, p) = served("rules: []\n").await;
    let c = h2c_client();
    let run = async {
        for _ in 0..4 {
            // Refused for its Host before a byte of its body is read: the DATA that came
            // with the HEADERS was queued for nobody.
            let (st, _, _) = send(
                &c,
                "POST",
                &p.url("/count"),
                &[("host", "bad host")],
                Bytes::from(vec![b'z'; 900 << 10]),
            )
            .await;
            assert_eq!(st.as_u16(), 400);
            // The upstream answers at once, reading nothing of the 900 KiB.
            let (st, _, _) = send(
                &c,
                "POST",
                &p.url("/status/413"),
                &[],
                Bytes::from(vec![b'z'; 900 << 10]),
            )
            .await;
            assert_eq!(st.as_u16(), 413);
        }
        let (st, _, n) = send(
            &c,
            "POST",
            &p.url("/count"),
            &[],
            Bytes::from(vec![b'z'; 2 << 20]),
        )
        .await;
        assert_eq!((st.as_u16(), n.as_str()), (200, "2097152"));
    };
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("an upload stalled on windows never given back");
    p.stop().await;
}

/// DATA that came in with its HEADERS is queued before the request is handled; when the
/// request is refused without reading it, those bytes still go back to the connection's
/// window. A hundred such requests carry 1.5 MB, more than the window graylane opens:
/// were they not given back, the client would run out of window and graylane would call
/// it a flow-control error.
#[tokio::test]
async fn data_queued_for_a_refused_request_goes_back_to_the_window() {
    let (_stable, _gray, p) = served("rules: []\n").await;
    let mut c = H2Conn::open(p.addr()).await;
    let body = vec![b'q'; 15_000];
    for i in 0..100u32 {
        let id = 1 + 2 * i;
        let block = h2raw::request_block(
            "POST",
            "/count",
            &[("host", "bad host"), ("content-length", "15000")],
        );
        let mut burst = h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, id, &block);
        burst.extend(h2raw::frame(h2raw::DATA, h2raw::END_STREAM, id, &body));
        c.send(&burst).await.unwrap();
        let o = c.outcome(id, Duration::from_secs(3)).await;
        assert!(o.goaway.is_none() && !o.closed, "request {i}: {o:?}");
        assert_eq!(o.status, Some(400), "request {i}: {o:?}");
    }
    p.stop().await;
}

/// An HTTP/2 upstream may end a body with an empty DATA frame; the client still gets
/// END_STREAM (an answer that never ends would hang the browser's request).
#[tokio::test]
async fn answers_from_an_http2_upstream_end_for_an_http2_client() {
    let stable = spawn_upstream("stable").await;
    let cfg = config_yaml(
        &format!(
            "  - name: chat\n    match: {{ path_prefix: / }}\n    pools:\n      stable: {{ endpoints: [\"{}\"], protocol: h2 }}\n",
            stable.addr
        ),
        "",
    );
    let p = spawn_proxy(&cfg, "rules: []\n").await;
    let c = narrow_h2c_client();
    let run = async {
        for total in [0u64, 1, 70_000, 1 << 20] {
            let req = http::Request::post(p.url("/echo"))
                .body(streamed_body(total, 16 * 1024))
                .unwrap();
            let resp = c.request(req).await.unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len() as u64, total);
        }
        let (st, _, body) = get(&c, &p.url("/x"), &[]).await;
        assert_eq!((st.as_u16(), body.as_str()), (200, "stable"));
    };
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("an answer never ended");
    assert_eq!(stable.last().version, http::Version::HTTP_2);
    p.stop().await;
}

/// An answer carries one `date` and, when its length is known, one `content-length`:
/// graylane's own answers get both as hyper gave them, an upstream's keep its own.
#[tokio::test]
async fn answers_are_dated_and_sized_once() {
    let (_stable, _gray, p) = served("rules: []\n").await;
    let c = h2c_client();
    for (headers, status) in [(vec![], 200), (vec![("host", "bad host")], 400)] {
        let (st, h, body) = get(&c, &p.url("/x"), &headers).await;
        assert_eq!(st.as_u16(), status);
        assert_eq!(h.get_all("date").iter().count(), 1, "{h:?}");
        let lengths: Vec<_> = h.get_all("content-length").iter().collect();
        assert_eq!(lengths, [body.len().to_string().as_str()], "{h:?}");
    }
    p.stop().await;
}

/// An answer whose body came whole with its head leaves in one DATA frame and counts
/// against the connection's window as a streamed one does: of the 65,535 bytes the
/// connection starts with, thirteen 5,000-byte answers take 65,000, and the fourteenth
/// gets the 535 left until the client opens the window further.
#[tokio::test]
async fn whole_answers_count_against_the_connection_window() {
    let body = vec![b'a'; 5000];
    let mut script = b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n".to_vec();
    script.extend(&body);
    let stable = common::hostile::spawn_recorder([("/resp/big".to_owned(), script)].into()).await;
    let gray = common::hostile::spawn_recorder(Default::default()).await;
    let p = spawn_proxy(&simple_config(stable.addr, gray.addr, ""), "rules: []\n").await;
    let mut c = H2Conn::open(p.addr()).await;
    let mut whole = 0;
    for i in 0..13 {
        let id = 2 * i + 1;
        c.send(&whole_block(id, &h2raw::get_block("/resp/big", &[])))
            .await
            .unwrap();
        let o = c.outcome(id, Duration::from_secs(3)).await;
        assert!(o.ended && o.data == body, "answer {i}: {o:?}");
        let frames = c
            .frames
            .iter()
            .filter(|f| f.ty == h2raw::DATA && f.stream == id);
        whole += usize::from(frames.count() == 1);
    }
    // The first answer at least came whole in one read (a later one may be cut by the
    // connection's read buffer and streamed): both ways count against the window.
    assert!(whole >= 1, "no answer went out in one DATA frame");
    c.send(&whole_block(27, &h2raw::get_block("/resp/big", &[])))
        .await
        .unwrap();
    let o = c.outcome(27, Duration::from_millis(500)).await;
    assert!(!o.ended && o.data.len() == 535, "past the window: {o:?}");
    c.send(&h2raw::frame(0x8, 0, 0, &5000u32.to_be_bytes()))
        .await
        .unwrap();
    let o = c.outcome(27, Duration::from_secs(3)).await;
    assert!(
        o.ended && o.data.len() == 4465,
        "after WINDOW_UPDATE: {o:?}"
    );
    p.stop().await;
}

/// An h2c preface that arrives in pieces, however it is cut, is waited for whole and
/// then served by graylane's own HTTP/2 server (its SETTINGS: three values, the stream
/// limit first).
#[tokio::test]
async fn a_preface_in_pieces_is_served_over_http2() {
    let (_stable, _gray, p) = served("rules: []\n").await;
    for cuts in [&[16][..], &[2, 13, 21], &[18]] {
        let mut c = H2Conn::open_in_pieces(p.addr(), cuts).await;
        let settings = c
            .frames
            .iter()
            .find(|f| f.ty == h2raw::SETTINGS && f.flags & h2raw::ACK == 0)
            .expect("the server's SETTINGS");
        assert_eq!(
            settings.payload.len(),
            18,
            "{cuts:?}: {:?}",
            settings.payload
        );
        assert_eq!(&settings.payload[..2], &[0, 3], "{cuts:?}");
        c.send(&whole_block(1, &h2raw::get_block("/", &[])))
            .await
            .unwrap();
        let o = c.outcome(1, Duration::from_secs(3)).await;
        assert_eq!(
            (o.status, o.data.as_slice()),
            (Some(200), &b"stable"[..]),
            "{cuts:?}"
        );
    }
    p.stop().await;
}

/// A preface that stops short is a head like any other: `request_header` ends it with
/// `408`.
#[tokio::test]
async fn a_preface_that_stops_short_gets_408_within_request_header() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_stable, _gray, p) = setup_simple("timeouts: { request_header: 1s }", "rules: []\n").await;
    let mut s = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("the connection stayed open")
        .ok();
    assert!(
        got.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    p.stop().await;
}
