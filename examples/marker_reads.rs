//! Reads one request's markers N times, for counting the instructions a read costs
//! (`benches/markers_instructions.sh` runs it under callgrind with N = 0 and N = 20,000
//! and divides the difference). Criterion's wall-clock figures for the same cases
//! (`cargo bench --bench hot_path -- markers`) move by ±15% on a busy machine; the
//! instruction count repeats exactly.
//!
//! Usage: `marker_reads CASE N`, CASE one of `im_headers`, `console_cookies`,
//! `console_long_cookie`, `im_query` (the criterion cases of the same names).

use std::fmt::Write as _;
use std::hint::black_box;

use graylane::{MarkerNames, MarkerReader};
use http::{HeaderMap, HeaderName, HeaderValue};

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        let v = HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{k}: {e}"));
        h.append(HeaderName::from_static(k), v);
    }
    h
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(case), Some(n)) = (args.next(), args.next().and_then(|n| n.parse::<u64>().ok()))
    else {
        eprintln!("usage: marker_reads CASE N");
        std::process::exit(2);
    };
    let reader = MarkerReader::new(&MarkerNames::default());
    let im = headers(&[
        ("host", "kefu-im.example.com"),
        ("user-agent", "XdwKefu/5.3.1 (iPhone; iOS 17.4; Scale/3.00)"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("content-type", "application/json; charset=utf-8"),
        ("x-forwarded-for", "203.0.113.7, 10.0.3.14"),
        ("x-request-id", "6f1c2a9e-55b1-4c3f-9a0e-2d7c1b8e4f10"),
        ("xdw-kefu-uid", "10203040"),
        ("xdw-kefu-entryid", "7"),
        ("xdw-app-version", "5.3.1"),
        ("xdw-device-id", "iOS"),
        (
            "accesstoken",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMDIwMzA0MCJ9.c2lnbmF0dXJl",
        ),
    ]);
    let console = headers(&[
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
    ]);
    let mut c = String::new();
    for i in 1..=24u64 {
        let _ = write!(
            c,
            "_analytics_{i}=GA1.2.{}.1700000000{}; ",
            1_234_567_890 * i,
            "x".repeat(40)
        );
    }
    c.push_str("xdw-kefu-agent-uid=9003; xdw-kefu-agent-gid=\"141338365009, 141338365002\"");
    let long = headers(&[("host", "console.kefu.example.com"), ("cookie", &c)]);
    let bare = headers(&[("host", "kefu-im.example.com")]);
    let query = "t=1700000000&xdw-kefu-uid=10203040&xdw-app-version=5.3.1";
    let (fields, query) = match case.as_str() {
        "im_headers" => (&im, None),
        "console_cookies" => (&console, None),
        "console_long_cookie" => (&long, None),
        "im_query" => (&bare, Some(query)),
        other => {
            eprintln!("unknown case {other}");
            std::process::exit(2);
        }
    };
    for _ in 0..n {
        black_box(reader.read(black_box(fields), black_box(query)));
    }
}
