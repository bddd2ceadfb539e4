#![no_main]

//! A whole client connection into the real HTTP server path (upstreams refuse
//! connections). The proxy state and its runtime are built once per fuzzing process.

use std::sync::OnceLock;

use graylane::fuzzing::Connection;
use libfuzzer_sys::fuzz_target;

static CONNECTION: OnceLock<Connection> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let conn = CONNECTION.get_or_init(|| {
        Connection::new().expect("the built-in fuzzing config and rules must load")
    });
    conn.run(data);
});
