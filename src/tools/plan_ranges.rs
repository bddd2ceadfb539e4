//! `graylane plan-ranges` (SPEC §9.4): the C-end gray scope as a few contiguous UID ranges
//! whose inbound volume is at most a target share of the total, printed as a fragment to
//! paste under a rule's `when:`.
//!
//! Why ranges over the uid line: a `uid: { ranges: [...] }` condition costs one binary
//! search per request and reads at a glance, where a list of chosen uids would not. UIDs
//! are usually handed out in order, so a range is a registration cohort; the ranges are
//! tight around the uids in the volume file, so users registering later never fall in.
//!
//! The plan:
//! - The budget is `floor(total × target)`, in integers, so "at or under the target" is
//!   exact (a float `0.29 × 100` is `28.999…`).
//! - One range: over the uid-sorted volumes, two pointers find the window with the
//!   largest sum within the budget (ties: more users, then the lowest uids). The window
//!   ending at each uid reaches back until one more user would break the budget, so the
//!   best window is short of the budget by less than that one user's volume: on real data
//!   one range lands within a few requests of the target.
//! - More ranges (at most `--max-ranges`): accounts bigger than the whole budget (bots,
//!   official accounts) can never be inside a range, so they split the uid line into
//!   pieces; when every piece is smaller than the budget, one range falls short. The rest
//!   of the budget then goes greedily to the best window outside the chosen ones, again
//!   and again. A further range is only added while the plan is short of the target by
//!   more than [`GOOD_ENOUGH_SHORTFALL_PERCENT`]% of it: a second range that adds a
//!   handful of requests is one more thing for ops to read for no gain.
//!
//! Input decisions: a header line is allowed only as the first non-blank line; a uid on
//! several lines has its requests summed (7 daily exports concatenated make a valid
//! 7-day file); uids present with 0 requests are users (they count in the user total and
//! ranges take them in), uids absent from the file are neither.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::ops::Range;
use std::path::Path;

use crate::markers::parse_u64;

/// One range by default would miss the target by a lot whenever big accounts split the
/// uid line; three is still a rule a person can read, and the shortfall rule means the
/// extra ranges only appear when they are needed.
pub const DEFAULT_MAX_RANGES: usize = 3;

/// Each extra range costs a full pass over the volumes; past this a rule stops being a
/// handful of ranges anyway.
pub const MAX_RANGES_LIMIT: usize = 32;

/// A plan short of the target by at most this share of the target (1%: 0.03 points at
/// 3%) gets no further range.
pub const GOOD_ENOUGH_SHORTFALL_PERCENT: u128 = 1;

/// Most decimals a target may have; keeps the budget arithmetic inside `u128`.
const MAX_TARGET_DECIMALS: usize = 12;

/// Why planning failed (main prints `error: {e}` and exits 1).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The volume file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file as given on the command line.
        path: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A line of the volume file is not `uid,requests`.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file as given on the command line.
        path: String,
        /// 1-based, blank lines included, so an editor jumps to it.
        line: u64,
        /// What is wrong with it, quoting the line.
        message: String,
    },
    /// The requests of one uid, summed over its lines, exceed `u64`.
    #[error("{path}: uid {uid}: requests summed over its lines exceed {max}", max = u64::MAX)]
    Overflow {
        /// The file as given on the command line.
        path: String,
        /// The uid whose lines were summed.
        uid: u64,
    },
    /// `--target` is not a share in (0, 100%].
    #[error("--target {given:?}: {why}")]
    Target {
        /// The argument as given.
        given: String,
        /// What is wrong with it.
        why: String,
    },
    /// `--max-ranges` is out of bounds.
    #[error("--max-ranges {0}: must be between 1 and {max}", max = MAX_RANGES_LIMIT)]
    MaxRanges(usize),
    /// Writing the plan failed (e.g. a closed pipe).
    #[error("cannot write the plan: {0}")]
    Write(#[source] io::Error),
}

/// Reads `volumes` (`uid,requests` lines), plans ranges for `target` (`3%` or `0.03`),
/// at most `max_ranges` of them, and writes the `uid: { ranges: [...] }` fragment with the
/// share and user count reached to `out`. `Ok(false)` when no range fits (exit 1), with
/// the reason on stderr.
pub fn run(
    volumes: &Path,
    target: &str,
    max_ranges: Option<usize>,
    out: &mut dyn Write,
) -> Result<bool, PlanError> {
    // The arguments are checked before a possibly large file is read.
    let share = parse_target(target).map_err(|why| PlanError::Target {
        given: target.to_owned(),
        why,
    })?;
    let max_ranges = match max_ranges {
        None => DEFAULT_MAX_RANGES,
        Some(n) if (1..=MAX_RANGES_LIMIT).contains(&n) => n,
        Some(n) => return Err(PlanError::MaxRanges(n)),
    };
    let vols = read_volumes(volumes)?;
    match report(&vols, &share, max_ranges) {
        Ok(text) => {
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(PlanError::Write)?;
            Ok(true)
        }
        Err(why) => {
            eprintln!("{}: {why}", volumes.display());
            Ok(false)
        }
    }
}

/// A target share as an exact fraction, and how many decimals to print shares with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Share {
    num: u128,
    den: u128,
    /// Decimals of the percentage: at least 2, more when the target itself has more.
    decimals: u32,
}

impl Share {
    /// `floor(total × share)` without `total × num` overflowing.
    fn of(&self, total: u128) -> u128 {
        total / self.den * self.num + total % self.den * self.num / self.den
    }
}

/// `3%`, `3.5%`, `0.03`; a bare number is a fraction, so `3` (300%) is refused with a hint.
fn parse_target(s: &str) -> Result<Share, String> {
    let shape = || "expected a share such as 3%, 3.5% or 0.03".to_owned();
    let t = s.trim();
    let (body, percent) = match t.strip_suffix('%') {
        Some(b) => (b.trim_end(), true),
        None => (t, false),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !digits(int) || !digits(frac) {
        return Err(shape());
    }
    if frac.len() > MAX_TARGET_DECIMALS {
        return Err(format!("at most {MAX_TARGET_DECIMALS} decimals"));
    }
    let over = || {
        if percent {
            "more than 100%".to_owned()
        } else {
            format!("more than 100% (a bare number is a fraction: write {t}% for percent)")
        }
    };
    let mut num: u128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        num = num
            .checked_mul(10)
            .and_then(|n| n.checked_add(u128::from(b - b'0')))
            .ok_or_else(over)?;
    }
    let den = 10u128.pow(frac.len() as u32) * if percent { 100 } else { 1 };
    if num == 0 {
        return Err("must be more than 0%".to_owned());
    }
    if num > den {
        return Err(over());
    }
    let pct_decimals = if percent {
        frac.len()
    } else {
        frac.len().saturating_sub(2)
    };
    Ok(Share {
        num,
        den,
        decimals: pct_decimals.clamp(2, 6) as u32,
    })
}

fn read_volumes(path: &Path) -> Result<Vec<(u64, u64)>, PlanError> {
    let name = path.display().to_string();
    let read_err = |source| PlanError::Read {
        path: name.clone(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    // No file has more entries than a quarter of its bytes ("1,1\n"). Reserving that up
    // front spares the copy-and-double of a growing Vec, whose old and new buffers would
    // both be resident at the peak; the unused rest is address space that is never
    // touched, not memory.
    let hint = file.metadata().map_or(0, |m| m.len() / 4 + 1);
    let hint = usize::try_from(hint).unwrap_or(0);
    parse_volumes(BufReader::with_capacity(1 << 20, file), &name, hint)
}

/// The uid-sorted, one-entry-per-uid volumes. Lines are parsed from a reused buffer
/// (10M lines allocate nothing each); input already in uid order is not sorted again.
fn parse_volumes(
    mut input: impl BufRead,
    name: &str,
    hint: usize,
) -> Result<Vec<(u64, u64)>, PlanError> {
    let mut vols: Vec<(u64, u64)> = Vec::new();
    // Failing to reserve only means growing as we go.
    let _ = vols.try_reserve(hint);
    let mut buf = Vec::with_capacity(256);
    let mut line_no: u64 = 0;
    let mut header_allowed = true;
    let mut sorted = true;
    let mut prev_uid = 0;
    loop {
        buf.clear();
        let n = input
            .read_until(b'\n', &mut buf)
            .map_err(|source| PlanError::Read {
                path: name.to_owned(),
                source,
            })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let mut line = buf.as_slice();
        if line_no == 1 {
            // Spreadsheets save CSV with a byte-order mark.
            line = line.strip_prefix(b"\xef\xbb\xbf").unwrap_or(line);
        }
        let line = trim(line);
        if line.is_empty() {
            continue;
        }
        let allowed = std::mem::replace(&mut header_allowed, false);
        match parse_line(line) {
            Ok((uid, requests)) => {
                sorted &= uid >= prev_uid;
                prev_uid = uid;
                vols.push((uid, requests));
            }
            Err(_) if allowed && is_header(line) => {}
            Err(message) => {
                return Err(PlanError::Line {
                    path: name.to_owned(),
                    line: line_no,
                    message,
                })
            }
        }
    }
    if !sorted {
        vols.sort_unstable_by_key(|&(uid, _)| uid);
    }
    let mut overflow = None;
    vols.dedup_by(|later, kept| {
        if later.0 != kept.0 {
            return false;
        }
        match kept.1.checked_add(later.1) {
            Some(sum) => kept.1 = sum,
            None => overflow = overflow.or(Some(kept.0)),
        }
        true
    });
    match overflow {
        Some(uid) => Err(PlanError::Overflow {
            path: name.to_owned(),
            uid,
        }),
        None => Ok(vols),
    }
}

fn parse_line(line: &[u8]) -> Result<(u64, u64), String> {
    let shape = || format!("expected \"uid,requests\", got {}", quote(line));
    let comma = line.iter().position(|&b| b == b',').ok_or_else(shape)?;
    let (uid, requests) = (trim(&line[..comma]), trim(&line[comma + 1..]));
    if requests.contains(&b',') {
        return Err(shape());
    }
    let uid = parse_u64(uid).ok_or_else(|| {
        format!(
            "uid {}: expected decimal digits fitting u64 (line {})",
            quote(uid),
            quote(line)
        )
    })?;
    let requests = parse_u64(requests).ok_or_else(|| {
        format!(
            "requests {}: expected a whole number fitting u64 (line {})",
            quote(requests),
            quote(line)
        )
    })?;
    Ok((uid, requests))
}

/// Two non-empty fields, neither starting with a digit: `uid,requests`, `user_id, count`.
fn is_header(line: &[u8]) -> bool {
    let mut fields = line.split(|&b| b == b',').map(trim);
    let named =
        |f: Option<&[u8]>| f.is_some_and(|f| f.first().is_some_and(|b| !b.is_ascii_digit()));
    named(fields.next()) && named(fields.next()) && fields.next().is_none()
}

fn trim(s: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let start = s.iter().position(|b| !ws(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    &s[start..end]
}

/// A line for an error message: quoted, and cut so a binary file does not flood the
/// terminal.
fn quote(s: &[u8]) -> String {
    const MAX: usize = 60;
    let text = String::from_utf8_lossy(&s[..s.len().min(MAX)]);
    if s.len() > MAX {
        format!("{:?}", format!("{text}…"))
    } else {
        format!("{text:?}")
    }
}

/// Uid-sorted entries `lo..=hi` (indices) with their summed requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    lo: usize,
    hi: usize,
    sum: u128,
}

impl Window {
    fn users(&self) -> usize {
        self.hi - self.lo + 1
    }

    /// Closer to the budget first, then more users (a wider slice of people for the same
    /// load), then lower uids so the answer is deterministic.
    fn beats(&self, other: &Window) -> bool {
        (self.sum, self.users(), std::cmp::Reverse(self.lo))
            > (other.sum, other.users(), std::cmp::Reverse(other.lo))
    }
}

/// The window in `seg` with the largest positive sum at most `budget`. For each right end
/// the left end is the first one that fits; counts are non-negative, so that window is
/// also the largest and widest ending there.
fn best_window(vols: &[(u64, u64)], seg: Range<usize>, budget: u128) -> Option<Window> {
    let mut best: Option<Window> = None;
    let mut lo = seg.start;
    let mut sum: u128 = 0;
    for hi in seg {
        sum += u128::from(vols[hi].1);
        while sum > budget {
            sum -= u128::from(vols[lo].1);
            lo += 1;
        }
        if lo <= hi && sum > 0 {
            let w = Window { lo, hi, sum };
            if best.is_none_or(|b| w.beats(&b)) {
                best = Some(w);
            }
        }
    }
    best
}

/// At most `max_ranges` disjoint windows whose sums add up to at most `budget`, in uid
/// order: the best single window, then greedily the best window of what is left, until
/// the plan is close enough (see the module docs).
fn plan(vols: &[(u64, u64)], budget: u128, max_ranges: usize) -> Vec<Window> {
    let mut free: Vec<Range<usize>> = Vec::with_capacity(max_ranges + 1);
    free.push(0..vols.len());
    let mut chosen: Vec<Window> = Vec::new();
    let mut left = budget;
    while chosen.len() < max_ranges && left > 0 {
        if !chosen.is_empty() && left * 100 <= budget * GOOD_ENOUGH_SHORTFALL_PERCENT {
            break;
        }
        let mut best: Option<(usize, Window)> = None;
        for (i, seg) in free.iter().enumerate() {
            if let Some(w) = best_window(vols, seg.clone(), left) {
                if best.is_none_or(|(_, b)| w.beats(&b)) {
                    best = Some((i, w));
                }
            }
        }
        let Some((i, w)) = best else { break };
        let seg = free.swap_remove(i);
        free.extend(
            [seg.start..w.lo, w.hi + 1..seg.end]
                .into_iter()
                .filter(|r| !r.is_empty()),
        );
        left -= w.sum;
        chosen.push(w);
    }
    chosen.sort_unstable_by_key(|w| w.lo);
    // Neighbouring windows cover only absent uids between them: one range says the same.
    // The greedy order cannot produce them (their union would have beaten the first),
    // but the output must never spend a range for nothing.
    let mut merged: Vec<Window> = Vec::with_capacity(chosen.len());
    for w in chosen {
        match merged.last_mut() {
            Some(m) if m.hi + 1 == w.lo => {
                m.hi = w.hi;
                m.sum += w.sum;
            }
            _ => merged.push(w),
        }
    }
    merged
}

/// The fragment with its comment, or (`Err`) why nothing fits. The comment carries what
/// ops judge the plan by: the share reached, how many people that is, and the largest
/// single user's part of it (a plan that is mostly one bot is not a sample of users).
fn report(vols: &[(u64, u64)], share: &Share, max_ranges: usize) -> Result<String, String> {
    if vols.is_empty() {
        return Err("no \"uid,requests\" lines: nothing to plan".to_owned());
    }
    let total: u128 = vols.iter().map(|&(_, n)| u128::from(n)).sum();
    let target = pct(share.num, share.den, share.decimals);
    if total == 0 {
        return Err(format!(
            "all {} users have 0 requests: there is no volume to take {target} of",
            group(vols.len() as u128)
        ));
    }
    let budget = share.of(total);
    let windows = plan(vols, budget, max_ranges);
    if windows.is_empty() {
        let smallest = vols
            .iter()
            .map(|&(_, n)| n)
            .filter(|&n| n > 0)
            .min()
            .unwrap_or(0);
        return Err(format!(
            "nothing fits: {target} of {} requests is {}, and every user with requests has more (the smallest has {})",
            group(total),
            group(budget),
            group(u128::from(smallest)),
        ));
    }
    let sum: u128 = windows.iter().map(|w| w.sum).sum();
    let users: usize = windows.iter().map(Window::users).sum();
    let largest = windows
        .iter()
        .flat_map(|w| &vols[w.lo..=w.hi])
        .map(|&(_, n)| n)
        .max()
        .unwrap_or(0);
    let d = share.decimals;
    let mut text = format!(
        "# target {target}: {} of {} requests ({}), {} of {} users ({}), {} {}, largest user {} of the plan\n",
        pct(sum, total, d),
        group(total),
        group(sum),
        group(users as u128),
        group(vols.len() as u128),
        pct(users as u128, vols.len() as u128, 2),
        windows.len(),
        if windows.len() == 1 { "range" } else { "ranges" },
        pct(u128::from(largest), sum, 2),
    );
    let ranges: Vec<String> = windows
        .iter()
        .map(|w| format!("\"{}-{}\"", vols[w.lo].0, vols[w.hi].0))
        .collect();
    if windows.len() > 1 {
        for (w, r) in windows.iter().zip(&ranges) {
            text.push_str(&format!(
                "#   {r}: {}, {} users\n",
                pct(w.sum, total, d),
                group(w.users() as u128)
            ));
        }
    }
    text.push_str(&format!("uid: {{ ranges: [{}] }}\n", ranges.join(", ")));
    Ok(text)
}

/// `part / whole` as a percentage, rounded down so a plan never reads above its target.
fn pct(part: u128, whole: u128, decimals: u32) -> String {
    let scale = 10u128.pow(decimals);
    let v = part * 100 * scale / whole;
    if decimals == 0 {
        return format!("{v}%");
    }
    format!(
        "{}.{:0width$}%",
        v / scale,
        v % scale,
        width = decimals as usize
    )
}

/// `12345678` → `12,345,678`.
fn group(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(s: &str) -> Share {
        parse_target(s).unwrap()
    }

    /// Volumes at consecutive uids 1, 2, 3, ...
    fn dense(counts: &[u64]) -> Vec<(u64, u64)> {
        counts
            .iter()
            .enumerate()
            .map(|(i, &n)| (i as u64 + 1, n))
            .collect()
    }

    fn parse(text: &str) -> Result<Vec<(u64, u64)>, PlanError> {
        parse_volumes(text.as_bytes(), "volumes.csv", 0)
    }

    fn line_error(text: &str) -> (u64, String) {
        match parse(text) {
            Err(PlanError::Line { line, message, .. }) => (line, message),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    fn spans(vols: &[(u64, u64)], ws: &[Window]) -> Vec<(u64, u64, u128)> {
        ws.iter()
            .map(|w| (vols[w.lo].0, vols[w.hi].0, w.sum))
            .collect()
    }

    // === target ===

    #[test]
    fn targets_are_exact_fractions() {
        assert_eq!(
            share("3%"),
            Share {
                num: 3,
                den: 100,
                decimals: 2
            }
        );
        assert_eq!(
            share("0.03"),
            Share {
                num: 3,
                den: 100,
                decimals: 2
            }
        );
        assert_eq!(
            share(" 3.5 % "),
            Share {
                num: 35,
                den: 1000,
                decimals: 2
            }
        );
        assert_eq!(share("0.125%").decimals, 3);
        assert_eq!(
            share(".5%"),
            Share {
                num: 5,
                den: 1000,
                decimals: 2
            }
        );
        assert_eq!(
            share("100%"),
            Share {
                num: 100,
                den: 100,
                decimals: 2
            }
        );
        assert_eq!(
            share("1"),
            Share {
                num: 1,
                den: 1,
                decimals: 2
            }
        );
        // 0.29 × 100 is 28.999… in f64; the budget is not.
        assert_eq!(share("0.29").of(100), 29);
        assert_eq!(share("3%").of(12_345_678), 370_370);
        assert_eq!(
            share("100%").of(u128::from(u64::MAX) * 7),
            u128::from(u64::MAX) * 7
        );
    }

    #[test]
    fn bad_targets_say_why() {
        for (given, why) in [
            ("0", "more than 0"),
            ("0%", "more than 0"),
            ("0.000", "more than 0"),
            ("101%", "more than 100%"),
            ("3", "write 3% for percent"),
            (
                "99999999999999999999999999999999999999999999%",
                "more than 100%",
            ),
            ("-1%", "expected a share"),
            ("abc", "expected a share"),
            ("", "expected a share"),
            ("%", "expected a share"),
            (".", "expected a share"),
            ("1e-2", "expected a share"),
            ("3.1.2%", "expected a share"),
            ("0.0000000000001", "at most 12 decimals"),
        ] {
            let err = parse_target(given).unwrap_err();
            assert!(err.contains(why), "{given:?}: {err}");
        }
    }

    // === parsing ===

    #[test]
    fn volumes_tolerate_header_blanks_spaces_crlf_and_bom() {
        let text = "\u{feff}uid,requests\r\n\r\n 7 , 70 \r\n\n3,30\n\t5,\t0\n9,90";
        assert_eq!(
            parse(text).unwrap(),
            vec![(3, 30), (5, 0), (7, 70), (9, 90)]
        );
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("\n\nuser_id, count\n").unwrap(), vec![]);
    }

    #[test]
    fn duplicate_uids_are_summed() {
        assert_eq!(
            parse("2,5\n1,1\n2,7\n1,1\n").unwrap(),
            vec![(1, 2), (2, 12)]
        );
        let text = format!("4,{}\n4,1\n", u64::MAX);
        match parse(&text) {
            Err(e @ PlanError::Overflow { uid: 4, .. }) => {
                assert!(e.to_string().starts_with("volumes.csv: uid 4:"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_lines_name_their_number_and_content() {
        let mut text = String::from("uid,requests\n");
        for uid in 1..=15 {
            text.push_str(&format!("{uid},{uid}\n"));
        }
        text.push_str("abc\n");
        let (line, message) = line_error(&text);
        assert_eq!(
            (line, message.as_str()),
            (17, "expected \"uid,requests\", got \"abc\"")
        );
        let e = parse(&text).unwrap_err().to_string();
        assert_eq!(e, "volumes.csv:17: expected \"uid,requests\", got \"abc\"");

        assert_eq!(line_error("1,1\n\n2,-5\n").0, 3);
        assert!(line_error("2,-5\n").1.starts_with("requests \"-5\":"));
        assert!(line_error("x1,5\n").1.starts_with("uid \"x1\":"));
        assert!(line_error("1,2,3\n").1.contains("\"uid,requests\""));
        assert!(line_error("1,\n").1.starts_with("requests \"\""));
        assert!(line_error("18446744073709551616,1\n").1.starts_with("uid "));
        // A header is only a header on the first non-blank line.
        assert_eq!(line_error("1,1\nuid,requests\n").0, 2);
        assert_eq!(line_error("uid,requests\nuid,requests\n").0, 2);
        // Long garbage is cut in the message.
        let long = "z".repeat(10_000);
        assert!(line_error(&long).1.len() < 200);
    }

    // === planning ===

    #[test]
    fn one_range_reaches_the_budget_exactly_when_a_window_sums_to_it() {
        let vols = dense(&[9, 1, 2, 3, 9, 4, 9]);
        // budget 10: 1+2+3+4 is not contiguous; 1+2+3 = 6, 3+9 = 12 > 10, 9+1 = 10.
        assert_eq!(spans(&vols, &plan(&vols, 10, 1)), vec![(1, 2, 10)]);
        assert_eq!(spans(&vols, &plan(&vols, 6, 1)), vec![(2, 4, 6)]);
    }

    #[test]
    fn the_plan_stays_under_the_budget_and_takes_the_closest_below() {
        let vols = dense(&[5, 5, 5, 5]);
        // 12 is unreachable: 10 is the closest from below, never 15.
        let ws = plan(&vols, 12, 1);
        assert_eq!(ws.iter().map(|w| w.sum).sum::<u128>(), 10);
        assert_eq!(spans(&vols, &ws), vec![(1, 2, 10)]);
        // Nothing at or under 4.
        assert!(plan(&vols, 4, 3).is_empty());
    }

    #[test]
    fn ties_go_to_more_users_then_lower_uids() {
        // 6 as [6], [3,3] or [1,2,3]: the widest wins; zero-volume users are taken in.
        let vols = dense(&[6, 9, 3, 3, 9, 0, 1, 2, 3, 0, 9]);
        assert_eq!(spans(&vols, &plan(&vols, 6, 1)), vec![(6, 10, 6)]);
        let vols = dense(&[4, 9, 4]);
        assert_eq!(spans(&vols, &plan(&vols, 4, 1)), vec![(1, 1, 4)]);
    }

    #[test]
    fn ranges_span_gaps_between_present_uids_and_stop_at_the_edges() {
        // Absent uids inside a range add nothing; the range ends at present uids, so uids
        // beyond the last one (future registrations) are never in it.
        let vols = vec![(100, 1), (200, 1), (5000, 1), (5001, 50), (9000, 1)];
        assert_eq!(spans(&vols, &plan(&vols, 3, 1)), vec![(100, 5000, 3)]);
        let vols = vec![(100, 50), (200, 1), (5000, 1), (9000, 1)];
        assert_eq!(spans(&vols, &plan(&vols, 3, 1)), vec![(200, 9000, 3)]);
    }

    #[test]
    fn more_ranges_fill_the_rest_of_the_budget_up_to_max_ranges() {
        // Accounts of 100 split the line into pieces of 4, 3 and 2; the budget is 9.
        let vols = dense(&[1, 1, 1, 1, 100, 1, 1, 1, 100, 1, 1, 100]);
        assert_eq!(spans(&vols, &plan(&vols, 9, 1)), vec![(1, 4, 4)]);
        assert_eq!(spans(&vols, &plan(&vols, 9, 2)), vec![(1, 4, 4), (6, 8, 3)]);
        assert_eq!(
            spans(&vols, &plan(&vols, 9, 3)),
            vec![(1, 4, 4), (6, 8, 3), (10, 11, 2)]
        );
        // More ranges than pieces: each piece once, never an empty or zero range.
        assert_eq!(plan(&vols, 9, 10).len(), 3);
        // The rest of the budget takes part of a piece when a whole one does not fit.
        assert_eq!(spans(&vols, &plan(&vols, 6, 3)), vec![(1, 4, 4), (6, 7, 2)]);
    }

    #[test]
    fn no_further_range_once_the_plan_is_close_enough() {
        // An account of 5000 splits the line; 10 more requests sit past it.
        let pieces = |before: usize| {
            let mut counts = vec![10; before];
            counts.extend([5000, 10]);
            dense(&counts)
        };
        // One range reaches 990 of 1000: short by 1% of the target, so no second range
        // for the last 10.
        let vols = pieces(99);
        assert_eq!(spans(&vols, &plan(&vols, 1000, 3)), vec![(1, 99, 990)]);
        // 980 of 1000 is short by 2%: a second range closes part of it.
        let vols = pieces(98);
        assert_eq!(
            spans(&vols, &plan(&vols, 1000, 3)),
            vec![(1, 98, 980), (100, 100, 10)]
        );
    }

    #[test]
    fn the_whole_volume_fits_a_full_target() {
        let vols = dense(&[3, 0, 4]);
        assert_eq!(spans(&vols, &plan(&vols, 7, 3)), vec![(1, 3, 7)]);
    }

    /// Every window of a small input, by brute force, against the two pointers; and the
    /// multi-range plan's invariants.
    #[test]
    fn planning_agrees_with_brute_force_on_random_inputs() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |m: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % m
        };
        for _ in 0..2000 {
            let n = 1 + next(12) as usize;
            let counts: Vec<u64> = (0..n)
                .map(|_| if next(4) == 0 { 0 } else { next(20) })
                .collect();
            let vols = dense(&counts);
            let budget = u128::from(next(40));
            let mut best: Option<(u128, usize)> = None;
            for lo in 0..n {
                for hi in lo..n {
                    let sum: u128 = counts[lo..=hi].iter().map(|&c| u128::from(c)).sum();
                    if sum > 0 && sum <= budget && best.is_none_or(|b| (sum, hi - lo + 1) > b) {
                        best = Some((sum, hi - lo + 1));
                    }
                }
            }
            let got = best_window(&vols, 0..n, budget).map(|w| (w.sum, w.users()));
            assert_eq!(got, best, "{counts:?} budget {budget}");

            let max = 1 + next(4) as usize;
            let ws = plan(&vols, budget, max);
            assert!(ws.len() <= max, "{counts:?}");
            assert!(ws.iter().map(|w| w.sum).sum::<u128>() <= budget);
            for pair in ws.windows(2) {
                assert!(pair[0].hi + 1 < pair[1].lo, "{counts:?}: {ws:?}");
            }
            for w in &ws {
                let sum: u128 = counts[w.lo..=w.hi].iter().map(|&c| u128::from(c)).sum();
                assert_eq!(sum, w.sum);
                assert!(sum > 0);
            }
            // The plan is never worse than the best single window.
            let total: u128 = ws.iter().map(|w| w.sum).sum();
            assert!(total >= best.map_or(0, |b| b.0), "{counts:?}: {ws:?}");
        }
    }

    // === report ===

    #[test]
    fn the_report_is_a_comment_and_one_yaml_line() {
        let vols = vec![(10, 1), (20, 2), (30, 0), (40, 50), (50, 47)];
        let text = report(&vols, &share("3%"), 3).unwrap();
        assert_eq!(
            text,
            "# target 3.00%: 3.00% of 100 requests (3), 3 of 5 users (60.00%), 1 range, largest user 66.66% of the plan\n\
             uid: { ranges: [\"10-30\"] }\n"
        );
    }

    #[test]
    fn several_ranges_are_listed_one_comment_line_each() {
        let vols = dense(&[1, 1, 1, 1, 100, 1, 1, 1, 100, 1, 1, 100]);
        // total 309; 3% is 9.
        let text = report(&vols, &share("3%"), 3).unwrap();
        assert_eq!(
            text,
            "# target 3.00%: 2.91% of 309 requests (9), 9 of 12 users (75.00%), 3 ranges, largest user 11.11% of the plan\n\
             #   \"1-4\": 1.29%, 4 users\n\
             #   \"6-8\": 0.97%, 3 users\n\
             #   \"10-11\": 0.64%, 2 users\n\
             uid: { ranges: [\"1-4\", \"6-8\", \"10-11\"] }\n"
        );
    }

    #[test]
    fn nothing_fits_says_why() {
        let err = report(&dense(&[0, 1000, 2000]), &share("3%"), 3).unwrap_err();
        assert_eq!(
            err,
            "nothing fits: 3.00% of 3,000 requests is 90, and every user with requests has more (the smallest has 1,000)"
        );
        assert!(report(&[], &share("3%"), 3)
            .unwrap_err()
            .contains("nothing to plan"));
        assert!(report(&dense(&[0, 0]), &share("3%"), 3)
            .unwrap_err()
            .contains("all 2 users have 0 requests"));
    }

    #[test]
    fn shares_round_down_and_counts_are_grouped() {
        assert_eq!(pct(2999, 100_000, 2), "2.99%");
        assert_eq!(pct(3, 100, 2), "3.00%");
        assert_eq!(pct(1, 3, 4), "33.3333%");
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(12_345_678), "12,345,678");
    }

    #[test]
    fn run_reads_the_file_and_checks_arguments_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("volumes.csv");
        std::fs::write(&path, "uid,requests\n1,10\n2,80\n3,10\n").unwrap();
        let mut out = Vec::new();
        assert!(run(&path, "10%", None, &mut out).unwrap());
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("uid: { ranges: [\"1-1\"] }\n"));

        let mut out = Vec::new();
        assert!(!run(&path, "5%", None, &mut out).unwrap());
        assert!(out.is_empty());

        let missing = dir.path().join("nope.csv");
        let e = run(&missing, "3%", None, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, PlanError::Read { .. }), "{e}");
        assert!(e.to_string().contains("nope.csv"), "{e}");
        // Bad arguments fail before the (missing) file is opened.
        let e = run(&missing, "3", None, &mut Vec::new()).unwrap_err();
        assert!(matches!(e, PlanError::Target { .. }), "{e}");
        for n in [0, MAX_RANGES_LIMIT + 1] {
            let e = run(&missing, "3%", Some(n), &mut Vec::new()).unwrap_err();
            assert!(matches!(e, PlanError::MaxRanges(_)), "{e}");
        }
    }
}
