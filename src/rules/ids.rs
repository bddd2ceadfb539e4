//! Id conditions: sets and merged ranges that answer in one probe and one binary search,
//! and the `in_file` lists they are read from.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;
use std::rc::Rc;

use crate::markers;

/// Ids and inclusive ranges, as listed.
pub(super) type IdLists = (Vec<u64>, Vec<(u64, u64)>);

/// One parsed `in_file`, shared by every condition naming it.
pub(super) struct InFile {
    pub(super) bytes: Vec<u8>,
    pub(super) ids: Vec<u64>,
    pub(super) ranges: Vec<(u64, u64)>,
}

/// Ids as a hash set plus sorted, merged inclusive ranges: one probe and one binary
/// search, whatever the list sizes.
pub(super) struct IdSet {
    ids: Ids,
    ranges: Box<[(u64, u64)]>,
}

enum Ids {
    /// A scan beats hashing for the handful of ids most rules list.
    Small(Box<[u64]>),
    Hashed(HashSet<u64, BuildHasherDefault<IdHasher>>),
}

/// Ids below this count are scanned rather than hashed.
const SMALL_IDS: usize = 16;

impl IdSet {
    pub(super) fn new(mut ids: Vec<u64>, mut ranges: Vec<(u64, u64)>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        let ranges = merged.into_boxed_slice();
        ids.retain(|&id| !in_ranges(&ranges, id));
        let ids = if ids.len() <= SMALL_IDS {
            ids.sort_unstable();
            ids.dedup();
            Ids::Small(ids.into_boxed_slice())
        } else {
            let mut set = HashSet::with_capacity_and_hasher(ids.len(), Default::default());
            set.extend(ids);
            Ids::Hashed(set)
        };
        IdSet { ids, ranges }
    }

    pub(super) fn contains(&self, id: u64) -> bool {
        let listed = match &self.ids {
            Ids::Small(v) => v.contains(&id),
            Ids::Hashed(s) => s.contains(&id),
        };
        listed || in_ranges(&self.ranges, id)
    }
}

fn in_ranges(ranges: &[(u64, u64)], id: u64) -> bool {
    let i = ranges.partition_point(|r| r.0 <= id);
    i > 0 && ranges[i - 1].1 >= id
}

/// MurmurHash3's 64-bit finaliser. The ids are inserted from the trusted rules file, so a
/// request cannot grow or skew the table and SipHash's flood resistance buys nothing on
/// lookup; this is a few cycles instead of ~20 ns, and still mixes sequential or aligned
/// ids well across hashbrown's buckets and control bits.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = fmix64(self.0.rotate_left(8) ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = fmix64(n);
    }
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

pub(super) fn read_in_file(path: &Path, name: &str) -> Result<Rc<InFile>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read in_file {name:?} ({}): {e}", path.display()))?;
    let (ids, ranges) =
        parse_id_lines(&bytes).map_err(|(line, m)| format!("{name}:{line}: {m}"))?;
    Ok(Rc::new(InFile { bytes, ids, ranges }))
}

/// Parses an `in_file`: one id or `lo-hi` per line, blank lines and `#` comments ignored.
/// Borrowed slices and a hand-rolled digit loop: a million lines take milliseconds.
/// Errors carry the 1-based line.
pub(super) fn parse_id_lines(bytes: &[u8]) -> Result<IdLists, (usize, String)> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut ids = Vec::new();
    let mut ranges = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = match line.iter().position(|&b| b == b'#') {
            Some(j) => &line[..j],
            None => line,
        };
        let line = trim_space(line);
        if line.is_empty() {
            continue;
        }
        if let Some(id) = markers::parse_u64(line) {
            ids.push(id);
            continue;
        }
        if line.contains(&b'-') {
            let r = parse_range(line).map_err(|m| {
                (
                    i + 1,
                    format!("range {:?}: {m}", String::from_utf8_lossy(line)),
                )
            })?;
            ranges.push(r);
        } else {
            return Err((
                i + 1,
                format!(
                    "invalid id {:?}: expected decimal digits fitting u64, or lo-hi",
                    String::from_utf8_lossy(line)
                ),
            ));
        }
    }
    Ok((ids, ranges))
}

/// `lo-hi`, inclusive, spaces allowed around `-`.
pub(super) fn parse_range(s: &[u8]) -> Result<(u64, u64), String> {
    let bad = || "expected \"lo-hi\" with decimal ids fitting u64".to_owned();
    let dash = s.iter().position(|&b| b == b'-').ok_or_else(bad)?;
    let lo = markers::parse_u64(trim_space(&s[..dash])).ok_or_else(bad)?;
    let hi = markers::parse_u64(trim_space(&s[dash + 1..])).ok_or_else(bad)?;
    if lo > hi {
        return Err(format!("lo > hi ({lo} > {hi})"));
    }
    Ok((lo, hi))
}

fn trim_space(s: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r');
    let start = s.iter().position(|b| !ws(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_sets_merge_ranges_and_hash_many_ids() {
        let s = IdSet::new(
            vec![5, 15, 1000],
            vec![
                (10, 20),
                (21, 30),
                (25, 40),
                (100, 100),
                (u64::MAX - 1, u64::MAX),
            ],
        );
        assert_eq!(
            &*s.ranges,
            &[(10, 40), (100, 100), (u64::MAX - 1, u64::MAX)]
        );
        assert!(
            matches!(&s.ids, Ids::Small(v) if **v == [5, 1000]),
            "15 is in a range"
        );
        for (id, want) in [
            (5, true),
            (9, false),
            (10, true),
            (40, true),
            (41, false),
            (100, true),
            (1000, true),
            (u64::MAX, true),
            (0, false),
        ] {
            assert_eq!(s.contains(id), want, "{id}");
        }
        let many: Vec<u64> = (0..1000).map(|i| i * 1024).collect();
        let s = IdSet::new(many, vec![]);
        assert!(matches!(s.ids, Ids::Hashed(_)));
        assert!(s.contains(1024 * 999));
        assert!(!s.contains(1023));
        let empty = IdSet::new(vec![], vec![]);
        assert!(!empty.contains(0));
    }
}
