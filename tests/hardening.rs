//! Hardening: hostile clients and hostile upstreams on raw sockets. Every case names the
//! RFC section it holds graylane to (RFC 9112 HTTP/1.1 framing and smuggling, RFC 9110
//! semantics, RFC 9113 HTTP/2, RFC 6455 WebSocket). After each case graylane must still
//! serve a normal request, must have answered with the status the RFC requires, and must
//! never have forwarded a smuggled request to its upstream (checked on what the upstream
//! parsed, by its own framing).
//!
//! The HTTP/1.1 byte sequences of the smuggling, header and upgrade groups live in
//! `tools/hostile/cases.json`, shared with the peer comparison `tools/hostile/run.sh`
//! (nginx and haproxy against the same bytes); each test below runs cases by name and
//! the file's `expect` says what graylane must do.
//!
//! Groups: request smuggling (both directions) · upgrade abuse · header abuse · slow
//! clients · floods · HTTP/2 abuse · hostile upstreams · long links · `Vary`.
// Tests run on runtimes with tokio's time driver and may use its timers.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::hostile::h2::{self as h2raw, Conn as H2Conn};
use common::hostile::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const RULES: &str = "\
rules:
  - name: gray-uid
    when: { uid: { in: [42] } }
    route: gray
";

/// Short timeouts so the whole suite runs in well under a minute.
const TIMEOUTS: &str = "timeouts: { request_header: 1s, idle: 2s, upstream_response: 2s }";

// === running the shared cases ===

/// A recording upstream (stable and gray alike) that knows every scripted answer of the
/// cases file, and graylane in front of it.
async fn case_rig(extra: &str) -> (Recorder, Proxy) {
    let rec = spawn_recorder(case_responses()).await;
    let p = spawn_proxy(&simple_config(rec.addr, rec.addr, extra), RULES).await;
    (rec, p)
}

/// Sends one case's bytes and checks every expectation of its `expect`; returns what
/// was wrong.
async fn check_case(p: &Proxy, rec: &Recorder, c: &Case) -> Vec<String> {
    let before = rec.seen().len();
    let a = exchange_quiet(
        p.addr(),
        &c.request,
        Duration::from_millis(800),
        Duration::from_secs(6),
    )
    .await;
    // A scripted upstream answer may still be on its way; what the upstream parsed is
    // recorded before it answers, so a short pause is enough.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let seen: Vec<RawSeen> = rec.seen().into_iter().skip(before).collect();
    let e = &c.expect;
    let mut bad = Vec::new();
    let got = format!("got {:?} (end {:?}): {}", a.statuses(), a.end, show(&a.raw));
    let list = |k: &str| -> Vec<String> {
        e.get(k)
            .and_then(|v| v.as_array())
            .map(|v| {
                v.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    if let Some(allowed) = e.get("status").and_then(|v| v.as_array()) {
        let allowed: Vec<u64> = allowed.iter().filter_map(|v| v.as_u64()).collect();
        if !allowed.contains(&u64::from(a.first())) {
            bad.push(format!("status: want one of {allowed:?}, {got}"));
        }
    }
    if let Some(want) = e.get("statuses").and_then(|v| v.as_array()) {
        let want: Vec<u16> = want
            .iter()
            .filter_map(|v| v.as_u64().map(|n| n as u16))
            .collect();
        if a.statuses() != want {
            bad.push(format!("statuses: want {want:?}, {got}"));
        }
    }
    if e.get("close").and_then(|v| v.as_bool()) == Some(true) && a.end == Some(End::Open) {
        bad.push(format!("the connection was left open, {got}"));
    }
    if e.get("upstream_none").and_then(|v| v.as_bool()) == Some(true) && !seen.is_empty() {
        bad.push(format!(
            "the upstream saw {:?}",
            seen.iter().map(|s| &s.target).collect::<Vec<_>>()
        ));
    }
    for t in list("upstream_never") {
        if seen.iter().any(|s| s.path() == t) {
            bad.push(format!("SMUGGLED: the upstream saw a request for {t}"));
        }
    }
    if let Some(host) = e.get("upstream_host").and_then(|v| v.as_str()) {
        match seen.last() {
            Some(s) if s.all("host") == vec![host.to_owned()] => {}
            Some(s) => bad.push(format!(
                "the upstream saw host {:?}, want [{host:?}]",
                s.all("host")
            )),
            None => bad.push("the upstream saw nothing".to_owned()),
        }
    }
    for h in list("upstream_has") {
        match seen.last() {
            Some(s) if s.header(&h).is_some() => {}
            Some(_) => bad.push(format!("the upstream did not get {h}")),
            None => bad.push("the upstream saw nothing".to_owned()),
        }
    }
    for h in list("upstream_lacks") {
        if seen.iter().any(|s| s.header(&h).is_some()) {
            bad.push(format!("the upstream got {h}"));
        }
    }
    for h in list("upstream_single") {
        if let Some(s) = seen.iter().find(|s| s.all(&h).len() > 1) {
            bad.push(format!("the upstream got {h} {:?}", s.all(&h)));
        }
    }
    if let Some(body) = e.get("body").and_then(|v| v.as_str()) {
        if a.answers.first().map(|x| x.2.as_slice()) != Some(body.as_bytes()) {
            bad.push(format!("body: want {body:?}, {got}"));
        }
    }
    if let Some(never) = e.get("never_body").and_then(|v| v.as_str()) {
        if find(&a.raw, never.as_bytes()).is_some() {
            bad.push(format!("the client got {never:?}: {got}"));
        }
    }
    if e.get("no_cl_and_te").and_then(|v| v.as_bool()) == Some(true)
        && a.answers.iter().any(|(_, head, _)| {
            head.contains("\ncontent-length:") && head.contains("\ntransfer-encoding:")
        })
    {
        bad.push(format!("an answer carries both framings, {got}"));
    }
    bad.into_iter()
        .map(|b| format!("{} ({}): {b}", c.name, c.rfc))
        .collect()
}

/// Runs the named cases against one graylane, then checks it still serves.
async fn run_cases(names: &[&str]) {
    let (rec, p) = case_rig(TIMEOUTS).await;
    let all = cases();
    let mut bad = Vec::new();
    for name in names {
        let c = all
            .get(*name)
            .unwrap_or_else(|| panic!("no case {name} in cases.json"));
        bad.extend(check_case(&p, &rec, c).await);
    }
    still_serves(p.addr()).await;
    assert!(bad.is_empty(), "\n{}", bad.join("\n"));
}

/// Every case in the shared file is run by some test here (a new case cannot be
/// forgotten), and every case's bytes decode.
#[test]
fn every_shared_case_is_covered() {
    let src = include_str!("hardening.rs");
    let missing: Vec<String> = cases()
        .into_keys()
        .filter(|n| !src.contains(&format!("\"{n}\"")))
        .collect();
    assert!(missing.is_empty(), "cases not run: {missing:?}");
}

/// The minimal HPACK decoder the HTTP/2 tests read `:status` with.
#[test]
fn hpack_status_decoding() {
    assert_eq!(h2raw::status(&[0x88]), Some(200));
    assert_eq!(h2raw::status(&[0x8d]), Some(404));
    // `:status: 431`, literal with incremental indexing, Huffman "431":
    // 011010 011001 00001 + seven 1s of padding.
    assert_eq!(h2raw::status(&[0x48, 0x83, 0x69, 0x90, 0xff]), Some(431));
    assert_eq!(h2raw::status(&[0x08, 0x03, b'5', b'0', b'2']), Some(502));
    assert_eq!(h2raw::status(&[0x48, 0x82, 0x69, 0x90]), None);
}

// === request smuggling: client → graylane → upstream ===

/// RFC 9112 §6.1 (a server MAY reject a request with both Content-Length and
/// Transfer-Encoding or process it by Transfer-Encoding alone, and MUST close the
/// connection after responding), §6.3 (3) (an intermediary that forwards it MUST remove
/// Content-Length first), §11.2 (request smuggling): either order of the two fields,
/// and the bytes that follow the chunked body never reach the upstream as a request.
#[tokio::test]
async fn content_length_with_transfer_encoding_never_smuggles() {
    run_cases(&["cl-te", "te-cl"]).await;
}

/// RFC 9112 §6.3 (5), RFC 9110 §8.6: a Content-Length that is not one non-negative
/// decimal number (different duplicates, a list of different values, a sign, hex, a
/// value past 2^64) makes the framing unknowable: 400 and close, nothing forwarded.
#[tokio::test]
async fn invalid_or_conflicting_content_length_is_400() {
    run_cases(&[
        "cl-dup-differ",
        "cl-list-differ",
        "cl-plus",
        "cl-negative",
        "cl-hex",
        "cl-overflow",
    ])
    .await;
}

/// RFC 9110 §8.6: Content-Length sent twice with the same value may be rejected or
/// collapsed into one field; it never reaches the upstream twice.
#[tokio::test]
async fn duplicate_equal_content_length_reaches_the_upstream_once() {
    run_cases(&["cl-dup-same"]).await;
}

/// RFC 9112 §6.3 (4): a request whose Transfer-Encoding does not end in `chunked`
/// (`chunked, gzip`, an unknown coding, `identity` on a later line) has no knowable
/// length: 400 and close.
#[tokio::test]
async fn transfer_encoding_not_ending_in_chunked_is_400() {
    run_cases(&[
        "te-chunked-not-last",
        "te-unknown",
        "te-identity-after-chunked",
    ])
    .await;
}

/// RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing; the
/// recipient closes after it and nothing after the body is taken as a request.
#[tokio::test]
async fn transfer_encoding_in_http10_is_refused() {
    run_cases(&["te-http10"]).await;
}

/// RFC 9112 §5.1: whitespace between a field name and the colon MUST get 400.
#[tokio::test]
async fn whitespace_before_the_colon_is_400() {
    run_cases(&["te-space-before-colon"]).await;
}

/// RFC 9112 §5.2: obs-fold in a request is rejected with 400 or replaced by spaces; a
/// folded Transfer-Encoding never frames the body differently from what is forwarded.
#[tokio::test]
async fn obs_fold_is_rejected() {
    run_cases(&["obs-fold", "te-obs-fold"]).await;
}

/// RFC 9112 §2.2, RFC 9110 §5.5: a bare CR in a field value or ending the request line
/// is invalid: 400, nothing forwarded (a downstream that took CR as a line end would see
/// a Transfer-Encoding graylane did not).
#[tokio::test]
async fn bare_cr_is_400() {
    run_cases(&["bare-cr-value", "bare-cr-line"]).await;
}

/// RFC 9110 §5.5: NUL in a field value is invalid and dangerous: reject (400).
#[tokio::test]
async fn nul_in_a_field_value_is_400() {
    run_cases(&["nul-value"]).await;
}

/// RFC 9112 §2.2: a recipient MAY take a bare LF as a line end; whichever graylane does,
/// it answers cleanly.
#[tokio::test]
async fn bare_lf_line_ends_get_a_clean_answer() {
    run_cases(&["lf-only"]).await;
}

/// RFC 9112 §7.1: chunk sizes past 64 bits (recipients MUST guard against integer
/// overflow), negative sizes and chunks longer than their size are framing errors: 400
/// or close, and the bytes after them never become a request.
#[tokio::test]
async fn chunk_size_overflow_and_overrun_are_refused() {
    run_cases(&[
        "chunk-size-overflow",
        "chunk-size-negative",
        "chunk-data-overrun",
    ])
    .await;
}

/// RFC 9112 §7.1.1: a server ought to limit the total length of chunk extensions and
/// answer 4xx past it; one 64 KiB extension is refused, many small ones are bounded.
#[tokio::test]
async fn chunk_extension_abuse_is_bounded() {
    run_cases(&["chunk-ext-huge", "chunk-ext-many"]).await;
}

/// RFC 9112 §7.1.1: a recipient MUST ignore unrecognised chunk extensions: a short
/// valid one passes.
#[tokio::test]
async fn valid_chunk_extensions_are_ignored() {
    run_cases(&["chunk-ext-valid"]).await;
}

/// RFC 9112 §9.3.2: pipelined requests are answered in order; an invalid one ends the
/// connection with 400 and nothing after it is forwarded.
#[tokio::test]
async fn pipelining_stops_at_an_invalid_request() {
    run_cases(&["pipelined-then-bad"]).await;
}

// === response smuggling: upstream → graylane → client ===

/// RFC 9112 §6.3 (3): a response with both Content-Length and Transfer-Encoding is read
/// by Transfer-Encoding and the Content-Length is dropped before forwarding (or the
/// response is refused with 502); the client never gets both framings.
#[tokio::test]
async fn upstream_content_length_with_transfer_encoding_is_read_chunked() {
    run_cases(&["resp-cl-te"]).await;
}

/// RFC 9112 §6.3 (5): a proxy receiving a response with an invalid Content-Length
/// (different duplicates, not a number) MUST close the connection to the server, discard
/// the response and answer 502.
#[tokio::test]
async fn upstream_conflicting_content_length_is_502() {
    run_cases(&["resp-cl-dup", "resp-cl-invalid"]).await;
}

/// RFC 9112 §5.2: a proxy receiving obs-fold in a response MUST either answer 502 or
/// replace each fold with spaces before forwarding; the fold never reaches the client.
#[tokio::test]
async fn upstream_obs_fold_is_refused_or_unfolded() {
    run_cases(&["resp-obs-fold"]).await;
}

/// RFC 9110 §5.5, §15.6.3: NUL in an upstream's field value makes its response invalid:
/// 502.
#[tokio::test]
async fn upstream_nul_in_a_field_is_502() {
    run_cases(&["resp-nul"]).await;
}

/// RFC 9112 §6.3 and §9.3: a response ends where its framing says; bytes an upstream
/// sends after it (here a whole second response, `smuggled`) are not a response to the
/// next request, on the same client connection (pipelined) or on another one (the
/// upstream connection must not be reused with them buffered).
#[tokio::test]
async fn upstream_extra_bytes_never_answer_the_next_request() {
    run_cases(&["resp-extra-bytes"]).await;
    // The same upstream connection, reused for another client connection.
    let (_rec, p) = case_rig(TIMEOUTS).await;
    let first = exchange_quiet(
        p.addr(),
        b"GET /resp/resp-extra-bytes HTTP/1.1\r\nHost: t\r\n\r\n",
        Duration::from_millis(300),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(first.first(), 200, "{}", show(&first.raw));
    for _ in 0..3 {
        let next = exchange_quiet(
            p.addr(),
            b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n",
            Duration::from_millis(300),
            Duration::from_secs(5),
        )
        .await;
        assert!(
            find(&next.raw, b"smuggled").is_none(),
            "a later request got the upstream's extra bytes: {}",
            show(&next.raw)
        );
        assert_eq!(
            next.answers.first().map(|a| a.2.as_slice()),
            Some(&b"/next"[..])
        );
    }
}

// === upgrade abuse ===

/// RFC 9113 §3.1 (the `h2c` upgrade token is deprecated), RFC 9110 §7.8: an
/// `Upgrade: h2c` request is forwarded as a plain request, without Upgrade or
/// HTTP2-Settings, so an upstream cannot switch and hand the client a tunnel past the
/// proxy (h2c smuggling). The recording upstream would answer 101 to any Upgrade.
#[tokio::test]
async fn h2c_upgrade_never_opens_a_tunnel() {
    run_cases(&["h2c-upgrade"]).await;
}

/// RFC 9110 §7.8: an Upgrade to anything but WebSocket is not honoured: the request is
/// forwarded without it and answered normally.
#[tokio::test]
async fn upgrade_to_another_protocol_is_a_plain_request() {
    run_cases(&["upgrade-other"]).await;
}

/// RFC 6455 §4.2.1 (a handshake needs `Connection: Upgrade`), RFC 9110 §7.8: without it
/// `Upgrade: websocket` is not a handshake and no tunnel opens.
#[tokio::test]
async fn websocket_upgrade_without_connection_upgrade_is_a_plain_request() {
    run_cases(&["ws-no-connection"]).await;
}

// === header abuse ===

/// RFC 9110 §5.4 (a server MUST answer 4xx to a field section larger than it wishes to
/// process), RFC 6585 §5 (431): a 70 KiB field over `max_header_bytes` (64 KiB).
#[tokio::test]
async fn an_oversized_head_is_431() {
    run_cases(&["head-70k"]).await;
}

/// RFC 9110 §5.4, RFC 6585 §5: more than 100 fields is 431 (README: Limits).
#[tokio::test]
async fn more_than_100_fields_is_431() {
    run_cases(&["fields-101"]).await;
}

/// RFC 9110 §5.1 (a field name is a token), RFC 9112 §5: names with a space, empty,
/// with a control byte or an 8-bit byte are invalid: 400.
#[tokio::test]
async fn invalid_field_names_are_400() {
    run_cases(&["name-space", "name-empty", "name-ctl", "name-8bit"]).await;
}

/// RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host.
#[tokio::test]
async fn a_request_without_host_is_400() {
    run_cases(&["host-missing"]).await;
}

/// RFC 9112 §3.2: a server MUST answer 400 to a request with more than one Host line
/// (two Hosts let a proxy route on one and the upstream act on the other).
#[tokio::test]
async fn two_host_fields_are_400() {
    run_cases(&["host-twice"]).await;
}

/// RFC 9112 §3.2, RFC 9110 §4.1, §4.2.4 and §7.2: a Host that is not `uri-host [ ":" port ]`
/// (a path in it, a port that is not digits, userinfo) is 400.
#[tokio::test]
async fn an_invalid_host_is_400() {
    run_cases(&["host-invalid", "host-bad-port", "host-userinfo"]).await;
}

/// RFC 9112 §2.3 and §3: a request line without an HTTP version (HTTP/0.9) is not
/// served: 400 or close, nothing forwarded.
#[tokio::test]
async fn an_http09_request_is_refused() {
    run_cases(&["http09"]).await;
}

/// RFC 9110 §9.3.6 (CONNECT asks the recipient to open a tunnel) and §15.6.2 (501: the
/// server does not support the method): a reverse proxy in front of an application
/// refuses CONNECT with a 4xx/501 answer and never forwards it upstream.
#[tokio::test]
async fn connect_is_refused_not_forwarded() {
    run_cases(&["connect-method"]).await;
}

/// RFC 9112 §3.2.2: with an absolute-form target the server MUST ignore the received
/// Host and use the target's authority, and a proxy MUST send a Host made from the
/// target, not the received one: `GET http://other.example/x` with `Host: t` is routed to
/// the service of `other.example` and its upstream sees `host: other.example`.
#[tokio::test]
async fn absolute_form_routes_and_forwards_the_target_authority() {
    run_cases(&["absolute-form"]).await;
    let other = spawn_upstream("other").await;
    let tee = spawn_upstream("t").await;
    let cfg = config_yaml(
        &format!(
            "  - name: other\n    match: {{ host: other.example }}\n    pools:\n      stable: {{ endpoints: [\"{}\"] }}\n  - name: tee\n    match: {{ host: t }}\n    pools:\n      stable: {{ endpoints: [\"{}\"] }}\n",
            other.addr, tee.addr
        ),
        TIMEOUTS,
    );
    let p = spawn_proxy(&cfg, "rules: []\n").await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET http://other.example/x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let RawResponse { status, body, .. } = read_one_response(&mut s).await;
    assert_eq!((status, show(&body).as_str()), (200, "other"));
    assert!(
        tee.seen().is_empty(),
        "routed on the Host field, not the target"
    );
    let seen = other.last();
    let hosts: Vec<_> = seen.headers.get_all("host").iter().collect();
    assert_eq!(hosts, vec!["other.example"], "Host sent upstream");
    assert!(
        seen.uri.ends_with("/x"),
        "target sent upstream: {}",
        seen.uri
    );
}

/// RFC 9110 §7.6.1 (a sender MUST NOT name in Connection a field meant for every
/// recipient) and §7.2 (Host is required): a client cannot make graylane strip Host or
/// `x-forwarded-for` by naming them in Connection, nor strip the marker a trusted peer
/// sent, nor graylane's own propagate headers.
#[tokio::test]
async fn connection_cannot_strip_host_forwarded_for_markers_or_propagate_headers() {
    run_cases(&["connection-names-host"]).await;
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let cfg = simple_config(stable.addr, gray.addr, TIMEOUTS).replace(
        "    bind: \"127.0.0.1:0\"\n",
        "    bind: \"127.0.0.1:0\"\n    trusted_cidrs: [\"127.0.0.0/8\"]\n",
    );
    let p = spawn_proxy(&cfg, RULES).await;
    let reqs: [&[u8]; 2] = [
        b"GET /conn HTTP/1.1\r\nHost: t\r\nConnection: host, x-forwarded-for\r\nX-Forwarded-For: 192.0.2.1\r\nxdw-kefu-uid: 42\r\n\r\n",
        b"GET /conn HTTP/1.1\r\nHost: t\r\nConnection: xdw-kefu-uid, x-graylane-pool, x-graylane-rule, keep-alive\r\nxdw-kefu-uid: 42\r\n\r\n",
    ];
    let mut bad = Vec::new();
    for req in reqs {
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        s.write_all(req).await.unwrap();
        let RawResponse { status, body, .. } = read_one_response(&mut s).await;
        assert_eq!(
            (status, show(&body).as_str()),
            (200, "gray"),
            "{}",
            show(req)
        );
        let h = gray.last().headers;
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let line = show(req).lines().nth(2).unwrap_or_default().to_owned();
        if get("host").as_deref() != Some("t") {
            bad.push(format!("{line}: host {:?}", get("host")));
        }
        if !get("x-forwarded-for").is_some_and(|v| v.ends_with("127.0.0.1")) {
            bad.push(format!(
                "{line}: x-forwarded-for {:?}",
                get("x-forwarded-for")
            ));
        }
        if get("xdw-kefu-uid").as_deref() != Some("42") {
            bad.push(format!("{line}: xdw-kefu-uid {:?}", get("xdw-kefu-uid")));
        }
        if get("x-graylane-pool").as_deref() != Some("gray")
            || get("x-graylane-rule").as_deref() != Some("gray-uid")
        {
            bad.push(format!(
                "{line}: propagate headers {:?} {:?}",
                get("x-graylane-pool"),
                get("x-graylane-rule")
            ));
        }
    }
    still_serves(p.addr()).await;
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

// === slow clients ===

/// RFC 9110 §15.5.9 (408), RFC 9112 §9.5: a head dribbled past `request_header` gets
/// 408 and the connection closes; the partial request is not forwarded.
#[tokio::test]
async fn a_dribbled_head_gets_408_after_request_header() {
    let (rec, p) = case_rig(TIMEOUTS).await;
    let s = TcpStream::connect(p.addr()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for b in b"GET /dribble HTTP/1.1\r\nHost: t\r\nX-A: aaaaaaaaaa\r\n\r\n" {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        wr
    });
    let (out, end) = read_to_close(&mut rd, PATIENCE).await;
    writer.abort();
    assert_eq!(status_of(&out), Some(408), "{}", show(&out));
    assert_ne!(end, End::Open);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(rec.seen().is_empty());
    still_serves(p.addr()).await;
}

/// RFC 9112 §9.5 (a server MAY close an idle connection; servers keep timeouts): a
/// connection that sends nothing is closed after `request_header`, silently.
#[tokio::test]
async fn a_silent_connection_is_closed() {
    let (_rec, p) = case_rig(TIMEOUTS).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    let started = Instant::now();
    let (out, end) = read_to_close(&mut s, PATIENCE).await;
    assert_ne!(end, End::Open);
    assert!(out.is_empty(), "{}", show(&out));
    assert!(started.elapsed() < Duration::from_secs(4));
    still_serves(p.addr()).await;
}

/// A raw upstream answering `GET /big` with 50 MB, recording how far its writes got and
/// when one failed (the proxy closed the connection).
struct Streamer {
    addr: SocketAddr,
    wrote: Arc<AtomicU64>,
    failed: Arc<Mutex<Option<Instant>>>,
}

async fn spawn_streamer() -> Streamer {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let wrote = Arc::new(AtomicU64::new(0));
    let failed: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (w2, f2) = (wrote.clone(), failed.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (w, f) = (w2.clone(), f2.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some(head) = read_head(&mut s, &mut buf).await else {
                    return;
                };
                if find(&head, b"/big").is_none() {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                    return;
                }
                const TOTAL: usize = 50 << 20;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {TOTAL}\r\n\r\n");
                let chunk = vec![b'z'; 64 * 1024];
                let mut r = s.write_all(head.as_bytes()).await;
                let mut left = TOTAL;
                while r.is_ok() && left > 0 {
                    let n = left.min(chunk.len());
                    r = s.write_all(&chunk[..n]).await;
                    if r.is_ok() {
                        w.fetch_add(n as u64, Ordering::SeqCst);
                        left -= n;
                    }
                }
                if r.is_err() {
                    *f.lock().unwrap() = Some(Instant::now());
                }
            });
        }
    });
    Streamer {
        addr,
        wrote,
        failed,
    }
}

/// RFC 9112 §9.5 (a server MAY close a connection that makes no progress): a client
/// that asks for 50 MB and never reads stalls graylane's send; after `idle` (2 s) without
/// progress graylane closes the client connection and the upstream one (the upstream's
/// blocked write fails), and counts it in `graylane_send_timeouts_total{listener="im"}`.
#[tokio::test]
async fn a_client_that_never_reads_is_cut_off_after_idle() {
    let up = spawn_streamer().await;
    let p = spawn_proxy(
        &simple_config(
            up.addr,
            up.addr,
            "timeouts: { request_header: 1s, idle: 2s }",
        ),
        RULES,
    )
    .await;
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    let mut s = sock.connect(p.addr()).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // Wait for the upstream's writes to stall: the client's and graylane's buffers are
    // full.
    let mut last = 0;
    let mut still_since = Instant::now();
    let stalled_at = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = up.wrote.load(Ordering::SeqCst);
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() > Duration::from_millis(400) {
            break still_since;
        }
        assert!(
            now < 50 << 20,
            "the whole 50 MB went through a client that never reads"
        );
    };
    // graylane gives up within a few seconds of the stall: the upstream's write fails.
    let gave_up = eventually(Duration::from_secs(7), || async {
        up.failed.lock().unwrap().is_some()
    })
    .await;
    let failed_after = up.failed.lock().unwrap().map(|t| t - stalled_at);
    // Reading late: what was buffered, then the close.
    let (_, end) = read_to_close(&mut s, Duration::from_secs(3)).await;
    let counted = metric(&p, "graylane_send_timeouts_total{listener=\"im\"}").await;
    assert!(
        gave_up,
        "graylane kept the stalled send open (upstream wrote {last} bytes)"
    );
    assert!(
        failed_after.is_some_and(|d| d < Duration::from_secs(6)),
        "closed {failed_after:?} after the stall"
    );
    assert_ne!(end, End::Open, "the client connection is still open");
    assert_eq!(
        counted, 1.0,
        "graylane_send_timeouts_total{{listener=\"im\"}}"
    );
    still_serves(p.addr()).await;
}

/// RFC 9110 §15.5.9 (408: the server did not receive a complete request in time) and
/// README "Failure modes" (a client that breaks its upload off is not an upstream
/// failure): a client that sends headers with `Content-Length: 100000`, 10 bytes of body
/// and then nothing, to gray, gets 408 (or a close) after `upstream_response`; nothing
/// is counted against gray: no `upstream_errors_total{pool="gray"}`, the endpoint stays
/// up, and 6 such uploads do not trip a guard with `min_requests: 5`.
#[tokio::test]
async fn a_stalled_upload_to_gray_is_the_clients_fault() {
    let stable = spawn_upstream("stable").await;
    let gray = spawn_upstream("gray").await;
    let cfg = config_yaml(
        &format!(
            "  - name: chat\n    match: {{ path_prefix: / }}\n    pools:\n      stable: {{ endpoints: [\"{}\"] }}\n      gray: {{ endpoints: [\"{}\"] }}\n    guard: {{ max_error_rate: 0.05, min_requests: 5 }}\n",
            stable.addr, gray.addr
        ),
        "timeouts: { request_header: 1s, idle: 2s, upstream_response: 1s }",
    );
    let p = spawn_proxy(&cfg, RULES).await;
    let addr = p.addr();
    let uploads: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(async move {
                let s = TcpStream::connect(addr).await.unwrap();
                let (mut rd, mut wr) = s.into_split();
                wr.write_all(
                    b"POST /count HTTP/1.1\r\nHost: t\r\nxdw-kefu-uid: 42\r\nContent-Length: 100000\r\n\r\n0123456789",
                )
                .await
                .unwrap();
                let started = Instant::now();
                let (out, end) = read_to_close(&mut rd, Duration::from_secs(6)).await;
                drop(wr);
                (status_of(&out), end, started.elapsed(), show(&out))
            })
        })
        .collect();
    let mut bad = Vec::new();
    for u in uploads {
        let (status, end, took, text) = u.await.unwrap();
        let answered = status == Some(408) || (status.is_none() && end != End::Open);
        if !answered || took > Duration::from_secs(4) {
            bad.push(format!("{status:?} {end:?} after {took:?}: {text}"));
        }
    }
    assert!(
        !gray.seen().is_empty(),
        "the uploads did not reach gray (routing)"
    );
    let errors = metric_sum(&p, "graylane_upstream_errors_total", &["pool=\"gray\""]).await;
    let up = metric_sum(&p, "graylane_endpoint_up", &["pool=\"gray\""]).await;
    let (_, guard) = admin_get(&p, "/guard?service=chat").await;
    let guard = json(&guard);
    still_serves(addr).await;
    assert!(
        bad.is_empty(),
        "stalled uploads: want 408 or close:\n{}",
        bad.join("\n")
    );
    assert_eq!(errors, 0.0, "upstream errors counted against gray");
    assert_eq!(up, 1.0, "the gray endpoint was ejected");
    assert_eq!(guard["state"], "closed", "guard: {guard}");
    assert_eq!(guard["window"]["gray"]["failures"], 0, "guard: {guard}");
}

// === floods ===

/// RFC 9112 §9.4 (a server might reject traffic it deems abusive, such as an excessive
/// number of open connections): over `max_connections`, new connections are accepted
/// and closed at once and counted; the held ones keep working, and once they go, new
/// ones are served again.
#[tokio::test]
async fn connections_over_max_connections_are_rejected_and_counted() {
    let (_rec, p) =
        case_rig("timeouts: { request_header: 5s, idle: 5s }\nlimits: { max_connections: 4 }")
            .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        s.write_all(b"GET /held HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_one_response(&mut s).await.status, 200);
        held.push(s);
    }
    for i in 0..6 {
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        let _ = s.write_all(b"GET /over HTTP/1.1\r\nHost: t\r\n\r\n").await;
        let (out, end) = read_to_close(&mut s, Duration::from_secs(2)).await;
        assert!(
            out.is_empty() && end != End::Open,
            "connection {i} over the limit: {end:?} {}",
            show(&out)
        );
    }
    assert_eq!(
        metric(&p, "graylane_connections_rejected_total{listener=\"im\"}").await,
        6.0
    );
    // The held connections still work.
    for s in &mut held {
        s.write_all(b"GET /again HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_one_response(s).await.status, 200);
    }
    drop(held);
    assert!(
        eventually(Duration::from_secs(3), || async {
            metric(&p, "graylane_connections{listener=\"im\"}").await == 0.0
        })
        .await
    );
    still_serves(p.addr()).await;
}

/// RFC 9112 §9.3.2: a server MUST send the responses to pipelined requests in the order
/// the requests came; 50 in one write are all answered, in order.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (rec, p) = case_rig(TIMEOUTS).await;
    let mut burst = Vec::new();
    for i in 0..50 {
        burst.extend_from_slice(format!("GET /p/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    let a = exchange_quiet(
        p.addr(),
        &burst,
        Duration::from_secs(1),
        Duration::from_secs(8),
    )
    .await;
    let bodies: Vec<String> = a.answers.iter().map(|x| show(&x.2)).collect();
    let want: Vec<String> = (0..50).map(|i| format!("/p/{i}")).collect();
    assert_eq!(bodies, want);
    assert_eq!(rec.seen().len(), 50);
    still_serves(p.addr()).await;
}

/// Plain requests are read by graylane's own HTTP/1.1 loop, and a connection moves to
/// hyper at the first request the loop leaves to it (here one with a body): requests on
/// both sides of that move are answered in order, the body reaches the upstream, and the
/// `Connection: close` of the last one ends the connection after its answer.
#[tokio::test]
async fn a_connection_moving_from_the_own_loop_to_hyper_keeps_order() {
    let (rec, p) = case_rig(TIMEOUTS).await;
    let burst = b"GET /p/0 HTTP/1.1\r\nHost: t\r\n\r\n\
        GET /p/1 HTTP/1.1\r\nHost: t\r\n\r\n\
        POST /p/2 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nxyz\
        GET /p/3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let a = exchange_quiet(
        p.addr(),
        burst,
        Duration::from_secs(1),
        Duration::from_secs(8),
    )
    .await;
    let bodies: Vec<String> = a.answers.iter().map(|x| show(&x.2)).collect();
    assert_eq!(bodies, ["/p/0", "/p/1", "/p/2", "/p/3"]);
    assert!(matches!(a.end, Some(End::Eof)), "{:?}", a.end);
    let seen = rec.seen();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[2].method, "POST");
    assert_eq!(seen[2].body, b"xyz");
    still_serves(p.addr()).await;
}

/// Answers to HEAD (the upstream's, and graylane's own refusal) keep their
/// Content-Length and carry no body, and an answer to `Connection: close` says so: each
/// pipelined answer starts right after the head before it.
#[tokio::test]
async fn head_answers_carry_no_body_and_close_is_announced() {
    let (_rec, p) = case_rig(TIMEOUTS).await;
    let burst = b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n\
        HEAD /h HTTP/1.1\r\nHost: not a host\r\n\r\n\
        GET /g HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let a = exchange_quiet(
        p.addr(),
        burst,
        Duration::from_secs(1),
        Duration::from_secs(8),
    )
    .await;
    let raw = String::from_utf8_lossy(&a.raw).to_string();
    let heads: Vec<&str> = raw.split("\r\n\r\n").collect();
    assert!(heads[0].starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("content-length: 2\r\n"),
        "{raw}"
    );
    assert!(
        heads[1].starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{raw}"
    );
    assert!(heads[1].contains("content-length: "), "{raw}");
    assert!(heads[2].starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(heads[2].contains("connection: close"), "{raw}");
    assert!(raw.ends_with("/g"), "{raw}");
    assert!(matches!(a.end, Some(End::Eof)), "{:?}", a.end);
}

/// SPEC §8: a busy HTTP/1 connection closes after its current response. The drain
/// begins while a request's head is half here; the request turns out to be one the own
/// loop hands to hyper (it has a body), and hyper still answers it, with
/// `connection: close`.
#[tokio::test]
async fn a_request_handed_to_hyper_during_the_drain_is_answered() {
    let (rec, mut p) = case_rig(TIMEOUTS).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"POST /d HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.begin_stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"Content-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let (raw, end) = read_to_close(&mut s, Duration::from_secs(5)).await;
    let raw = String::from_utf8_lossy(&raw).to_string();
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw:?}");
    assert!(raw.contains("connection: close\r\n"), "{raw:?}");
    assert!(raw.ends_with("/d"), "{raw:?}");
    assert_eq!(end, End::Eof);
    assert_eq!(rec.last().body, b"hello");
}

/// A client that closes while its answer's body is still coming ends the exchange at
/// once, as with hyper's server: its connection is not left open (in CLOSE-WAIT) until
/// the upstream finishes.
#[tokio::test]
async fn a_client_gone_mid_body_ends_the_exchange() {
    let up = spawn_scripted(
        vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n".to_vec(),
            b"0\r\n\r\n".to_vec(),
        ],
        Duration::from_secs(20),
    )
    .await;
    let p = spawn_proxy(&simple_config(up, up, TIMEOUTS), RULES).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&got, b"first").is_none() {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the first chunk arrives")
            .unwrap();
        assert!(n > 0, "closed before the first chunk");
        got.extend_from_slice(&buf[..n]);
    }
    drop(s);
    let closed = eventually(Duration::from_secs(3), || async {
        metric(&p, "graylane_connections{listener=\"im\"}").await == 0.0
    })
    .await;
    assert!(closed, "the connection of a client that left stays open");
}

/// A client that closes while its answer is awaited cancels the request, as with
/// hyper's server: the upstream's connection is closed at once, not kept until the
/// upstream answers or `upstream_response` runs out.
#[tokio::test]
async fn a_client_gone_before_its_answer_cancels_the_request() {
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = up.local_addr().unwrap();
    let timeouts = "timeouts: { request_header: 2s, idle: 30s, upstream_response: 30s }";
    let p = spawn_proxy(&simple_config(at, at, timeouts), RULES).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let (mut u, _) = tokio::time::timeout(Duration::from_secs(5), up.accept())
        .await
        .expect("the request reaches the upstream")
        .unwrap();
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut u, &mut Vec::new()))
        .await
        .expect("the request head arrives");
    assert!(head.is_some(), "closed before the head");
    let mut buf = [0u8; 4096];
    // Still waiting for its answer a moment later: nothing cancels it but the client.
    let early = tokio::time::timeout(Duration::from_millis(300), u.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the upstream's connection ended while the client waited"
    );
    drop(s);
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match u.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the upstream's connection stays open after the client left"
    );
}

/// RFC 9112 §2.2: an empty line after a request is ignored; it is not the start of a
/// next head, so it gets no 408 and the connection stays open until `idle`.
#[tokio::test]
async fn an_empty_line_after_a_request_is_not_a_head() {
    let (_rec, p) = case_rig(TIMEOUTS).await;
    let a = exchange_quiet(
        p.addr(),
        b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n\r\n",
        Duration::from_secs(3),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(a.answers.len(), 1, "{:?}", String::from_utf8_lossy(&a.raw));
    assert_eq!(a.answers[0].0, 200);
}

// === HTTP/2 abuse (h2c with prior knowledge, frames written by hand) ===

/// A normal h2c request on a fresh connection is answered 200 (HTTP/2 still works).
async fn h2_still_serves(addr: SocketAddr) {
    let mut c = H2Conn::open(addr).await;
    c.send(&h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_HEADERS | h2raw::END_STREAM,
        1,
        &h2raw::get_block("/after-h2", &[]),
    ))
    .await
    .unwrap();
    let o = c.outcome(1, Duration::from_secs(5)).await;
    assert_eq!(o.status, Some(200), "h2c no longer served: {o:?}");
    still_serves(addr).await;
}

/// RFC 9113 §10.5 (an endpoint that does not watch stream resets exposes itself to
/// denial of service; CVE-2023-44487 "rapid reset"): 1,000 HEADERS each followed at once
/// by RST_STREAM(CANCEL) get the connection refused (GOAWAY or close) before most of
/// them reach the upstream, and graylane keeps serving.
#[tokio::test]
async fn h2_rapid_reset_does_not_take_graylane_down() {
    let (rec, p) = case_rig(TIMEOUTS).await;
    let mut c = H2Conn::open(p.addr()).await;
    let block = h2raw::get_block("/rapid", &[]);
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        let id = 1 + 2 * i;
        burst.extend(h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS | h2raw::END_STREAM,
            id,
            &block,
        ));
        burst.extend(h2raw::frame(
            h2raw::RST_STREAM,
            0,
            id,
            &h2raw::CANCEL.to_be_bytes(),
        ));
    }
    let sent = tokio::time::timeout(Duration::from_secs(5), c.send(&burst)).await;
    let (end, goaway) = c.drain(Duration::from_secs(2)).await;
    eprintln!(
        "rapid reset: write {:?}, connection {end:?}, GOAWAY {goaway:?}, upstream saw {} of 1000",
        sent.map(|r| r.is_ok()),
        rec.seen().len()
    );
    assert!(
        goaway.is_some() || end != End::Open,
        "the resetting connection was neither refused nor closed"
    );
    assert!(
        rec.seen().len() < 100,
        "{} of the 1,000 cancelled streams reached the upstream",
        rec.seen().len()
    );
    h2_still_serves(p.addr()).await;
}

/// RFC 9113 §6.10 and §10.5.1 (a server that buffers an unbounded header block can be
/// exhausted; it may refuse with a connection error): HEADERS without END_HEADERS
/// followed by endless CONTINUATION frames is cut off (GOAWAY or close) long before
/// 10,000 frames, and nothing reaches the upstream.
#[tokio::test]
async fn h2_continuation_flood_is_cut_off() {
    let (rec, p) = case_rig(TIMEOUTS).await;
    let mut c = H2Conn::open(p.addr()).await;
    c.send(&h2raw::frame(
        h2raw::HEADERS,
        0,
        1,
        &h2raw::get_block("/continuation", &[]),
    ))
    .await
    .unwrap();
    let mut piece = Vec::new();
    h2raw::literal(b"x-c", &[b'c'; 1000], &mut piece);
    let cont = h2raw::frame(h2raw::CONTINUATION, 0, 1, &piece);
    let mut sent = 0;
    while sent < 10_000 {
        match tokio::time::timeout(Duration::from_secs(2), c.send(&cont)).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    let (end, goaway) = c.drain(Duration::from_secs(3)).await;
    assert!(
        goaway.is_some() || end != End::Open,
        "still open after {sent} CONTINUATION frames ({end:?})"
    );
    assert!(
        rec.seen().is_empty(),
        "the upstream saw {:?}",
        rec.targets()
    );
    h2_still_serves(p.addr()).await;
}

/// RFC 9113 §10.5.1 and RFC 7541 §7.3 (HPACK bomb: a small block that decodes into a
/// huge field list): one 4 KB field inserted into the dynamic table and referenced
/// 12,000 times (48 MB decoded from 16 KB) is refused (431, a stream reset or a
/// connection error), never forwarded.
#[tokio::test]
async fn h2_hpack_bomb_is_refused() {
    let (rec, p) = case_rig(TIMEOUTS).await;
    let mut c = H2Conn::open(p.addr()).await;
    let mut block = h2raw::get_block("/bomb", &[]);
    // Literal with incremental indexing, new name: goes to dynamic index 62.
    block.push(0x40);
    h2raw::string(b"x-bomb", &mut block);
    h2raw::string(&[b'b'; 4000], &mut block);
    block.extend(std::iter::repeat_n(0x80 | 62, 12_000));
    c.send(&h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_HEADERS | h2raw::END_STREAM,
        1,
        &block,
    ))
    .await
    .unwrap();
    let o = c.outcome(1, Duration::from_secs(5)).await;
    let refused = matches!(o.status, Some(s) if s == 431 || s == 400)
        || o.reset.is_some()
        || o.goaway.is_some()
        || o.closed;
    assert!(refused, "the bomb was not refused: {o:?}");
    assert!(
        rec.seen().is_empty(),
        "the upstream saw {:?}",
        rec.targets()
    );
    h2_still_serves(p.addr()).await;
}

/// RFC 9113 §6.5 and §10.5 (SETTINGS can be abused to make a peer spend resources):
/// 20,000 SETTINGS frames leave graylane serving, on that connection (or it is closed
/// with GOAWAY) and on others.
#[tokio::test]
async fn h2_settings_flood_is_survived() {
    let (_rec, p) = case_rig(TIMEOUTS).await;
    let mut c = H2Conn::open(p.addr()).await;
    let one = h2raw::frame(h2raw::SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]);
    let burst = one.repeat(20_000);
    let sent = tokio::time::timeout(Duration::from_secs(5), c.send(&burst)).await;
    let _ = c.drain(Duration::from_millis(500)).await;
    let _ = c
        .send(&h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS | h2raw::END_STREAM,
            1,
            &h2raw::get_block("/after-settings", &[]),
        ))
        .await;
    let o = c.outcome(1, Duration::from_secs(5)).await;
    let goaway = c.frames.iter().any(|f| f.ty == h2raw::GOAWAY);
    assert!(
        o.status == Some(200) || goaway || o.closed,
        "after the flood (write {:?}): {o:?}",
        sent.map(|r| r.is_ok())
    );
    h2_still_serves(p.addr()).await;
}

/// RFC 9113 §8.1.1 (a request whose DATA does not add up to its content-length is
/// malformed) and §8.2.2 (connection-specific fields such as transfer-encoding are
/// malformed): the H2.CL and H2.TE downgrade smuggling attacks; a request hidden in the
/// body never reaches the HTTP/1.1 upstream.
#[tokio::test]
async fn h2_framing_fields_never_smuggle_into_http1() {
    let (rec, p) = case_rig(TIMEOUTS).await;
    let smuggled: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    struct H2Smuggle {
        path: &'static str,
        field: (&'static str, &'static str),
        body: Vec<u8>,
        /// Paths the upstream must never see.
        never: &'static [&'static str],
    }
    let cases = [
        H2Smuggle {
            path: "/h2cl",
            field: ("content-length", "0"),
            body: smuggled.to_vec(),
            never: &["/smuggled"],
        },
        H2Smuggle {
            path: "/h2te",
            field: ("transfer-encoding", "chunked"),
            body: [b"0\r\n\r\n".as_slice(), smuggled].concat(),
            never: &["/smuggled", "/h2te"],
        },
    ];
    let mut bad = Vec::new();
    for H2Smuggle {
        path,
        field,
        body,
        never,
    } in cases
    {
        let mut c = H2Conn::open(p.addr()).await;
        c.send(&h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS,
            1,
            &h2raw::request_block("POST", path, &[field]),
        ))
        .await
        .unwrap();
        let _ = c
            .send(&h2raw::frame(h2raw::DATA, h2raw::END_STREAM, 1, &body))
            .await;
        let o = c.outcome(1, Duration::from_secs(3)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let paths: Vec<String> = rec.seen().iter().map(RawSeen::path).collect();
        eprintln!("{path}: {o:?}; the upstream saw {paths:?}");
        for n in never {
            if paths.iter().any(|t| t == n) {
                bad.push(format!(
                    "{path}: the upstream saw {n} ({paths:?}; client {o:?})"
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    h2_still_serves(p.addr()).await;
}

/// RFC 9113 §8.2.1: a field value with CR, LF or NUL, or an uppercase field name, makes
/// the request malformed; it is refused, never forwarded (a CRLF would inject a field
/// into the HTTP/1.1 upstream's head).
#[tokio::test]
async fn h2_invalid_fields_are_refused() {
    let (rec, p) = case_rig(TIMEOUTS).await;
    for (name, value) in [
        ("x-inj", "a\r\nx-injected: 1"),
        ("x-nul", "a\0b"),
        ("X-Upper", "v"),
    ] {
        let mut c = H2Conn::open(p.addr()).await;
        c.send(&h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS | h2raw::END_STREAM,
            1,
            &h2raw::get_block("/h2-invalid", &[(name, value)]),
        ))
        .await
        .unwrap();
        let o = c.outcome(1, Duration::from_secs(3)).await;
        assert!(
            o.reset.is_some()
                || o.status.is_some_and(|s| s >= 400)
                || o.closed
                || o.goaway.is_some(),
            "{name}: {value:?} was answered {o:?}"
        );
        assert!(
            rec.seen().is_empty(),
            "{name}: the upstream saw {:?}",
            rec.seen()
        );
    }
    h2_still_serves(p.addr()).await;
}

/// RFC 9113 §8.2.3: cookie fields split over several HTTP/2 field lines MUST be joined
/// with `; ` into one before an HTTP/1.1 hop; the request routes to gray by the uid
/// cookie among them.
#[tokio::test]
async fn h2_cookie_fields_are_joined_for_http1() {
    let stable = spawn_recorder(Default::default()).await;
    let gray = spawn_recorder(Default::default()).await;
    let p = spawn_proxy(&simple_config(stable.addr, gray.addr, TIMEOUTS), RULES).await;
    let mut c = H2Conn::open(p.addr()).await;
    c.send(&h2raw::frame(
        h2raw::HEADERS,
        h2raw::END_HEADERS | h2raw::END_STREAM,
        1,
        &h2raw::get_block(
            "/cookie",
            &[("cookie", "a=1"), ("cookie", "xdw-kefu-uid=42")],
        ),
    ))
    .await
    .unwrap();
    let o = c.outcome(1, Duration::from_secs(5)).await;
    assert_eq!(o.status, Some(200), "{o:?}");
    assert!(stable.seen().is_empty(), "routed to stable");
    let cookies = gray.last().all("cookie");
    assert_eq!(cookies, vec!["a=1; xdw-kefu-uid=42".to_owned()]);
    h2_still_serves(p.addr()).await;
}

// === hostile upstreams ===

/// RFC 9110 §7.8 (a server MUST NOT switch to a protocol the client did not ask for)
/// and §15.6.3 (502: an invalid response): an upstream answering a plain GET with `101`
/// gets the client a 502, and none of the upstream's bytes after it.
#[tokio::test]
async fn upstream_101_to_a_plain_get_is_502() {
    run_cases(&["resp-101-unasked"]).await;
}

/// RFC 9110 §7.8 (a server MUST NOT switch to a protocol the client did not name in
/// its Upgrade): a WebSocket handshake the upstream answers with `101` and
/// `Upgrade: h2c` is a 502, and no tunnel opens.
#[tokio::test]
async fn upstream_101_to_a_protocol_not_asked_for_is_502() {
    run_cases(&["resp-101-wrong-protocol"]).await;
}

/// A raw upstream that writes `pieces` for every request, `gap` apart, and keeps the
/// connection open a while.
async fn spawn_scripted(pieces: Vec<Vec<u8>>, gap: Duration) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let pieces = Arc::new(pieces);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let pieces = pieces.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while read_head(&mut s, &mut buf).await.is_some() {
                    for p in pieces.iter() {
                        if s.write_all(p).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(gap).await;
                    }
                }
            });
        }
    });
    addr
}

/// RFC 9110 §5.4 (a recipient may refuse field sections larger than it processes) and
/// §15.6.3 (502): an upstream response head over 64 KiB (one 70 KiB field) is a 502,
/// whether it arrives in one write or in 1 KiB pieces; a 60 KiB head still passes.
#[tokio::test]
async fn upstream_response_head_over_64k_is_502() {
    run_cases(&["resp-head-70k"]).await;
    let head = |n: usize| {
        format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
            "b".repeat(n)
        )
        .into_bytes()
    };
    let big = head(70 * 1024);
    let pieces: Vec<Vec<u8>> = big.chunks(1024).map(<[u8]>::to_vec).collect();
    let sliced = spawn_scripted(pieces, Duration::from_millis(1)).await;
    let fits = spawn_scripted(vec![head(60 * 1024)], Duration::ZERO).await;
    let p = spawn_proxy(&simple_config(sliced, fits, TIMEOUTS), RULES).await;
    let a = exchange_quiet(
        p.addr(),
        b"GET /pieces HTTP/1.1\r\nHost: t\r\n\r\n",
        Duration::from_millis(500),
        Duration::from_secs(6),
    )
    .await;
    let b = exchange_quiet(
        p.addr(),
        b"GET /fits HTTP/1.1\r\nHost: t\r\nxdw-kefu-uid: 42\r\n\r\n",
        Duration::from_millis(500),
        Duration::from_secs(6),
    )
    .await;
    assert_eq!(a.first(), 502, "a 70 KiB head in pieces: {}", show(&a.raw));
    assert_eq!(b.first(), 200, "a 60 KiB head: {}", show(&b.raw));
}

/// A raw upstream that keeps each connection alive for 300 ms after an answer, then
/// closes its side (FIN) and counts how many of those graylane closed in turn.
struct Closer {
    addr: SocketAddr,
    fins: Arc<AtomicUsize>,
    closed_back: Arc<AtomicUsize>,
}

async fn spawn_closer() -> Closer {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let fins = Arc::new(AtomicUsize::new(0));
    let closed_back = Arc::new(AtomicUsize::new(0));
    let (f2, c2) = (fins.clone(), closed_back.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (fins, closed_back) = (f2.clone(), c2.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut first = true;
                loop {
                    let wait = if first {
                        Duration::from_secs(10)
                    } else {
                        Duration::from_millis(300)
                    };
                    first = false;
                    match tokio::time::timeout(wait, read_head(&mut s, &mut buf)).await {
                        Ok(Some(_)) => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(_) => {
                            // Idle: close our side, then wait for the proxy's close.
                            let _ = s.shutdown().await;
                            fins.fetch_add(1, Ordering::SeqCst);
                            let mut b = [0u8; 64];
                            let r =
                                tokio::time::timeout(Duration::from_secs(60), s.read(&mut b)).await;
                            if matches!(r, Ok(Ok(0) | Err(_))) {
                                closed_back.fetch_add(1, Ordering::SeqCst);
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    Closer {
        addr,
        fins,
        closed_back,
    }
}

/// RFC 9112 §9.6 (tear-down: a side that sees the other close should close too) and
/// RFC 9293 §3.6 (CLOSE-WAIT lasts until the local side closes): with `workers: 1`, idle
/// upstream keep-alive connections the upstream closes are closed by graylane within
/// ~15 s, so none lingers in CLOSE_WAIT.
#[tokio::test]
async fn upstream_closed_idle_connections_do_not_linger_in_close_wait() {
    let up = spawn_closer().await;
    let p = spawn_proxy(
        &simple_config(up.addr, up.addr, &format!("{TIMEOUTS}\nworkers: 1")),
        RULES,
    )
    .await;
    let addr = p.addr();
    let reqs: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(async move {
                exchange_quiet(
                    addr,
                    format!("GET /keep/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
                    Duration::from_millis(200),
                    Duration::from_secs(5),
                )
                .await
                .first()
            })
        })
        .collect();
    for r in reqs {
        assert_eq!(r.await.unwrap(), 200);
    }
    assert!(
        eventually(Duration::from_secs(3), || async {
            up.fins.load(Ordering::SeqCst) >= 1
        })
        .await,
        "the upstream never went idle"
    );
    let started = Instant::now();
    let all_closed = eventually(Duration::from_secs(15), || async {
        up.closed_back.load(Ordering::SeqCst) == up.fins.load(Ordering::SeqCst)
    })
    .await;
    let lingering = close_wait_to(up.addr);
    eprintln!(
        "upstream closed {} idle connections; graylane closed {} after {:?}; CLOSE_WAIT now {lingering}",
        up.fins.load(Ordering::SeqCst),
        up.closed_back.load(Ordering::SeqCst),
        started.elapsed()
    );
    assert!(
        all_closed,
        "graylane left {} of {} upstream-closed connections open (CLOSE_WAIT: {lingering})",
        up.fins.load(Ordering::SeqCst) - up.closed_back.load(Ordering::SeqCst),
        up.fins.load(Ordering::SeqCst)
    );
    assert_eq!(lingering, 0, "sockets in CLOSE_WAIT");
    still_serves(addr).await;
}

// === long links ===

/// A WebSocket echo upstream recording the close code of every Close frame it gets
/// (`None`: the link ended without one).
async fn ws_close_recorder() -> (SocketAddr, Arc<Mutex<Vec<Option<u16>>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let closes: Arc<Mutex<Vec<Option<u16>>>> = Arc::default();
    let c2 = closes.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let closes = c2.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => {
                            if ws.send(Message::text(t.to_string())).await.is_err() {
                                closes.lock().unwrap().push(None);
                                return;
                            }
                        }
                        Some(Ok(Message::Close(f))) => {
                            closes
                                .lock()
                                .unwrap()
                                .push(Some(f.map_or(1005, |f| u16::from(f.code))));
                            return;
                        }
                        Some(Ok(_)) => {}
                        None | Some(Err(_)) => {
                            closes.lock().unwrap().push(None);
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, closes)
}

/// How each of `n` gray links (uid 1) ended after a reload moved uid 1 to stable, with
/// `long_links` as given: the instant after the reload and `Close CODE` or a bare close;
/// then the close codes the upstream got. Also checks a reconnect works.
async fn rehome(n: usize, long_links: &str) -> (Vec<(Option<Duration>, String)>, Vec<Option<u16>>) {
    let (up, upstream_closes) = ws_close_recorder().await;
    let rules = "rules:\n  - name: gray-users\n    when: { uid: { in: [1] } }\n    route: gray\n";
    let cfg = simple_config(up, up, &format!("{TIMEOUTS}\nlong_links: {long_links}"));
    let p = try_spawn_proxy(&cfg, rules)
        .await
        .unwrap_or_else(|e| panic!("graylane refused long_links: {long_links}: {e}"));
    let mut links = Vec::new();
    for _ in 0..n {
        let req = format!("ws://{}/im?xdw-kefu-uid=1", p.addr());
        let (mut ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("handshake");
        assert_eq!(resp.status().as_u16(), 101);
        ws.send(Message::text("hi")).await.unwrap();
        assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
        links.push(ws);
    }
    std::fs::write(p.rules_path(), "rules: []\n").unwrap();
    let (st, _) = admin_post(&p, "/reload", &[]).await;
    assert_eq!(st.as_u16(), 200);
    let reloaded = Instant::now();
    let waits: Vec<_> = links
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(7);
                loop {
                    let at = || Some(Instant::now() - reloaded);
                    match tokio::time::timeout_at(deadline, ws.next()).await {
                        Err(_) => return (None, "still open".to_owned()),
                        Ok(Some(Ok(Message::Close(f)))) => {
                            let code = f.as_ref().map_or(1005, |f| u16::from(f.code));
                            return (at(), format!("Close {code}"));
                        }
                        Ok(Some(Ok(_))) => {}
                        Ok(None) => return (at(), "bare close (EOF)".to_owned()),
                        Ok(Some(Err(e))) => return (at(), format!("bare close ({e})")),
                    }
                }
            })
        })
        .collect();
    let mut results = Vec::new();
    for w in waits {
        results.push(w.await.unwrap());
    }
    eventually(Duration::from_secs(3), || async {
        upstream_closes.lock().unwrap().len() >= n
    })
    .await;
    let ups = upstream_closes.lock().unwrap().clone();
    // Reconnecting works (into stable now).
    let (_ws, resp) =
        tokio_tungstenite::connect_async(format!("ws://{}/im?xdw-kefu-uid=1", p.addr()))
            .await
            .expect("reconnect");
    assert_eq!(resp.status().as_u16(), 101);
    (results, ups)
}

/// RFC 6455 §5.5.1 and §7.1.2 (an endpoint that closes a WebSocket sends a Close frame
/// first) and §7.4 (code 1012 "service restart", IANA registry of §11.7): a link whose
/// decision changes on a reload is closed after `rehome_grace` (1 s) with a Close frame
/// 1012 that the client receives (not a bare TCP close), and the upstream side gets a
/// Close frame too.
#[tokio::test]
async fn a_rehomed_websocket_gets_a_close_frame_1012_on_both_sides() {
    // `rehome_spread: 0` closes at the grace itself (its default spreads over 10 s).
    let (results, ups) = rehome(2, "{ rehome_grace: 1s, rehome_spread: 0 }").await;
    let want = format!("Close {}", u16::from(CloseCode::Restart));
    for (at, how) in &results {
        assert_eq!(how, &want, "links closed as {results:?}");
        let at = at.unwrap_or_default();
        assert!(
            at >= Duration::from_millis(800) && at <= Duration::from_millis(2500),
            "closed {at:?} after the reload, rehome_grace is 1 s"
        );
    }
    assert_eq!(ups.len(), 2, "the upstream saw {ups:?}");
    assert!(
        ups.iter().all(Option::is_some),
        "the upstream side got a bare close: {ups:?}"
    );
}

/// RFC 6455 §7.2.3 (clients reconnecting after an abnormal close should back off, so a
/// server should not make all of them reconnect at once): with `rehome_spread: 2s`, ten
/// links re-homed by one reload close at instants spread over the window after
/// `rehome_grace` (more than 500 ms between the first and the last, all within grace +
/// spread + slack), each with a Close frame 1012.
#[tokio::test]
async fn rehomes_are_spread_over_rehome_spread() {
    let (results, ups) = rehome(10, "{ rehome_grace: 1s, rehome_spread: 2s }").await;
    let want = format!("Close {}", u16::from(CloseCode::Restart));
    let how: Vec<&str> = results.iter().map(|r| r.1.as_str()).collect();
    assert!(
        how.iter().all(|h| *h == want),
        "links closed as {how:?}, want {want} for each"
    );
    let after: Vec<Duration> = results.iter().filter_map(|r| r.0).collect();
    let first = after.iter().min().copied().unwrap_or_default();
    let last = after.iter().max().copied().unwrap_or_default();
    assert!(
        first >= Duration::from_millis(800) && last <= Duration::from_millis(4500),
        "closes at {after:?} after the reload; want within grace 1 s + spread 2 s"
    );
    assert!(
        last - first > Duration::from_millis(500),
        "closes not spread: {after:?}"
    );
    assert!(
        ups.len() == 10 && ups.iter().all(Option::is_some),
        "the upstream saw {ups:?}"
    );
}

// === Vary ===

/// The `Vary` field names of an answer head, lowercased.
fn vary_of(head: &str) -> Vec<String> {
    head.lines()
        .filter_map(|l| l.strip_prefix("vary:"))
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// RFC 9110 §12.5.5: a response that depends on request fields must name them in
/// `Vary` so caches do not serve one user's pool to another. A service with
/// `vary_markers: true` adds `Cookie` and the marker headers it routes on
/// (`xdw-kefu-uid`) to every response, merged with the upstream's own `Vary`; a service
/// without it adds nothing.
#[tokio::test]
async fn vary_markers_names_the_routing_inputs() {
    let rec = spawn_recorder(Default::default()).await;
    let cfg = config_yaml(
        &format!(
            "  - name: chat\n    match: {{ path_prefix: /chat }}\n    vary_markers: true\n    pools:\n      stable: {{ endpoints: [\"{a}\"] }}\n      gray: {{ endpoints: [\"{a}\"] }}\n  - name: plain\n    match: {{ path_prefix: /plain }}\n    pools:\n      stable: {{ endpoints: [\"{a}\"] }}\n      gray: {{ endpoints: [\"{a}\"] }}\n",
            a = rec.addr
        ),
        TIMEOUTS,
    );
    let p = match try_spawn_proxy(&cfg, RULES).await {
        Ok(p) => p,
        Err(e) => panic!("graylane refused vary_markers: {e}"),
    };
    let mut got = Vec::new();
    for target in [
        "/chat/x",
        "/chat/x?vary=Accept-Encoding",
        "/plain/x",
        "/plain/x?vary=Accept-Encoding",
    ] {
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        s.write_all(
            format!("GET {target} HTTP/1.1\r\nHost: t\r\nxdw-kefu-uid: 42\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let r = read_one_response(&mut s).await;
        assert_eq!(r.status, 200);
        got.push((target, vary_of(&r.head)));
    }
    let has = |v: &[String], n: &str| v.iter().any(|x| x == n);
    let (_, chat) = &got[0];
    assert!(has(chat, "cookie") && has(chat, "xdw-kefu-uid"), "{got:?}");
    let (_, chat_merged) = &got[1];
    assert!(
        has(chat_merged, "cookie")
            && has(chat_merged, "xdw-kefu-uid")
            && has(chat_merged, "accept-encoding"),
        "{got:?}"
    );
    assert!(got[2].1.is_empty(), "{got:?}");
    assert_eq!(got[3].1, vec!["accept-encoding".to_owned()], "{got:?}");
    still_serves_at(p.addr(), "/plain/after").await;
}
