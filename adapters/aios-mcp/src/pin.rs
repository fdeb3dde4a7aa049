//! Tool pinning: a SHA-256 over a tool's name, description and input schema.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a server says one of its tools is: the parts that are pinned, and the untrusted hints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// The tool's name (the connector operation).
    pub name: String,
    /// Its description (what the model reads: a changed description can change behaviour).
    #[serde(default)]
    pub description: String,
    /// Its input schema (JSON Schema).
    #[serde(default)]
    pub input_schema: serde_json::Value,
    /// The server's annotations (`readOnlyHint`, `destructiveHint`, `idempotentHint`,
    /// `openWorldHint`). Untrusted: used only for a server marked trusted.
    #[serde(default)]
    pub annotations: ToolHints,
}

/// The annotation hints a server gives for a tool. Hints, never guarantees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolHints {
    /// `readOnlyHint`: the tool does not change its environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// `destructiveHint`: the tool may destroy or overwrite (MCP default: true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destructive: Option<bool>,
    /// `idempotentHint`: calling it twice with the same arguments has no further effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<bool>,
    /// `openWorldHint`: the tool reaches outside the server (MCP default: true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_world: Option<bool>,
}

impl ToolDefinition {
    /// Reads a tool as MCP's `tools/list` returns it (`name`, `description`, `inputSchema`,
    /// `annotations`); `None` without a string `name`.
    pub fn from_mcp(tool: &serde_json::Value) -> Option<Self> {
        let name = tool.get("name")?.as_str()?.to_string();
        let hint = |key: &str| {
            tool.get("annotations")
                .and_then(|a| a.get(key))
                .and_then(serde_json::Value::as_bool)
        };
        Some(Self {
            name,
            description: tool
                .get("description")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_string(),
            input_schema: tool
                .get("inputSchema")
                .cloned()
                .unwrap_or(serde_json::Value::Null),
            annotations: ToolHints {
                read_only: hint("readOnlyHint"),
                destructive: hint("destructiveHint"),
                idempotent: hint("idempotentHint"),
                open_world: hint("openWorldHint"),
            },
        })
    }

    /// The tool's pin: `sha256:` and the hex SHA-256 of the canonical JSON of
    /// `{"description", "inputSchema", "name"}` (keys sorted, no insignificant white space).
    ///
    /// ```
    /// use aios_mcp::ToolDefinition;
    /// let a = ToolDefinition::from_mcp(&serde_json::json!({
    ///     "name": "read_file", "description": "Read a file",
    ///     "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}}
    /// })).unwrap();
    /// let mut b = a.clone();
    /// // key order does not matter, content does
    /// b.input_schema = serde_json::json!({"properties": {"path": {"type": "string"}}, "type": "object"});
    /// assert_eq!(a.pin(), b.pin());
    /// b.description = "Read a file and mail it away".into();
    /// assert_ne!(a.pin(), b.pin());
    /// assert!(a.pin().starts_with("sha256:"));
    /// ```
    pub fn pin(&self) -> String {
        let value = serde_json::json!({
            "name": self.name,
            "description": self.description,
            "inputSchema": self.input_schema,
        });
        let digest = Sha256::digest(canonical_json(&value).as_bytes());
        format!("sha256:{}", hex::encode(digest))
    }

    /// What differs between `self` (before) and `now`, in words: `description`,
    /// `input schema`.
    pub(crate) fn changes_to(&self, now: &ToolDefinition) -> Vec<&'static str> {
        let mut out = vec![];
        if self.description != now.description {
            out.push("description");
        }
        if canonical_json(&self.input_schema) != canonical_json(&now.input_schema) {
            out.push("input schema");
        }
        out
    }
}

/// Canonical JSON: object keys sorted by their UTF-8 bytes, no white space, strings and
/// numbers as `serde_json` writes them.
pub fn canonical_json(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String((*k).clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(*k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The verdict on one tool after checking the server's listing against the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PinStatus {
    /// Configured, and its definition matches its pin: callable.
    Allowed,
    /// Configured without a pin: refused until an operator pins it.
    Unpinned {
        /// The pin of the definition the server offers now.
        current: String,
    },
    /// Its definition no longer matches its pin: refused until an operator pins it again.
    Changed {
        /// The pin in the configuration.
        pinned: String,
        /// The pin of the definition the server offers now.
        current: String,
        /// What changed (`description`, `input schema`) when known: against the listing seen
        /// before in this session; empty when only the pin tells.
        what: Vec<String>,
    },
    /// Offered by the server but not configured: refused, and not an operation at all.
    Unconfigured {
        /// The pin of the definition the server offers.
        current: String,
    },
    /// Configured, but the server does not offer it.
    Missing,
}

impl PinStatus {
    /// Whether the tool may be called.
    pub fn is_allowed(&self) -> bool {
        matches!(self, PinStatus::Allowed)
    }
}

/// One tool's line in a [`PinReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolVerdict {
    /// The tool.
    pub tool: String,
    /// The verdict.
    #[serde(flatten)]
    pub status: PinStatus,
}

impl ToolVerdict {
    /// Why the tool is refused, in one line naming the tool and what changed; `None` when
    /// it is allowed.
    pub fn refusal(&self, server: &str) -> Option<String> {
        let t = &self.tool;
        match &self.status {
            PinStatus::Allowed => None,
            PinStatus::Unpinned { current } => Some(format!(
                "tool `{t}` of MCP server `{server}` has no pin: review it and pin `{current}`"
            )),
            PinStatus::Changed {
                pinned,
                current,
                what,
            } => Some(format!(
                "tool `{t}` of MCP server `{server}` changed since it was pinned ({}): pinned `{pinned}`, now `{current}`; review it and pin it again",
                if what.is_empty() {
                    "its description or input schema".to_string()
                } else {
                    format!("its {}", what.join(" and "))
                }
            )),
            PinStatus::Unconfigured { current } => Some(format!(
                "tool `{t}` of MCP server `{server}` is not configured (its pin is `{current}`)"
            )),
            PinStatus::Missing => Some(format!(
                "tool `{t}` of MCP server `{server}` is configured but the server does not offer it"
            )),
        }
    }
}

/// The result of checking a server's tools against their pins: returned by
/// [`crate::McpConnector::connect`] and refreshed on every re-listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinReport {
    /// The server (connector) name.
    pub server: String,
    /// Which listing of this session it checks (1 for the one at connect).
    pub listing: u64,
    /// One verdict per tool, configured or offered, sorted by name.
    pub tools: Vec<ToolVerdict>,
}

impl PinReport {
    /// The tools that may be called.
    pub fn allowed(&self) -> Vec<&str> {
        self.tools
            .iter()
            .filter(|v| v.status.is_allowed())
            .map(|v| v.tool.as_str())
            .collect()
    }

    /// The verdict on `tool`.
    pub fn verdict(&self, tool: &str) -> Option<&ToolVerdict> {
        self.tools.iter().find(|v| v.tool == tool)
    }

    /// Every refusal, one line each.
    pub fn refusals(&self) -> Vec<String> {
        self.tools
            .iter()
            .filter_map(|v| v.refusal(&self.server))
            .collect()
    }
}

/// The current pins of `tools` as TOML lines an operator can copy into the server's
/// manifest after review (`[tools.NAME]` tables with `pin = "sha256:..."`).
///
/// ```
/// use aios_mcp::{pins_toml, ToolDefinition};
/// let t = ToolDefinition::from_mcp(&serde_json::json!({"name": "read_file", "inputSchema": {"type": "object"}})).unwrap();
/// let toml = pins_toml(&[t.clone()]);
/// assert!(toml.contains("[tools.read_file]"));
/// assert!(toml.contains(&t.pin()));
/// ```
pub fn pins_toml(tools: &[ToolDefinition]) -> String {
    let mut sorted: Vec<&ToolDefinition> = tools.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = String::new();
    for t in sorted {
        let key = if t
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            t.name.clone()
        } else {
            serde_json::Value::String(t.name.clone()).to_string()
        };
        out.push_str(&format!("[tools.{key}]\npin = \"{}\"\n\n", t.pin()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v = serde_json::json!({"b": [1, {"z": true, "a": null}], "a": "x\"y"});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":"x\"y","b":[1,{"a":null,"z":true}]}"#
        );
    }

    #[test]
    fn a_pin_covers_name_description_and_schema_but_not_hints() {
        let base = ToolDefinition::from_mcp(&serde_json::json!({
            "name": "t", "description": "d", "inputSchema": {"type": "object"},
            "annotations": {"readOnlyHint": true}
        }))
        .unwrap_or_else(|| unreachable!());
        let mut renamed = base.clone();
        renamed.name = "u".into();
        let mut hinted = base.clone();
        hinted.annotations.read_only = Some(false);
        assert_ne!(base.pin(), renamed.pin());
        assert_eq!(base.pin(), hinted.pin());
        let mut schema = base.clone();
        schema.input_schema = serde_json::json!({"type": "object", "required": ["x"]});
        assert_eq!(base.changes_to(&schema), vec!["input schema"]);
    }
}
