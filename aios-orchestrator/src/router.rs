//! Model routing: local first, then costlier tiers on failure or low confidence.

use std::sync::Arc;

use aios_core::{ModelBackend, ModelId, ModelPrice, ModelRequest, Money, PriceTable, TokenUsage};
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
    prices: PriceTable,
    default_max_output: u32,
    providers: std::collections::HashMap<ModelId, String>,
}

/// What a model call is estimated to consume before it is made: what governance decides on
/// and what the budgets reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelEstimate {
    /// Prompt tokens (counted as the scripted model counts them: a token per four bytes).
    pub prompt_tokens: u64,
    /// The output allowance: the request's `max_output_tokens`, else the router's default.
    pub output_tokens: u64,
    /// The dearest tier's price of those tokens (zero for tiers without a price).
    pub cost: Money,
}

impl ModelRouter {
    /// A router over `tiers`, cheapest first.
    pub fn new(tiers: Vec<Arc<dyn ModelBackend>>) -> Self {
        Self {
            tiers,
            min_confidence: None,
            prices: PriceTable::default(),
            default_max_output: 1024,
            providers: std::collections::HashMap::new(),
        }
    }

    /// Names the provider of `model` in traces (`gen_ai.provider.name`: `openai`,
    /// `anthropic`, `ollama`, ...); a model without one is traced as `_OTHER`.
    pub fn with_provider(mut self, model: impl Into<ModelId>, provider: impl Into<String>) -> Self {
        self.providers.insert(model.into(), provider.into());
        self
    }

    /// The provider name of `model` in traces.
    pub fn provider(&self, model: &ModelId) -> &str {
        self.providers
            .get(model)
            .map(String::as_str)
            .unwrap_or(crate::telemetry::OTHER_PROVIDER)
    }

    /// Sets the price of `model`, so that calls reserve and are decided on an estimate of
    /// their cost (prompt tokens plus the output allowance) before they are made.
    pub fn with_price(mut self, model: impl Into<ModelId>, price: ModelPrice) -> Self {
        self.prices.set(model.into(), price);
        self
    }

    /// Sets every price at once.
    pub fn with_prices(mut self, prices: PriceTable) -> Self {
        self.prices = prices;
        self
    }

    /// The output allowance estimated for a request without `max_output_tokens` (default
    /// 1024 tokens). A response longer than the allowance is charged in full afterwards.
    pub fn with_default_max_output(mut self, tokens: u32) -> Self {
        self.default_max_output = tokens;
        self
    }

    /// The estimate of `request`: its prompt tokens and output allowance, priced at the
    /// dearest tier that has a price (the router may fall back to any of them).
    pub fn estimate(&self, request: &ModelRequest) -> ModelEstimate {
        let prompt_tokens: u64 = request
            .messages
            .iter()
            .map(|m| aios_core::ScriptedModel::count_tokens(&m.content))
            .sum();
        let output_tokens = u64::from(request.max_output_tokens.unwrap_or(self.default_max_output));
        let usage = TokenUsage::new(prompt_tokens, output_tokens);
        let cost = self
            .tiers
            .iter()
            .filter_map(|m| self.prices.cost(m.id(), usage))
            .max()
            .unwrap_or(Money::ZERO);
        ModelEstimate {
            prompt_tokens,
            output_tokens,
            cost,
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
