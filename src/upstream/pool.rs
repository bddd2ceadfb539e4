//! A pool's endpoints: the configured `host:port` list expanded by DNS (a Kubernetes
//! headless service is one name and many pods), published whole with one pointer swap so
//! that a pick never sees endpoints of one resolution with the ring of another.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::endpoint::{Endpoint, Now};
use super::pick::{build_ring, pick_hash, pick_p2c, pick_rr};
use super::resolve::{lookup, lookup_name, system_resolver, ResolveError, Resolver, Target};
use crate::config::{LbPolicy, Pool, Protocol};
use crate::metrics::EndpointGauges;

/// Everything a pick reads, published whole so a request never sees endpoints of one
/// resolution with the ring of another.
pub(super) struct Snapshot {
    pub(super) endpoints: Arc<Vec<Arc<Endpoint>>>,
    /// `(point, index into endpoints)` sorted by point; empty unless the pool hashes.
    pub(super) ring: Vec<(u64, u32)>,
}

impl Snapshot {
    pub(super) fn new(endpoints: Vec<Arc<Endpoint>>, lb: LbPolicy) -> Self {
        let ring = if lb == LbPolicy::HashUid {
            build_ring(&endpoints)
        } else {
            Vec::new()
        };
        Snapshot {
            endpoints: Arc::new(endpoints),
            ring,
        }
    }
}

/// A pool's endpoints: the configured `host:port` list expanded by DNS (a Kubernetes
/// headless service is one name and many pods), swapped whole on re-resolution.
pub(crate) struct PoolEndpoints {
    /// Pool name, for logs.
    pub(super) name: Arc<str>,
    pub(super) lb: LbPolicy,
    pub(super) protocol: Protocol,
    pub(super) resolve_interval: Duration,
    pub(super) targets: Vec<Target>,
    /// What pick reads: one `load()` per pick.
    pub(super) snapshot: ArcSwap<Snapshot>,
    /// Round-robin position, shared by all requests of the pool.
    pub(super) cursor: AtomicUsize,
    pub(super) gauges: EndpointGauges,
    pub(super) resolver: Resolver,
    /// Last good addresses of each target; a failed lookup keeps them. The async mutex also
    /// serialises refreshes (periodic task and explicit calls).
    pub(super) last_good: tokio::sync::Mutex<Vec<Vec<SocketAddr>>>,
}

impl PoolEndpoints {
    /// Resolves every endpoint once, blocking: this runs at start, before anything is
    /// served, and a name that does not resolve must fail the start synchronously (a pool
    /// that starts empty would silently send its traffic to stable). IP literals need no DNS.
    pub(crate) fn new(pool: &Pool, gauges: EndpointGauges) -> Result<PoolEndpoints, ResolveError> {
        Self::with_resolver(pool, gauges, system_resolver())
    }

    pub(super) fn with_resolver(
        pool: &Pool,
        gauges: EndpointGauges,
        resolver: Resolver,
    ) -> Result<PoolEndpoints, ResolveError> {
        let name: Arc<str> = Arc::from(pool.name.as_str());
        let targets: Vec<Target> = pool
            .endpoints
            .iter()
            .map(|e| Target {
                configured: Arc::from(e.as_str()),
                literal: e.parse().ok(),
            })
            .collect();
        let mut resolved = Vec::with_capacity(targets.len());
        for t in &targets {
            resolved.push(lookup(t, &resolver).map_err(|e| match e {
                None => ResolveError::NoAddress {
                    endpoint: t.configured.to_string(),
                },
                Some(error) => ResolveError::Lookup {
                    endpoint: t.configured.to_string(),
                    error,
                },
            })?);
        }
        let mut endpoints: Vec<Arc<Endpoint>> = Vec::new();
        for (t, addrs) in targets.iter().zip(&resolved) {
            for &addr in addrs {
                if endpoints.iter().all(|e| e.addr != addr) {
                    let ep =
                        Endpoint::new(addr, Arc::clone(&t.configured), Arc::clone(&name), &gauges)?;
                    endpoints.push(Arc::new(ep));
                }
            }
        }
        Ok(PoolEndpoints {
            snapshot: ArcSwap::from_pointee(Snapshot::new(endpoints, pool.lb)),
            name,
            lb: pool.lb,
            protocol: pool.protocol,
            resolve_interval: pool.resolve_interval,
            targets,
            cursor: AtomicUsize::new(0),
            gauges,
            resolver,
            last_good: tokio::sync::Mutex::new(resolved),
        })
    }

    /// Picks an available endpoint by the pool's policy, skipping `exclude` (the endpoint
    /// that already failed this request, so a retry goes elsewhere). `hash_key` is the
    /// affinity key of `hash_uid` (the uid itself is fine: it is mixed here); without it a
    /// hashing pool falls back to round robin. `None` when no endpoint is available: the
    /// caller falls back to stable, or panic-routes with [`pick_any`](Self::pick_any).
    pub(crate) fn pick(
        &self,
        hash_key: Option<u64>,
        exclude: Option<&Endpoint>,
    ) -> Option<Arc<Endpoint>> {
        self.pick_at(hash_key, exclude, true, &mut Now::lazy())
    }

    /// Panic routing: like [`pick`](Self::pick) but ignores health, because a health view
    /// can be wrong and stable must still be tried. Still avoids `exclude` when there is any
    /// other endpoint.
    pub(crate) fn pick_any(
        &self,
        hash_key: Option<u64>,
        exclude: Option<&Endpoint>,
    ) -> Option<Arc<Endpoint>> {
        let mut now = Now::lazy();
        self.pick_at(hash_key, exclude, false, &mut now)
            .or_else(|| self.pick_at(hash_key, None, false, &mut now))
    }

    pub(super) fn pick_at(
        &self,
        hash_key: Option<u64>,
        exclude: Option<&Endpoint>,
        health: bool,
        now: &mut Now,
    ) -> Option<Arc<Endpoint>> {
        let snap = self.snapshot.load();
        let mut ok = |ep: &Endpoint| {
            !matches!(exclude, Some(x) if x.addr == ep.addr) && (!health || ep.usable(now))
        };
        let i = match (self.lb, hash_key) {
            (LbPolicy::HashUid, Some(key)) => pick_hash(&snap, key, &mut ok),
            (LbPolicy::LeastRequest, _) => pick_p2c(&snap.endpoints, &self.cursor, &mut ok),
            _ => pick_rr(
                &snap.endpoints,
                self.cursor.fetch_add(1, Ordering::Relaxed),
                &mut ok,
            ),
        }?;
        snap.endpoints.get(i).cloned()
    }

    /// Whether any endpoint may take traffic: `false` makes the pool unhealthy
    /// (`pool_unhealthy` fallback to stable).
    pub(crate) fn has_available(&self) -> bool {
        self.snapshot.load().endpoints.iter().any(|e| e.available())
    }

    /// The current endpoint set, for the health task, the admin view and tests.
    pub(crate) fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        Arc::clone(&self.snapshot.load().endpoints)
    }

    /// Re-resolves the names now. A failed lookup (or an empty answer) of a name keeps that
    /// name's last good addresses and logs a warning: a DNS outage must not empty a pool.
    /// Addresses still present keep their [`Endpoint`] (and its health state); addresses
    /// gone drop their `endpoint_up` series.
    pub(crate) async fn refresh(&self) {
        let mut last_good = self.last_good.lock().await;
        for (i, t) in self.targets.iter().enumerate() {
            if t.literal.is_some() {
                continue;
            }
            let resolver = Arc::clone(&self.resolver);
            let configured = Arc::clone(&t.configured);
            let answer =
                tokio::task::spawn_blocking(move || lookup_name(&configured, &resolver)).await;
            match answer {
                Ok(Ok(addrs)) => {
                    if let Some(slot) = last_good.get_mut(i) {
                        *slot = addrs;
                    }
                }
                Ok(Err(e)) => {
                    let error = e.map_or_else(|| "no address".to_owned(), |e| e.to_string());
                    tracing::warn!(pool = %self.name, endpoint = %t.configured, %error,
                        "DNS re-resolution failed; keeping the last good addresses");
                }
                Err(e) => {
                    tracing::warn!(pool = %self.name, endpoint = %t.configured, error = %e,
                        "DNS re-resolution failed; keeping the last good addresses");
                }
            }
        }
        self.publish(&last_good);
    }

    /// Builds and swaps in the endpoint set for `resolved`, unless it is the current one.
    pub(super) fn publish(&self, resolved: &[Vec<SocketAddr>]) {
        let old = self.endpoints();
        let mut addrs: Vec<(SocketAddr, &Arc<str>)> = Vec::new();
        for (t, list) in self.targets.iter().zip(resolved) {
            for &a in list {
                if addrs.iter().all(|(b, _)| *b != a) {
                    addrs.push((a, &t.configured));
                }
            }
        }
        if addrs.len() == old.len() && addrs.iter().zip(old.iter()).all(|((a, _), e)| *a == e.addr)
        {
            return;
        }
        let mut next = Vec::with_capacity(addrs.len());
        for (addr, origin) in addrs {
            if let Some(e) = old.iter().find(|e| e.addr == addr) {
                next.push(Arc::clone(e));
                continue;
            }
            match Endpoint::new(
                addr,
                Arc::clone(origin),
                Arc::clone(&self.name),
                &self.gauges,
            ) {
                Ok(e) => {
                    tracing::info!(pool = %self.name, endpoint = %e.label, from = %origin, "endpoint added");
                    next.push(Arc::new(e));
                }
                Err(error) => tracing::warn!(pool = %self.name, %error, "endpoint skipped"),
            }
        }
        for gone in old.iter().filter(|e| next.iter().all(|n| n.addr != e.addr)) {
            tracing::info!(pool = %self.name, endpoint = %gone.label, "endpoint removed");
            (self.gauges.remove)(&gone.label);
        }
        self.snapshot.store(Arc::new(Snapshot::new(next, self.lb)));
    }

    pub(super) fn has_names(&self) -> bool {
        self.targets.iter().any(|t| t.literal.is_none())
    }
}

impl fmt::Debug for PoolEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolEndpoints")
            .field("name", &self.name)
            .field("lb", &self.lb)
            .field("endpoints", &self.endpoints())
            .finish()
    }
}
