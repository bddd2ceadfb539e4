//! Rules reload: the file watcher, SIGHUP and `POST /reload` all end here. A new ruleset
//! is compiled off the request path (a blocking thread: a 1M-id `in_file` takes a while)
//! and published with one `ArcSwap::store`; a bad one is logged, counted, and the live
//! ruleset keeps serving.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::metrics::ReloadResult;
use crate::state::{unix_secs, HistoryEntry, Live, Shadow, Shared};
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
        let shadow_file = cfg.shadow_rules_file.clone();
        let both = tokio::task::spawn_blocking(move || {
            let live = crate::rules::load(&path, &display, &topo);
            let shadow = shadow_file.map(|(p, d)| crate::rules::load(&p, &d, &topo));
            (live, shadow)
        })
        .await
        .map_err(|e| format!("rules compiler crashed: {e}"));
        let (compiled, shadow) = match both {
            Ok((live, shadow)) => (live.map_err(|e| e.to_string()), shadow),
            Err(e) => (Err(e), None),
        };
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
        let (shadow, shadow_changed) = self.next_shadow(shadow, &live);
        if compiled.sha256 == live.sha256 {
            if shadow_changed {
                // Same rules, a new candidate: the pair is swapped all the same.
                let mut new = Live::new(compiled, metrics);
                new.shadow = shadow;
                self.store(new, &live);
            }
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
        let mut new = Live::new(compiled, metrics);
        new.shadow = shadow;
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
        self.store(new, &live);
        crate::longlink::on_reload(&self.shared);
        metrics.reload_result(ReloadResult::Ok);
        self.shared.history.push(entry);
        self.shared.refresh_rule_states();
        self.shared.warn_expired();
        self.shared.last_error.store(None);
        Ok(ReloadOutcome::Loaded)
    }

    /// Publishes `new` with one store, and tells the watcher when the set of files to
    /// watch changed.
    fn store(&self, new: Live, old: &Live) {
        let files = watched(&self.shared, &new);
        let changed = files != watched(&self.shared, old);
        self.shared.live.store(Arc::new(new));
        if changed {
            if let Ok(w) = self.watcher.lock() {
                if let Some(w) = w.as_ref() {
                    w.set_paths(files);
                }
            }
        }
    }

    /// The candidate to pair with the next live rules: the new one when it compiled
    /// (the current one, counts and all, when its bytes did not change), else the
    /// current one, with the error in `/shadow`. `true` when it is not the current one.
    fn next_shadow(
        &self,
        result: Option<Result<crate::rules::Compiled, crate::config::yamlpos::LocatedError>>,
        live: &Live,
    ) -> (Option<Arc<Shadow>>, bool) {
        let current = live.shadow.clone();
        match result {
            None => (current, false),
            Some(Ok(c)) => {
                self.shared.shadow_error.store(None);
                if current.as_ref().is_some_and(|s| s.sha256 == c.sha256) {
                    return (current, false);
                }
                let new = Shadow::new(c, &self.shared.metrics, &self.shared.config);
                tracing::info!(sha256 = %new.sha256, rules = new.rules.len(), "shadow rules loaded; deciding beside the live rules, never routing");
                (Some(Arc::new(new)), true)
            }
            Some(Err(e)) => {
                let msg = e.to_string();
                let repeat = self
                    .shared
                    .shadow_error
                    .load()
                    .as_deref()
                    .is_some_and(|last| *last == msg);
                if !repeat {
                    tracing::warn!("shadow rules rejected, routing unaffected: {msg}");
                    self.shared.shadow_error.store(Some(Arc::new(msg)));
                }
                (current, false)
            }
        }
    }

    /// Arms the file watcher and SIGHUP. Must run inside the tokio runtime.
    pub fn start(self: &Arc<Self>) {
        let (tx, mut rx) = mpsc::channel(1);
        let files: Vec<PathBuf> = watched(&self.shared, &self.shared.live.load());
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
            let mut tick = crate::timer::interval(std::time::Duration::from_secs(1));
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

/// The files a change of which must reload: the rules file and its `in_file`s, and the
/// shadow rules file (even while it does not compile or exist) and its `in_file`s.
fn watched(shared: &Shared, live: &Live) -> Vec<PathBuf> {
    let mut files = live.files.clone();
    if let Some((path, _)) = &shared.config.shadow_rules_file {
        files.push(path.clone());
    }
    if let Some(s) = &live.shadow {
        files.extend(s.files.iter().cloned());
    }
    files.sort();
    files.dedup();
    files
}
