use std::borrow::Cow;

use http::{HeaderMap, HeaderValue};

use super::read::form_decode;
use super::*;
use crate::testing::headers;

fn read(pairs: &[(&str, &str)], query: Option<&str>) -> (Markers, InvalidSet) {
    MarkerReader::default().read(&headers(pairs), query)
}

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

#[test]
fn versions_parse_and_order_numerically() {
    assert_eq!(v("5.2"), Version([5, 2, 0, 0]));
    assert_eq!(v("5.2"), v("5.2.0"));
    assert_eq!(v("6"), Version([6, 0, 0, 0]));
    assert_eq!(v("v5.2.0"), v("5.2.0"));
    assert_eq!(v("5.2.0-beta.1+42"), v("5.2.0"));
    assert_eq!(v("5.2.0+build"), v("5.2"));
    assert_eq!(v("1.2.3.4"), Version([1, 2, 3, 4]));
    assert_eq!(v("007.01"), Version([7, 1, 0, 0]));
    assert!(v("5.10.0") > v("5.9.0"));
    assert!(v("5.2.0.1") > v("5.2"));
    assert!(v("10") > v("9.99.99.99"));
    for bad in [
        "",
        "v",
        "5.",
        ".5",
        "5..1",
        "a",
        "5.a",
        "1.2.3.4.5",
        "4294967296",
        "-1",
        "+1",
        "5 .2",
        "٥",
    ] {
        assert_eq!(Version::parse(bad), None, "{bad:?}");
    }
    assert_eq!(v("4294967295").0[0], u32::MAX);
}

#[test]
fn devices_are_trimmed_lowercased_and_bounded() {
    assert_eq!(Device::parse("  iOS ").unwrap().as_str(), "ios");
    assert_eq!(
        Device::parse("Huawei Mate 60").unwrap().as_str(),
        "huawei mate 60"
    );
    assert_eq!(Device::parse(""), None);
    assert_eq!(Device::parse("   "), None);
    let max = "A".repeat(64);
    assert_eq!(Device::parse(&max).unwrap().as_str(), "a".repeat(64));
    assert_eq!(Device::parse(&"a".repeat(65)), None);
    assert_eq!(Device::parse("i\tos"), None);
    assert_eq!(Device::parse("iÖS"), None);
    assert_eq!(format!("{:?}", Device::parse("X").unwrap()), "\"x\"");
}

#[test]
fn numbers_are_decimal_u64_with_leading_zeros() {
    let (m, inv) = read(&[("xdw-kefu-uid", "007")], None);
    assert_eq!(m.uid, Some(7));
    assert!(inv.is_empty());
    let (m, _) = read(&[("xdw-kefu-uid", "18446744073709551615")], None);
    assert_eq!(m.uid, Some(u64::MAX));
    for bad in [
        "18446744073709551616",
        "+5",
        "-5",
        "5x",
        "0x10",
        "1 2",
        "1.0",
        "1e3",
    ] {
        let (m, inv) = read(&[("xdw-kefu-uid", bad)], None);
        assert_eq!(m.uid, None, "{bad}");
        assert!(inv.contains(MarkerKind::Uid), "{bad}");
        assert_eq!(inv.iter().collect::<Vec<_>>(), vec![MarkerKind::Uid]);
    }
}

#[test]
fn every_marker_reads_from_its_default_header() {
    let (m, inv) = read(
        &[
            ("xdw-kefu-uid", "112233"),
            ("xdw-kefu-agent-uid", "9001"),
            ("xdw-kefu-agent-gid", "141338365001, 141338365002"),
            ("xdw-kefu-entryid", "121338361120"),
            ("xdw-app-version", "5.2.0"),
            ("xdw-device-id", "iOS"),
        ],
        None,
    );
    assert!(inv.is_empty());
    assert_eq!(m.uid, Some(112233));
    assert_eq!(m.staff_uid, Some(9001));
    assert_eq!(m.agent_gid.as_slice(), &[141338365001, 141338365002]);
    assert_eq!(m.entry_id, Some(121338361120));
    assert_eq!(m.app_version, Some(v("5.2.0")));
    assert_eq!(
        m.device.map(|d| d.as_str().to_owned()).as_deref(),
        Some("ios")
    );
}

#[test]
fn precedence_is_header_then_cookie_then_query() {
    let q = Some("xdw-kefu-uid=3");
    let (m, _) = read(&[("xdw-kefu-uid", "1"), ("cookie", "xdw-kefu-uid=2")], q);
    assert_eq!(m.uid, Some(1));
    let (m, _) = read(&[("cookie", "xdw-kefu-uid=2")], q);
    assert_eq!(m.uid, Some(2));
    let (m, _) = read(&[], q);
    assert_eq!(m.uid, Some(3));
    // Empty counts as not present: the next source decides.
    let (m, inv) = read(&[("xdw-kefu-uid", ""), ("cookie", "xdw-kefu-uid=")], q);
    assert_eq!(m.uid, Some(3));
    assert!(inv.is_empty());
    let (m, inv) = read(&[("xdw-kefu-uid", " "), ("cookie", "xdw-kefu-uid=\"\"")], q);
    assert_eq!(m.uid, Some(3));
    assert!(inv.is_empty());
}

#[test]
fn invalid_first_source_decides_and_counts_once() {
    let q = Some("xdw-kefu-uid=3");
    let (m, inv) = read(&[("xdw-kefu-uid", "abc"), ("cookie", "xdw-kefu-uid=2")], q);
    assert_eq!(m.uid, None);
    assert_eq!(inv.iter().collect::<Vec<_>>(), vec![MarkerKind::Uid]);
    let (m, inv) = read(&[("cookie", "xdw-kefu-uid=abc")], q);
    assert_eq!(m.uid, None);
    assert!(inv.contains(MarkerKind::Uid));
    let (m, inv) = read(&[], Some("xdw-kefu-uid=abc"));
    assert_eq!(m.uid, None);
    assert!(inv.contains(MarkerKind::Uid));
    // Several invalid markers each count once.
    let (_, inv) = read(
        &[
            ("xdw-kefu-uid", "x"),
            ("xdw-app-version", "five"),
            ("xdw-device-id", &"d".repeat(65)),
        ],
        None,
    );
    assert_eq!(
        inv.iter().collect::<Vec<_>>(),
        vec![MarkerKind::Uid, MarkerKind::AppVersion, MarkerKind::Device]
    );
    assert!(!inv.contains(MarkerKind::StaffUid));
}

#[test]
fn header_sent_twice_uses_the_first() {
    let (m, inv) = read(&[("xdw-kefu-uid", "1"), ("xdw-kefu-uid", "2")], None);
    assert_eq!(m.uid, Some(1));
    assert!(inv.is_empty());
    let (m, inv) = read(&[("xdw-kefu-uid", "1"), ("xdw-kefu-uid", "junk")], None);
    assert_eq!(m.uid, Some(1));
    assert!(inv.is_empty());
}

#[test]
fn underscore_header_names_are_not_dashes() {
    let (m, _) = read(&[("xdw_kefu_uid", "1")], None);
    assert_eq!(m.uid, None);
}

#[test]
fn non_ascii_header_values_are_invalid() {
    let mut h = HeaderMap::new();
    h.insert("xdw-kefu-uid", HeaderValue::from_bytes(b"12\xff").unwrap());
    h.insert(
        "xdw-device-id",
        HeaderValue::from_bytes("iÖS".as_bytes()).unwrap(),
    );
    h.insert(
        "xdw-kefu-agent-gid",
        HeaderValue::from_bytes(b"1,\xc3\xa9,2").unwrap(),
    );
    h.insert(
        "cookie",
        HeaderValue::from_static("xdw-kefu-uid=5; xdw-device-id=ios"),
    );
    let (m, inv) = MarkerReader::default().read(&h, None);
    assert_eq!(m.uid, None);
    assert_eq!(m.device, None);
    assert!(m.agent_gid.is_empty());
    assert_eq!(
        inv.iter().collect::<Vec<_>>(),
        vec![MarkerKind::Uid, MarkerKind::AgentGid, MarkerKind::Device]
    );
}

#[test]
fn agent_gid_skips_junk_tokens_and_counts_once() {
    let (m, inv) = read(&[("xdw-kefu-agent-gid", " 1 ,2,  x ,, 3 ,-4, ")], None);
    assert_eq!(m.agent_gid.as_slice(), &[1, 2, 3]);
    assert_eq!(inv.iter().collect::<Vec<_>>(), vec![MarkerKind::AgentGid]);
    let (m, inv) = read(&[("xdw-kefu-agent-gid", "1, 2,")], None);
    assert_eq!(m.agent_gid.as_slice(), &[1, 2]);
    assert!(inv.is_empty());
    let (m, inv) = read(&[("xdw-kefu-agent-gid", ",")], None);
    assert!(m.agent_gid.is_empty());
    assert!(inv.contains(MarkerKind::AgentGid));
    // Invalid tokens do not fall through to the cookie.
    let (m, _) = read(
        &[
            ("xdw-kefu-agent-gid", "x"),
            ("cookie", "xdw-kefu-agent-gid=7"),
        ],
        None,
    );
    assert!(m.agent_gid.is_empty());
    let many: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    let (m, _) = read(&[("xdw-kefu-agent-gid", &many.join(","))], None);
    assert_eq!(m.agent_gid.as_slice(), (0..20).collect::<Vec<u64>>());
    // Commas inside a cookie value are fine.
    let (m, inv) = read(&[("cookie", "a=1; xdw-kefu-agent-gid=\"5, 6\"; b=2")], None);
    assert_eq!(m.agent_gid.as_slice(), &[5, 6]);
    assert!(inv.is_empty());
}

#[test]
fn cookies_are_parsed_leniently() {
    let h = headers(&[
        ("cookie", "a=1;b=2 ;  xdw-kefu-uid = \"42\" ; c"),
        (
            "cookie",
            "xdw-kefu-uid=7; xdw-device-id=Android%20X; xdw-app-version=5.9.0",
        ),
    ]);
    let (m, inv) = MarkerReader::default().read(&h, None);
    assert_eq!(m.uid, Some(42), "first occurrence wins");
    // No percent-decoding in cookies: `%` is not printable-invalid, just kept.
    assert_eq!(
        m.device.map(|d| d.as_str().to_owned()).as_deref(),
        Some("android%20x")
    );
    assert_eq!(m.app_version, Some(v("5.9")));
    assert!(inv.is_empty());

    assert_eq!(cookie(&h, "a"), Some("1"));
    assert_eq!(cookie(&h, "b"), Some("2"));
    assert_eq!(cookie(&h, "xdw-kefu-uid"), Some("42"));
    assert_eq!(cookie(&h, "c"), None, "no '=': skipped");
    assert_eq!(cookie(&h, "A"), None, "names are case-sensitive");
    assert_eq!(cookie(&h, "missing"), None);

    // `=` inside a value, empty pieces, a trailing `;`, a value running to the end.
    let h = headers(&[("cookie", ";;a=b=c;; ;d=1;e=;f=2")]);
    assert_eq!(cookie(&h, "a"), Some("b=c"));
    assert_eq!(cookie(&h, "d"), Some("1"));
    assert_eq!(cookie(&h, "e"), Some(""));
    assert_eq!(cookie(&h, "f"), Some("2"));
    assert_eq!(cookie(&h, "b"), None, "not a name: inside a's value");

    let h = headers(&[("cookie", "x=\"a,b; \"; y=\"\"; z=\"; w= v w ")]);
    assert_eq!(cookie(&h, "x"), Some("\"a,b"));
    assert_eq!(cookie(&h, "y"), Some(""));
    assert_eq!(cookie(&h, "z"), Some("\""));
    assert_eq!(cookie(&h, "w"), Some("v w"));

    let mut h = HeaderMap::new();
    h.insert(
        "cookie",
        HeaderValue::from_bytes(b"bin=\xff; ok=1").unwrap(),
    );
    assert_eq!(cookie(&h, "bin"), None);
    assert_eq!(cookie(&h, "ok"), Some("1"));
    let mut h = HeaderMap::new();
    h.insert(
        "cookie",
        HeaderValue::from_bytes(b"xdw-kefu-uid=\xff1").unwrap(),
    );
    let (m, inv) = MarkerReader::default().read(&h, Some("xdw-kefu-uid=3"));
    assert_eq!(m.uid, None);
    assert!(inv.contains(MarkerKind::Uid));
}

#[test]
fn ten_thousand_cookies() {
    let mut s = String::new();
    for i in 0..10_000 {
        s.push_str(&format!("c{i}=v{i}; "));
    }
    s.push_str("xdw-kefu-uid=99; xdw-kefu-entryid=5");
    let h = headers(&[("cookie", &s)]);
    let (m, inv) = MarkerReader::default().read(&h, None);
    assert_eq!(m.uid, Some(99));
    assert_eq!(m.entry_id, Some(5));
    assert!(inv.is_empty());
    assert_eq!(cookie(&h, "c9999"), Some("v9999"));
    // Split across many headers, as HTTP/2 clients send them.
    let mut h = HeaderMap::new();
    for i in 0..10_000 {
        h.append(
            "cookie",
            HeaderValue::from_str(&format!("c{i}=v{i}")).unwrap(),
        );
    }
    h.append("cookie", HeaderValue::from_static("xdw-kefu-uid=1"));
    assert_eq!(MarkerReader::default().read(&h, None).0.uid, Some(1));
}

#[test]
fn query_values_are_form_decoded() {
    let (m, inv) = read(
            &[],
            Some("a=%zz&&xdw-device-id=Huawei+Mate%2060&xdw-kefu-uid=%31%32&xdw%2Dkefu%2Dentryid=9&xdw-kefu-uid=5"),
        );
    assert_eq!(
        m.device.map(|d| d.as_str().to_owned()).as_deref(),
        Some("huawei mate 60")
    );
    assert_eq!(m.uid, Some(12), "first occurrence wins");
    assert_eq!(m.entry_id, Some(9), "names are decoded too");
    assert!(inv.is_empty());
    let (m, inv) = read(
        &[],
        Some("xdw-kefu-uid&xdw-kefu-agent-uid=&xdw-app-version=%FF"),
    );
    assert_eq!(m.uid, None);
    assert_eq!(m.staff_uid, None);
    assert_eq!(inv.iter().collect::<Vec<_>>(), vec![MarkerKind::AppVersion]);
}

#[test]
fn form_decode_agrees_with_form_urlencoded() {
    for s in [
        "a",
        "a+b",
        "%41%4a%4A",
        "%",
        "%4",
        "%zz",
        "100%",
        "x%2By",
        "%e4%b8%ad",
        "+%20+",
    ] {
        let ours = form_decode(s.as_bytes());
        let theirs: Vec<_> = form_urlencoded::parse(s.as_bytes()).collect();
        assert_eq!(String::from_utf8_lossy(&ours), theirs[0].0, "{s}");
    }
    assert!(matches!(form_decode(b"plain"), Cow::Borrowed(_)));
}

#[test]
fn configured_names_and_disabled_sources() {
    let mut names = MarkerNames::default();
    names.sources[MarkerKind::Uid as usize] = MarkerSource {
        header: Some("x-user".into()),
        cookie: None,
        query: Some("u".into()),
    };
    // Two markers may share a source name.
    names.sources[MarkerKind::StaffUid as usize] = MarkerSource {
        header: None,
        cookie: Some("id".into()),
        query: Some("u".into()),
    };
    names.sources[MarkerKind::EntryId as usize] = MarkerSource {
        header: None,
        cookie: Some("id".into()),
        query: None,
    };
    let r = MarkerReader::new(&names);
    let h = headers(&[
        ("xdw-kefu-uid", "1"),
        ("cookie", "xdw-kefu-uid=2; id=8"),
        ("X-User", ""),
    ]);
    let (m, _) = r.read(&h, Some("u=3"));
    assert_eq!(m.uid, Some(3), "header empty, cookie off, query decides");
    assert_eq!(m.staff_uid, Some(8));
    assert_eq!(m.entry_id, Some(8));
    let (m, _) = r.read(&headers(&[("x-user", "4")]), Some("u=3"));
    assert_eq!(m.uid, Some(4));
    assert_eq!(m.staff_uid, Some(3));
}

#[test]
fn marker_headers_are_removed_for_untrusted_peers() {
    let mut h = headers(&[
        ("xdw-kefu-uid", "1"),
        ("xdw-kefu-uid", "2"),
        ("xdw-device-id", "ios"),
        ("cookie", "xdw-kefu-uid=1"),
        ("x-other", "y"),
    ]);
    MarkerReader::default().remove_marker_headers(&mut h);
    assert_eq!(h.len(), 2);
    assert!(h.contains_key("cookie") && h.contains_key("x-other"));
}

#[test]
fn set_from_str_parses_like_requests() {
    let mut m = Markers::default();
    assert_eq!(m.set_from_str(MarkerKind::Uid, "007"), Ok(()));
    assert_eq!(m.uid, Some(7));
    assert_eq!(m.set_from_str(MarkerKind::Uid, ""), Ok(()));
    assert_eq!(m.uid, None);
    assert_eq!(
        m.set_from_str(MarkerKind::Uid, "x"),
        Err(InvalidMarker(MarkerKind::Uid))
    );
    assert_eq!(m.uid, None);
    assert_eq!(
        m.set_from_str(MarkerKind::AgentGid, "1, x, 2"),
        Err(InvalidMarker(MarkerKind::AgentGid))
    );
    assert_eq!(m.agent_gid.as_slice(), &[1, 2]);
    assert_eq!(m.set_from_str(MarkerKind::AppVersion, "v5.10"), Ok(()));
    assert_eq!(m.app_version, Some(Version([5, 10, 0, 0])));
    assert_eq!(m.set_from_str(MarkerKind::Device, "IOS"), Ok(()));
    assert_eq!(m.device, Device::parse("ios"));
    assert_eq!(
        InvalidMarker(MarkerKind::EntryId).to_string(),
        "invalid value for marker entry_id"
    );
}

#[test]
fn no_markers_no_work() {
    let (m, inv) = read(&[("host", "x")], None);
    assert_eq!(m, Markers::default());
    assert!(inv.is_empty());
}

#[test]
fn empty_query_value_lets_a_later_one_decide() {
    let r = MarkerReader::new(&MarkerNames::default());
    let (m, inv) = r.read(&HeaderMap::new(), Some("xdw-kefu-uid=&xdw-kefu-uid=5"));
    assert_eq!(m.uid, Some(5));
    assert!(inv.is_empty());
    let (m, _) = r.read(&HeaderMap::new(), Some("xdw-kefu-uid=7&xdw-kefu-uid=5"));
    assert_eq!(m.uid, Some(7));
}

/// Fields that cannot be a marker's (their names' lengths rule them out) are skipped
/// without ending the scan, wherever they stand: before, between and after the marker
/// headers, with a `Cookie` among them.
#[test]
fn marker_headers_are_found_among_any_other_fields() {
    let (m, _) = read(
        &[
            ("cookie", "xdw-kefu-uid=1"),
            ("accept", "*/*"),
            ("x-a-field-of-other-length", "1"),
            ("xdw-kefu-uid", "42"),
            ("user-agent", "t"),
            ("xdw-app-version", "5.2"),
            ("x-zzzzzzzzzz", "as long as xdw-kefu-uid"),
        ],
        None,
    );
    assert_eq!(m.uid, Some(42));
    assert_eq!(m.app_version, Some(v("5.2")));
    // A field as long as a marker header but another name is not taken for it.
    let (m, _) = read(&[("x-zzzzzzzzzz", "7"), ("cookie", "xdw-kefu-uid=9")], None);
    assert_eq!(m.uid, Some(9));
}
