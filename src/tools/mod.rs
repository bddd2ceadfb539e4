//! Offline release tools (SPEC §9.4): what `graylane plan-ranges` and `graylane replay`
//! compute, apart from any running proxy.

pub mod plan_ranges;
pub mod replay;
