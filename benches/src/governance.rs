//! governance workloads (filled in by the governance crate's issue).

use crate::{Config, Measurement};

/// Runs the governance workloads.
pub fn run(_config: &Config) -> Vec<Measurement> {
    Vec::new()
}
