//! memory workloads (filled in by the memory crate's issue).

use crate::{Config, Measurement};

/// Runs the memory workloads.
pub fn run(_config: &Config) -> Vec<Measurement> {
    Vec::new()
}
