//! The connector: one MCP server session, its pinned tools, and the calls.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use aios_core::{
    AuditEvent, AuditLog, AuditRecord, Clock, Connector, ConnectorCall, ConnectorDescriptor,
    ConnectorError, ConnectorId, ConnectorOutput, CredentialVault, EffectClass, Money, Principal,
    Secret, SystemClock,
};
use async_trait::async_trait;
use rmcp::model::{CallToolRequestParams, ErrorCode};
use rmcp::service::{NotificationContext, RunningService, ServiceError};
use rmcp::{ClientHandler, RoleClient, ServiceExt};

use crate::config::{McpServerConfig, McpTransport};
use crate::pin::{pins_toml, PinReport, PinStatus, ToolDefinition, ToolVerdict};

/// The `_meta` key under which every `tools/call` carries the call's idempotency key.
pub const IDEMPOTENCY_META_KEY: &str = "aios/idempotency_key";

/// What [`McpConnector::connect`] needs besides the server's configuration.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Where the secrets named by `secret_env` and `secret_headers` are; required when any
    /// is named.
    pub vault: Option<Arc<dyn CredentialVault>>,
    /// Where each pin check (at connect, after a restart, after `tools/list_changed`) is
    /// recorded as an `AuditEvent::Custom` of kind `mcp.pin_check`.
    pub audit: Option<Arc<dyn AuditLog>>,
    /// The clock stamping those audit records.
    pub clock: Arc<dyn Clock>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            vault: None,
            audit: None,
            clock: Arc::new(SystemClock),
        }
    }
}

impl ConnectOptions {
    /// Resolves secrets from `vault`.
    pub fn vault(mut self, vault: Arc<dyn CredentialVault>) -> Self {
        self.vault = Some(vault);
        self
    }

    /// Records pin checks in `audit`.
    pub fn audit(mut self, audit: Arc<dyn AuditLog>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Stamps audit records from `clock`.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

/// Why connecting to an MCP server failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum McpConnectError {
    /// The configuration cannot work (a bad header, a secret without a vault).
    #[error("mcp server `{server}`: invalid configuration: {detail}")]
    Config {
        /// The server.
        server: String,
        /// What is wrong.
        detail: String,
    },
    /// A secret could not be read from the vault (the handle is named, never the value).
    #[error("mcp server `{server}`: credential `{handle}`: {detail}")]
    Credential {
        /// The server.
        server: String,
        /// The vault handle.
        handle: String,
        /// What the vault said.
        detail: String,
    },
    /// The child process could not be started, or the endpoint not reached.
    #[error("mcp server `{server}` could not be started: {detail}")]
    Start {
        /// The server.
        server: String,
        /// Why.
        detail: String,
    },
    /// Initialising or listing tools failed or timed out.
    #[error("mcp server `{server}`: {detail}")]
    Protocol {
        /// The server.
        server: String,
        /// What failed.
        detail: String,
    },
    /// The pin check could not be recorded in the audit log.
    #[error("mcp server `{server}`: the pin check could not be audited: {detail}")]
    Audit {
        /// The server.
        server: String,
        /// What the log said.
        detail: String,
    },
}

/// Marks the tool list stale when the server says it changed.
#[derive(Debug, Clone)]
struct Watcher {
    stale: Arc<AtomicBool>,
    changes: Arc<AtomicU64>,
}

impl ClientHandler for Watcher {
    fn on_tool_list_changed(
        &self,
        _context: NotificationContext<RoleClient>,
    ) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.stale.store(true, Ordering::SeqCst);
        self.changes.fetch_add(1, Ordering::SeqCst);
        std::future::ready(())
    }
}

type Peer = rmcp::service::Peer<RoleClient>;

struct Session {
    service: RunningService<RoleClient, Watcher>,
    generation: u64,
}

#[derive(Default)]
struct ToolTable {
    offered: BTreeMap<String, ToolDefinition>,
    validators: BTreeMap<String, Arc<jsonschema::Validator>>,
    report: Option<PinReport>,
}

struct Inner {
    config: McpServerConfig,
    id: ConnectorId,
    descriptor: ConnectorDescriptor,
    options: ConnectOptions,
    secrets: parking_lot::RwLock<Vec<Secret>>,
    session: tokio::sync::Mutex<Option<Session>>,
    tools: parking_lot::RwLock<ToolTable>,
    stale: Arc<AtomicBool>,
    changes: Arc<AtomicU64>,
    listings: AtomicU64,
    starts: AtomicU64,
}

/// An MCP server as a governed connector named after it: each configured tool is an
/// operation whose effect class, idempotency and cost come from the configuration (or, for a
/// trusted server only, from the server's annotations), and which may be called only while
/// its definition matches its pin.
///
/// Clones share the session. A crashed stdio server fails the call in flight as
/// `Unavailable` (transient) and is started again on the next call; the orchestrator's
/// circuit breaker guards against a server that keeps crashing.
///
/// ```no_run
/// use aios_mcp::{ConnectOptions, McpConnector, McpServerConfig};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = McpServerConfig::stdio("fs", "node").arg("server.js").arg("/srv/data");
/// let (fs, report) = McpConnector::connect(config, ConnectOptions::default()).await?;
/// // nothing is pinned yet: every tool is refused, and the operator copies the pins
/// assert!(report.allowed().is_empty());
/// println!("{}", fs.current_pins());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct McpConnector {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for McpConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpConnector")
            .field("server", &self.inner.config.name)
            .field("operations", &self.inner.descriptor.operations.len())
            .finish_non_exhaustive()
    }
}

impl McpConnector {
    /// Starts (or reaches) the server, initialises the session, lists every page of tools
    /// and checks them against their pins. Refused tools do not fail the connect: the report
    /// says which and why, and calling them fails until they are pinned again.
    pub async fn connect(
        config: McpServerConfig,
        options: ConnectOptions,
    ) -> Result<(McpConnector, PinReport), McpConnectError> {
        let name = config.name.clone();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(McpConnectError::Config {
                server: name.escape_debug().to_string(),
                detail: "the name must be letters, digits, `_` or `-`".into(),
            });
        }
        let stale = Arc::new(AtomicBool::new(false));
        let changes = Arc::new(AtomicU64::new(0));
        let watcher = Watcher {
            stale: stale.clone(),
            changes: changes.clone(),
        };
        let (service, secrets) = start(&config, &options, watcher).await?;
        let offered = list(&config, service.peer()).await?;
        let operations: Vec<_> = config
            .tools
            .iter()
            .map(|(tool, c)| {
                c.operation(
                    tool,
                    offered.iter().find(|t| &t.name == tool),
                    config.trusted,
                )
            })
            .collect();
        let descriptor = ConnectorDescriptor {
            id: ConnectorId::new(name.clone()),
            effect: operations
                .iter()
                .map(|o| o.effect)
                .max()
                .unwrap_or(EffectClass::ReadOnly),
            scopes: vec![],
            idempotent: operations.iter().all(|o| o.idempotent),
            default_cost: Money::ZERO,
            operations,
        };
        let inner = Arc::new(Inner {
            id: ConnectorId::new(name),
            descriptor,
            options,
            secrets: parking_lot::RwLock::new(secrets),
            session: tokio::sync::Mutex::new(Some(Session {
                service,
                generation: 1,
            })),
            tools: parking_lot::RwLock::default(),
            stale,
            changes,
            listings: AtomicU64::new(0),
            starts: AtomicU64::new(1),
            config,
        });
        let connector = McpConnector { inner };
        let report = connector.check(offered);
        connector
            .audit(&report)
            .await
            .map_err(|detail| McpConnectError::Audit {
                server: connector.inner.config.name.clone(),
                detail,
            })?;
        Ok((connector, report))
    }

    /// The latest pin check.
    pub fn pin_report(&self) -> PinReport {
        self.inner
            .tools
            .read()
            .report
            .clone()
            .unwrap_or_else(|| PinReport {
                server: self.inner.config.name.clone(),
                listing: 0,
                tools: vec![],
            })
    }

    /// The tools the server offered at the latest listing.
    pub fn offered(&self) -> Vec<ToolDefinition> {
        self.inner.tools.read().offered.values().cloned().collect()
    }

    /// The current pins of every offered tool, as `[tools.NAME]` TOML an operator copies into
    /// the manifest after reviewing each tool ([`pins_toml`]).
    pub fn current_pins(&self) -> String {
        pins_toml(&self.offered())
    }

    /// How many `notifications/tools/list_changed` the server has sent.
    pub fn list_changes(&self) -> u64 {
        self.inner.changes.load(Ordering::SeqCst)
    }

    /// How many times the server was started (1 until it is restarted after a crash).
    pub fn starts(&self) -> u64 {
        self.inner.starts.load(Ordering::SeqCst)
    }

    /// Lists the tools again now and re-checks the pins (this also happens by itself before
    /// the next call after `notifications/tools/list_changed`).
    pub async fn refresh(&self) -> Result<PinReport, ConnectorError> {
        let (peer, _) = self.session().await?;
        self.inner.stale.store(false, Ordering::SeqCst);
        self.relist(&peer).await
    }

    /// Closes the session (the child process is stopped). A later call starts it again.
    pub async fn close(&self) {
        let mut slot = self.inner.session.lock().await;
        if let Some(mut s) = slot.take() {
            let _ = s.service.close().await;
        }
    }

    fn check(&self, offered: Vec<ToolDefinition>) -> PinReport {
        let mut table = self.inner.tools.write();
        let previous = std::mem::take(&mut table.offered);
        let mut verdicts = BTreeMap::new();
        let mut validators = BTreeMap::new();
        for t in &offered {
            let status = match self.inner.config.tools.get(&t.name) {
                None => PinStatus::Unconfigured { current: t.pin() },
                Some(c) => match &c.pin {
                    None => PinStatus::Unpinned { current: t.pin() },
                    Some(p) if *p == t.pin() => PinStatus::Allowed,
                    Some(p) => PinStatus::Changed {
                        pinned: p.clone(),
                        current: t.pin(),
                        what: previous
                            .get(&t.name)
                            .map(|before| {
                                before.changes_to(t).into_iter().map(String::from).collect()
                            })
                            .unwrap_or_default(),
                    },
                },
            };
            if status.is_allowed() {
                if let Ok(v) = jsonschema::validator_for(&t.input_schema) {
                    validators.insert(t.name.clone(), Arc::new(v));
                }
            }
            verdicts.insert(t.name.clone(), status);
        }
        for tool in self.inner.config.tools.keys() {
            verdicts.entry(tool.clone()).or_insert(PinStatus::Missing);
        }
        let report = PinReport {
            server: self.inner.config.name.clone(),
            listing: self.inner.listings.fetch_add(1, Ordering::SeqCst) + 1,
            tools: verdicts
                .into_iter()
                .map(|(tool, status)| ToolVerdict { tool, status })
                .collect(),
        };
        for line in report.refusals() {
            tracing::warn!(server = %self.inner.config.name, "{line}");
        }
        table.offered = offered.into_iter().map(|t| (t.name.clone(), t)).collect();
        table.validators = validators;
        table.report = Some(report.clone());
        report
    }

    async fn audit(&self, report: &PinReport) -> Result<(), String> {
        let Some(log) = &self.inner.options.audit else {
            return Ok(());
        };
        let data = serde_json::to_value(report).map_err(|e| e.to_string())?;
        let record = AuditRecord::new(
            Principal::System,
            AuditEvent::Custom {
                kind: "mcp.pin_check".into(),
                data,
            },
        )
        .at(self.inner.options.clock.now());
        log.append(record)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn relist(&self, peer: &Peer) -> Result<PinReport, ConnectorError> {
        let offered = match list(&self.inner.config, peer).await {
            Ok(offered) => offered,
            Err(e) => {
                // still stale: the next call lists again before it may proceed
                self.inner.stale.store(true, Ordering::SeqCst);
                return Err(self.unavailable(e.to_string()));
            }
        };
        let report = self.check(offered);
        if let Err(e) = self.audit(&report).await {
            tracing::warn!(server = %self.inner.config.name, "the pin check could not be audited: {e}");
        }
        Ok(report)
    }

    /// The live session's peer, starting the server again when it is gone.
    async fn session(&self) -> Result<(Peer, u64), ConnectorError> {
        let mut slot = self.inner.session.lock().await;
        if let Some(s) = slot.as_ref() {
            if !s.service.is_closed() && !s.service.peer().is_transport_closed() {
                return Ok((s.service.peer().clone(), s.generation));
            }
        }
        let generation = slot.as_ref().map(|s| s.generation).unwrap_or(0) + 1;
        if let Some(old) = slot.take() {
            drop(old);
        }
        let watcher = Watcher {
            stale: self.inner.stale.clone(),
            changes: self.inner.changes.clone(),
        };
        let (service, secrets) = start(&self.inner.config, &self.inner.options, watcher)
            .await
            .map_err(|e| self.unavailable(e.to_string()))?;
        {
            let mut known = self.inner.secrets.write();
            for s in secrets {
                if !known.contains(&s) {
                    known.push(s);
                }
            }
        }
        self.inner.starts.fetch_add(1, Ordering::SeqCst);
        let peer = service.peer().clone();
        *slot = Some(Session {
            service,
            generation,
        });
        drop(slot);
        // a restarted server lists again: its tools may differ from before
        self.inner.stale.store(false, Ordering::SeqCst);
        self.relist(&peer).await?;
        Ok((peer, generation))
    }

    async fn forget(&self, generation: u64) {
        let mut slot = self.inner.session.lock().await;
        if slot.as_ref().map(|s| s.generation) == Some(generation) {
            *slot = None;
        }
    }

    fn unavailable(&self, detail: String) -> ConnectorError {
        ConnectorError::Unavailable {
            connector: self.inner.id.clone(),
            detail: self.scrub(&detail),
        }
    }

    fn failed(&self, detail: String) -> ConnectorError {
        ConnectorError::Failed {
            connector: self.inner.id.clone(),
            detail: self.scrub(&detail),
        }
    }

    fn invalid(&self, operation: &str, detail: String) -> ConnectorError {
        ConnectorError::InvalidInput {
            connector: self.inner.id.clone(),
            operation: operation.to_string(),
            detail: self.scrub(&detail),
        }
    }

    /// `text` with every secret this connector handed to the server replaced by `***`.
    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in self.inner.secrets.read().iter() {
            if !s.expose().is_empty() {
                out = out.replace(s.expose(), "***");
            }
        }
        out
    }

    fn scrub_value(&self, value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::String(s) => serde_json::Value::String(self.scrub(&s)),
            serde_json::Value::Array(items) => {
                items.into_iter().map(|v| self.scrub_value(v)).collect()
            }
            serde_json::Value::Object(map) => map
                .into_iter()
                .map(|(k, v)| (self.scrub(&k), self.scrub_value(v)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
            other => other,
        }
    }

    fn map_service_error(&self, tool: &str, e: ServiceError) -> ConnectorError {
        match e {
            ServiceError::McpError(err) => {
                let detail = format!("tool `{tool}`: {} (code {})", err.message, err.code.0);
                match err.code {
                    ErrorCode::INVALID_PARAMS => self.invalid(tool, detail),
                    // -32000..-32099 are server errors; a busy or overloaded server may say so
                    ErrorCode(code) if (-32099..=-32000).contains(&code) => {
                        self.unavailable(detail)
                    }
                    _ => self.failed(detail),
                }
            }
            ServiceError::Timeout { .. } => ConnectorError::Timeout {
                connector: self.inner.id.clone(),
            },
            ServiceError::TransportClosed | ServiceError::TransportSend(_) => self.unavailable(
                format!("the server went away during `{tool}` (it is started again on the next call): {e}"),
            ),
            other => self.failed(format!("tool `{tool}`: {other}")),
        }
    }
}

/// Starts the server and initialises the session; returns it and the secrets it was given.
async fn start(
    config: &McpServerConfig,
    options: &ConnectOptions,
    watcher: Watcher,
) -> Result<(RunningService<RoleClient, Watcher>, Vec<Secret>), McpConnectError> {
    let server = config.name.clone();
    let secret = |handle: aios_core::CredentialHandle| {
        let vault = options.vault.clone();
        let server = server.clone();
        async move {
            let vault = vault.ok_or_else(|| McpConnectError::Config {
                server: server.clone(),
                detail: format!("credential `{handle}` is named but no vault is configured"),
            })?;
            vault
                .get(&handle)
                .await
                .map_err(|e| McpConnectError::Credential {
                    server,
                    handle: handle.to_string(),
                    detail: e.to_string(),
                })
        }
    };
    let protocol = |detail: String| McpConnectError::Protocol {
        server: server.clone(),
        detail,
    };
    let timeout = config.call_timeout();
    match &config.transport {
        McpTransport::Stdio {
            command,
            args,
            env,
            secret_env,
            cwd,
            inherit_env,
        } => {
            let mut cmd = tokio::process::Command::new(command);
            cmd.args(args);
            if !inherit_env {
                cmd.env_clear();
                for key in ["PATH", "HOME", "SYSTEMROOT", "TMPDIR"] {
                    if let Some(v) = std::env::var_os(key) {
                        cmd.env(key, v);
                    }
                }
            }
            cmd.envs(env);
            let mut secrets = vec![];
            for (key, handle) in secret_env {
                let s = secret(handle.clone()).await?;
                cmd.env(key, s.expose());
                secrets.push(s);
            }
            if let Some(dir) = cwd {
                cmd.current_dir(dir);
            }
            cmd.kill_on_drop(true);
            let (child, _) = rmcp::transport::TokioChildProcess::builder(cmd)
                // the server's own log may print what it was given; it never reaches ours
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| McpConnectError::Start {
                    server: server.clone(),
                    detail: format!("`{command}`: {e}"),
                })?;
            let service = tokio::time::timeout(timeout, watcher.serve(child))
                .await
                .map_err(|_| protocol(format!("initialise timed out after {timeout:?}")))?
                .map_err(|e| protocol(format!("initialise failed: {e}")))?;
            Ok((service, secrets))
        }
        #[cfg(feature = "http")]
        McpTransport::Http {
            url,
            headers,
            secret_headers,
        } => {
            use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
            use rmcp::transport::StreamableHttpClientTransport;
            let mut map = std::collections::HashMap::new();
            let bad = |name: &str, what: &str| McpConnectError::Config {
                server: server.clone(),
                detail: format!("header `{name}`: {what}"),
            };
            for (name, value) in headers {
                let n = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| bad(name, "not a header name"))?;
                let v = http::HeaderValue::from_str(value)
                    .map_err(|_| bad(name, "not a header value"))?;
                map.insert(n, v);
            }
            let mut secrets = vec![];
            for (name, h) in secret_headers {
                let s = secret(h.handle.clone()).await?;
                let n = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| bad(name, "not a header name"))?;
                let mut v = http::HeaderValue::from_str(&format!("{}{}", h.prefix, s.expose()))
                    .map_err(|_| bad(name, "the secret is not a valid header value"))?;
                v.set_sensitive(true);
                map.insert(n, v);
                secrets.push(s);
            }
            let transport = StreamableHttpClientTransport::from_config(
                StreamableHttpClientTransportConfig::with_uri(url.as_str()).custom_headers(map),
            );
            let service = tokio::time::timeout(timeout, watcher.serve(transport))
                .await
                .map_err(|_| protocol(format!("initialise timed out after {timeout:?}")))?
                .map_err(|e| McpConnectError::Start {
                    server: server.clone(),
                    detail: format!("`{url}`: {e}"),
                })?;
            Ok((service, secrets))
        }
        #[cfg(not(feature = "http"))]
        McpTransport::Http { .. } => Err(McpConnectError::Config {
            server,
            detail: "streamable HTTP needs the `http` feature of aios-mcp".into(),
        }),
    }
}

/// Every page of `tools/list`.
async fn list(
    config: &McpServerConfig,
    peer: &Peer,
) -> Result<Vec<ToolDefinition>, McpConnectError> {
    let protocol = |detail: String| McpConnectError::Protocol {
        server: config.name.clone(),
        detail,
    };
    let timeout = config.call_timeout();
    let tools = tokio::time::timeout(timeout, peer.list_all_tools())
        .await
        .map_err(|_| protocol(format!("tools/list timed out after {timeout:?}")))?
        .map_err(|e| protocol(format!("tools/list failed: {e}")))?;
    let mut out = vec![];
    for t in tools {
        let value = serde_json::to_value(&t).map_err(|e| protocol(e.to_string()))?;
        if let Some(def) = ToolDefinition::from_mcp(&value) {
            out.push(def);
        }
    }
    Ok(out)
}

#[async_trait]
impl Connector for McpConnector {
    fn descriptor(&self) -> &ConnectorDescriptor {
        &self.inner.descriptor
    }

    async fn invoke(&self, call: ConnectorCall) -> Result<ConnectorOutput, ConnectorError> {
        let tool = call.operation.as_str();
        if !self.inner.config.tools.contains_key(tool) {
            return Err(self.invalid(
                tool,
                format!(
                    "tool `{tool}` is not configured for MCP server `{}`",
                    self.inner.config.name
                ),
            ));
        }
        let (peer, generation) = self.session().await?;
        if self.inner.stale.swap(false, Ordering::SeqCst) {
            self.relist(&peer).await?;
        }
        let validator = {
            let table = self.inner.tools.read();
            let verdict = table.report.as_ref().and_then(|r| r.verdict(tool).cloned());
            match verdict {
                Some(v) if v.status.is_allowed() => table.validators.get(tool).cloned(),
                Some(v) => {
                    let reason = v
                        .refusal(&self.inner.config.name)
                        .unwrap_or_else(|| format!("tool `{tool}` is refused"));
                    return Err(self.failed(reason));
                }
                None => return Err(self.failed(format!("tool `{tool}` was never listed"))),
            }
        };
        let Some(validator) = validator else {
            return Err(self.failed(format!(
                "tool `{tool}` has an input schema that is not valid JSON Schema; it is refused"
            )));
        };
        let serde_json::Value::Object(arguments) = &call.input else {
            return Err(self.invalid(tool, "the arguments must be a JSON object".into()));
        };
        let problems: Vec<String> = validator
            .iter_errors(&call.input)
            .take(5)
            .map(|e| {
                let at = e.instance_path().to_string();
                format!(
                    "{}{e}",
                    if at.is_empty() {
                        String::new()
                    } else {
                        format!("at `{at}`: ")
                    }
                )
            })
            .collect();
        if !problems.is_empty() {
            return Err(self.invalid(
                tool,
                format!(
                    "the arguments do not match the tool's input schema: {}",
                    problems.join("; ")
                ),
            ));
        }
        let params: CallToolRequestParams = serde_json::from_value(serde_json::json!({
            "name": tool,
            "arguments": arguments,
            "_meta": { IDEMPOTENCY_META_KEY: call.idempotency_key.as_str() },
        }))
        .map_err(|e| self.failed(format!("tool `{tool}`: {e}")))?;
        let timeout = self.inner.config.call_timeout();
        // dropping the call (on this timeout, or the orchestrator's) sends
        // `notifications/cancelled` for it
        let result = match tokio::time::timeout(timeout, peer.call_tool(params)).await {
            Err(_) => {
                return Err(ConnectorError::Timeout {
                    connector: self.inner.id.clone(),
                })
            }
            Ok(Err(e)) => {
                if matches!(
                    e,
                    ServiceError::TransportClosed | ServiceError::TransportSend(_)
                ) {
                    self.forget(generation).await;
                }
                return Err(self.map_service_error(tool, e));
            }
            Ok(Ok(r)) => r,
        };
        let value = serde_json::to_value(&result).map_err(|e| self.failed(e.to_string()))?;
        let content = value
            .get("content")
            .cloned()
            .unwrap_or(serde_json::Value::Array(vec![]));
        let text: Vec<&str> = content
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|c| c.get("type").and_then(|t| t.as_str()) == Some("text"))
                    .filter_map(|c| c.get("text").and_then(|t| t.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let text = text.join("\n");
        if result.is_error == Some(true) {
            return Err(self.failed(format!("tool `{tool}` reported an error: {text}")));
        }
        let output = serde_json::json!({
            "text": text,
            "structured": value.get("structuredContent").cloned().unwrap_or(serde_json::Value::Null),
            "content": content,
        });
        Ok(ConnectorOutput {
            output: self.scrub_value(output),
            cost: Money::ZERO,
        })
    }
}
