//! Connects to an MCP server over stdio, prints its pin report and the current pins for an
//! operator to copy, and, when the manifest pins `list_directory`, lists a folder through the
//! governed connector.
//!
//! ```text
//! npm install --prefix adapters/aios-mcp/tests/node @modelcontextprotocol/server-filesystem@2026.8.31
//! cargo run -p aios-mcp --example mcp_tools -- /some/folder
//! ```
//!
//! The server is `AIOS_MCP_FS_SERVER` (a `dist/index.js`), else the test install folder; the
//! manifest is `tests/filesystem.toml`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use aios_core::{Connector, ConnectorCall, IdempotencyKey};
use aios_mcp::{ConnectOptions, McpConnector, McpServerConfig, ToolConfig};

#[derive(serde::Deserialize)]
struct Manifest {
    tools: BTreeMap<String, ToolConfig>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let server = std::env::var_os("AIOS_MCP_FS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            crate_dir.join(
                "tests/node/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js",
            )
        });
    if !server.exists() {
        return Err(format!(
            "no MCP filesystem server at {}: set AIOS_MCP_FS_SERVER or run the npm install in this file's docs",
            server.display()
        )
        .into());
    }
    let folder = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or(std::env::current_dir()?);
    let manifest: Manifest = toml::from_str(&std::fs::read_to_string(
        crate_dir.join("tests/filesystem.toml"),
    )?)?;
    let mut config = McpServerConfig::stdio("fs", "node")
        .arg(server.display().to_string())
        .arg(folder.display().to_string());
    config.tools = manifest.tools;

    let (fs, report) = McpConnector::connect(config, ConnectOptions::default()).await?;
    println!("MCP server `fs`: {} tools offered", fs.offered().len());
    println!("allowed: {}", report.allowed().join(", "));
    for line in report.refusals() {
        println!("refused: {line}");
    }
    println!(
        "\n# current pins, to copy into the manifest after review:\n{}",
        fs.current_pins()
    );
    for op in &fs.descriptor().operations {
        println!(
            "operation fs.{}: {} idempotent={}",
            op.name, op.effect, op.idempotent
        );
    }
    if report.allowed().contains(&"list_directory") {
        let out = fs
            .invoke(ConnectorCall {
                operation: "list_directory".into(),
                input: serde_json::json!({ "path": folder.display().to_string() }),
                idempotency_key: IdempotencyKey::new("example/list/1"),
                credential: None,
            })
            .await?;
        println!(
            "\nfs.list_directory {}:\n{}",
            folder.display(),
            out.output["text"].as_str().unwrap_or("")
        );
    }
    fs.close().await;
    Ok(())
}
