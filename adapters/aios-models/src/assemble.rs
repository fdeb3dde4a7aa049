//! Pieces both chat providers share: tool names, tool calls assembled from parts, the event
//! loop of a streamed answer and the final response.

use std::collections::{BTreeMap, HashMap};

use aios_core::{
    FinishReason, ModelError, ModelId, ModelResponse, PriceTable, Secret, TokenUsage, ToolCall,
    ToolSpec,
};
use futures::StreamExt;

use crate::http::{malformed, transport_error};
use crate::sse::{SseDecoder, SseEvent};

/// Tool names as sent (provider function names) and as read back (the offered names).
#[derive(Debug, Default)]
pub(crate) struct ToolNames {
    back: HashMap<String, String>,
}

impl ToolNames {
    pub(crate) fn new(tools: &[ToolSpec]) -> Self {
        Self {
            back: tools
                .iter()
                .map(|t| (ToolSpec::function_name(&t.name), t.name.clone()))
                .collect(),
        }
    }

    /// The name sent to the provider.
    pub(crate) fn outgoing(name: &str) -> String {
        ToolSpec::function_name(name)
    }

    /// The offered tool a provider name refers to; an unknown name is kept as it came.
    pub(crate) fn incoming(&self, name: &str) -> String {
        self.back
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_owned())
    }
}

/// A tool call assembled from parts.
#[derive(Debug, Default)]
pub(crate) struct PartialCall {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) arguments: String,
}

impl PartialCall {
    /// Adds a streamed piece: ids and names are set by the first piece that has them (a
    /// server repeating them is harmless), arguments are concatenated.
    pub(crate) fn add(&mut self, id: Option<&str>, name: Option<&str>, arguments: &str) {
        if let Some(id) = id.filter(|s| !s.is_empty()) {
            if self.id.is_empty() {
                self.id = id.to_owned();
            }
        }
        if let Some(name) = name.filter(|s| !s.is_empty()) {
            if self.name.is_empty() {
                self.name = name.to_owned();
            } else if self.name != name {
                self.name.push_str(name);
            }
        }
        self.arguments.push_str(arguments);
    }

    /// The call; arguments that are not JSON (a model's mistake) are kept as a JSON string so
    /// the caller sees exactly what the model sent, empty arguments are `{}`.
    pub(crate) fn finish(self, names: &ToolNames) -> ToolCall {
        ToolCall {
            id: self.id,
            name: names.incoming(&self.name),
            arguments: parse_arguments(&self.arguments),
        }
    }
}

pub(crate) fn parse_arguments(text: &str) -> serde_json::Value {
    if text.trim().is_empty() {
        return serde_json::Value::Object(serde_json::Map::new());
    }
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

pub(crate) fn finish_calls(
    calls: BTreeMap<usize, PartialCall>,
    names: &ToolNames,
) -> Vec<ToolCall> {
    calls.into_values().map(|c| c.finish(names)).collect()
}

/// What a provider reported, before it becomes a [`ModelResponse`].
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) content: String,
    pub(crate) tool_calls: Vec<ToolCall>,
    pub(crate) finish: FinishReason,
    pub(crate) usage: TokenUsage,
    /// The answer's confidence, when the provider's answer gives one.
    pub(crate) confidence: Option<f32>,
}

/// The response: `ToolCalls` exactly when calls are present; calls cut off by the token limit
/// are dropped (their arguments are incomplete) and the answer reports `Length`.
pub(crate) fn response(model: &ModelId, prices: &PriceTable, answer: Answer) -> ModelResponse {
    let Answer {
        content,
        mut tool_calls,
        finish,
        usage,
        confidence,
    } = answer;
    let finish = match finish {
        FinishReason::Length => {
            tool_calls.clear();
            FinishReason::Length
        }
        _ if !tool_calls.is_empty() => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    };
    ModelResponse {
        model: model.clone(),
        content,
        tool_calls,
        usage,
        cost: prices.cost(model, usage).unwrap_or_default(),
        confidence,
        finish,
    }
}

/// Feeds the events of a streamed body to `on_event` until it reports the end (`Ok(true)`);
/// returns whether the end was reached before the body ended.
pub(crate) async fn for_each_event<F>(
    response: reqwest::Response,
    model: &ModelId,
    secret: Option<&Secret>,
    mut on_event: F,
) -> Result<bool, ModelError>
where
    F: FnMut(SseEvent) -> Result<bool, ModelError>,
{
    let mut body = response.bytes_stream();
    let mut decoder = SseDecoder::default();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| transport_error(model, "stream interrupted", &e, secret))?;
        for event in decoder.push(&chunk).map_err(|d| malformed(model, d))? {
            if on_event(event)? {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Reads a whole body: a cut-off body is a transport error, a timeout a timeout.
pub(crate) async fn read_body(
    response: reqwest::Response,
    model: &ModelId,
    secret: Option<&Secret>,
) -> Result<String, ModelError> {
    let bytes = response
        .bytes()
        .await
        .map_err(|e| transport_error(model, "response body cut off", &e, secret))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call() -> ToolCall {
        ToolCall {
            id: "c".into(),
            name: "t".into(),
            arguments: json!({}),
        }
    }

    #[test]
    fn finish_is_tool_calls_exactly_when_calls_are_kept() {
        let cases = [
            (FinishReason::Stop, 0, FinishReason::Stop, 0),
            (FinishReason::ToolCalls, 0, FinishReason::Stop, 0),
            (FinishReason::Stop, 1, FinishReason::ToolCalls, 1),
            (FinishReason::ToolCalls, 2, FinishReason::ToolCalls, 2),
            (FinishReason::Length, 1, FinishReason::Length, 0),
            (FinishReason::Length, 0, FinishReason::Length, 0),
        ];
        for (reported, calls, finish, kept) in cases {
            let r = response(
                &ModelId::new("m"),
                &PriceTable::default(),
                Answer {
                    content: String::new(),
                    tool_calls: vec![call(); calls],
                    finish: reported,
                    usage: TokenUsage::new(1, 1),
                    confidence: None,
                },
            );
            assert_eq!(
                (r.finish, r.tool_calls.len()),
                (finish, kept),
                "{reported:?} {calls}"
            );
            assert_eq!(r.cost, aios_core::Money::ZERO, "no price, no cost");
        }
    }

    #[test]
    fn arguments_and_names() {
        assert_eq!(parse_arguments(""), json!({}));
        assert_eq!(parse_arguments("{\"a\":1}"), json!({"a": 1}));
        assert_eq!(parse_arguments("{\"a\":"), json!("{\"a\":"));
        let names = ToolNames::new(&[ToolSpec {
            name: "email.send".into(),
            description: String::new(),
            parameters: json!({}),
        }]);
        assert_eq!(ToolNames::outgoing("email.send"), "email__send");
        assert_eq!(names.incoming("email__send"), "email.send");
        assert_eq!(names.incoming("other__op"), "other__op");
        let mut p = PartialCall::default();
        p.add(Some("id1"), Some("email__send"), "{\"a\"");
        p.add(Some("id1"), Some("email__send"), ":2}");
        let c = p.finish(&names);
        assert_eq!((c.id.as_str(), c.name.as_str()), ("id1", "email.send"));
        assert_eq!(c.arguments, json!({"a": 2}));
    }
}
