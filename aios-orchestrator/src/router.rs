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

/// Local-first routing, as [`OrchestratorBuilder::local_first`](crate::OrchestratorBuilder::local_first)
/// takes it: a local tier (Ollama, vLLM, llama.cpp behind `aios_models::OpenAiCompatible`)
/// tried first, and a cloud tier (`aios_models::Anthropic`, OpenAI) it falls back to when
/// the local model fails after its retries, its circuit breaker is open, or it answers with a
/// confidence below `min_confidence`. Every hand-over is audited with its reason
/// (`failed: ...`, `breaker open (...)`, `confidence 0.40 below 0.70`) on the
/// `ModelCalled` events, and the provider names go to the `chat` spans.
///
/// An answer without a confidence is accepted: ask the local adapter for one
/// (`OpenAiConfig::with_logprob_confidence`) when the floor should apply.
///
/// ```
/// use std::sync::Arc;
/// use aios_core::ScriptedModel;
/// use aios_orchestrator::LocalFirst;
/// let routing = LocalFirst::new(
///     Arc::new(ScriptedModel::new("llama3.2")),
///     Arc::new(ScriptedModel::new("claude-sonnet")),
/// )
/// .min_confidence(0.7)
/// .providers("ollama", "anthropic");
/// let router = routing.router();
/// assert_eq!(router.tiers().len(), 2);
/// assert_eq!(router.min_confidence(), Some(0.7));
/// assert_eq!(router.provider(&"claude-sonnet".into()), "anthropic");
/// ```
#[derive(Debug, Clone)]
pub struct LocalFirst {
    /// The model tried first.
    pub local: Arc<dyn ModelBackend>,
    /// The model fallen back to.
    pub cloud: Arc<dyn ModelBackend>,
    /// The confidence below which a local answer is handed to the cloud tier.
    pub min_confidence: Option<f32>,
    /// Provider names for traces: (local, cloud).
    pub providers: Option<(String, String)>,
    /// Prices of the models, for estimates before a call.
    pub prices: PriceTable,
}

impl LocalFirst {
    /// `local` first, then `cloud`; no confidence floor, no prices, no provider names.
    pub fn new(local: Arc<dyn ModelBackend>, cloud: Arc<dyn ModelBackend>) -> Self {
        Self {
            local,
            cloud,
            min_confidence: None,
            providers: None,
            prices: PriceTable::default(),
        }
    }

    /// Hands a local answer with a confidence below `min` to the cloud tier.
    pub fn min_confidence(mut self, min: f32) -> Self {
        self.min_confidence = Some(min);
        self
    }

    /// Names the providers in traces (`ollama`, `anthropic`, ...).
    pub fn providers(mut self, local: impl Into<String>, cloud: impl Into<String>) -> Self {
        self.providers = Some((local.into(), cloud.into()));
        self
    }

    /// Sets the prices used for estimates.
    pub fn prices(mut self, prices: PriceTable) -> Self {
        self.prices = prices;
        self
    }

    /// The router: two tiers, the floor, the prices and the provider names.
    pub fn router(self) -> ModelRouter {
        let (local_id, cloud_id) = (self.local.id().clone(), self.cloud.id().clone());
        let mut router = ModelRouter::new(vec![self.local, self.cloud]).with_prices(self.prices);
        if let Some(min) = self.min_confidence {
            router = router.with_min_confidence(min);
        }
        if let Some((local, cloud)) = self.providers {
            router = router
                .with_provider(local_id, local)
                .with_provider(cloud_id, cloud);
        }
        router
    }
}
