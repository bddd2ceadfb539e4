//! HTTP/2 upstreams (`protocol: h2`): hyper-util's pooled client with prior knowledge, one
//! per worker, and the SPEC §3 kind of its errors.

use std::time::Duration;

use http::uri::Scheme;
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::UpBody;
use super::endpoint::Endpoint;
use crate::config::Config;
use crate::error::UpstreamErrorKind;

/// One worker's HTTP/2 client.
pub(crate) type H2Client = Client<HttpConnector, UpBody>;

/// A client per worker: pooled HTTP/2 connections stay on the thread that made them.
pub(super) fn clients(cfg: &Config) -> Vec<H2Client> {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(cfg.timeouts.connect));
    conn.set_keepalive(Some(Duration::from_secs(60)));
    (0..cfg.workers.max(1))
        .map(|_| {
            Client::builder(TokioExecutor::new())
                .http2_only(true)
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .build(conn.clone())
        })
        .collect()
}

/// The URI for `path_and_query` on an endpoint.
pub(crate) fn endpoint_uri(
    ep: &Endpoint,
    path_and_query: Option<&http::uri::PathAndQuery>,
) -> Option<Uri> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(ep.authority().clone());
    parts.path_and_query = Some(
        path_and_query
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).ok()
}

/// it could not parse is `protocol`, its own timeouts `timeout`, anything else `reset`.
fn hyper_error_kind(e: &hyper::Error) -> UpstreamErrorKind {
    if e.is_parse() || e.is_parse_status() {
        UpstreamErrorKind::Protocol
    } else if e.is_timeout() {
        UpstreamErrorKind::Timeout
    } else {
        UpstreamErrorKind::Reset
    }
}

/// Classifies an HTTP/2 client error into the SPEC §3 kinds.
pub(crate) fn classify(err: &hyper_util::client::legacy::Error) -> UpstreamErrorKind {
    use std::error::Error as _;
    let mut src: Option<&(dyn std::error::Error + 'static)> = err.source();
    let mut timed_out = false;
    let mut hyper_kind = None;
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                timed_out = true;
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            hyper_kind = hyper_kind.or(Some(hyper_error_kind(h)));
        }
        src = e.source();
    }
    if err.is_connect() {
        return if timed_out {
            UpstreamErrorKind::Timeout
        } else {
            UpstreamErrorKind::Connect
        };
    }
    hyper_kind.unwrap_or(UpstreamErrorKind::Reset)
}
