//! What a watched file looked like at the last look: a change in any part is a change.

use std::fs::Metadata;
use std::io;
use std::path::Path;
use std::time::SystemTime;

/// What a file looked like, through symlinks: if any part differs, its content may have.
///
/// The inode catches rename-over and symlink swaps (new file, maybe same size and mtime);
/// length and mtime catch writes in place; ctime catches the rest (a `touch -r` back to an
/// old mtime, a chmod that makes the file readable again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fingerprint {
    Present {
        id: FileId,
        len: u64,
        mtime: Option<SystemTime>,
        ctime: (i64, i64),
    },
    /// Cannot be read: why (not found, permission denied, a dangling symlink...).
    Missing(io::ErrorKind),
}

impl Fingerprint {
    pub(super) fn of(path: &Path) -> Fingerprint {
        match std::fs::metadata(path) {
            Ok(m) => Fingerprint::Present {
                id: FileId::of(&m),
                len: m.len(),
                mtime: m.modified().ok(),
                ctime: ctime(&m),
            },
            Err(e) => Fingerprint::Missing(e.kind()),
        }
    }
}

/// Device and inode: which file this is, as opposed to what name it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileId {
    dev: u64,
    ino: u64,
}

#[cfg(unix)]
impl FileId {
    pub(super) fn of(m: &Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

#[cfg(unix)]
fn ctime(m: &Metadata) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (m.ctime(), m.ctime_nsec())
}

// Elsewhere there is no portable inode; length and mtime still catch most changes.
#[cfg(not(unix))]
impl FileId {
    pub(super) fn of(_: &Metadata) -> FileId {
        FileId { dev: 0, ino: 0 }
    }
}

#[cfg(not(unix))]
fn ctime(_: &Metadata) -> (i64, i64) {
    (0, 0)
}
