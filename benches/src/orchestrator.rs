//! orchestrator workloads (filled in by the orchestrator crate's issue).

use crate::{Config, Measurement};

/// Runs the orchestrator workloads.
pub fn run(_config: &Config) -> Vec<Measurement> {
    Vec::new()
}
