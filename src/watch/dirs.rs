//! Watches through Linux's inotify that ask only for the events that can change a
//! watched file. A directory is asked for names created, deleted or renamed, files closed
//! after writing, attributes, and the directory itself going; not for every write and
//! every open: a log written next to the rules file is an event per line under a
//! general-purpose mask (the `notify` crate's), and reading each woke a thread that
//! shares the proxy's core (29,047 wake-ups and 0.5 s of CPU in 6 s under a benchmark's
//! access log, `perf sched`). The watched files' own writes come from a watch on each
//! file (its inode, re-set when the file is replaced), so a rules file written in place
//! and left open is still seen as it is written.
//!
//! The events are handed on in `notify`'s vocabulary (`notify-types`), which the watch
//! thread's decisions are written in.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use notify_types::event::{
    AccessKind, AccessMode, CreateKind, DataChange, Event, EventKind, Flag, MetadataKind,
    ModifyKind, RemoveKind, RenameMode,
};
use rustix::event::{PollFd, PollFlags, Timespec};

/// What a directory watch asks for (see the module docs). A symlink to a directory is
/// followed, as the path through it is what the reloader reads.
const DIR_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR);

/// What a watched file's own watch asks for: its writes (the rest comes from its
/// directory's watch).
const FILE_MASK: WatchMask = WatchMask::MODIFY;

/// How long the reading thread waits for events before it looks whether its watcher
/// was dropped: the most it outlives it.
const STOP_CHECK: Duration = Duration::from_secs(1);

/// The watched directories' and files' paths by watch descriptor, shared with the reading
/// thread, which names each event's path from it. A lock, not on the request path: taken
/// per watch change and per event batch.
type Named = Arc<Mutex<HashMap<WatchDescriptor, PathBuf>>>;

/// Watches directories (non-recursively) and files; a thread reads the events and hands
/// each to the callback. Dropping it stops the thread within [`STOP_CHECK`].
pub(super) struct DirWatcher {
    watches: Watches,
    named: Named,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for DirWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatcher").finish_non_exhaustive()
    }
}

impl DirWatcher {
    /// Starts the reading thread. `on_event` gets every event, or the error that made
    /// events unreliable (the thread then carries on).
    pub(super) fn start<F>(mut on_event: F) -> io::Result<DirWatcher>
    where
        F: FnMut(io::Result<Event>) + Send + 'static,
    {
        let mut inotify = Inotify::init()?;
        let watches = inotify.watches();
        let named: Named = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (paths, stopped) = (named.clone(), stop.clone());
        std::thread::Builder::new()
            .name("graylane-inotify".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                while !stopped.load(Ordering::Relaxed) {
                    match inotify.read_events(&mut buf) {
                        Ok(events) => {
                            let mut paths = paths.lock().unwrap_or_else(|p| p.into_inner());
                            for e in events {
                                if e.mask.contains(EventMask::IGNORED) {
                                    // The watch is gone (its directory deleted, or unwatched).
                                    paths.remove(&e.wd);
                                    continue;
                                }
                                if let Some(event) = translate(e.mask, paths.get(&e.wd), e.name) {
                                    on_event(Ok(event));
                                }
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            wait_readable(&inotify, STOP_CHECK);
                        }
                        Err(e) => {
                            on_event(Err(e));
                            std::thread::sleep(STOP_CHECK);
                        }
                    }
                }
            })?;
        Ok(DirWatcher {
            watches,
            named,
            stop,
        })
    }

    /// Watches the directory `dir` for names and closes (see [`DIR_MASK`]).
    pub(super) fn watch(&mut self, dir: &Path) -> io::Result<()> {
        self.add(dir, DIR_MASK)
    }

    /// Watches the file behind `file` (its inode: a replaced file needs a new watch) for
    /// writes.
    pub(super) fn watch_file(&mut self, file: &Path) -> io::Result<()> {
        self.add(file, FILE_MASK)
    }

    fn add(&mut self, path: &Path, mask: WatchMask) -> io::Result<()> {
        // Locked across the add: the reading thread names an event by its descriptor, and
        // one that came between the add and the insert would be dropped unnamed.
        let mut named = self.named.lock().unwrap_or_else(|p| p.into_inner());
        let wd = self.watches.add(path, mask)?;
        named.insert(wd, path.to_path_buf());
        Ok(())
    }

    /// Stops watching `path` (a directory or a file); an error when it was not watched,
    /// or its watch went with it.
    pub(super) fn unwatch(&mut self, path: &Path) -> io::Result<()> {
        let wd = {
            let mut named = self.named.lock().unwrap_or_else(|p| p.into_inner());
            let wd = named
                .iter()
                .find(|(_, p)| p.as_path() == path)
                .map(|(wd, _)| wd.clone());
            wd.inspect(|wd| {
                named.remove(wd);
            })
        };
        match wd {
            Some(wd) => self.watches.remove(wd),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Blocks until inotify has events or `limit` has passed.
fn wait_readable(inotify: &Inotify, limit: Duration) {
    let fd = inotify.as_fd();
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let timeout = Timespec {
        tv_sec: limit.as_secs() as i64,
        tv_nsec: i64::from(limit.subsec_nanos()),
    };
    // An error (EINTR) only means looking again sooner.
    let _ = rustix::event::poll(&mut fds, Some(&timeout));
}

/// An inotify event in notify's vocabulary, with its path: the watched directory joined
/// with the name, or the directory itself. `None` for a directory no longer known.
fn translate(mask: EventMask, dir: Option<&PathBuf>, name: Option<&OsStr>) -> Option<Event> {
    if mask.contains(EventMask::Q_OVERFLOW) {
        // Events were lost: look at everything.
        return Some(Event::new(EventKind::Other).set_flag(Flag::Rescan));
    }
    let path = match name {
        Some(name) => dir?.join(name),
        None => dir?.clone(),
    };
    let kind = if mask.contains(EventMask::CLOSE_WRITE) {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
    } else if mask.contains(EventMask::CREATE) {
        EventKind::Create(CreateKind::Any)
    } else if mask.intersects(EventMask::DELETE | EventMask::DELETE_SELF) {
        EventKind::Remove(RemoveKind::Any)
    } else if mask.contains(EventMask::MOVED_FROM) {
        EventKind::Modify(ModifyKind::Name(RenameMode::From))
    } else if mask.contains(EventMask::MOVED_TO) {
        EventKind::Modify(ModifyKind::Name(RenameMode::To))
    } else if mask.contains(EventMask::MOVE_SELF) {
        EventKind::Modify(ModifyKind::Name(RenameMode::Any))
    } else if mask.contains(EventMask::ATTRIB) {
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any))
    } else if mask.contains(EventMask::MODIFY) {
        EventKind::Modify(ModifyKind::Data(DataChange::Any))
    } else {
        EventKind::Other
    };
    Some(Event::new(kind).add_path(path))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::mpsc;

    use super::*;

    const GENEROUS: Duration = Duration::from_secs(5);

    /// The events up to and including the first that names `until`, in the order inotify
    /// gave them (which is the order they happened in).
    fn events_until(rx: &mpsc::Receiver<io::Result<Event>>, until: &Path) -> Vec<Event> {
        let mut seen = Vec::new();
        loop {
            let e = rx
                .recv_timeout(GENEROUS)
                .unwrap_or_else(|_| panic!("no event for {} (saw {seen:?})", until.display()))
                .unwrap();
            let done = e.paths.iter().any(|p| p == until);
            seen.push(e);
            if done {
                return seen;
            }
        }
    }

    /// Reads events until one of `kind` names `path`.
    fn expect(rx: &mpsc::Receiver<io::Result<Event>>, path: &Path, kind: EventKind) {
        let mut seen = Vec::new();
        loop {
            let e = events_until(rx, path).pop().unwrap();
            if e.kind == kind {
                return;
            }
            seen.push(e);
            assert!(
                seen.len() < 100,
                "no {kind:?} for {}: {seen:?}",
                path.display()
            );
        }
    }

    /// A directory reached through a symlink (`/etc/graylane -> /opt/...`) is watched
    /// through it, its events named by the path through the link.
    #[test]
    fn a_symlinked_directory_is_watched_through_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("release-7");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("current");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let (tx, rx) = mpsc::channel();
        let mut w = DirWatcher::start(move |e| {
            let _ = tx.send(e);
        })
        .unwrap();
        w.watch(&link).unwrap();
        std::fs::write(real.join("rules.yaml"), "rules: []\n").unwrap();
        expect(
            &rx,
            &link.join("rules.yaml"),
            EventKind::Create(CreateKind::Any),
        );
    }

    #[test]
    fn writes_and_opens_raise_nothing_names_and_closes_do() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let mut w = DirWatcher::start(move |e| {
            let _ = tx.send(e);
        })
        .unwrap();
        w.watch(dir.path()).unwrap();
        let log = dir.path().join("access.log");
        let rules = dir.path().join("rules.yaml");
        std::fs::write(&rules, "rules: []\n").unwrap();

        // A log appended to line by line, and the rules file opened and read: not one
        // event until a marker file is created after them (events keep their order).
        let mut f = std::fs::File::create(&log).unwrap();
        let created = events_until(&rx, &log);
        for line in 0..1000 {
            writeln!(f, "line {line}").unwrap();
        }
        std::fs::read_to_string(&rules).unwrap();
        let marker = dir.path().join("marker");
        std::fs::File::create(&marker).unwrap();
        let between = events_until(&rx, &marker);
        assert_eq!(between.len(), 1, "{created:?} then {between:?}");
        assert!(between[0].kind.is_create());
        // Closed after writing: now the log is named (the watch thread drops that).
        drop(f);
        let closed = events_until(&rx, &log);
        assert_eq!(
            closed.last().unwrap().kind,
            EventKind::Access(AccessKind::Close(AccessMode::Write))
        );

        // A watched file's own watch reports its writes while it stays open.
        w.watch_file(&rules).unwrap();
        let mut open = std::fs::OpenOptions::new()
            .append(true)
            .open(&rules)
            .unwrap();
        writeln!(open, "# more").unwrap();
        let written = events_until(&rx, &rules);
        assert_eq!(
            written.last().unwrap().kind,
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            "{written:?}"
        );
        drop(open);

        // Attributes, a rename away and back over, a delete, the directory going.
        let mut perms = std::fs::metadata(&rules).unwrap().permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(&rules, perms).unwrap();
        expect(
            &rx,
            &rules,
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
        );
        let away = dir.path().join("rules.yaml.old");
        std::fs::rename(&rules, &away).unwrap();
        expect(
            &rx,
            &rules,
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
        );
        let tmp = dir.path().join(".rules.yaml.swp");
        std::fs::write(&tmp, "rules: [x]\n").unwrap();
        std::fs::rename(&tmp, &rules).unwrap();
        expect(
            &rx,
            &rules,
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
        );
        std::fs::remove_file(&away).unwrap();
        expect(&rx, &away, EventKind::Remove(RemoveKind::Any));
        let gone = dir.path().to_path_buf();
        drop(dir);
        let removed = events_until(&rx, &gone);
        assert!(removed.last().unwrap().kind.is_remove(), "{removed:?}");
        // The kernel drops a deleted directory's watch; its name goes from the map too.
        let deadline = std::time::Instant::now() + GENEROUS;
        while w.named.lock().unwrap().values().any(|p| *p == gone) {
            assert!(
                std::time::Instant::now() < deadline,
                "the dead watch stayed named"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
