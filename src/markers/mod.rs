//! Identity markers: typed values read from a request's headers, cookies and query.
//!
//! This runs on every request, so [`MarkerReader::read`] decides from borrowed bytes: one
//! lookup per marker header, one scan over the `Cookie` headers for all markers at once,
//! one scan over the query string, and no allocation unless a matching query value is
//! percent-encoded.
//!
//! - `value`: the typed values ([`Version`], [`Device`], [`GidList`]) and byte parsing.
//! - `read`: [`MarkerReader`], which finds each marker's first present source.

mod read;
mod value;

pub(crate) use read::cookie;
pub use read::MarkerReader;
pub(crate) use value::{itoa, parse_u64};
pub(crate) use value::{Device, GidList, Version};

use value::{is_visible_ascii, trim_ows};

/// The six built-in markers, in a fixed order that indexes per-marker tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MarkerKind {
    /// The end user's UID (C-end), `xdw-kefu-uid`.
    Uid = 0,
    /// The staff member's UID (B-end), `xdw-kefu-agent-uid`.
    StaffUid = 1,
    /// The staff member's group ids, `xdw-kefu-agent-gid`.
    AgentGid = 2,
    /// The entry point the conversation came in through, `xdw-kefu-entryid`.
    EntryId = 3,
    /// The client app's version, `xdw-app-version`.
    AppVersion = 4,
    /// The device kind, `xdw-device-id`.
    Device = 5,
}

impl MarkerKind {
    /// Every marker, in index order.
    pub const ALL: [MarkerKind; 6] = [
        MarkerKind::Uid,
        MarkerKind::StaffUid,
        MarkerKind::AgentGid,
        MarkerKind::EntryId,
        MarkerKind::AppVersion,
        MarkerKind::Device,
    ];

    /// The marker's name in rules, config, `/explain` and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            MarkerKind::Uid => "uid",
            MarkerKind::StaffUid => "staff_uid",
            MarkerKind::AgentGid => "agent_gid",
            MarkerKind::EntryId => "entry_id",
            MarkerKind::AppVersion => "app_version",
            MarkerKind::Device => "device",
        }
    }

    /// The default header, cookie and query parameter name.
    pub fn default_source(self) -> &'static str {
        match self {
            MarkerKind::Uid => "xdw-kefu-uid",
            MarkerKind::StaffUid => "xdw-kefu-agent-uid",
            MarkerKind::AgentGid => "xdw-kefu-agent-gid",
            MarkerKind::EntryId => "xdw-kefu-entryid",
            MarkerKind::AppVersion => "xdw-app-version",
            MarkerKind::Device => "xdw-device-id",
        }
    }

    /// Looks a marker up by its name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

// === impl MarkerNames ===

/// Where one marker is read from; `None` = that source is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerSource {
    /// Header name, lowercase.
    pub header: Option<String>,
    /// Cookie name (case-sensitive, as RFC 6265 says).
    pub cookie: Option<String>,
    /// Query parameter name.
    pub query: Option<String>,
}

/// Sources of every marker, indexed by `MarkerKind` as usize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerNames {
    /// One entry per marker kind.
    pub sources: [MarkerSource; 6],
}

impl Default for MarkerNames {
    fn default() -> Self {
        Self {
            sources: MarkerKind::ALL.map(|k| MarkerSource {
                header: Some(k.default_source().to_owned()),
                cookie: Some(k.default_source().to_owned()),
                query: Some(k.default_source().to_owned()),
            }),
        }
    }
}

impl MarkerNames {
    /// Sources of one marker.
    pub fn get(&self, kind: MarkerKind) -> &MarkerSource {
        &self.sources[kind as usize]
    }
}

// === impl Markers ===

/// The markers of one request, typed. `None` (or an empty `agent_gid`) means absent:
/// not sent, sent empty, or sent invalid; every rule condition on it is false.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Markers {
    /// `uid`.
    pub uid: Option<u64>,
    /// `staff_uid`.
    pub staff_uid: Option<u64>,
    /// `agent_gid`: the valid tokens, in request order.
    pub agent_gid: GidList,
    /// `entry_id`.
    pub entry_id: Option<u64>,
    /// `app_version`.
    pub app_version: Option<Version>,
    /// `device`, lowercased.
    pub device: Option<Device>,
}

/// A marker value that does not parse. `/explain` reports it; the request path counts it
/// in `graylane_marker_invalid_total` instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for marker {}", .0.name())]
pub struct InvalidMarker(pub MarkerKind);

/// What one source value did to a marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Empty after trimming: not present, the next source may decide.
    Empty,
    /// Parsed and stored.
    Set,
    /// Present but invalid: the marker is absent (valid `agent_gid` tokens excepted) and
    /// no later source is consulted.
    Invalid,
}

impl Markers {
    /// Sets one marker from text exactly as a request value would be parsed, for
    /// `/explain` and `graylane explain`, where markers are given by name. An empty value
    /// leaves the marker unset and is `Ok`. On an invalid value the marker is unset and
    /// `Err` is returned, except that the valid tokens of an `agent_gid` list are kept
    /// (as on the request path).
    pub fn set_from_str(&mut self, kind: MarkerKind, raw: &str) -> Result<(), InvalidMarker> {
        match self.apply(kind, raw.as_bytes()) {
            Outcome::Empty | Outcome::Set => Ok(()),
            Outcome::Invalid => Err(InvalidMarker(kind)),
        }
    }

    /// Clears `kind`, then parses `raw` into it.
    fn apply(&mut self, kind: MarkerKind, raw: &[u8]) -> Outcome {
        self.clear(kind);
        let raw = trim_ows(raw);
        if raw.is_empty() {
            return Outcome::Empty;
        }
        if !raw.iter().all(|&b| is_visible_ascii(b)) {
            return Outcome::Invalid;
        }
        let ok = match kind {
            MarkerKind::Uid => set(&mut self.uid, parse_u64(raw)),
            MarkerKind::StaffUid => set(&mut self.staff_uid, parse_u64(raw)),
            MarkerKind::EntryId => set(&mut self.entry_id, parse_u64(raw)),
            MarkerKind::AppVersion => set(&mut self.app_version, Version::parse_bytes(raw)),
            MarkerKind::Device => set(&mut self.device, Device::parse_bytes(raw)),
            MarkerKind::AgentGid => {
                let mut bad = false;
                for token in raw.split(|&b| b == b',') {
                    let token = trim_ows(token);
                    if token.is_empty() {
                        // `1,2,` and `1, ,2`: a stray separator is not a wrong id.
                        continue;
                    }
                    match parse_u64(token) {
                        Some(id) => self.agent_gid.push(id),
                        None => bad = true,
                    }
                }
                // Only separators (`,`) is as invalid as a junk token.
                !bad && !self.agent_gid.is_empty()
            }
        };
        if ok {
            Outcome::Set
        } else {
            Outcome::Invalid
        }
    }

    fn clear(&mut self, kind: MarkerKind) {
        match kind {
            MarkerKind::Uid => self.uid = None,
            MarkerKind::StaffUid => self.staff_uid = None,
            MarkerKind::AgentGid => self.agent_gid.clear(),
            MarkerKind::EntryId => self.entry_id = None,
            MarkerKind::AppVersion => self.app_version = None,
            MarkerKind::Device => self.device = None,
        }
    }
}

fn set<T>(slot: &mut Option<T>, v: Option<T>) -> bool {
    let ok = v.is_some();
    *slot = v;
    ok
}

// === impl InvalidSet ===

/// The markers a request sent with an invalid value: each counts once in
/// `graylane_marker_invalid_total{marker}`. A bitset so that reading markers stays
/// allocation-free.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InvalidSet(u8);

impl InvalidSet {
    /// Adds a marker.
    pub fn insert(&mut self, kind: MarkerKind) {
        self.0 |= bit(kind);
    }

    /// Whether `kind` was invalid.
    pub fn contains(&self, kind: MarkerKind) -> bool {
        self.0 & bit(kind) != 0
    }

    /// No invalid marker: the common case, checked before touching any counter.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// The invalid markers, in [`MarkerKind`] order.
    pub fn iter(&self) -> impl Iterator<Item = MarkerKind> + '_ {
        let bits = self.0;
        MarkerKind::ALL
            .into_iter()
            .filter(move |&k| bits & bit(k) != 0)
    }
}

fn bit(kind: MarkerKind) -> u8 {
    1 << (kind as u8)
}

#[cfg(test)]
mod tests;
