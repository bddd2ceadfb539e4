//! A lean HTTP/1.1 upstream connection pool: idle connections per endpoint address, per
//! worker thread.
//!
//! Why not hyper-util's pooled client: it takes a shared lock to check a connection out
//! and back in, and spawns a task per request to put the connection back when its
//! response is done. Here a worker keeps its idle connections in a thread-local map (no
//! lock: a worker is one thread), the connection goes back when its response body ends,
//! and a request that a dead keep-alive connection refused comes back unsent
//! (`try_send_request`), so it is tried on another connection without copying it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::UpstreamErrorKind;
use crate::upstream::UpBody;

/// Idle connections kept per endpoint and worker; more are closed.
const MAX_IDLE: usize = 128;

thread_local! {
    static IDLE: RefCell<HashMap<SocketAddr, Vec<SendRequest<UpBody>>>> =
        RefCell::new(HashMap::new());
}

/// Why an exchange failed, with the connection error that says so.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The TCP connect failed: nothing was sent.
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    /// The TCP connect did not finish within `timeouts.connect`: nothing was sent.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The exchange failed after the connection was up.
    #[error("{0}")]
    Exchange(#[source] hyper::Error),
}

impl H1Error {
    /// The SPEC §3 kind.
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            H1Error::Connect(e) if e.kind() == io::ErrorKind::TimedOut => {
                UpstreamErrorKind::Timeout
            }
            H1Error::Connect(_) => UpstreamErrorKind::Connect,
            H1Error::ConnectTimeout => UpstreamErrorKind::Timeout,
            H1Error::Exchange(e) => crate::upstream::hyper_error_kind(e),
        }
    }
}

/// A failed exchange, with the request when it never went out (connect failed, or the
/// connection died before writing it): the caller reuses its head for the next attempt.
#[derive(Debug)]
pub struct SendFailure {
    /// What went wrong.
    pub error: H1Error,
    /// The request, unsent.
    pub unsent: Option<Request<UpBody>>,
}

impl SendFailure {
    fn unsent(error: H1Error, req: Request<UpBody>) -> Self {
        Self {
            error,
            unsent: Some(req),
        }
    }
}

/// A checked-out connection, put back into its worker's pool when dropped after its
/// response was complete (the body ended, see [`PoolReturn::complete`]).
#[derive(Debug)]
pub struct PoolReturn {
    addr: SocketAddr,
    sender: Option<SendRequest<UpBody>>,
    complete: bool,
}

impl PoolReturn {
    /// The response body ended: the connection may serve another request.
    pub fn complete(&mut self) {
        self.complete = true;
    }
}

impl Drop for PoolReturn {
    fn drop(&mut self) {
        if let (true, Some(s)) = (self.complete, self.sender.take()) {
            put(self.addr, s);
        }
    }
}

fn take(addr: SocketAddr) -> Option<SendRequest<UpBody>> {
    IDLE.with(|m| m.borrow_mut().get_mut(&addr).and_then(Vec::pop))
}

fn put(addr: SocketAddr, s: SendRequest<UpBody>) {
    if s.is_closed() {
        return;
    }
    IDLE.with(|m| {
        let mut m = m.borrow_mut();
        let idle = m.entry(addr).or_default();
        if idle.len() < MAX_IDLE {
            idle.push(s);
        }
    });
}

/// Sends `req` (origin-form URI, `Host` set) to `addr` on an idle connection of this
/// worker, or a new one. The returned [`PoolReturn`] must live as long as the response
/// body; pass `None` on to drop the connection instead (a `101` switches it away).
pub async fn send(
    addr: SocketAddr,
    mut req: Request<UpBody>,
    connect_timeout: Duration,
) -> Result<(Response<Incoming>, PoolReturn), SendFailure> {
    let sent = |error| SendFailure {
        error: H1Error::Exchange(error),
        unsent: None,
    };
    while let Some(mut s) = take(addr) {
        if s.is_closed() || s.ready().await.is_err() {
            continue;
        }
        match s.try_send_request(req).await {
            Ok(resp) => return Ok((resp, pooled(addr, s))),
            Err(mut e) => match e.take_message() {
                // The connection died before the request went out (the upstream closed
                // an idle keep-alive connection): try the next one.
                Some(unsent) => req = unsent,
                None => return Err(sent(e.into_error())),
            },
        }
    }
    // The cold path (connect, handshake) lives in its own boxed future: inlined, its
    // state would make every request's future larger, and futures are moved (copied)
    // whole as they are pinned.
    Box::pin(connect_and_send(addr, req, connect_timeout)).await
}

async fn connect_and_send(
    addr: SocketAddr,
    req: Request<UpBody>,
    connect_timeout: Duration,
) -> Result<(Response<Incoming>, PoolReturn), SendFailure> {
    let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(SendFailure::unsent(H1Error::ConnectTimeout, req)),
        Ok(Err(e)) => return Err(SendFailure::unsent(H1Error::Connect(e), req)),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let (mut s, conn) = match http1::Builder::new()
        .handshake(TokioIo::new(crate::sockio::Coalescing(stream)))
        .await
    {
        Ok(pair) => pair,
        Err(e) => return Err(SendFailure::unsent(H1Error::Exchange(e), req)),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection ended");
        }
    });
    match s.try_send_request(req).await {
        Ok(resp) => Ok((resp, pooled(addr, s))),
        Err(mut e) => Err(SendFailure {
            unsent: e.take_message(),
            error: H1Error::Exchange(e.into_error()),
        }),
    }
}

fn pooled(addr: SocketAddr, s: SendRequest<UpBody>) -> PoolReturn {
    PoolReturn {
        addr,
        sender: Some(s),
        complete: false,
    }
}
