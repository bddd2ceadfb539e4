//! Mirror (SPEC §9.5): a sticky share of the requests the rules send to stable is also
//! sent to another pool (usually gray), after the real answer's head is on its way, so
//! the copy never delays or changes the real answer. The copy's answer is read and
//! thrown away; only its status class is compared with the real one's.
//!
//! Copies carry `x-graylane-mirror: 1`, so a gray backend can avoid side effects (no
//! mail sent, no counter bumped) for requests whose real twin stable already served.
//! Only the configured methods are copied, and never a request with a body.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use xxhash_rust::xxh3::xxh3_64;

use super::forward::{exchange, Attempt};
use crate::config::{Mirror, Protocol};
use crate::metrics::MirrorResult;
use crate::state::Shared;
use crate::upstream::{self, h1, UpBody};

/// The header that marks a copy.
pub(crate) const MIRROR_HEADER: HeaderName = HeaderName::from_static("x-graylane-mirror");

/// Most of a copy's answer read (and discarded) before its connection is dropped: enough
/// to return a connection to the pool after a normal page, not so much that a large
/// download is fetched twice.
const DRAIN_MAX: usize = 256 * 1024;

/// Whether a request gets a copy: its method is listed, it has no body, and it falls in
/// the share. With a uid the choice is sticky (the same users are mirrored on every
/// request and every replica); without, it is random per request.
pub(super) fn wanted(
    m: &Mirror,
    service: &str,
    method: &Method,
    uid: Option<u64>,
    has_body: bool,
) -> bool {
    if has_body || m.threshold == 0 || !m.methods.contains(method) {
        return false;
    }
    let bucket = match uid {
        Some(u) => xxh3_64(format!("mirror:{service}:{u}").as_bytes()) % 10_000,
        None => crate::worker::random() % 10_000,
    };
    bucket < u64::from(m.threshold)
}

/// Sends the copy of a request in a task of its own, once the real answer (`real`) is
/// known, and counts how it compared.
pub(super) fn send(
    shared: &Arc<Shared>,
    service: usize,
    method: Method,
    uri: &Uri,
    mut head: HeaderMap,
    real: StatusCode,
) {
    let svc = &shared.config.services[service];
    let Some(m) = &svc.mirror else {
        return;
    };
    let count = |r: MirrorResult| shared.metrics.service(service).mirror(r).inc();
    let Some(slot) = shared.mirror_in_flight.get(service) else {
        return;
    };
    if slot.fetch_add(1, Ordering::AcqRel) >= m.max_in_flight {
        slot.fetch_sub(1, Ordering::AcqRel);
        count(MirrorResult::Dropped);
        return;
    }
    head.insert(MIRROR_HEADER, HeaderValue::from_static("1"));
    if let Some(h) = &shared.config.propagate.pool_header {
        head.insert(
            h.clone(),
            HeaderValue::from_str(&svc.pools[m.to].name)
                .unwrap_or(HeaderValue::from_static("gray")),
        );
    }
    let up = &shared.upstreams.services[service][m.to];
    let protocol = up.protocol;
    let ep = up.endpoints.pick(None, None);
    let uri = match (&ep, protocol) {
        (_, Protocol::Http1) => uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| pq.clone().into()),
        (Some(ep), Protocol::H2) => match upstream::endpoint_uri(ep, uri.path_and_query()) {
            Some(u) => u,
            None => Uri::from_static("/"),
        },
        (None, Protocol::H2) => Uri::from_static("/"),
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let result = match ep {
            None => MirrorResult::Error,
            Some(ep) => {
                let attempt = match protocol {
                    Protocol::Http1 => Attempt::H1(
                        h1::Outgoing {
                            method: &method,
                            target: h1::origin_form(&uri),
                            headers: head,
                        },
                        UpBody::Empty,
                    ),
                    Protocol::H2 => {
                        let mut req = Request::new(UpBody::Empty);
                        *req.method_mut() = method;
                        *req.uri_mut() = uri;
                        *req.headers_mut() = head;
                        Attempt::H2(req)
                    }
                };
                let timeout = shared.config.timeouts.upstream_response;
                let copy = async {
                    // The copy's head already carries every field graylane sets.
                    let resp = exchange(&shared, attempt, &ep, &[], None).await.ok()?;
                    let status = resp.status();
                    let mut body = resp.into_body();
                    let mut read = 0;
                    while let Some(Ok(frame)) = body.frame().await {
                        read += frame.data_ref().map_or(0, |d| d.len());
                        if read > DRAIN_MAX {
                            break;
                        }
                    }
                    Some(status)
                };
                match crate::timer::timeout(timeout, copy).await {
                    Ok(Some(s)) if s.as_u16() / 100 == real.as_u16() / 100 => MirrorResult::Match,
                    Ok(Some(_)) => MirrorResult::Mismatch,
                    Ok(None) | Err(_) => MirrorResult::Error,
                }
            }
        };
        shared.metrics.service(service).mirror(result).inc();
        if let Some(slot) = shared.mirror_in_flight.get(service) {
            slot.fetch_sub(1, Ordering::AcqRel);
        }
    });
}
