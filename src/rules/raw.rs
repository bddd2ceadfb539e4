//! The serde shape of `rules.yaml`. Unknown keys are errors; what serde cannot check is
//! checked in `compile`, where positions are known.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::markers;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRules {
    #[serde(default)]
    pub(super) version: Option<String>,
    /// Required, even when empty: a file truncated to nothing mid-write must not compile
    /// into "everything to stable".
    pub(super) rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: String,
    #[serde(default)]
    pub(super) when: Option<RawWhen>,
    pub(super) route: String,
    #[serde(default)]
    pub(super) owner: Option<String>,
    #[serde(default)]
    pub(super) expires: Option<String>,
}

/// Every condition rejects `null` (`uid:` with nothing after it): silently dropping the
/// condition would widen the rule to everyone.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWhen {
    #[serde(default, deserialize_with = "present")]
    pub(super) uid: Nullable<RawIds>,
    #[serde(default, deserialize_with = "present")]
    pub(super) staff_uid: Nullable<RawIds>,
    #[serde(default, deserialize_with = "present")]
    pub(super) agent_gid: Nullable<RawGids>,
    #[serde(default, deserialize_with = "present")]
    pub(super) entry_id: Nullable<RawIds>,
    #[serde(default, deserialize_with = "present")]
    pub(super) app_version: Nullable<String>,
    #[serde(default, deserialize_with = "present")]
    pub(super) device: Nullable<RawIn>,
    #[serde(default, deserialize_with = "present")]
    pub(super) listener: Nullable<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub(super) service: Nullable<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub(super) path_prefix: Nullable<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub(super) header: Nullable<BTreeMap<String, RawIn>>,
    #[serde(default, deserialize_with = "present")]
    pub(super) cookie: Nullable<BTreeMap<String, RawIn>>,
    #[serde(default, deserialize_with = "present")]
    pub(super) percent: Nullable<RawPercent>,
}

/// `None`: key absent; `Some(None)`: key present with `null`, rejected in validation,
/// where the message can name the condition.
pub(super) type Nullable<T> = Option<Option<T>>;

pub(super) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Nullable<T>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { in: [ids], ranges: [\"lo-hi\"], in_file: path }"
)]
pub(super) struct RawIds {
    #[serde(default, rename = "in")]
    pub(super) ids: Vec<Id>,
    #[serde(default)]
    pub(super) ranges: Vec<String>,
    #[serde(default)]
    pub(super) in_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { any: [ids], ranges: [\"lo-hi\"], in_file: path }"
)]
pub(super) struct RawGids {
    #[serde(default)]
    pub(super) any: Vec<Id>,
    #[serde(default)]
    pub(super) ranges: Vec<String>,
    #[serde(default)]
    pub(super) in_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping like { in: [values] }")]
pub(super) struct RawIn {
    #[serde(rename = "in")]
    pub(super) values: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping like { of: uid, value: 20 } or { of: uid, steps: [1, 20, 100], every: 15m, start: TIME }"
)]
pub(super) struct RawPercent {
    pub(super) of: String,
    #[serde(default)]
    pub(super) value: Option<f64>,
    #[serde(default)]
    pub(super) steps: Option<Vec<f64>>,
    #[serde(default)]
    pub(super) every: Option<String>,
    #[serde(default)]
    pub(super) start: Option<String>,
    #[serde(default)]
    pub(super) seed: Option<String>,
}

/// An id in a YAML list: a plain number, or a quoted string of digits (ops copy ids from
/// spreadsheets that quote them).
#[derive(Debug, Clone, Copy)]
pub(super) struct Id(pub(super) u64);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an id (decimal digits fitting u64)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id(v))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Id, E> {
                u64::try_from(v)
                    .map(Id)
                    .map_err(|_| E::custom(format!("invalid id {v}: does not fit u64")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                u64::try_from(v)
                    .map(Id)
                    .map_err(|_| E::custom(format!("invalid id {v}: ids are unsigned")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                markers::parse_u64(v.trim().as_bytes())
                    .map(Id)
                    .ok_or_else(|| {
                        E::custom(format!(
                            "invalid id {v:?}: expected decimal digits fitting u64"
                        ))
                    })
            }
        }
        d.deserialize_any(V)
    }
}
