//! Rules reload: the file watcher, SIGHUP and `POST /reload` all end here. A new ruleset
//! is compiled off the request path (a blocking thread: a 1M-id `in_file` takes a while)
//! and published with one `ArcSwap::store`; a bad one is logged, counted, and the live
//! ruleset keeps serving.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::metrics::ReloadResult;
use crate::state::{unix_secs, HistoryEntry, Live, Shared};
use crate::watch::FileWatcher;

/// What a successful reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new ruleset is live.
    Loaded,
    /// Same bytes as the live ruleset; nothing changed.
    Unchanged,
}

/// Serialises reloads and owns the watcher.
pub struct Reloader {
    shared: Arc<Shared>,
    /// One reload at a time, so two triggers cannot publish out of order.
    serial: tokio::sync::Mutex<()>,
    /// Kept to update the watched set when the in_file list changes; off the request path.
    watcher: Mutex<Option<FileWatcher>>,
    /// Trigger tasks, aborted by [`Reloader::stop`] so a stopped server frees its state.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader for `shared`; call [`Reloader::start`] to arm the triggers.
    pub fn new(shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Self {
            shared,
            serial: tokio::sync::Mutex::new(()),
            watcher: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// Reloads now. `Err` carries the `FILE:LINE:COLUMN: message` of a rejected file.
    pub async fn reload(&self, trigger: &'static str) -> Result<ReloadOutcome, String> {
        self.reload_inner(trigger, false).await
    }

    /// `quiet_repeat`: an error identical to the current `last_error` is neither logged
    /// nor counted again (the periodic retry while the rules are broken).
    async fn reload_inner(
        &self,
        trigger: &'static str,
        quiet_repeat: bool,
    ) -> Result<ReloadOutcome, String> {
        let _serial = self.serial.lock().await;
        let cfg = &self.shared.config;
        let (path, display, topo) = (
            cfg.rules_file.clone(),
            cfg.rules_file_display.clone(),
            cfg.topology(),
        );
        let compiled =
            tokio::task::spawn_blocking(move || crate::rules::load(&path, &display, &topo))
                .await
                .map_err(|e| format!("rules compiler crashed: {e}"))
                .and_then(|r| r.map_err(|e| e.to_string()));
        let metrics = &self.shared.metrics;
        let compiled = match compiled {
            Ok(c) => c,
            Err(msg) => {
                let repeat = self
                    .shared
                    .last_error
                    .load()
                    .as_deref()
                    .is_some_and(|last| *last == msg);
                if quiet_repeat && repeat {
                    return Err(msg);
                }
                tracing::error!(
                    trigger,
                    "rules reload rejected, keeping the live rules: {msg}"
                );
                metrics.reload_result(ReloadResult::Error);
                self.shared
                    .history
                    .push(HistoryEntry::rejected(trigger, msg.clone()));
                self.shared.last_error.store(Some(Arc::new(msg.clone())));
                return Err(msg);
            }
        };
        let live = self.shared.live.load();
        if compiled.sha256 == live.sha256 {
            tracing::debug!(trigger, "rules unchanged");
            metrics.reload_result(ReloadResult::Unchanged);
            self.shared.history.push(HistoryEntry::outcome(
                trigger,
                ReloadResult::Unchanged,
                &live,
            ));
            self.shared.last_error.store(None);
            return Ok(ReloadOutcome::Unchanged);
        }
        let files_changed = compiled.files != live.files;
        let new = Live::new(compiled, metrics);
        let entry = HistoryEntry::loaded(trigger, Some(&live.rules), &new);
        tracing::info!(
            trigger,
            version = new.rules.version().unwrap_or("-"),
            sha256 = %new.sha256,
            rules = new.rules.len(),
            added = ?entry.added,
            removed = ?entry.removed,
            changed = ?entry.changed,
            "rules reloaded: version {}, {} rule(s); added {:?}, removed {:?}, changed {:?}",
            new.rules.version().unwrap_or("-"),
            new.rules.len(),
            entry.added,
            entry.removed,
            entry.changed,
        );
        metrics.set_rules_info(new.rules.version(), &new.sha256, unix_secs(new.loaded_at));
        let files = new.files.clone();
        self.shared.live.store(Arc::new(new));
        crate::longlink::on_reload(&self.shared);
        metrics.reload_result(ReloadResult::Ok);
        self.shared.history.push(entry);
        self.shared.refresh_rule_states();
        self.shared.warn_expired();
        self.shared.last_error.store(None);
        if files_changed {
            if let Ok(w) = self.watcher.lock() {
                if let Some(w) = w.as_ref() {
                    w.set_paths(files);
                }
            }
        }
        Ok(ReloadOutcome::Loaded)
    }

    /// Arms the file watcher and SIGHUP. Must run inside the tokio runtime.
    pub fn start(self: &Arc<Self>) {
        let (tx, mut rx) = mpsc::channel(1);
        let files: Vec<PathBuf> = self.shared.live.load().files.clone();
        match FileWatcher::start(files, tx) {
            Ok(w) => {
                if let Ok(mut slot) = self.watcher.lock() {
                    *slot = Some(w);
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "cannot watch the rules files; reload with SIGHUP or POST /reload"
            ),
        }
        let me = self.clone();
        let mut tasks = vec![tokio::spawn(async move {
            while rx.recv().await.is_some() {
                let _ = me.reload("file change").await;
            }
        })];
        // While the rules are broken, try again every second: the fix may be a file the
        // watcher does not know yet (a missing in_file created later), since only a good
        // ruleset tells it which files to watch.
        let me = self.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if me.shared.last_error.load().is_some() {
                    let _ = me.reload_inner("retry", true).await;
                }
            }
        }));
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::hangup()) {
                Ok(mut hup) => {
                    let me = self.clone();
                    tasks.push(tokio::spawn(async move {
                        while hup.recv().await.is_some() {
                            let _ = me.reload("SIGHUP").await;
                        }
                    }));
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP"),
            }
        }
        if let Ok(mut t) = self.tasks.lock() {
            t.extend(tasks);
        }
    }

    /// Disarms the triggers (at shutdown).
    pub fn stop(&self) {
        if let Ok(mut w) = self.watcher.lock() {
            w.take();
        }
        if let Ok(mut t) = self.tasks.lock() {
            for h in t.drain(..) {
                h.abort();
            }
        }
    }
}
