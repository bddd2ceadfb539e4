#!/usr/bin/env bash
# What one locked read-modify-write instruction costs on this CPU, for reading
# `instructions.sh --atomics`: 2x10^8 relaxed `fetch_add`s on one uncontended counter
# against as many plain additions, back to back and with 20 additions between each.
# Builds a 30-line Rust program with rustc -O in a temporary directory and runs it pinned
# to cpu ${PROXY_CPUS:-1} (where the load benchmarks run the proxy).
#
# Usage: benches/load/atomic_cost.sh
set -euo pipefail
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/main.rs" <<'RUST'
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

fn per_iteration(n: u64, mut f: impl FnMut(u64)) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    t.elapsed().as_secs_f64() / n as f64 * 1e9
}

fn main() {
    let n = 200_000_000;
    let counter = AtomicU64::new(0);
    let mut plain = 0u64;
    let mut acc = 0u64;
    let locked = per_iteration(n, |i| {
        black_box(&counter).fetch_add(black_box(i) & 1, Ordering::Relaxed);
    });
    let added = per_iteration(n, |i| {
        let p = black_box(&mut plain);
        *p = p.wrapping_add(black_box(i) & 1);
    });
    let locked_among = per_iteration(n / 10, |i| {
        (0..20u64).for_each(|j| acc = acc.wrapping_add(black_box(i ^ j)));
        black_box(&counter).fetch_add(1, Ordering::Relaxed);
    });
    let added_among = per_iteration(n / 10, |i| {
        (0..20u64).for_each(|j| acc = acc.wrapping_add(black_box(i ^ j)));
        *black_box(&mut plain) += 1;
    });
    println!("| | locked fetch_add | plain add |");
    println!("|---|---:|---:|");
    println!("| back to back, ns each | {locked:.2} | {added:.2} |");
    println!("| with 20 additions between, ns per iteration | {locked_among:.2} | {added_among:.2} |");
    black_box(acc);
}
RUST
rustc -O --edition 2021 -o "$dir/atomic_cost" "$dir/main.rs"
taskset -c "${PROXY_CPUS:-1}" "$dir/atomic_cost"
