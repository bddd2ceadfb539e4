//! `/explain` and `graylane explain`: what the request path would decide for a request
//! described by parameters, without sending it anywhere.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use crate::markers::{MarkerKind, Markers};
use crate::routing::strip_port;
use crate::state::{Live, Outcome, Shared};

/// A request described by parameters, for `/explain` and `graylane explain`.
#[derive(Debug, Default)]
pub struct ExplainRequest {
    /// Listener name.
    pub listener: String,
    /// Path (with query) as a client would send it.
    pub path: String,
    /// Host, if any.
    pub host: Option<String>,
    /// Request headers (cookies as `Cookie` headers).
    pub headers: HeaderMap,
    /// Markers given by name; they override what the headers carry.
    pub markers: Vec<(MarkerKind, String)>,
}

pub(super) fn explain_params(
    shared: &Shared,
    params: &[(String, String)],
) -> Result<Value, String> {
    let mut req = ExplainRequest {
        path: "/".into(),
        ..Default::default()
    };
    let mut cookies = String::new();
    for (k, v) in params {
        if let Some(name) = k.strip_prefix("header.") {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid header name {name:?}"))?;
            let value =
                HeaderValue::from_str(v).map_err(|_| format!("invalid value for header {name}"))?;
            req.headers.append(name, value);
        } else if let Some(name) = k.strip_prefix("cookie.") {
            if !cookies.is_empty() {
                cookies.push_str("; ");
            }
            cookies.push_str(name);
            cookies.push('=');
            cookies.push_str(v);
        } else if let Some(kind) = MarkerKind::from_name(k) {
            req.markers.push((kind, v.clone()));
        } else {
            match k.as_str() {
                "listener" => req.listener = v.clone(),
                "path" => req.path = v.clone(),
                "host" => req.host = Some(v.clone()),
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
    }
    if !cookies.is_empty() {
        let v = HeaderValue::from_str(&cookies).map_err(|_| "invalid cookie value".to_owned())?;
        req.headers.append(header::COOKIE, v);
    }
    explain(shared, &req)
}

/// Decides like the request path would and describes it as the `/explain` JSON:
/// `service`, `pool`, `rule`, `fallback` (all null when no service matches).
pub fn explain(shared: &Shared, req: &ExplainRequest) -> Result<Value, String> {
    let listener = shared
        .config
        .listeners
        .iter()
        .position(|l| l.name == req.listener)
        .ok_or_else(|| format!("unknown listener {:?}", req.listener))?;
    let query = req.path.split_once('?').map(|(_, q)| q);
    let (mut markers, _invalid): (Markers, _) = shared.reader.read(&req.headers, query);
    for (kind, v) in &req.markers {
        // Explicit values replace what headers said; an invalid one leaves it absent,
        // like on the request path.
        // (`set_from_str` clears the marker before parsing.)
        let _ = markers.set_from_str(*kind, v);
    }
    let host = req.host.as_deref().map(strip_port);
    let live: Arc<Live> = shared.live.load_full();
    let outcome = shared.decide(
        &live,
        listener,
        host,
        &req.path,
        (&req.headers).into(),
        &markers,
    );
    Ok(match outcome {
        Outcome::NoService => json!({
            "service": null, "pool": null, "rule": null, "fallback": null,
        }),
        Outcome::Routed {
            service,
            decision,
            pool,
            fallback,
            shadow,
        } => {
            let svc = &shared.config.services[service];
            // What the request path would do now: a tripped guard or an unhealthy pool
            // sends the request to stable.
            let (pool, fallback) = shared.effective_pool(service, pool, fallback);
            let shadow = shadow.zip(live.shadow.as_deref()).map(|((d, p), sh)| {
                json!({
                    "pool": svc.pools[p].name,
                    "rule": d.rule.map(|i| sh.rules.rule_name(i)),
                })
            });
            let mut answer = json!({
                "service": svc.name,
                "pool": svc.pools[pool].name,
                "rule": live.rule_name(&decision),
                "fallback": fallback.map(|f| f.label()),
            });
            // The key appears only while a candidate is loaded, so the contract's
            // four-key answer is unchanged for everyone not shadowing.
            if let (Some(shadow), Some(map)) = (shadow, answer.as_object_mut()) {
                map.insert("shadow".into(), shadow);
            }
            answer
        }
    })
}
