//! HTTP/2 upstreams (`protocol: h2`): hyper-util's pooled client with prior knowledge, one
//! per worker, and the SPEC §3 kind of its errors.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Scheme;
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::body::UpBody;
use super::endpoint::Endpoint;
use crate::config::Config;
use crate::error::UpstreamErrorKind;
use crate::timer::HyperTimer;

/// One worker's HTTP/2 client.
pub(crate) type H2Client = Client<Connector, UpBody>;

/// A client per worker: pooled HTTP/2 connections stay on the thread that made them.
pub(super) fn clients(cfg: &Config) -> Vec<H2Client> {
    #[allow(clippy::disallowed_methods)] // both timeouts are turned off just below
    let mut inner = HttpConnector::new();
    inner.set_nodelay(true);
    inner.set_keepalive(Some(Duration::from_secs(60)));
    // Both would run on tokio's time driver, which no runtime here has: the connect
    // timeout is `Connector`'s, and the addresses of a name are tried in turn.
    inner.set_connect_timeout(None);
    inner.set_happy_eyeballs_timeout(None);
    let conn = Connector {
        inner,
        timeout: cfg.timeouts.connect,
    };
    (0..cfg.workers.max(1))
        .map(|_| {
            Client::builder(TokioExecutor::new())
                .http2_only(true)
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_timer(HyperTimer)
                .timer(HyperTimer)
                .build(conn.clone())
        })
        .collect()
}

/// hyper-util's connector with `timeouts.connect` kept by this crate's timer. A connect
/// that times out fails with `TimedOut`, which `classify` reads as `timeout`.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    inner: HttpConnector,
    timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let limit = self.timeout;
        Box::pin(async move {
            match crate::timer::timeout(limit, connecting).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => {
                    Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout").into())
                }
            }
        })
    }
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
