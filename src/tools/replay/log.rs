//! Reading the access log: lines split in place, the fields replay needs, and why a line
//! is skipped.

use super::*;

// === reading the log ===

/// One tracing-subscriber JSON line, its strings borrowed from the read buffer.
#[derive(Deserialize)]
pub(super) struct LogLine<'a> {
    #[serde(borrow, default)]
    pub(super) timestamp: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub(super) target: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub(super) fields: Option<Fields<'a>>,
}

/// The `fields` of an access line that decide a request (see `log_access`); the
/// rest (peer, method, status, ms, service, pool) is ignored.
#[derive(Deserialize)]
pub(super) struct Fields<'a> {
    #[serde(borrow, default)]
    pub(super) listener: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub(super) host: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub(super) path: Option<Text<'a>>,
    #[serde(default)]
    pub(super) uid: Option<u64>,
    #[serde(default)]
    pub(super) staff_uid: Option<u64>,
    #[serde(borrow, default)]
    pub(super) agent_gid: Option<Text<'a>>,
    #[serde(default)]
    pub(super) entry_id: Option<u64>,
    #[serde(borrow, default)]
    pub(super) app_version: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub(super) device: Option<Text<'a>>,
    #[serde(borrow, default)]
    pub(super) rule: Option<Text<'a>>,
}

/// A JSON string borrowed from the line, or owned when it had escapes. serde borrows a
/// `Cow<str>` only when it is the field itself, not inside an `Option`: there it always
/// allocated, and the allocations were a tenth of the run time.
pub(super) struct Text<'a>(Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Why a line was not decided, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Skip {
    /// No JSON object on the line: text-format logs, blank lines, garbage.
    NotJson,
    /// A JSON log line of another target (graylane's own INFO and WARN lines).
    OtherTarget,
    /// An access line without a listener or path, or with a field of the wrong type.
    Malformed,
    /// A listener the config does not define (the log is from another config).
    UnknownListener,
    /// No service of the config matches its host and path.
    NoService,
    /// A marker value the proxy would not have parsed (the line was edited or corrupt).
    InvalidMarker,
    /// A ruleset ramps and the line's `timestamp` is missing or unreadable.
    BadTimestamp,
    /// Over [`MAX_LINE`] bytes.
    TooLong,
}

impl Skip {
    pub(super) const ALL: [Skip; 8] = [
        Skip::NotJson,
        Skip::OtherTarget,
        Skip::Malformed,
        Skip::UnknownListener,
        Skip::NoService,
        Skip::InvalidMarker,
        Skip::BadTimestamp,
        Skip::TooLong,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Skip::NotJson => "not_json",
            Skip::OtherTarget => "other_target",
            Skip::Malformed => "malformed",
            Skip::UnknownListener => "unknown_listener",
            Skip::NoService => "no_service",
            Skip::InvalidMarker => "invalid_marker",
            Skip::BadTimestamp => "bad_timestamp",
            Skip::TooLong => "too_long",
        }
    }
}

/// The line's markers, parsed as the proxy parses request values (numbers were logged as
/// numbers and need no parsing).
pub(super) fn markers(f: &Fields<'_>) -> Result<Markers, Skip> {
    let mut m = Markers {
        uid: f.uid,
        staff_uid: f.staff_uid,
        entry_id: f.entry_id,
        ..Markers::default()
    };
    let text = [
        (MarkerKind::AgentGid, f.agent_gid.as_deref()),
        (MarkerKind::AppVersion, f.app_version.as_deref()),
        (MarkerKind::Device, f.device.as_deref()),
    ];
    for (kind, value) in text {
        if let Some(v) = value {
            m.set_from_str(kind, v).map_err(|_| Skip::InvalidMarker)?;
        }
    }
    Ok(m)
}

/// What [`for_each_line`] hands over.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Chunk<'a> {
    /// A line without its `\n`.
    Line(&'a [u8]),
    /// A line of [`MAX_LINE`] bytes or more, dropped unread.
    TooLong,
}

/// Calls `f` with each line of `r`. Blocks are read straight into one buffer and lines
/// are handed over where they lie: a line is never copied, only the partial line at the
/// end of a block moves to the front. The buffer grows for a long line, up to
/// [`MAX_LINE`].
pub(super) fn for_each_line(r: &mut dyn Read, mut f: impl FnMut(Chunk<'_>)) -> io::Result<()> {
    let mut buf = vec![0u8; BLOCK];
    let (mut start, mut end) = (0, 0);
    // Inside a too-long line: drop bytes up to its newline.
    let mut skipping = false;
    loop {
        if end == buf.len() {
            if start > 0 {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            } else if buf.len() < MAX_LINE {
                buf.resize((buf.len() * 2).min(MAX_LINE), 0);
            } else {
                if !skipping {
                    f(Chunk::TooLong);
                }
                skipping = true;
                end = 0;
            }
        }
        let n = match r.read(&mut buf[end..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            // A last line without a newline (a log still being written) is still a line.
            if end > start && !skipping {
                f(Chunk::Line(&buf[start..end]));
            }
            return Ok(());
        }
        let mut scan = end;
        end += n;
        while let Some(i) = buf[scan..end].iter().position(|&b| b == b'\n') {
            let nl = scan + i;
            if skipping {
                skipping = false;
            } else {
                f(Chunk::Line(&buf[start..nl]));
            }
            start = nl + 1;
            scan = start;
        }
        if skipping {
            // Nothing before the newline is kept.
            start = end;
        }
    }
}

pub(super) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
