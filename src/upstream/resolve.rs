//! Endpoint names → addresses: once, blocking, at start (a name that does not resolve
//! fails the start), then periodically in the background (a failed lookup keeps the last
//! good addresses).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

// === impl PoolEndpoints ===

/// Why a pool's endpoints could not be resolved at start.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The name did not resolve.
    #[error("endpoint {endpoint:?}: cannot resolve: {error}")]
    Lookup {
        /// The endpoint as configured.
        endpoint: String,
        /// The resolver's error (in the message, so not also a `source`: a `{:#}` chain
        /// would print it twice).
        error: io::Error,
    },
    /// The name resolved to no address.
    #[error("endpoint {endpoint:?}: resolves to no address")]
    NoAddress {
        /// The endpoint as configured.
        endpoint: String,
    },
    /// An address that cannot be written as a URI authority (an IPv6 zone id).
    #[error("endpoint {endpoint:?}: address {addr} cannot be used in a request URI")]
    Unusable {
        /// The endpoint as configured.
        endpoint: String,
        /// The offending address.
        addr: SocketAddr,
    },
}

/// Turns a configured `host:port` into addresses. A trait object so tests can make DNS fail
/// on demand; the default is the system resolver (`getaddrinfo`, so `/etc/hosts` and the
/// pod's `resolv.conf` search domains apply, as they do for nginx and curl).
pub(super) type Resolver = Arc<dyn Fn(&str) -> io::Result<Vec<SocketAddr>> + Send + Sync>;

pub(super) fn system_resolver() -> Resolver {
    Arc::new(|s: &str| s.to_socket_addrs().map(Iterator::collect))
}

/// One configured `host:port`.
pub(super) struct Target {
    /// As written; also what the resolver is asked.
    pub(super) configured: Arc<str>,
    /// `Some` for an IP literal, which never needs DNS.
    pub(super) literal: Option<SocketAddr>,
}

/// `Err(None)`: the lookup answered no address.
pub(super) fn lookup(
    t: &Target,
    resolver: &Resolver,
) -> Result<Vec<SocketAddr>, Option<io::Error>> {
    match t.literal {
        Some(a) => Ok(vec![a]),
        None => lookup_name(&t.configured, resolver),
    }
}

/// Sorted, so that the same answer in another order does not count as a change.
pub(super) fn lookup_name(
    name: &str,
    resolver: &Resolver,
) -> Result<Vec<SocketAddr>, Option<io::Error>> {
    let mut addrs = resolver(name).map_err(Some)?;
    if addrs.is_empty() {
        return Err(None);
    }
    addrs.sort_unstable();
    addrs.dedup();
    Ok(addrs)
}
