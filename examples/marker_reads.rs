//! Reads one request's markers N times, for counting the instructions a read costs
//! (`benches/markers_instructions.sh` runs it under callgrind with N = 0 and N = 20,000
//! and divides the difference). Criterion's wall-clock figures for the same cases
//! (`cargo bench --bench hot_path -- markers`) move by ±15% on a busy machine; the
//! instruction count repeats exactly.
//!
//! Usage: `marker_reads CASE N`, CASE one of `im_headers`, `console_cookies`,
//! `console_long_cookie`, `im_query` (the criterion cases of the same names).

use std::hint::black_box;

use graylane::{MarkerNames, MarkerReader};

#[path = "../benches/common/requests.rs"]
mod requests;
use requests::{console_long_cookie, console_request, headers, im_request};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(case), Some(n)) = (args.next(), args.next().and_then(|n| n.parse::<u64>().ok()))
    else {
        eprintln!("usage: marker_reads CASE N");
        std::process::exit(2);
    };
    let reader = MarkerReader::new(&MarkerNames::default());
    let im = im_request(10_203_040, 7);
    let console = console_request();
    let long = console_long_cookie();
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
