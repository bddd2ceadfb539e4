//! The request path, top-down: [`handle`] reads the markers, asks the live ruleset for a
//! pool, lets the guard admit it, forwards it, and responds.
//!
//! - `headers`: what changes in a head on its way through (hop-by-hop, `x-forwarded-*`).
//! - `forward`: the attempts: retries within the pool, the per-request fallback to stable.
//! - `host`: whether a request's `Host` (and HTTP/2's `:authority`) may be routed on.

mod deadline;
mod forward;
pub(crate) mod headers;
mod host;
mod mirror;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use crate::timer::Sleep;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use crate::config::{GRAY, STABLE};
use crate::error::{FallbackReason, Refusal};
use crate::fields::{Fields, Received};
use crate::longlink::{self, Handshake};
use crate::markers::Markers;
use crate::rules::Decision;
use crate::state::{ConnCtx, Live, Outcome, Shadow, Shared};
use crate::upstream::h1::Tunnel;
use crate::upstream::{ClientBody, DownBody};
use forward::{Forward, Replay};
use host::{host_problem, request_host};

/// A response on its way up the request's futures. Boxed: a `Response` is 160 bytes, and
/// it is moved (a `memcpy` each time) some fifteen times between the upstream exchange
/// and the loop that writes it; a box is moved in a register, for one allocation.
pub(crate) type Answer = Box<Response<DownBody>>;

/// Handles one request end to end. Never fails: every error becomes a response.
pub(crate) async fn handle(
    mut req: Request<Incoming>,
    shared: &Arc<Shared>,
    conn: &ConnCtx,
) -> Response<DownBody> {
    let start = Instant::now();
    let client_upgrade = is_websocket(&req).then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    *route(
        parts,
        None,
        None,
        Replay::new(ClientBody::Hyper(body)),
        client_upgrade,
        shared,
        conn,
        start,
    )
    .await
}

/// Handles a request that has no body and asks for no upgrade, read by graylane's own
/// HTTP/1.1 loop rather than by hyper: its fields are the head as received (`parts`
/// has none), and they reach an HTTP/1.1 upstream edited in place. An HTTP/1.1
/// upstream's answer comes back with its fields as received (see
/// `DownBody::take_raw`), which that loop copies on.
/// `timer`: the connection's own for `upstream_response` (see `Forward::reuse_timer`).
pub(crate) async fn handle_bodiless(
    parts: http::request::Parts,
    fields: &mut Received,
    timer: Pin<&mut Sleep>,
    shared: &Arc<Shared>,
    conn: &ConnCtx,
) -> Answer {
    let start = Instant::now();
    route(
        parts,
        Some(fields),
        Some(timer),
        Replay::Empty,
        None,
        shared,
        conn,
        start,
    )
    .await
}

/// Handles a request read by graylane's own HTTP/2 connection: its fields are HTTP/1.1
/// field lines (`parts` has none), as the own HTTP/1.1 loop's are, and its body, if it
/// has one, arrives in DATA frames. HTTP/2 has no upgrade (extended CONNECT is not
/// offered), and no per-connection response timer: each attempt arms its own.
pub(crate) async fn handle_own_h2(
    parts: http::request::Parts,
    mut fields: Received,
    body: Option<crate::http2::body::OwnBody>,
    shared: &Arc<Shared>,
    conn: &ConnCtx,
) -> Answer {
    let start = Instant::now();
    let body = match body {
        Some(b) => Replay::new(ClientBody::Own(b)),
        None => Replay::Empty,
    };
    route(
        parts,
        Some(&mut fields),
        None,
        body,
        None,
        shared,
        conn,
        start,
    )
    .await
}

/// The request path proper, whoever read the request. `received`: the own loop's head
/// (then `parts.headers` is empty).
#[allow(clippy::too_many_arguments)]
async fn route(
    mut parts: http::request::Parts,
    mut received: Option<&mut Received>,
    timer: Option<Pin<&mut Sleep>>,
    body: Replay,
    client_upgrade: Option<OnUpgrade>,
    shared: &Arc<Shared>,
    conn: &ConnCtx,
    start: Instant,
) -> Answer {
    if parts.method == http::Method::CONNECT {
        return refuse_unrouted(shared, conn, start, Refusal::Connect);
    }
    let head = Fields::of(&parts.headers, received.as_deref());
    if let Some(refusal) = host_problem(&parts, head) {
        return refuse_unrouted(shared, conn, start, refusal);
    }

    // === markers: from trusted peers only ===
    let markers = read_markers(shared, conn, &mut parts, received.as_deref_mut());

    // === decide: service, then the live rules ===
    let live = shared.live.load();
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let head = Fields::of(&parts.headers, received.as_deref());
    let host = request_host(&parts.uri, head);
    // Sampled up front: the host is kept (copied) for the access log only then.
    let sampled = shared.sample_access().then(|| host.map(str::to_owned));
    let outcome = shared.decide(&live, conn.listener, host, path, head, &markers);
    let Outcome::Routed {
        service,
        decision,
        pool,
        fallback,
        shadow,
    } = outcome
    else {
        // No service, no rules evaluated: not a `default` rule hit.
        return refuse_unrouted(shared, conn, start, Refusal::NoService);
    };
    let hit = count_decision(shared, &live, service, &decision, fallback);
    if let (Some(sh), Some((d, to))) = (live.shadow.as_deref(), shadow) {
        count_shadow(shared, sh, service, pool, &d, to);
    }
    let svc = &shared.config.services[service];
    // A long link remembers its handshake so a reload can decide it again. Boxed: the
    // request's future holds it across the upstream exchange, and inline it made every
    // request's future (moved whole, several times) 368 bytes larger for the few that
    // are WebSocket handshakes.
    let handshake = client_upgrade.as_ref().map(|_| {
        Box::new(Handshake {
            listener: conn.listener,
            host: host.map(str::to_owned),
            path: path.to_owned(),
            headers: detached(&parts.headers),
            markers: markers.clone(),
            service,
            pool,
        })
    });

    // === admit: a tripped guard sends gray traffic to stable ===
    let decided = pool;
    let (pool, gray_admitted) = admit(shared, service, pool);

    // === forward: the upstream head, then the attempts ===
    let rule_value = live.rule_values.get(hit).cloned();
    let added = match received.as_deref_mut() {
        Some(r) => headers::prepare_received(r, shared, conn, rule_value.as_ref()),
        None => headers::prepare_request(
            &mut parts,
            shared,
            conn,
            rule_value.as_ref(),
            client_upgrade.is_some(),
        ),
    };
    drop(live);
    let copy = (client_upgrade.is_none() && svc.pools[decided].id == STABLE)
        .then(|| {
            let no_body = matches!(body, Replay::Empty);
            mirror_head(svc, &parts, received.as_deref(), markers.uid, no_body)
        })
        .flatten()
        .map(|mut h| {
            added.insert_into(&mut h);
            h
        });
    let head = std::mem::take(&mut parts.headers);
    let mut forward = Forward::new(
        shared,
        service,
        pool,
        gray_admitted,
        start,
        markers.uid,
        client_upgrade.is_some(),
        &parts.method,
        &parts.uri,
        head,
        received.as_deref(),
        added,
        body,
    );
    if let Some(t) = timer {
        forward.reuse_timer(t);
    }
    let (mut resp, final_pool) = forward.run().await;

    if let Some(h) = copy {
        mirror::send(
            shared,
            service,
            parts.method.clone(),
            &parts.uri,
            h,
            resp.status(),
        );
    }

    // === respond: open the tunnel of a 101, count, log ===
    let tunnel = match (client_upgrade, handshake) {
        (Some(client), Some(hs)) => take_tunnel(&mut resp, client, *hs, final_pool),
        _ => None,
    };
    headers::strip_hop_by_hop(resp.headers_mut(), tunnel.is_some(), &[]);
    if let Some(v) = &svc.vary {
        // Appended as a field of its own: Vary is a list, so an upstream's stays.
        resp.headers_mut().append(http::header::VARY, v.clone());
    }
    if let Some((client, upstream, hs)) = tunnel {
        open_link(shared, conn, client, upstream, hs);
    }
    let elapsed = start.elapsed();
    shared
        .metrics
        .route(conn.listener, service, final_pool)
        .observe(resp.status().as_u16(), elapsed);
    if let Some(host) = sampled {
        let access = Access {
            host: host.as_deref(),
            service: &svc.name,
            pool: &svc.pools[final_pool].name,
            rule: rule_value.as_ref().and_then(|v| v.to_str().ok()),
            markers: &markers,
        };
        log_access(shared, conn, &parts, &access, resp.status(), elapsed);
    }
    resp
}

/// Starts relaying a WebSocket link, counted on the route that answered its handshake.
fn open_link(shared: &Shared, conn: &ConnCtx, client: OnUpgrade, upstream: Tunnel, hs: Handshake) {
    let gauge = shared
        .metrics
        .route(hs.listener, hs.service, hs.pool)
        .websockets()
        .clone();
    let idle = shared.config.timeouts.long_link_idle;
    longlink::open(
        &shared.links,
        client,
        upstream,
        hs,
        gauge,
        idle,
        conn.slot.clone(),
    );
}

/// The client and upstream sides of a `101` answer to a WebSocket handshake, with the
/// handshake moved to the pool that answered (where the link is counted and re-homed
/// from); `None` for any other answer, which is relayed as a normal response.
fn take_tunnel(
    resp: &mut Response<DownBody>,
    client: OnUpgrade,
    mut hs: Handshake,
    pool: usize,
) -> Option<(OnUpgrade, Tunnel, Handshake)> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return None;
    }
    hs.pool = pool;
    resp.body_mut()
        .take_tunnel()
        .map(|upstream| (client, upstream, hs))
}

/// What a request's access-log line says about where it went.
struct Access<'a> {
    host: Option<&'a str>,
    service: &'a str,
    pool: &'a str,
    rule: Option<&'a str>,
    markers: &'a Markers,
}

/// One sampled access-log line (target `graylane::access`): listener, host, path, the
/// request's parsed markers, and where it went, which is what `graylane replay` decides
/// again. Path only, no query: query strings may carry an accessToken; headers and
/// cookies never go to logs (the markers are the values graylane parsed, not the fields).
fn log_access(
    shared: &Shared,
    conn: &ConnCtx,
    parts: &http::request::Parts,
    a: &Access<'_>,
    status: StatusCode,
    elapsed: std::time::Duration,
) {
    let m = a.markers;
    let gids = (!m.agent_gid.is_empty()).then(|| {
        m.agent_gid
            .as_slice()
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    });
    tracing::info!(
        target: "graylane::access",
        listener = %shared.config.listeners[conn.listener].name,
        peer = %conn.peer.ip(),
        method = %parts.method,
        host = a.host,
        path = parts.uri.path(),
        uid = m.uid,
        staff_uid = m.staff_uid,
        agent_gid = gids.as_deref(),
        entry_id = m.entry_id,
        app_version = m.app_version.map(|v| v.to_string()).as_deref(),
        device = m.device.as_ref().map(|d| d.as_str()),
        service = a.service,
        pool = a.pool,
        rule = a.rule.unwrap_or("default"),
        status = status.as_u16(),
        ms = elapsed.as_secs_f64() * 1000.0,
    );
}

/// Counts the rule that matched (`default` when none did) and a fallback the rules'
/// choice needed; returns the rule's index into the live tables.
fn count_decision(
    shared: &Shared,
    live: &Live,
    service: usize,
    decision: &Decision,
    fallback: Option<FallbackReason>,
) -> usize {
    let hit = decision.rule.unwrap_or(live.hits.len() - 1);
    if let Some(c) = live.hits.get(hit) {
        c.inc();
    }
    if let Some(reason) = fallback {
        shared
            .metrics
            .service(service)
            .fallback(decision.pool, reason)
            .inc();
    }
    hit
}

/// Counts what the shadow ruleset decided: its rule, and a move when it would send the
/// request to another pool than the live rules (`from`, before guard and health).
fn count_shadow(
    shared: &Shared,
    sh: &Shadow,
    service: usize,
    from: usize,
    d: &Decision,
    to: usize,
) {
    let hit = d.rule.unwrap_or(sh.hits.len() - 1);
    if let Some(c) = sh.hits.get(hit) {
        c.inc();
    }
    if to != from {
        shared.metrics.service(service).shadow_move(from, to).inc();
    }
}

/// A copy of the upstream head for the service's mirror, when this stable-routed request
/// is one it copies.
fn mirror_head(
    svc: &crate::config::Service,
    parts: &http::request::Parts,
    received: Option<&Received>,
    uid: Option<u64>,
    no_body: bool,
) -> Option<HeaderMap> {
    let m = svc.mirror.as_ref()?;
    mirror::wanted(m, &svc.name, &parts.method, uid, !no_body).then(|| match received {
        Some(r) => r.to_map(),
        None => parts.headers.clone(),
    })
}

/// The request's markers, counting invalid ones. An untrusted peer's marker headers are
/// removed instead, so an upstream never sees identity graylane itself did not believe.
fn read_markers(
    shared: &Shared,
    conn: &ConnCtx,
    parts: &mut http::request::Parts,
    received: Option<&mut Received>,
) -> Markers {
    if !conn.trusted {
        match received {
            Some(r) => r.drop_where(|n, _| shared.reader.is_marker_header(n)),
            None => shared.reader.remove_marker_headers(&mut parts.headers),
        }
        return Markers::default();
    }
    let headers = Fields::of(&parts.headers, received.as_deref());
    let (m, invalid) = shared.reader.read(headers, parts.uri.query());
    for kind in invalid.iter() {
        shared.metrics.marker_invalid(kind).inc();
    }
    m
}

/// Gray traffic passes the service's guard, which may send it to stable (tripped) or let
/// it through as a probe (half-open). Returns the pool to use and whether the guard
/// admitted the request to gray (and so counts its outcome).
fn admit(shared: &Shared, service: usize, pool: usize) -> (usize, bool) {
    let svc = &shared.config.services[service];
    if svc.pools[pool].id != GRAY {
        return (pool, false);
    }
    let Some(g) = shared.guards.get(service).and_then(Option::as_ref) else {
        return (pool, false);
    };
    if g.admit() {
        return (pool, true);
    }
    shared
        .metrics
        .service(service)
        .fallback(GRAY, FallbackReason::GuardTripped)
        .inc();
    (svc.stable_index(), false)
}

/// graylane's answer to a request refused before a service was chosen, counted with
/// `service="-"`.
fn refuse_unrouted(shared: &Shared, conn: &ConnCtx, start: Instant, refusal: Refusal) -> Answer {
    let resp = local(refusal);
    shared
        .metrics
        .unrouted(conn.listener)
        .observe(resp.status().as_u16(), start.elapsed());
    resp
}

/// graylane's own answer for a refusal (see [`Refusal`]).
fn local(refusal: Refusal) -> Answer {
    let mut r = Box::new(Response::new(DownBody::full(refusal.body())));
    *r.status_mut() = refusal.status();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A copy of `headers` that owns its bytes. hyper's header values are slices of the
/// connection's read buffer; a plain clone kept for a link's whole life would pin that
/// 8–16 KiB buffer per idle link.
fn detached(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
            out.append(k.clone(), v);
        }
    }
    out
}

/// A WebSocket handshake (HTTP/1.1 Upgrade, RFC 6455): `Connection: upgrade` and
/// `Upgrade: websocket`.
fn is_websocket<B>(req: &Request<B>) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    req.version() == http::Version::HTTP_11
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
}
