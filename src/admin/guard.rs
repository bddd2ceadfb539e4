//! `GET /guard?service=S` (the state and the evidence the guard decided on) and
//! `POST /guard/trip|reset?service=S` (an SRE's hand on the breaker).

use std::time::SystemTime;

use serde_json::{json, Value};

use crate::guard::{Counts, Evidence, GuardState};
use crate::state::Shared;

/// The service named by `?service=` and its guard; the `404` body when there is none.
pub(super) fn find<'a>(
    shared: &'a Shared,
    query: &str,
) -> Result<(&'a str, &'a GuardState), Value> {
    let service = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    shared
        .config
        .services
        .iter()
        .zip(&shared.guards)
        .find(|(s, _)| s.name == service)
        .and_then(|(s, g)| g.as_ref().map(|g| (s.name.as_str(), g)))
        .ok_or_else(|| json!({ "error": format!("no service {service:?} with a guard") }))
}

/// Trips or resets by hand.
pub(super) fn switch(service: &str, g: &GuardState, path: &str) -> Value {
    let tripped = if path == "/guard/trip" {
        g.trip()
    } else {
        g.reset()
    };
    json!({ "service": service, "tripped": tripped })
}

/// The `/guard` body.
pub(super) fn status(service: &str, g: &GuardState) -> Value {
    let st = g.status();
    json!({
        "service": service,
        "state": st.phase.label(),
        "since": rfc3339(st.since),
        "tripped": g.is_tripped(),
        "held_since": g.held_since().map(rfc3339),
        "window": { "gray": pool(&st.gray), "stable": pool(&st.stable) },
        "last_trip": st.last_trip.as_deref().map(evidence),
    })
}

/// Evidence as JSON: both pools, the test and its outcome.
pub(crate) fn evidence(e: &Evidence) -> Value {
    json!({
        "reason": e.reason.label(),
        "at": rfc3339(e.at),
        "gray": pool(&e.gray),
        "stable": pool(&e.stable),
        "z": e.z,
        "z_needed": e.z_needed,
    })
}

fn pool(c: &Counts) -> Value {
    json!({
        "requests": c.requests,
        "failures": c.failures,
        "share": c.share(),
        "p95_ms": c.p95_ms,
    })
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
