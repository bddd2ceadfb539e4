//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz): every parser that reads
//! bytes from the network or from ops-edited files, and a whole client connection. Not an
//! API: hidden from the docs, kept only so that the targets reach what the binary runs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{Config, Topology};
use crate::markers::{cookie, MarkerReader};
use crate::state::Shared;

/// `rules.yaml` text through the whole compiler (positions included).
pub fn rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let topo = Topology {
        listeners: vec!["im".into(), "console".into()],
        services: vec!["chat".into(), "static".into()],
        pools: vec!["stable".into(), "gray".into(), "canary".into()],
    };
    let _ = crate::rules::compile(text, "rules.yaml", Path::new("/nonexistent"), &topo);
}

/// `graylane.yaml` text through parsing and validation.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_str(text, "graylane.yaml", Path::new("/nonexistent"));
    }
}

/// Header fields (`name: value` lines, the part after the first empty line is the query
/// string) through the marker reader and the cookie parser.
pub fn markers(data: &[u8]) {
    let (head, query) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], std::str::from_utf8(&data[i + 2..]).ok()),
        None => (data, None),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let _ = MarkerReader::default().read(&headers, query);
    let _ = cookie(&headers, "xdw-kefu-uid");
}

/// Bytes as a request head and as a response head through the one-pass head scanner,
/// held to httparse's reading of the same bytes (a difference panics).
pub fn h1_head(data: &[u8]) {
    if let Err(e) = crate::head::agrees_with_httparse(data) {
        panic!("the head scanner and httparse differ: {e}");
    }
}

/// An upstream response (head and chunked body) through graylane's HTTP/1.1 client parser.
pub fn h1_response(data: &[u8]) {
    crate::upstream::h1::parse_response_for_fuzzing(data);
}

/// A header block through graylane's HPACK decoder twice (the second time against the
/// table the first left), with a table limit taken from the first byte; every field it
/// gave is then encoded the way graylane answers and must decode to the same fields.
pub fn hpack(data: &[u8]) {
    use crate::http2::hpack::{encode_field, Decoder};
    let Some((&limit, block)) = data.split_first() else {
        return;
    };
    let mut d = Decoder::new(usize::from(limit) * 32);
    let mut got = Vec::new();
    for _ in 0..2 {
        if d.decode(block, |n, v| got.push((n.to_vec(), v.to_vec())))
            .is_err()
        {
            return;
        }
    }
    let mut again = Vec::new();
    for (n, v) in &got {
        encode_field(n, v, &mut again);
    }
    let mut back = Vec::with_capacity(got.len());
    let decoded = Decoder::new(0).decode(&again, |n, v| back.push((n.to_vec(), v.to_vec())));
    assert!(
        decoded.is_ok() && back == got,
        "encoder and decoder disagree"
    );
}

/// A whole client connection: the bytes go to a plaintext listener over memory, with a
/// config whose upstreams refuse connections (so every request ends in graylane's own
/// answer). Build once per fuzzing process; `run` each input.
pub struct Connection {
    rt: tokio::runtime::Runtime,
    shared: Arc<Shared>,
}

impl Connection {
    /// The proxy state for the sample config, with a ruleset that reads every marker.
    pub fn new() -> Option<Self> {
        let cfg = Config::from_str(
            CONNECTION_CONFIG,
            "graylane.yaml",
            Path::new("/nonexistent"),
        )
        .ok()?;
        let rules = crate::rules::compile(
            CONNECTION_RULES,
            "rules.yaml",
            Path::new("/nonexistent"),
            &cfg.topology(),
        )
        .ok()?;
        let shared = Arc::new(Shared::new(cfg, rules).ok()?);
        // The fuzz target's own runtime; its tests' helpers may use tokio's timers.
        #[allow(clippy::disallowed_methods)]
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        Some(Self { rt, shared })
    }

    /// Feeds `data` as everything a client sends, then reads what graylane answers until
    /// it closes (or a second passes in the runtime's clock).
    pub fn run(&self, data: &[u8]) {
        let shared = self.shared.clone();
        self.rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
            let serve = tokio::spawn(crate::server::serve_one(shared, 0, server, peer));
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut sink = [0u8; 16 * 1024];
            let read_all = async {
                while let Ok(n) = client.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let _ = crate::timer::timeout(std::time::Duration::from_secs(1), read_all).await;
            serve.abort();
        });
    }
}

const CONNECTION_CONFIG: &str = "\
listeners:
  - name: im
    bind: \"127.0.0.1:0\"
rules_file: rules.yaml
services:
  - name: chat
    match: { path_prefix: /chat }
    pools:
      stable: { endpoints: [\"127.0.0.1:9\"] }
      gray: { endpoints: [\"127.0.0.1:9\"] }
  - name: static
    match: { host: \"*.example.com\", path_prefix: / }
    pools:
      stable: { endpoints: [\"127.0.0.1:9\"] }
timeouts: { connect: 100ms, upstream_response: 200ms, request_header: 500ms, idle: 500ms }
";

const CONNECTION_RULES: &str = "\
rules:
  - name: a
    when: { uid: { ranges: [\"1-1000\"] }, app_version: \">=5.2\" }
    route: gray
  - name: b
    when: { agent_gid: { any: [7] }, device: { in: [ios] }, percent: { of: staff_uid, value: 50 } }
    route: gray
  - name: c
    when: { header: { x-a: { in: [b] } }, cookie: { c: { in: [d] } }, entry_id: { in: [5] } }
    route: gray
";
