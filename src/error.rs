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
