//! MCP servers as governed AIOS connectors.
//!
//! A [Model Context Protocol](https://modelcontextprotocol.io) server offers tools; this
//! crate makes each allowed tool an operation of a [`Connector`](aios_core::Connector) named
//! after the server, so every call passes the orchestrator's governance, budgets, journal,
//! retries and audit like any other side effect.
//!
//! - [`McpServerConfig`]: the server (stdio child process or streamable HTTP), whether it is
//!   trusted, the call timeout, and per tool a [`ToolConfig`]: its pin, effect class,
//!   idempotency and default cost. A builder, or serde from a TOML/JSON manifest.
//! - [`McpConnector::connect`]: starts the server, initialises, lists every page of tools,
//!   checks each against its pin and returns the [`PinReport`].
//! - Pins ([`ToolDefinition::pin`]): a SHA-256 of a tool's name, description and input
//!   schema as canonical JSON. A tool that is not configured, not pinned, or whose definition
//!   changed is refused with a reason naming it and what changed; [`pins_toml`] and
//!   [`McpConnector::current_pins`] print the current pins for an operator to copy.
//! - Fail closed: annotations (`readOnlyHint`, ...) are hints, used only for a server marked
//!   `trusted`; otherwise a tool without a configured effect is irreversible and not
//!   idempotent.
//! - Secrets come from a [`CredentialVault`](aios_core::CredentialVault) and reach a stdio
//!   server only as the environment variables configured, an HTTP server only as headers;
//!   they are scrubbed from outputs and errors.
//!
//! Features: `http` (default) for streamable HTTP; `test-server` builds the small rmcp
//! server the fault tests use.
//!
//! ```
//! use aios_core::{Connector, EffectClass};
//! use aios_mcp::{McpServerConfig, ToolConfig, ToolDefinition};
//! let read = ToolDefinition::from_mcp(&serde_json::json!({
//!     "name": "read_text_file",
//!     "description": "Read a file",
//!     "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
//!     "annotations": {"readOnlyHint": true}
//! })).unwrap();
//! let config = McpServerConfig::stdio("fs", "node")
//!     .tool("read_text_file", ToolConfig::pinned(read.pin()).effect(EffectClass::ReadOnly))
//!     .tool("write_file", ToolConfig::pinned("sha256:reviewed"));
//! let op = config.tools["write_file"].operation("write_file", None, config.trusted);
//! assert_eq!(op.effect, EffectClass::Irreversible, "unconfigured effect: fail closed");
//! assert!(!op.idempotent);
//! ```

mod config;
mod connector;
mod pin;

pub use config::{McpServerConfig, McpTransport, SecretHeader, ToolConfig};
pub use connector::{ConnectOptions, McpConnectError, McpConnector, IDEMPOTENCY_META_KEY};
pub use pin::{
    canonical_json, pins_toml, PinReport, PinStatus, ToolDefinition, ToolHints, ToolVerdict,
};

/// The README, compiled as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
