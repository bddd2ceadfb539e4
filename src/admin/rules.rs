//! `GET /rules` (the live ruleset, its ramps and expired rules) and `GET /rules/history`
//! (the last reload outcomes).

use std::time::SystemTime;

use serde_json::{json, Value};

use crate::rules::Share;
use crate::state::{HistoryEntry, Shared};
use crate::{rfc3339_ms, unix_ms};

/// The `/rules` body (also the answer to `POST /reload`).
pub(crate) fn rules_json(shared: &Shared) -> Value {
    let live = shared.live.load();
    let last_error = shared.last_error.load();
    let now = unix_ms(SystemTime::now());
    let ramps: Vec<Value> = live
        .rules
        .percents()
        .filter_map(|p| match p.share {
            Share::Ramp(r) => {
                let (percent_now, next) = p.share.percent_at(now);
                Some(json!({
                    "rule": p.rule,
                    "percent_now": percent_now,
                    "next_step_at": next.map(rfc3339_ms),
                    "steps": r.steps.iter().map(|s| f64::from(*s) / 100.0).collect::<Vec<_>>(),
                    "every_ms": r.every_ms,
                    "start": rfc3339_ms(r.start_ms),
                }))
            }
            Share::Fixed(_) => None,
        })
        .collect();
    let expired: Vec<Value> = live
        .rules
        .expiring(now)
        .filter(|(_, expired)| *expired)
        .map(|(r, _)| json!({ "rule": r.rule, "owner": r.owner, "expires": rfc3339_ms(r.expires) }))
        .collect();
    json!({
        "version": live.rules.version(),
        "sha256": live.sha256,
        "loaded_at": humantime::format_rfc3339_seconds(live.loaded_at).to_string(),
        "rules": live.rules.len(),
        "last_error": last_error.as_deref().map(|s| s.as_str()),
        "ramps": ramps,
        "expired": expired,
    })
}

/// The `/rules/history` body: newest first.
pub(super) fn history_json(shared: &Shared) -> Value {
    let entries: Vec<Value> = shared.history.newest_first().iter().map(entry).collect();
    json!({ "history": entries })
}

fn entry(e: &HistoryEntry) -> Value {
    json!({
        "at": humantime::format_rfc3339_millis(e.at).to_string(),
        "trigger": e.trigger,
        "result": e.result.label(),
        "sha256": e.sha256,
        "version": e.version,
        "added": e.added,
        "removed": e.removed,
        "changed": e.changed,
        "error": e.error,
    })
}

/// The `/shadow` body: what the candidate decided since it was loaded, and the moves it
/// would make; `None` without `shadow_rules_file`.
pub(super) fn shadow_json(shared: &Shared) -> Option<Value> {
    let (_, display) = shared.config.shadow_rules_file.as_ref()?;
    let live = shared.live.load();
    let last_error = shared.shadow_error.load();
    let Some(sh) = live.shadow.as_deref() else {
        return Some(json!({
            "file": display, "sha256": null, "since": null, "requests": 0,
            "rules": {}, "moves": [], "last_error": last_error.as_deref().map(|s| s.as_str()),
        }));
    };
    let mut rules = serde_json::Map::new();
    let mut requests = 0;
    let names = sh.rules.rule_names().chain(std::iter::once("default"));
    for ((name, c), base) in names.zip(&sh.hits).zip(&sh.hits_base) {
        let n = c.get().saturating_sub(*base);
        requests += n;
        rules.insert(name.to_owned(), json!(n));
    }
    let mut moves = Vec::new();
    for (s, svc) in shared.config.services.iter().enumerate() {
        let m = shared.metrics.service(s);
        for (from, fp) in svc.pools.iter().enumerate() {
            for (to, tp) in svc.pools.iter().enumerate() {
                let base = sh
                    .moves_base
                    .get(s)
                    .and_then(|r| r.get(from))
                    .and_then(|r| r.get(to))
                    .copied()
                    .unwrap_or(0);
                let n = m.shadow_move(from, to).get().saturating_sub(base);
                if from != to && n > 0 {
                    moves.push(json!({ "service": svc.name, "from": fp.name, "to": tp.name, "requests": n }));
                }
            }
        }
    }
    Some(json!({
        "file": display,
        "sha256": sh.sha256,
        "since": humantime::format_rfc3339_seconds(sh.since).to_string(),
        "requests": requests,
        "rules": rules,
        "moves": moves,
        "last_error": last_error.as_deref().map(|s| s.as_str()),
    }))
}
