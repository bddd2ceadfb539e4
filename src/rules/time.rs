//! Instants as rules.yaml writes them: `start:` of a ramp and `expires:` of a rule. Every
//! replica must read the same instant from the same text, so the parsing is spelled out
//! here (RFC 3339 with `Z` or a numeric offset, or a bare date) rather than left to a
//! locale.

/// Milliseconds since the Unix epoch of an RFC 3339 time: `2026-12-07T10:00:00Z`,
/// `2026-12-07T18:00:00+08:00`, fractions of a second allowed.
pub(super) fn parse_instant(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid time {s:?}: expected RFC 3339, e.g. 2026-12-07T10:00:00Z");
    let s = s.trim();
    let (date, rest) = s.split_at_checked(10).ok_or_else(bad)?;
    let days = parse_date(date).ok_or_else(bad)?;
    let rest = rest
        .strip_prefix('T')
        .or_else(|| rest.strip_prefix('t'))
        .or_else(|| rest.strip_prefix(' '))
        .ok_or_else(bad)?;
    let num = |t: &str| t.parse::<u64>().ok().filter(|_| t.len() == 2);
    let (h, m, sec) = (
        rest.get(0..2).and_then(num),
        rest.get(3..5).and_then(num),
        rest.get(6..8).and_then(num),
    );
    let (Some(h), Some(m), Some(sec)) = (h, m, sec) else {
        return Err(bad());
    };
    if h > 23 || m > 59 || sec > 60 || rest.get(2..3) != Some(":") || rest.get(5..6) != Some(":") {
        return Err(bad());
    }
    let mut tail = &rest[8..];
    let mut millis = 0u64;
    if let Some(frac) = tail.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let ms: String = frac[..digits]
            .chars()
            .chain("000".chars())
            .take(3)
            .collect();
        millis = ms.parse().map_err(|_| bad())?;
        tail = &frac[digits..];
    }
    let offset_s: i64 = match tail {
        "Z" | "z" => 0,
        _ => {
            let sign = match tail.get(0..1) {
                Some("+") => 1,
                Some("-") => -1,
                _ => return Err(bad()),
            };
            let (oh, om) = (tail.get(1..3).and_then(num), tail.get(4..6).and_then(num));
            match (oh, om, tail.get(3..4), tail.len()) {
                (Some(oh), Some(om), Some(":"), 6) if oh < 24 && om < 60 => {
                    sign * (oh * 3600 + om * 60) as i64
                }
                _ => return Err(bad()),
            }
        }
    };
    let secs = days * 86_400 + (h * 3600 + m * 60 + sec) as i64 - offset_s;
    u64::try_from(secs)
        .map(|s| s * 1000 + millis)
        .map_err(|_| bad())
}

/// The instant a rule's `expires:` ends it: a bare date (`2026-12-31`) keeps the rule
/// for that whole day (UTC), so it expires at the next midnight; a time expires then.
pub(super) fn parse_expiry(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.len() == 10 {
        return parse_date(t)
            .and_then(|d| u64::try_from((d + 1) * 86_400 * 1000).ok())
            .ok_or_else(|| format!("invalid date {s:?}: expected YYYY-MM-DD or RFC 3339"));
    }
    parse_instant(t).map_err(|_| format!("invalid expiry {s:?}: expected YYYY-MM-DD or RFC 3339"))
}

/// Days since 1970-01-01 of `YYYY-MM-DD` (proleptic Gregorian; H. Hinnant's
/// days-from-civil).
fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i64 = s[0..4].parse().ok()?;
    let m: i64 = s[5..7].parse().ok()?;
    let d: i64 = s[8..10].parse().ok()?;
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_agree_with_humantime() {
        for s in [
            "1970-01-01T00:00:00Z",
            "2026-12-07T10:00:00Z",
            "2000-02-29T23:59:59Z",
            "2026-12-31T12:34:56.789Z",
        ] {
            let want = humantime::parse_rfc3339(s).unwrap();
            let want = want
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            assert_eq!(parse_instant(s), Ok(want), "{s}");
        }
        assert_eq!(
            parse_instant("2026-12-07T18:00:00+08:00"),
            parse_instant("2026-12-07T10:00:00Z")
        );
        assert_eq!(
            parse_instant("2026-12-07T05:30:00-04:30"),
            parse_instant("2026-12-07T10:00:00Z")
        );
        for bad in [
            "2026-12-07",
            "2026-13-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "tomorrow",
            "2026-12-07T10:00:00",
            "2026-12-07T25:00:00Z",
        ] {
            assert!(parse_instant(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_date_expires_at_the_end_of_that_day() {
        assert_eq!(
            parse_expiry("2026-12-31"),
            parse_instant("2027-01-01T00:00:00Z")
        );
        assert_eq!(
            parse_expiry("2026-12-31T08:00:00Z"),
            parse_instant("2026-12-31T08:00:00Z")
        );
        assert!(parse_expiry("2026-12-32").is_err());
    }
}
