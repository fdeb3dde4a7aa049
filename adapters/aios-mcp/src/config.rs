//! How a host describes one MCP server: a builder, or a serde struct read from a manifest.

use std::collections::BTreeMap;
use std::time::Duration;

use aios_core::{CredentialHandle, EffectClass, GovernedField, Money, OperationSpec};
use serde::{Deserialize, Serialize};

use crate::pin::ToolDefinition;

/// One MCP server, its transport and its allowed tools.
///
/// Read from a manifest (TOML or JSON) or built in code:
///
/// ```
/// use aios_mcp::{McpServerConfig, ToolConfig};
/// use aios_core::{EffectClass, Money};
/// let toml = r#"
///     name = "fs"
///     timeout_ms = 5000
///     [transport]
///     kind = "stdio"
///     command = "npx"
///     args = ["@modelcontextprotocol/server-filesystem", "/srv/data"]
///     [transport.secret_env]
///     FS_TOKEN = "fs/token"
///     [tools.read_text_file]
///     pin = "sha256:0000"
///     effect = "read_only"
///     [tools.write_file]
///     pin = "sha256:1111"
///     effect = "irreversible"
///     idempotent = false
///     default_cost = "0.01"
/// "#;
/// let from_toml: McpServerConfig = toml::from_str(toml).unwrap();
/// let built = McpServerConfig::stdio("fs", "npx")
///     .arg("@modelcontextprotocol/server-filesystem")
///     .arg("/srv/data")
///     .secret_env("FS_TOKEN", "fs/token")
///     .timeout(std::time::Duration::from_secs(5))
///     .tool("read_text_file", ToolConfig::pinned("sha256:0000").effect(EffectClass::ReadOnly))
///     .tool(
///         "write_file",
///         ToolConfig::pinned("sha256:1111")
///             .effect(EffectClass::Irreversible)
///             .idempotent(false)
///             .default_cost(Money::from_minor(1)),
///     );
/// assert_eq!(from_toml, built);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    /// The connector's name: agents call `NAME.TOOL`. Letters, digits, `_` and `-`.
    pub name: String,
    /// How to reach the server.
    pub transport: McpTransport,
    /// Whether the server's tool annotations may supply defaults for what the configuration
    /// leaves open (effect class, idempotency). Untrusted servers (the default) fail closed:
    /// a tool without a configured effect is irreversible and not idempotent.
    #[serde(default)]
    pub trusted: bool,
    /// How long one tool call may take before it is cancelled (`notifications/cancelled`)
    /// and reported as a timeout; also bounds connecting and listing. Default 30 s.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The allowed tools, by name. A tool the server offers that is not here is refused.
    #[serde(default)]
    pub tools: BTreeMap<String, ToolConfig>,
}

fn default_timeout_ms() -> u64 {
    30_000
}

/// How to reach an MCP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum McpTransport {
    /// A child process speaking MCP on its standard input and output.
    Stdio {
        /// The program.
        command: String,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
        /// Plain environment variables (no secrets: these may be logged).
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// Environment variables whose values come from the vault, by handle. Secrets reach
        /// the server only this way.
        #[serde(default)]
        secret_env: BTreeMap<String, CredentialHandle>,
        /// The working directory, if not the host's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        /// Whether the child inherits the host's environment (default false: it sees only
        /// `PATH`, `HOME` and what is configured here).
        #[serde(default)]
        inherit_env: bool,
    },
    /// A streamable HTTP endpoint (`http://host/mcp`).
    Http {
        /// The endpoint.
        url: String,
        /// Plain headers (no secrets).
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// Headers whose values come from the vault. Secrets reach the server only this way.
        #[serde(default)]
        secret_headers: BTreeMap<String, SecretHeader>,
    },
}

/// A header whose value is a secret from the vault, optionally after a prefix (`Bearer `).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretHeader {
    /// The vault handle.
    pub handle: CredentialHandle,
    /// Written before the secret (`"Bearer "`).
    #[serde(default)]
    pub prefix: String,
}

/// What governance needs to know about one allowed tool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolConfig {
    /// The pin ([`ToolDefinition::pin`]) of the definition an operator reviewed. Without it,
    /// or when the server's definition no longer matches, the tool is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// Its effect class. Unset: from the annotations for a trusted server, else irreversible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<EffectClass>,
    /// Whether repeating a call has no further effect. Unset: from `idempotentHint` for a
    /// trusted server, else false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent: Option<bool>,
    /// What one call costs at least (zero when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_cost: Option<Money>,
    /// Input fields governance decides on ([`OperationSpec::governs`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub governs: Vec<GovernedField>,
}

impl ToolConfig {
    /// A tool pinned at `pin`, everything else unset.
    pub fn pinned(pin: impl Into<String>) -> Self {
        Self {
            pin: Some(pin.into()),
            ..Self::default()
        }
    }

    /// Sets its effect class.
    pub fn effect(mut self, effect: EffectClass) -> Self {
        self.effect = Some(effect);
        self
    }

    /// Sets whether repeating a call has no further effect.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = Some(idempotent);
        self
    }

    /// Sets what one call costs at least.
    pub fn default_cost(mut self, cost: Money) -> Self {
        self.default_cost = Some(cost);
        self
    }

    /// Governs the input field at JSON pointer `pointer` under `key`.
    pub fn governs(mut self, key: impl Into<String>, pointer: impl Into<String>) -> Self {
        self.governs.push(GovernedField {
            key: key.into(),
            pointer: pointer.into(),
        });
        self
    }

    /// The operation governance sees for tool `name`, given what the server says of it
    /// (`offered`) and whether the server is trusted. Fails closed: what is neither
    /// configured nor (for a trusted server) hinted is irreversible and not idempotent.
    ///
    /// ```
    /// use aios_mcp::{ToolConfig, ToolDefinition};
    /// use aios_core::EffectClass;
    /// let hinted = ToolDefinition::from_mcp(&serde_json::json!({
    ///     "name": "read", "annotations": {"readOnlyHint": true, "idempotentHint": true}
    /// })).unwrap();
    /// let cfg = ToolConfig::pinned(hinted.pin());
    /// let untrusted = cfg.operation("read", Some(&hinted), false);
    /// assert_eq!((untrusted.effect, untrusted.idempotent), (EffectClass::Irreversible, false));
    /// let trusted = cfg.operation("read", Some(&hinted), true);
    /// assert_eq!((trusted.effect, trusted.idempotent), (EffectClass::ReadOnly, true));
    /// ```
    pub fn operation(
        &self,
        name: &str,
        offered: Option<&ToolDefinition>,
        trusted: bool,
    ) -> OperationSpec {
        let hints = offered.filter(|_| trusted).map(|t| t.annotations);
        let effect = self.effect.unwrap_or_else(|| match hints {
            Some(h) if h.read_only == Some(true) => EffectClass::ReadOnly,
            // MCP's defaults: destructive and open-world unless said otherwise; an additive
            // write into the open world (a post, a mail) cannot be undone either
            Some(h) if h.destructive == Some(false) && h.open_world == Some(false) => {
                EffectClass::Reversible
            }
            _ => EffectClass::Irreversible,
        });
        let idempotent = self
            .idempotent
            .unwrap_or_else(|| hints.and_then(|h| h.idempotent).unwrap_or(false));
        let mut op =
            OperationSpec::new(name, effect).default_cost(self.default_cost.unwrap_or_default());
        if !idempotent {
            op = op.not_idempotent();
        }
        for f in &self.governs {
            op = op.governs(f.key.clone(), f.pointer.clone());
        }
        // what a model is offered: the pinned description and schema
        if let Some(t) = offered {
            op = op.described(t.description.clone());
            if t.input_schema.is_object() {
                op = op.input_schema(t.input_schema.clone());
            }
        }
        op
    }
}

impl McpServerConfig {
    /// A server started as the child process `command`, with no tools allowed yet.
    pub fn stdio(name: impl Into<String>, command: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            transport: McpTransport::Stdio {
                command: command.into(),
                args: vec![],
                env: BTreeMap::new(),
                secret_env: BTreeMap::new(),
                cwd: None,
                inherit_env: false,
            },
            trusted: false,
            timeout_ms: default_timeout_ms(),
            tools: BTreeMap::new(),
        }
    }

    /// A server at the streamable HTTP endpoint `url`, with no tools allowed yet.
    pub fn http(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            transport: McpTransport::Http {
                url: url.into(),
                headers: BTreeMap::new(),
                secret_headers: BTreeMap::new(),
            },
            trusted: false,
            timeout_ms: default_timeout_ms(),
            tools: BTreeMap::new(),
        }
    }

    /// Adds an argument (stdio only; ignored for HTTP).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        if let McpTransport::Stdio { args, .. } = &mut self.transport {
            args.push(arg.into());
        }
        self
    }

    /// Sets a plain environment variable (stdio only).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        if let McpTransport::Stdio { env, .. } = &mut self.transport {
            env.insert(key.into(), value.into());
        }
        self
    }

    /// Sets environment variable `key` to the secret under vault `handle` (stdio only).
    pub fn secret_env(mut self, key: impl Into<String>, handle: impl Into<String>) -> Self {
        if let McpTransport::Stdio { secret_env, .. } = &mut self.transport {
            secret_env.insert(key.into(), CredentialHandle::new(handle));
        }
        self
    }

    /// Sets the child's working directory (stdio only).
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        if let McpTransport::Stdio { cwd, .. } = &mut self.transport {
            *cwd = Some(dir.into());
        }
        self
    }

    /// Lets the child inherit the host's whole environment (stdio only).
    pub fn inherit_env(mut self) -> Self {
        if let McpTransport::Stdio { inherit_env, .. } = &mut self.transport {
            *inherit_env = true;
        }
        self
    }

    /// Sets a plain header (HTTP only).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let McpTransport::Http { headers, .. } = &mut self.transport {
            headers.insert(name.into(), value.into());
        }
        self
    }

    /// Sets header `name` to `prefix` and the secret under vault `handle` (HTTP only).
    pub fn secret_header(
        mut self,
        name: impl Into<String>,
        handle: impl Into<String>,
        prefix: impl Into<String>,
    ) -> Self {
        if let McpTransport::Http { secret_headers, .. } = &mut self.transport {
            secret_headers.insert(
                name.into(),
                SecretHeader {
                    handle: CredentialHandle::new(handle),
                    prefix: prefix.into(),
                },
            );
        }
        self
    }

    /// Marks the server trusted: its annotations fill in what the configuration leaves open.
    pub fn trusted(mut self, trusted: bool) -> Self {
        self.trusted = trusted;
        self
    }

    /// Sets the per-call timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Allows tool `name` as configured.
    pub fn tool(mut self, name: impl Into<String>, tool: ToolConfig) -> Self {
        self.tools.insert(name.into(), tool);
        self
    }

    /// Pins every tool in `offered` at its current definition, keeping what is already
    /// configured for it (effect, idempotency, cost). For an operator after review, or for
    /// tests; [`crate::pins_toml`] prints the same pins for a manifest.
    pub fn pin_all(mut self, offered: &[ToolDefinition]) -> Self {
        for t in offered {
            self.tools.entry(t.name.clone()).or_default().pin = Some(t.pin());
        }
        self
    }

    pub(crate) fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }
}
