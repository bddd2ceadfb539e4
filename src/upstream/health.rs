//! A pool's background tasks: DNS re-resolution, active health checks, and the sweep that
//! keeps `endpoint_up` current.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::{JoinHandle, JoinSet};

use super::endpoint::Endpoint;
use super::pool::PoolEndpoints;
use crate::config::{Health, Protocol};

/// How often the sweep task republishes `endpoint_up`, so an ejection that expired on a pool
/// without traffic does not leave the gauge at 0.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(1);

// === background tasks ===

/// Spawns the pool's periodic tasks: DNS re-resolution every `resolve_interval` when any
/// endpoint is a name; active checks when `health` is set (each endpoint every `interval`,
/// all endpoints concurrently so one slow endpoint delays no other's verdict); and a sweep
/// that republishes `endpoint_up` once a second. Returns the handles so shutdown can abort
/// them.
pub(super) fn spawn_tasks(pool: Arc<PoolEndpoints>, health: Option<Health>) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::with_capacity(3);
    if pool.has_names() {
        let pool = Arc::clone(&pool);
        tasks.push(tokio::spawn(async move {
            let every = pool.resolve_interval;
            let mut tick = crate::timer::interval_at(std::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                pool.refresh().await;
            }
        }));
    }
    if let Some(h) = health {
        tasks.push(tokio::spawn(health_loop(Arc::clone(&pool), h)));
    }
    tasks.push(tokio::spawn(async move {
        let mut tick = crate::timer::interval(SWEEP_EVERY);
        loop {
            tick.tick().await;
            for e in pool.endpoints().iter() {
                e.available();
                e.publish();
            }
        }
    }));
    tasks
}

pub(super) async fn health_loop(pool: Arc<PoolEndpoints>, h: Health) {
    let path: Arc<str> = Arc::from(h.path.as_str());
    let mut tick = crate::timer::interval(h.interval);
    loop {
        tick.tick().await;
        let mut checks = JoinSet::new();
        for ep in pool.endpoints().iter() {
            let ep = Arc::clone(ep);
            let path = Arc::clone(&path);
            let (protocol, timeout, healthy, unhealthy) =
                (pool.protocol, h.timeout, h.healthy, h.unhealthy);
            checks.spawn(async move {
                let ok = match crate::timer::timeout(timeout, probe(&ep, &path, protocol)).await {
                    Ok(Ok(status)) if status.is_success() => true,
                    Ok(Ok(status)) => {
                        tracing::debug!(endpoint = %ep.label, %status, "health check failed");
                        false
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(endpoint = %ep.label, %error, "health check failed");
                        false
                    }
                    Err(_) => {
                        tracing::debug!(endpoint = %ep.label, "health check timed out");
                        false
                    }
                };
                ep.record_check(ok, healthy, unhealthy);
            });
        }
        while checks.join_next().await.is_some() {}
    }
}

pub(super) type ProbeError = Box<dyn std::error::Error + Send + Sync>;

/// One `GET path` on a fresh connection (so the check also proves the endpoint accepts
/// connections), with the configured host as `Host` / `:authority`. The connection is
/// driven in this future, so the caller's timeout cancels everything.
pub(super) async fn probe(
    ep: &Endpoint,
    path: &str,
    protocol: Protocol,
) -> Result<http::StatusCode, ProbeError> {
    let stream = tokio::net::TcpStream::connect(ep.addr).await?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    let builder =
        http::Request::get(path).header(http::header::USER_AGENT, "graylane-health-check");
    match protocol {
        Protocol::Http1 => {
            let req = builder
                .header(http::header::HOST, &*ep.origin)
                .header(http::header::CONNECTION, "close")
                .body(Empty::<Bytes>::new())?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
            drive(send.send_request(req), conn).await
        }
        Protocol::H2 => {
            let uri = format!("http://{}{}", ep.origin, path);
            let req = builder.uri(uri).body(Empty::<Bytes>::new())?;
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            drive(send.send_request(req), conn).await
        }
    }
}

/// Polls the response and the connection together (the connection does the I/O). A
/// connection that ends cleanly first may already have delivered the response (HTTP/1.1
/// `Connection: close`), so the response is still awaited then.
pub(super) async fn drive(
    resp: impl Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>,
    conn: impl Future<Output = hyper::Result<()>>,
) -> Result<http::StatusCode, ProbeError> {
    tokio::pin!(resp, conn);
    tokio::select! {
        biased;
        r = &mut resp => Ok(r?.status()),
        end = &mut conn => {
            end?;
            Ok(resp.await?.status())
        }
    }
}
