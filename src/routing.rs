//! Service selection: the most specific `match` wins.

use crate::config::{Config, HostMatch};

/// Services ordered most specific first, so routing is the first match of a short scan.
#[derive(Debug, Clone)]
pub(crate) struct Router {
    /// (service index, host match, path prefix), sorted by specificity.
    order: Vec<(usize, Option<HostMatch>, Option<String>)>,
}

impl Router {
    /// Orders the services: an exact host beats a wildcard host (longer suffix first)
    /// beats no host; then the longest path prefix; then config order.
    pub(crate) fn new(cfg: &Config) -> Self {
        let mut order: Vec<_> = cfg
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.host.clone(), s.path_prefix.clone()))
            .collect();
        order.sort_by_key(|(i, host, prefix)| {
            let host_rank = match host {
                Some(HostMatch::Exact(_)) => (2, 0),
                Some(HostMatch::Wildcard(w)) => (1, w.len()),
                None => (0, 0),
            };
            let plen = prefix.as_ref().map_or(0, |p| p.len());
            (std::cmp::Reverse(host_rank), std::cmp::Reverse(plen), *i)
        });
        Self { order }
    }

    /// The service for a request, or `None` (404). `host` has its port removed.
    pub(crate) fn route(&self, host: Option<&str>, path: &str) -> Option<usize> {
        self.order.iter().find_map(|(i, h, p)| {
            let host_ok = match h {
                None => true,
                Some(m) => host.is_some_and(|host| m.matches(host)),
            };
            let path_ok = p.as_deref().is_none_or(|p| prefix_matches(p, path));
            (host_ok && path_ok).then_some(*i)
        })
    }
}

/// `h` without its port (`host:port`, `[v6]:port`): service hosts match without it.
pub(crate) fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        // [v6]:port
        return h.split(']').next().map(|s| &s[1..]).unwrap_or(h);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    }
}

/// Segment-aware prefix match on a raw path (no decoding, no normalisation).
///
/// `/chat` matches `/chat`, `/chat/x` and `/chat?q`, not `/chatroom`; a prefix ending in
/// `/` matches every path that starts with it, so `/` matches every path.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    if prefix.ends_with('/') {
        return true;
    }
    matches!(
        path.as_bytes().get(prefix.len()),
        None | Some(b'/') | Some(b'?')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.example.com:8080"), "a.example.com");
        assert_eq!(strip_port("a.example.com"), "a.example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
    }

    #[test]
    fn prefixes_are_segment_aware() {
        assert!(prefix_matches("/chat", "/chat"));
        assert!(prefix_matches("/chat", "/chat/x"));
        assert!(prefix_matches("/chat", "/chat?q=1"));
        assert!(!prefix_matches("/chat", "/chatroom"));
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/static/", "/static/a.js"));
        assert!(!prefix_matches("/static/", "/static"));
    }

    #[test]
    fn most_specific_service_wins() {
        let yaml = "
listeners: [{ name: im, bind: \"127.0.0.1:0\" }]
rules_file: r.yaml
services:
  - { name: all, match: { path_prefix: / }, pools: { stable: { endpoints: [\"h:1\"] } } }
  - { name: chat, match: { path_prefix: /chat }, pools: { stable: { endpoints: [\"h:1\"] } } }
  - { name: wild, match: { host: \"*.example.com\" }, pools: { stable: { endpoints: [\"h:1\"] } } }
  - { name: exact, match: { host: a.example.com, path_prefix: / }, pools: { stable: { endpoints: [\"h:1\"] } } }
  - { name: hostonly, match: { host: b.test }, pools: { stable: { endpoints: [\"h:1\"] } } }
";
        let cfg = Config::from_str(yaml, "g.yaml", std::path::Path::new(".")).unwrap();
        let r = Router::new(&cfg);
        let name = |h: Option<&str>, p: &str| r.route(h, p).map(|i| cfg.services[i].name.as_str());
        assert_eq!(name(None, "/x"), Some("all"));
        assert_eq!(name(None, "/chat/1"), Some("chat"));
        assert_eq!(name(Some("x.example.com"), "/chat"), Some("wild"));
        assert_eq!(name(Some("A.example.com"), "/chat"), Some("exact"));
        assert_eq!(name(Some("b.test"), "/"), Some("hostonly"));
        assert_eq!(name(Some("c.test"), "/chatroom"), Some("all"));
    }
}
