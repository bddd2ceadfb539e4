//! When an attempt has waited too long for its upstream's answer.

use std::pin::Pin;
use std::time::Duration;

use std::time::Instant;

use crate::timer::Sleep;

use crate::upstream::ReclaimableBody;

/// Why an attempt stopped waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deadline {
    /// No response head within `upstream_response` after the request was sent.
    NoHead,
    /// The upload stopped moving for `upstream_response` while waiting on the client.
    ClientStalled,
}

/// Resolves when the attempt has waited too long. `upstream_response` counts from the
/// attempt's start (connecting and sending included) or, with an upload, from its last
/// byte, not through the upload; during the upload it cuts only an upload that stops
/// moving for that long, and whose fault that is depends on which side it was waiting
/// for.
///
/// `from`: when the attempt began (for a first attempt, the request's start: microseconds
/// earlier, and one clock read fewer per request). `timer`: the connection's own, for a
/// request without a body (see `Forward::reuse_timer`), moved to this attempt's
/// deadline; without it, a new one.
pub(super) async fn response_deadline(
    upload: Option<&ReclaimableBody>,
    mut from: Instant,
    timeout: Duration,
    timer: Option<&mut Pin<&mut Sleep>>,
) -> Deadline {
    if let Some(b) = upload {
        loop {
            let before = b.progress();
            tokio::select! {
                _ = b.sent() => break,
                _ = crate::timer::sleep(timeout) => {
                    if b.progress() == before {
                        return if b.waiting_on_client() {
                            Deadline::ClientStalled
                        } else {
                            Deadline::NoHead
                        };
                    }
                }
            }
        }
        from = Instant::now();
    }
    let at = from + timeout;
    match timer {
        Some(t) => {
            t.as_mut().reset(at);
            t.as_mut().await;
        }
        None => crate::timer::sleep_until(at).await,
    }
    Deadline::NoHead
}
