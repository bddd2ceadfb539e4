//! The `Host` a request names: whether it may be routed on, and the host routing reads.

use crate::error::Refusal;
use crate::fields::Fields;
use crate::routing::strip_port;

/// RFC 9112 §3.2: an HTTP/1.1 request must carry exactly one valid `Host` (any version:
/// at most one, and valid). Routing reads it, so a request that gets it wrong is refused
/// before anything is decided on it. RFC 9113 §8.3.1: an HTTP/2 request whose `Host`
/// names another authority than its `:authority` is malformed; routing reads
/// `:authority`, and an upstream must not be sent a `Host` that says otherwise.
pub(super) fn host_problem(parts: &http::request::Parts, fields: Fields<'_>) -> Option<Refusal> {
    match fields.host() {
        (None, _) if parts.version == http::Version::HTTP_11 => Some(Refusal::BadHost),
        (None, _) => None,
        (Some(_), true) => Some(Refusal::BadHost),
        (Some(h), false) if parts.version == http::Version::HTTP_2 => {
            // Usually the Host line the HTTP/2 server made from `:authority`: equal as
            // bytes, and compared so first.
            let other = parts.uri.authority().is_some_and(|a| {
                let a = a.as_str().as_bytes();
                a != h && !a.eq_ignore_ascii_case(h)
            });
            (other || !valid_host(h)).then_some(Refusal::BadHost)
        }
        (Some(h), false) => (!valid_host(h)).then_some(Refusal::BadHost),
    }
}

/// RFC 9110 §7.2 and RFC 3986 §3.2.2–3: `uri-host [ ":" port ]`, where the host is an IP
/// literal in brackets or a reg-name (unreserved, percent-encoded or sub-delims bytes)
/// and the port is digits. Stricter than `http::uri::Authority`, which takes userinfo
/// (`evil@t`) and a port of letters: both would reach the upstream as they came, and a
/// name-based virtual host behind it could read them otherwise than graylane routed.
fn valid_host(h: &[u8]) -> bool {
    let (host, port) = match h.first() {
        Some(b'[') => match h.iter().position(|&b| b == b']') {
            Some(end) => {
                let inside = &h[1..end];
                let ip = !inside.is_empty()
                    && inside
                        .iter()
                        .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
                if !ip {
                    return false;
                }
                (&h[..=end], &h[end + 1..])
            }
            None => return false,
        },
        _ => match h.iter().position(|&b| b == b':') {
            Some(colon) => (&h[..colon], &h[colon..]),
            None => (h, &h[h.len()..]),
        },
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    port_ok && !host.is_empty() && (host[0] == b'[' || reg_name(host))
}

fn reg_name(h: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&b) = h.get(i) {
        let ok = match b {
            b'%' => {
                let hex = h.get(i + 1..i + 3);
                if !hex.is_some_and(|x| x.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 2;
                true
            }
            b'-' | b'.' | b'_' | b'~' => true,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => true,
            b => b.is_ascii_alphanumeric(),
        };
        if !ok {
            return false;
        }
        i += 1;
    }
    true
}

/// The host a request addresses, without port: the URI authority (HTTP/2, absolute
/// form) or the `Host` header.
pub(super) fn request_host<'a>(uri: &'a http::Uri, fields: Fields<'a>) -> Option<&'a str> {
    let raw = match uri.authority() {
        Some(a) => authority_host(a.as_str()),
        None => crate::fields::to_str(fields.host().0?)?,
    };
    Some(strip_port(raw))
}

/// What `http::uri::Authority::host` returns (the authority without userinfo and port,
/// an IP literal with its brackets), found byte by byte: its `str` splits decode
/// characters, ~400 instructions for every HTTP/2 request's `:authority`.
fn authority_host(auth: &str) -> &str {
    let b = auth.as_bytes();
    let from = b.iter().rposition(|&c| c == b'@').map_or(0, |i| i + 1);
    let rest = &b[from..];
    let len = if rest.first() == Some(&b'[') {
        rest.iter()
            .position(|&c| c == b']')
            .map_or(rest.len(), |i| i + 1)
    } else {
        rest.iter().position(|&c| c == b':').unwrap_or(rest.len())
    };
    // Cut at ASCII bytes: both ends are character boundaries.
    auth.get(from..from + len).unwrap_or(auth)
}

#[cfg(test)]
mod tests {
    use super::{authority_host, valid_host};

    #[test]
    fn authority_hosts_are_what_the_http_crate_reads() {
        for a in [
            "t",
            "t:80",
            "chat.example.com:8443",
            "user@t:80",
            "a@b@t",
            "[::1]",
            "[::1]:443",
            "u:p@[2001:db8::1]:8080",
            "127.0.0.1:8080",
            "xn--bcher-kva.example",
        ] {
            let expected = http::uri::Authority::from_static(a);
            assert_eq!(authority_host(a), expected.host(), "{a}");
        }
    }

    #[test]
    fn hosts_follow_rfc_3986() {
        for ok in [
            "t",
            "t:80",
            "t:",
            "chat.example.com",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:443",
            "[2001:db8::1]",
            "a%2Db",
            "x_y~z",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok} refused");
        }
        for bad in [
            "", "t:abc", "evil@t", "t:80:90", "[::1", "[]", "[::1]x", ":80", "a b", "a/b", "a%zz",
            "a%2", "t\u{7f}", "é",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad} accepted");
        }
    }
}
