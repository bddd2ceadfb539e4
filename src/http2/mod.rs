//! HTTP/2's wire format as graylane's own HTTP/2 server path reads and writes it:
//! frames (`frame`), header compression (`hpack`, with `huffman`), and a request's
//! decoded fields made into what the request path takes (`request`), and an answer's
//! head as a header block (`response`).
//!
//! hyper's HTTP/2 server (the `h2` crate) costs about 17,000 of the 43,000 instructions
//! an HTTP/2-over-TLS request takes end to end: each request's fields are decoded into a
//! header map, each answer's map is checked, indexed and Huffman-coded; the answer is
//! then queued per stream and framed. A proxy that forwards over HTTP/1.1 needs the
//! fields only as bytes: these are the pieces of a path that writes a request's fields
//! straight into the upstream's head and frames the upstream's answer as it comes.
//!
//! Not serving yet: the connection that will read and write with these is still to come,
//! so their users today are their tests and the fuzz target (`fuzz/fuzz_targets/hpack.rs`),
//! and what only that connection will call is allowed to stand unused until then.
#![allow(dead_code)]

pub(crate) mod frame;
pub(crate) mod hpack;
mod huffman;
pub(crate) mod request;
pub(crate) mod response;
#[cfg(test)]
mod tests;

/// Why a header block could not be decoded: each is a COMPRESSION_ERROR (RFC 9113
/// §4.3), which ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HpackError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer too large")]
    Integer,
    #[error("invalid Huffman code or padding")]
    Huffman,
    #[error("no table entry {0}")]
    Index(usize),
    #[error("table size update after a field, or above the limit")]
    SizeUpdate,
}
