//! `graylane replay`: what a candidate ruleset would have done to logged traffic.

use std::io::Write;
use std::path::Path;

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Placeholder until the replay lands.
    #[error("replay is not built yet")]
    NotBuilt,
}

/// Decides every access-log line of `log` with the live rules of `config` and with
/// `candidate`, and writes the comparison to `out` (a table, or JSON with `json`).
pub fn run(
    config: &Path,
    candidate: &Path,
    log: &Path,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), ReplayError> {
    let _ = (config, candidate, log, json, out);
    Err(ReplayError::NotBuilt)
}
