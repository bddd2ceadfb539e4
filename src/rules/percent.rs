//! `percent`: a sticky bucket per user, the same on every instance and in every tool.

use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

use super::compile::{CResult, VErr};
use super::raw::RawPercent;
use crate::config::yamlpos::YamlPath;
use crate::markers::{MarkerKind, Markers};

/// Buckets per `percent` condition: P% with two decimals is `round(P×100)` buckets.
const BUCKETS: u64 = 10_000;

pub(super) struct Percent {
    of: PercentOf,
    /// `"{seed}:"` as bytes, so `decide()` only appends the key.
    prefix: Box<[u8]>,
    /// `round(P×100)`: 0 matches no one, 10000 everyone with the marker.
    threshold: u32,
}

/// The markers a percentage may bucket by: a single id or name (not a list, not a
/// version), so that a user's bucket never changes while their marker does not.
#[derive(Clone, Copy)]
enum PercentOf {
    Uid,
    StaffUid,
    EntryId,
    Device,
}

impl Percent {
    pub(super) fn holds(&self, m: &Markers) -> bool {
        let mut digits = [0u8; 20];
        let key: Option<&[u8]> = match self.of {
            PercentOf::Uid => m.uid.map(|id| itoa(id, &mut digits)),
            PercentOf::StaffUid => m.staff_uid.map(|id| itoa(id, &mut digits)),
            PercentOf::EntryId => m.entry_id.map(|id| itoa(id, &mut digits)),
            PercentOf::Device => m.device.as_ref().map(|d| d.as_str().as_bytes()),
        };
        let Some(key) = key else {
            return false;
        };
        if u64::from(self.threshold) >= BUCKETS {
            return true;
        }
        bucket(&self.prefix, key) < self.threshold
    }
}

/// The bucket of `"{seed}:{key}"` (SPEC §2 `percent`): every graylane instance and every
/// offline tool must agree on it, so it is spelled out here as the reference that the
/// allocation-free path in `decide()` is tested against.
pub(crate) fn percent_bucket(seed: &str, key: &str) -> u32 {
    let h = xxh3_64(format!("{seed}:{key}").as_bytes());
    (h % BUCKETS) as u32
}

/// `percent_bucket` from a precomputed `"{seed}:"` prefix, on the stack.
pub(super) fn bucket(prefix: &[u8], key: &[u8]) -> u32 {
    const STACK: usize = 128;
    let n = prefix.len() + key.len();
    let h = if n <= STACK {
        let mut buf = [0u8; STACK];
        buf[..prefix.len()].copy_from_slice(prefix);
        buf[prefix.len()..n].copy_from_slice(key);
        xxh3_64(&buf[..n])
    } else {
        // A long seed: xxh3's streaming state lives on the stack too.
        let mut s = Xxh3Default::new();
        s.update(prefix);
        s.update(key);
        s.digest()
    };
    (h % BUCKETS) as u32
}

/// Decimal digits of `n`, without leading zeros, into `buf`.
pub(super) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

pub(super) fn percent(p: &YamlPath, raw: RawPercent, rule: &str) -> CResult<Percent> {
    let of = match MarkerKind::from_name(&raw.of) {
        Some(MarkerKind::Uid) => PercentOf::Uid,
        Some(MarkerKind::StaffUid) => PercentOf::StaffUid,
        Some(MarkerKind::EntryId) => PercentOf::EntryId,
        Some(MarkerKind::Device) => PercentOf::Device,
        _ => {
            return Err(VErr::value(
                &p.key("of"),
                format!(
                    "percent of {:?}: expected uid, staff_uid, entry_id or device",
                    raw.of
                ),
            ))
        }
    };
    let hundredths = raw.value * 100.0;
    let threshold = hundredths.round();
    if !(0.0..=100.0).contains(&raw.value) || (hundredths - threshold).abs() > 1e-6 {
        return Err(VErr::value(
            &p.key("value"),
            format!(
                "percent value {}: expected a number in [0, 100] with at most two decimals",
                raw.value
            ),
        ));
    }
    let seed = raw.seed.unwrap_or_else(|| rule.to_owned());
    Ok(Percent {
        of,
        prefix: format!("{seed}:").into_bytes().into_boxed_slice(),
        threshold: threshold as u32,
    })
}
