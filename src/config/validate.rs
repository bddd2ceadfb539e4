//! Raw types → [`Config`]: every check that needs more than serde's types, each error at
//! the offending key or value.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

use super::raw::*;
use super::yamlpos::{LocatedError, PosIndex, YamlPath};
use super::*;
use crate::markers::{MarkerKind, MarkerNames};

/// The keywords a key accepts; the first is the default.
struct Choices<T: 'static> {
    /// What the error calls the value.
    what: &'static str,
    /// What the error says is expected.
    expected: &'static str,
    list: &'static [(&'static str, T)],
}

const PROTOCOLS: Choices<Protocol> = Choices {
    what: "protocol",
    expected: "expected http1 or h2",
    list: &[
        ("http1", Protocol::Http1),
        ("http/1.1", Protocol::Http1),
        ("h2", Protocol::H2),
    ],
};

const ON_UNAVAILABLE: Choices<OnUnavailable> = Choices {
    what: "value",
    expected: "expected fallback or fail",
    list: &[
        ("fallback", OnUnavailable::Fallback),
        ("fail", OnUnavailable::Fail),
    ],
};

const LB_POLICIES: Choices<LbPolicy> = Choices {
    what: "lb",
    expected: "expected round_robin, least_request or hash_uid",
    list: &[
        ("round_robin", LbPolicy::RoundRobin),
        ("least_request", LbPolicy::LeastRequest),
        ("hash_uid", LbPolicy::HashUid),
        ("hash: uid", LbPolicy::HashUid),
    ],
};

pub(super) struct Validator<'a> {
    pub(super) file: &'a str,
    pub(super) pos: &'a PosIndex,
    pub(super) dir: &'a Path,
}

type VResult<T> = Result<T, LocatedError>;

impl Validator<'_> {
    fn err_at(&self, path: &YamlPath, msg: impl Into<String>) -> LocatedError {
        LocatedError::new(
            self.file,
            self.pos.value(path),
            format!("{path}: {}", msg.into()),
        )
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    pub(super) fn config(&self, raw: RawConfig) -> VResult<Config> {
        let root = YamlPath::root();
        if raw.listeners.is_empty() {
            return Err(self.err_at(&root.key("listeners"), "at least one listener is required"));
        }
        if raw.services.is_empty() {
            return Err(self.err_at(&root.key("services"), "at least one service is required"));
        }
        let mut names = HashSet::new();
        let mut listeners = Vec::new();
        for (i, l) in raw.listeners.into_iter().enumerate() {
            let p = root.key("listeners").index(i);
            if !names.insert(l.name.clone()) {
                return Err(self.err_at(&p.key("name"), format!("duplicate listener {:?}", l.name)));
            }
            listeners.push(self.listener(&p, l)?);
        }

        // Global pool table: stable and gray first, then the rest sorted.
        let mut pool_names = vec!["stable".to_owned(), "gray".to_owned()];
        let mut extra: Vec<String> = raw
            .services
            .iter()
            .flat_map(|s| s.pools.keys().cloned())
            .filter(|n| n != "stable" && n != "gray")
            .collect();
        extra.sort();
        extra.dedup();
        pool_names.extend(extra);

        let mut snames = HashSet::new();
        let mut services = Vec::new();
        for (i, s) in raw.services.into_iter().enumerate() {
            let p = root.key("services").index(i);
            if !snames.insert(s.name.clone()) {
                return Err(self.err_at(&p.key("name"), format!("duplicate service {:?}", s.name)));
            }
            services.push(self.service(&p, s, &pool_names)?);
        }

        let propagate = Propagate {
            pool_header: self.header_name(
                &root.key("propagate").key("pool_header"),
                raw.propagate.pool_header,
            )?,
            rule_header: self.header_name(
                &root.key("propagate").key("rule_header"),
                raw.propagate.rule_header,
            )?,
        };

        let markers = self.markers(&root, raw.markers)?;

        let t = raw.timeouts;
        let tp = root.key("timeouts");
        let timeouts = Timeouts {
            connect: self.required_dur(&tp.key("connect"), t.connect)?,
            request_header: self.required_dur(&tp.key("request_header"), t.request_header)?,
            upstream_response: self
                .required_dur(&tp.key("upstream_response"), t.upstream_response)?,
            idle: self.required_dur(&tp.key("idle"), t.idle)?,
            drain: t.drain.0.unwrap_or(Duration::ZERO),
            long_link_idle: t.long_link_idle.0.filter(|d| !d.is_zero()),
        };
        let lp = root.key("limits");
        // hyper's read buffer cannot be smaller than 8 KiB, and the limit is that buffer.
        if raw.limits.max_header_bytes < 8192 {
            return Err(self.err_at(&lp.key("max_header_bytes"), "must be at least 8192"));
        }
        if raw.limits.max_connections == 0 {
            return Err(self.err_at(&lp.key("max_connections"), "must be at least 1"));
        }
        let workers = match raw.workers {
            Some(0) => return Err(self.err_at(&root.key("workers"), "must be at least 1")),
            Some(n) => n,
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        };
        let vary = vary_value(&markers);
        for s in services.iter_mut().filter(|s| s.vary.is_some()) {
            s.vary = vary.clone();
        }
        let admin = Admin {
            bind: self.socket_addr(&root.key("admin").key("bind"), &raw.admin.bind)?,
            token_file: raw.admin.token_file.map(|f| self.resolve(&f)),
        };
        Ok(Config {
            file: self.file.to_owned(),
            listeners,
            admin,
            rules_file: self.resolve(&raw.rules_file),
            rules_file_display: raw.rules_file.clone(),
            shadow_rules_file: raw
                .shadow_rules_file
                .as_deref()
                .map(|f| (self.resolve(f), f.to_owned())),
            services,
            pool_names,
            propagate,
            markers,
            timeouts,
            limits: Limits {
                max_header_bytes: raw.limits.max_header_bytes,
                max_connections: raw.limits.max_connections,
            },
            long_links: LongLinks {
                rehome_grace: raw.long_links.rehome_grace.0.filter(|d| !d.is_zero()),
                rehome_spread: raw.long_links.rehome_spread.0.unwrap_or(Duration::ZERO),
            },
            workers,
            access_log_every: {
                let ap = root.key("access_log").key("sample");
                match raw.access_log.sample {
                    None => 0,
                    Some(0.0) => 0,
                    Some(r) if r > 0.0 && r <= 1.0 => (1.0 / r).round().max(1.0) as u32,
                    Some(_) => return Err(self.err_at(&ap, "must be in [0, 1]")),
                }
            },
        })
    }

    /// `markers:` over the default names; a header name is checked like any header's.
    fn markers(
        &self,
        root: &YamlPath,
        raw: std::collections::BTreeMap<String, RawMarkerSource>,
    ) -> VResult<MarkerNames> {
        let mut markers = MarkerNames::default();
        for (name, src) in raw {
            let p = root.key("markers").key(&name);
            let Some(kind) = MarkerKind::from_name(&name) else {
                return Err(LocatedError::new(
                    self.file,
                    self.pos.key(&p),
                    format!(
                        "markers: unknown marker {name:?} (expected uid, staff_uid, agent_gid, entry_id, app_version or device)"
                    ),
                ));
            };
            let slot = &mut markers.sources[kind as usize];
            if let Some(h) = src.header {
                slot.header = match h {
                    Some(h) => Some(
                        self.header_name(&p.key("header"), Some(h))?
                            .map(|n| n.as_str().to_owned())
                            .unwrap_or_default(),
                    ),
                    None => None,
                };
            }
            if let Some(c) = src.cookie {
                slot.cookie = self.nonempty(&p.key("cookie"), c)?;
            }
            if let Some(q) = src.query {
                slot.query = self.nonempty(&p.key("query"), q)?;
            }
        }
        Ok(markers)
    }

    fn listener(&self, p: &YamlPath, l: RawListener) -> VResult<Listener> {
        check_name(&l.name).map_err(|m| self.err_at(&p.key("name"), m))?;
        let bind = self.socket_addr(&p.key("bind"), &l.bind)?;
        let trusted_cidrs = match l.trusted_cidrs {
            None => None,
            Some(list) => {
                let mut nets = Vec::with_capacity(list.len());
                for (i, c) in list.iter().enumerate() {
                    let cp = p.key("trusted_cidrs").index(i);
                    let net = c
                        .parse::<IpNet>()
                        .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                        .map_err(|_| self.err_at(&cp, format!("invalid CIDR {c:?}")))?;
                    nets.push(net);
                }
                Some(nets)
            }
        };
        let tls = l.tls.map(|t| Tls {
            cert: self.resolve(&t.cert),
            key: self.resolve(&t.key),
        });
        Ok(Listener {
            name: l.name,
            bind,
            trusted_cidrs,
            tls,
        })
    }

    fn service(&self, p: &YamlPath, s: RawService, pool_names: &[String]) -> VResult<Service> {
        check_name(&s.name).map_err(|m| self.err_at(&p.key("name"), m))?;
        let host = match s.matcher.host {
            None => None,
            Some(h) => {
                let h = h.trim().to_ascii_lowercase();
                let hp = p.key("match").key("host");
                if h.is_empty() || h.contains('/') || h.contains(' ') {
                    return Err(self.err_at(&hp, format!("invalid host {h:?}")));
                }
                Some(match h.strip_prefix('*') {
                    Some(rest) if rest.starts_with('.') && rest.len() > 1 => {
                        HostMatch::Wildcard(rest.to_owned())
                    }
                    Some(_) => {
                        return Err(self.err_at(&hp, "a wildcard host must look like *.example.com"))
                    }
                    None => HostMatch::Exact(h),
                })
            }
        };
        if let Some(pp) = &s.matcher.path_prefix {
            if !pp.starts_with('/') {
                return Err(self.err_at(
                    &p.key("match").key("path_prefix"),
                    format!("path_prefix {pp:?} must start with /"),
                ));
            }
        }
        if !s.pools.contains_key("stable") {
            return Err(self.err_at(
                &p.key("pools"),
                format!("service {:?} has no stable pool (every request without a gray decision goes there)", s.name),
            ));
        }
        let mut pools = Vec::with_capacity(s.pools.len());
        let mut pool_by_id = vec![None; pool_names.len()];
        for (name, rp) in s.pools {
            let pp = p.key("pools").key(&name);
            check_name(&name).map_err(|m| self.err_at(&pp, m))?;
            let id = pool_names.iter().position(|n| *n == name).unwrap_or(0);
            pool_by_id[id] = Some(pools.len());
            pools.push(self.pool(&pp, name, id, rp)?);
        }
        let health = match s.health {
            None => None,
            Some(h) => {
                let hp = p.key("health");
                if !h.path.starts_with('/') {
                    return Err(self.err_at(&hp.key("path"), "must start with /"));
                }
                if h.healthy == 0 || h.unhealthy == 0 {
                    return Err(self.err_at(&hp, "healthy and unhealthy must be at least 1"));
                }
                Some(Health {
                    path: h.path,
                    interval: self.required_dur(&hp.key("interval"), h.interval)?,
                    timeout: self.required_dur(&hp.key("timeout"), h.timeout)?,
                    healthy: h.healthy,
                    unhealthy: h.unhealthy,
                })
            }
        };
        let guard = match s.guard {
            None => None,
            Some(g) => {
                let gp = p.key("guard");
                if !(g.max_error_rate > 0.0 && g.max_error_rate <= 1.0) {
                    return Err(self.err_at(&gp.key("max_error_rate"), "must be in (0, 1]"));
                }
                if !(g.confidence > 0.5 && g.confidence < 1.0) {
                    return Err(self.err_at(&gp.key("confidence"), "must be in (0.5, 1)"));
                }
                if g.max_latency_ratio
                    .is_some_and(|r| !(r.is_finite() && r >= 1.0))
                {
                    return Err(self.err_at(
                        &gp.key("max_latency_ratio"),
                        "must be at least 1 (null turns the latency guard off)",
                    ));
                }
                Some(Guard {
                    max_error_rate: g.max_error_rate,
                    min_requests: g.min_requests.max(1),
                    window: self.required_dur(&gp.key("window"), g.window)?,
                    cooldown: self.required_dur(&gp.key("cooldown"), g.cooldown)?,
                    compare_to_stable: g.compare_to_stable,
                    confidence: g.confidence,
                    max_latency_ratio: g.max_latency_ratio,
                    min_latency: self.required_dur(&gp.key("min_latency"), g.min_latency)?,
                })
            }
        };
        let mirror = match s.mirror {
            None => None,
            Some(m) => Some(self.mirror(&p.key("mirror"), m, &pools)?),
        };
        Ok(Service {
            mirror,
            name: s.name,
            host,
            path_prefix: s.matcher.path_prefix,
            pools,
            pool_by_id,
            health,
            guard,
            // Filled in once the marker names are known (see `config`).
            vary: s
                .vary_markers
                .then(|| http::HeaderValue::from_static("Cookie")),
        })
    }

    fn pool(&self, p: &YamlPath, name: String, id: PoolId, rp: RawPool) -> VResult<Pool> {
        if rp.endpoints.is_empty() {
            return Err(self.err_at(&p.key("endpoints"), "at least one endpoint is required"));
        }
        for (i, e) in rp.endpoints.iter().enumerate() {
            let ok = e
                .rsplit_once(':')
                .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(self.err_at(
                    &p.key("endpoints").index(i),
                    format!("endpoint {e:?} must be host:port"),
                ));
            }
        }
        let protocol = self.one_of(&p.key("protocol"), rp.protocol.as_deref(), &PROTOCOLS)?;
        let on_unavailable = self.one_of(
            &p.key("on_unavailable"),
            rp.on_unavailable.as_deref(),
            &ON_UNAVAILABLE,
        )?;
        let lb = self.one_of(&p.key("lb"), rp.lb.as_deref(), &LB_POLICIES)?;
        Ok(Pool {
            name,
            id,
            endpoints: rp.endpoints,
            retries: rp.retries.unwrap_or(1),
            protocol,
            on_unavailable,
            lb,
            resolve_interval: rp
                .resolve_interval
                .and_then(|d| d.0)
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(30)),
        })
    }

    fn mirror(&self, p: &YamlPath, m: RawMirror, pools: &[Pool]) -> VResult<Mirror> {
        let to = pools.iter().position(|x| x.name == m.to).ok_or_else(|| {
            self.err_at(&p.key("to"), format!("the service has no pool {:?}", m.to))
        })?;
        if pools[to].id == STABLE {
            return Err(self.err_at(&p.key("to"), "copies go to another pool than stable"));
        }
        let h = m.percent * 100.0;
        if !(0.0..=100.0).contains(&m.percent) || (h - h.round()).abs() > 1e-6 {
            return Err(self.err_at(
                &p.key("percent"),
                "must be in [0, 100] with at most two decimals",
            ));
        }
        let mut methods = Vec::with_capacity(m.methods.len());
        for (i, name) in m.methods.iter().enumerate() {
            let method = http::Method::from_bytes(name.trim().as_bytes()).map_err(|_| {
                self.err_at(
                    &p.key("methods").index(i),
                    format!("invalid method {name:?}"),
                )
            })?;
            methods.push(method);
        }
        Ok(Mirror {
            to,
            threshold: h.round() as u32,
            methods,
            max_in_flight: m.max_in_flight,
        })
    }

    /// A keyword value: absent is the first choice (the default), anything else must be
    /// one of the choices.
    fn one_of<T: Copy>(&self, p: &YamlPath, value: Option<&str>, c: &Choices<T>) -> VResult<T> {
        let Some(v) = value else {
            return Ok(c.list[0].1);
        };
        c.list
            .iter()
            .find(|(name, _)| *name == v)
            .map(|(_, t)| *t)
            .ok_or_else(|| self.err_at(p, format!("unknown {} {v:?} ({})", c.what, c.expected)))
    }

    fn socket_addr(&self, p: &YamlPath, s: &str) -> VResult<SocketAddr> {
        s.parse::<SocketAddr>().map_err(|_| {
            self.err_at(
                p,
                format!("invalid address {s:?} (expected IP:PORT, e.g. 0.0.0.0:8080)"),
            )
        })
    }

    fn header_name(&self, p: &YamlPath, h: Option<String>) -> VResult<Option<HeaderName>> {
        match h {
            None => Ok(None),
            Some(h) => HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
                .map(Some)
                .map_err(|_| self.err_at(p, format!("invalid header name {h:?}"))),
        }
    }

    fn nonempty(&self, p: &YamlPath, v: Option<String>) -> VResult<Option<String>> {
        match v {
            Some(s) if s.trim().is_empty() => {
                Err(self.err_at(p, "must not be empty (use null to turn the source off)"))
            }
            other => Ok(other.map(|s| s.trim().to_owned())),
        }
    }

    fn required_dur(&self, p: &YamlPath, d: Dur) -> VResult<Duration> {
        match d.0 {
            Some(d) if !d.is_zero() => Ok(d),
            _ => Err(self.err_at(p, "must be a positive duration")),
        }
    }
}

/// Names of listeners, services and pools appear in metric labels and URLs.
fn check_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid name {n:?} (expected [a-z0-9_.-]{{1,64}})"))
    }
}

/// The `Vary` of `vary_markers` services: `Cookie` (when any marker is read from a cookie)
/// and every marker header, the inputs a response's pool depends on.
fn vary_value(markers: &MarkerNames) -> Option<http::HeaderValue> {
    let mut vary: Vec<&str> = Vec::new();
    if markers.sources.iter().any(|s| s.cookie.is_some()) {
        vary.push("Cookie");
    }
    for h in markers.sources.iter().filter_map(|s| s.header.as_deref()) {
        if !vary.contains(&h) {
            vary.push(h);
        }
    }
    http::HeaderValue::from_str(&vary.join(", ")).ok()
}
