//! graylane command line.
fn main() {}
