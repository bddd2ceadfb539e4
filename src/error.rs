//! Errors of the request path and their exhaustive mapping to a status code.

/// How an upstream exchange failed; the `kind` label of `upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamErrorKind {
    /// Connection refused or unreachable: nothing was sent.
    Connect,
    /// Connect timeout or no response head within `upstream_response`.
    Timeout,
    /// Reset or closed before a complete response head.
    Reset,
    /// Bytes that do not parse as a response head.
    Protocol,
}

impl UpstreamErrorKind {
    /// Every kind, in label order.
    pub const ALL: [UpstreamErrorKind; 4] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Reset,
        UpstreamErrorKind::Protocol,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Protocol => "protocol",
        }
    }
}

/// Why a request did not go to the pool its rule chose; the `reason` label of
/// `fallbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackReason {
    /// The service defines no pool of that name.
    PoolMissing,
    /// The pool has no endpoint able to take traffic.
    PoolUnhealthy,
    /// The service's guard has tripped gray.
    GuardTripped,
}

impl FallbackReason {
    /// Every reason, in label order.
    pub const ALL: [FallbackReason; 3] = [
        FallbackReason::PoolMissing,
        FallbackReason::PoolUnhealthy,
        FallbackReason::GuardTripped,
    ];

    /// The metric label and `/explain` value.
    pub fn label(self) -> &'static str {
        match self {
            FallbackReason::PoolMissing => "pool_missing",
            FallbackReason::PoolUnhealthy => "pool_unhealthy",
            FallbackReason::GuardTripped => "guard_tripped",
        }
    }
}

/// Whose fault a refusal is: it decides what a failure may count against. A client's
/// fault never feeds passive ejection, the guard or `upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The client sent something graylane cannot serve, or stopped sending.
    Client,
    /// The upstream side failed or has nothing to offer.
    Upstream,
}

/// Every answer graylane makes itself rather than relaying an upstream's. One enum so
/// that each status and body is decided in one place ([`Refusal::status`] is exhaustive,
/// and a test pins it).
///
/// Not here: answers the servers make on their own before a request reaches the request
/// path: hyper's HTTP/1.1 (`400` for a malformed head, `431` for a head over
/// `max_header_bytes`), and graylane's own HTTP/2 (`431` for a header list over
/// `max_header_bytes`; a malformed request is reset, not answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No service matches host and path.
    NoService,
    /// An HTTP/1.1 request without `Host`, or one with several or an invalid one.
    BadHost,
    /// `CONNECT`: a reverse proxy opens no tunnels to where a client names.
    Connect,
    /// The chosen pool has no endpoint up and may not fall back (`on_unavailable: fail`).
    PoolUnavailable,
    /// Stable has no endpoint at all to try.
    NoEndpoint,
    /// An endpoint address that cannot form a request URI.
    BadUpstreamAddress,
    /// The upstream exchange failed (SPEC §3).
    Upstream(UpstreamErrorKind),
    /// The client cut its request body off mid-upload.
    BodyCutOff,
    /// The client stopped sending its request body (and kept the connection).
    BodyStalled,
    /// A request head took longer than `timeouts.request_header`.
    HeadTimeout,
}

impl Refusal {
    /// The status of the answer. Exhaustive on purpose: a new refusal must decide here.
    pub(crate) fn status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Refusal::NoService => S::NOT_FOUND,
            Refusal::BadHost => S::BAD_REQUEST,
            Refusal::Connect => S::NOT_IMPLEMENTED,
            Refusal::PoolUnavailable => S::SERVICE_UNAVAILABLE,
            Refusal::NoEndpoint | Refusal::BadUpstreamAddress => S::BAD_GATEWAY,
            Refusal::Upstream(UpstreamErrorKind::Timeout) => S::GATEWAY_TIMEOUT,
            Refusal::Upstream(
                UpstreamErrorKind::Connect | UpstreamErrorKind::Reset | UpstreamErrorKind::Protocol,
            ) => S::BAD_GATEWAY,
            Refusal::BodyCutOff => S::BAD_REQUEST,
            Refusal::BodyStalled => S::REQUEST_TIMEOUT,
            Refusal::HeadTimeout => S::REQUEST_TIMEOUT,
        }
    }

    /// The plain-text body: one line naming graylane, so a user can tell a proxy answer
    /// from an application's.
    pub(crate) fn body(self) -> &'static str {
        match self {
            Refusal::NoService => "graylane: no service for this request\n",
            Refusal::BadHost => "graylane: missing, repeated or invalid Host\n",
            Refusal::Connect => "graylane: CONNECT is not supported\n",
            Refusal::PoolUnavailable => "graylane: no healthy endpoint in the chosen pool\n",
            Refusal::NoEndpoint => "graylane: no upstream endpoint\n",
            Refusal::BadUpstreamAddress => "graylane: bad upstream address\n",
            Refusal::Upstream(UpstreamErrorKind::Connect) => "graylane: upstream connect failed\n",
            Refusal::Upstream(UpstreamErrorKind::Timeout) => "graylane: upstream timed out\n",
            Refusal::Upstream(UpstreamErrorKind::Reset) => {
                "graylane: upstream closed the connection\n"
            }
            Refusal::Upstream(UpstreamErrorKind::Protocol) => {
                "graylane: upstream sent an invalid response\n"
            }
            Refusal::BodyCutOff => "graylane: the request body was cut off\n",
            Refusal::BodyStalled => "graylane: the request body stopped arriving\n",
            Refusal::HeadTimeout => "graylane: request header timed out\n",
        }
    }

    /// Whose fault it is.
    pub(crate) fn fault(self) -> Fault {
        match self {
            Refusal::NoService
            | Refusal::BadHost
            | Refusal::Connect
            | Refusal::BodyCutOff
            | Refusal::BodyStalled
            | Refusal::HeadTimeout => Fault::Client,
            Refusal::PoolUnavailable
            | Refusal::NoEndpoint
            | Refusal::BadUpstreamAddress
            | Refusal::Upstream(_) => Fault::Upstream,
        }
    }

    /// The answer as HTTP/1.1 bytes that close the connection, for the places that write
    /// to a socket without hyper (the `408` of a head that timed out).
    pub(crate) fn to_http1_close(self) -> Vec<u8> {
        let status = self.status();
        let body = self.body();
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every refusal's status and fault, pinned: changing one is a visible decision.
    #[test]
    fn refusal_statuses_are_pinned() {
        let all = [
            (Refusal::NoService, 404, Fault::Client),
            (Refusal::BadHost, 400, Fault::Client),
            (Refusal::PoolUnavailable, 503, Fault::Upstream),
            (Refusal::NoEndpoint, 502, Fault::Upstream),
            (Refusal::BadUpstreamAddress, 502, Fault::Upstream),
            (
                Refusal::Upstream(UpstreamErrorKind::Connect),
                502,
                Fault::Upstream,
            ),
            (
                Refusal::Upstream(UpstreamErrorKind::Timeout),
                504,
                Fault::Upstream,
            ),
            (
                Refusal::Upstream(UpstreamErrorKind::Reset),
                502,
                Fault::Upstream,
            ),
            (
                Refusal::Upstream(UpstreamErrorKind::Protocol),
                502,
                Fault::Upstream,
            ),
            (Refusal::BodyCutOff, 400, Fault::Client),
            (Refusal::BodyStalled, 408, Fault::Client),
            (Refusal::HeadTimeout, 408, Fault::Client),
        ];
        for (r, status, fault) in all {
            assert_eq!(r.status().as_u16(), status, "{r:?}");
            assert_eq!(r.fault(), fault, "{r:?}");
            assert!(r.body().starts_with("graylane: ") && r.body().ends_with('\n'));
        }
    }

    #[test]
    fn the_408_bytes_are_a_whole_http1_answer() {
        let raw = Refusal::HeadTimeout.to_http1_close();
        let text = String::from_utf8(raw).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 35\r\nconnection: close\r\n\r\ngraylane: request header timed out\n"
        );
    }
}
