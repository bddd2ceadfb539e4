//! `graylane plan-ranges`: contiguous UID ranges whose summed volume is at most a target
//! share of the total (SPEC §9.4).

use std::io::Write;
use std::path::Path;

/// Why planning failed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Placeholder until the planner lands.
    #[error("plan-ranges is not built yet")]
    NotBuilt,
}

/// Reads `volumes` (`uid,requests` lines), plans ranges for `target` (`3%` or `0.03`),
/// at most `max_ranges` of them, and writes the `uid: { ranges: [...] }` fragment with the
/// share and user count reached to `out`. `Ok(false)` when no range fits (exit 1).
pub fn run(
    volumes: &Path,
    target: &str,
    max_ranges: Option<usize>,
    out: &mut dyn Write,
) -> Result<bool, PlanError> {
    let _ = (volumes, target, max_ranges, out);
    Err(PlanError::NotBuilt)
}
