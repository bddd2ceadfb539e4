use super::*;

fn fields(json: &str) -> Fields<'_> {
    serde_json::from_str(json).unwrap()
}

#[test]
fn markers_come_back_as_the_proxy_parsed_them() {
    let f = fields(
        r#"{"uid":42,"staff_uid":7,"agent_gid":"141338365001,2","entry_id":9,
            "app_version":"5.3.1.0","device":"iOS"}"#,
    );
    let m = markers(&f).unwrap();
    assert_eq!(m.uid, Some(42));
    assert_eq!(m.staff_uid, Some(7));
    assert_eq!(m.agent_gid.as_slice(), &[141_338_365_001, 2]);
    assert_eq!(m.entry_id, Some(9));
    assert_eq!(
        m.app_version.map(|v| v.to_string()).as_deref(),
        Some("5.3.1.0")
    );
    assert!(m.device.is_some());
}

#[test]
fn a_marker_the_proxy_would_reject_skips_the_line() {
    let f = fields(r#"{"app_version":"five"}"#);
    assert_eq!(markers(&f).err(), Some(Skip::InvalidMarker));
}

#[test]
fn escaped_strings_still_parse() {
    let l: LogLine<'_> = serde_json::from_str(
        r#"{"target":"graylane::access","fields":{"listener":"im","path":"/a\"b"}}"#,
    )
    .unwrap();
    assert_eq!(l.fields.unwrap().path.as_deref(), Some("/a\"b"));
}

/// Hands `data` over in reads of at most `step` bytes, as a pipe does.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.step.min(out.len()).min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn lines(data: &[u8], step: usize) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let mut r = Trickle { data, step };
    for_each_line(&mut r, |c| {
        out.push(match c {
            Chunk::Line(l) => Some(l.to_vec()),
            Chunk::TooLong => None,
        })
    })
    .unwrap();
    out
}

#[test]
fn lines_come_out_whole_however_the_reads_fall() {
    let mut data = Vec::new();
    let mut want = Vec::new();
    for i in 0..5_000 {
        let l = format!("line {i} {}", "x".repeat(i % 700));
        data.extend_from_slice(l.as_bytes());
        data.push(b'\n');
        want.push(Some(l.into_bytes()));
    }
    data.extend_from_slice(b"\n\nlast without newline");
    want.extend([
        Some(Vec::new()),
        Some(Vec::new()),
        Some(b"last without newline".to_vec()),
    ]);
    for step in [1, 7, 4096, BLOCK, usize::MAX] {
        assert_eq!(lines(&data, step), want, "reads of {step}");
    }
}

#[test]
fn a_too_long_line_is_dropped_without_losing_the_next() {
    let mut data = b"first\n".to_vec();
    data.extend(std::iter::repeat_n(b'x', 3 * MAX_LINE));
    data.extend_from_slice(b"\nnext\n");
    data.extend(std::iter::repeat_n(b'y', MAX_LINE + 5));
    for step in [BLOCK, 1 << 20, usize::MAX] {
        let got = lines(&data, step);
        assert_eq!(
            got,
            [Some(b"first".to_vec()), None, Some(b"next".to_vec()), None],
            "reads of {step}"
        );
    }
}

#[test]
fn tables_align_numbers_right() {
    let mut t = Table::new(["rule", "route", "requests"], 2);
    t.row(["a".into(), "gray".into(), "5".into()]);
    t.row(["default".into(), "stable".into(), "12345".into()]);
    let mut out = Vec::new();
    t.write(&mut out).unwrap();
    let s = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines[1].len(), lines[2].len(), "{s}");
    assert!(lines[1].ends_with("    5"), "{s}");
}

#[test]
fn users_count_once_per_bucket_past_one_word() {
    // 40 rules a side and 3 pools: 100 buckets, two words a row.
    let l = Layout {
        live_rules: 41,
        cand_rules: 41,
        pools: 3,
    };
    assert_eq!(l.len(), 41 + 41 + 3 + 3 + 9);
    let mut u = Users::new(l.len());
    for (user, bucket) in [
        (User::Uid(7), l.moved(0, 1)),
        (User::Uid(7), l.moved(0, 1)),
        (User::Staff(7), l.moved(1, 0)),
        (User::Uid(8), l.cand_rule(40)),
        (User::Uid(7), l.cand_rule(40)),
    ] {
        let row = u.row(user);
        u.set(row, bucket);
    }
    assert_eq!(u.len(), 3, "uid 7 and staff 7 are two users");
    let per = u.per_bucket(l.len());
    assert_eq!(per[l.moved(0, 1)], 1);
    assert_eq!(per[l.moved(1, 0)], 1);
    assert_eq!(per[l.cand_rule(40)], 2);
    assert_eq!(per.iter().sum::<u64>(), 4);
    assert_eq!(u.any_of(l.moved(0, 0)..l.len()), 2);
}

#[test]
fn shares_of_nothing_are_zero() {
    assert_eq!(share(0, 0), 0.0);
    assert_eq!(pct(1, 3), "33.33%");
}
