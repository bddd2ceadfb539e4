//! The command-line tools beside `run`: the offline release tools of SPEC §9.4 (what
//! `graylane plan-ranges` and `graylane replay` compute, apart from any running proxy) and
//! `graylane status`, which reads running replicas' admin listeners.

pub mod plan_ranges;
pub mod replay;
pub mod status;
