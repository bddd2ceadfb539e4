//! Identity markers: typed values read from a request's headers, cookies and query.

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
