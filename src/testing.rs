//! Fixtures the unit tests of several modules share.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::fields::Received;

/// A header map with `pairs` appended in order (repeated names stay repeated).
pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("test header name"),
            HeaderValue::from_str(v).expect("test header value"),
        );
    }
    h
}

/// The smallest valid `graylane.yaml`: listener `im`, rules in `rules.yaml`, service
/// `chat` on `/chat` with stable and gray pools.
pub(crate) const MIN_CONFIG: &str = "\
listeners:
  - name: im
    bind: \"127.0.0.1:0\"
rules_file: rules.yaml
services:
  - name: chat
    match: { path_prefix: /chat }
    pools:
      stable: { endpoints: [\"127.0.0.1:1\"] }
      gray: { endpoints: [\"127.0.0.1:2\"] }
";

/// The proxy state for [`MIN_CONFIG`] with `rules` compiled, for modules that read it
/// (the status page, the admin bodies) without serving.
pub(crate) fn shared_with_rules(rules: &str) -> std::sync::Arc<crate::state::Shared> {
    let dir = std::path::Path::new("/nonexistent");
    let cfg =
        crate::config::Config::from_str(MIN_CONFIG, "graylane.yaml", dir).expect("test config");
    let compiled =
        crate::rules::compile(rules, "rules.yaml", dir, &cfg.topology()).expect("test rules");
    std::sync::Arc::new(crate::state::Shared::new(cfg, compiled).expect("test state"))
}

/// A request head as graylane's own HTTP/1.1 loop keeps it: read by the loop's parse
/// when the loop serves such a head. One it hands to hyper (`TE`, `Upgrade`, a body) is
/// read the same way here (field positions in the bytes, names lowercased), for tests of
/// the edits that must hold for every received head.
pub(crate) fn received(raw: &str) -> Received {
    if let Some(r) = crate::server::received(raw) {
        return r;
    }
    let mut bytes = raw.as_bytes().to_vec();
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut fields);
    let Ok(httparse::Status::Complete(_)) = req.parse(raw.as_bytes()) else {
        panic!("not a head: {raw:?}");
    };
    let mut tally = crate::fields::Tally::default();
    for (i, f) in req.headers.iter().enumerate() {
        tally.note(i, f.name.as_bytes());
    }
    let mut r = Received::default();
    let spans = r.spans_for(req.headers.len());
    crate::upstream::h1::field_spans(raw.as_bytes(), req.headers, spans);
    crate::upstream::h1::lowercase_names(&mut bytes, spans);
    r.refill(bytes::Bytes::from(bytes), tally);
    r
}
