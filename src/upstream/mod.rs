//! The upstream side: each service's pools, their endpoints and health, the choice of an
//! endpoint per request, and the clients that speak to them.
//!
//! - `endpoint`: one address and its health (active checks, passive ejection).
//! - `pool`: a pool's endpoints, re-resolved by DNS and swapped whole.
//! - `resolve`: names to addresses.
//! - `pick`: round robin, least request, consistent hashing.
//! - `health`: the background tasks (checks, DNS, the `endpoint_up` sweep).
//! - `body`: the bodies that stream both ways.
//! - `h1`: graylane's own HTTP/1.1 client and its per-worker connection pool.
//! - `h2`: hyper-util's client for `protocol: h2` pools.

pub(crate) mod body;
mod endpoint;
pub(crate) mod h1;
mod h2;
mod health;
mod pick;
mod pool;
mod resolve;

pub(crate) use body::{
    ClientBody, ClientBodyError, DownBody, DownBodyError, ReclaimableBody, UpBody,
};
pub(crate) use endpoint::{Endpoint, Outcome};
pub(crate) use h2::{classify, endpoint_uri, H2Client};
pub(crate) use pool::PoolEndpoints;
pub(crate) use resolve::ResolveError;

use std::sync::Arc;

use crate::config::{Config, OnUnavailable, Protocol};
use crate::metrics::Metrics;
use crate::worker;

/// One pool of one service: its endpoints (with health, balancing and DNS) and the
/// settings the forwarding loop needs.
#[derive(Debug)]
pub(crate) struct PoolUpstream {
    /// Endpoints, swapped whole on DNS re-resolution.
    pub endpoints: Arc<PoolEndpoints>,
    /// Which client speaks to this pool.
    pub protocol: Protocol,
    /// Retries allowed on another endpoint.
    pub retries: u32,
    /// What to do when no endpoint is available.
    pub on_unavailable: OnUnavailable,
}

/// Every service's pools, indexed like `Config::services[s].pools[p]`.
#[derive(Debug)]
pub(crate) struct Upstreams {
    /// `services[s][p]`.
    pub services: Vec<Vec<PoolUpstream>>,
    /// HTTP/2 (prior knowledge) clients for `protocol: h2` pools, one per worker.
    /// (HTTP/1.1 goes through [`h1`].)
    h2: Vec<H2Client>,
}

impl Upstreams {
    /// Builds pools (resolving endpoint names once) and clients from the config.
    pub(crate) fn new(cfg: &Config, metrics: &Metrics) -> Result<Self, ResolveError> {
        let mut services = Vec::with_capacity(cfg.services.len());
        for s in &cfg.services {
            let mut pools = Vec::with_capacity(s.pools.len());
            for p in &s.pools {
                let gauges = metrics.endpoint_gauges(&s.name, &p.name);
                pools.push(PoolUpstream {
                    endpoints: Arc::new(PoolEndpoints::new(p, gauges)?),
                    protocol: p.protocol,
                    retries: p.retries,
                    on_unavailable: p.on_unavailable,
                });
            }
            services.push(pools);
        }
        let h2 = h2::clients(cfg);
        Ok(Self { services, h2 })
    }

    /// Starts DNS re-resolution and health checks for every pool; the handles are
    /// aborted at shutdown.
    pub(crate) fn spawn_tasks(&self, cfg: &Config) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for (s, pools) in cfg.services.iter().zip(&self.services) {
            for p in pools {
                tasks.extend(health::spawn_tasks(p.endpoints.clone(), s.health.clone()));
            }
        }
        tasks
    }

    /// This worker's HTTP/2 client (for `protocol: h2` pools).
    pub(crate) fn h2_client(&self) -> &H2Client {
        let w = worker::id();
        // `workers` (≥ 1) entries; a thread outside the workers uses 0.
        &self.h2[w.min(self.h2.len() - 1)]
    }
}

#[cfg(test)]
mod tests;
