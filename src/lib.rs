//! graylane: a gray-release reverse proxy.
//!
//! # Layout
//!
//! The modules, in the order a request travels through them:
//!
//! - [`config`]: `graylane.yaml`, raw serde types validated into a [`config::Config`].
//! - [`server`]: listeners, the accept loop, connection limits and timeouts, drain.
//! - [`tls`]: TLS termination (rustls, ring), certificates re-read on SIGHUP.
//! - [`markers`]: reads the `xdw-kefu-*` identity markers from headers, cookies, query.
//! - [`routing`]: picks the service by host and longest path prefix.
//! - [`rules`]: compiles `rules.yaml` into a [`rules::RuleSet`]; `decide()` is pure.
//! - [`proxy`]: `handle(req)`: service, markers, decision, fallback, forward.
//! - [`longlink`]: WebSocket relays, re-homing on reload, closing last in a drain.
//! - [`h1pool`]: the HTTP/1.1 upstream client, driven from the request's task, and its per-worker pool.
//! - [`upstream`]: pools, endpoint choice, the pooled client, hop-by-hop headers.
//! - [`sockio`]: small vectored socket writes coalesced into one `send`.
//! - [`metrics`]: the Prometheus registry and per-route children resolved at load.
//! - [`reload`]: file watching, SIGHUP and `POST /reload` feeding one `ArcSwap` store.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`, `/rules`, `/explain`, `/reload`.
//! - [`balance`]: endpoints, DNS re-resolution, health checks, load balancing.
//! - [`guard`]: the automatic rollback breaker of a service's gray pool.
//! - [`error`]: the proxy's error enum and its exhaustive mapping to a status.
//! - [`yamlpos`]: `FILE:LINE:COLUMN` positions for validation errors.
//! - [`demo`]: the built-in sample config with its demo upstreams.

pub mod admin;
pub mod config;
pub mod demo;
pub mod error;
pub mod guard;
pub mod longlink;
pub mod markers;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod rules;
pub mod server;
pub mod sockio;
pub mod tls;
pub mod upstream;
pub mod watch;
pub mod worker;

/// Whole milliseconds in `d`, saturating. `Duration::as_millis` returns a `u128`, whose
/// division is a library call; the clocks read on every request and every relayed read
/// only need a `u64`.
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(d.subsec_millis()))
}
