//! The rule states a clock changes (ramp steps, expiries) and the record of reloads behind
//! `/rules/history`.

use std::time::SystemTime;

use super::{Live, Shared};
use crate::rules::RuleSet;
use crate::unix_ms;

impl Shared {
    /// Sets `graylane_rule_percent` and `graylane_rule_expired` from the live rules at the
    /// clock: after every reload, and every second (ramps step and rules expire with time
    /// alone).
    pub(crate) fn refresh_rule_states(&self) {
        let live = self.live.load();
        let now = unix_ms(SystemTime::now());
        let percents: Vec<(&str, f64)> = live
            .rules
            .percents()
            .map(|p| (p.rule, p.share.percent_at(now).0))
            .collect();
        let expiring: Vec<(&str, bool)> = live
            .rules
            .expiring(now)
            .map(|(r, expired)| (r.rule, expired))
            .collect();
        self.metrics.set_rule_states(&percents, &expiring);
    }

    /// One WARN line per expired rule of the live ruleset (at start and each reload):
    /// an expired rule keeps routing, so someone has to be told.
    pub(crate) fn warn_expired(&self) {
        for line in self.live.load().rules.expiry_warnings(SystemTime::now()) {
            tracing::warn!("{line}");
        }
    }
}

/// How many reload outcomes `/rules/history` keeps.
const HISTORY: usize = 20;

/// One reload outcome.
#[derive(Debug, Clone)]
pub(crate) struct HistoryEntry {
    /// When it happened.
    pub(crate) at: SystemTime,
    /// What asked for it (`start`, `file change`, `SIGHUP`, `POST /reload`, `retry`).
    pub(crate) trigger: &'static str,
    /// `ok`, `unchanged` or `error`.
    pub(crate) result: crate::metrics::ReloadResult,
    /// The hash of what is live after it (`None` after an error: what failed has none).
    pub(crate) sha256: Option<String>,
    /// The `version:` label of what went live.
    pub(crate) version: Option<String>,
    /// Rules by name that the reload added, removed, and changed (same name, different
    /// conditions, route, owner, expiry or `in_file` contents).
    pub(crate) added: Vec<String>,
    /// See `added`.
    pub(crate) removed: Vec<String>,
    /// See `added`.
    pub(crate) changed: Vec<String>,
    /// Why it was rejected.
    pub(crate) error: Option<String>,
}

impl HistoryEntry {
    /// The outcome of replacing `old` by `new` (`None`: the first load).
    pub(crate) fn loaded(trigger: &'static str, old: Option<&RuleSet>, new: &Live) -> Self {
        let old: Vec<(&str, u64)> = old.map(|o| o.fingerprints().collect()).unwrap_or_default();
        let new_fp: Vec<(&str, u64)> = new.rules.fingerprints().collect();
        let find = |list: &[(&str, u64)], n: &str| list.iter().find(|(m, _)| *m == n).map(|x| x.1);
        let mut e = Self::outcome(trigger, crate::metrics::ReloadResult::Ok, new);
        for (name, fp) in &new_fp {
            match find(&old, name) {
                None => e.added.push((*name).to_owned()),
                Some(f) if f != *fp => e.changed.push((*name).to_owned()),
                Some(_) => {}
            }
        }
        e.removed = old
            .iter()
            .filter(|(n, _)| find(&new_fp, n).is_none())
            .map(|(n, _)| (*n).to_owned())
            .collect();
        e
    }

    /// An outcome that left `live` serving (`unchanged`, or `ok` before the diff).
    pub(crate) fn outcome(
        trigger: &'static str,
        result: crate::metrics::ReloadResult,
        live: &Live,
    ) -> Self {
        Self {
            at: SystemTime::now(),
            trigger,
            result,
            sha256: Some(live.sha256.clone()),
            version: live.rules.version().map(str::to_owned),
            added: Vec::new(),
            removed: Vec::new(),
            changed: Vec::new(),
            error: None,
        }
    }

    /// A rejected reload.
    pub(crate) fn rejected(trigger: &'static str, error: String) -> Self {
        Self {
            at: SystemTime::now(),
            trigger,
            result: crate::metrics::ReloadResult::Error,
            sha256: None,
            version: None,
            added: Vec::new(),
            removed: Vec::new(),
            changed: Vec::new(),
            error: Some(error),
        }
    }
}

/// The last [`HISTORY`] reload outcomes, newest last. A lock, but never on the request
/// path: reloads write it, `/rules/history` reads it.
#[derive(Debug, Default)]
pub(crate) struct RuleHistory(std::sync::Mutex<std::collections::VecDeque<HistoryEntry>>);

impl RuleHistory {
    /// Adds an outcome, forgetting the oldest beyond [`HISTORY`].
    pub(crate) fn push(&self, e: HistoryEntry) {
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(e);
    }

    /// The outcomes, newest first.
    pub(crate) fn newest_first(&self) -> Vec<HistoryEntry> {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        h.iter().rev().cloned().collect()
    }
}
