//! graylane: a gray-release reverse proxy.
//!
//! # Layout
//!
//! The one map of the modules, in the order a request travels through them. Each line
//! names the SPEC sections the module implements.
//!
//! | module | what it holds | SPEC |
//! |---|---|---|
//! | `config` | `graylane.yaml`: `raw` serde types → `validate` → [`Config`]; `yamlpos` for `FILE:LINE:COLUMN` | §3 |
//! | `server` | listeners, accept loop, `max_connections`, drain; `conn`: timeouts (408, idle); `lean`: the own HTTP/1.1 loop for bodiless requests, hyper for the rest; `h2own`: the own HTTP/2 server connection; `tls` | §3 limits, §8 |
//! | `http2` | HTTP/2's wire format for the own HTTP/2 server (`server::h2own`): frames, HPACK, request assembly, answer heads, request bodies | §3 limits |
//! | `head` | HTTP/1.1 heads in their usual shape read in one pass (names lowercased), for the own loop and the HTTP/1.1 client; httparse for every other head | §3 limits |
//! | `fields` | a request head's fields as the path reads and edits them: hyper's header map, or the head as the own loop received it | §3 forwarding |
//! | `markers` | reads the `xdw-kefu-*` markers from headers, cookies, query ([`MarkerReader`]) | §1 |
//! | `routing` | picks the service by host and longest path prefix | §3 services |
//! | `rules` | `rules.yaml` → [`RuleSet`]; `decide()` is pure; ramps, owner/expires | §2, §9.2, §9.3 |
//! | `state` | [`Shared`], the `Live` snapshot a reload swaps (with the shadow candidate), what a connection knows; `history`: reload outcomes | §2 reload, §9.4, §9.6 |
//! | `proxy` | `handle`: markers → decide → admit → forward → respond; `forward`: attempts, retries, fallback; `headers`: hop-by-hop, `x-forwarded-*`; `host`: the Host routed on; `mirror` | §3 forwarding, retries, fallback, §9.5 |
//! | `guard` | the rollback breaker: gray judged against stable (errors, latency) | §3 guard, §9.1 |
//! | `upstream` | endpoints, DNS, health and ejection, picking; `h1`: graylane's HTTP/1.1 client; `h2` | §3 endpoints, health |
//! | `longlink` | WebSocket relays, re-homing after a reload, closing last in a drain | §4 |
//! | `error` | every answer graylane makes itself, mapped exhaustively to a status | §3 failures |
//! | `metrics` | the Prometheus registry, children resolved at load | §6 |
//! | `reload`, `watch` | file watching, SIGHUP, `POST /reload` → one `ArcSwap` store; history | §2 reload, §9.6 |
//! | `admin` | `/metrics`, `/healthz`, `/readyz`, `/rules`, `/rules/history`, `/shadow`, `/explain`, `/reload`, `/guard`; `status`, `page`: `/status` and the status page `/` | §5, §9, §10 |
//! | `lifecycle` | [`Graylane`]: the server and the admin listener side by side, the order of a drain | §8 |
//! | [`tools`] | offline release tools `plan-ranges`, `replay`; `status` across replicas | §9.4, §11 |
//! | `worker` | what each worker thread keeps for itself | — |
//! | `clock` | the kernel's coarse clocks, for the watchdog's milliseconds and `Date` | — |
//! | `timer` | sleeps, timeouts and intervals on a thread of their own: no runtime has tokio's time driver | — |
//! | `alloc` | the global allocator: mimalloc, plain blocks where they are aligned enough | — |
//! | [`demo`] | the built-in sample config with its demo upstreams | §7 `demo` |
//!
//! `main.rs` is the command line (§7). The modules are private to the crate; what the
//! binary, the tests and the benchmarks use is re-exported below.

// Unit tests run on `#[tokio::test]` runtimes, which have tokio's time driver.
#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub(crate) mod admin;
// The one module with `unsafe`: a global allocator cannot be written without it.
#[allow(unsafe_code)]
mod alloc;
pub(crate) mod clock;
pub(crate) mod config;
pub mod demo;
pub(crate) mod error;
pub(crate) mod fields;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod guard;
pub(crate) mod head;
pub(crate) mod http2;
pub(crate) mod lifecycle;
pub(crate) mod longlink;
pub(crate) mod markers;
pub(crate) mod metrics;
pub(crate) mod proxy;
pub(crate) mod reload;
pub(crate) mod routing;
pub(crate) mod rules;
pub(crate) mod server;
pub(crate) mod state;
#[cfg(test)]
mod testing;
pub(crate) mod timer;
pub mod tools;
pub(crate) mod upstream;
pub(crate) mod watch;
pub(crate) mod worker;

pub use admin::{explain, ExplainRequest};
pub use alloc::Mimalloc;
pub use config::{Config, Topology};
pub use fields::Fields;
pub use lifecycle::{preflight, Graylane, StartError};
pub use markers::{MarkerNames, MarkerReader, Markers};
pub use rules::{compile as compile_rules, load as load_rules, Compiled, RequestInfo, RuleSet};
pub use server::tls::Reloader as TlsReloader;
pub use state::{BuildError, Shared};

/// Whole milliseconds in `d`, saturating. `Duration::as_millis` returns a `u128`, whose
/// division is a library call; the clocks read on every request and every relayed read
/// only need a `u64`.
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(d.subsec_millis()))
}

/// A Unix ms as RFC 3339 (UTC, seconds).
pub(crate) fn rfc3339_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms),
    )
    .to_string()
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}
