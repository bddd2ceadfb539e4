//! HTTP/2's wire format as graylane's own HTTP/2 server (`server::h2own`) reads and
//! writes it: frames (`frame`), header compression (`hpack`, with `huffman`), a
//! request's decoded fields made into what the request path takes (`request`), its body
//! as DATA frames bring it (`body`), and an answer's head as a header block (`response`).
//!
//! hyper's HTTP/2 server (the `h2` crate) cost about 17,000 of the 43,000 instructions
//! an HTTP/2-over-TLS request took end to end: each request's fields are decoded into a
//! header map, each answer's map was checked, indexed and Huffman-coded; the answer
//! was then queued per stream and framed. A proxy that forwards over HTTP/1.1 needs the
//! fields only as bytes: with these, a request's fields go from the decoder straight
//! into the upstream's head, and the upstream's answer is framed as it comes.

pub(crate) mod body;
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
