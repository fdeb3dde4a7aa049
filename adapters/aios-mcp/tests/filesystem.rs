//! Against the real `@modelcontextprotocol/server-filesystem` (pinned at 2026.8.31,
//! installed by `.ci/run` into `tests/node`), directly and through the orchestrator.
//! Skipped, saying so, only when `node` is absent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aios_core::{
    AuditEvent, AuditLogExt, Connector, ConnectorCall, ConnectorError, EffectClass, HumanId,
    IdempotencyKey, ManualTimer, RoleId, ScriptedModel,
};
use aios_governance::{ApprovalResponse, GovernanceModel};
use aios_mcp::{ConnectOptions, McpConnector, McpServerConfig, PinStatus, ToolConfig};
use aios_orchestrator::{
    ConnectorRequest, FnAgent, ModelRouter, Orchestrator, Role, RunStatus, TaskSpec, Workflow,
};
use serde_json::json;

#[derive(serde::Deserialize)]
struct Manifest {
    tools: BTreeMap<String, ToolConfig>,
}

/// The version of `@modelcontextprotocol/server-filesystem` these tests pin.
const FS_SERVER_VERSION: &str = "2026.8.31";

/// The server's entry point, or `None` (after saying why) when node is absent.
fn server() -> Option<PathBuf> {
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: `node` is not installed; the filesystem MCP server tests need it");
        return None;
    }
    let path = match std::env::var_os("AIOS_MCP_FS_SERVER") {
        Some(p) => PathBuf::from(p),
        None => {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
            let path =
                dir.join("node_modules/@modelcontextprotocol/server-filesystem/dist/index.js");
            // a fresh checkout: install the pinned server into the checkout once (what
            // .ci/run does first), so `cargo test` alone runs these tests too
            static INSTALL: std::sync::Once = std::sync::Once::new();
            INSTALL.call_once(|| {
                if !path.exists() {
                    let status = std::process::Command::new("npm")
                        .args(["install", "--no-audit", "--no-fund", "--prefix"])
                        .arg(&dir)
                        .arg(format!(
                            "@modelcontextprotocol/server-filesystem@{FS_SERVER_VERSION}"
                        ))
                        .status();
                    eprintln!("installed the filesystem MCP server: {status:?}");
                }
            });
            path
        }
    };
    assert!(
        path.exists(),
        "no filesystem MCP server at {}: run `npm install --prefix adapters/aios-mcp/tests/node @modelcontextprotocol/server-filesystem@2026.8.31` (as .ci/run does)",
        path.display()
    );
    Some(path)
}

fn config(server: &Path, root: &Path) -> McpServerConfig {
    let manifest: Manifest = toml::from_str(include_str!("filesystem.toml")).unwrap();
    let mut config = McpServerConfig::stdio("fs", "node")
        .arg(server.display().to_string())
        .arg(root.display().to_string());
    config.tools = manifest.tools;
    config
}

fn call(op: &str, input: serde_json::Value) -> ConnectorCall {
    ConnectorCall {
        operation: op.into(),
        input,
        idempotency_key: IdempotencyKey::new(format!("k/{op}")),
        credential: None,
    }
}

#[tokio::test]
async fn the_pinned_tools_of_the_real_server_are_allowed_and_the_rest_refused() {
    let Some(server) = server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::write(root.join("hello.txt"), "hello from disk").unwrap();
    let (fs, report) = McpConnector::connect(config(&server, &root), ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(
        report.allowed(),
        vec![
            "create_directory",
            "list_directory",
            "read_text_file",
            "write_file"
        ],
        "{:?}",
        report.refusals()
    );
    assert!(matches!(
        report.verdict("edit_file").unwrap().status,
        PinStatus::Unconfigured { .. }
    ));
    let d = fs.descriptor();
    assert_eq!(
        d.operation("read_text_file").unwrap().effect,
        EffectClass::ReadOnly
    );
    let write = d.operation("write_file").unwrap();
    assert_eq!(
        (write.effect, write.idempotent),
        (EffectClass::Irreversible, false)
    );
    // untrusted, no configured effect: fail closed despite the server's hints
    let mkdir = d.operation("create_directory").unwrap();
    assert_eq!(
        (mkdir.effect, mkdir.idempotent),
        (EffectClass::Irreversible, false)
    );
    assert!(d.operation("edit_file").is_none());

    let path = root.join("hello.txt").display().to_string();
    let out = fs
        .invoke(call("read_text_file", json!({ "path": path })))
        .await
        .unwrap();
    assert!(
        out.output["text"]
            .as_str()
            .unwrap()
            .contains("hello from disk"),
        "{}",
        out.output
    );
    // outside the allowed folder the server says isError: a permanent failure
    let err = fs
        .invoke(call("read_text_file", json!({ "path": "/etc/hostname" })))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::Failed { .. }), "{err}");
    // schema checked before the call
    let err = fs
        .invoke(call("write_file", json!({ "path": path })))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::InvalidInput { .. }), "{err}");
    let err = fs.invoke(call("edit_file", json!({}))).await.unwrap_err();
    assert!(err.to_string().contains("not configured"), "{err}");
    fs.close().await;
}

#[tokio::test]
async fn a_description_changed_since_pinning_is_refused() {
    let Some(server) = server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&server, dir.path());
    cfg.tools.get_mut("read_text_file").unwrap().pin = Some("sha256:0000".into());
    let (fs, report) = McpConnector::connect(cfg, ConnectOptions::default())
        .await
        .unwrap();
    let refusal = report
        .verdict("read_text_file")
        .unwrap()
        .refusal("fs")
        .unwrap();
    assert!(refusal.contains("tool `read_text_file`"), "{refusal}");
    assert!(refusal.contains("sha256:0000"), "{refusal}");
    let err = fs
        .invoke(call("read_text_file", json!({ "path": "x" })))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("changed since it was pinned"),
        "{err}"
    );
    fs.close().await;
}

const MODEL: &str = r#"{
  "version": 1,
  "charter": { "intent": "a one-person consultancy keeping its files", "final_authority": "founder" },
  "anchors": [ { "key": "founder", "title": "Founder", "holders": ["alice"], "response_time": "4h" } ],
  "roles": [ { "key": "clerk" } ],
  "pathways": [
    { "key": "files", "anchor": "founder", "delegate": "clerk",
      "limits": { "actions": ["fs.read_text_file", "fs.list_directory", "fs.write_file"],
                  "effects": ["read_only", "reversible", "irreversible"] },
      "escalation": [ { "name": "writes-need-the-founder", "when": { "effect_at_least": "irreversible" },
                        "mode": "approve_before", "deadline": "24h" } ] }
  ],
  "budgets": [ { "key": "org", "scope": "organisation", "limits": { "cost": 100000, "tool_calls": 100 } } ]
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_orchestrator_reads_run_alone_and_a_write_waits_for_the_founder() {
    let Some(server) = server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::write(root.join("notes.txt"), "meeting at noon").unwrap();
    let (fs, _) = McpConnector::connect(config(&server, &root), ConnectOptions::default())
        .await
        .unwrap();

    let clerk = FnAgent::new(|ctx, input| {
        Box::pin(async move {
            let root = input.input["root"].as_str().unwrap_or_default().to_string();
            let notes = ctx
                .call(ConnectorRequest::new(
                    "fs",
                    "read_text_file",
                    json!({ "path": format!("{root}/notes.txt") }),
                ))
                .await?;
            let text = notes.output["text"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let written = ctx
                .call(ConnectorRequest::new(
                    "fs",
                    "write_file",
                    json!({ "path": format!("{root}/summary.txt"), "content": format!("summary: {text}") }),
                ))
                .await?;
            Ok(json!({ "read": text, "written": written.output["text"] }))
        })
    });
    let timer = ManualTimer::default();
    let governor = GovernanceModel::from_json(MODEL)
        .unwrap()
        .compile()
        .unwrap();
    let orch = Orchestrator::builder(governor)
        .connector(Arc::new(fs.clone()))
        .role(Role::new("clerk", "files", Arc::new(clerk)).connector("fs"))
        .models(ModelRouter::single(Arc::new(ScriptedModel::new("local"))))
        .clock(Arc::new(timer.clock().clone()))
        .timer(Arc::new(timer.clone()))
        .build()
        .unwrap();
    let workflow = Workflow::new("file-notes").task(TaskSpec::new(
        "summarise",
        RoleId::from_name("clerk"),
        json!({ "root": root.display().to_string() }),
    ));
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };

    let outcome = orch.start(workflow).await.unwrap();
    let RunStatus::Parked { approvals } = &outcome.status else {
        panic!("expected parked, got {:?}", outcome.status)
    };
    assert_eq!(approvals.len(), 1);
    assert_eq!(
        files(),
        vec!["notes.txt"],
        "nothing written before the approval"
    );
    let pending = orch.pending_approvals().await.unwrap();
    assert_eq!(pending[0].action, "fs.write_file");

    let done = orch
        .submit_approval(
            approvals[0],
            HumanId::from_name("alice"),
            ApprovalResponse::Approve,
        )
        .await
        .unwrap();
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.status);
    assert_eq!(files(), vec!["notes.txt", "summary.txt"]);
    assert_eq!(
        std::fs::read_to_string(root.join("summary.txt")).unwrap(),
        "summary: meeting at noon"
    );
    assert_eq!(done.outputs["summarise"]["read"], "meeting at noon");

    // each tool ran once: the read was journaled before parking and not repeated
    let invoked: Vec<String> = orch
        .audit_log()
        .entries()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            AuditEvent::ConnectorInvoked { operation, .. } => Some(operation),
            _ => None,
        })
        .collect();
    assert_eq!(invoked, vec!["read_text_file", "write_file"]);
    assert!(orch.audit_log().verify(None).await.unwrap().is_intact());
    fs.close().await;
}
