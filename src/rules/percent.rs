//! `percent`: a sticky bucket per user, the same on every instance and in every tool.

use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};

use super::compile::{CResult, VErr};
use super::raw::RawPercent;
use super::time::parse_instant;
use crate::config::yamlpos::YamlPath;
use crate::markers::{itoa, MarkerKind, Markers};

/// Buckets per `percent` condition: P% with two decimals is `round(P×100)` buckets.
const BUCKETS: u64 = 10_000;

pub(super) struct Percent {
    of: PercentOf,
    /// `"{seed}:"` as bytes, so `decide()` only appends the key.
    prefix: Box<[u8]>,
    /// The share in force: fixed, or by the clock.
    share: Share,
}

/// `round(P×100)`: 0 matches no one, 10000 everyone with the marker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Share {
    Fixed(u32),
    Ramp(Ramp),
}

/// `steps`, `every`, `start` (SPEC §9.2): `steps[k]` with `k = floor((now - start) /
/// every)`, capped at the last step; 0 before `start`. A pure function of the file and
/// the clock, so every replica agrees.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ramp {
    /// Each step as `round(P×100)`, non-decreasing.
    pub(crate) steps: Box<[u32]>,
    pub(crate) every_ms: u64,
    /// Unix milliseconds.
    pub(crate) start_ms: u64,
}

impl Ramp {
    /// The threshold in force at Unix ms `now`, and when the next step begins (`None`
    /// once the last step is reached).
    pub(crate) fn at(&self, now: u64) -> (u32, Option<u64>) {
        if now < self.start_ms {
            return (0, Some(self.start_ms));
        }
        let k = (now - self.start_ms) / self.every_ms.max(1);
        let last = self.steps.len() as u64 - 1;
        let threshold = self.steps[k.min(last) as usize];
        let next = (k < last).then(|| self.start_ms + (k + 1) * self.every_ms);
        (threshold, next)
    }
}

impl Share {
    /// The threshold in force at Unix ms `now`.
    pub(crate) fn threshold(&self, now: u64) -> u32 {
        match self {
            Share::Fixed(t) => *t,
            Share::Ramp(r) => r.at(now).0,
        }
    }

    /// The share in force at Unix ms `now` in percent, and when a ramp's next step begins.
    pub(crate) fn percent_at(&self, now: u64) -> (f64, Option<u64>) {
        let (t, next) = match self {
            Share::Fixed(t) => (*t, None),
            Share::Ramp(r) => r.at(now),
        };
        (f64::from(t) / 100.0, next)
    }
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
    /// The share, for `/rules` and `graylane_rule_percent`.
    pub(super) fn share(&self) -> &Share {
        &self.share
    }

    /// Whether the request's marker falls in the share in force at Unix ms `now` (only
    /// read by ramps).
    pub(super) fn holds(&self, m: &Markers, now: u64) -> bool {
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
        let threshold = self.share.threshold(now);
        if u64::from(threshold) >= BUCKETS {
            return true;
        }
        bucket(&self.prefix, key) < threshold
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
    let share = match (raw.value, raw.steps) {
        (Some(_), Some(_)) => {
            return Err(VErr::value(
                &p.key("steps"),
                "percent takes value or steps, not both",
            ))
        }
        (None, None) => {
            return Err(VErr::value(
                p,
                "percent needs value (a fixed share) or steps (a ramp)",
            ))
        }
        (Some(v), None) => {
            for key in ["every", "start"] {
                let given = if key == "every" {
                    &raw.every
                } else {
                    &raw.start
                };
                if given.is_some() {
                    return Err(VErr::value(
                        &p.key(key),
                        format!("{key} belongs to a ramp (steps), not to a fixed value"),
                    ));
                }
            }
            Share::Fixed(hundredths(&p.key("value"), v)?)
        }
        (None, Some(steps)) => Share::Ramp(ramp(p, &steps, raw.every, raw.start)?),
    };
    let seed = raw.seed.unwrap_or_else(|| rule.to_owned());
    Ok(Percent {
        of,
        prefix: format!("{seed}:").into_bytes().into_boxed_slice(),
        share,
    })
}

/// `round(P×100)` of a share in [0, 100] with at most two decimals.
fn hundredths(p: &YamlPath, value: f64) -> CResult<u32> {
    let h = value * 100.0;
    let threshold = h.round();
    if !(0.0..=100.0).contains(&value) || (h - threshold).abs() > 1e-6 {
        return Err(VErr::value(
            p,
            format!(
                "percent value {value}: expected a number in [0, 100] with at most two decimals"
            ),
        ));
    }
    Ok(threshold as u32)
}

/// A ramp's steps (sorted, each a valid share), `every` (a duration above 0) and `start`
/// (RFC 3339).
fn ramp(
    p: &YamlPath,
    steps: &[f64],
    every: Option<String>,
    start: Option<String>,
) -> CResult<Ramp> {
    if steps.is_empty() {
        return Err(VErr::value(
            &p.key("steps"),
            "a ramp needs at least one step",
        ));
    }
    let mut out = Vec::with_capacity(steps.len());
    for (i, &v) in steps.iter().enumerate() {
        let t = hundredths(&p.key("steps").index(i), v)?;
        if out.last().is_some_and(|&prev| t < prev) {
            return Err(VErr::value(
                &p.key("steps").index(i),
                format!("steps must not go down: {v} after a larger step (a ramp only adds users)"),
            ));
        }
        out.push(t);
    }
    let every = every.ok_or_else(|| VErr::value(p, "a ramp needs every (e.g. every: 15m)"))?;
    let every_ms = crate::config::parse_duration(&every)
        .map_err(|m| VErr::value(&p.key("every"), m))?
        .as_millis();
    if every_ms == 0 {
        return Err(VErr::value(&p.key("every"), "every must be above 0"));
    }
    let start = start.ok_or_else(|| {
        VErr::value(
            p,
            "a ramp needs start (e.g. start: \"2026-12-07T10:00:00Z\")",
        )
    })?;
    let start_ms = parse_instant(&start).map_err(|m| VErr::value(&p.key("start"), m))?;
    Ok(Ramp {
        steps: out.into_boxed_slice(),
        every_ms: u64::try_from(every_ms).unwrap_or(u64::MAX),
        start_ms,
    })
}
