//! Where there is no inotify (not Linux): no watches, and the watch thread's poll alone
//! watches the files.

use std::io;
use std::path::Path;

/// Never made: `start` says there is nothing to start.
#[derive(Debug)]
pub(super) enum DirWatcher {}

impl DirWatcher {
    pub(super) fn start<F>(_: F) -> io::Result<DirWatcher> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub(super) fn watch(&mut self, _: &Path) -> io::Result<()> {
        match *self {}
    }

    pub(super) fn watch_file(&mut self, _: &Path) -> io::Result<()> {
        match *self {}
    }

    pub(super) fn unwatch(&mut self, _: &Path) -> io::Result<()> {
        match *self {}
    }
}
