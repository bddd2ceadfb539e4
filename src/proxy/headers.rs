//! Header edits on the way through (SPEC §3): hop-by-hop fields removed, `x-forwarded-*`
//! set. The propagate headers are set in `forward`, per attempt.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;

use crate::fields::{hop_by_hop_length, Fields, Received};
use crate::state::{ConnCtx, Shared};

/// Turns the client's head into the upstream head every attempt sends: hop-by-hop fields
/// out (but `Upgrade` on a WebSocket handshake, and never a field graylane sets or routed
/// on), `Host` from the target's authority when it has one, HTTP/2 cookie fields joined,
/// the peer appended to `x-forwarded-for`, `x-forwarded-proto` and the rule header set.
/// The pool header is set per attempt: a fallback changes the pool.
///
/// The fields graylane sets that the client did not send are returned, not inserted:
/// see [`Added`].
pub(crate) fn prepare_request<'a>(
    parts: &mut Parts,
    shared: &'a Shared,
    conn: &'a ConnCtx,
    rule_value: Option<&'a HeaderValue>,
    websocket: bool,
) -> Added<'a> {
    strip_hop_by_hop(&mut parts.headers, websocket, &shared.protected_headers);
    // The authority routed on is the one forwarded: an absolute-form target's (RFC 9112
    // §3.2.2: its Host field is replaced) or HTTP/2's `:authority` (RFC 9113 §8.3.1), so
    // a `Host` that says otherwise cannot send the upstream somewhere routing did not.
    if let Some(a) = parts.uri.authority() {
        let host = match a.as_str().rsplit_once('@') {
            Some((_, host)) => host,
            None => a.as_str(),
        };
        if let Ok(v) = HeaderValue::from_str(host) {
            parts.headers.insert(header::HOST, v);
        }
    }
    // RFC 9113 §8.2.3: HTTP/2 may carry each cookie as its own field (browsers do);
    // an HTTP/1.1 upstream must receive them as one, joined with "; ".
    if parts.version == http::Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    let propagate = &shared.config.propagate;
    let sent = Sent::scan(
        &parts.headers,
        propagate.rule_header.as_ref(),
        propagate.pool_header.as_ref(),
    );
    let mut added = Added {
        pool_sent: sent.pool,
        share_names: shared.set_fields_share_a_name,
        ..Added::default()
    };
    if sent.forwarded_for {
        append_forwarded_for(&mut parts.headers, &conn.peer_value);
    } else {
        added.push(&FORWARDED_FOR_NAME, &conn.peer_value);
    }
    let proto = &shared.proto_values[conn.listener];
    if sent.forwarded_proto {
        parts.headers.insert(X_FORWARDED_PROTO, proto.clone());
    } else {
        added.push(&FORWARDED_PROTO_NAME, proto);
    }
    if let (Some(h), Some(v)) = (&propagate.rule_header, rule_value) {
        if sent.rule {
            parts.headers.insert(h.clone(), v.clone());
        } else {
            added.push(h, v);
        }
    }
    added
}

/// [`prepare_request`] for a head the own loop received (HTTP/1.1, origin form, never a
/// WebSocket handshake): the same edits, as marks on the received fields. The fields
/// graylane sets are left out of the client's and all written after the kept ones,
/// `x-forwarded-for` with the client's values joined before the peer; the pool header
/// is set per attempt, as for a map.
pub(crate) fn prepare_received<'a>(
    head: &mut Received,
    shared: &'a Shared,
    conn: &'a ConnCtx,
    rule_value: Option<&'a HeaderValue>,
) -> Added<'a> {
    strip_received(head, &shared.protected_headers);
    let propagate = &shared.config.propagate;
    let is = |n: &[u8], name: Option<&HeaderName>| name.is_some_and(|h| n == h.as_str().as_bytes());
    let mut joined: Vec<u8> = Vec::new();
    if head.may_have_any(shared.set_name_lengths) {
        head.drop_where(|n, v| {
            if n == X_FORWARDED_FOR.as_str().as_bytes() {
                join_forwarded_for(&mut joined, v);
                return true;
            }
            n == X_FORWARDED_PROTO.as_str().as_bytes()
                || is(n, propagate.rule_header.as_ref())
                || is(n, propagate.pool_header.as_ref())
        });
    }
    let mut added = Added {
        share_names: shared.set_fields_share_a_name,
        ..Added::default()
    };
    if joined.is_empty() {
        added.push(&FORWARDED_FOR_NAME, &conn.peer_value);
    } else {
        joined.extend_from_slice(conn.peer_value.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&joined) {
            head.push(X_FORWARDED_FOR, v);
        }
    }
    added.push(&FORWARDED_PROTO_NAME, &shared.proto_values[conn.listener]);
    if let (Some(h), Some(v)) = (&propagate.rule_header, rule_value) {
        added.push(h, v);
    }
    if shared.set_fields_share_a_name {
        // A propagate header named `x-forwarded-for` replaces the joined value, as an
        // insert into a map does: the encoder writes `added` after the head's fields.
        let pool = propagate.pool_header.as_ref();
        let later = added.fields().iter().map(|(n, _)| *n).chain(pool);
        head.drop_where(|n, _| later.clone().any(|h| n == h.as_str().as_bytes()));
    }
    added
}

/// [`strip_hop_by_hop`] on a received request head: `Connection`, the fields it names
/// (but `protected`), and the fixed list; `TE` stays as `trailers` when its first value
/// asks for them. (The own loop hands a request with `TE`, `Upgrade` or
/// `Transfer-Encoding` to hyper today; the edits stay whole so that they do not depend
/// on which requests it keeps.)
fn strip_received(head: &mut Received, protected: &[HeaderName]) {
    if !head.maybe_hop_by_hop() {
        return;
    }
    let mut found = 0u8;
    for (n, _) in Fields::Received(head).iter() {
        if hop_by_hop_length(n.len()) {
            if let Some(i) = HOP_BY_HOP.iter().position(|h| n == h.as_str().as_bytes()) {
                found |= 1 << i;
            }
        }
    }
    if found == 0 {
        return;
    }
    let has = |name: usize| found & (1 << name) != 0;
    if has(0) {
        // The names `Connection` lists, read before any field is left out (a client may
        // name `Connection` itself). Those of the fixed list go below anyway (but `TE`,
        // which a `Connection` naming it removes whole): the usual `keep-alive` costs
        // no copy.
        let mut named: Vec<Vec<u8>> = Vec::new();
        for v in Fields::Received(head).get_all("connection") {
            let Some(s) = crate::fields::to_str(v) else {
                continue;
            };
            for tok in s.split(',').map(str::trim) {
                let is = |h: &HeaderName| h.as_str().eq_ignore_ascii_case(tok);
                let shielded = protected.iter().any(is);
                let fixed = HOP_BY_HOP[..TE_AT].iter().any(is);
                if !tok.is_empty() && !shielded && !fixed {
                    named.push(tok.as_bytes().to_vec());
                }
            }
        }
        head.drop_where(|n, _| named.iter().any(|t| n.eq_ignore_ascii_case(t)));
    }
    let te_trailers = has(TE_AT)
        && Fields::Received(head)
            .get_all("te")
            .next()
            .and_then(crate::fields::to_str)
            .is_some_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
    head.drop_where(|n, _| {
        hop_by_hop_length(n.len()) && HOP_BY_HOP.iter().any(|h| n == h.as_str().as_bytes())
    });
    if te_trailers {
        head.push(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Adds one `x-forwarded-for` value to a list being joined: visible ASCII only, trimmed,
/// each followed by `, ` (the peer comes last).
fn join_forwarded_for(joined: &mut Vec<u8>, value: &[u8]) {
    // Only visible ASCII is carried on: an address list has no use for anything else,
    // and upstreams that parse the chain should not get a client's junk.
    let Some(s) = crate::fields::to_str(value) else {
        return;
    };
    let s = s.trim();
    if !s.is_empty() {
        joined.extend_from_slice(s.as_bytes());
        joined.extend_from_slice(b", ");
    }
}

/// Which of the fields graylane sets the client's head already carries: those are
/// merged or replaced in the map; the others are [`Added`]. One pass over the names.
struct Sent {
    forwarded_for: bool,
    forwarded_proto: bool,
    rule: bool,
    pool: bool,
}

impl Sent {
    fn scan(headers: &HeaderMap, rule: Option<&HeaderName>, pool: Option<&HeaderName>) -> Self {
        let mut s = Sent {
            forwarded_for: false,
            forwarded_proto: false,
            rule: false,
            pool: false,
        };
        for k in headers.keys() {
            s.forwarded_for |= *k == X_FORWARDED_FOR;
            s.forwarded_proto |= *k == X_FORWARDED_PROTO;
            s.rule |= rule == Some(k);
            s.pool |= pool == Some(k);
        }
        s
    }
}

/// Fields graylane adds to an upstream head that the client's head did not carry
/// (`x-forwarded-for`, `x-forwarded-proto`, the rule and pool headers). The HTTP/1.1
/// encoder writes them after the client's fields, so the common request pays no
/// header-map insert for them (the four inserts were ~6% of a request's instructions);
/// an HTTP/2 attempt or a mirror copy inserts them into its own map.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Added<'a> {
    items: [(&'a HeaderName, &'a HeaderValue); 4],
    len: usize,
    /// The client sent the pool header: each attempt replaces it in the map instead.
    pub(crate) pool_sent: bool,
    /// Two of the names may be the same (see `Shared::set_fields_share_a_name`).
    share_names: bool,
}

/// The names as statics, which [`Added`] can borrow for as long as it likes.
static FORWARDED_FOR_NAME: HeaderName = X_FORWARDED_FOR;
static FORWARDED_PROTO_NAME: HeaderName = X_FORWARDED_PROTO;
/// Fills the unused places of [`Added`]; never written.
static UNUSED_NAME: HeaderName = HeaderName::from_static("x-unused");
static UNUSED_VALUE: HeaderValue = HeaderValue::from_static("");

impl Default for Added<'_> {
    fn default() -> Self {
        Self {
            items: [(&UNUSED_NAME, &UNUSED_VALUE); 4],
            len: 0,
            pool_sent: false,
            share_names: false,
        }
    }
}

impl<'a> Added<'a> {
    /// Adds a field; there is room for every field graylane sets, each at most once. A
    /// name added before (a config that gives two of them one name) takes the later
    /// value, as inserting into a map would.
    pub(crate) fn push(&mut self, name: &'a HeaderName, value: &'a HeaderValue) {
        if self.share_names {
            if let Some(slot) = self.items[..self.len].iter_mut().find(|(n, _)| *n == name) {
                slot.1 = value;
                return;
            }
        }
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = (name, value);
            self.len += 1;
        }
    }

    /// Forgets the fields (once they are in a map).
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    pub(crate) fn fields(&self) -> &[(&'a HeaderName, &'a HeaderValue)] {
        &self.items[..self.len]
    }

    /// Sets the fields in `headers`, for a head that is not written by graylane's
    /// HTTP/1.1 encoder.
    pub(crate) fn insert_into(&self, headers: &mut HeaderMap) {
        for (n, v) in self.fields() {
            headers.insert((*n).clone(), (*v).clone());
        }
    }
}

/// Joins several `cookie` fields into one, in order.
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Removes hop-by-hop fields (RFC 9110 §7.6.1): `Connection` and every field it names,
/// and the fixed list of SPEC §3. `keep_upgrade` keeps `Upgrade` (and a `Connection:
/// upgrade`) for WebSocket handshakes. A `Connection` token naming one of `protected`
/// (the fields graylane sets or routes on) is ignored: a client must not be able to strip
/// `Host` or `x-forwarded-for` from what the upstream receives.
pub(crate) fn strip_hop_by_hop(
    headers: &mut HeaderMap,
    keep_upgrade: bool,
    protected: &[HeaderName],
) {
    // One pass over the (few) names first: a request rarely has any of these fields and
    // a response usually only `Connection`, and each removal is a hash lookup.
    let mut found = 0u8;
    for k in headers.keys() {
        if !hop_by_hop_length(k.as_str().len()) {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            found |= 1 << i;
        }
    }
    if found == 0 && !keep_upgrade {
        return;
    }
    let has = |name: usize| found & (1 << name) != 0;
    if has(0) {
        // Fields named by Connection: the values are cloned (a reference count, no copy)
        // so the map can be changed while their tokens are read, and each token is
        // removed by `&str`, which looks the name up without building (and allocating)
        // a `HeaderName`. Almost every message has one value (`keep-alive`, `close`).
        let mut first: [Option<HeaderValue>; 2] = Default::default();
        let mut overflow: Vec<HeaderValue> = Vec::new();
        for (i, v) in headers.get_all(header::CONNECTION).iter().enumerate() {
            match first.get_mut(i) {
                Some(slot) => *slot = Some(v.clone()),
                None => overflow.push(v.clone()),
            }
        }
        for v in first.iter().flatten().chain(overflow.iter()) {
            let Ok(s) = v.to_str() else { continue };
            for tok in s.split(',') {
                let tok = tok.trim();
                if tok.is_empty()
                    || (keep_upgrade && tok.eq_ignore_ascii_case("upgrade"))
                    || protected
                        .iter()
                        .any(|p| p.as_str().eq_ignore_ascii_case(tok))
                {
                    continue;
                }
                headers.remove(tok);
            }
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        let kept = name == header::TE || (keep_upgrade && i < 2);
        if has(i) && !kept {
            headers.remove(name);
        }
    }
    // TE: only `trailers` may pass (it tells the upstream the client accepts trailers).
    // Looked up only when the scan saw it.
    let te = if has(TE_AT) {
        headers.get(header::TE)
    } else {
        None
    };
    if let Some(te) = te {
        let keeps_trailers = te
            .to_str()
            .map(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
            .unwrap_or(false);
        if keeps_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
}

/// `x-forwarded-for`; a constant so that inserting it allocates nothing (a `&str` name
/// outside the standard set is copied into a fresh `HeaderName` on every insert).
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`, a constant for the same reason.
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// Every field [`strip_hop_by_hop`] may remove or rewrite by its own name; `Connection`
/// and `Upgrade` first (a WebSocket handshake keeps them).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::UPGRADE,
    PROXY_CONNECTION,
    KEEP_ALIVE,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TE,
];
/// Where `TE` is in [`HOP_BY_HOP`].
const TE_AT: usize = 7;
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// The client address as an `x-forwarded-for` value, built once per connection: every
/// request on it then sets the field by a reference-count clone.
pub(crate) fn peer_value(peer: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Appends the peer to `x-forwarded-for` (joining earlier values into one field).
pub(crate) fn append_forwarded_for(headers: &mut HeaderMap, peer: &HeaderValue) {
    let mut joined: Vec<u8> = Vec::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        join_forwarded_for(&mut joined, v.as_bytes());
    }
    if joined.is_empty() {
        headers.insert(X_FORWARDED_FOR, peer.clone());
        return;
    }
    joined.extend_from_slice(peer.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::headers;
    use http::Request;

    /// A received head says it may hold a hop-by-hop field exactly when a name of a
    /// hop-by-hop length is in it (the lengths noted as the head is read; that every name
    /// of [`HOP_BY_HOP`] has such a length, `every_hop_by_hop_name_passes_the_length_filter`).
    #[test]
    fn received_heads_know_the_hop_by_hop_lengths() {
        for len in 1..=70 {
            let name = "x".repeat(len);
            let r = crate::testing::received(&format!(
                "GET / HTTP/1.1\r\nHost: t\r\n{name}: 1\r\n\r\n"
            ));
            // `Host` is 4 bytes long, not a hop-by-hop length.
            assert_eq!(
                r.maybe_hop_by_hop(),
                hop_by_hop_length(len),
                "a name of {len} bytes"
            );
        }
    }

    #[test]
    fn hop_by_hop_fields_go() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip, trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false, &[]);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["te", "x-kept"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn connection_tokens_match_any_case_and_every_value() {
        let mut h = headers(&[
            ("connection", "X-Secret"),
            ("connection", "close"),
            ("connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false, &[]);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn every_hop_by_hop_name_passes_the_length_filter() {
        for h in &HOP_BY_HOP {
            assert!(hop_by_hop_length(h.as_str().len()), "{h}");
        }
        assert_eq!(HOP_BY_HOP[TE_AT], header::TE);
    }

    #[test]
    fn websocket_keeps_upgrade() {
        let mut h = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true, &[]);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn added_fields_of_one_name_keep_the_later_value() {
        let (gray, rule) = (
            HeaderValue::from_static("gray"),
            HeaderValue::from_static("r"),
        );
        let name = HeaderName::from_static("x-gray");
        let other = HeaderName::from_static("x-other");
        let mut a = Added {
            share_names: true,
            ..Added::default()
        };
        a.push(&name, &rule);
        a.push(&other, &rule);
        a.push(&name, &gray);
        let fields: Vec<_> = a.fields().iter().map(|(n, v)| (n.as_str(), *v)).collect();
        assert_eq!(fields, [("x-gray", &gray), ("x-other", &rule)]);
        // Without shared names (the usual config), pushes only append.
        let mut a = Added::default();
        a.push(&name, &rule);
        a.push(&other, &gray);
        assert_eq!(a.fields().len(), 2);
    }

    /// The own loop's edits of a received head leave the upstream the fields hyper's
    /// path leaves it (the pool header aside: each attempt sets that one).
    #[test]
    fn a_received_head_is_edited_as_a_map_is() {
        // The second: a rule header that shares its name with a field graylane sets.
        for rule_header in ["x-graylane-rule", "x-forwarded-for"] {
            edited_as_a_map_is(rule_header);
        }
    }

    fn edited_as_a_map_is(rule_header: &str) {
        let yaml = format!(
            "{}propagate: {{ pool_header: x-graylane-pool, rule_header: {rule_header} }}\n",
            crate::testing::MIN_CONFIG
        );
        let dir = std::path::Path::new("/nonexistent");
        let cfg = crate::config::Config::from_str(&yaml, "graylane.yaml", dir).unwrap();
        let rules = crate::rules::compile("rules: []\n", "rules.yaml", dir, &cfg.topology());
        let shared = crate::state::Shared::new(cfg, rules.unwrap()).unwrap();
        let peer: std::net::SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let gauge = prometheus::IntGauge::new("c", "c").unwrap();
        let conn = ConnCtx {
            listener: 0,
            peer,
            peer_value: peer_value(peer.ip()),
            trusted: true,
            slot: std::sync::Arc::new(crate::state::ConnSlot::new(Default::default(), gauge)),
        };
        let rule = HeaderValue::from_static("uid-range");
        let heads = [
            "GET /chat/x HTTP/1.1\r\nHost: t\r\nUser-Agent: x\r\nAccept: */*\r\n\r\n",
            "GET /chat/x?a=1 HTTP/1.1\r\nHost: t\r\n\
             Connection: keep-alive, X-Secret, Host, X-Forwarded-For\r\nX-Secret: 1\r\n\
             Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
             X-Forwarded-For: 1.2.3.4\r\nCookie: a=1\r\nx-forwarded-for: 5.6.7.8 \r\n\
             X-Forwarded-Proto: gopher\r\nX-Graylane-Rule: forged\r\n\
             X-Graylane-Pool: forged\r\ncookie: b=2\r\nTE: gzip, trailers\r\n\
             Proxy-Authorization: Basic x\r\nProxy-Authenticate: x\r\nX-Kept: yes\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: t\r\nX-Forwarded-For:\r\nConnection: close\r\n\
             te: gzip\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: t\r\nConnection: TE, keep-alive\r\nTE: trailers\r\n\r\n",
            // The second without TE: one the own loop serves.
            "GET /chat/x?a=1 HTTP/1.1\r\nHost: t\r\n\
             Connection: keep-alive, X-Secret, X-Forwarded-For\r\nX-Secret: 1\r\n\
             Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
             X-Forwarded-For: 1.2.3.4\r\nCookie: a=1\r\nx-forwarded-for: 5.6.7.8 \r\n\
             X-Graylane-Rule: forged\r\ncookie: b=2\r\n\
             Proxy-Authorization: Basic x\r\nX-Kept: yes\r\n\r\n",
        ];
        // Read by the loop's own parse, the heads it serves; those with TE go to hyper
        // (and are read here as the loop would keep them).
        let own = heads.map(|raw| crate::server::received(raw).is_some());
        assert_eq!(own, [true, false, false, false, true]);
        for raw in heads {
            let mut r = crate::testing::received(raw);
            let mut parts = Request::get(raw.split(' ').nth(1).unwrap())
                .body(())
                .unwrap();
            for (n, v) in Fields::Received(&r).iter() {
                let v = HeaderValue::from_bytes(v).unwrap();
                parts
                    .headers_mut()
                    .append(HeaderName::from_bytes(n).unwrap(), v);
            }
            let (mut parts, ()) = parts.into_parts();
            let added = prepare_request(&mut parts, &shared, &conn, Some(&rule), false);
            let mut want = parts.headers;
            added.insert_into(&mut want);
            want.remove("x-graylane-pool");

            let added = prepare_received(&mut r, &shared, &conn, Some(&rule));
            let mut got = r.to_map();
            added.insert_into(&mut got);
            assert_eq!(got, want, "{rule_header}: {raw}");
            // What the encoder writes is what the map holds, in the view's order: the kept
            // fields in the order the client sent them, then the ones graylane set (the
            // joined x-forwarded-for, a TE cut down to `trailers`).
            let mut out = Vec::new();
            r.write(&mut out);
            let text = String::from_utf8(out).unwrap();
            let pair = |n: &[u8], v: &[u8]| {
                let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
                (text(n), text(v))
            };
            let view: Vec<_> = Fields::Received(&r)
                .iter()
                .map(|(n, v)| pair(n, v))
                .collect();
            let lines: Vec<_> = text
                .split_terminator("\r\n")
                .map(|l| l.split_once(": ").unwrap())
                .map(|(n, v)| pair(n.as_bytes(), v.as_bytes()))
                .collect();
            assert_eq!(lines, view, "{rule_header}: {raw}");
            let sent: Vec<_> = raw
                .split("\r\n")
                .skip(1)
                .take_while(|l| !l.is_empty())
                .map(|l| l.split_once(':').unwrap())
                .map(|(n, v)| pair(n.to_ascii_lowercase().as_bytes(), v.trim().as_bytes()))
                .collect();
            let mut rest = sent.iter();
            let not_sent: Vec<_> = view.iter().filter(|f| !rest.any(|s| s == *f)).collect();
            let set: Vec<_> = not_sent.iter().map(|(n, _)| n.as_str()).collect();
            assert!(
                [
                    &[][..],
                    &["te"],
                    &["x-forwarded-for"],
                    &["te", "x-forwarded-for"]
                ]
                .contains(&&set[..]),
                "{rule_header}: out of order or made up: {not_sent:?} in {view:?}"
            );
            let mut written = HeaderMap::new();
            for line in text.split_terminator("\r\n") {
                let (n, v) = line.split_once(": ").unwrap();
                written.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            // As the encoder does: after the head's fields, not replacing them.
            for (n, v) in added.fields() {
                written.append((*n).clone(), (*v).clone());
            }
            assert_eq!(written, got, "{rule_header}: {raw}");
        }
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
        ]);
        append_forwarded_for(&mut h, &peer_value("127.0.0.1".parse().unwrap()));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 127.0.0.1");
        let mut h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        append_forwarded_for(&mut h, &peer_value("10.0.0.1".parse().unwrap()));
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.1");
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &peer_value("::1".parse().unwrap()));
        assert_eq!(h["x-forwarded-for"], "::1");
    }
}
