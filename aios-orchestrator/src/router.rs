//! Model routing: local first, then costlier tiers on failure or low confidence.

use std::sync::Arc;

use aios_core::{ModelBackend, ModelId};
use serde::{Deserialize, Serialize};

/// An ordered list of models, cheapest (local) first.
///
/// The runtime tries each tier in order: a tier whose breaker is open is skipped; a tier that
/// fails after its retries, or answers with a confidence below `min_confidence`, hands over to
/// the next. Every hand-over is recorded with its reason in the audit log.
#[derive(Debug, Clone)]
pub struct ModelRouter {
    tiers: Vec<Arc<dyn ModelBackend>>,
    min_confidence: Option<f32>,
}

impl ModelRouter {
    /// A router over `tiers`, cheapest first.
    pub fn new(tiers: Vec<Arc<dyn ModelBackend>>) -> Self {
        Self {
            tiers,
            min_confidence: None,
        }
    }

    /// A router with one model.
    pub fn single(model: Arc<dyn ModelBackend>) -> Self {
        Self::new(vec![model])
    }

    /// Falls back to the next tier when a model reports a confidence below `min`.
    pub fn with_min_confidence(mut self, min: f32) -> Self {
        self.min_confidence = Some(min);
        self
    }

    /// The tiers in order.
    pub fn tiers(&self) -> &[Arc<dyn ModelBackend>] {
        &self.tiers
    }

    /// The confidence floor, if any.
    pub fn min_confidence(&self) -> Option<f32> {
        self.min_confidence
    }
}

/// Why the router left a tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteStep {
    /// The model tried.
    pub model: ModelId,
    /// Why it was left (`breaker open`, `failed: ...`, `confidence 0.40 below 0.70`).
    pub reason: String,
}
