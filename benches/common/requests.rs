//! Request heads shared by the criterion benchmark (`hot_path.rs`) and the
//! instruction-count example (`examples/marker_reads.rs`), so both measure the same
//! requests.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderName, HeaderValue};

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("valid header value")
}

pub(crate) fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        h.append(HeaderName::from_static(k), hv(v));
    }
    h
}

/// A request as the IM gateway sends it: markers in headers, among the usual others.
/// `entry` is the entry point it came through (the sample rules split one by `percent`).
pub(crate) fn im_request(uid: u64, entry: u64) -> HeaderMap {
    headers(&[
        ("host", "kefu-im.example.com"),
        ("user-agent", "XdwKefu/5.3.1 (iPhone; iOS 17.4; Scale/3.00)"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("content-type", "application/json; charset=utf-8"),
        ("x-forwarded-for", "203.0.113.7, 10.0.3.14"),
        ("x-request-id", "6f1c2a9e-55b1-4c3f-9a0e-2d7c1b8e4f10"),
        ("xdw-kefu-uid", &uid.to_string()),
        ("xdw-kefu-entryid", &entry.to_string()),
        ("xdw-app-version", "5.3.1"),
        ("xdw-device-id", "iOS"),
        (
            "accesstoken",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMDIwMzA0MCJ9.c2lnbmF0dXJl",
        ),
    ])
}

/// A request from the staff console: markers in cookies, `agent_gid` among other
/// cookies, and an `accessToken` cookie as the console really sends it.
pub(crate) fn console_request() -> HeaderMap {
    headers(&[
        ("host", "console.kefu.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/126.0.0.0 Safari/537.36",
        ),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "zh-CN,zh;q=0.9,en;q=0.8"),
        ("referer", "https://console.kefu.example.com/workbench"),
        (
            "cookie",
            "_ga=GA1.2.1234567890.1700000000; lang=zh-CN; theme=dark; \
             accessToken=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI5MDAxIn0.c2lnbmF0dXJl; \
             xdw-kefu-agent-uid=9003; sidebar=collapsed; \
             xdw-kefu-agent-gid=\"141338365009, 141338365002\"; _gid=GA1.2.987654321.1700000000",
        ),
    ])
}

/// The console's request with a 2 KiB `Cookie` field: 24 analytics cookies, then the
/// agent's uid and group ids.
pub(crate) fn console_long_cookie() -> HeaderMap {
    let mut c = String::new();
    for i in 1..=24u64 {
        write!(
            c,
            "_analytics_{i}=GA1.2.{}.1700000000{}; ",
            1_234_567_890 * i,
            "x".repeat(40)
        )
        .expect("write to a String");
    }
    c.push_str("xdw-kefu-agent-uid=9003; xdw-kefu-agent-gid=\"141338365009, 141338365002\"");
    headers(&[("host", "console.kefu.example.com"), ("cookie", &c)])
}
