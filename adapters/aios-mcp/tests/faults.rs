//! Fault cases against the rmcp test server (`aios-mcp-test-server`, feature `test-server`):
//! pagination, pins, `_meta` idempotency key, `isError`, timeouts with cancellation, a crash
//! and restart, a schema change announced by `tools/list_changed`, secrets.
#![cfg(feature = "test-server")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use aios_core::{
    AuditEvent, AuditLogExt, Connector, ConnectorCall, ConnectorError, CredentialHandle,
    CredentialVault, EffectClass, IdempotencyKey, InMemoryAuditLog, InMemoryVault, Secret,
    Transience,
};
use aios_mcp::{ConnectOptions, McpConnector, McpServerConfig, PinStatus, ToolConfig};
use serde_json::json;

const SERVER: &str = env!("CARGO_BIN_EXE_aios-mcp-test-server");
const ALL: [&str; 11] = [
    "echo",
    "slow",
    "cancellations",
    "crash",
    "fail",
    "mutate",
    "env",
    "fail_env",
    "argv",
    "pid",
    "authorization",
];

fn call(op: &str, input: serde_json::Value) -> ConnectorCall {
    ConnectorCall {
        operation: op.into(),
        input,
        idempotency_key: IdempotencyKey::new(format!("run-1/task/{op}")),
        credential: None,
    }
}

/// Connects once unpinned to learn the pins (what an operator does), then pins every tool.
async fn pinned(config: McpServerConfig, options: ConnectOptions) -> McpConnector {
    let (probe, _) = McpConnector::connect(config.clone(), options.clone())
        .await
        .unwrap();
    let offered = probe.offered();
    probe.close().await;
    let (k, report) = McpConnector::connect(config.pin_all(&offered), options)
        .await
        .unwrap();
    assert_eq!(report.allowed().len(), ALL.len(), "{report:?}");
    k
}

fn config() -> McpServerConfig {
    McpServerConfig::stdio("faulty", SERVER).timeout(Duration::from_millis(2_000))
}

#[tokio::test]
async fn lists_every_page_and_refuses_what_is_not_pinned() {
    let cfg = config().tool("echo", ToolConfig::default());
    let (k, report) = McpConnector::connect(cfg, ConnectOptions::default())
        .await
        .unwrap();
    // eleven tools over six pages
    assert_eq!(k.offered().len(), ALL.len());
    assert!(report.allowed().is_empty());
    assert!(matches!(
        report.verdict("echo").unwrap().status,
        PinStatus::Unpinned { .. }
    ));
    assert!(matches!(
        report.verdict("crash").unwrap().status,
        PinStatus::Unconfigured { .. }
    ));
    // only configured tools are operations
    let ops: Vec<_> = k
        .descriptor()
        .operations
        .iter()
        .map(|o| o.name.clone())
        .collect();
    assert_eq!(ops, vec!["echo"]);
    let err = k
        .invoke(call("echo", json!({"text": "hi"})))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("tool `echo`"), "{err}");
    assert!(err.to_string().contains("no pin"), "{err}");
    let err = k.invoke(call("crash", json!({}))).await.unwrap_err();
    assert!(matches!(err, ConnectorError::InvalidInput { .. }), "{err}");
    // the operator's helper prints a pin for every tool
    let pins = k.current_pins();
    for t in ALL {
        assert!(pins.contains(&format!("[tools.{t}]")), "{pins}");
    }
}

#[tokio::test]
async fn a_call_carries_the_idempotency_key_and_returns_text_and_structured_content() {
    let k = pinned(config(), ConnectOptions::default()).await;
    let out = k
        .invoke(call("echo", json!({"text": "hello"})))
        .await
        .unwrap();
    assert_eq!(out.output["text"], "hello");
    assert_eq!(out.output["structured"]["echo"], "hello");
    assert_eq!(out.output["structured"]["key"], "run-1/task/echo");
    assert_eq!(out.output["content"][0]["type"], "text");
}

#[tokio::test]
async fn arguments_are_checked_against_the_schema_before_the_call() {
    let k = pinned(config(), ConnectOptions::default()).await;
    let err = k
        .invoke(call("echo", json!({"text": 5})))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::InvalidInput { .. }), "{err}");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("/text"), "{err}");
    let err = k.invoke(call("slow", json!({}))).await.unwrap_err();
    assert!(err.to_string().contains("ms"), "{err}");
    let err = k.invoke(call("echo", json!("text"))).await.unwrap_err();
    assert!(matches!(err, ConnectorError::InvalidInput { .. }), "{err}");
}

#[tokio::test]
async fn an_is_error_result_is_a_permanent_failure() {
    let k = pinned(config(), ConnectOptions::default()).await;
    let err = k.invoke(call("fail", json!({}))).await.unwrap_err();
    assert!(matches!(err, ConnectorError::Failed { .. }), "{err}");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("deliberate failure"), "{err}");
}

#[tokio::test]
async fn a_slow_call_times_out_and_is_cancelled_on_the_server() {
    let k = pinned(
        config().timeout(Duration::from_millis(300)),
        ConnectOptions::default(),
    )
    .await;
    let err = k
        .invoke(call("slow", json!({"ms": 5_000})))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Timeout { .. }), "{err}");
    assert!(err.is_transient());
    // the server saw `notifications/cancelled` and stopped
    let mut seen = String::new();
    for _ in 0..50 {
        seen = k
            .invoke(call("cancellations", json!({})))
            .await
            .unwrap()
            .output["text"]
            .as_str()
            .unwrap()
            .to_string();
        if seen == "1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, "1");
    // the session survives a timeout
    assert_eq!(k.starts(), 1);
}

#[tokio::test]
async fn dropping_a_call_cancels_it_on_the_server() {
    let k = pinned(config(), ConnectOptions::default()).await;
    let slow = k.invoke(call("slow", json!({"ms": 5_000})));
    assert!(tokio::time::timeout(Duration::from_millis(300), slow)
        .await
        .is_err());
    let mut seen = String::new();
    for _ in 0..50 {
        seen = k
            .invoke(call("cancellations", json!({})))
            .await
            .unwrap()
            .output["text"]
            .as_str()
            .unwrap()
            .to_string();
        if seen == "1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, "1");
}

#[tokio::test]
async fn a_crashed_server_is_a_transient_failure_and_is_restarted_on_the_next_call() {
    let k = pinned(config(), ConnectOptions::default()).await;
    let pid = k.invoke(call("pid", json!({}))).await.unwrap().output["text"].clone();
    let err = k.invoke(call("crash", json!({}))).await.unwrap_err();
    assert!(matches!(err, ConnectorError::Unavailable { .. }), "{err}");
    assert!(err.is_transient());
    let again = k.invoke(call("pid", json!({}))).await.unwrap().output["text"].clone();
    assert_ne!(pid, again, "a new process");
    assert_eq!(k.starts(), 2);
    assert!(
        k.pin_report().listing >= 2,
        "listed again after the restart"
    );
}

#[tokio::test]
async fn a_schema_changed_after_list_changed_is_refused_naming_the_tool_and_the_change() {
    let log = Arc::new(InMemoryAuditLog::new());
    let k = pinned(config(), ConnectOptions::default().audit(log.clone())).await;
    k.invoke(call("echo", json!({"text": "before"})))
        .await
        .unwrap();
    k.invoke(call("mutate", json!({}))).await.unwrap();
    for _ in 0..100 {
        if k.list_changes() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(k.list_changes(), 1, "the server announced the change");
    let err = k
        .invoke(call("echo", json!({"text": "after", "loud": true})))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ConnectorError::Failed { .. }), "{text}");
    assert!(text.contains("tool `echo`"), "{text}");
    assert!(text.contains("input schema"), "{text}");
    assert!(
        !text.contains("description and"),
        "only the schema changed: {text}"
    );
    match &k.pin_report().verdict("echo").unwrap().status {
        PinStatus::Changed { what, .. } => assert_eq!(what, &vec!["input schema".to_string()]),
        other => panic!("{other:?}"),
    }
    // other tools are unaffected
    k.invoke(call("pid", json!({}))).await.unwrap();
    // both pin checks were audited
    let checks: Vec<_> = log
        .entries()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            AuditEvent::Custom { kind, data } if kind == "mcp.pin_check" => Some(data),
            _ => None,
        })
        .collect();
    assert!(checks.len() >= 2, "{checks:?}");
    let last = checks.last().unwrap()["tools"].as_array().unwrap().clone();
    let echo = last.iter().find(|t| t["tool"] == "echo").unwrap();
    assert_eq!(echo["status"], "changed");
    assert_eq!(echo["what"], json!(["input schema"]));
}

#[tokio::test]
async fn effects_come_from_the_configuration_and_hints_only_for_a_trusted_server() {
    let cfg = config()
        .tool("echo", ToolConfig::default())
        .tool("pid", ToolConfig::default().effect(EffectClass::ReadOnly));
    let (untrusted, _) = McpConnector::connect(cfg.clone(), ConnectOptions::default())
        .await
        .unwrap();
    let echo = untrusted.descriptor().operation("echo").unwrap();
    assert_eq!(
        (echo.effect, echo.idempotent),
        (EffectClass::Irreversible, false)
    );
    assert_eq!(
        untrusted.descriptor().operation("pid").unwrap().effect,
        EffectClass::ReadOnly
    );
    let (trusted, _) = McpConnector::connect(cfg.trusted(true), ConnectOptions::default())
        .await
        .unwrap();
    let echo = trusted.descriptor().operation("echo").unwrap();
    assert_eq!(
        (echo.effect, echo.idempotent),
        (EffectClass::ReadOnly, true)
    );
}

#[tokio::test]
async fn secrets_reach_the_server_only_as_configured_environment_and_never_come_back() {
    let vault = InMemoryVault::new();
    let secret = "s3cr3t-token-4711";
    vault
        .put(CredentialHandle::new("faulty/token"), Secret::new(secret))
        .await
        .unwrap();
    let log = Arc::new(InMemoryAuditLog::new());
    let options = ConnectOptions::default()
        .vault(Arc::new(vault))
        .audit(log.clone());
    let cfg = config().secret_env("FAULTY_TOKEN", "faulty/token");
    assert!(!format!("{cfg:?}").contains(secret));
    let k = pinned(cfg, options).await;
    // it is in the child's environment (the output is scrubbed, so compare lengths)
    let out = k
        .invoke(call("env", json!({"name": "FAULTY_TOKEN"})))
        .await
        .unwrap();
    assert_eq!(
        out.output["text"], "***",
        "the value reached the child and was scrubbed"
    );
    assert!(!out.output.to_string().contains(secret));
    // not in its arguments
    let argv = k.invoke(call("argv", json!({}))).await.unwrap();
    assert!(!argv.output.to_string().contains(secret));
    // not in errors
    let err = k
        .invoke(call("fail_env", json!({"name": "FAULTY_TOKEN"})))
        .await
        .unwrap_err();
    assert!(!err.to_string().contains(secret), "{err}");
    assert!(!format!("{err:?}").contains(secret));
    assert!(err.to_string().contains("***"), "{err}");
    // nor in the audit log, nor in the connector's Debug
    for e in log.entries().await.unwrap() {
        assert!(!serde_json::to_string(&e).unwrap().contains(secret));
    }
    assert!(!format!("{k:?}").contains(secret));
    // and the host's own environment does not leak into the child
    std::env::set_var("AIOS_MCP_HOST_ONLY", "host");
    k.close().await;
    let out = k
        .invoke(call("env", json!({"name": "AIOS_MCP_HOST_ONLY"})))
        .await
        .unwrap();
    assert_eq!(out.output["text"], "");
}

#[tokio::test]
async fn a_named_secret_without_a_vault_fails_the_connect_naming_the_handle() {
    let cfg = config().secret_env("FAULTY_TOKEN", "faulty/token");
    let err = McpConnector::connect(cfg, ConnectOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("faulty/token"), "{err}");
}

/// The test server over streamable HTTP, on a loopback port; killed on drop.
struct HttpServer {
    child: std::process::Child,
    url: String,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_server() -> HttpServer {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(SERVER)
        .arg("--http")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    HttpServer {
        child,
        url: line.trim().to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_streamable_http_a_secret_reaches_the_server_only_as_a_header() {
    let server = http_server();
    let vault = InMemoryVault::new();
    let secret = "http-s3cr3t-0815";
    vault
        .put(CredentialHandle::new("faulty/http"), Secret::new(secret))
        .await
        .unwrap();
    let cfg = McpServerConfig::http("faulty", server.url.clone())
        .secret_header("Authorization", "faulty/http", "Bearer ")
        .timeout(Duration::from_millis(2_000));
    assert!(!format!("{cfg:?}").contains(secret));
    let k = pinned(cfg, ConnectOptions::default().vault(Arc::new(vault))).await;
    let out = k
        .invoke(call("echo", json!({"text": "over http"})))
        .await
        .unwrap();
    assert_eq!(out.output["structured"]["echo"], "over http");
    assert_eq!(out.output["structured"]["key"], "run-1/task/echo");
    // the header arrived (and is scrubbed on the way back)
    let auth = k.invoke(call("authorization", json!({}))).await.unwrap();
    assert_eq!(auth.output["text"], "Bearer ***");
    let err = k.invoke(call("fail", json!({}))).await.unwrap_err();
    assert!(matches!(err, ConnectorError::Failed { .. }), "{err}");
    k.close().await;
}
